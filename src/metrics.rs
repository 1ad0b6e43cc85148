//! Prometheus metrics of this process, and the HTTP endpoint `run --metrics ADDR` and
//! `serve --metrics ADDR` serve them on (`/metrics` in the text exposition format 0.0.4,
//! `/healthz`, `/readyz`).
//!
//! Counters only grow for the life of the process (Prometheus' `rate()` handles restarts);
//! gauges hold the latest value. Durations are in seconds, times in Unix seconds. Labels
//! are the source and stream names (lowercase path segments) and, for vendor requests, the
//! vendor and HTTP status (`error` when there was no answer). The collector's table commits
//! count in the same families as a sync's (`tributary_records_total`, ...), with the table
//! (`tracks`, `order_completed`, ...) as the `stream`; its HTTP side has the
//! `tributary_collector_*` families.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, anyhow};

use crate::engine::{Cancel, Status, StreamOutcome};

/// Upper bounds of the commit-latency histogram, in seconds.
const COMMIT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

type Key = (String, String);

/// A per-vendor metric: name, type, help, and its value from the SDK's counters.
type VendorFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&tributary_sdk::stats::VendorStats) -> f64,
);

#[derive(Default)]
struct Histogram {
    buckets: [u64; COMMIT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct State {
    records: BTreeMap<Key, u64>,
    bytes: BTreeMap<Key, u64>,
    commits: BTreeMap<Key, u64>,
    commit_seconds: BTreeMap<Key, Histogram>,
    runs: BTreeMap<(String, String, &'static str), u64>,
    sync_seconds: BTreeMap<Key, f64>,
    last_success: BTreeMap<Key, f64>,
    outbox_backlog: BTreeMap<Key, u64>,
    messages_sent: BTreeMap<Key, u64>,
    leases_held: BTreeMap<Key, i64>,
    collector: Collector,
}

/// The collector's own families.
#[derive(Default)]
struct Collector {
    /// (source, HTTP status) → requests answered.
    requests: BTreeMap<(String, u16), u64>,
    accepted: BTreeMap<String, u64>,
    landed: BTreeMap<String, u64>,
    duplicates: BTreeMap<String, u64>,
    busy: BTreeMap<&'static str, u64>,
    /// Messages acknowledged and not landed yet, read at each scrape.
    pending: Option<Box<dyn Fn() -> u64 + Send>>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut State)) {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(state.get_or_insert_with(State::default));
}

fn key(source: &str, stream: &str) -> Key {
    (source.to_owned(), stream.to_owned())
}

/// A commit of `records` rows and `bytes` bytes of files that took `seconds`.
pub fn commit(source: &str, stream: &str, records: u64, bytes: u64, seconds: f64) {
    with(|s| {
        let k = key(source, stream);
        *s.records.entry(k.clone()).or_default() += records;
        *s.bytes.entry(k.clone()).or_default() += bytes;
        *s.commits.entry(k.clone()).or_default() += 1;
        let h = s.commit_seconds.entry(k).or_default();
        for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    });
}

/// A stream's run ended (including `leased` and `failed` ones).
pub fn stream_finished(o: &StreamOutcome) {
    with(|s| {
        let k = key(&o.source, &o.stream);
        *s.runs
            .entry((o.source.clone(), o.stream.clone(), o.status.word()))
            .or_default() += 1;
        if matches!(o.status, Status::Leased(_)) {
            return;
        }
        s.sync_seconds.insert(k.clone(), o.seconds());
        if o.status == Status::Succeeded {
            s.last_success
                .insert(k.clone(), o.ended_at.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(t) = &o.tracking {
            s.outbox_backlog.insert(k.clone(), t.pending);
            *s.messages_sent.entry(k).or_default() += t.sent;
        }
    });
}

/// This process took (`+1`) or gave up (`-1`) a stream's lease.
pub fn lease_held(source: &str, stream: &str, delta: i64) {
    with(|s| *s.leases_held.entry(key(source, stream)).or_default() += delta);
}

/// The collector answered a request with `status`; `source` is empty when the request
/// named no known source (a 401, an unknown endpoint).
pub fn collector_request(source: &str, status: u16) {
    with(|s| {
        *s.collector
            .requests
            .entry((source.to_owned(), status))
            .or_default() += 1
    });
}

/// The collector acknowledged (spooled) `messages` messages of `source`.
pub fn collector_accepted(source: &str, messages: u64) {
    with(|s| *s.collector.accepted.entry(source.to_owned()).or_default() += messages);
}

/// A landing round put `messages` new messages of `source` in their call type's table,
/// and dropped `duplicates` whose messageId had landed already.
pub fn collector_landed(source: &str, messages: u64, duplicates: u64) {
    with(|s| {
        *s.collector.landed.entry(source.to_owned()).or_default() += messages;
        *s.collector.duplicates.entry(source.to_owned()).or_default() += duplicates;
    });
}

/// The collector answered 503: `reason` is `behind` (`serve.max_pending` messages not
/// landed yet) or `spool_busy` (the spool writer's queue was full).
pub fn collector_busy(reason: &'static str) {
    with(|s| *s.collector.busy.entry(reason).or_default() += 1);
}

/// Where the collector's backlog (acknowledged, not landed) is read at each scrape.
pub fn collector_backlog(pending: impl Fn() -> u64 + Send + 'static) {
    with(|s| s.collector.pending = Some(Box::new(pending)));
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn stream_family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: &BTreeMap<Key, V>,
) {
    header(out, name, kind, help);
    for ((source, stream), v) in values {
        let _ = writeln!(
            out,
            "{name}{{source=\"{}\",stream=\"{}\"}} {v}",
            escape(source),
            escape(stream)
        );
    }
}

/// Every metric, in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    with(|s| {
        stream_family(
            &mut out,
            "tributary_records_total",
            "counter",
            "Rows landed in a stream's table.",
            &s.records,
        );
        stream_family(
            &mut out,
            "tributary_bytes_total",
            "counter",
            "Bytes of data files (and deletion vectors) landed for a stream.",
            &s.bytes,
        );
        stream_family(
            &mut out,
            "tributary_commits_total",
            "counter",
            "Table commits of a stream.",
            &s.commits,
        );
        header(
            &mut out,
            "tributary_commit_duration_seconds",
            "histogram",
            "Time a table commit took.",
        );
        for ((source, stream), h) in &s.commit_seconds {
            let labels = format!(
                "source=\"{}\",stream=\"{}\"",
                escape(source),
                escape(stream)
            );
            for (bound, n) in COMMIT_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "tributary_commit_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "tributary_commit_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\ntributary_commit_duration_seconds_sum{{{labels}}} {}\ntributary_commit_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        header(
            &mut out,
            "tributary_stream_runs_total",
            "counter",
            "Stream runs by how they ended (ok, failed, cancelled, deferred, skipped, leased).",
        );
        for ((source, stream, status), n) in &s.runs {
            let _ = writeln!(
                out,
                "tributary_stream_runs_total{{source=\"{}\",stream=\"{}\",status=\"{status}\"}} {n}",
                escape(source),
                escape(stream)
            );
        }
        stream_family(
            &mut out,
            "tributary_sync_duration_seconds",
            "gauge",
            "How long the stream's last run took.",
            &s.sync_seconds,
        );
        stream_family(
            &mut out,
            "tributary_last_success_timestamp_seconds",
            "gauge",
            "When the stream's last successful run ended (Unix time).",
            &s.last_success,
        );
        stream_family(
            &mut out,
            "tributary_outbox_backlog",
            "gauge",
            "Tracking-API messages waiting in the stream's outbox after its last delivery.",
            &s.outbox_backlog,
        );
        stream_family(
            &mut out,
            "tributary_tracking_messages_sent_total",
            "counter",
            "Tracking-API messages the collector accepted.",
            &s.messages_sent,
        );
        stream_family(
            &mut out,
            "tributary_leases_held",
            "gauge",
            "Stream leases this process holds (1 while it syncs the stream).",
            &s.leases_held,
        );
        render_collector(&mut out, &s.collector);
    });
    let vendors = tributary_sdk::stats::snapshot();
    header(
        &mut out,
        "tributary_vendor_requests_total",
        "counter",
        "Vendor API answers by HTTP status (`error`: no answer).",
    );
    for (vendor, v) in &vendors {
        for (status, n) in &v.requests {
            let _ = writeln!(
                out,
                "tributary_vendor_requests_total{{vendor=\"{}\",status=\"{status}\"}} {n}",
                escape(vendor)
            );
        }
    }
    let families: [VendorFamily; 3] = [
        (
            "tributary_vendor_throttled_total",
            "counter",
            "429 answers from the vendor.",
            |v| v.throttled as f64,
        ),
        (
            "tributary_vendor_retries_total",
            "counter",
            "Vendor requests retried.",
            |v| v.retries as f64,
        ),
        (
            "tributary_rate_limiter_wait_seconds_total",
            "counter",
            "Time requests waited for the account's rate limiter or a vendor-set pause.",
            |v| v.limiter_wait_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        header(&mut out, name, kind, help);
        for (vendor, v) in &vendors {
            let _ = writeln!(out, "{name}{{vendor=\"{}\"}} {}", escape(vendor), value(v));
        }
    }
    out
}

fn render_collector(out: &mut String, c: &Collector) {
    header(
        out,
        "tributary_collector_requests_total",
        "counter",
        "Tracking-API requests the collector answered, by source and HTTP status (source \"\": no known write key).",
    );
    for ((source, status), n) in &c.requests {
        let _ = writeln!(
            out,
            "tributary_collector_requests_total{{source=\"{}\",status=\"{status}\"}} {n}",
            escape(source)
        );
    }
    let per_source = [
        (
            "tributary_collector_messages_accepted_total",
            "Messages the collector acknowledged (fsynced in its spool).",
            &c.accepted,
        ),
        (
            "tributary_collector_messages_landed_total",
            "Messages landed in their call type's table (tracks, pages, ...).",
            &c.landed,
        ),
        (
            "tributary_collector_duplicates_total",
            "Messages not landed because their messageId landed within the last 24 hours.",
            &c.duplicates,
        ),
    ];
    for (name, help, values) in per_source {
        header(out, name, "counter", help);
        for (source, n) in values {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {n}", escape(source));
        }
    }
    header(
        out,
        "tributary_collector_busy_total",
        "counter",
        "503 answers by reason: behind (serve.max_pending messages not landed) or spool_busy.",
    );
    for (reason, n) in &c.busy {
        let _ = writeln!(
            out,
            "tributary_collector_busy_total{{reason=\"{reason}\"}} {n}"
        );
    }
    if let Some(pending) = &c.pending {
        header(
            out,
            "tributary_collector_pending_messages",
            "gauge",
            "Messages acknowledged and not landed yet (the spool's backlog).",
        );
        let _ = writeln!(out, "tributary_collector_pending_messages {}", pending());
    }
}

/// Serves `/metrics`, `/healthz` (200 while the process runs) and `/readyz` (200 once
/// `ready` is set, 503 before) on `addr` until `cancel` fires; returns the address bound
/// (port 0 picks a free one). Binding fails at once with an error naming the address.
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>, cancel: Cancel) -> Result<SocketAddr> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("cannot listen on --metrics {addr}: {e}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let addr = listener
        .local_addr()
        .map_err(|e| anyhow!("cannot listen on --metrics {addr}: {e}"))?;
    tracing::info!(addr = %addr, "Serving metrics on /metrics, /healthz and /readyz.");
    tokio::spawn(async move {
        let stop = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "The metrics endpoint stopped.");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_follow_prometheus_conventions() {
        commit("m_src", "m_stream", 10, 2048, 0.2);
        commit("m_src", "m_stream", 5, 100, 3.0);
        lease_held("m_src", "m_stream", 1);
        let text = render();
        for line in [
            "# TYPE tributary_records_total counter",
            "tributary_records_total{source=\"m_src\",stream=\"m_stream\"} 15",
            "tributary_bytes_total{source=\"m_src\",stream=\"m_stream\"} 2148",
            "tributary_commits_total{source=\"m_src\",stream=\"m_stream\"} 2",
            "tributary_commit_duration_seconds_bucket{source=\"m_src\",stream=\"m_stream\",le=\"0.25\"} 1",
            "tributary_commit_duration_seconds_bucket{source=\"m_src\",stream=\"m_stream\",le=\"+Inf\"} 2",
            "tributary_commit_duration_seconds_count{source=\"m_src\",stream=\"m_stream\"} 2",
            "tributary_leases_held{source=\"m_src\",stream=\"m_stream\"} 1",
            "# TYPE tributary_vendor_requests_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn collector_families_count_by_source_status_and_reason() {
        collector_request("m_web", 200);
        collector_request("m_web", 200);
        collector_request("", 401);
        collector_accepted("m_web", 150);
        collector_landed("m_web", 149, 1);
        collector_busy("behind");
        collector_backlog(|| 7);
        let text = render();
        for line in [
            "# TYPE tributary_collector_requests_total counter",
            "tributary_collector_requests_total{source=\"m_web\",status=\"200\"} 2",
            "tributary_collector_requests_total{source=\"\",status=\"401\"} 1",
            "tributary_collector_messages_accepted_total{source=\"m_web\"} 150",
            "tributary_collector_messages_landed_total{source=\"m_web\"} 149",
            "tributary_collector_duplicates_total{source=\"m_web\"} 1",
            "tributary_collector_busy_total{reason=\"behind\"} 1",
            "# TYPE tributary_collector_pending_messages gauge",
            "tributary_collector_pending_messages 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
