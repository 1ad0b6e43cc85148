//! Table maintenance: merge small files (and files carrying deletion vectors) into larger
//! ones, then remove files no version needs any more.
//!
//! Safe while a sync runs on the same table:
//! - The compaction commit removes the files it merged with `dataChange = true`, so a sync
//!   commit that takes rows out of one of those files conflicts with it: whichever commits
//!   second re-plans against the new table (a sync re-finds the rows in the merged file;
//!   compaction gives up on this round and says so). Rows a sync appends are in new files
//!   compaction never saw, untouched.
//! - Removal only deletes files unreferenced by the current version **and** older than the
//!   retention period (by their removal time, or their age for files no commit names). A
//!   running sync's not-yet-committed files are younger than any sensible retention.

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use arrow::datatypes::Schema as ArrowSchema;
use deltalake::DeltaTableError;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use futures::StreamExt;

use super::datafile::DataFile;
use super::dv;
use super::merge::live_rows;
use super::table::LiveFile;
use super::{Warehouse, writer_properties};

/// How many times compaction re-plans after a concurrent commit changed its files.
const ATTEMPTS: usize = 3;

/// What `compact` does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files smaller than half this (bytes) are merged, into files of about this size.
    pub target_size: u64,
    /// Unreferenced files older than this are deleted.
    pub retention: chrono::Duration,
    /// Rows per Parquet row group of the merged files.
    pub row_group_size: usize,
}

/// What compacting one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Live data files before and after.
    pub files_before: usize,
    /// Live data files after.
    pub files_after: usize,
    /// Files merged into new ones.
    pub files_merged: usize,
    /// Rows written into the merged files.
    pub rows: u64,
    /// Rows dropped because a deletion vector marked them (now physically gone).
    pub deleted_rows_purged: u64,
    /// Bytes of the merged files.
    pub bytes_written: u64,
    /// Files removed from storage by the retention pass.
    pub files_removed: usize,
}

/// Compacts the table at `parts` and removes what no version needs. `None` if there is no
/// table there.
pub async fn compact_table(
    warehouse: &Warehouse,
    parts: &[&str],
    options: &CompactOptions,
) -> Result<Option<CompactReport>> {
    let name = parts.join("/");
    let mut attempt = 1;
    let mut report = loop {
        let Some(table) = warehouse.open(parts).await? else {
            return Ok(None);
        };
        match merge_small_files(&table, options).await {
            Ok(r) => break r,
            Err(Conflict::Changed(e)) if attempt < ATTEMPTS => {
                tracing::warn!(table = %name, attempt, error = %e, "A sync changed files being compacted; planning again.");
                attempt += 1;
            }
            Err(Conflict::Changed(e)) => bail!(
                "table {name}: syncs kept changing the files being compacted ({e}); nothing was lost, run compact again later"
            ),
            Err(Conflict::Other(e)) => return Err(e.context(format!("compacting table {name}"))),
        }
    };
    let Some(table) = warehouse.open(parts).await? else {
        return Ok(Some(report));
    };
    let (_, metrics) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(options.retention)
        // The table's own minimum (a week by default) is enforced by our default instead,
        // so that a shorter, deliberate retention works.
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| anyhow!("removing unreferenced files of table {name}: {e}"))?;
    report.files_removed = metrics.files_deleted.len();
    Ok(Some(report))
}

