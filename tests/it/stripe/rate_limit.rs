//! Rate limits: the client stays within the configured rate, and the vendor's 429s are
//! waited out and retried.

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

#[tokio::test(flavor = "multi_thread")]
async fn throttled_requests_are_retried_after_retry_after() {
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
