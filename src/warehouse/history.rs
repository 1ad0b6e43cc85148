//! Full history (`history = true` on a source): every version of every object a stream
//! lands, in an append-only `<stream>_history` table beside its latest-state table.
//!
//! Each commit's new data files are copied (server-side) into the history table and
//! committed there first, with the same sequence number and cursor as the latest-state
//! commit that follows. Two tables cannot commit atomically together, so the order makes
//! the gap recoverable: if a run dies between the two commits, the history is one commit
//! ahead, and the next run first lands that commit's files into the latest-state table
//! (copied back, with the cursor recorded in the history), before reading anything new.
//! Neither table ever holds a version twice.
//!
//! A version is landed once even when a vendor hands it over twice: a row identical (in
//! every column but `received_at` and `uuid_ts`) to the version the table already holds
//! for its key, or to an earlier row of the same commit, is left out of the history. That
//! happens where a backfill and the change feed overlap (an object changed while the list
//! was read comes from both) and on every snapshot re-read of unchanged objects. The
//! latest-state table still takes the whole file (its snapshot bookkeeping needs every
//! row's `received_at`); when rows were left out, the history commit records the files
//! as the latest-state table gets them, for the recovery below.
//!
//! The history keeps every row: a completed snapshot removes rows from the latest-state
//! table only. Its commits record the same snapshot state as the latest-state commit they
//! precede, so a commit landed again from the history takes the same snapshot step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow::datatypes::{Field, Schema as ArrowSchema};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use deltalake::kernel::Action;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use roaring::RoaringTreemap;
use tributary_sdk::schema::{RECEIVED_AT, UUID_TS};

use super::datafile::NewFile;
use super::merge::{read_keys, rows_at};
use super::table::{CommitMeta, SnapshotStep, StreamTable};
use super::{COMMIT_INFO_KEY, Warehouse};

/// The history table of one stream.
pub struct History {
    table: StreamTable,
    store: Arc<dyn ObjectStore>,
    main_dir: Path,
    history_dir: Path,
}

/// The name of the history table of `stream`.
pub fn table_name(stream: &str) -> String {
    format!("{stream}_history")
}

impl History {
    /// Opens (or creates) the history table of `source`/`stream`.
    pub async fn open(
        warehouse: &Warehouse,
        source: &str,
        stream: &str,
        schema: &ArrowSchema,
        row_group_size: usize,
    ) -> Result<Self> {
        let name = table_name(stream);
        let mut table = StreamTable::open(
            warehouse,
            &[source, &name],
            format!("tributary/{source}/{name}"),
            schema,
            row_group_size,
            None,
        )
        .await?;
        table.keep_every_row();
        let (store, root) = warehouse.store()?;
        Ok(History {
            table,
            store,
            main_dir: root.clone().join(source).join(stream),
            history_dir: root.join(source).join(name.as_str()),
        })
    }

