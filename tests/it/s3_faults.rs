//! Object-store faults between the runtime and S3 (and, for commit puts, Azure and GCS):
//! syncs through the test proxy in front of moto (Azurite, fake-gcs-server), with errors, lost answers, closed connections, cut bodies and answers slower than
//! the client's timeout injected into data-file uploads (single and multipart), commit-file
//! puts and reads. Whatever happens, nothing is lost or landed twice: a sync either gets
//! through with object_store's retries, or fails with a message naming the store's
//! problem, and the next sync (faults off) lands the rest exactly once.
//!
//! The client is tuned through `[warehouse.options]` so that retries and timeouts take
//! milliseconds to seconds instead of object_store's defaults (30 s timeout, 10 retries
//! within 3 minutes): see [`client_options`].

use std::time::Duration;

use hyper::Method;
use tributary_stripe::sandbox::SandboxConfig;

use crate::common::Env;
use crate::moto::{Moto, s3_warehouse};
use crate::proxy::{Fault, FaultProxy, Rule, Target, Upstream};
use crate::stores::{Azurite, Bucket, FakeGcs, Kind, assert_backfilled_exactly_once};

/// object_store's retry and timeout options (documented in config.example.toml): at most
/// `retries` retries, 10–100 ms apart, and requests given up after `timeout`.
fn client_options(retries: u32, timeout: &str) -> String {
    format!(
        "max_retries = \"{retries}\"\nretry_timeout = \"30s\"\n\"backoff_config.init_backoff\" = \"10ms\"\n\"backoff_config.max_backoff\" = \"100ms\"\nconnect_timeout = \"2s\"\ntimeout = \"{timeout}\"\n"
    )
}

const APP_ID: &str = "tributary/stripe/charges";
/// What a run logs when it finds the commit it was told failed in the table.
const LOST_ANSWER: &str = "The object store's answer to a commit was lost, but the commit landed.";
const TABLE: &str = "raw/stripe/charges";

/// moto, the proxy in front of it, and a sandbox with `records` charges synced to
/// `s3://lake/raw` through the proxy with `sync` as the `[sync]` tuning, and the client's
/// [`client_options`].
struct Faulty {
    /// The store's server, stopped on drop.
    _server: StoreServer,
    /// The bucket as a reader outside the test's faults reaches it.
    direct: Bucket,
    proxy: FaultProxy,
    env: Env,
}

