//! A stream's table and its commits: rows, cursor and the replacement of older versions
//! of the same objects, in one atomic Delta commit.
//!
//! Object streams keep the latest state per primary key. A commit that lands new versions
//! of objects also takes their previous rows out of the table, in the same commit: with
//! deletion vectors (the default; the old files are re-added with a bitmap of removed rows,
//! a few bytes per file) or by rewriting the touched files without those rows
//! (`merge = "copy-on-write"`, for readers without deletion-vector support). Rows are
//! found by reading only the key column of files whose key range (from their statistics)
//! can hold an incoming key. Within one commit the last version of a key wins.
//!
//! **Snapshots.** A stream read in full (a snapshot stream, a `--full-refresh`, a resync
//! after a lost cursor) replaces the table's rows only once the snapshot is complete. Its
//! pages land as ordinary commits: object streams update their rows in place, and every
//! page's cursor commits with it, so a killed snapshot resumes where it stopped. The
//! commits record the open snapshot's start ([`CommitMeta::snapshot_since`]: every row of
//! the snapshot was received at or after it) until a read ends normally; that run's last
//! commit then also removes every row received before the start and closes the snapshot
//! (see [`SnapshotStep`]). A failed, cancelled or deferred snapshot therefore never shrinks
//! the table. The removal is row-exact: files whose `received_at` statistics are all older
//! go whole, files all newer stay, and the rest have their `received_at` column read and
//! the older rows taken out like replaced ones (deletion vector, or a rewrite).
//!
//! Commits that take rows out conflict with a concurrent commit that removed the same
//! files (another sync's replacement, or `compact`); the loser re-plans against the new
//! table and tries again. Two writers of one stream conflict on the stream's `txn`; the
//! loser fails without landing anything. A commit the store took but whose answer was lost
//! (an error status, a closed connection or a timeout after the put) is found in the table
//! and counts as landed, rather than failing the run or passing for another writer's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::datatypes::Schema as ArrowSchema;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, MetadataExt, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use parquet::file::properties::WriterProperties;
use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};
use tributary_sdk::schema::RECEIVED_AT;

use super::datafile::{DataFile, NewFile, key_range, received_range};
use super::dv::{self, DvFile};
use super::merge::{live_rows, rows_at, rows_received_before, rows_with_keys};
use super::{COMMIT_INFO_KEY, MergeMode, Warehouse, delta_fields, writer_properties};

/// How many times a commit is re-planned after conflicting with a concurrent one.
const COMMIT_ATTEMPTS: usize = 5;
/// Data files whose keys are read at the same time while planning a commit.
const SCAN_PARALLELISM: usize = 4;

/// Tributary's part of a commit's `commitInfo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitMeta {
    /// The stream's commit sequence number (equals the `txn` version).
    pub seq: i64,
    /// The connector cursor after this commit's rows.
    pub cursor: serde_json::Value,
    /// The run that made the commit.
    pub run_id: String,
    /// Rows landed by this commit.
    pub records: u64,
    /// Legacy (tables written before snapshots were kept open): this commit replaced every
    /// earlier row. Still read; no longer written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// The start of the snapshot still open after this commit: every row it landed was
    /// received at or after this instant. Carried by each commit until the snapshot
    /// completes, so a resumed run knows one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_since: Option<DateTime<Utc>>,
    /// On the commit that completed a snapshot, its start: the commit removed every row
    /// received before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_completed: Option<DateTime<Utc>>,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
    /// On a history commit that left out versions the table already held (see
    /// `warehouse::history`): the files as the latest-state table receives them, so a run
    /// that died before that commit lands them whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_files: Option<Vec<Add>>,
}

/// What a commit does to the stream's snapshot (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStep {
    /// The start of the snapshot open once this commit's rows land (a page of the commit
    /// started it, or an earlier commit did); `None` when no snapshot is open.
    pub since: Option<DateTime<Utc>>,
    /// The read ended normally: the snapshot is complete, so this commit also removes every
    /// row received before `since` and closes it.
    pub complete: bool,
}

impl SnapshotStep {
    /// The step a commit with metadata `meta` took (to land it again elsewhere).
    pub fn of(meta: &CommitMeta) -> Self {
        SnapshotStep {
            since: meta.snapshot_since.or(meta.snapshot_completed),
            complete: meta.snapshot_completed.is_some(),
        }
    }

    /// A step that starts a snapshot at `at` (a reset page's `received_at`), to the
    /// microsecond the rows keep.
    pub fn starting(at: DateTime<Utc>) -> Self {
        SnapshotStep {
            since: Some(micros(at)),
            complete: false,
        }
    }
}

/// `at` truncated to the microsecond, the precision of `received_at`.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// What a commit did besides adding its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Landed {
    /// The table version it made.
    pub version: u64,
    /// Older rows it took out because the commit carries newer versions of their objects
    /// (including earlier versions inside the commit itself).
    pub replaced: u64,
    /// Existing data files it rewrote (copy-on-write, or a type widening).
    pub rewritten_files: u64,
    /// Bytes of data files it wrote besides the new rows' files (rewrites).
    pub rewritten_bytes: u64,
    /// Bytes of deletion vectors it wrote.
    pub dv_bytes: u64,
    /// Rows it took out because a completed snapshot no longer has them.
    pub swept: u64,
}

/// A stream's table, with the position its last commit reached.
pub struct StreamTable {
    table: DeltaTable,
    app_id: String,
    seq: i64,
    last: Option<CommitMeta>,
    writer_props: WriterProperties,
    /// The primary key column of an object stream (latest state per key); `None` for
    /// append-only tables (event streams, history tables).
    key: Option<String>,
    mode: MergeMode,
    /// Whether a completed snapshot removes the rows it left out (not in history tables,
    /// which record the snapshot and keep every row).
    sweeps: bool,
}

