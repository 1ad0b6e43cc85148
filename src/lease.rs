//! Leases: at most one worker syncs a stream (and delivers its tracking outbox) at a time,
//! however many `sync` processes and `run` daemons share a warehouse.
//!
//! A lease lives in the warehouse bucket, beside the tables, as a chain of small JSON
//! objects, one per *generation*:
//!
//! ```text
//! <warehouse>/_tributary/leases/<source>/<stream>/<generation, 20 digits>.json
//!   {"owner": "host:pid:random", "generation": 7, "acquired_at": …, "expires_at": …,
//!    "released": false}
//! ```
//!
//! **The object with the highest generation is the lease**; older ones are leftovers that
//! their writer deletes once it has written a newer one. Every change — taking a free or
//! expired lease, renewing it, releasing it — is the creation of the *next* generation
//! with a create-if-absent put (`PutMode::Create`). That is the only conditional put the
//! protocol needs, and every store a warehouse may use already has to honour it for the
//! table commits (see [`crate::warehouse::Warehouse::check_conditional_put`]); an
//! overwrite-if-unchanged put (`PutMode::Update`) would be simpler, but object_store's
//! local file system does not implement it, and S3 only with extra configuration.
//!
//! Guarantees (with the store's create-if-absent put honoured, and the workers' clocks
//! within a small fraction of `sync.lease_seconds` of each other):
//! - **One holder.** Of two workers creating generation `g + 1` — two takers of a free or
//!   expired lease, or a taker and a holder renewing late — exactly one succeeds; the other
//!   sees "already exists" and reads who won. A writer that finds a generation above its
//!   own after writing (its own write refilled a gap left by a deleted leftover) has lost,
//!   and deletes what it wrote. Only generations below the writer's new one are ever
//!   deleted, so the highest one is never removed and generations only grow.
//! - **Live until expiry.** A taker treats a lease as live until its `expires_at` (or its
//!   `released` flag); the holder renews every third of the lease's duration, each renewal
//!   a new generation with a later `expires_at`. The holder counts its own lease as valid
//!   only until the `expires_at` of its last successful renewal, measured from *before*
//!   that put was sent, so it stops believing in the lease no later than any taker may
//!   take it.
//! - **Lost is noticed before the next commit.** A renewal that finds another owner, or a
//!   lease that passed its expiry without a successful renewal, marks the lease lost; the
//!   sync engine checks [`LeaseCheck`] before every commit and stops the stream without
//!   committing, and the outbox delivery checks it before every batch it sends.
//! - **A dead worker's lease expires.** Nothing has to clean up after a killed process:
//!   once its `expires_at` passes, the next worker takes the lease (generation + 1) and
//!   resumes the stream from its committed cursor.
//! - **Bounded.** Every operation makes a bounded number of attempts; none waits for a
//!   lease to come free (the stream is reported as `leased` and skipped instead).
//!
//! The table commits stay exactly-once without leases (two writers conflict on the
//! stream's Delta `txn`); leases keep two workers from doing the same work twice, and the
//! outbox from sending one batch twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::warehouse::store_error;

/// The default of `sync.lease_seconds`.
pub const DEFAULT_LEASE_SECONDS: u64 = 300;

/// Attempts at reading or changing a lease before giving up (each attempt either lands or
/// learns that another worker changed the lease meanwhile).
const ATTEMPTS: usize = 8;

/// One generation of a lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it: `host:pid:random`, printable.
    pub owner: String,
    /// Its generation, also its object's name.
    pub generation: u64,
    /// When the holder took it (kept across renewals).
    pub acquired_at: DateTime<Utc>,
    /// When it stops being live unless renewed.
    pub expires_at: DateTime<Utc>,
    /// Freed by its holder (or by hand): not live, whatever `expires_at` says.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    /// Whether a worker other than the owner must leave the stream alone at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.released && now < self.expires_at
    }

    /// "held by OWNER until TIME (generation N)".
    pub fn describe(&self) -> String {
        format!(
            "held by {} until {} (generation {})",
            self.owner,
            self.expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.generation
        )
    }
}

/// The newest generation of a lease: its number, and its record unless the object is not
/// a lease record (then the reason; `lease release --force` writes over it).
#[derive(Debug, Clone)]
pub struct Current {
    /// The highest generation present.
    pub generation: u64,
    /// Its record.
    pub record: Result<LeaseRecord, String>,
}