    /// Lands `files` (already in the latest-state table's directory) in the history, as
    /// commit `seq` with `cursor` and the latest-state commit's `snapshot` step (recorded,
    /// no row removed), leaving out the rows that repeat the version `latest` (the
    /// latest-state table, before its commit `seq`) holds. Called just before the
    /// latest-state commit `seq`.
    #[allow(clippy::too_many_arguments)]
    pub async fn land(
        &mut self,
        seq: i64,
        files: &[NewFile],
        schema: &ArrowSchema,
        snapshot: SnapshotStep,
        cursor: serde_json::Value,
        records: u64,
        run_id: &str,
        latest: &StreamTable,
    ) -> Result<()> {
        let repeats = match self.repeats(files, schema, latest).await {
            Ok(r) => r,
            Err(e) => {
                // Comparing is an optimisation of the history's contents, never a reason
                // to stop a sync: land every row, as before.
                tracing::warn!(table = %latest.app_id(), error = %format!("{e:#}"), "Could not compare the new rows with the versions the table holds; the history keeps all of them.");
                vec![RoaringTreemap::new(); files.len()]
            }
        };
        let mut copies = Vec::with_capacity(files.len());
        let mut left_out = 0u64;
        for (f, repeated) in files.iter().zip(&repeats) {
            let name = f.add.path.as_str();
            if !repeated.is_empty() {
                left_out += repeated.len();
                if let Some(copy) = self.write_without(f, repeated).await? {
                    copies.push(copy);
                }
                continue;
            }
            self.store
                .copy(
                    &self.main_dir.clone().join(name),
                    &self.history_dir.clone().join(name),
                )
                .await
                .with_context(|| format!("copying {name} into the history table"))?;
            let mut add = f.add.clone();
            add.deletion_vector = None;
            copies.push(NewFile {
                add,
                keys: Default::default(),
                schema: f.schema.clone(),
            });
        }
        let latest_files = (left_out > 0).then(|| files.iter().map(|f| f.add.clone()).collect());
        if left_out > 0 {
            tracing::debug!(table = %latest.app_id(), seq, rows = left_out, "Left versions the table already holds out of the history.");
        }
        self.table.follow(seq - 1);
        self.table
            .commit_recording(
                copies,
                schema,
                snapshot,
                cursor,
                records.saturating_sub(left_out),
                run_id,
                latest_files,
            )
            .await?;
        Ok(())
    }