/// What to do with one existing data file in a commit.
struct Touch {
    /// Rows deleted before and now (union).
    deleted: RoaringTreemap,
    /// Rows newly deleted by this commit.
    newly: u64,
}

impl StreamTable {
    /// Opens (or creates) the table of `parts` (e.g. `[source, stream]`) and reads the
    /// committed position of application `app_id`. With `key`, the table keeps one row per
    /// key (its newest version); without, it is append-only.
    pub async fn open(
        warehouse: &Warehouse,
        parts: &[&str],
        app_id: String,
        schema: &ArrowSchema,
        row_group_size: usize,
        key: Option<&str>,
    ) -> Result<Self> {
        let mode = warehouse.merge_mode();
        let dvs = key.is_some() && mode == MergeMode::DeletionVectors;
        let mut table = warehouse.open_or_create(parts, schema).await?;
        if dvs && !supports_deletion_vectors(&table)? {
            enable_deletion_vectors(&mut table, &app_id).await?;
        }
        let (seq, last) = read_position(&table, &app_id).await?;
        let writer_props = writer_properties(row_group_size)?;
        Ok(StreamTable {
            table,
            app_id,
            seq,
            last,
            writer_props,
            key: key.map(str::to_owned),
            mode,
            sweeps: true,
        })
    }

    /// The table's application id (`tributary/<source>/<stream>`), as its commits record it.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The column that identifies a row of an object table (`None`: append-only).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Makes commits record snapshots without removing any row (history tables).
    pub fn keep_every_row(&mut self) {
        self.sweeps = false;
    }

    /// The start of the snapshot the committed position is in the middle of, if any.
    pub fn open_snapshot(&self) -> Option<DateTime<Utc>> {
        self.last.as_ref().and_then(|m| m.snapshot_since)
    }

    /// The last commit's metadata, `None` before the first commit.
    pub fn last_commit(&self) -> Option<&CommitMeta> {
        self.last.as_ref()
    }

    /// The committed cursor, `None` before the first commit.
    pub fn cursor(&self) -> Option<serde_json::Value> {
        self.last.as_ref().map(|m| m.cursor.clone())
    }

    /// The table's current Arrow schema.
    pub fn arrow_schema(&self) -> Result<Arc<ArrowSchema>> {
        Ok(self.table.snapshot()?.snapshot().arrow_schema())
    }

    /// The stream's committed sequence number (0 before the first commit); the next commit
    /// is `seq() + 1`.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Makes the next commit's sequence number at least `seq + 1`: a history table follows
    /// the sequence of its latest-state table, which may have started before it.
    pub fn follow(&mut self, seq: i64) {
        self.seq = self.seq.max(seq);
    }

    /// The table's version.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The underlying Delta table.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// Starts a new Parquet data file in the table for rows like `first`, its first batch:
    /// columns whose values there are nearly all distinct are written without a dictionary
    /// (see [`super::datafile::tuned_for`]).
    pub fn new_file_for(&self, first: &RecordBatch) -> Result<DataFile> {
        DataFile::create(
            &self.table,
            first.schema(),
            super::datafile::tuned_for(self.writer_props.clone(), first),
            self.key.as_deref(),
        )
    }

    /// Starts a new Parquet data file in the table.
    pub fn new_file(&self, schema: Arc<ArrowSchema>) -> Result<DataFile> {
        DataFile::create(
            &self.table,
            schema,
            self.writer_props.clone(),
            self.key.as_deref(),
        )
    }

    /// Commits `files` with the new `cursor`, atomically: the rows, the schema change (if
    /// `schema` has new columns or a widened type), the replacement of older rows of the
    /// same keys, the snapshot state of `snapshot` (and, when it completes, the removal of
    /// every row received before its start), the stream's `txn` and the cursor land
    /// together or not at all.
    pub async fn commit(
        &mut self,
        files: Vec<NewFile>,
        schema: &ArrowSchema,
        snapshot: SnapshotStep,
        cursor: serde_json::Value,
        records: u64,
        run_id: &str,
    ) -> Result<Landed> {
        self.commit_recording(files, schema, snapshot, cursor, records, run_id, None)
            .await
    }

