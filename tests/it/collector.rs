//! `tributary serve`, the event collector, driven over HTTP: every endpoint and answer of
//! Segment's Tracking API, the Pixel API and the settings document; messages read back
//! from the Delta tables; deduplication; SIGKILL under load (every acknowledged message
//! lands exactly once); two collectors on one warehouse; and Segment's own Python and
//! Node libraries pointed at it.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::{read_table, strings};

const KEY: &str = "test-write-key-0123456789abcdef";
const OTHER_KEY: &str = "mobile-write-key-0123456789abcdef";

/// A temp dir with a warehouse and a config of two event-stream sources.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(serve: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("tributary.toml");
        std::fs::write(
            &config,
            format!(
                "[warehouse]\nurl = {:?}\n\n[serve]\n{interval}{serve}\n\n[sources.web]\ntype = \"http\"\nwrite_keys = [\"{KEY}\"]\n\n[sources.app]\ntype = \"mobile\"\nwrite_keys = [\"{OTHER_KEY}\"]\n",
                dir.path().join("warehouse").display().to_string(),
                interval = if serve.contains("commit_interval_ms") {
                    ""
                } else {
                    "commit_interval_ms = 100\n"
                },
            ),
        )
        .expect("write config");
        Setup { dir, config }
    }

    fn table(&self, source: &str, table: &str) -> PathBuf {
        self.dir.path().join("warehouse").join(source).join(table)
    }

    fn spool(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn start(&self, spool: &str) -> Collector {
        self.start_with(spool, &[]).await
    }

    /// [`Setup::start`] with more arguments to `serve`.
    async fn start_with(&self, spool: &str, args: &[&str]) -> Collector {
        Collector::start(
            &self.config,
            &self.spool(spool),
            &self.dir.path().join(format!("{spool}.log")),
            args,
        )
        .await
    }
}

/// A running `serve`.
struct Collector {
    child: tokio::process::Child,
    url: String,
    /// The metrics endpoint's base URL, with `--metrics`.
    metrics: Option<String>,
    log: PathBuf,
}

