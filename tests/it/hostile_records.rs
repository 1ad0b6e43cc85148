//! Hostile vendor records, end to end: objects with thousands of distinct keys and keys of
//! tens of kilobytes must not grow the table without bound, fail the sync, or flood the log.

use std::time::Duration;

use crate::common::{Env, id_counts, latest_by_id, read_table};

const CAP: usize = 300;

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_distinct_keys_are_capped_and_rescued() {
    let env = Env::stripe(20, "streams = [\"customers\"]").await;
    env.add_sync_option(&format!("max_new_columns = {CAP}"));
    env.sync_ok(&[]).await;
    let before = read_table(&env.table("customers")).await[0]
        .schema()
        .fields()
        .len();

    // Three customers with 2,000 keys each, none shared: 6,000 would-be columns.
    let ids = env.sandbox.ids("customers");
    for (n, id) in ids.iter().take(3).enumerate() {
        let fields: serde_json::Map<String, serde_json::Value> = (0..2_000)
            .map(|i| (format!("attr_{n}_{i}"), serde_json::json!(i)))
            .collect();
        env.sandbox
            .update("customers", id, serde_json::Value::Object(fields))
            .expect("updated");
    }
    // A 64 KB key, and an object under a 300-byte name.
    let long_key = "k".repeat(64 * 1024);
    let long_object = "o".repeat(300);
    env.sandbox
        .update(
            "customers",
            &ids[3],
            serde_json::json!({ long_key.clone(): "v", long_object.clone(): {"a": 1} }),
        )
        .expect("updated");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let out = env.run(&["sync"]).await;
    crate::common::assert_success(&out);
    let summary = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The table grew by at most the cap, and no column name is over 255 bytes.
    let batches = read_table(&env.table("customers")).await;
    let schema = batches
        .iter()
        .map(|b| b.schema())
        .max_by_key(|s| s.fields().len())
        .expect("batches");
    assert!(
        schema.fields().len() <= before + CAP,
        "{} columns, {before} before",
        schema.fields().len()
    );
    assert!(schema.fields().len() > before, "some new columns do land");
    assert!(schema.fields().iter().all(|f| f.name().len() <= 255));

    // Every object once; the fields past the caps are in `_rescued_data`, not lost.
    let counts = id_counts(&batches);
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|&n| n == 1));
    let rescued = latest_by_id(&batches, "_rescued_data");
    let rescued_of = |id: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&rescued[id]).expect("rescued data is a JSON object")
    };
    let last = rescued_of(&ids[2]);
    assert_eq!(last["attr_2_1999"], serde_json::json!(1999));
    let long = rescued_of(&ids[3]);
    assert_eq!(long[&long_key], serde_json::json!("v"));
    assert_eq!(long[&long_object], serde_json::json!({"a": 1}));

    // The summary counts them, with a short example.
    let line = summary
        .lines()
        .find(|l| l.contains("fields were kept in _rescued_data"))
        .unwrap_or_else(|| panic!("no capped-fields line in:\n{summary}"));
    let count: usize = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert_eq!(count, 6_000 - CAP + 2, "{line}");
    assert!(line.len() < 400, "{line}");
    assert!(summary.lines().all(|l| l.len() < 2_000), "{summary}");

    // One warning for the stream, and no huge log line.
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("new-column cap"))
        .count();
    assert_eq!(warnings, 1, "{stderr}");
    // Our own lines: with RUST_LOG=info the Delta kernel logs each snapshot's whole
    // metadata at INFO (by default Tributary runs it at warn).
    let longest = stderr
        .lines()
        .filter(|l| !l.contains("buoyant_kernel") && !l.contains("deltalake"))
        .max_by_key(|l| l.len())
        .unwrap_or_default();
    assert!(
        longest.len() < 4_096,
        "a log line of {} bytes: {}…",
        longest.len(),
        longest.chars().take(600).collect::<String>()
    );

    // The cap is per run: a later run may add a field that was rescued before.
    env.sandbox
        .update("customers", &ids[4], serde_json::json!({"attr_2_1999": 5}))
        .expect("updated");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("new columns: attr_2_1999"), "{summary}");
    assert!(!summary.contains("fields were kept"), "{summary}");
    let batches = read_table(&env.table("customers")).await;
    assert_eq!(latest_by_id(&batches, "attr_2_1999")[&ids[4]], "5");
}
