//! Where one stream's commits land: its latest-state table, its optional history table and
//! its optional Tracking-API outbox, kept at one commit sequence.
//!
//! A commit is numbered by the table (`seq`, stored with the cursor in the table's
//! transaction); the history table and the outbox file of that commit carry the same
//! number, written *before* the table's commit so a run that dies in between is recovered
//! from them ([`StreamSink::recover`]; see `warehouse::history` and `tracking::outbox`).
//! [`StreamSink`] is the one place that knows this order and assigns the numbers.

use anyhow::Result;
use arrow::datatypes::Schema as ArrowSchema;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tributary_sdk::{StreamKind, StreamSchema};

use crate::tracking::outbox::Outbox;
use crate::warehouse::history::History;
use crate::warehouse::{Landed, NewFile, SnapshotStep, StreamTable, Warehouse};

/// One commit of a stream: new data files and what they reach.
pub struct Commit<'a> {
    /// The data files, already written in the table's directory.
    pub files: Vec<NewFile>,
    /// Their schema (the table's, widened by the run so far).
    pub schema: &'a ArrowSchema,
    /// Where a snapshot of the stream stands after this commit.
    pub snapshot: SnapshotStep,
    /// The connector's cursor after the commit's rows.
    pub cursor: serde_json::Value,
    /// Rows in `files`.
    pub records: u64,
    /// The run's id.
    pub run_id: &'a str,
    /// The Tracking-API messages of the commit's rows (ignored without an outbox).
    pub messages: &'a [serde_json::Value],
}

/// The tables (and outbox) one stream lands in.
pub struct StreamSink {
    table: StreamTable,
    history: Option<History>,
    outbox: Option<Outbox>,
}

impl StreamSink {
    /// Opens (or creates) the tables of `source`'s stream `schema`: its latest-state table
    /// (one row per key for object streams, append-only for event streams), its history
    /// table when `history` (object streams only), and `outbox` when tracking is on.
    pub async fn open(
        warehouse: &Warehouse,
        source: &str,
        schema: &StreamSchema,
        row_group_size: usize,
        history: bool,
        outbox: Option<Outbox>,
    ) -> Result<Self> {
        let stream = schema.name.as_str();
        let key = (schema.kind == StreamKind::Objects).then_some(schema.primary_key.as_str());
        let arrow = schema.arrow_schema();
        let table = StreamTable::open(
            warehouse,
            &[source, stream],
            format!("tributary/{source}/{stream}"),
            &arrow,
            row_group_size,
            key,
        )
        .await?;
        let history = match key {
            Some(_) if history => {
                Some(History::open(warehouse, source, stream, &arrow, row_group_size).await?)
            }
            _ => None,
        };
        Ok(StreamSink {
            table,
            history,
            outbox,
        })
    }

    /// Lands the commit a run that died between the history's commit and the table's left
    /// behind, if any; returns its sequence number.
    pub async fn recover(&mut self) -> Result<Option<i64>> {
        let (Some(history), Some(key)) = (&self.history, self.table.key()) else {
            return Ok(None);
        };
        let key = key.to_owned();
        let Some((files, meta)) = history.ahead_of(self.table.seq(), &key).await? else {
            return Ok(None);
        };
        let schema = history.arrow_schema()?;
        self.table
            .commit(
                files,
                &schema,
                SnapshotStep::of(&meta),
                meta.cursor,
                meta.records,
                &meta.run_id,
            )
            .await?;
        Ok(Some(meta.seq))
    }

    /// Lands `commit` as the next commit: the outbox file and the history commit first, then
    /// the table's, which makes it count.
    pub async fn land(&mut self, commit: Commit<'_>) -> Result<Landed> {
        let seq = self.table.seq() + 1;
        if let Some(outbox) = &self.outbox {
            // Written even when empty, so it replaces any leftover of a failed attempt at
            // this seq; it counts only once the table's commit lands.
            outbox.write(seq, commit.messages).await?;
        }
        if let Some(history) = self.history.as_mut() {
            history
                .land(
                    seq,
                    &commit.files,
                    commit.schema,
                    commit.snapshot,
                    commit.cursor.clone(),
                    commit.records,
                    commit.run_id,
                    &self.table,
                )
                .await?;
        }
        self.table
            .commit(
                commit.files,
                commit.schema,
                commit.snapshot,
                commit.cursor,
                commit.records,
                commit.run_id,
            )
            .await
    }

    /// The latest-state table (to write data files into, and read its position).
    pub fn table(&self) -> &StreamTable {
        &self.table
    }

    /// Whether commits feed an outbox.
    pub fn has_outbox(&self) -> bool {
        self.outbox.is_some()
    }

    /// The committed cursor.
    pub fn cursor(&self) -> Option<serde_json::Value> {
        self.table.cursor()
    }

    /// When the snapshot in progress started, if one is.
    pub fn open_snapshot(&self) -> Option<DateTime<Utc>> {
        self.table.open_snapshot()
    }

    /// The table's schema.
    pub fn arrow_schema(&self) -> Result<Arc<ArrowSchema>> {
        self.table.arrow_schema()
    }
}