    /// For each of `files`, the positions of its rows that repeat the version of their key
    /// the table `latest` holds, or an earlier row of these files: equal in every column
    /// but the landing stamps, in `schema` (the commit's).
    async fn repeats(
        &self,
        files: &[NewFile],
        schema: &ArrowSchema,
        latest: &StreamTable,
    ) -> Result<Vec<RoaringTreemap>> {
        let mut repeats = vec![RoaringTreemap::new(); files.len()];
        let keys: HashSet<&str> = files.iter().flat_map(|f| f.keys.iter().flatten()).collect();
        let held = latest.live_rows_with_keys(&keys).await?;
        // Versions within one commit repeat too (a page may list an object the feed then
        // names again), so compare the files with each other even when the table holds none
        // of their keys; with no key repeated and none held there is nothing to compare.
        let in_commit = files
            .iter()
            .map(|f| f.keys.iter().flatten().count())
            .sum::<usize>();
        if held.is_empty() && in_commit == keys.len() {
            return Ok(repeats);
        }
        // Compare in every column either side has but the landing stamps, in the type of
        // the commit's schema (older files' narrower types are cast to it).
        let table_schema = latest.arrow_schema()?;
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for f in table_schema.fields() {
            if schema.field_with_name(f.name()).is_err() {
                fields.push(f.as_ref().clone());
            }
        }
        fields.retain(|f| f.name() != RECEIVED_AT && f.name() != UUID_TS);
        let compared = Arc::new(ArrowSchema::new(fields));
        let key = latest
            .key()
            .ok_or_else(|| anyhow!("the latest-state table has no key"))?
            .to_owned();
        let converter = RowConverter::new(
            compared
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        // Each row's key and its encoding in `compared`.
        type Encoded = (Vec<Option<String>>, Vec<Vec<u8>>);
        let encode = |batch: &RecordBatch| -> Result<Encoded> {
            let batch = super::merge::conform(batch, &compared)?;
            let rows = converter.convert_columns(batch.columns())?;
            let keys = batch
                .column_by_name(&key)
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
                .ok_or_else(|| anyhow!("the key column `{key}` is not text"))?
                .iter()
                .map(|k| k.map(str::to_owned))
                .collect();
            Ok((keys, rows.iter().map(|r| r.as_ref().to_vec()).collect()))
        };
        let mut last: HashMap<String, Vec<u8>> = HashMap::new();
        for batch in &held {
            let (keys, rows) = encode(batch)?;
            for (k, row) in keys.into_iter().zip(rows) {
                if let Some(k) = k {
                    last.insert(k, row);
                }
            }
        }
        for (f, repeated) in files.iter().zip(repeats.iter_mut()) {
            let path = self.main_dir.clone().join(f.add.path.as_str());
            let mut all = RoaringTreemap::new();
            all.insert_range(0..f.keys.iter().count() as u64);
            let batches = rows_at(
                &self.store,
                path.as_ref(),
                f.add.size,
                &all,
                f.schema.clone(),
            )
            .await?;
            let mut position = 0u64;
            for batch in &batches {
                let (keys, rows) = encode(batch)?;
                for (k, row) in keys.into_iter().zip(rows) {
                    if let Some(k) = k {
                        if last.get(&k) == Some(&row) {
                            repeated.insert(position);
                        } else {
                            last.insert(k, row);
                        }
                    }
                    position += 1;
                }
            }
        }
        Ok(repeats)
    }

    /// Writes the rows of `file` but those at `left_out` into a new file of the history
    /// table; `None` when no row is left.
    async fn write_without(
        &self,
        file: &NewFile,
        left_out: &RoaringTreemap,
    ) -> Result<Option<NewFile>> {
        let rows = file.keys.iter().count() as u64;
        let mut keep = RoaringTreemap::new();
        keep.insert_range(0..rows);
        keep -= left_out;
        if keep.is_empty() {
            return Ok(None);
        }
        let path = self.main_dir.clone().join(file.add.path.as_str());
        let batches = rows_at(
            &self.store,
            path.as_ref(),
            file.add.size,
            &keep,
            file.schema.clone(),
        )
        .await?;
        let mut out = self.table.new_file(file.schema.clone())?;
        for b in &batches {
            out.write(b).await?;
        }
        Ok(Some(out.finish().await?))
    }

    /// When a run died between the history commit and the latest-state commit, the files
    /// and metadata of that history commit, copied back into the latest-state table's
    /// directory with their keys read, ready to be committed there. `None` when both
    /// tables are at the same point.
    pub async fn ahead_of(
        &self,
        main_seq: i64,
        key: &str,
    ) -> Result<Option<(Vec<NewFile>, CommitMeta)>> {
        let Some(meta) = self.table.last_commit().cloned() else {
            return Ok(None);
        };
        if meta.seq <= main_seq {
            return Ok(None);
        }
        let Some(version) = self.table.version() else {
            return Ok(None);
        };
        let log = self.table.delta().log_store();
        // The history commit is the newest commit carrying our metadata at that seq.
        let mut v = version as i64;
        let adds = loop {
            if v < 0 {
                return Err(anyhow!(
                    "the history table says commit {} landed but its log entry is gone",
                    meta.seq
                ));
            }
            let bytes = log
                .read_commit_entry(v as u64)
                .await?
                .ok_or_else(|| anyhow!("history log version {v} is missing"))?;
            let mut adds = Vec::new();
            let mut ours = false;
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let action: Action = serde_json::from_slice(line)
                    .with_context(|| format!("reading history log version {v}"))?;
                match action {
                    Action::Add(a) => adds.push(a),
                    Action::CommitInfo(info) => {
                        ours = info
                            .info
                            .get(COMMIT_INFO_KEY)
                            .and_then(|m| m.get("seq"))
                            .and_then(|s| s.as_i64())
                            == Some(meta.seq);
                    }
                    _ => {}
                }
            }
            if ours {
                break adds;
            }
            v -= 1;
        };
        // Rows were left out of the history: the latest-state table's own files (written
        // before the history commit, in its directory) are the ones to land.
        if let Some(latest) = &meta.latest_files {
            let mut files = Vec::with_capacity(latest.len());
            for add in latest {
                let path = self.main_dir.clone().join(add.path.as_str());
                let (schema, keys) = read_keys(&self.store, path.as_ref(), add.size, key).await?;
                files.push(NewFile {
                    add: add.clone(),
                    keys,
                    schema,
                });
            }
            return Ok(Some((files, meta)));
        }
        let mut files = Vec::with_capacity(adds.len());
        let main_store = self.store.clone();
        for add in adds {
            let name = add.path.clone();
            main_store
                .copy(
                    &self.history_dir.clone().join(name.as_str()),
                    &self.main_dir.clone().join(name.as_str()),
                )
                .await
                .with_context(|| format!("copying {name} back into the latest-state table"))?;
            let (schema, keys) =
                read_keys(&self.table.delta().object_store(), &name, add.size, key).await?;
            files.push(NewFile { add, keys, schema });
        }
        Ok(Some((files, meta)))
    }