impl Collector {
    async fn start(config: &Path, spool: &Path, log: &Path, args: &[&str]) -> Collector {
        let err = std::fs::File::create(log).expect("log file");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve", "--listen", "127.0.0.1:0", "--spool"])
            .arg(spool)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("stdout reads") {
                if let Some(url) = line.strip_prefix("Metrics on ") {
                    metrics = url.strip_suffix("/metrics").map(str::to_owned);
                }
                if let Some(url) = line.strip_prefix("Collector listening on ") {
                    return url.to_owned();
                }
            }
            panic!(
                "serve exited before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .await
        .expect("serve listens within 60 s");
        // Keep reading stdout so the collector never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Collector {
            child,
            url,
            metrics,
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit within 60 s (it lands the spool first).
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve stops within 60 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "serve exit {status:?}\n{}", self.log());
    }

    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POSTs `body` to `path` with `key` as the Basic-auth user; status and JSON answer.
async fn post(
    url: &str,
    path: &str,
    key: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = client().post(format!("{url}{path}")).body(body);
    if let Some(k) = key {
        req = req.basic_auth(k, Some(""));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn by_id(batches: &[arrow::array::RecordBatch], column: &str) -> HashMap<String, String> {
    strings(batches, "id")
        .into_iter()
        .zip(strings(batches, column))
        .collect()
}

#[tokio::test]
async fn collector_answers_as_segment_documents_and_lands_segments_schema() {
    let s = Setup::new("");
    let c = s.start("spool").await;
    let u = c.url.clone();
    let ok = json!({"success": true});

    // One message per call type, with the key as the Basic-auth user.
    let track = json!({"userId": "u1", "event": "Order Completed", "messageId": "t1",
        "timestamp": "2024-05-01T11:59:58Z", "sentAt": "2024-05-01T12:00:00Z",
        "context": {"ip": "10.0.0.1", "library": {"name": "test", "version": "1"}},
        "properties": {"total": 12.5, "currency": "EUR", "items": {"count": 2}, "userId": "dropped"}});
    assert_eq!(
        post(&u, "/v1/track", Some(KEY), track.to_string()).await,
        (200, ok.clone())
    );
    for (path, body) in [
        (
            "/v1/identify",
            json!({"userId": "u1", "messageId": "i1", "traits": {"email": "a@example.com", "plan": "pro"}}),
        ),
        (
            "/v1/page",
            json!({"anonymousId": "a1", "messageId": "p1", "name": "Home", "properties": {"url": "http://x/", "title": "Hi"}}),
        ),
        (
            "/v1/screen",
            json!({"anonymousId": "a1", "messageId": "s1", "name": "Settings"}),
        ),
        (
            "/v1/group",
            json!({"userId": "u1", "messageId": "g1", "groupId": "acme", "traits": {"employees": 50}}),
        ),
        (
            "/v1/alias",
            json!({"userId": "u1", "messageId": "al1", "previousId": "a1"}),
        ),
    ] {
        assert_eq!(
            post(&u, path, Some(KEY), body.to_string()).await,
            (200, ok.clone()),
            "{path}"
        );
    }
    // A batch with the key in the body, gzip-compressed; and /v1/import.
    let batch = json!({"writeKey": KEY, "batch": [
        {"type": "track", "userId": "u2", "event": "Order Completed", "messageId": "b1", "properties": {"total": 3, "coupon": "X"}},
        {"type": "track", "anonymousId": "a2", "event": "Signed Up", "messageId": "b2"},
    ]});
    let resp = client()
        .post(format!("{u}/v1/batch"))
        .header("Content-Encoding", "gzip")
        .body(gzip(batch.to_string().as_bytes()))
        .send()
        .await
        .expect("batch");
    assert_eq!(resp.status(), 200);
    let import = json!({"batch": [{"type": "identify", "userId": "u3", "messageId": "im1"}]});
    assert_eq!(
        post(&u, "/v1/import", Some(KEY), import.to_string())
            .await
            .0,
        200
    );
    // A message without messageId gets one; the other source's key routes to it.
    assert_eq!(
        post(
            &u,
            "/v1/track",
            Some(OTHER_KEY),
            json!({"userId": "m1", "event": "App Opened"}).to_string()
        )
        .await
        .0,
        200
    );

    // 400s, each with its reason.
    let reason = |r: (u16, Value)| (r.0, r.1["message"].as_str().unwrap_or_default().to_owned());
    let (st, why) = reason(post(&u, "/v1/track", Some(KEY), "{not json").await);
    assert!(st == 400 && why.contains("JSON"), "{st} {why}");
    let (st, why) = reason(
        post(
            &u,
            "/v1/track",
            Some(KEY),
            json!({"event": "x"}).to_string(),
        )
        .await,
    );
    assert!(st == 400 && why.contains("anonymousId"), "{st} {why}");
    let (st, why) = reason(
        post(
            &u,
            "/v1/track",
            Some(KEY),
            json!({"userId": "u"}).to_string(),
        )
        .await,
    );
    assert!(st == 400 && why.contains("event"), "{st} {why}");
    let big = json!({"userId": "u", "event": "x", "properties": {"blob": "x".repeat(33 * 1024)}});
    let (st, why) = reason(post(&u, "/v1/track", Some(KEY), big.to_string()).await);
    assert!(st == 400 && why.contains("32 KB"), "{st} {why}");
    // Nested past 64 levels: refused at the door, where the message could not land.
    let deep = format!(
        r#"{{"userId":"u","event":"x","context":{{"k":{}1{}}}}}"#,
        "[".repeat(120),
        "]".repeat(120)
    );
    let (st, why) = reason(post(&u, "/v1/track", Some(KEY), deep).await);
    assert!(st == 400 && why.contains("at most 64"), "{st} {why}");
    let many: Vec<Value> = (0..40)
        .map(|i| json!({"type": "track", "userId": "u", "event": "x", "messageId": format!("big{i}"), "properties": {"blob": "y".repeat(15 * 1024)}}))
        .collect();
    let (st, why) = reason(
        post(
            &u,
            "/v1/batch",
            Some(KEY),
            json!({"batch": many}).to_string(),
        )
        .await,
    );
    assert!(st == 400 && why.contains("500 KB"), "{st} {why}");
    let (st, why) = reason(
        post(
            &u,
            "/v1/batch",
            Some(KEY),
            json!({"batch": [{"type": "track", "userId": "u"}]}).to_string(),
        )
        .await,
    );
    assert!(st == 400 && why.contains("batch[0]"), "{st} {why}");
    // A gzip bomb: 50 MB of zeros in ~50 KB; refused after 500 KB of decompression.
    let bomb = gzip(&vec![b' '; 50 << 20]);
    assert!(bomb.len() < 100_000);
    let resp = client()
        .post(format!("{u}/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("bomb");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("decompression"));
    // 413: a body over 1 MB is not read.
    let (st, _) = post(&u, "/v1/batch", Some(KEY), vec![b' '; 2 << 20]).await;
    assert_eq!(st, 413);
    // 401: an unknown key, and none at all (the key never appears in the answer).
    let (st, body) = post(
        &u,
        "/v1/track",
        Some("not-a-key-of-ours-at-all"),
        json!({"userId": "u", "event": "x"}).to_string(),
    )
    .await;
    assert_eq!(st, 401);
    assert!(!body.to_string().contains("not-a-key-of-ours"));
    assert_eq!(
        post(
            &u,
            "/v1/track",
            None,
            json!({"userId": "u", "event": "x"}).to_string()
        )
        .await
        .0,
        401
    );
    assert_eq!(post(&u, "/v1/nope", Some(KEY), "{}").await.0, 404);

    // The Pixel API: a 1×1 GIF.
    let data = base64::engine::general_purpose::STANDARD.encode(
        json!({"writeKey": KEY, "userId": "u4", "event": "Email Opened", "messageId": "px1"})
            .to_string(),
    );
    let resp = client()
        .get(format!("{u}/v1/pixel/track?data={data}"))
        .send()
        .await
        .expect("pixel");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/gif");
    let gif = resp.bytes().await.unwrap();
    assert!(gif.starts_with(b"GIF89a") && gif.len() == 43);
    let bad = base64::engine::general_purpose::STANDARD
        .encode(json!({"writeKey": "wrong-key-0123456789", "userId": "u"}).to_string());
    assert_eq!(
        client()
            .get(format!("{u}/v1/pixel/page?data={bad}"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // The settings analytics.js loads, pointing back here.
    let resp = client()
        .get(format!("{u}/v1/projects/{KEY}/settings"))
        .send()
        .await
        .expect("settings");
    assert_eq!(resp.status(), 200);
    let settings: Value = resp.json().await.unwrap();
    let host = u.trim_start_matches("http://");
    assert_eq!(
        settings["integrations"]["Segment.io"]["apiHost"],
        format!("{host}/v1")
    );
    assert_eq!(
        client()
            .get(format!("{u}/v1/projects/unknown-key-0123456789/settings"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // SIGTERM lands what is spooled before exiting.
    c.stop().await;

    let tracks = read_table(&s.table("web", "tracks")).await;
    let ids: HashSet<String> = strings(&tracks, "id").into_iter().collect();
    assert_eq!(
        ids,
        HashSet::from(["t1", "b1", "b2", "px1"].map(String::from))
    );
    let event = by_id(&tracks, "event");
    assert_eq!(event["t1"], "order_completed");
    assert_eq!(by_id(&tracks, "event_text")["b2"], "Signed Up");
    assert_eq!(by_id(&tracks, "context_ip")["t1"], "10.0.0.1");
    assert_eq!(by_id(&tracks, "context_library_name")["t1"], "test");
    // Clock skew: received_at − (sent_at − original_timestamp) = received_at − 2 s.
    let received = by_id(&tracks, "received_at")["t1"].clone();
    let timestamp = by_id(&tracks, "timestamp")["t1"].clone();
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(&s.replace(' ', "T"))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    assert_eq!(
        (parse(&received) - parse(&timestamp)).num_seconds(),
        2,
        "{received} {timestamp}"
    );
    assert!(by_id(&tracks, "original_timestamp")["t1"].starts_with("2024-05-01"));
    assert!(by_id(&tracks, "sent_at")["t1"].starts_with("2024-05-01"));
    assert!(!by_id(&tracks, "uuid_ts")["t1"].is_empty());
    assert!(
        tracks[0].column_by_name("total").is_none(),
        "tracks carries no properties"
    );

    let orders = read_table(&s.table("web", "order_completed")).await;
    let total = by_id(&orders, "total");
    assert_eq!(total.len(), 2);
    assert_eq!(total["t1"].parse::<f64>().unwrap(), 12.5);
    assert_eq!(total["b1"].parse::<f64>().unwrap(), 3.0);
    assert_eq!(by_id(&orders, "items_count")["t1"], "2");
    assert_eq!(
        by_id(&orders, "coupon")["b1"],
        "X",
        "a new property became a column"
    );
    assert_eq!(
        by_id(&orders, "user_id")["t1"],
        "u1",
        "a property named userId is dropped"
    );
    assert_eq!(
        read_table(&s.table("web", "signed_up"))
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        1
    );
    assert_eq!(
        read_table(&s.table("web", "email_opened"))
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        1
    );

    let identifies = read_table(&s.table("web", "identifies")).await;
    assert_eq!(by_id(&identifies, "email")["i1"], "a@example.com");
    assert!(by_id(&identifies, "id").contains_key("im1"));
    let pages = read_table(&s.table("web", "pages")).await;
    assert_eq!(by_id(&pages, "name")["p1"], "Home");
    assert_eq!(by_id(&pages, "url")["p1"], "http://x/");
    assert_eq!(
        by_id(&read_table(&s.table("web", "screens")).await, "name")["s1"],
        "Settings"
    );
    let groups = read_table(&s.table("web", "groups")).await;
    assert_eq!(by_id(&groups, "group_id")["g1"], "acme");
    assert_eq!(by_id(&groups, "employees")["g1"], "50");
    assert_eq!(
        by_id(&read_table(&s.table("web", "aliases")).await, "previous_id")["al1"],
        "a1"
    );
    let app = read_table(&s.table("app", "tracks")).await;
    let app_ids = strings(&app, "id");
    assert_eq!(app_ids.len(), 1);
    assert!(
        app_ids[0].starts_with("tributary-"),
        "a messageId was filled in"
    );
    // No write key in any table or log.
    assert!(!c_log_contains(&s, KEY));
}

fn c_log_contains(s: &Setup, needle: &str) -> bool {
    std::fs::read_to_string(s.dir.path().join("spool.log"))
        .unwrap_or_default()
        .contains(needle)
}

#[tokio::test]
async fn a_slow_client_gets_408_and_does_not_hold_up_others() {
    let s = Setup::new("body_timeout_seconds = 1");
    let c = s.start("spool").await;
    let addr = c.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        format!("POST /v1/track HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 200\r\nAuthorization: Basic {}\r\n\r\n{{\"userId\":",
            base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"))).as_bytes(),
    )
    .await
    .expect("write");
    // Meanwhile another client is served.
    let started = Instant::now();
    let (st, _) = post(
        &c.url,
        "/v1/track",
        Some(KEY),
        json!({"userId": "u", "event": "Fast", "messageId": "f1"}).to_string(),
    )
    .await;
    assert_eq!(st, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("the slow request is answered within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    c.stop().await;
    assert_eq!(
        strings(&read_table(&s.table("web", "tracks")).await, "id"),
        vec!["f1"]
    );
}

#[tokio::test]
async fn a_repeated_message_id_lands_once() {
    let s = Setup::new("");
    let c = s.start("spool").await;
    let m = json!({"userId": "u", "event": "Clicked", "messageId": "dup-1"});
    for _ in 0..3 {
        assert_eq!(
            post(&c.url, "/v1/track", Some(KEY), m.to_string()).await.0,
            200
        );
    }
    let mut in_batch = m.clone();
    in_batch["type"] = json!("track");
    let batch = json!({"batch": [in_batch.clone(), in_batch, {"type": "track", "userId": "u", "event": "Clicked", "messageId": "dup-2"}]});
    assert_eq!(
        post(&c.url, "/v1/batch", Some(KEY), batch.to_string())
            .await
            .0,
        200
    );
    // The same id in another source is another message.
    assert_eq!(
        post(&c.url, "/v1/track", Some(OTHER_KEY), m.to_string())
            .await
            .0,
        200
    );
    c.stop().await;
    // And after a restart on the same spool, the id is still known.
    let c = s.start("spool").await;
    assert_eq!(
        post(&c.url, "/v1/track", Some(KEY), m.to_string()).await.0,
        200
    );
    c.stop().await;
    let mut ids = strings(&read_table(&s.table("web", "tracks")).await, "id");
    ids.sort();
    assert_eq!(ids, vec!["dup-1", "dup-2"]);
    assert_eq!(
        strings(&read_table(&s.table("web", "clicked")).await, "id").len(),
        2
    );
    assert_eq!(
        strings(&read_table(&s.table("app", "tracks")).await, "id"),
        vec!["dup-1"]
    );
}

#[tokio::test]
async fn backpressure_answers_503_with_retry_after_and_loses_nothing() {
    // Nothing lands until the stop: the committer waits ten minutes between rounds.
    let s =
        Setup::new("max_pending = 1000\ncommit_messages = 1000000\ncommit_interval_ms = 600000");
    let c = s.start_with("spool", &["--metrics", "127.0.0.1:0"]).await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..30 {
        let batch: Vec<Value> = (0..100)
            .map(|j| json!({"type": "track", "userId": "u", "event": "Load", "messageId": format!("m{i}-{j}")}))
            .collect();
        let resp = client()
            .post(format!("{}/v1/batch", c.url))
            .basic_auth(KEY, Some(""))
            .body(json!({"batch": batch}).to_string())
            .send()
            .await
            .expect("batch");
        if resp.status() == 200 {
            accepted += 100;
        } else {
            refused = Some((
                resp.status().as_u16(),
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ));
            break;
        }
    }
    assert_eq!(refused, Some((503, Some("1".to_owned()))));
    assert_eq!(accepted, 1000);
    // The metrics show the backlog and why the collector refused.
    let samples = scrape(c.metrics.as_deref().expect("metrics address")).await;
    for (name, value) in [
        ("tributary_collector_pending_messages", 1000.0),
        (r#"tributary_collector_busy_total{reason="behind"}"#, 1.0),
        (
            r#"tributary_collector_requests_total{source="web",status="503"}"#,
            1.0,
        ),
        (
            r#"tributary_collector_requests_total{source="web",status="200"}"#,
            10.0,
        ),
        (
            r#"tributary_collector_messages_accepted_total{source="web"}"#,
            1000.0,
        ),
    ] {
        assert_eq!(sample(&samples, name), value, "{name} in {samples:?}");
    }
    c.stop().await;
    assert_eq!(
        strings(&read_table(&s.table("web", "tracks")).await, "id").len(),
        1000
    );
}

/// Sends batches of 20 from `workers` tasks until `until`; the ids that got a 200.
async fn load(url: String, prefix: &str, workers: usize, until: Instant) -> HashSet<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = url.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut acked = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let ids: Vec<String> = (0..20).map(|i| format!("{prefix}-{w}-{n}-{i}")).collect();
                n += 1;
                let batch: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"type": "track", "userId": "u", "event": if id.ends_with('0') { "Ten" } else { "Other" }, "messageId": id, "properties": {"n": n}}))
                    .collect();
                match client.post(format!("{url}/v1/batch")).basic_auth(KEY, Some("")).body(json!({"batch": batch}).to_string()).send().await {
                    Ok(r) if r.status() == 200 => acked.extend(ids),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            acked
        }));
    }
    let mut out = HashSet::new();
    for t in tasks {
        out.extend(t.await.expect("worker"));
    }
    out
}

#[tokio::test]
async fn sigkill_under_load_lands_every_acknowledged_message_exactly_once() {
    let s = Setup::new("commit_messages = 2000");
    let c = s.start("spool").await;
    let until = Instant::now() + Duration::from_secs(4);
    let sending = tokio::spawn(load(c.url.clone(), "k", 4, until));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.kill9().await;
    let acked = sending.await.expect("load");
    assert!(
        acked.len() > 500,
        "only {} acknowledged before the kill",
        acked.len()
    );
    // Started again on the same spool: it lands what the kill left, and no more.
    let c = s.start("spool").await;
    c.stop().await;
    let tracks = read_table(&s.table("web", "tracks")).await;
    let ids = strings(&tracks, "id");
    let mut seen = HashMap::new();
    for id in &ids {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "landed twice: {twice:?}");
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not landed: {missing:?} of {}",
        acked.len()
    );
    // Every landed row was spooled; only acknowledged ones or a request in flight at the
    // kill (fsynced, its answer lost) can be there.
    assert!(
        ids.len() >= acked.len() && ids.len() <= acked.len() + 4 * 20,
        "{} rows for {} acks",
        ids.len(),
        acked.len()
    );
    // The event tables too: each id once.
    let ten = strings(&read_table(&s.table("web", "ten")).await, "id");
    let ten_set: HashSet<_> = ten.iter().cloned().collect();
    assert_eq!(ten.len(), ten_set.len(), "an event table row landed twice");
    assert_eq!(
        ten_set,
        ids.iter()
            .filter(|i| i.ends_with('0'))
            .cloned()
            .collect::<HashSet<_>>()
    );
}

#[tokio::test]
async fn two_collectors_write_one_warehouse() {
    let s = Setup::new("commit_messages = 500");
    let a = s.start("spool-a").await;
    let b = s.start("spool-b").await;
    let until = Instant::now() + Duration::from_secs(3);
    let (acked_a, acked_b) = tokio::join!(
        load(a.url.clone(), "a", 2, until),
        load(b.url.clone(), "b", 2, until)
    );
    a.stop().await;
    b.stop().await;
    let ids = strings(&read_table(&s.table("web", "tracks")).await, "id");
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), set.len(), "no message landed twice");
    let acked: HashSet<String> = acked_a.union(&acked_b).cloned().collect();
    assert!(acked_a.len() > 100 && acked_b.len() > 100);
    assert_eq!(set, acked);
}

/// `compact` covers event-stream sources: run beside a collector under load it merges the
/// collector's per-round files, a collector commit that meets its commit is planned again,
/// and every acknowledged message is in the tables exactly once.
#[tokio::test]
async fn compact_beside_a_running_collector_merges_its_files_and_loses_nothing() {
    let s = Setup::new("commit_messages = 300");
    let c = s.start("spool").await;
    // One sender for 2 s (tens of thousands of messages, a file per table every round):
    // enough commits to meet the compaction's, light enough to leave the tests beside it
    // their CPU.
    let until = Instant::now() + Duration::from_secs(2);
    let sending = tokio::spawn(load(c.url.clone(), "c", 1, until));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = crate::common::run_binary(&s.config, &["compact", "--target-file-mb", "1"]).await;
    crate::common::assert_success(&during);
    // A second of rounds after the compaction, however long it took beside the other
    // tests (it once ended near the sender's end, leaving 6 files to merge): the
    // compaction after the run has many files to merge.
    let more = load(
        c.url.clone(),
        "d",
        1,
        Instant::now() + Duration::from_secs(1),
    )
    .await;
    let mut acked = sending.await.expect("load");
    acked.extend(more);
    c.stop().await;
    assert!(acked.len() > 300, "only {} acknowledged", acked.len());
    let after = crate::common::run_binary(
        &s.config,
        &["compact", "--source", "web", "--target-file-mb", "1"],
    )
    .await;
    crate::common::assert_success(&after);
    let report = String::from_utf8_lossy(&after.stdout);
    let line = report
        .lines()
        .find(|l| l.starts_with("web.tracks "))
        .unwrap_or_else(|| panic!("no web.tracks line in:\n{report}"));
    // "web.tracks   262 -> 2 ...": the rounds' files merged into a few of ~1 MiB.
    let counts: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] >= 10 && counts[1] * 5 <= counts[0],
        "{line}"
    );
    let ids = strings(&read_table(&s.table("web", "tracks")).await, "id");
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), set.len(), "no message landed twice");
    assert_eq!(set, acked);
    let ten = strings(&read_table(&s.table("web", "ten")).await, "id");
    assert_eq!(
        ten.iter().cloned().collect::<HashSet<_>>(),
        acked.iter().filter(|i| i.ends_with('0')).cloned().collect()
    );
}