    /// [`StreamTable::commit`], recording `latest_files` in the commit's metadata.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_recording(
        &mut self,
        files: Vec<NewFile>,
        schema: &ArrowSchema,
        snapshot: SnapshotStep,
        cursor: serde_json::Value,
        records: u64,
        run_id: &str,
        latest_files: Option<Vec<Add>>,
    ) -> Result<Landed> {
        let since = snapshot.since.map(micros);
        let complete = snapshot.complete && since.is_some();
        let sweep_before = since
            .filter(|_| complete && self.sweeps)
            .map(|s| s.timestamp_micros());
        let mut attempt = 1;
        loop {
            let planned = self.plan(&files, schema, sweep_before).await?;
            let seq = self.seq + 1;
            let meta = CommitMeta {
                seq,
                cursor: cursor.clone(),
                run_id: run_id.to_owned(),
                records,
                reset: false,
                snapshot_since: if complete { None } else { since },
                snapshot_completed: if complete { since } else { None },
                committed_at: chrono::Utc::now().to_rfc3339(),
                latest_files: latest_files.clone(),
            };
            let operation = if planned.removes {
                DeltaOperation::Update { predicate: None }
            } else {
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                }
            };
            let properties = CommitProperties::default()
                .with_application_transaction(Transaction::new(&self.app_id, seq))
                .with_metadata([(COMMIT_INFO_KEY.to_owned(), serde_json::to_value(&meta)?)]);
            let snapshot = self.table.snapshot()?;
            let result = CommitBuilder::from(properties)
                .with_actions(planned.actions)
                .build(Some(snapshot), self.table.log_store(), operation)
                .await;
            let error = match result {
                Ok(finalized) => {
                    let mut landed = planned.landed;
                    landed.version = finalized.version();
                    self.table.update_incremental(None).await?;
                    self.seq = seq;
                    self.last = Some(meta);
                    return Ok(landed);
                }
                Err(e) => e,
            };
            // The store may have taken the commit and lost its answer (an error status, a
            // closed connection or a timeout after the put landed). A retried put is then
            // refused because the version exists, which looks like another writer's commit;
            // or the error is all this run sees. Look for this very commit first.
            if self.landed_anyway(&meta).await {
                tracing::warn!(table = %self.app_id, seq, %error, "The object store's answer to a commit was lost, but the commit landed.");
                let mut landed = planned.landed;
                landed.version = self.table.version().unwrap_or_default();
                self.seq = seq;
                self.last = Some(meta);
                return Ok(landed);
            }
            match error {
                DeltaTableError::Transaction {
                    source:
                        TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
                } => bail!(
                    "another writer committed to `{}` while this run was writing; nothing of this commit landed. Run one sync per stream at a time",
                    self.app_id
                ),
                DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(conflict),
                } if attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(table = %self.app_id, attempt, %conflict, "A concurrent commit changed the files this commit replaces rows in; planning it again.");
                    attempt += 1;
                    self.table.update_incremental(None).await?;
                    let (seq, _) = read_position(&self.table, &self.app_id).await?;
                    if seq != self.seq {
                        bail!(
                            "another writer committed to `{}` while this run was writing; nothing of this commit landed. Run one sync per stream at a time",
                            self.app_id
                        );
                    }
                }
                DeltaTableError::ObjectStore { source }
                | DeltaTableError::Transaction {
                    source: TransactionError::ObjectStore { source },
                } => bail!(
                    "the object store failed while committing to the table of `{}`, and the table does not show the commit (the next sync resumes from the table's last commit): {}",
                    self.app_id,
                    super::store_error(&source)
                ),
                e => bail!("committing to the table of `{}`: {e}", self.app_id),
            }
        }
    }

    /// The live rows whose key is one of `keys`, in the table's current schema (none for a
    /// table without a key). Reads the key column of the files whose key statistics may
    /// hold one of them, then those rows.
    pub async fn live_rows_with_keys(&self, keys: &HashSet<&str>) -> Result<Vec<RecordBatch>> {
        let Some(key) = self.key.as_deref() else {
            return Ok(Vec::new());
        };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let schema = self.arrow_schema()?;
        let store = self.table.object_store();
        let mut sorted: Vec<&str> = keys.iter().copied().collect();
        sorted.sort_unstable();
        let sorted = &sorted;
        let store = &store;
        let schema = &schema;
        let adds: Vec<Add> = self
            .table
            .snapshot()?
            .log_data()
            .iter()
            .map(|f| LiveFile::of(&f).add)
            .collect();
        let batches: Vec<Vec<RecordBatch>> = futures::stream::iter(adds)
            .map(|add| async move {
                if let Some((min, max)) = key_range(add.stats.as_deref(), key) {
                    let i = sorted.partition_point(|k| *k < min.as_str());
                    if sorted.get(i).is_none_or(|k| *k > max.as_str()) {
                        return Ok(Vec::new());
                    }
                }
                let mut found = rows_with_keys(store, &add.path, add.size, key, keys).await?;
                if let Some(d) = &add.deletion_vector {
                    found -= dv::read(store.as_ref(), d).await?;
                }
                if found.is_empty() {
                    return Ok(Vec::new());
                }
                rows_at(store, &add.path, add.size, &found, schema.clone()).await
            })
            .buffered(SCAN_PARALLELISM)
            .try_collect()
            .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// Whether the stream's last commit in the table is exactly `meta`'s, re-reading the
    /// table: after committing it reported an error. `false` when the table cannot be read.
    async fn landed_anyway(&mut self, meta: &CommitMeta) -> bool {
        if self.table.update_incremental(None).await.is_err() {
            return false;
        }
        matches!(
            read_position(&self.table, &self.app_id).await,
            Ok((seq, Some(last))) if seq == meta.seq && last == *meta
        )
    }

    /// The actions of a commit of `files` against the table as it is now; with
    /// `sweep_before` (microseconds), also the removal of every row received before it.
    async fn plan(
        &self,
        files: &[NewFile],
        schema: &ArrowSchema,
        sweep_before: Option<i64>,
    ) -> Result<Plan> {
        let snapshot = self.table.snapshot()?;
        let current = snapshot.snapshot().arrow_schema();
        let mut actions = Vec::with_capacity(files.len() + 2);
        let mut landed = Landed::default();
        let mut removes = false;

        // Columns: keep every column the table has, in its order, widened where `schema`
        // widened it, then the new ones.
        let mut widened = Vec::new();
        let mut target = Vec::new();
        for f in current.fields() {
            match schema.field_with_name(f.name()) {
                Ok(n) if n.data_type() != f.data_type() => {
                    widened.push(f.name().clone());
                    target.push(n.as_ref().clone());
                }
                _ => target.push(f.as_ref().clone()),
            }
        }
        for f in schema.fields() {
            if current.field_with_name(f.name()).is_err() {
                target.push(f.as_ref().clone());
            }
        }
        let target = Arc::new(ArrowSchema::new(target));
        if target.as_ref() != current.as_ref() {
            let metadata = snapshot
                .metadata()
                .clone()
                .with_schema(&StructType::try_new(delta_fields(&target)?)?)?;
            actions.push(Action::Metadata(metadata));
        }
        if !widened.is_empty() {
            tracing::info!(table = %self.app_id, columns = ?widened, "Widening column types; rewriting the table's files in this commit.");
        }

        // Later versions of a key in this commit replace earlier ones.
        let mut incoming: HashMap<&str, (usize, u64)> = HashMap::new();
        let mut new_deleted: Vec<RoaringTreemap> = vec![RoaringTreemap::new(); files.len()];
        if self.key.is_some() {
            for (fi, f) in files.iter().enumerate() {
                for (ri, k) in f.keys.iter().enumerate() {
                    if let Some(k) = k
                        && let Some((pf, pr)) = incoming.insert(k, (fi, ri as u64))
                    {
                        new_deleted[pf].insert(pr);
                    }
                }
            }
        }

        let store = self.table.object_store();
        let live: Vec<LiveFile> = snapshot
            .log_data()
            .iter()
            .map(|f| LiveFile::of(&f))
            .collect();
        let mut dv_file = DvFile::new();
        // Append-only tables have no deletion vectors: they drop rows by rewriting.
        let mode = if self.key.is_some() {
            self.mode
        } else {
            MergeMode::CopyOnWrite
        };

        // Which existing files hold older versions of incoming keys. (None on a table with
        // no files yet: sorting and hashing the keys for nothing took 55 ms of the first
        // commit of 100,000 charges.)
        let mut touched: Vec<Option<Touch>> = Vec::with_capacity(live.len());
        if let Some(key) = self.key.as_deref()
            && !incoming.is_empty()
            && !live.is_empty()
        {
            let mut sorted: Vec<&str> = incoming.keys().copied().collect();
            sorted.sort_unstable();
            let wanted: HashSet<&str> = incoming.keys().copied().collect();
            let wanted = &wanted;
            let sorted = &sorted;
            let store = &store;
            let adds: Vec<Add> = live.iter().map(|f| f.add.clone()).collect();
            touched = futures::stream::iter(adds)
                .map(|add| async move {
                    if let Some((min, max)) = key_range(add.stats.as_deref(), key) {
                        let i = sorted.partition_point(|k| *k < min.as_str());
                        if sorted.get(i).is_none_or(|k| *k > max.as_str()) {
                            return Ok(None);
                        }
                    }
                    let found = rows_with_keys(store, &add.path, add.size, key, wanted).await?;
                    if found.is_empty() {
                        return Ok(None);
                    }
                    let before = match &add.deletion_vector {
                        Some(d) => dv::read(store.as_ref(), d).await?,
                        None => RoaringTreemap::new(),
                    };
                    let newly = found.difference_len(&before);
                    if newly == 0 {
                        return Ok(None);
                    }
                    Ok::<_, anyhow::Error>(Some(Touch {
                        deleted: &before | &found,
                        newly,
                    }))
                })
                .buffered(SCAN_PARALLELISM)
                .try_collect()
                .await?;
        } else {
            touched.resize_with(live.len(), || None);
        }

        // Which rows of existing files a completed snapshot leaves out.
        let mut older: Vec<Older> = Vec::with_capacity(live.len());
        if let Some(since) = sweep_before {
            let store = &store;
            // Collected first: a borrowing iterator held across the awaits below would make
            // the sync future not `Send`.
            let adds: Vec<Add> = live.iter().map(|f| f.add.clone()).collect();
            older = futures::stream::iter(adds)
                .map(|add| async move { older_rows(store, &add, since).await })
                .buffered(SCAN_PARALLELISM)
                .try_collect()
                .await?;
        } else {
            older.resize_with(live.len(), || Older::None);
        }

        for ((f, touch), older) in live.iter().zip(touched).zip(older) {
            let touch = match older {
                Older::None => touch,
                Older::All => {
                    landed.swept += live_count(&f.add);
                    removes = true;
                    actions.push(Action::Remove(f.remove.clone()));
                    continue;
                }
                Older::Rows(rows) => {
                    let (deleted, newly) = match touch {
                        Some(t) => (t.deleted, t.newly),
                        None => match &f.add.deletion_vector {
                            Some(d) => (dv::read(store.as_ref(), d).await?, 0),
                            None => (RoaringTreemap::new(), 0),
                        },
                    };
                    let swept = rows.difference_len(&deleted);
                    landed.swept += swept;
                    (swept > 0 || newly > 0).then(|| Touch {
                        deleted: deleted | rows,
                        newly,
                    })
                }
            };
            if !widened.is_empty() {
                // Every file is rewritten in the new types (with what it deletes applied).
                let deleted = match (&touch, &f.add.deletion_vector) {
                    (Some(t), _) => Some(t.deleted.clone()),
                    (None, Some(d)) => Some(dv::read(store.as_ref(), d).await?),
                    (None, None) => None,
                };
                landed.replaced += touch.as_ref().map_or(0, |t| t.newly);
                actions.push(Action::Remove(f.remove.clone()));
                if let Some(add) = self
                    .rewrite(&f.add.path, f.add.size, deleted, target.clone())
                    .await?
                {
                    landed.rewritten_bytes += add.size as u64;
                    actions.push(Action::Add(add));
                }
                landed.rewritten_files += 1;
                removes = true;
                continue;
            }
            let Some(touch) = touch else { continue };
            landed.replaced += touch.newly;
            removes = true;
            actions.push(Action::Remove(f.remove.clone()));
            if num_records(&f.add).is_some_and(|n| touch.deleted.len() >= n) {
                // No row of the file is left.
                continue;
            }
            match mode {
                MergeMode::DeletionVectors => {
                    let mut add = f.add.clone();
                    add.deletion_vector = Some(dv_file.push(&touch.deleted)?);
                    add.stats = add.stats.as_deref().map(loose_bounds);
                    actions.push(Action::Add(add));
                }
                MergeMode::CopyOnWrite => {
                    if let Some(add) = self
                        .rewrite(&f.add.path, f.add.size, Some(touch.deleted), target.clone())
                        .await?
                    {
                        landed.rewritten_bytes += add.size as u64;
                        actions.push(Action::Add(add));
                    }
                    landed.rewritten_files += 1;
                }
            }
        }

        // The new files, less the rows a later version in this commit replaced (and, when
        // a snapshot completes, rows of this commit received before it started).
        for (f, deleted) in files.iter().zip(new_deleted) {
            let stale_types = f.schema_differs(&target);
            landed.replaced += deleted.len();
            let mut deleted = deleted;
            if let Some(since) = sweep_before {
                match older_rows(&store, &f.add, since).await? {
                    Older::None => {}
                    Older::All => {
                        let rows = num_records(&f.add).unwrap_or_default();
                        landed.swept += rows.saturating_sub(deleted.len());
                        continue;
                    }
                    Older::Rows(rows) => {
                        landed.swept += rows.difference_len(&deleted);
                        deleted |= rows;
                    }
                }
            }
            if num_records(&f.add).is_some_and(|n| deleted.len() >= n) {
                // No row of the file is left.
                continue;
            }
            if deleted.is_empty() && !stale_types {
                actions.push(Action::Add(f.add.clone()));
                continue;
            }
            if mode == MergeMode::DeletionVectors && !stale_types {
                let mut add = f.add.clone();
                add.deletion_vector = Some(dv_file.push(&deleted)?);
                add.stats = add.stats.as_deref().map(loose_bounds);
                actions.push(Action::Add(add));
            } else {
                let deleted = (!deleted.is_empty()).then_some(deleted);
                if let Some(add) = self
                    .rewrite(&f.add.path, f.add.size, deleted, target.clone())
                    .await?
                {
                    landed.rewritten_bytes += add.size as u64;
                    actions.push(Action::Add(add));
                }
            }
        }
        if !dv_file.is_empty() {
            landed.dv_bytes = dv_file.len() as u64;
            dv_file.upload(store.as_ref()).await?;
        }
        Ok(Plan {
            actions,
            landed,
            removes,
        })
    }

    /// Writes the live rows of data file `path` into a new file in `schema`; `None` if no
    /// row is left.
    async fn rewrite(
        &self,
        path: &str,
        size: i64,
        deleted: Option<RoaringTreemap>,
        schema: Arc<ArrowSchema>,
    ) -> Result<Option<Add>> {
        let store = self.table.object_store();
        let mut rows = live_rows(&store, path, size, deleted, schema.clone()).await?;
        let mut out = DataFile::create(
            &self.table,
            schema,
            self.writer_props.clone(),
            self.key.as_deref(),
        )?;
        while let Some(batch) = rows.next().await {
            out.write(&batch?).await?;
        }
        if out.rows() == 0 {
            return Ok(None);
        }
        Ok(Some(out.finish().await?.add))
    }
}

