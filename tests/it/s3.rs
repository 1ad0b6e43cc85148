//! The warehouse on a real S3-compatible server (moto, installed by scripts/test.sh and
//! started here on 127.0.0.1): full and incremental syncs through object_store with
//! conditional puts, `state`, and the tables read back by Python's `deltalake` from S3.

use std::time::Duration;

use crate::common::{Env, assert_success, py};
use crate::moto::{Moto, s3_warehouse};

#[tokio::test(flavor = "multi_thread")]
async fn syncs_into_s3_and_python_reads_it_back() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", false).await;
    let env = Env::stripe(60, "streams = [\"customers\"]").await;
    env.use_s3(&s3_warehouse(&moto.endpoint, "s3://lake/raw", ""));

    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    env.sandbox.delete("customers", &ids[0]);
    env.sandbox
        .update("customers", &ids[1], serde_json::json!({"name": "Renamed"}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("stripe.customers"), "{summary}");
    let out = env.run(&["state"]).await;
    assert_success(&out);
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(state.contains("\"phase\":\"changes\""), "{state}");
    assert!(!env.warehouse().exists(), "nothing lands on local disk");

    let read = py(
        r#"
import json, sys, deltalake
opts = {"AWS_ENDPOINT_URL": sys.argv[1], "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_ALLOW_HTTP": "true"}
import pyarrow as pa
dt = deltalake.DeltaTable("s3://lake/raw/stripe/customers", storage_options=opts)
# The SQL engine applies deletion vectors (the pyarrow dataset path does not).
q = deltalake.QueryBuilder().register("customers", dt).execute("select * from customers")
rows = pa.table(q.read_all()).to_pylist()
print(json.dumps({"rows": len(rows), "ids": sorted({r["id"] for r in rows}),
                  "deleted": sorted(r["id"] for r in rows if r["is_deleted"]),
                  "names": sorted(r["name"] or "" for r in rows if r["id"] == sys.argv[2])}))
"#,
        &[&moto.endpoint, &ids[1]],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&read).expect("json");
    let mut want = ids.clone();
    want.sort();
    assert_eq!(v["ids"], serde_json::json!(want));
    assert_eq!(
        v["rows"],
        ids.len(),
        "one row per customer, its latest version"
    );
    assert_eq!(v["deleted"], serde_json::json!([ids[0]]));
    assert!(
        v["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "Renamed"),
        "{v}"
    );
}
