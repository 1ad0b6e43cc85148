//! Tracking API end to end: Stripe events delivered as Segment messages to a fake collector
//! that validates every request, through an outage, a 400-answering collector and oversize
//! messages.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::common::{Env, id_counts, read_table};

/// What the fake collector saw and how it behaves.
#[derive(Default)]
pub(crate) struct Collector {
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Answer 400 to any batch holding this messageId.
    poison: Mutex<Option<String>>,
    /// Every message accepted with a 200, in order.
    pub(crate) accepted: Mutex<Vec<Value>>,
    /// Every way a request broke the Tracking API's rules.
    pub(crate) violations: Mutex<Vec<String>>,
    /// Requests received so far.
    requests: AtomicUsize,
    /// Never answer the request with this index (0-based): hold it until the client dies.
    hold: Mutex<Option<usize>>,
    /// Set once the held request has arrived.
    holding: AtomicBool,
}

impl Collector {
    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, String> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        // "wk:" in base64: the write key as user, an empty password.
        if header("authorization") != "Basic d2s6" {
            return Err(format!("bad auth {:?}", header("authorization")));
        }
        if header("content-type") != "application/json" {
            return Err("content type is not application/json".into());
        }
        if header("content-encoding") != "gzip" {
            return Err("body is not gzip".into());
        }
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut json)
            .map_err(|e| format!("gzip: {e}"))?;
        if json.len() > 500 * 1024 {
            return Err(format!("batch of {} bytes", json.len()));
        }
        let body: Value = serde_json::from_slice(&json).map_err(|e| format!("json: {e}"))?;
        if body["sentAt"].as_str().is_none() {
            return Err("no sentAt".into());
        }
        let batch = body["batch"].as_array().ok_or("no batch")?.clone();
        if batch.len() > 2500 {
            return Err(format!("batch of {} messages", batch.len()));
        }
        for m in &batch {
            let size = serde_json::to_vec(m).map_or(0, |v| v.len());
            if size > 32 * 1024 {
                return Err(format!("message of {size} bytes"));
            }
            let has = |k: &str| {
                m.get(k)
                    .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            };
            if !(has("userId") || has("anonymousId")) {
                return Err(format!("no userId or anonymousId: {m}"));
            }
            if !has("messageId") || !has("timestamp") || !m["context"]["library"].is_object() {
                return Err(format!(
                    "missing messageId, timestamp or context.library: {m}"
                ));
            }
            match m["type"].as_str() {
                Some("track") if !has("event") => return Err(format!("track without event: {m}")),
                Some("group") if !has("groupId") => {
                    return Err(format!("group without groupId: {m}"));
                }
                Some("track" | "identify" | "group" | "page" | "screen" | "alias") => {}
                _ => return Err(format!("bad type: {m}")),
            }
        }
        Ok(batch)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|m| m["messageId"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Starts the collector; returns its URL.
pub(crate) async fn start(collector: Arc<Collector>) -> String {
    let app = axum::Router::new().route(
        "/v1/batch",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let c = Arc::clone(&collector);
            async move {
                let n = c.requests.fetch_add(1, Ordering::SeqCst);
                if *c.hold.lock().unwrap() == Some(n) {
                    c.holding.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                if c.down.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let batch = match c.check(&headers, &body) {
                    Ok(batch) => batch,
                    Err(e) => {
                        c.violations.lock().unwrap().push(e);
                        return StatusCode::BAD_REQUEST;
                    }
                };
                let poison = c.poison.lock().unwrap().clone();
                if let Some(p) = poison
                    && batch.iter().any(|m| m["messageId"] == p.as_str())
                {
                    return StatusCode::BAD_REQUEST;
                }
                c.accepted.lock().unwrap().extend(batch);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn env_with(collector: &Arc<Collector>) -> Env {
    let url = start(Arc::clone(collector)).await;
    let env = Env::stripe(
        20,
        &format!(
            "streams = [\"events\"]\n\n[sources.stripe.tracking]\nendpoint = \"{url}\"\nwrite_key = \"wk\"\n"
        ),
    )
    .await;
    // These tests count the messages of the events they cause.
    env.sandbox.clear_events();
    env
}

fn make_customers(env: &Env, n: usize) {
    for i in 0..n {
        env.sandbox.create(
            "customers",
            json!({"email": format!("c{i}@example.com"), "name": format!("C {i}")}),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_sync_sends_the_accounts_thirty_days_of_history() {
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    // A seeded account has the events of its last 30 days, like a real one.
    let env = Env::stripe(
        100,
        &format!(
            "streams = [\"events\"]\n\n[sources.stripe.tracking]\nendpoint = \"{url}\"\nwrite_key = \"wk\"\n"
        ),
    )
    .await;
    let history = env.sandbox.ids("events");
    assert!(history.len() > 20, "{}", history.len());
    let summary = env.sync_ok(&[]).await;
    let n = history.len();
    assert!(
        summary.contains(&format!(
            "tracking stripe: {n} messages accepted by the collector, 0 pending, 0 rejected ({n} queued by this run)"
        )),
        "{summary}"
    );
    let events = id_counts(&read_table(&env.table("events")).await);
    assert_eq!(events.len(), n, "every event of the history lands once");
    let mut got = collector.ids();
    got.sort();
    let mut want: Vec<String> = history
        .iter()
        .map(|id| tributary_sdk::tracking::message_id("stripe", id))
        .collect();
    want.sort();
    assert_eq!(got, want, "one message per event");
    let accepted = collector.accepted.lock().unwrap().clone();
    assert!(accepted.iter().any(|m| m["type"] == "identify"));
    assert!(
        accepted
            .iter()
            .any(|m| m["type"] == "track" && m["event"] == "Charge Succeeded")
    );
    assert!(collector.violations.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_delivered_later_exactly_once() {
    let collector = Arc::new(Collector::default());
    collector.down.store(true, Ordering::SeqCst);
    let env = env_with(&collector).await;
    make_customers(&env, 30);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains(
            "tracking stripe: 0 messages accepted by the collector, 30 pending, 0 rejected (30 queued by this run)"
        ),
        "{summary}"
    );
    let state = env.run(&["state"]).await;
    let state = String::from_utf8_lossy(&state.stdout).into_owned();
    assert!(
        state.contains("tracking outbox: 30 messages pending"),
        "{state}"
    );

    collector.down.store(false, Ordering::SeqCst);
    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains("tracking stripe: 30 messages accepted by the collector, 0 pending"),
        "{summary}"
    );
    let mut ids = collector.ids();
    let events = id_counts(&read_table(&env.table("events")).await);
    assert_eq!(ids.len(), events.len());
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each messageId exactly once");
    let mut want: Vec<String> = events
        .keys()
        .map(|id| tributary_sdk::tracking::message_id("stripe", id))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    for m in collector.accepted.lock().unwrap().iter() {
        assert_eq!(m["type"], "identify");
        assert!(
            m["userId"]
                .as_str()
                .is_some_and(|id| id.starts_with("cus_"))
        );
        assert!(m["traits"]["email"].as_str().is_some());
    }
    assert!(collector.violations.lock().unwrap().is_empty());

    // Nothing left: a third sync sends nothing again.
    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains("tracking stripe: 0 messages accepted by the collector, 0 pending"),
        "{summary}"
    );
    assert_eq!(collector.ids().len(), 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_is_isolated_and_the_rest_delivered() {
    let collector = Arc::new(Collector::default());
    let env = env_with(&collector).await;
    make_customers(&env, 25);
    // Creations are identifies; the deletion is a `Customer Deleted` track.
    let ids = env.sandbox.ids("customers");
    assert!(env.sandbox.delete("customers", &ids[0]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let events = env.sandbox.ids("events");
    assert_eq!(events.len(), 26);
    let poisoned = tributary_sdk::tracking::message_id("stripe", &events[7]);
    *collector.poison.lock().unwrap() = Some(poisoned.clone());

    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains(
            "tracking stripe: 25 messages accepted by the collector, 0 pending, 1 rejected"
        ),
        "{summary}"
    );
    let got = collector.ids();
    assert_eq!(got.len(), 25);
    assert!(!got.contains(&poisoned));
    let accepted = collector.accepted.lock().unwrap().clone();
    let deleted = accepted
        .iter()
        .find(|m| m["type"] == "track")
        .expect("the deletion is a track");
    assert_eq!(deleted["event"], "Customer Deleted");
    assert_eq!(deleted["userId"], ids[0].as_str());
    assert!(collector.violations.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_messages_are_truncated_and_marked() {
    let collector = Arc::new(Collector::default());
    let env = env_with(&collector).await;
    let huge = "n".repeat(40_000);
    env.sandbox.create(
        "customers",
        json!({"email": "big@example.com", "name": huge}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains("tracking stripe: 1 messages accepted by the collector"),
        "{summary}"
    );
    let accepted = collector.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1);
    let m = &accepted[0];
    assert_eq!(m["traits"]["email"], "big@example.com");
    assert!(m["traits"].get("name").is_none());
    assert_eq!(
        m["context"]["tributary"]["truncated_fields"],
        json!(["name"])
    );
    assert!(collector.violations.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_mid_delivery_resends_only_unacknowledged_messages() {
    let collector = Arc::new(Collector::default());
    // The second batch is never answered: the binary is killed while waiting for it.
    *collector.hold.lock().unwrap() = Some(1);
    let env = env_with(&collector).await;
    env.add_sync_option("lease_seconds = 1");
    // ~15 KB identifies: about 32 to a 500 KB batch, so 100 of them take four batches.
    let name = "k".repeat(15_000);
    for i in 0..100 {
        env.sandbox.create(
            "customers",
            json!({"email": format!("k{i}@example.com"), "name": format!("{name}{i}")}),
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("sync")
        .arg("--config")
        .arg(&env.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !collector.holding.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never reached batch 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no chance to clean up.
    child.kill().await.expect("kill");
    let first = collector.ids();
    assert!(!first.is_empty() && first.len() < 100, "{}", first.len());
    // The killed worker's lease on the stream (and so its outbox) expires first.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    env.sync_ok(&[]).await;
    let ids = collector.ids();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 100, "every messageId delivered");
    assert_eq!(ids.len(), 100, "none acknowledged twice");
    assert!(collector.violations.lock().unwrap().is_empty());
}
