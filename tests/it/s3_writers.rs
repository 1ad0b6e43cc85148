//! Two `tributary sync` processes writing one S3 warehouse at the same time (moto, commits
//! as create-if-absent puts). On one stream, every commit version is won by exactly one of
//! them and the other stops without landing anything; on two streams, both land everything.
//! Traffic goes through the test proxy (no faults armed) to see every commit put, and the
//! bucket is versioned so that an overwritten commit file would show.

use crate::common::assert_success;
use crate::moto::Moto;
use crate::proxy::FaultProxy;
use crate::stores::{
    Bucket, Kind, assert_backfilled_exactly_once, commit_puts_were_conditional, race, racing_env,
    two_writers_on_one_stream,
};

/// Races run until one is decided by S3 (seen to need more than 3 on a loaded machine).
const ROUNDS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_stream_never_land_a_page_twice() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", true).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    two_writers_on_one_stream(&Bucket::new(Kind::S3, &proxy.endpoint), &proxy, ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_two_streams_both_land_everything() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", true).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // Charges and balance transactions have as many objects each, so the two runs end
    // together and also race to create and append to the run log.
    let bucket = Bucket::new(Kind::S3, &proxy.endpoint);
    let env = racing_env(1000, &bucket, "raw").await;
    let (a, b) = race(
        &env,
        &["sync", "--source", "stripe", "--stream", "charges"],
        &[
            "sync",
            "--source",
            "stripe",
            "--stream",
            "balance_transactions",
        ],
    )
    .await;
    assert_success(&a);
    assert_success(&b);
    for stream in ["charges", "balance_transactions"] {
        let want = env.sandbox.ids(stream);
        let cursor = assert_backfilled_exactly_once(
            &bucket,
            &format!("raw/stripe/{stream}"),
            &format!("tributary/stripe/{stream}"),
            &want,
        )
        .await;
        assert_eq!(cursor["phase"], "changes", "{stream}: {cursor}");
    }
    commit_puts_were_conditional(&proxy);

    // Both runs are in the run log.
    let mut runs: Vec<serde_json::Value> = bucket
        .rows("raw/_tributary/sync_runs", "stream, status, records")
        .await
        .into_iter()
        .map(|r| serde_json::json!([r["stream"], r["status"], r["records"]]))
        .collect();
    runs.sort_by_key(|r| r.to_string());
    let runs = serde_json::Value::Array(runs);
    let charges = env.sandbox.ids("charges").len();
    let balance = env.sandbox.ids("balance_transactions").len();
    assert_eq!(
        runs,
        serde_json::json!([
            ["balance_transactions", "ok", balance],
            ["charges", "ok", charges]
        ])
    );
}