/// What [`Leases::acquire`] found.
pub enum Acquired {
    /// The lease is this worker's until dropped or released.
    Taken(Lease),
    /// Another worker holds a live lease.
    Held(LeaseRecord),
}

/// What [`Leases::release_by_hand`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandRelease {
    /// There has never been a lease on the stream.
    NoLease,
    /// It was free already (released, or expired and now marked released).
    WasFree(LeaseRecord),
    /// It was live, and `force` freed it.
    Forced(LeaseRecord),
}

/// The leases of one warehouse.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn ObjectStore>,
    root: Path,
    duration: Duration,
}

impl Leases {
    /// The leases under `root` of `store`, each live for `duration` unless renewed.
    pub fn new(store: Arc<dyn ObjectStore>, root: &Path, duration: Duration) -> Self {
        Leases {
            store,
            root: root.clone().join("_tributary").join("leases"),
            duration,
        }
    }

    /// How long a lease lives without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn dir(&self, source: &str, stream: &str) -> Path {
        self.root.clone().join(source).join(stream)
    }

    fn path(&self, source: &str, stream: &str, generation: u64) -> Path {
        self.dir(source, stream)
            .join(format!("{generation:020}.json"))
    }

    /// The generations present, ascending.
    async fn generations(&self, source: &str, stream: &str) -> Result<Vec<u64>> {
        let dir = self.dir(source, stream);
        let mut gens: Vec<u64> = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| {
                meta.location
                    .filename()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| anyhow!("listing the leases at {dir}: {}", store_error(&e)))?
            .into_iter()
            .flatten()
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    /// The newest generation of the lease on `source`/`stream`, if there has ever been one.
    pub async fn current(&self, source: &str, stream: &str) -> Result<Option<Current>> {
        for _ in 0..ATTEMPTS {
            let Some(&generation) = self.generations(source, stream).await?.last() else {
                return Ok(None);
            };
            let path = self.path(source, stream, generation);
            let bytes = match self.store.get(&path).await {
                Ok(got) => got.bytes().await,
                Err(e) => Err(e),
            };
            match bytes {
                Ok(bytes) => {
                    let record = serde_json::from_slice::<LeaseRecord>(&bytes)
                        .map_err(|e| format!("the lease object {path} is not a lease record: {e}"));
                    return Ok(Some(Current { generation, record }));
                }
                // Its holder wrote a newer one and deleted it meanwhile: list again.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => bail!("reading the lease {path}: {}", store_error(&e)),
            }
        }
        bail!("the lease on {source}.{stream} changed {ATTEMPTS} times while being read; try again")
    }

    /// Creates generation `record.generation` if it does not exist. `Ok(false)`: it does.
    async fn create(&self, source: &str, stream: &str, record: &LeaseRecord) -> Result<bool> {
        let path = self.path(source, stream, record.generation);
        let body = PutPayload::from(serde_json::to_vec(record)?);
        match self
            .store
            .put_opts(&path, body, PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => bail!(
                "the warehouse's store does not support create-if-absent puts, which leases need (on S3: `aws_conditional_put = \"etag\"` in `[warehouse.options]`)"
            ),
            Err(e) => bail!("writing the lease {path}: {}", store_error(&e)),
        }
    }

    /// After creating `generation`: whether it is the highest one. When it is, the older
    /// leftovers are deleted; when not, the one written is (it lost).
    async fn confirm(&self, source: &str, stream: &str, generation: u64) -> Result<bool> {
        let gens = self.generations(source, stream).await?;
        let highest = gens.last().copied().unwrap_or(generation);
        if highest > generation {
            self.delete_quietly(source, stream, generation).await;
            return Ok(false);
        }
        for old in gens.into_iter().filter(|g| *g < generation) {
            self.delete_quietly(source, stream, old).await;
        }
        Ok(true)
    }

    async fn delete_quietly(&self, source: &str, stream: &str, generation: u64) {
        let path = self.path(source, stream, generation);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(path = %path, error = %store_error(&e), "Could not delete an old lease generation; the next change of the lease deletes it.")
            }
        }
    }

    /// Takes the lease on `source`/`stream` when it is free, released or expired, and
    /// starts renewing it in the background; or reports who holds it.
    pub async fn acquire(&self, source: &str, stream: &str) -> Result<Acquired> {
        let owner = owner_id();
        match self.take(source, stream, &owner, Utc::now).await? {
            Took::Held(record) => Ok(Acquired::Held(record)),
            Took::Taken(record) => Ok(Acquired::Taken(Lease::start(
                self.clone(),
                source,
                stream,
                record,
            ))),
        }
    }

    /// The protocol of [`Leases::acquire`], with the clock given (for tests).
    async fn take(
        &self,
        source: &str,
        stream: &str,
        owner: &str,
        now: impl Fn() -> DateTime<Utc>,
    ) -> Result<Took> {
        for _ in 0..ATTEMPTS {
            let current = self.current(source, stream).await?;
            let generation = match &current {
                None => 1,
                Some(Current {
                    record: Ok(record),
                    generation,
                }) => {
                    if record.is_live(now()) && record.owner != owner {
                        return Ok(Took::Held(record.clone()));
                    }
                    generation + 1
                }
                Some(Current {
                    record: Err(reason),
                    ..
                }) => bail!(
                    "{reason}; free it with `tributary lease release --source {source} --stream {stream} --force` once no worker syncs the stream"
                ),
            };
            let at = now();
            let record = LeaseRecord {
                owner: owner.to_owned(),
                generation,
                acquired_at: at,
                expires_at: at + self.chrono_duration(),
                released: false,
            };
            if self.create(source, stream, &record).await?
                && self.confirm(source, stream, generation).await?
            {
                tracing::debug!(source, stream, owner, generation, "Took the lease.");
                return Ok(Took::Taken(record));
            }
            // Another worker wrote this generation first: read who, and try once more if
            // theirs is already free.
        }
        bail!(
            "the lease on {source}.{stream} changed hands {ATTEMPTS} times while being taken; try again"
        )
    }

    fn chrono_duration(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.duration).unwrap_or(chrono::Duration::MAX)
    }

    /// Frees the lease on `source`/`stream` by hand (`tributary lease release`): writes a
    /// released generation on top. A live lease is refused (an error naming its holder)
    /// unless `force`; its holder then finds the lease lost at its next renewal and stops
    /// before its next commit.
    pub async fn release_by_hand(
        &self,
        source: &str,
        stream: &str,
        force: bool,
    ) -> Result<HandRelease> {
        for _ in 0..ATTEMPTS {
            let now = Utc::now();
            let Some(current) = self.current(source, stream).await? else {
                return Ok(HandRelease::NoLease);
            };
            let before = match current.record {
                Ok(record) if record.released => return Ok(HandRelease::WasFree(record)),
                Ok(record) if record.is_live(now) && !force => bail!(
                    "the lease on {source}.{stream} is live: {}; it is freed when that sync ends, or at its expiry if the worker died. Pass --force only when that worker is gone (a live holder then stops before its next commit)",
                    record.describe()
                ),
                Ok(record) => record,
                // Unreadable: replace it only when forced.
                Err(reason) if !force => bail!("{reason}; pass --force to replace it"),
                Err(_) => LeaseRecord {
                    owner: "unreadable".into(),
                    generation: current.generation,
                    acquired_at: now,
                    expires_at: now,
                    released: false,
                },
            };
            let generation = current.generation + 1;
            let marker = LeaseRecord {
                owner: format!("released-by-hand:{}", owner_id()),
                generation,
                acquired_at: now,
                expires_at: now,
                released: true,
            };
            if self.create(source, stream, &marker).await?
                && self.confirm(source, stream, generation).await?
            {
                return Ok(if before.is_live(now) {
                    HandRelease::Forced(before)
                } else {
                    HandRelease::WasFree(before)
                });
            }
        }
        bail!(
            "the lease on {source}.{stream} changed hands {ATTEMPTS} times while being released; try again"
        )
    }
}

