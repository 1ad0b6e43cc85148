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

use super::datafile::{DataFile, NewFile, key_range};
use super::dv::{self, DvFile};
use super::merge::{live_rows, rows_with_keys};
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
    /// Whether this commit replaced every earlier row.
    #[serde(default)]
    pub reset: bool,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
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
        })
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
    /// same keys, the removal of every earlier row (if `reset`), the stream's `txn` and the
    /// cursor land together or not at all.
    pub async fn commit(
        &mut self,
        files: Vec<NewFile>,
        schema: &ArrowSchema,
        reset: bool,
        cursor: serde_json::Value,
        records: u64,
        run_id: &str,
    ) -> Result<Landed> {
        let mut attempt = 1;
        loop {
            let planned = self.plan(&files, schema, reset).await?;
            let seq = self.seq + 1;
            let meta = CommitMeta {
                seq,
                cursor: cursor.clone(),
                run_id: run_id.to_owned(),
                records,
                reset,
                committed_at: chrono::Utc::now().to_rfc3339(),
            };
            let operation = if reset {
                DeltaOperation::Write {
                    mode: SaveMode::Overwrite,
                    partition_by: None,
                    predicate: None,
                }
            } else if planned.removes {
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

    /// The actions of a commit of `files` against the table as it is now.
    async fn plan(&self, files: &[NewFile], schema: &ArrowSchema, reset: bool) -> Result<Plan> {
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
        if reset {
            for f in &live {
                actions.push(Action::Remove(f.remove.clone()));
            }
            removes = !live.is_empty();
        } else {
            // Which existing files hold older versions of incoming keys.
            let mut touched: Vec<Option<Touch>> = Vec::with_capacity(live.len());
            if let Some(key) = self.key.as_deref()
                && !incoming.is_empty()
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
            for (f, touch) in live.iter().zip(touched) {
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
                match self.mode {
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
        }

        // The new files, less the rows a later version in this commit replaced.
        for (f, deleted) in files.iter().zip(new_deleted) {
            let stale_types = f.schema_differs(&target);
            if deleted.is_empty() && !stale_types {
                actions.push(Action::Add(f.add.clone()));
                continue;
            }
            landed.replaced += deleted.len();
            if self.mode == MergeMode::DeletionVectors && !stale_types {
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
            false,
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
            .commit(vec![file], &wide, false, serde_json::json!(2), 1, "r")
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
}
