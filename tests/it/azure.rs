//! The warehouse on Azure Blob Storage: Azurite (Microsoft's emulator, installed from npm by
//! scripts/test.sh and started here on 127.0.0.1), reached through object_store's Azure
//! backend with the options a user sets (account name, key, endpoint). The same checks as
//! on S3: a full then an incremental sync read back by Python's `deltalake`; two syncs of
//! one stream, decided by Azure's create-if-absent put (`If-None-Match: *`, refused with
//! 409); `compact` beside a sync.

use crate::common::Env;
use crate::proxy::{FaultProxy, Upstream};
use crate::stores::{
    Azurite, Bucket, Kind, compact_while_a_sync_runs, full_then_incremental_sync,
    two_writers_on_one_stream,
};

#[tokio::test(flavor = "multi_thread")]
async fn syncs_into_azure_and_python_reads_it_back() {
    let azurite = Azurite::start().await;
    full_then_incremental_sync(&Bucket::new(Kind::Azure, &azurite.server.endpoint)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_stream_on_azure_never_land_a_page_twice() {
    let azurite = Azurite::start().await;
    // Seen, not serialized: Azurite decides every race itself.
    let proxy = FaultProxy::start_for(&azurite.server.endpoint, Upstream::AsIs).await;
    two_writers_on_one_stream(&Bucket::new(Kind::Azure, &proxy.endpoint), &proxy, 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_beside_a_sync_on_azure() {
    let azurite = Azurite::start().await;
    let bucket = Bucket::new(Kind::Azure, &azurite.server.endpoint);
    let env = Env::stripe(3000, "streams = [\"customers\"]").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    compact_while_a_sync_runs(&env, async || bucket.id_names("raw/stripe/customers").await).await;
}
