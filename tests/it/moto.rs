//! A real S3-compatible server for the object-store tests: moto (installed by
//! scripts/test.sh), one per test on a free port of 127.0.0.1, stopped on drop. Also the
//! `[warehouse]` section that points a test's config at it, and independent readers of what
//! landed there: Python's `deltalake` for the rows, boto3 for the raw `_delta_log`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::common::{Env, py, python};

/// A moto server on a free port, stopped on drop.
pub struct Moto {
    _child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto and waits (at most 30 s, it is a Python program on a busy machine) until
    /// it accepts connections.
    pub async fn start() -> Moto {
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
        let mut up = false;
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "moto did not listen on port {port} within 30 s");
        Moto {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates `bucket`; with `versioned`, every overwrite of a key keeps the older version,
    /// so a test can prove that no object was written twice.
    pub async fn create_bucket(&self, bucket: &str, versioned: bool) {
        py(
            r#"
import boto3, sys
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test',
                  aws_secret_access_key='test', region_name='us-east-1')
s3.create_bucket(Bucket=sys.argv[2])
if sys.argv[3] == 'yes':
    s3.put_bucket_versioning(Bucket=sys.argv[2], VersioningConfiguration={'Status': 'Enabled'})
"#,
            &[&self.endpoint, bucket, if versioned { "yes" } else { "no" }],
        )
        .await;
    }
}

/// The `[warehouse]` section for `url` (`s3://bucket/prefix`) on the S3-compatible server at
/// `endpoint` (moto, or a proxy in front of it), with conditional puts for commits, and
/// `extra` lines appended to `[warehouse.options]`.
pub fn s3_warehouse(endpoint: &str, url: &str, extra: &str) -> String {
    format!(
        "url = {url:?}\n[warehouse.options]\naws_endpoint = \"{endpoint}\"\naws_region = \"us-east-1\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"${{TRIBUTARY_TEST_S3_SECRET:-test}}\"\naws_allow_http = \"true\"\naws_conditional_put = \"etag\"\n{extra}"
    )
}

impl Env {
    /// Points the config's warehouse (a local directory until now) at S3: `section` is what
    /// [`s3_warehouse`] returns.
    pub fn use_s3(&self, section: &str) {
        let local = format!("url = {:?}", self.warehouse().display().to_string());
        let text = std::fs::read_to_string(&self.config).expect("read config");
        assert!(text.contains(&local), "the config has a local warehouse");
        std::fs::write(&self.config, text.replace(&local, section)).expect("write config");
    }
}

/// Rows per id of the Delta table at `table` (`s3://…`), read from moto by Python's
/// `deltalake` (its SQL engine applies deletion vectors).
pub async fn s3_table_ids(endpoint: &str, table: &str) -> HashMap<String, usize> {
    let out = py(
        r#"
import json, os, sys, deltalake
import pyarrow as pa
opts = {"AWS_ENDPOINT_URL": sys.argv[1], "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_ALLOW_HTTP": "true"}
dt = deltalake.DeltaTable(sys.argv[2], storage_options=opts)
q = deltalake.QueryBuilder().register("t", dt).execute("select id from t")
counts = {}
for i in pa.table(q.read_all()).column("id").to_pylist():
    counts[i] = counts.get(i, 0) + 1
print(json.dumps(counts))
# The reader's native threads sometimes abort the interpreter's teardown; skip it.
sys.stdout.flush()
os._exit(0)
"#,
        &[endpoint, table],
    )
    .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("reader output {out:?}: {e}"))
}

/// One commit of a table's `_delta_log`, as boto3 read it.
#[derive(Debug, Deserialize)]
pub struct LogCommit {
    /// The commit's version (its file name).
    pub version: u64,
    /// `(appId, version)` of every `txn` action.
    pub txns: Vec<(String, i64)>,
    /// Tributary's entry in `commitInfo`, if any.
    pub tributary: Option<serde_json::Value>,
    /// `remove` actions.
    pub removes: usize,
    /// `commitInfo.operation` (`CREATE TABLE`, `WRITE`, …).
    pub operation: Option<String>,
    /// The reader features of the commit's `protocol` action, if it has one.
    pub reader_features: Option<Vec<String>>,
}

/// A table's `_delta_log` read straight from moto with boto3, independently of delta-rs.
#[derive(Debug, Deserialize)]
pub struct DeltaLog {
    /// Every commit file, by version.
    pub commits: Vec<LogCommit>,
    /// Stored versions of each commit file (more than one: it was overwritten; only
    /// counted in a versioned bucket).
    pub object_versions: HashMap<String, usize>,
    /// Other keys in `_delta_log/` (temporary commit files, checkpoints).
    pub others: Vec<String>,
}