#[tokio::test]
async fn sources_create_appends_a_key_and_list_shows_only_its_prefix() {
    let s = Setup::new("");
    let before = std::fs::read_to_string(&s.config).unwrap();
    let out = crate::common::run_binary(
        &s.config,
        &["sources", "create", "shop", "--type", "server"],
    )
    .await;
    crate::common::assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Write key: "))
        .expect("the key is printed")
        .to_owned();
    assert!(
        key.len() >= 32 && key.chars().all(|c| c.is_ascii_alphanumeric()),
        "{key}"
    );
    let after = std::fs::read_to_string(&s.config).unwrap();
    assert!(
        after.starts_with(&before),
        "the file is kept as it was, the section appended"
    );
    assert!(after.contains("[sources.shop]") && after.contains(&key));
    let out = crate::common::run_binary(&s.config, &["sources", "list"]).await;
    crate::common::assert_success(&out);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("shop")
            && list.contains("server")
            && list.contains(&format!("{}…", &key[..6])),
        "{list}"
    );
    assert!(!list.contains(&key) && !list.contains(KEY), "{list}");
    // The type of an existing source cannot change.
    let out =
        crate::common::run_binary(&s.config, &["sources", "create", "shop", "--type", "http"])
            .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be changed") && err.contains("new source"),
        "{err}"
    );
    // The sync commands pass event-stream sources by.
    let out = crate::common::run_binary(&s.config, &["state"]).await;
    crate::common::assert_success(&out);
    let out = crate::common::run_binary(&s.config, &["plan", "--format", "crontab"]).await;
    let plan = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !plan.contains("--source shop") && !plan.contains("--source web"),
        "{plan}"
    );
}