/// The server behind a [`Faulty`] store.
enum StoreServer {
    S3(#[allow(dead_code)] Moto),
    Azure(#[allow(dead_code)] Azurite),
    Gcs(#[allow(dead_code)] FakeGcs),
}

impl Faulty {
    async fn start(records: usize, sync: &str, retries: u32, timeout: &str) -> Faulty {
        Faulty::start_on(Kind::S3, records, sync, retries, timeout).await
    }

    /// [`Faulty::start`] on any store: S3 (moto), Azure (Azurite) or GCS (fake-gcs-server
    /// behind its translating proxy, which is then also the fault proxy).
    async fn start_on(
        kind: Kind,
        records: usize,
        sync: &str,
        retries: u32,
        timeout: &str,
    ) -> Faulty {
        let (server, direct, proxy) = match kind {
            Kind::S3 => {
                let moto = Moto::start().await;
                moto.create_bucket("lake", true).await;
                let proxy = FaultProxy::start(&moto.endpoint).await;
                let direct = Bucket::new(Kind::S3, &moto.endpoint);
                (StoreServer::S3(moto), direct, proxy)
            }
            Kind::Azure => {
                let azurite = Azurite::start().await;
                let proxy = FaultProxy::start_for(&azurite.server.endpoint, Upstream::AsIs).await;
                let direct = Bucket::new(Kind::Azure, &azurite.server.endpoint);
                (StoreServer::Azure(azurite), direct, proxy)
            }
            Kind::Gcs => {
                let fake = FakeGcs::start().await;
                let proxy = FaultProxy::start_for(
                    &fake.server.endpoint,
                    Upstream::FakeGcs {
                        preconditions: true,
                    },
                )
                .await;
                let direct = Bucket::new(Kind::Gcs, &proxy.endpoint);
                (StoreServer::Gcs(fake), direct, proxy)
            }
        };
        let env = Env::stripe_with(
            SandboxConfig {
                records,
                ..Default::default()
            },
            // Full pages read in order, so commits hold 100 records each and the tests can
            // say which commits landed (a concurrent backfill's ranges end part-full).
            "streams = [\"charges\"]\npage_size = 100\nmax_concurrency = 1",
        )
        .await;
        let options = client_options(retries, timeout);
        env.use_bucket(&match kind {
            Kind::S3 => s3_warehouse(&proxy.endpoint, "s3://lake/raw", &options),
            other => Bucket::new(other, &proxy.endpoint).warehouse_section("raw", &options),
        });
        let text = std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("batch_size = 500", sync);
        std::fs::write(&env.config, text).unwrap();
        Faulty {
            _server: server,
            direct,
            proxy,
            env,
        }
    }

    /// Runs a sync; its exit code and stdout + stderr.
    async fn sync(&self) -> (Option<i32>, String) {
        let out = self.env.run(&["sync"]).await;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Asserts that the charges table holds every charge exactly once, landed once each,
    /// and that its cursor finished the backfill.
    async fn assert_complete(&self) {
        let want = self.env.sandbox.ids("charges");
        let cursor = assert_backfilled_exactly_once(&self.direct, TABLE, APP_ID, &want).await;
        assert_eq!(
            cursor["phase"], "changes",
            "the backfill finished: {cursor}"
        );
    }

    /// Requests the proxy saw that `target` matches, and how many of them it broke.
    fn count(&self, target: Target) -> (usize, usize) {
        let seen: Vec<_> = self
            .proxy
            .seen()
            .into_iter()
            .filter(|s| target.matches(&s.method, &s.path, &s.query))
            .collect();
        let broken = seen.iter().filter(|s| s.fault.is_some()).count();
        (seen.len(), broken)
    }
}

/// The records the summary says the charges stream landed.
fn landed(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("stripe.charges"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"))
}

/// The summary line of a stream that failed.
fn failed_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.trim_start().starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn data_file_upload_and_read_faults_are_retried() {
    data_file_faults_on(Kind::S3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_file_upload_and_read_faults_on_azure_are_retried() {
    data_file_faults_on(Kind::Azure).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_file_upload_and_read_faults_on_gcs_are_retried() {
    data_file_faults_on(Kind::Gcs).await;
}

async fn data_file_faults_on(kind: Kind) {
    let f = Faulty::start_on(kind, 600, "batch_size = 50\ncommit_every = 100", 3, "5s").await;
    // Data files: refused twice, then one landed whose answer is lost, then one whose
    // connection is closed after it landed. Reads of log files: every third body cut short
    // (object_store reads the rest again), 3 times.
    f.proxy
        .inject(Rule::new(Target::DataFile, Fault::Refuse(503)).times(2));
    f.proxy
        .inject(Rule::new(Target::DataFile, Fault::LoseAnswer(500)).skip(3));
    f.proxy
        .inject(Rule::new(Target::DataFile, Fault::HangUp).skip(5));
    f.proxy
        .inject(Rule::new(Target::Read, Fault::CutBody).every(3).times(3));
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(0), "the retries get through:\n{text}");
    assert_eq!(f.proxy.injected(), 7, "every fault was injected");
    assert!(text.contains("1 streams, 600 records, 0 failed"), "{text}");
    f.assert_complete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_cut_short_fail_the_sync_and_the_next_one_lands_the_rest() {
    let f = Faulty::start(
        600,
        "batch_size = 50\ncommit_every = 100\nlease_seconds = 1",
        3,
        "5s",
    )
    .await;
    // object_store reads an object again when its body is cut short, but not a listing:
    // once listings break (after the first commits), the sync stops and names the
    // listing, keeping what it committed.
    f.proxy
        .inject(Rule::new(Target::List, Fault::CutBody).skip(24).times(20));
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(1), "{text}");
    let error = failed_line(&text);
    assert!(error.contains("list response body"), "{error}");
    assert!(
        landed(&text) > 0,
        "commits before the failure stay:\n{text}"
    );
    f.proxy.clear();
    // A lease the failed run could not release (its listing broke too) expires first.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(" leased"), "{text}");
    f.assert_complete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_put_faults_are_retried_and_a_landed_commit_is_recognised() {
    commit_put_faults_on(Kind::S3).await;
}

/// The same on Azure: a retried commit put answered 409 `BlobAlreadyExists` after a lost
/// answer is recognised as the run's own.
#[tokio::test(flavor = "multi_thread")]
async fn commit_put_faults_on_azure_are_retried_and_a_landed_commit_is_recognised() {
    commit_put_faults_on(Kind::Azure).await;
}

/// The same on GCS: 412 to the retried create-if-absent upload.
#[tokio::test(flavor = "multi_thread")]
async fn commit_put_faults_on_gcs_are_retried_and_a_landed_commit_is_recognised() {
    commit_put_faults_on(Kind::Gcs).await;
}

async fn commit_put_faults_on(kind: Kind) {
    let f = Faulty::start_on(kind, 600, "batch_size = 50\ncommit_every = 100", 3, "5s").await;
    // A commit refused before it reaches S3 is simply put again. A commit that landed but
    // whose answer was lost (an error status, or the connection closed) is put again too,
    // and S3 refuses the second put because the version exists: the run must see that the
    // version holds its own commit, not another writer's.
    f.proxy
        .inject(Rule::new(Target::CommitFile, Fault::Refuse(503)).skip(2));
    f.proxy
        .inject(Rule::new(Target::CommitFile, Fault::LoseAnswer(503)).skip(4));
    f.proxy
        .inject(Rule::new(Target::CommitFile, Fault::HangUp).skip(6));
    let (code, text) = f.sync().await;
    assert_eq!(f.proxy.injected(), 3, "every fault was injected:\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 streams, 600 records, 0 failed"), "{text}");
    assert_eq!(
        text.matches(LOST_ANSWER).count(),
        2,
        "both landed commits were recognised:\n{text}"
    );
    f.assert_complete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_slower_than_the_timeout_fail_cleanly_or_are_retried_or_recognised() {
    let f = Faulty::start(400, "batch_size = 50\ncommit_every = 100", 1, "2s").await;
    let stall = Fault::Stall(Duration::from_secs(4));
    // After two commits, a data-file upload that times out every time it is tried: the
    // sync fails and says so.
    f.proxy
        .inject(Rule::new(Target::DataFile, stall).skip(2).times(2));
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(1), "{text}");
    let error = failed_line(&text);
    assert!(
        error.contains("uploading the data file") && error.contains("timed out"),
        "the error names the timeout: {error}"
    );
    assert_eq!(landed(&text), 200, "the two commits before stay:\n{text}");
    f.proxy.clear();

    // The next sync resumes. A read whose answer comes after the timeout is read again.
    // A commit put (create-if-absent, which object_store does not retry on a timeout)
    // that landed but whose answer comes too late must not fail the run, nor land twice.
    f.proxy.inject(Rule::new(Target::Read, stall).skip(2));
    f.proxy.inject(Rule::new(Target::CommitFile, stall));
    let (code, text) = f.sync().await;
    assert_eq!(f.proxy.injected(), 2, "every fault was injected:\n{text}");
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches(LOST_ANSWER).count(), 1, "{text}");
    f.assert_complete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_faults_are_retried() {
    // One data file of ~12 MB (unique columns go without a dictionary: about 83 bytes a
    // charge): object_store uploads it in 10 MB parts.
    let f = Faulty::start(
        150_000,
        "batch_size = 8192\ncommit_every = 1000000",
        3,
        "10s",
    )
    .await;
    f.proxy
        .inject(Rule::new(Target::UploadPart, Fault::Refuse(503)));
    f.proxy
        .inject(Rule::new(Target::UploadPart, Fault::HangUp).skip(1));
    f.proxy
        .inject(Rule::new(Target::CompleteUpload, Fault::Refuse(500)));
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(0), "{text}");
    let (parts, broken) = f.count(Target::UploadPart);
    assert!(parts >= 4, "two parts, each broken once: {parts}");
    assert_eq!(broken, 2);
    assert_eq!(f.count(Target::CompleteUpload).1, 1);
    let creates = f
        .proxy
        .seen()
        .iter()
        .filter(|s| s.method == Method::POST && s.query.contains("uploads"))
        .count();
    assert_eq!(creates, 1, "one multipart upload");
    f.assert_complete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_store_errors_fail_the_sync_and_the_next_one_lands_the_rest() {
    let f = Faulty::start(600, "batch_size = 50\ncommit_every = 100", 3, "5s").await;
    // Two commits land, then every data-file upload is refused (more often than the
    // client retries; bounded all the same).
    f.proxy.inject(
        Rule::new(Target::DataFile, Fault::Refuse(503))
            .skip(2)
            .times(40),
    );
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(1), "{text}");
    let error = failed_line(&text);
    assert!(
        error.contains("uploading the data file")
            && error.contains("after 3 retries")
            && error.contains("503 Service Unavailable"),
        "the error names the store's answer: {error}"
    );
    // (Not "503" alone: the proxy's random port may hold those digits.)
    assert_eq!(
        error.matches("503 Service Unavailable").count(),
        1,
        "said once: {error}"
    );
    assert_eq!(landed(&text), 200, "the two commits before stay:\n{text}");
    f.proxy.clear();

    // Then every commit put fails after one more commit.
    f.proxy.inject(
        Rule::new(Target::CommitFile, Fault::Refuse(500))
            .skip(1)
            .times(40),
    );
    let (code, text) = f.sync().await;
    assert_eq!(code, Some(1), "{text}");
    let error = failed_line(&text);
    assert!(
        error.contains(
            "the object store failed while committing to the table of `tributary/stripe/charges`"
        ) && error.contains("500 Internal Server Error"),
        "the error names the store's answer: {error}"
    );
    assert_eq!(landed(&text), 100, "the commit before stays:\n{text}");
    f.proxy.clear();

    let (code, text) = f.sync().await;
    assert_eq!(code, Some(0), "{text}");
    f.assert_complete().await;
}
