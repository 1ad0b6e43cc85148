//! The warehouse on a real S3-compatible server (moto, installed by scripts/test.sh and
//! started here on 127.0.0.1): full and incremental syncs through object_store with
//! conditional puts, `state`, and the tables read back by Python's `deltalake` from S3;
//! and `compact` beside a running sync there.

use crate::moto::Moto;
use crate::stores::{Bucket, Kind, compact_while_a_sync_runs, full_then_incremental_sync};

#[tokio::test(flavor = "multi_thread")]
async fn syncs_into_s3_and_python_reads_it_back() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", false).await;
    full_then_incremental_sync(&Bucket::new(Kind::S3, &moto.endpoint)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_beside_a_sync_on_s3() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", false).await;
    let bucket = Bucket::new(Kind::S3, &moto.endpoint);
    let env = crate::common::Env::stripe(3000, "streams = [\"customers\"]").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    compact_while_a_sync_runs(&env, async || bucket.id_names("raw/stripe/customers").await).await;
}
