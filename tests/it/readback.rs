//! Interop: independent engines (installed by scripts/test.sh) read the tables and check
//! row counts, ids, column types and `is_deleted`. DuckDB's delta extension reads the
//! default tables (latest state kept with deletion vectors); pyarrow, which does not apply
//! deletion vectors, reads tables written with `merge = "copy-on-write"`.

use std::time::Duration;

use crate::common::{Env, py};

/// Syncs customers and charges, then deletes one customer and renames another and syncs
/// again. Returns the env, every customer id (the deleted one included, sorted), the
/// deleted id and the renamed id.
async fn synced_with_changes(warehouse: &str) -> (Env, Vec<String>, String, String) {
    let env = Env::stripe(50, "streams = [\"customers\", \"charges\"]").await;
    env.add_warehouse_option(warehouse);
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    let victim = ids[0].clone();
    let renamed = ids[1].clone();
    env.sandbox.delete("customers", &victim);
    env.sandbox
        .update(
            "customers",
            &renamed,
            serde_json::json!({"name": "Renamed"}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;
    let mut all = env.sandbox.ids("customers");
    all.push(victim.clone());
    all.sort();
    (env, all, victim, renamed)
}

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_reads_the_latest_state() {
    let (env, want, victim, renamed) = synced_with_changes("").await;
    let script = r#"
import json, os, sys
import duckdb, duckdb_extension_delta
ext = os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "v" + duckdb.__version__, "delta.duckdb_extension")
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
# A scan slower than 2 s (a loaded CI machine) would draw DuckDB's progress bar on stdout.
con.execute("SET enable_progress_bar = false")
con.execute(f"LOAD '{ext}'")
out = {}
for name in ["customers", "charges"]:
    scan = f"delta_scan('{sys.argv[1]}/{name}')"
    rows = con.execute(f"select id, is_deleted from {scan}").fetchall()
    out[name] = {
        "rows": len(rows),
        "ids": sorted({r[0] for r in rows}),
        "deleted": sorted(r[0] for r in rows if r[1]),
        "types": {r[0]: r[1] for r in con.execute(f"describe select * from {scan}").fetchall()},
    }
out["renamed"] = con.execute(f"select name from delta_scan('{sys.argv[1]}/customers') where id = ?", [sys.argv[2]]).fetchall()
print(json.dumps(out))
"#;
    let stripe = env.warehouse().join("stripe");
    let out = py(script, &[stripe.to_str().unwrap(), &renamed]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let customers = &v["customers"];
    assert_eq!(customers["ids"], serde_json::json!(want));
    assert_eq!(
        customers["rows"],
        want.len(),
        "one row per customer: the older versions are gone"
    );
    assert_eq!(customers["deleted"], serde_json::json!([victim]));
    assert_eq!(v["renamed"], serde_json::json!([["Renamed"]]));
    let charges = &v["charges"];
    assert_eq!(charges["rows"], env.sandbox.ids("charges").len());
    let types = &charges["types"];
    assert_eq!(types["amount"], "BIGINT");
    assert_eq!(types["created"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(types["is_deleted"], "BOOLEAN");
    assert_eq!(types["id"], "VARCHAR");
}

#[tokio::test(flavor = "multi_thread")]
async fn pyarrow_reads_copy_on_write_tables() {
    let (env, want, victim, renamed) = synced_with_changes("merge = \"copy-on-write\"").await;
    let script = r#"
import json, sys
import deltalake
t = deltalake.DeltaTable(sys.argv[1] + "/customers").to_pyarrow_table()
rows = t.to_pylist()
print(json.dumps({
    "rows": len(rows),
    "ids": sorted({r["id"] for r in rows}),
    "deleted": sorted(r["id"] for r in rows if r["is_deleted"]),
    "renamed": [r["name"] for r in rows if r["id"] == sys.argv[2]],
}))
# The reader's native threads sometimes abort the interpreter's teardown; the answer is out.
sys.stdout.flush()
import os
os._exit(0)
"#;
    let stripe = env.warehouse().join("stripe");
    let out = py(script, &[stripe.to_str().unwrap(), &renamed]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ids"], serde_json::json!(want));
    assert_eq!(v["rows"], want.len(), "one row per customer");
    assert_eq!(v["deleted"], serde_json::json!([victim]));
    assert_eq!(v["renamed"], serde_json::json!(["Renamed"]));
}
