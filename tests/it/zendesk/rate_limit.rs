//! Zendesk's two rate limits, on a scaled window (a second instead of a minute) so the
//! tests take seconds: the client stays within both; the exports' quota header slows it
//! down before the quota is used up; and 429s are waited out and retried.

use std::time::{Duration, Instant};

use tributary_zendesk::sandbox::{Faults, RateLimits, SandboxConfig};

use super::ZendeskEnv;
use crate::common::{id_counts, read_table};

fn limits(requests: u32, export_requests: u32) -> Option<RateLimits> {
    Some(RateLimits {
        window: Duration::from_secs(1),
        requests,
        export_requests,
    })
}

async fn assert_exactly_once(env: &ZendeskEnv, stream: &str) {
    let counts = id_counts(&read_table(&env.table(stream)).await);
    assert_eq!(counts.len(), env.sandbox.ids(stream).len(), "{stream}");
    assert!(counts.values().all(|&n| n == 1), "{stream}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_never_sees_more_than_the_configured_rates() {
    // The simulator allows 15 requests a second, 5 of them exports. The client is paced
    // at 8/s and 3/s (480 and 180 a minute): the headroom absorbs the network and
    // scheduling jitter between the client's pacing and the server's clock on a busy
    // machine, as in Stripe's test.
    let env = ZendeskEnv::start_with(
        SandboxConfig {
            records: 40,
            rate_limits: limits(15, 5),
            ..Default::default()
        },
        (480, 180),
        "streams = [\"tickets\", \"users\", \"groups\", \"ticket_metrics\"]\nexport_page_size = 8\npage_size = 4",
    )
    .await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[sync]\n", "[sync]\nconcurrency = 4\n");
    std::fs::write(&env.config, text).unwrap();
    env.sandbox.reset_stats();
    env.sync_ok(&[]).await;
    let stats = env.sandbox.stats();
    assert!(stats.export_requests >= 8, "{stats:?}");
    assert!(stats.requests >= 18, "{stats:?}");
    assert_eq!(
        stats.rate_limited, 0,
        "no request was over a limit: {stats:?}"
    );
    // Paced at 3/s, a closed one-second window can hold both ends: 4 exports at most.
    assert!(stats.max_export_admitted_per_window <= 4, "{stats:?}");
    // All requests are paced at 8/s (9 in a closed window); an export request takes its
    // account permit before waiting for the export limit, so each of the two export
    // streams can add one more.
    assert!(stats.max_admitted_per_window <= 11, "{stats:?}");
    for stream in ["tickets", "users", "ticket_metrics"] {
        assert_exactly_once(&env, stream).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_headers_slow_the_client_before_the_quota_runs_out() {
    // The client would send exports at 100/s; the simulator allows 3 a second and says so
    // in `Zendesk-RateLimit-incremental-exports-cursor: total=3; remaining=N; resets=S`,
    // as Zendesk documents it for the cursor-based exports (its `ratelimit-*` headers are
    // the account's). Reading it, the client waits for the reset when one request is
    // left, and is never refused.
    let env = ZendeskEnv::start_with(
        SandboxConfig {
            records: 40,
            rate_limits: limits(100, 3),
            ..Default::default()
        },
        (6000, 6000),
        "streams = [\"tickets\"]\nexport_page_size = 5",
    )
    .await;
    env.sandbox.reset_stats();
    let started = Instant::now();
    env.sync_ok(&[]).await;
    let elapsed = started.elapsed();
    let stats = env.sandbox.stats();
    assert!(
        stats.export_requests >= 8,
        "40 tickets at 5 a page: {stats:?}"
    );
    assert_eq!(stats.rate_limited, 0, "the headers kept it in: {stats:?}");
    // Two requests per pause at most (the second leaves one): four pauses or more.
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert_exactly_once(&env, "tickets").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_requests_are_retried_after_retry_after() {
    let env = ZendeskEnv::start_with(
        SandboxConfig {
            records: 30,
            ..Default::default()
        },
        (6000, 6000),
        "streams = [\"tickets\", \"groups\"]\nexport_page_size = 10",
    )
    .await;
    env.sandbox.set_faults(Faults {
        throttle_next: 3,
        ..Default::default()
    });
    env.sync_ok(&[]).await;
    assert_eq!(env.sandbox.stats().faults_injected, 3);
    assert_exactly_once(&env, "tickets").await;
    assert_exactly_once(&env, "groups").await;
}
