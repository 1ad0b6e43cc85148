//! The run log: every stream run (source, stream, start, end, records, bytes, status, and
//! the error, or why it was deferred or skipped) appended to a Delta table at
//! `<warehouse>/_tributary/sync_runs/`, queryable like any other table, so volume over
//! time and failures have history from day one.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};

use crate::engine::{Status, StreamOutcome};
use crate::warehouse::{DataFile, Warehouse, writer_properties};

/// The run log table's path below the warehouse root.
pub const RUNS_TABLE: [&str; 2] = ["_tributary", "sync_runs"];

fn schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("stream", DataType::Utf8, true),
        Field::new("started_at", ts.clone(), true),
        Field::new("ended_at", ts, true),
        Field::new("seconds", DataType::Float64, true),
        Field::new("records", DataType::Int64, true),
        Field::new("files", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Appends the outcomes of one run as one blind append (concurrent workers never conflict).
pub async fn record(warehouse: &Warehouse, run_id: &str, outcomes: &[StreamOutcome]) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let schema = schema();
    let ts = |f: fn(&StreamOutcome) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(outcomes.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![run_id; outcomes.len()])),
            Arc::new(StringArray::from_iter_values(
                outcomes.iter().map(|o| o.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                outcomes.iter().map(|o| o.stream.as_str()),
            )),
            ts(|o| o.started_at.timestamp_micros()),
            ts(|o| o.ended_at.timestamp_micros()),
            Arc::new(Float64Array::from_iter_values(
                outcomes.iter().map(|o| o.seconds()),
            )),
            Arc::new(Int64Array::from_iter_values(
                outcomes.iter().map(|o| o.records as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                outcomes.iter().map(|o| o.files as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                outcomes.iter().map(|o| o.bytes as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                outcomes.iter().map(|o| o.status.word()),
            )),
            Arc::new(StringArray::from(
                outcomes
                    .iter()
                    .map(|o| match &o.status {
                        // Why it failed, or why it was deferred or skipped.
                        Status::Failed(e)
                        | Status::Deferred(e)
                        | Status::Skipped(e)
                        | Status::Leased(e) => Some(e.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )),
        ],
    )?;
    let table = warehouse.open_or_create(&RUNS_TABLE, &schema).await?;
    let mut file = DataFile::create(&table, schema, writer_properties(65_536)?, None)?;
    file.write(&batch).await?;
    let add = file.finish().await?.add;
    CommitBuilder::from(CommitProperties::default())
        .with_actions(vec![Action::Add(add)])
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await?;
    Ok(())
}