impl DeltaLog {
    /// Reads the log of the table at `prefix` (no trailing slash) in `bucket`.
    pub async fn read(endpoint: &str, bucket: &str, prefix: &str) -> DeltaLog {
        let out = py(
            r#"
import boto3, json, re, sys
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test',
                  aws_secret_access_key='test', region_name='us-east-1')
bucket, prefix = sys.argv[2], sys.argv[3] + '/_delta_log/'
versions, others, commits = {}, [], []
for page in s3.get_paginator('list_object_versions').paginate(Bucket=bucket, Prefix=prefix):
    for v in page.get('Versions', []):
        versions[v['Key']] = versions.get(v['Key'], 0) + 1
for key in sorted(versions):
    name = key[len(prefix):]
    m = re.fullmatch(r'(\d{20})\.json', name)
    if not m:
        others.append(name)
        continue
    body = s3.get_object(Bucket=bucket, Key=key)['Body'].read().decode()
    c = {"version": int(m.group(1)), "txns": [], "tributary": None, "removes": 0,
         "operation": None, "reader_features": None}
    for line in body.splitlines():
        if not line.strip():
            continue
        a = json.loads(line)
        if 'txn' in a:
            c["txns"].append([a['txn']['appId'], a['txn']['version']])
        if 'commitInfo' in a:
            c["tributary"] = a['commitInfo'].get('tributary')
            c["operation"] = a['commitInfo'].get('operation')
        if 'protocol' in a:
            c["reader_features"] = a['protocol'].get('readerFeatures', [])
        c["removes"] += 'remove' in a
    commits.append(c)
print(json.dumps({"commits": commits, "object_versions": versions, "others": others}))
"#,
            &[endpoint, bucket, prefix],
        )
        .await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("log reader output {out:?}: {e}"))
    }

    /// Checks the log's shape: versions 0..=n without a gap, no commit file written twice,
    /// one table creation (version 0), and the commits of `app_id` carrying `txn` versions
    /// 1, 2, 3, … exactly once each, each equal to the `seq` in its tributary metadata.
    /// Returns those commits in order.
    pub fn stream_commits(&self, app_id: &str) -> Vec<&LogCommit> {
        for (i, c) in self.commits.iter().enumerate() {
            assert_eq!(c.version, i as u64, "the log has a gap before version {i}");
            assert_eq!(
                c.operation.as_deref() == Some("CREATE TABLE"),
                i == 0,
                "version {i} is a {:?}: the table was created once, at version 0",
                c.operation
            );
        }
        for (key, n) in &self.object_versions {
            assert!(*n <= 1, "{key} was written {n} times");
        }
        let mine: Vec<&LogCommit> = self
            .commits
            .iter()
            .filter(|c| c.txns.iter().any(|(a, _)| a == app_id))
            .collect();
        for (i, c) in mine.iter().enumerate() {
            let seq = i as i64 + 1;
            assert_eq!(
                c.txns,
                vec![(app_id.to_owned(), seq)],
                "commit {} of the log is the stream's commit number {seq}",
                c.version
            );
            let meta = c.tributary.as_ref().unwrap_or_else(|| {
                panic!("commit {} has no tributary metadata", c.version);
            });
            assert_eq!(meta["seq"], seq, "commit {}: {meta}", c.version);
        }
        mine
    }
}

/// Asserts that the stream's table at `table` on `endpoint` holds exactly `want` (each id
/// once), that its log is well formed (see [`DeltaLog::stream_commits`]), and that the
/// commits landed every object exactly once: their `records` add up to `want.len()` and
/// none of them replaced a row (a backfill of distinct objects never needs to, so a
/// replaced row would be a page landed twice). Returns the stream's last committed cursor.
pub async fn assert_backfilled_exactly_once(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    app_id: &str,
    want: &[String],
) -> serde_json::Value {
    let log = DeltaLog::read(endpoint, bucket, prefix).await;
    let commits = log.stream_commits(app_id);
    assert!(!commits.is_empty(), "the stream committed");
    let landed: u64 = commits
        .iter()
        .map(|c| {
            c.tributary
                .as_ref()
                .and_then(|m| m["records"].as_u64())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(landed, want.len() as u64, "records landed by the commits");
    let removes: usize = commits.iter().map(|c| c.removes).sum();
    assert_eq!(removes, 0, "no commit of a backfill replaces rows");
    // Object tables keep the latest row per id with deletion vectors, which readers apply
    // only while the protocol says so.
    let features = log
        .commits
        .iter()
        .rev()
        .find_map(|c| c.reader_features.as_ref());
    assert!(
        features.is_some_and(|f| f.iter().any(|f| f == "deletionVectors")),
        "the table's protocol keeps deletion vectors: {features:?}"
    );

    let counts = s3_table_ids(endpoint, &format!("s3://{bucket}/{prefix}")).await;
    let mut got: Vec<&String> = counts.keys().collect();
    got.sort();
    let mut want: Vec<&String> = want.iter().collect();
    want.sort();
    assert_eq!(got, want, "the table holds every object");
    assert!(
        counts.values().all(|&n| n == 1),
        "every object once: {counts:?}"
    );
    commits
        .last()
        .and_then(|c| c.tributary.as_ref())
        .map(|m| m["cursor"].clone())
        .unwrap_or_default()
}