/// Asserts that each `(table, id)` landed exactly once in source `web`.
async fn landed_once(s: &Setup, expect: &[(&str, &str)]) {
    for (table, id) in expect {
        let rows = read_table(&s.table("web", table)).await;
        let n = strings(&rows, "id").iter().filter(|x| x == id).count();
        assert_eq!(n, 1, "`{id}` in {table}: {n} rows");
    }
}

const PY_CLIENT: &str = r#"
import sys
import segment.analytics as analytics
analytics.write_key = sys.argv[1]
analytics.host = sys.argv[2]
errors = []
analytics.on_error = lambda e, batch: errors.append(repr(e))
analytics.identify(user_id="py-user", traits={"email": "py@example.com", "plan": "pro"}, message_id="py-identify")
analytics.track(user_id="py-user", event="Order Completed", properties={"total": 9.5, "sku": "A-1"}, message_id="py-track")
analytics.page(user_id="py-user", category="Docs", name="Install", properties={"url": "http://x/docs"}, message_id="py-page")
analytics.screen(user_id="py-user", name="Home", message_id="py-screen")
analytics.group(user_id="py-user", group_id="py-group", traits={"employees": 12}, message_id="py-group")
analytics.alias(previous_id="py-anon", user_id="py-user", message_id="py-alias")
analytics.flush()
analytics.shutdown()
if errors:
    print(errors)
    sys.exit(1)