    /// The history table's current schema.
    pub fn arrow_schema(&self) -> Result<Arc<ArrowSchema>> {
        self.table.arrow_schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field};

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

    #[tokio::test]
    async fn a_commit_only_the_history_has_is_landed_in_the_latest_state_table() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let schema = batch(&[]).schema();
        let mut main = StreamTable::open(
            &w,
            &["s", "t"],
            "tributary/s/t".into(),
            &schema,
            1024,
            Some("id"),
        )
        .await
        .unwrap();
        let mut history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        assert!(history.ahead_of(main.seq(), "id").await.unwrap().is_none());

        // A run writes its file and commits the history, then dies.
        let b = batch(&[("a", 1), ("b", 1)]);
        let mut f = main.new_file(b.schema()).unwrap();
        f.write(&b).await.unwrap();
        let file = f.finish().await.unwrap();
        history
            .land(
                1,
                &[file],
                &schema,
                SnapshotStep::default(),
                serde_json::json!({"page": 1}),
                2,
                "run-1",
                &main,
            )
            .await
            .unwrap();

        // The next run finds the history ahead and lands that commit first.
        let history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        let (files, meta) = history.ahead_of(main.seq(), "id").await.unwrap().unwrap();
        assert_eq!(meta.seq, 1);
        assert_eq!(meta.cursor, serde_json::json!({"page": 1}));
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0]
                .keys
                .iter()
                .map(|k| k.map(str::to_owned))
                .collect::<Vec<_>>(),
            vec![Some("a".to_owned()), Some("b".to_owned())]
        );
        main.commit(
            files,
            &schema,
            SnapshotStep::of(&meta),
            meta.cursor,
            meta.records,
            &meta.run_id,
        )
        .await
        .unwrap();
        assert_eq!(main.seq(), 1);
        assert_eq!(main.cursor(), Some(serde_json::json!({"page": 1})));
        assert!(history.ahead_of(main.seq(), "id").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_replayed_commit_completes_the_snapshot_the_history_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new(
                "received_at",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let stamped = |ids: &[&str], secs: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(ids.iter().copied())),
                    Arc::new(
                        arrow::array::TimestampMicrosecondArray::from_iter_values(
                            ids.iter().map(|_| secs * 1_000_000),
                        )
                        .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        };
        let mut main = StreamTable::open(
            &w,
            &["s", "t"],
            "tributary/s/t".into(),
            &schema,
            1024,
            Some("id"),
        )
        .await
        .unwrap();
        let mut history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        let file = |t: &StreamTable, b: RecordBatch| {
            let mut f = t.new_file(b.schema()).unwrap();
            async move {
                f.write(&b).await.unwrap();
                f.finish().await.unwrap()
            }
        };
        let old = file(&main, stamped(&["a", "b"], 100)).await;
        history
            .land(
                1,
                std::slice::from_ref(&old),
                &schema,
                SnapshotStep::default(),
                serde_json::json!(1),
                2,
                "r",
                &main,
            )
            .await
            .unwrap();
        main.commit(
            vec![old],
            &schema,
            SnapshotStep::default(),
            serde_json::json!(1),
            2,
            "r",
        )
        .await
        .unwrap();

        // A run lands a complete snapshot (one page: c) in the history, then dies.
        let since = chrono::DateTime::from_timestamp(500, 0).unwrap();
        let complete = SnapshotStep {
            since: Some(since),
            complete: true,
        };
        let new = file(&main, stamped(&["c"], 500)).await;
        history
            .land(
                2,
                &[new],
                &schema,
                complete,
                serde_json::json!("done"),
                1,
                "r",
                &main,
            )
            .await
            .unwrap();
        assert_eq!(
            history
                .table
                .delta()
                .snapshot()
                .unwrap()
                .log_data()
                .iter()
                .count(),
            2,
            "the history keeps every row"
        );

        let history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        let (files, meta) = history.ahead_of(main.seq(), "id").await.unwrap().unwrap();
        assert_eq!(meta.snapshot_completed, Some(since));
        assert_eq!(SnapshotStep::of(&meta), complete);
        let landed = main
            .commit(
                files,
                &schema,
                SnapshotStep::of(&meta),
                meta.cursor,
                meta.records,
                &meta.run_id,
            )
            .await
            .unwrap();
        assert_eq!(landed.swept, 2, "a and b, which the snapshot no longer has");
        assert_eq!(
            main.delta().snapshot().unwrap().log_data().iter().count(),
            1
        );
        assert_eq!(main.open_snapshot(), None);
    }

    /// Rows of `t`'s history, `(id, v)` in landing order.
    async fn history_rows(w: &Warehouse) -> Vec<(String, i64)> {
        let table = w.open(&["s", "t_history"]).await.unwrap().unwrap();
        let mut out = Vec::new();
        let schema = table.snapshot().unwrap().snapshot().arrow_schema();
        let store = table.object_store();
        let mut adds: Vec<_> = table
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| super::super::table::LiveFile::of(&f).add)
            .collect();
        adds.sort_by_key(|a| a.modification_time);
        for add in adds {
            let rows =
                super::super::merge::live_rows(&store, &add.path, add.size, None, schema.clone())
                    .await
                    .unwrap();
            use futures::TryStreamExt;
            let batches: Vec<RecordBatch> = rows.try_collect().await.unwrap();
            for b in batches {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let vs = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((ids.value(i).to_owned(), vs.value(i)));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_version_the_table_already_holds_is_not_landed_in_the_history_again() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let schema = batch(&[]).schema();
        let mut main = StreamTable::open(
            &w,
            &["s", "t"],
            "tributary/s/t".into(),
            &schema,
            1024,
            Some("id"),
        )
        .await
        .unwrap();
        let mut history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        let mut land = async |main: &mut StreamTable, rows: &[(&str, i64)], commit: bool| {
            let b = batch(rows);
            let mut f = main.new_file(b.schema()).unwrap();
            f.write(&b).await.unwrap();
            let file = f.finish().await.unwrap();
            let seq = main.seq() + 1;
            history
                .land(
                    seq,
                    std::slice::from_ref(&file),
                    &schema,
                    SnapshotStep::default(),
                    serde_json::json!(seq),
                    rows.len() as u64,
                    "r",
                    main,
                )
                .await
                .unwrap();
            if commit {
                main.commit(
                    vec![file],
                    &schema,
                    SnapshotStep::default(),
                    serde_json::json!(seq),
                    rows.len() as u64,
                    "r",
                )
                .await
                .unwrap();
            }
        };
        // A backfill lists a and b; the change feed then names a (as listed), b changed,
        // and c twice with the same content within one page.
        land(&mut main, &[("a", 1), ("b", 1)], true).await;
        land(&mut main, &[("a", 1), ("b", 2), ("c", 1), ("c", 1)], true).await;
        assert_eq!(
            history_rows(&w).await,
            vec![
                ("a".into(), 1),
                ("b".into(), 1),
                ("b".into(), 2),
                ("c".into(), 1)
            ]
        );
        // A version that goes back to an earlier content is a new version.
        land(&mut main, &[("b", 1)], true).await;
        assert_eq!(history_rows(&w).await.len(), 5);

        // A run lands a commit in the history with rows left out, then dies: the next run
        // lands the latest-state table's whole file, not the history's reduced one.
        land(&mut main, &[("a", 1), ("d", 1)], false).await;
        let history = History::open(&w, "s", "t", &schema, 1024).await.unwrap();
        let (files, meta) = history.ahead_of(main.seq(), "id").await.unwrap().unwrap();
        assert_eq!(meta.records, 1, "the history landed d only");
        assert_eq!(
            files[0].keys.iter().flatten().collect::<Vec<_>>(),
            vec!["a", "d"]
        );
    }
}