/// A data file of the table as the commit being planned sees it.
pub struct LiveFile {
    /// Its `add` action as it stands (with its deletion vector, if any).
    pub add: Add,
    /// The action that takes it out (marked as a data change, so that concurrent commits
    /// removing the same file conflict).
    pub remove: Remove,
}

impl LiveFile {
    /// The file of a snapshot entry.
    pub fn of(f: &deltalake::kernel::LogicalFileView) -> Self {
        #[allow(deprecated)] // the replacement (Arrow arrays) does not give an `Add`
        let add = f.add_action();
        LiveFile {
            add,
            remove: f.remove_action(true),
        }
    }
}

struct Plan {
    actions: Vec<Action>,
    landed: Landed,
    removes: bool,
}

/// Which rows of a data file a completed snapshot leaves out.
enum Older {
    None,
    All,
    /// These rows (the file holds newer ones too, or has no statistics to tell).
    Rows(RoaringTreemap),
}

/// The rows of `add` received before `since` (microseconds): decided from the file's
/// `received_at` statistics when they settle it, else by reading that column.
async fn older_rows(
    store: &Arc<dyn object_store::ObjectStore>,
    add: &Add,
    since: i64,
) -> Result<Older> {
    if let Some((min, max)) = received_range(add.stats.as_deref()) {
        if min >= since {
            return Ok(Older::None);
        }
        if max < since && num_records(add).is_some() {
            return Ok(Older::All);
        }
    }
    let rows = rows_received_before(store, &add.path, add.size, RECEIVED_AT, since).await?;
    Ok(if rows.is_empty() {
        Older::None
    } else {
        Older::Rows(rows)
    })
}

