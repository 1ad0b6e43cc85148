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
//! The history keeps every row: a completed snapshot removes rows from the latest-state
//! table only. Its commits record the same snapshot state as the latest-state commit they
//! precede, so a commit landed again from the history takes the same snapshot step.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow::datatypes::Schema as ArrowSchema;
use deltalake::kernel::Action;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::datafile::NewFile;
use super::merge::read_keys;
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
    /// no row removed). Called just before the latest-state commit `seq`.
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
    ) -> Result<()> {
        let mut copies = Vec::with_capacity(files.len());
        for f in files {
            let name = f.add.path.as_str();
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
        self.table.follow(seq - 1);
        self.table
            .commit(copies, schema, snapshot, cursor, records, run_id)
            .await?;
        Ok(())
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
}