enum Took {
    Taken(LeaseRecord),
    Held(LeaseRecord),
}

/// What a renewal found.
enum Renewal {
    Renewed,
    Lost(String),
}

/// A lease this worker holds. Renewed in the background every third of its duration
/// until [`Lease::release`]d; dropping it stops the renewals without releasing (the lease
/// then expires).
pub struct Lease {
    inner: Arc<Inner>,
    renewer: JoinHandle<()>,
}

struct Inner {
    leases: Leases,
    source: String,
    stream: String,
    /// The generation held and the end of its validity as this worker knows it.
    held: Mutex<LeaseRecord>,
    /// Why the lease was lost, once it is.
    lost: watch::Sender<Option<String>>,
}

/// A cheap handle that says whether a [`Lease`] is still held: checked before commits and
/// before tracking batches.
#[derive(Clone)]
pub struct LeaseCheck {
    inner: Arc<Inner>,
}

impl Lease {
    fn start(leases: Leases, source: &str, stream: &str, record: LeaseRecord) -> Lease {
        let (lost, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            leases,
            source: source.to_owned(),
            stream: stream.to_owned(),
            held: Mutex::new(record),
            lost,
        });
        let renewer = tokio::spawn(renew_loop(Arc::clone(&inner)));
        Lease { inner, renewer }
    }

    /// The record as last written.
    pub fn record(&self) -> LeaseRecord {
        self.inner.record()
    }

    /// A handle to check the lease with.
    pub fn check(&self) -> LeaseCheck {
        LeaseCheck {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Stops renewing and frees the lease (writes a released generation), unless it was
    /// lost. A store error is logged: the lease then expires by itself.
    pub async fn release(mut self) {
        self.renewer.abort();
        let _ = (&mut self.renewer).await;
        if self.inner.lost.borrow().is_some() {
            return;
        }
        if let Err(e) = self.inner.release().await {
            tracing::warn!(source = %self.inner.source, stream = %self.inner.stream, error = %format!("{e:#}"), "Could not release the lease; it expires by itself.");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl LeaseCheck {
    /// `Err` with the reason when the lease is lost or past its expiry.
    pub fn check(&self) -> Result<(), String> {
        if let Some(reason) = self.inner.lost.borrow().clone() {
            return Err(reason);
        }
        let record = self.inner.record();
        if Utc::now() >= record.expires_at {
            return Err(format!(
                "the lease on {}.{} expired at {} before it could be renewed",
                self.inner.source,
                self.inner.stream,
                record.expires_at.to_rfc3339()
            ));
        }
        Ok(())
    }

    /// Resolves once the lease is found lost (by a renewal, or at its expiry without one).
    pub async fn lost(&self) -> String {
        let mut rx = self.inner.lost.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Inner {
    fn record(&self) -> LeaseRecord {
        self.held
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_record(&self, record: LeaseRecord) {
        match self.held.lock() {
            Ok(mut held) => *held = record,
            Err(p) => *p.into_inner() = record,
        }
    }

    fn mark_lost(&self, reason: String) {
        tracing::warn!(source = %self.source, stream = %self.stream, reason = %reason, "Lost the lease; the stream stops before its next commit.");
        self.lost.send_replace(Some(reason));
    }

    /// Writes the next generation with a later expiry, or finds the lease lost.
    async fn renew(&self) -> Result<Renewal> {
        let held = self.record();
        let (source, stream) = (self.source.as_str(), self.stream.as_str());
        let at = Utc::now();
        let next = LeaseRecord {
            generation: held.generation + 1,
            expires_at: at + self.leases.chrono_duration(),
            ..held.clone()
        };
        if self.leases.create(source, stream, &next).await? {
            if self.leases.confirm(source, stream, next.generation).await? {
                self.set_record(next);
                return Ok(Renewal::Renewed);
            }
        } else if let Some(Current {
            record: Ok(current),
            ..
        }) = self.leases.current(source, stream).await?
            && current.owner == held.owner
            && current.generation >= next.generation
        {
            // A renewal of ours whose answer was lost: it landed.
            self.set_record(current);
            return Ok(Renewal::Renewed);
        }
        let by = match self.leases.current(source, stream).await? {
            Some(Current { record: Ok(r), .. }) if r.released => format!("released by {}", r.owner),
            Some(Current { record: Ok(r), .. }) => format!("taken over: {}", r.describe()),
            _ => "replaced".to_owned(),
        };
        Ok(Renewal::Lost(format!(
            "lost the lease on {source}.{stream} (generation {}): {by}",
            held.generation
        )))
    }

    /// Writes a released generation on top of the newest one, while that is still this
    /// worker's (a renewal cut short may have landed a generation it did not record).
    async fn release(&self) -> Result<()> {
        let held = self.record();
        let (source, stream) = (self.source.as_str(), self.stream.as_str());
        for _ in 0..ATTEMPTS {
            let generation = match self.leases.current(source, stream).await? {
                Some(Current {
                    record: Ok(current),
                    generation,
                }) if current.owner == held.owner && !current.released => generation,
                // Released, taken over or replaced: not ours to free.
                _ => return Ok(()),
            };
            let now = Utc::now();
            let marker = LeaseRecord {
                generation: generation + 1,
                expires_at: now,
                released: true,
                ..held.clone()
            };
            if self.leases.create(source, stream, &marker).await? {
                self.leases
                    .confirm(source, stream, marker.generation)
                    .await?;
                tracing::debug!(
                    source,
                    stream,
                    generation = marker.generation,
                    "Released the lease."
                );
                return Ok(());
            }
        }
        bail!("the lease on {source}.{stream} changed {ATTEMPTS} times while being released")
    }
}

/// Renews every third of the lease's duration until the lease is lost or the task is
/// aborted. A renewal that fails on a store error is retried at the next tick; the lease
/// is lost when its expiry passes first.
async fn renew_loop(inner: Arc<Inner>) {
    let every = inner.leases.duration / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = tokio::time::timeout(every.max(Duration::from_millis(100)), inner.renew())
            .await
            .unwrap_or_else(|_| Err(anyhow!("the store did not answer within {every:?}")));
        match renewed {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::Lost(reason)) => {
                inner.mark_lost(reason);
                return;
            }
            Err(e) => {
                let record = inner.record();
                if Utc::now() >= record.expires_at {
                    inner.mark_lost(format!(
                        "could not renew the lease on {}.{} before it expired at {}: {e:#}",
                        inner.source,
                        inner.stream,
                        record.expires_at.to_rfc3339()
                    ));
                    return;
                }
                tracing::warn!(source = %inner.source, stream = %inner.stream, error = %format!("{e:#}"), "Could not renew the lease; retrying before it expires.");
            }
        }
    }
}

/// This worker's id for a new lease: `host:pid:random`, printable ASCII only.
pub fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}

/// Checks that `source` and `stream` can name a lease (the CLI's arguments).
pub fn check_names(source: &str, stream: &str) -> Result<()> {
    for (what, name) in [("--source", source), ("--stream", stream)] {
        if !crate::warehouse::is_path_segment(name) {
            bail!(
                "{what} {name:?} is not a source or stream name (lowercase letters, digits, `_`, `-`)"
            );
        }
    }
    Ok(())
}

/// The leases of `warehouse` with the configured duration.
pub fn for_warehouse(
    warehouse: &crate::warehouse::Warehouse,
    lease_seconds: u64,
) -> Result<Leases> {
    let (store, root) = warehouse
        .store()
        .context("opening the warehouse for leases")?;
    Ok(Leases::new(
        store,
        &root,
        Duration::from_secs(lease_seconds),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Runs `scenario` against an in-memory store and a local directory.
    async fn on_every_store<F, Fut>(scenario: F)
    where
        F: Fn(Leases) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        scenario(Leases::new(memory, &Path::from("wh"), MINUTE)).await;
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        scenario(Leases::new(local, &Path::from("wh"), MINUTE)).await;
    }

    fn later(seconds: i64) -> impl Fn() -> DateTime<Utc> {
        move || Utc::now() + chrono::Duration::seconds(seconds)
    }

    async fn taken(leases: &Leases, owner: &str, now: impl Fn() -> DateTime<Utc>) -> LeaseRecord {
        match leases.take("stripe", "charges", owner, now).await.unwrap() {
            Took::Taken(r) => r,
            Took::Held(r) => panic!("held by {r:?}"),
        }
    }

    fn lease_of(leases: &Leases, record: LeaseRecord) -> Lease {
        Lease::start(leases.clone(), "stripe", "charges", record)
    }

    #[tokio::test]
    async fn a_free_lease_is_taken_and_a_live_one_refused_naming_its_holder() {
        on_every_store(|leases| async move {
            let first = taken(&leases, "a:1:x", Utc::now).await;
            assert_eq!(first.generation, 1);
            assert!(first.expires_at > Utc::now() + chrono::Duration::seconds(50));
            match leases
                .take("stripe", "charges", "b:2:y", Utc::now)
                .await
                .unwrap()
            {
                Took::Held(r) => {
                    assert_eq!(r.owner, "a:1:x");
                    assert!(
                        r.describe().contains("held by a:1:x until"),
                        "{}",
                        r.describe()
                    );
                }
                Took::Taken(_) => panic!("two holders"),
            }
            // Other streams are independent.
            assert!(matches!(
                leases
                    .take("stripe", "customers", "b:2:y", Utc::now)
                    .await
                    .unwrap(),
                Took::Taken(_)
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_at_the_next_generation() {
        on_every_store(|leases| async move {
            taken(&leases, "a:1:x", Utc::now).await;
            let next = taken(&leases, "b:2:y", later(61)).await;
            assert_eq!((next.owner.as_str(), next.generation), ("b:2:y", 2));
            // The leftover is gone: one object per stream.
            assert_eq!(
                leases.generations("stripe", "charges").await.unwrap(),
                vec![2]
            );
        })
        .await;
    }

    #[tokio::test]
    async fn of_concurrent_takers_exactly_one_wins() {
        on_every_store(|leases| async move {
            for round in 0..10u32 {
                let stream = format!("s{round}");
                let takers = (0..6).map(|i| {
                    let (leases, stream) = (leases.clone(), stream.clone());
                    tokio::spawn(async move {
                        leases
                            .take("stripe", &stream, &format!("w:{i}:r"), Utc::now)
                            .await
                            .unwrap()
                    })
                });
                let results = futures::future::join_all(takers).await;
                let winners: Vec<String> = results
                    .iter()
                    .filter_map(|r| match r.as_ref().unwrap() {
                        Took::Taken(r) => Some(r.owner.clone()),
                        Took::Held(_) => None,
                    })
                    .collect();
                assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
                for r in &results {
                    if let Took::Held(h) = r.as_ref().unwrap() {
                        assert_eq!(h.owner, winners[0]);
                    }
                }
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_renewal_moves_the_expiry_and_keeps_one_object() {
        on_every_store(|leases| async move {
            let record = taken(&leases, "a:1:x", Utc::now).await;
            let lease = lease_of(&leases, record.clone());
            assert!(matches!(
                lease.inner.renew().await.unwrap(),
                Renewal::Renewed
            ));
            let renewed = lease.record();
            assert_eq!(renewed.generation, 2);
            assert!(renewed.expires_at >= record.expires_at);
            assert_eq!(renewed.acquired_at, record.acquired_at);
            assert_eq!(
                leases.generations("stripe", "charges").await.unwrap(),
                vec![2]
            );
            assert!(lease.check().check().is_ok());
            // Still refused to others.
            assert!(matches!(
                leases
                    .take("stripe", "charges", "b:2:y", Utc::now)
                    .await
                    .unwrap(),
                Took::Held(_)
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn a_lease_taken_over_is_found_lost_at_the_next_renewal() {
        on_every_store(|leases| async move {
            let record = taken(&leases, "a:1:x", Utc::now).await;
            let lease = lease_of(&leases, record);
            // The holder stalled past its expiry; another worker took over.
            taken(&leases, "b:2:y", later(61)).await;
            match lease.inner.renew().await.unwrap() {
                Renewal::Lost(reason) => assert!(
                    reason.contains("taken over") && reason.contains("b:2:y"),
                    "{reason}"
                ),
                Renewal::Renewed => panic!("renewed a lease another worker holds"),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_stale_renewal_that_refills_a_deleted_generation_loses() {
        on_every_store(|leases| async move {
            let record = taken(&leases, "a:1:x", Utc::now).await;
            let stale = lease_of(&leases, record);
            let b = taken(&leases, "b:2:y", later(61)).await;
            // B renews: generation 3, generation 2 deleted, so A's next one (2) is free.
            let b = lease_of(&leases, b);
            assert!(matches!(b.inner.renew().await.unwrap(), Renewal::Renewed));
            assert!(matches!(
                stale.inner.renew().await.unwrap(),
                Renewal::Lost(_)
            ));
            // A's stray generation is gone; B's stands.
            assert_eq!(
                leases.generations("stripe", "charges").await.unwrap(),
                vec![3]
            );
            assert_eq!(
                leases
                    .current("stripe", "charges")
                    .await
                    .unwrap()
                    .unwrap()
                    .record
                    .unwrap()
                    .owner,
                "b:2:y"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn the_background_renewer_reports_a_lost_lease() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let leases = Leases::new(store, &Path::from("wh"), Duration::from_millis(300));
        let Acquired::Taken(lease) = leases.acquire("stripe", "charges").await.unwrap() else {
            panic!("free lease not taken");
        };
        let check = lease.check();
        taken(&leases, "b:2:y", later(5)).await;
        let reason = tokio::time::timeout(Duration::from_secs(10), check.lost())
            .await
            .expect("the loss is found within a few renewals");
        assert!(reason.contains("b:2:y"), "{reason}");
        assert!(check.check().is_err());
        // Releasing a lost lease leaves the new holder's alone.
        lease.release().await;
        let current = leases.current("stripe", "charges").await.unwrap().unwrap();
        assert_eq!(current.record.unwrap().owner, "b:2:y");
    }

    #[tokio::test]
    async fn a_lease_past_its_expiry_fails_the_check_before_a_commit() {
        on_every_store(|leases| async move {
            let mut record = taken(&leases, "a:1:x", Utc::now).await;
            record.expires_at = Utc::now() - chrono::Duration::seconds(1);
            let lease = lease_of(&leases, record);
            let e = lease.check().check().unwrap_err();
            assert!(e.contains("expired") && e.contains("stripe.charges"), "{e}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_released_lease_is_free_at_once() {
        on_every_store(|leases| async move {
            let Acquired::Taken(lease) = leases.acquire("stripe", "charges").await.unwrap() else {
                panic!("free lease not taken");
            };
            lease.release().await;
            let current = leases.current("stripe", "charges").await.unwrap().unwrap();
            assert!(current.record.unwrap().released);
            let next = taken(&leases, "b:2:y", Utc::now).await;
            assert_eq!(next.generation, 3);
        })
        .await;
    }

    #[tokio::test]
    async fn a_release_by_hand_is_refused_while_live_unless_forced() {
        on_every_store(|leases| async move {
            assert_eq!(
                leases
                    .release_by_hand("stripe", "charges", false)
                    .await
                    .unwrap(),
                HandRelease::NoLease
            );
            let record = taken(&leases, "a:1:x", Utc::now).await;
            let holder = lease_of(&leases, record);
            let e = leases
                .release_by_hand("stripe", "charges", false)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("is live") && e.contains("a:1:x") && e.contains("--force"),
                "{e}"
            );
            match leases
                .release_by_hand("stripe", "charges", true)
                .await
                .unwrap()
            {
                HandRelease::Forced(r) => assert_eq!(r.owner, "a:1:x"),
                other => panic!("{other:?}"),
            }
            // The holder finds out at its next renewal; the stream is free for others.
            assert!(matches!(
                holder.inner.renew().await.unwrap(),
                Renewal::Lost(_)
            ));
            assert!(matches!(
                leases.release_by_hand("stripe", "charges", false).await.unwrap(),
                HandRelease::WasFree(r) if r.released
            ));
            taken(&leases, "b:2:y", Utc::now).await;
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreadable_lease_object_names_the_way_out() {
        on_every_store(|leases| async move {
            leases
                .store
                .put(&leases.path("stripe", "charges", 4), "not json".into())
                .await
                .unwrap();
            let e = match leases.take("stripe", "charges", "a:1:x", Utc::now).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("took an unreadable lease"),
            };
            assert!(
                e.contains("00000000000000000004.json")
                    && e.contains("lease release --source stripe --stream charges --force"),
                "{e}"
            );
            assert!(
                leases
                    .release_by_hand("stripe", "charges", false)
                    .await
                    .is_err()
            );
            leases
                .release_by_hand("stripe", "charges", true)
                .await
                .unwrap();
            assert_eq!(taken(&leases, "a:1:x", Utc::now).await.generation, 6);
        })
        .await;
    }

    #[test]
    fn owner_ids_are_printable_and_distinct() {
        let (a, b) = (owner_id(), owner_id());
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_graphic()), "{a}");
        assert_eq!(a.split(':').count(), 3, "{a}");
    }
}