print("sent")
"#;

#[tokio::test]
async fn segments_python_library_lands_every_call_once() {
    let Ok(python) = std::env::var("TRIBUTARY_SEGMENT_PYTHON") else {
        eprintln!(
            "skipped: TRIBUTARY_SEGMENT_PYTHON is not set (scripts/test.sh installs segment-analytics-python)"
        );
        return;
    };
    let s = Setup::new("");
    let c = s.start("spool").await;
    let out = tokio::process::Command::new(python)
        .args(["-c", PY_CLIENT, KEY, &c.url])
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    c.stop().await;
    landed_once(
        &s,
        &[
            ("identifies", "py-identify"),
            ("tracks", "py-track"),
            ("order_completed", "py-track"),
            ("pages", "py-page"),
            ("screens", "py-screen"),
            ("groups", "py-group"),
            ("aliases", "py-alias"),
        ],
    )
    .await;
    let orders = read_table(&s.table("web", "order_completed")).await;
    assert_eq!(by_id(&orders, "sku")["py-track"], "A-1");
    assert_eq!(
        by_id(&orders, "context_library_name")["py-track"],
        "analytics-python"
    );
    assert!(!by_id(&orders, "sent_at")["py-track"].is_empty());
    let identifies = read_table(&s.table("web", "identifies")).await;
    assert_eq!(by_id(&identifies, "email")["py-identify"], "py@example.com");
    assert_eq!(
        by_id(&read_table(&s.table("web", "pages")).await, "name")["py-page"],
        "Install"
    );
    assert_eq!(
        by_id(&read_table(&s.table("web", "aliases")).await, "previous_id")["py-alias"],
        "py-anon"
    );
}

