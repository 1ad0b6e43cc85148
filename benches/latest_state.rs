//! Benchmark: an incremental sync that changes 1% of a 1,000,000-row Stripe charges table.
//!
//! Builds the table through the real write path (Stripe-shaped charges from the simulator,
//! converted by the SDK's converter, committed by the warehouse in 250k-row commits, ids
//! random like Stripe's), then lands 10,000 new versions of random existing charges in one
//! commit and reports the seconds and the bytes written, against the table's size (what a
//! full rewrite would write). Runs both merge modes. Numbers go into BENCHMARKS.md by hand.
//!
//! `cargo bench --bench latest_state [-- ROWS]`. Under `cargo test` (no `--bench`
//! argument) it runs a 20,000-row smoke version, which checks the same assertions.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tributary::config::WarehouseConfig;
use tributary::warehouse::{MergeMode, NewFile, StreamTable, Warehouse};
use tributary_sdk::convert::BatchBuilder;
use tributary_sdk::{Page, Records, StreamSchema};
use tributary_stripe::sandbox::{SandboxConfig, StripeSandbox};

const PAGE: usize = 1000;
const COMMIT: usize = 250_000;

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A Stripe-like id: `ch_` and 24 base62 characters.
    fn id(&mut self) -> String {
        const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut s = String::from("ch_");
        for _ in 0..24 {
            s.push(A[(self.next() % 62) as usize] as char);
        }
        s
    }
}

/// Real charges from the simulator, as templates.
async fn templates() -> Vec<serde_json::Value> {
    let sandbox = StripeSandbox::start(
        SandboxConfig {
            records: 500,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("sandbox");
    let client = reqwest::Client::new();
    let body: serde_json::Value = client
        .get(format!("{}/v1/charges?limit=100", sandbox.url()))
        .bearer_auth(StripeSandbox::api_key())
        .send()
        .await
        .expect("charges")
        .json()
        .await
        .expect("json");
    sandbox.shutdown().await;
    body["data"].as_array().expect("data").clone()
}

/// A pretty-printed list page of `ids`, shaped like the templates.
fn page(templates: &[serde_json::Value], ids: &[String], amount_bump: i64) -> Page {
    let data: Vec<serde_json::Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut c = templates[i % templates.len()].clone();
            c["id"] = serde_json::Value::String(id.clone());
            if let Some(a) = c["amount"].as_i64() {
                c["amount"] = serde_json::json!(a + amount_bump);
            }
            c
        })
        .collect();
    let body = serde_json::to_vec_pretty(&serde_json::json!({"object": "list", "data": data}))
        .expect("json");
    Page::new(
        Records::Json {
            body: Bytes::from(body),
            path: &["data"],
        },
        serde_json::json!({}),
    )
}

/// Converts and writes `ids` into one data file.
async fn write(
    table: &StreamTable,
    schema: &StreamSchema,
    templates: &[serde_json::Value],
    ids: &[String],
    bump: i64,
) -> (NewFile, Arc<arrow::datatypes::Schema>) {
    let existing = table.arrow_schema().expect("schema");
    let mut builder = BatchBuilder::new(schema, Some(existing.as_ref()));
    let mut file = None;
    for chunk in ids.chunks(PAGE) {
        builder
            .append_page(&page(templates, chunk, bump))
            .expect("convert");
        let (batches, _) = builder.finish().expect("batch");
        for batch in batches {
            if file.is_none() {
                file = Some(table.new_file(batch.schema()).expect("file"));
            }
            file.as_mut()
                .expect("file")
                .write(&batch)
                .await
                .expect("write");
        }
    }
    (
        file.expect("rows").finish().await.expect("finish"),
        builder.schema(),
    )
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn run(mode: MergeMode, rows: usize, templates: &[serde_json::Value], schema: &StreamSchema) {
    let dir = tempfile::tempdir().expect("tmp");
    let warehouse = Warehouse::new(&WarehouseConfig {
        url: dir.path().to_string_lossy().into(),
        merge: mode,
        ..Default::default()
    })
    .expect("warehouse");
    let mut table = StreamTable::open(
        &warehouse,
        &["stripe", "charges"],
        "tributary/stripe/charges".into(),
        &schema.arrow_schema(),
        65_536,
        Some("id"),
    )
    .await
    .expect("table");
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let ids: Vec<String> = (0..rows).map(|_| rng.id()).collect();
    let started = Instant::now();
    for (n, chunk) in ids.chunks(COMMIT).enumerate() {
        let (file, s) = write(&table, schema, templates, chunk, 0).await;
        table
            .commit(
                vec![file],
                &s,
                Default::default(),
                serde_json::json!(n),
                chunk.len() as u64,
                "base",
            )
            .await
            .expect("commit");
    }
    let table_bytes = dir_bytes(&dir.path().join("stripe/charges"));
    let build = started.elapsed().as_secs_f64();

    // 1% of the rows change: new versions of random existing charges.
    let changed: Vec<String> = (0..rows / 100)
        .map(|_| ids[(rng.next() % rows as u64) as usize].clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let started = Instant::now();
    let (file, s) = write(&table, schema, templates, &changed, 1).await;
    let new_bytes = file.add.size as u64;
    let landed = table
        .commit(
            vec![file],
            &s,
            Default::default(),
            serde_json::json!("inc"),
            changed.len() as u64,
            "inc",
        )
        .await
        .expect("commit");
    let secs = started.elapsed().as_secs_f64();
    let written = new_bytes + landed.rewritten_bytes + landed.dv_bytes;
    println!(
        "{mode:?}: table {rows} rows, {:.1} MB (built in {build:.1} s); incremental of {} changed rows: {secs:.2} s, \
         {:.2} MB written ({:.2} MB new rows, {:.2} MB rewritten files, {} B deletion vectors), {} rows replaced, \
         {:.1}% of a full rewrite",
        table_bytes as f64 / 1e6,
        changed.len(),
        written as f64 / 1e6,
        new_bytes as f64 / 1e6,
        landed.rewritten_bytes as f64 / 1e6,
        landed.dv_bytes,
        landed.replaced,
        100.0 * written as f64 / table_bytes as f64,
    );
    assert_eq!(
        landed.replaced as usize,
        changed.len(),
        "every changed row replaced once"
    );
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 20_000 });
    let templates = templates().await;
    let schema = tributary_stripe::streams::schemas()
        .expect("schemas")
        .into_iter()
        .find(|s| s.name == "charges")
        .expect("charges");
    for mode in [MergeMode::DeletionVectors, MergeMode::CopyOnWrite] {
        run(mode, rows, &templates, &schema).await;
    }
}
