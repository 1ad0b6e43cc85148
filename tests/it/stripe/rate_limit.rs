//! Rate limits: the client stays within the configured rate, and the vendor's 429s are
//! waited out and retried; the simulator binary's limits.

use crate::common::{Env, id_counts, read_table};
use tributary_stripe::sandbox::SandboxConfig;

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_never_sees_more_than_the_configured_rate() {
    let env = Env::stripe_with(
        SandboxConfig {
            records: 300,
            rate_limit: Some(10.0),
            ..Default::default()
        },
        "streams = [\"charges\", \"customers\", \"products\"]\npage_size = 20",
    )
    .await;
    // The account's rate is 8/s, shared by three streams syncing at once. The simulator
    // throttles above 10/s: the headroom absorbs network and scheduling jitter between
    // the client's pacing and the server's clock, which a busy CI machine has plenty of.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("requests_per_second = 500", "requests_per_second = 8")
        .replace("[sync]\n", "[sync]\nconcurrency = 3\n");
    std::fs::write(&env.config, text).unwrap();
    env.sandbox.reset_stats();
    env.sync_ok(&[]).await;
    let stats = env.sandbox.stats();
    assert!(stats.requests >= 20, "{stats:?}");
    assert_eq!(
        stats.rate_limited, 0,
        "no request was over the rate: {stats:?}"
    );
    // Paced at 8/s, a closed one-second window can hold both ends: 9 at most.
    assert!(stats.max_admitted_per_second <= 9, "{stats:?}");
}

/// Stripe's 429s carry no `Retry-After`, only `Stripe-Rate-Limited-Reason`: the client
/// backs off on its own, holding the account on `global-rate`, and lands every charge once.
#[tokio::test(flavor = "multi_thread")]
async fn throttled_requests_are_backed_off_and_retried() {
    let env = Env::stripe_with(
        SandboxConfig {
            records: 400,
            rate_limit: Some(3.0),
            ..Default::default()
        },
        "streams = [\"charges\"]\npage_size = 50",
    )
    .await;
    env.sync_ok(&[]).await;
    let stats = env.sandbox.stats();
    assert!(
        stats.rate_limited > 0,
        "the client was throttled: {stats:?}"
    );
    let counts = id_counts(&read_table(&env.table("charges")).await);
    assert_eq!(counts.len(), env.sandbox.ids("charges").len());
    assert!(counts.values().all(|&n| n == 1));
}

/// `tributary sandbox stripe` on a free port, its URL read from the line it prints.
async fn serve(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["sandbox", "stripe", "--port", "0", "--records", "20"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the simulator starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("# stripe simulator on ") {
                return rest.split(';').next().unwrap().to_owned();
            }
        }
        panic!("the simulator printed no URL");
    })
    .await
    .expect("the simulator prints its URL within a minute");
    (child, url)
}

/// Sends 40 requests to `GET /v1/charges` at once and counts the 429s, each checked to
/// be Stripe's `rate_limit` error naming the endpoint's limit.
async fn burst(url: &str) -> usize {
    let http = reqwest::Client::new();
    let answers = futures::future::join_all((0..40).map(|_| {
        http.get(format!("{url}/v1/charges?limit=1"))
            .bearer_auth(tributary_stripe::sandbox::StripeSandbox::api_key())
            .send()
    }))
    .await;
    let mut throttled = 0;
    for answer in answers {
        let answer = answer.expect("the simulator answers");
        if answer.status() == 429 {
            assert_eq!(
                answer.headers()["stripe-rate-limited-reason"],
                "endpoint-rate"
            );
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit", "{body}");
            throttled += 1;
        } else {
            assert_eq!(answer.status(), 200);
        }
    }
    throttled
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_binary_limits_each_endpoint_to_25_unless_told_a_raised_limit() {
    // Stripe's default: 25 a second to one endpoint, even on an account allowed 100.
    let (mut child, url) = serve(&["--rate-limit", "100"]).await;
    // 40 at once: 15 are refused when all land within one second; any refusal shows the
    // limit, so a slow machine spreading them out cannot fail this.
    let refused = burst(&url).await;
    assert!((1..=40).contains(&refused), "{refused} of 40 refused");
    child.kill().await.unwrap();
    // An account whose endpoint limit Stripe has raised to 100.
    let (mut child, url) = serve(&["--rate-limit", "100", "--endpoint-rate-limit", "100"]).await;
    assert_eq!(burst(&url).await, 0, "40 requests are within 100 a second");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_binary_refuses_limits_it_cannot_keep() {
    for (args, says) in [
        (
            &["sandbox", "zendesk", "--endpoint-rate-limit", "5"][..],
            "--endpoint-rate-limit: the zendesk simulator has no limit per endpoint; only stripe",
        ),
        (
            &["sandbox", "stripe", "--rate-limit", "0"][..],
            "`0` is not a rate",
        ),
        (
            &["sandbox", "salesforce", "--concurrency-limit", "3"][..],
            "--concurrency-limit: the salesforce simulator has no limit on requests at once; only stripe",
        ),
        (
            &["sandbox", "stripe", "--concurrency-limit", "0"][..],
            "--concurrency-limit",
        ),
        (
            &["sandbox", "stripe", "--endpoint-rate-limit", "fast"][..],
            "`fast` is not a rate",
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .args(["--port", "0"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
            .await
            .expect("refused at once, not served")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