/// The rows a data file holds (`numRecords` of its statistics).
fn num_records(add: &Add) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(add.stats.as_deref()?).ok()?;
    v.get("numRecords")?.as_u64()
}

/// The rows of a data file its deletion vector leaves live.
fn live_count(add: &Add) -> u64 {
    let deleted = add
        .deletion_vector
        .as_ref()
        .map_or(0, |d| d.cardinality.max(0) as u64);
    num_records(add).unwrap_or_default().saturating_sub(deleted)
}

/// Statistics of a file with a deletion vector: min/max become bounds, not exact values.
fn loose_bounds(stats: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(stats) {
        Ok(mut v) if v.is_object() => {
            v["tightBounds"] = serde_json::Value::Bool(false);
            v.to_string()
        }
        _ => stats.to_owned(),
    }
}

/// Upgrades the table's protocol to reader 3 / writer 7 with the deletion-vectors feature
/// (a new table's first commit after its creation, or once for a table made before). The
/// protocol is written out rather than derived by delta-rs, which would also list legacy
/// writer features (invariants) that a writer without a SQL engine cannot honour.
async fn enable_deletion_vectors(table: &mut DeltaTable, app_id: &str) -> Result<()> {
    let protocol: Action = serde_json::from_value(serde_json::json!({
        "protocol": {
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"],
            "writerFeatures": ["deletionVectors"]
        }
    }))?;
    let snapshot = table.snapshot()?;
    let committed = CommitBuilder::default()
        .with_actions(vec![protocol])
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::AddFeature {
                name: vec![deltalake::kernel::TableFeatures::DeletionVectors],
            },
        )
        .await;
    match committed {
        Ok(_) => tracing::info!(table = %app_id, "Enabled deletion vectors on the table."),
        // A concurrent writer may have done it first.
        Err(e) => {
            table.update_incremental(None).await?;
            if !supports_deletion_vectors(table)? {
                bail!("enabling deletion vectors on the table of `{app_id}`: {e}");
            }
        }
    }
    table.update_incremental(None).await?;
    Ok(())
}

