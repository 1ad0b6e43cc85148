//! The warehouse on a real S3-compatible server (moto, installed by scripts/test.sh and
//! started here on 127.0.0.1): full and incremental syncs through object_store with
//! conditional puts, `state`, and the tables read back by Python's `deltalake` from S3.

use std::time::Duration;

use crate::common::{Env, assert_success, py, python};

/// A moto server on a free port, stopped on drop.
struct Moto {
    _child: tokio::process::Child,
    endpoint: String,
}

async fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = std::path::Path::new(&python()).with_file_name("moto_server");
    let child = tokio::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto {
        _child: child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn syncs_into_s3_and_python_reads_it_back() {
    let moto = start_moto().await;
    py(
        "import boto3, sys\nboto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='lake')",
        &[&moto.endpoint],
    )
    .await;
    let env = Env::stripe(60, "streams = [\"customers\"]").await;
    let local = format!("url = {:?}", env.warehouse().display().to_string());
    let s3 = format!(
        "url = \"s3://lake/raw\"\n[warehouse.options]\naws_endpoint = \"{}\"\naws_region = \"us-east-1\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"${{TRIBUTARY_TEST_S3_SECRET:-test}}\"\naws_allow_http = \"true\"\naws_conditional_put = \"etag\"",
        moto.endpoint
    );
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&local, &s3);
    std::fs::write(&env.config, text).unwrap();

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
