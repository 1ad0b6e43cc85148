//! `run --metrics`: the daemon serves Prometheus metrics, `/healthz` and `/readyz`, and a
//! real Prometheus server (Debian's package, installed by scripts/test.sh) scrapes them
//! and answers queries over them.

use std::time::Duration;

use crate::common::Env;
use crate::stores::Server;

/// The Prometheus binary: `$TRIBUTARY_PROMETHEUS`, else `prometheus` on the PATH.
fn prometheus() -> String {
    std::env::var("TRIBUTARY_PROMETHEUS").unwrap_or_else(|_| "prometheus".to_owned())
}

async fn get(url: &str) -> Option<(u16, String)> {
    let answer = reqwest::get(url).await.ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.text().await.ok()?))
}

/// Polls `url` (at most 60 s) until `done` accepts its answer; returns that answer.
async fn poll(url: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((status, body)) = get(url).await {
            if done(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} at {url}; last answer: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of an instant query's single sample, if it has one.
fn sample(body: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let result = v["data"]["result"].as_array()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_daemons_metrics_and_answers_queries() {
    let records = 300;
    let env = Env::stripe(
        records,
        "streams = [\"charges\"]\nschedule = \"*/2 * * * * *\"",
    )
    .await;
    let port = Server::free_port();
    let daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["run", "--metrics", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir.path().join("run.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("the daemon starts");
    let base = format!("http://127.0.0.1:{port}");
    poll(&format!("{base}/healthz"), "liveness", |s, _| s == 200).await;
    poll(&format!("{base}/readyz"), "readiness", |s, _| s == 200).await;
    let text = poll(
        &format!("{base}/metrics"),
        "the first sync's rows",
        |s, b| {
            s == 200
                && b.contains(&format!(
                    "tributary_records_total{{source=\"stripe\",stream=\"charges\"}} {records}"
                ))
        },
    )
    .await;
    for family in [
        "# TYPE tributary_commit_duration_seconds histogram",
        "# TYPE tributary_last_success_timestamp_seconds gauge",
        "tributary_vendor_requests_total{vendor=\"Stripe\",status=\"200\"}",
        "tributary_stream_runs_total{source=\"stripe\",stream=\"charges\",status=\"ok\"}",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // A real Prometheus scrapes it every second.
    let dir = env.dir.path();
    let prom_port = Server::free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tributary\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prometheus = tokio::process::Command::new(prometheus())
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; scripts/test.sh installs Debian's prometheus package",
                prometheus()
            )
        });
    let api = format!("http://127.0.0.1:{prom_port}");
    poll(&format!("{api}/-/ready"), "Prometheus", |s, _| s == 200).await;
    let query = |q: &str| {
        let mut url = url::Url::parse(&format!("{api}/api/v1/query")).expect("url");
        url.query_pairs_mut().append_pair("query", q);
        url.to_string()
    };
    // The rows landed, as Prometheus stored them from its scrapes.
    let body = poll(
        &query("sum by (stream) (tributary_records_total{source=\"stripe\"})"),
        "the records in Prometheus",
        |s, b| s == 200 && sample(b).is_some(),
    )
    .await;
    assert_eq!(sample(&body), Some(records as f64), "{body}");
    // The daemon is up, it is synced recently, and the vendor answered 200s.
    let body = poll(&query("up{job=\"tributary\"}"), "up", |s, b| {
        s == 200 && sample(b) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&body), Some(1.0));
    let body = poll(
        &query("time() - tributary_last_success_timestamp_seconds{stream=\"charges\"} < 60"),
        "a recent success",
        |s, b| s == 200 && sample(b).is_some(),
    )
    .await;
    assert!(sample(&body).is_some_and(|age| age >= 0.0), "{body}");
    let body = poll(
        &query("sum(tributary_vendor_requests_total{vendor=\"Stripe\",status=\"200\"})"),
        "vendor requests",
        |s, b| s == 200 && sample(b).is_some(),
    )
    .await;
    assert!(sample(&body).is_some_and(|n| n >= 3.0), "{body}");
    drop(daemon);
}