const NODE_CLIENT: &str = r#"
const [modules, writeKey, host] = process.argv.slice(1)
const { Analytics } = require(modules + '/@segment/analytics-node')
const analytics = new Analytics({ writeKey, host, flushAt: 3, maxRetries: 2 })
let failed = false
analytics.on('error', (e) => { console.error(e); failed = true })
analytics.identify({ userId: 'node-user', messageId: 'node-identify', traits: { email: 'node@example.com' } })
analytics.track({ userId: 'node-user', messageId: 'node-track', event: 'Order Completed', properties: { total: 4, sku: 'N-1' } })
analytics.page({ userId: 'node-user', messageId: 'node-page', name: 'Pricing', properties: { url: 'http://x/pricing' } })
analytics.screen({ anonymousId: 'node-anon', messageId: 'node-screen', name: 'Home' })
analytics.group({ userId: 'node-user', messageId: 'node-group', groupId: 'node-group', traits: { plan: 'team' } })
analytics.alias({ userId: 'node-user', previousId: 'node-anon', messageId: 'node-alias' })
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  if (failed) process.exit(1)
  console.log('sent')
})
"#;

#[tokio::test]
async fn segments_node_library_lands_every_call_once() {
    let Ok(modules) = std::env::var("TRIBUTARY_SEGMENT_NODE_MODULES") else {
        eprintln!(
            "skipped: TRIBUTARY_SEGMENT_NODE_MODULES is not set (scripts/test.sh installs @segment/analytics-node)"
        );
        return;
    };
    let s = Setup::new("");
    let c = s.start("spool").await;
    let out = tokio::process::Command::new("node")
        .args(["-e", NODE_CLIENT, &modules, KEY, &c.url])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    c.stop().await;
    landed_once(
        &s,
        &[
            ("identifies", "node-identify"),
            ("tracks", "node-track"),
            ("order_completed", "node-track"),
            ("pages", "node-page"),
            ("screens", "node-screen"),
            ("groups", "node-group"),
            ("aliases", "node-alias"),
        ],
    )
    .await;
    let orders = read_table(&s.table("web", "order_completed")).await;
    assert_eq!(by_id(&orders, "sku")["node-track"], "N-1");
    assert_eq!(
        by_id(&orders, "context_library_name")["node-track"],
        "@segment/analytics-node"
    );
    assert_eq!(
        by_id(&read_table(&s.table("web", "groups")).await, "plan")["node-group"],
        "team"
    );
}

/// The page analytics.js runs in: loads the analytics-next UMD bundle from the static
/// server, its settings from the collector (`cdnURL`), sends a page and a track call, and
/// writes whether each was delivered into `#out`.
const AJS_PAGE: &str = r#"<!doctype html>
<html><head><title>Install guide</title>
<script>
// The UMD bundle loads its lazy chunks from `<cdn>/analytics-next/bundles/`, the cdn
// being `window.analytics._cdn` when set (analytics-next src/browser/browser-umd.ts and
// src/lib/parse-cdn.ts): here, this static server, not cdn.segment.com.
window.analytics = { _cdn: location.origin }
</script>
<script src="/analytics-next/bundles/index.js"></script>
</head><body><pre id="out">loading</pre>
<script>
const out = document.getElementById('out')
const analytics = AnalyticsNext.AnalyticsBrowser.load(
  { writeKey: 'WRITE_KEY', cdnURL: 'COLLECTOR' },
  { disableClientPersistence: true })
Promise.all([
  analytics.page('Docs', 'Install', { plan: 'pro' }, { messageId: 'ajs-page' }),
  analytics.track('Order Completed', { total: 12.5, sku: 'W-1' }, { messageId: 'ajs-track' }),
]).then(
  (ctxs) => { out.textContent = 'RESULT ' + ctxs.map((c) => c.failedDelivery() ? 'failed:' + c.failedDelivery().reason : 'delivered').join(' ') },
  (e) => { out.textContent = 'RESULT error ' + e })
</script></body></html>
"#;