enum Conflict {
    /// A concurrent commit touched the files: plan again.
    Changed(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Conflict {
    fn from(e: E) -> Self {
        Conflict::Other(e.into())
    }
}

async fn merge_small_files(
    table: &deltalake::DeltaTable,
    options: &CompactOptions,
) -> std::result::Result<CompactReport, Conflict> {
    let snapshot = table.snapshot()?;
    let schema: Arc<ArrowSchema> = snapshot.snapshot().arrow_schema();
    let live: Vec<LiveFile> = snapshot
        .log_data()
        .iter()
        .map(|f| LiveFile::of(&f))
        .collect();
    let mut report = CompactReport {
        files_before: live.len(),
        files_after: live.len(),
        ..Default::default()
    };
    let small = options.target_size / 2;
    let candidates: Vec<&LiveFile> = live
        .iter()
        .filter(|f| f.add.deletion_vector.is_some() || (f.add.size as u64) < small)
        .collect();
    let worth_it =
        candidates.len() >= 2 || candidates.iter().any(|f| f.add.deletion_vector.is_some());
    if !worth_it {
        return Ok(report);
    }
    // Bin-pack, in log order, into groups of about the target size.
    let mut groups: Vec<Vec<&LiveFile>> = vec![Vec::new()];
    let mut group_size = 0u64;
    for f in candidates {
        if group_size + f.add.size as u64 > options.target_size
            && groups.last().is_some_and(|g| !g.is_empty())
        {
            groups.push(Vec::new());
            group_size = 0;
        }
        group_size += f.add.size as u64;
        if let Some(g) = groups.last_mut() {
            g.push(f);
        }
    }
    let key = schema.field_with_name("id").ok().map(|_| "id");
    let store = table.object_store();
    let props = writer_properties(options.row_group_size)?;
    let mut actions = Vec::new();
    for group in groups {
        if group.len() < 2 && group.iter().all(|f| f.add.deletion_vector.is_none()) {
            continue;
        }
        let mut out = DataFile::create(table, schema.clone(), props.clone(), key)?;
        for f in &group {
            let deleted = match &f.add.deletion_vector {
                Some(d) => {
                    report.deleted_rows_purged += d.cardinality as u64;
                    Some(dv::read(store.as_ref(), d).await?)
                }
                None => None,
            };
            let mut rows =
                live_rows(&store, &f.add.path, f.add.size, deleted, schema.clone()).await?;
            while let Some(batch) = rows.next().await {
                out.write(&batch?).await?;
            }
            actions.push(Action::Remove(f.remove.clone()));
        }
        report.files_merged += group.len();
        report.files_after -= group.len();
        if out.rows() > 0 {
            report.rows += out.rows();
            let mut add = out.finish().await?.add;
            // The same rows, rearranged.
            add.data_change = false;
            report.bytes_written += add.size as u64;
            report.files_after += 1;
            actions.push(Action::Add(add));
        }
    }
    if actions.is_empty() {
        return Ok(report);
    }
    let committed = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Optimize {
                predicate: None,
                target_size: options.target_size as i64,
            },
        )
        .await;
    match committed {
        Ok(_) => Ok(report),
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(c),
        }) => Err(Conflict::Changed(c.to_string())),
        Err(e) => Err(Conflict::Other(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;
    use crate::warehouse::StreamTable;
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

    async fn land(t: &mut StreamTable, rows: &[(&str, i64)]) -> crate::warehouse::Landed {
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

    fn options() -> CompactOptions {
        CompactOptions {
            target_size: 1 << 20,
            retention: chrono::Duration::hours(1),
            row_group_size: 1024,
        }
    }

    async fn setup() -> (tempfile::TempDir, Warehouse, StreamTable) {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let mut t = StreamTable::open(
            &w,
            &["s", "t"],
            "app".into(),
            &batch(&[]).schema(),
            1024,
            Some("id"),
        )
        .await
        .unwrap();
        land(&mut t, &[("a", 1), ("b", 1)]).await;
        land(&mut t, &[("c", 1), ("d", 1)]).await;
        land(&mut t, &[("a", 2)]).await;
        (dir, w, t)
    }

    #[tokio::test]
    async fn merges_files_and_purges_deleted_rows() {
        let (_dir, w, _t) = setup().await;
        let r = compact_table(&w, &["s", "t"], &options())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.files_before, 3);
        assert_eq!(r.files_after, 1);
        assert_eq!(r.files_merged, 3);
        assert_eq!(r.rows, 4, "a's old row is gone for good");
        assert_eq!(r.deleted_rows_purged, 1);
        // Nothing left to do.
        let again = compact_table(&w, &["s", "t"], &options())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.files_merged, 0);
        assert!(
            compact_table(&w, &["s", "nope"], &options())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_sync_planned_before_a_compaction_replans_and_replaces_the_right_row() {
        let (_dir, w, mut t) = setup().await;
        // `t` still sees the table before the compaction.
        compact_table(&w, &["s", "t"], &options()).await.unwrap();
        let landed = land(&mut t, &[("b", 9)]).await;
        assert_eq!(
            landed.replaced, 1,
            "b's row found again, in the merged file"
        );
        let reopened = StreamTable::open(
            &w,
            &["s", "t"],
            "app".into(),
            &batch(&[]).schema(),
            1024,
            Some("id"),
        )
        .await
        .unwrap();
        assert_eq!(reopened.seq(), 4);
        let (files, _) = (
            reopened
                .delta()
                .snapshot()
                .unwrap()
                .log_data()
                .iter()
                .count(),
            (),
        );
        assert_eq!(files, 2, "the merged file (with b marked) and the new one");
    }

    #[tokio::test]
    async fn a_compaction_planned_before_a_sync_commit_conflicts_instead_of_resurrecting_rows() {
        let (_dir, w, mut t) = setup().await;
        let stale = w.open(&["s", "t"]).await.unwrap().unwrap();
        land(&mut t, &[("c", 5)]).await;
        match merge_small_files(&stale, &options()).await {
            Err(Conflict::Changed(_)) => {}
            Ok(r) => panic!("compaction committed over a newer sync: {r:?}"),
            Err(Conflict::Other(e)) => panic!("{e:#}"),
        }
        // A fresh round works and keeps c's newest row only.
        let r = compact_table(&w, &["s", "t"], &options())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.rows, 4);
    }
}
