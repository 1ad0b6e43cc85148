//! Times the SDK's CPU path for one list page, without HTTP or Parquet: the envelope scan
//! (with its compaction) and the conversion into Arrow builders. For profiling the
//! converter on a real body; see BENCHMARKS.md for the end-to-end figures.
//!
//! `cargo run --release -p tributary-sdk --example convert_page -- PAGE.json SCHEMA.json
//! [ROUNDS=300] [RECORDS_KEY=data] [ID_FIELD=id] [MARK_FIELD=created]`
//!
//! Prints the fastest and the median round of each step, in microseconds per page: the
//! fastest is the reading least disturbed by the rest of a shared machine.

use std::time::Instant;

use bytes::Bytes;
use tributary_sdk::convert::BatchBuilder;
use tributary_sdk::pagination::scan_and_compact;
use tributary_sdk::{Page, Records, StreamSchema};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: convert_page PAGE.json SCHEMA.json [ROUNDS] [RECORDS_KEY] [ID_FIELD] [MARK_FIELD]";
    let page_path = args.get(1).expect(usage);
    let schema_path = args.get(2).expect(usage);
    let rounds: usize = args.get(3).map_or(300, |r| r.parse().expect(usage));
    let records_key = args.get(4).map_or("data", String::as_str).to_owned();
    let id_field = args.get(5).map_or("id", String::as_str).to_owned();
    let mark_field = args.get(6).map_or("created", String::as_str).to_owned();
    let body = std::fs::read(page_path).expect("the page file");
    let schema =
        StreamSchema::from_json(&std::fs::read_to_string(schema_path).expect("the schema file"))
            .expect("a valid schema");
    let path: &'static [&'static str] =
        Box::leak(vec![&*Box::leak(records_key.clone().into_boxed_str())].into_boxed_slice());

    let mut builder = BatchBuilder::new(&schema, None);
    let mut scan_us = Vec::with_capacity(rounds);
    let mut convert_us = Vec::with_capacity(rounds);
    let mut rows = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let (env, compact) = scan_and_compact(&body, &records_key, &id_field, Some(&mark_field))
            .expect("a list page");
        scan_us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(&env);
        let page = Page::new(
            Records::Json {
                body: Bytes::from(compact.unwrap_or_else(|| body.clone())),
                path,
            },
            serde_json::Value::Null,
        );
        let t = Instant::now();
        rows += builder.append_page(&page).expect("a page that converts");
        convert_us.push(t.elapsed().as_secs_f64() * 1e6);
        if builder.rows() >= 10_000 {
            std::hint::black_box(builder.finish().expect("a batch"));
        }
    }
    let report = |name: &str, v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: fastest {:.0} us, median {:.0} us a page",
            v[0],
            v[v.len() / 2]
        );
    };
    println!(
        "{} bytes a page, {} records a page",
        body.len(),
        rows / rounds
    );
    report("scan", &mut scan_us);
    report("convert", &mut convert_us);
}