/// Serves `page` at `/` and the files of `umd` (analytics-next's dist/umd) under
/// `/analytics-next/bundles/` on 127.0.0.1; its base URL, and the paths it was asked for.
async fn static_server(
    page: String,
    umd: PathBuf,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::Path as UrlPath;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page)
            }),
        )
        .route(
            "/analytics-next/bundles/{file}",
            axum::routing::get(move |UrlPath(file): UrlPath<String>| async move {
                if file.contains('/') || file.starts_with('.') {
                    return StatusCode::NOT_FOUND.into_response();
                }
                match tokio::fs::read(umd.join(&file)).await {
                    Ok(bytes) => (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        bytes,
                    )
                        .into_response(),
                    Err(_) => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .layer(axum::middleware::from_fn(
            move |uri: Uri, req: axum::extract::Request, next: axum::middleware::Next| {
                log.lock().expect("log").push(uri.path().to_owned());
                next.run(req)
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), asked)
}

#[tokio::test]
async fn analytics_js_in_headless_chromium_lands_page_and_track() {
    let (Ok(chromium), Ok(umd)) = (
        std::env::var("TRIBUTARY_CHROMIUM"),
        std::env::var("TRIBUTARY_ANALYTICS_NEXT_UMD"),
    ) else {
        eprintln!(
            "skipped: TRIBUTARY_CHROMIUM or TRIBUTARY_ANALYTICS_NEXT_UMD is not set (scripts/test.sh installs Chromium and @segment/analytics-next)"
        );
        return;
    };
    let s = Setup::new("");
    let c = s.start("spool").await;
    let page = AJS_PAGE
        .replace("WRITE_KEY", KEY)
        .replace("COLLECTOR", &c.url);
    let (site, asked) = static_server(page, PathBuf::from(umd)).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            // Virtual time only advances while no request is pending, so the budget
            // covers the settings fetch and both sends however slow the machine is.
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{site}/"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), browser)
        .await
        .expect("Chromium exits within 120 s")
        .expect("Chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<pre id=\"out\">RESULT delivered delivered</pre>"),
        "the page did not deliver both calls; asked {:?}\n{dom}\n{}\ncollector log:\n{}",
        asked.lock().expect("log"),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    c.stop().await;
    landed_once(&s, &[("pages", "ajs-page"), ("tracks", "ajs-track")]).await;
    let pages = read_table(&s.table("web", "pages")).await;
    let tracks = read_table(&s.table("web", "tracks")).await;
    assert_eq!(by_id(&pages, "name")["ajs-page"], "Install");
    assert_eq!(by_id(&pages, "category")["ajs-page"], "Docs");
    assert_eq!(by_id(&pages, "plan")["ajs-page"], "pro");
    // analytics.js fills the page's properties and context from the document.
    assert_eq!(by_id(&pages, "title")["ajs-page"], "Install guide");
    assert_eq!(by_id(&pages, "url")["ajs-page"], format!("{site}/"));
    assert_eq!(by_id(&pages, "path")["ajs-page"], "/");
    assert_eq!(
        by_id(&tracks, "context_page_url")["ajs-track"],
        format!("{site}/")
    );
    assert_eq!(by_id(&tracks, "event")["ajs-track"], "order_completed");
    assert_eq!(by_id(&tracks, "event_text")["ajs-track"], "Order Completed");
    for table in [&pages, &tracks] {
        assert_eq!(
            by_id(table, "context_library_name")
                .values()
                .collect::<Vec<_>>(),
            ["analytics.js"]
        );
        assert!(
            by_id(table, "context_library_version")
                .values()
                .all(|v| v.starts_with("next-")),
            "{:?}",
            by_id(table, "context_library_version")
        );
        assert!(
            by_id(table, "context_user_agent")
                .values()
                .all(|ua| ua.contains("HeadlessChrome")),
            "{:?}",
            by_id(table, "context_user_agent")
        );
        assert!(!by_id(table, "sent_at").values().any(String::is_empty));
    }
    // One visitor: analytics.js gave both calls the same anonymous id, and no user id.
    let anonymous = by_id(&pages, "anonymous_id")["ajs-page"].clone();
    assert!(!anonymous.is_empty());
    assert_eq!(by_id(&tracks, "anonymous_id")["ajs-track"], anonymous);
    assert_eq!(by_id(&tracks, "user_id")["ajs-track"], "");
    let orders = read_table(&s.table("web", "order_completed")).await;
    assert_eq!(by_id(&orders, "sku")["ajs-track"], "W-1");
    assert_eq!(by_id(&orders, "total")["ajs-track"], "12.5");
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
async fn scrape(metrics: &str) -> HashMap<String, f64> {
    let resp = client()
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.expect("body");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn serve_metrics_count_requests_messages_and_commits() {
    let s = Setup::new("");
    let c = s.start_with("spool", &["--metrics", "127.0.0.1:0"]).await;
    let m = c.metrics.clone().expect("serve prints its metrics address");
    assert_eq!(
        client()
            .get(format!("{m}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let u = c.url.clone();
    let batch = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "mx1", "properties": {"total": 1}},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "mx2", "properties": {"total": 2}},
        {"type": "page", "userId": "u1", "name": "Home", "messageId": "mx3"},
    ]});
    assert_eq!(
        post(&u, "/v1/batch", Some(KEY), batch.to_string()).await.0,
        200
    );
    // A repeated messageId is acknowledged and counted as a duplicate when it lands.
    let again = json!({"userId": "u1", "event": "Order Completed", "messageId": "mx1"});
    assert_eq!(
        post(&u, "/v1/track", Some(KEY), again.to_string()).await.0,
        200
    );
    let identify = json!({"writeKey": OTHER_KEY, "userId": "u2", "messageId": "mx4"});
    assert_eq!(
        post(&u, "/v1/identify", None, identify.to_string()).await.0,
        200
    );
    assert_eq!(post(&u, "/v1/track", Some(KEY), "{not json").await.0, 400);
    assert_eq!(
        post(&u, "/v1/track", Some("not-a-key-0123456789"), "{}")
            .await
            .0,
        401
    );

    // Until every acknowledged message has landed (or been dropped as a duplicate).
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape(&m).await;
        if sample(&samples, "tributary_collector_pending_messages") == 0.0
            && sample(
                &samples,
                r#"tributary_collector_messages_landed_total{source="app"}"#,
            ) == 1.0
        {
            break samples;
        }
        assert!(Instant::now() < deadline, "nothing landed: {samples:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, value) in [
        (
            r#"tributary_collector_requests_total{source="web",status="200"}"#,
            2.0,
        ),
        (
            r#"tributary_collector_requests_total{source="web",status="400"}"#,
            1.0,
        ),
        (
            r#"tributary_collector_requests_total{source="app",status="200"}"#,
            1.0,
        ),
        (
            r#"tributary_collector_requests_total{source="",status="401"}"#,
            1.0,
        ),
        (
            r#"tributary_collector_messages_accepted_total{source="web"}"#,
            4.0,
        ),
        (
            r#"tributary_collector_messages_accepted_total{source="app"}"#,
            1.0,
        ),
        (
            r#"tributary_collector_messages_landed_total{source="web"}"#,
            3.0,
        ),
        (
            r#"tributary_collector_messages_landed_total{source="app"}"#,
            1.0,
        ),
        (r#"tributary_collector_duplicates_total{source="web"}"#, 1.0),
        (
            r#"tributary_records_total{source="web",stream="tracks"}"#,
            2.0,
        ),
        (
            r#"tributary_records_total{source="web",stream="order_completed"}"#,
            2.0,
        ),
        (
            r#"tributary_records_total{source="web",stream="pages"}"#,
            1.0,
        ),
        (
            r#"tributary_records_total{source="app",stream="identifies"}"#,
            1.0,
        ),
        ("tributary_collector_pending_messages", 0.0),
    ] {
        assert_eq!(sample(&samples, name), value, "{name} in {samples:?}");
    }
    for (source, table) in [
        ("web", "tracks"),
        ("web", "order_completed"),
        ("web", "pages"),
        ("app", "identifies"),
    ] {
        let labels = format!(r#"source="{source}",stream="{table}""#);
        let commits = sample(&samples, &format!("tributary_commits_total{{{labels}}}"));
        assert!(commits >= 1.0, "{labels}: {samples:?}");
        assert_eq!(
            sample(
                &samples,
                &format!("tributary_commit_duration_seconds_count{{{labels}}}")
            ),
            commits
        );
        assert!(sample(&samples, &format!("tributary_bytes_total{{{labels}}}")) > 0.0);
    }
    assert_eq!(
        client()
            .get(format!("{m}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    c.stop().await;
    // The counts agree with the tables.
    assert_eq!(
        strings(&read_table(&s.table("web", "tracks")).await, "id").len(),
        2
    );
}

/// A declarative vendor's event stream, end to end: the binary syncs Chargebee's `events`
/// (a spec stream with a `track` mapping) from its simulator and sends them to this
/// collector, which lands each once in `tracks` and in its event's table, named in Title
/// Case, from the customer the event is about.
#[tokio::test(flavor = "multi_thread")]
async fn a_declarative_event_stream_reaches_the_collector_through_its_track_mapping() {
    use tributary_declarative::sandbox::{DeclarativeSandbox, SandboxConfig};
    let s = Setup::new("");
    let c = s.start("spool").await;
    let sandbox = DeclarativeSandbox::start(
        tributary_declarative::builtin("chargebee").expect("built-in spec"),
        SandboxConfig {
            records: 40,
            ..SandboxConfig::default()
        },
        0,
    )
    .await
    .expect("simulator starts");
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str(&format!(
        "\n[sources.billing]\ntype = \"chargebee\"\n{}requests_per_second = 1000\nstreams = [\"events\"]\n\n[sources.billing.tracking]\nendpoint = {:?}\nwrite_key = \"{KEY}\"\n",
        sandbox.source_lines(),
        c.url
    ));
    std::fs::write(&s.config, config).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["sync", "--config"])
        .arg(&s.config)
        .output()
        .await
        .expect("sync runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let events = sandbox.ids("events");
    assert_eq!(events.len(), 40);
    assert!(
        text.contains(
            "tracking billing: 40 messages accepted by the collector, 0 pending, 0 rejected"
        ),
        "{text}"
    );
    c.stop().await;

    let rows = read_table(&s.table("web", "tracks")).await;
    let mut got = strings(&rows, "id");
    got.sort();
    let mut want: Vec<String> = events
        .iter()
        .map(|id| tributary_sdk::tracking::message_id("billing", &format!("events/{id}")))
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "one track call per event, with its stable messageId"
    );
    // Segment's warehouse schema: `event_text` is the name as sent, `event` its table.
    let names = strings(&rows, "event_text");
    let customers = ["16BjnTUNn9Ldd1Ts", "AzZlGJTVJcv7I2ZI", "169lfhTRUvVrR6DF"];
    for user in strings(&rows, "user_id") {
        assert!(customers.contains(&user.as_str()), "userId {user}");
    }
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for name in &names {
        *per_event.entry(name.clone()).or_default() += 1;
    }
    assert!(per_event.len() > 1, "{per_event:?}");
    for (name, n) in per_event {
        // "Customer Created": Title Case, each word capitalized, from `customer_created`.
        assert!(
            name.split(' ')
                .all(|w| w.starts_with(|c: char| c.is_ascii_uppercase())),
            "{name}"
        );
        let table = name.to_lowercase().replace(' ', "_");
        let landed = read_table(&s.table("web", &table)).await;
        assert_eq!(strings(&landed, "id").len(), n, "{table}");
    }
}