/// Whether the table's protocol has the deletion-vectors feature.
fn supports_deletion_vectors(table: &DeltaTable) -> Result<bool> {
    let protocol = table.snapshot()?.protocol().clone();
    Ok(protocol
        .reader_features()
        .is_some_and(|set| set.iter().any(|f| format!("{f:?}") == "DeletionVectors")))
}

/// Reads a stream's committed sequence number and the cursor of that commit.
pub async fn read_position(table: &DeltaTable, app_id: &str) -> Result<(i64, Option<CommitMeta>)> {
    let snapshot = table.snapshot()?;
    let Some(seq) = snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?
    else {
        return Ok((0, None));
    };
    // The commit is almost always among the newest; look further back only if not.
    for limit in [Some(8), Some(256), None] {
        let mut history = table.history(limit);
        while let Some(info) = history.try_next().await? {
            if let Some(value) = info.info.get(COMMIT_INFO_KEY) {
                let meta: CommitMeta = serde_json::from_value(value.clone()).with_context(|| {
                    format!("the table of `{app_id}` has a commit whose tributary metadata cannot be read")
                })?;
                if meta.seq == seq {
                    return Ok((seq, Some(meta)));
                }
            }
        }
    }
    bail!(
        "the table of `{app_id}` says commit {seq} landed, but its cursor is not in the table's log (log files removed?); run `sync --full-refresh` for this stream"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;
    use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type};
    use serde_json::json;

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    async fn land(t: &mut StreamTable, rows: &[(&str, i64)]) -> Landed {
        let b = batch(rows);
        let mut f = t.new_file(b.schema()).unwrap();
        f.write(&b).await.unwrap();
        let file = f.finish().await.unwrap();
        let cursor = serde_json::json!(t.seq() + 1);
        t.commit(
            vec![file],
            &b.schema(),
            Default::default(),
            cursor,
            rows.len() as u64,
            "r",
        )
        .await
        .unwrap()
    }

    /// (id, v) of every live row, sorted.
    async fn rows(t: &StreamTable) -> Vec<(String, i64)> {
        let store = t.delta().object_store();
        let schema = t.arrow_schema().unwrap();
        let files: Vec<LiveFile> = t
            .delta()
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| LiveFile::of(&f))
            .collect();
        let mut out = Vec::new();
        for f in files {
            let deleted = match &f.add.deletion_vector {
                Some(d) => Some(dv::read(store.as_ref(), d).await.unwrap()),
                None => None,
            };
            let batches: Vec<RecordBatch> =
                live_rows(&store, &f.add.path, f.add.size, deleted, schema.clone())
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
            for b in batches {
                let ids = b.column(0).as_string::<i32>();
                let vs = b.column(1).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    out.push((ids.value(i).to_owned(), vs.value(i)));
                }
            }
        }
        out.sort();
        out
    }

    async fn keeps_the_latest_row_per_key(mode: MergeMode) {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            merge: mode,
            ..Default::default()
        })
        .unwrap();
        let schema = batch(&[]).schema();
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        let first = land(&mut t, &[("a", 1), ("b", 1), ("c", 1)]).await;
        assert_eq!(first.replaced, 0);
        // b twice in one commit: its last version wins; d is new.
        let second = land(&mut t, &[("b", 2), ("d", 1), ("b", 3)]).await;
        assert_eq!(
            second.replaced, 2,
            "b's first row and its earlier version in this commit"
        );
        let third = land(&mut t, &[("a", 4)]).await;
        assert_eq!(third.replaced, 1);
        let expected: Vec<(String, i64)> = [("a", 4), ("b", 3), ("c", 1), ("d", 1)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(rows(&t).await, expected);
        match mode {
            MergeMode::DeletionVectors => {
                assert!(third.dv_bytes > 0);
                assert_eq!(third.rewritten_bytes, 0, "nothing rewritten");
            }
            MergeMode::CopyOnWrite => {
                assert_eq!(third.dv_bytes, 0);
                assert_eq!(third.rewritten_files, 1);
            }
        }
        // The cursor landed with the rows, and reopening finds it.
        let reopened = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        assert_eq!(reopened.seq(), 3);
        assert_eq!(reopened.cursor(), Some(serde_json::json!(3)));
    }

    #[tokio::test]
    async fn deletion_vectors_keep_the_latest_row_per_key() {
        keeps_the_latest_row_per_key(MergeMode::DeletionVectors).await;
    }

    #[tokio::test]
    async fn copy_on_write_keeps_the_latest_row_per_key() {
        keeps_the_latest_row_per_key(MergeMode::CopyOnWrite).await;
    }

    #[tokio::test]
    async fn a_fraction_in_an_integer_column_widens_it_to_float() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let schema = batch(&[]).schema();
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        land(&mut t, &[("a", 1), ("b", 2)]).await;
        let wide = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            wide.clone(),
            vec![
                Arc::new(StringArray::from(vec!["b"])),
                Arc::new(arrow::array::Float64Array::from(vec![2.5])),
            ],
        )
        .unwrap();
        let mut f = t.new_file(wide.clone()).unwrap();
        f.write(&b).await.unwrap();
        let file = f.finish().await.unwrap();
        let landed = t
            .commit(
                vec![file],
                &wide,
                Default::default(),
                serde_json::json!(2),
                1,
                "r",
            )
            .await
            .unwrap();
        assert_eq!(landed.replaced, 1);
        assert_eq!(
            landed.rewritten_files, 1,
            "the older file is rewritten as float"
        );
        assert_eq!(
            t.arrow_schema().unwrap().field(1).data_type(),
            &DataType::Float64
        );
        let store = t.delta().object_store();
        let mut values = Vec::new();
        let files: Vec<LiveFile> = t
            .delta()
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| LiveFile::of(&f))
            .collect();
        for f in files {
            let deleted = match &f.add.deletion_vector {
                Some(d) => Some(dv::read(store.as_ref(), d).await.unwrap()),
                None => None,
            };
            let batches: Vec<RecordBatch> =
                live_rows(&store, &f.add.path, f.add.size, deleted, wide.clone())
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
            for b in batches {
                let ids = b.column(0).as_string::<i32>();
                let vs = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
                for i in 0..b.num_rows() {
                    values.push((ids.value(i).to_owned(), vs.value(i)));
                }
            }
        }
        values.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(values, vec![("a".to_owned(), 1.0), ("b".to_owned(), 2.5)]);
    }

    fn stamped_schema() -> Arc<ArrowSchema> {
        Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new(
                RECEIVED_AT,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    /// Rows `(id, received_at in seconds)`.
    fn stamped(rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            stamped_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.1 * 1_000_000),
                    )
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    async fn stamped_file(t: &StreamTable, rows: &[(&str, i64)]) -> NewFile {
        let b = stamped(rows);
        let mut f = t.new_file(b.schema()).unwrap();
        f.write(&b).await.unwrap();
        f.finish().await.unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    async fn land_step(
        t: &mut StreamTable,
        files: Vec<NewFile>,
        step: SnapshotStep,
        cursor: serde_json::Value,
    ) -> Landed {
        t.commit(files, &stamped_schema(), step, cursor, 0, "r")
            .await
            .unwrap()
    }

    fn ids(rows: Vec<(String, i64)>) -> Vec<String> {
        rows.into_iter().map(|(id, _)| id).collect()
    }

    fn stamped_warehouse(dir: &tempfile::TempDir, mode: MergeMode) -> Warehouse {
        Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            merge: mode,
            ..Default::default()
        })
        .unwrap()
    }

    async fn a_failed_snapshot_keeps_rows_and_a_complete_one_drops_whole_files(mode: MergeMode) {
        let dir = tempfile::tempdir().unwrap();
        let w = stamped_warehouse(&dir, mode);
        let schema = stamped_schema();
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        let file = stamped_file(&t, &[("a", 100), ("b", 100), ("c", 100)]).await;
        land_step(&mut t, vec![file], SnapshotStep::default(), json!("old")).await;

        // A snapshot starts at 500; its first page has a (updated) and d. The run dies.
        let file = stamped_file(&t, &[("a", 500), ("d", 500)]).await;
        let landed = land_step(
            &mut t,
            vec![file],
            SnapshotStep::starting(at(500)),
            json!(1),
        )
        .await;
        assert_eq!(landed.replaced, 1, "a is updated in place");
        assert_eq!(landed.swept, 0);
        assert_eq!(ids(rows(&t).await), ["a", "b", "c", "d"], "nothing is lost");
        assert_eq!(rows(&t).await[0], ("a".to_owned(), 500));

        // The next run resumes it (no reset page) and reads it to the end: e, then done.
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        assert_eq!(
            t.open_snapshot(),
            Some(at(500)),
            "the open snapshot is in the log"
        );
        let file = stamped_file(&t, &[("e", 600)]).await;
        let step = SnapshotStep {
            since: t.open_snapshot(),
            complete: true,
        };
        let landed = land_step(&mut t, vec![file], step, json!("done")).await;
        assert_eq!(landed.swept, 2, "b and c, which the snapshot no longer has");
        assert_eq!(landed.rewritten_files, 0, "the old file goes whole");
        assert_eq!(landed.dv_bytes, 0);
        assert_eq!(ids(rows(&t).await), ["a", "d", "e"]);
        let meta = t.last_commit().unwrap();
        assert_eq!(meta.snapshot_since, None);
        assert_eq!(meta.snapshot_completed, Some(at(500)));
        assert_eq!(meta.cursor, json!("done"));
        assert_eq!(t.open_snapshot(), None);
    }

    #[tokio::test]
    async fn deletion_vectors_a_completed_snapshot_drops_older_files_whole() {
        a_failed_snapshot_keeps_rows_and_a_complete_one_drops_whole_files(
            MergeMode::DeletionVectors,
        )
        .await;
    }

    #[tokio::test]
    async fn copy_on_write_a_completed_snapshot_drops_older_files_whole() {
        a_failed_snapshot_keeps_rows_and_a_complete_one_drops_whole_files(MergeMode::CopyOnWrite)
            .await;
    }

    /// A completing commit without new rows sweeps mixed files (one merged by `compact`,
    /// one without statistics) row by row.
    async fn sweeps_mixed_files(mode: MergeMode, key: Option<&str>) -> Landed {
        let dir = tempfile::tempdir().unwrap();
        let w = stamped_warehouse(&dir, mode);
        let schema = stamped_schema();
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, key)
            .await
            .unwrap();
        let file = stamped_file(&t, &[("a", 100), ("b", 100)]).await;
        land_step(&mut t, vec![file], SnapshotStep::default(), json!(1)).await;
        let file = stamped_file(&t, &[("c", 500)]).await;
        land_step(
            &mut t,
            vec![file],
            SnapshotStep::starting(at(500)),
            json!(2),
        )
        .await;
        // Compaction merges both into one file holding old and new rows.
        let report = super::super::compact::compact_table(
            &w,
            &["s", "t"],
            &super::super::compact::CompactOptions {
                target_size: 1 << 20,
                retention: chrono::Duration::hours(1),
                row_group_size: 1024,
            },
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!((report.files_merged, report.files_after), (2, 1));
        // A file whose statistics say nothing of `received_at` (written before they did).
        let mut file = stamped_file(&t, &[("d", 100), ("e", 600)]).await;
        file.add.stats = None;
        let open = SnapshotStep {
            since: t.open_snapshot(),
            complete: false,
        };
        land_step(&mut t, vec![file], open, json!(3)).await;
        assert_eq!(ids(rows(&t).await), ["a", "b", "c", "d", "e"]);

        let step = SnapshotStep {
            since: Some(at(500)),
            complete: true,
        };
        let landed = land_step(&mut t, Vec::new(), step, json!(3)).await;
        assert_eq!(landed.swept, 3, "a, b and d");
        assert_eq!(ids(rows(&t).await), ["c", "e"]);
        assert_eq!(t.last_commit().unwrap().snapshot_completed, Some(at(500)));
        assert_eq!(t.seq(), 4, "the sweep is a commit of its own");
        landed
    }

    #[tokio::test]
    async fn a_sweep_without_new_rows_marks_mixed_files_in_deletion_vectors() {
        let landed = sweeps_mixed_files(MergeMode::DeletionVectors, Some("id")).await;
        assert!(landed.dv_bytes > 0);
        assert_eq!(landed.rewritten_files, 0);
    }

    #[tokio::test]
    async fn a_sweep_without_new_rows_rewrites_mixed_files_copy_on_write() {
        let landed = sweeps_mixed_files(MergeMode::CopyOnWrite, Some("id")).await;
        assert_eq!(landed.dv_bytes, 0);
        assert_eq!(landed.rewritten_files, 2);
    }

    #[tokio::test]
    async fn a_sweep_rewrites_mixed_files_of_append_only_tables() {
        let landed = sweeps_mixed_files(MergeMode::DeletionVectors, None).await;
        assert_eq!(
            landed.dv_bytes, 0,
            "append-only tables have no deletion vectors"
        );
        assert_eq!(landed.rewritten_files, 2);
    }

    #[tokio::test]
    async fn a_new_reset_starts_the_open_snapshot_over() {
        let dir = tempfile::tempdir().unwrap();
        let w = stamped_warehouse(&dir, MergeMode::DeletionVectors);
        let schema = stamped_schema();
        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        let file = stamped_file(&t, &[("a", 100)]).await;
        land_step(
            &mut t,
            vec![file],
            SnapshotStep::starting(at(100)),
            json!(1),
        )
        .await;
        let file = stamped_file(&t, &[("b", 200)]).await;
        land_step(
            &mut t,
            vec![file],
            SnapshotStep::starting(at(200)),
            json!(2),
        )
        .await;
        assert_eq!(t.open_snapshot(), Some(at(200)));
        let step = SnapshotStep {
            since: t.open_snapshot(),
            complete: true,
        };
        land_step(&mut t, Vec::new(), step, json!(2)).await;
        assert_eq!(ids(rows(&t).await), ["b"]);
    }

    #[tokio::test]
    async fn a_legacy_reset_commit_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let w = stamped_warehouse(&dir, MergeMode::DeletionVectors);
        let schema = stamped_schema();
        let t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        // A commit as versions before open snapshots wrote it.
        let file = stamped_file(&t, &[("a", 100), ("b", 100)]).await;
        let legacy = json!({
            "seq": 1,
            "cursor": {"page": 1},
            "run_id": "old",
            "records": 2,
            "reset": true,
            "committed_at": "2024-01-01T00:00:00+00:00"
        });
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new("app", 1))
            .with_metadata([(COMMIT_INFO_KEY.to_owned(), legacy)]);
        CommitBuilder::from(properties)
            .with_actions(vec![Action::Add(file.add)])
            .build(
                Some(t.delta().snapshot().unwrap()),
                t.delta().log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Overwrite,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .unwrap();

        let mut t = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        assert_eq!(t.seq(), 1);
        assert_eq!(t.cursor(), Some(json!({"page": 1})));
        let meta = t.last_commit().unwrap();
        assert!(meta.reset);
        assert_eq!(meta.snapshot_since, None);
        assert_eq!(t.open_snapshot(), None);
        assert_eq!(ids(rows(&t).await), ["a", "b"]);

        // New commits go on from it, without the legacy field.
        let file = stamped_file(&t, &[("c", 200)]).await;
        land_step(
            &mut t,
            vec![file],
            SnapshotStep::default(),
            json!({"page": 2}),
        )
        .await;
        assert!(!t.last_commit().unwrap().reset);
        let reopened = StreamTable::open(&w, &["s", "t"], "app".into(), &schema, 1024, Some("id"))
            .await
            .unwrap();
        assert_eq!(reopened.seq(), 2);
        assert_eq!(ids(rows(&reopened).await), ["a", "b", "c"]);
    }

    #[test]
    fn received_at_statistics_bound_every_row() {
        let stats = r#"{"numRecords":2,"minValues":{"received_at":"2024-01-01T00:00:00.123Z"},"maxValues":{"received_at":"2024-01-01T00:00:01.456Z"}}"#;
        let (min, max) = received_range(Some(stats)).unwrap();
        let base = at(1_704_067_200).timestamp_micros();
        assert_eq!(min, base + 123_000);
        assert_eq!(
            max,
            base + 1_456_999,
            "the truncated millisecond is covered whole"
        );
        assert_eq!(received_range(Some(r#"{"numRecords":2}"#)), None);
    }
}
