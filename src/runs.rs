//! The run log: every stream run (source, stream, start, end, records, bytes, status, and
//! the error, or why it was deferred or skipped, and the worker that held the stream's
//! lease) appended to a Delta table at `<warehouse>/_tributary/sync_runs/`, queryable like
//! any other table, so volume over time and failures have history from day one. With
//! several workers on one warehouse, `worker` and the start and end times show who synced
//! a stream when (the fleet test proves from them that no two workers overlapped).

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};

use crate::engine::{Status, StreamOutcome};
use crate::warehouse::{DataFile, Warehouse, delta_fields, writer_properties};

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
        // Added after the first release: a run log created before it gains the column
        // (null in older rows) with the first append that carries it.
        Field::new("worker", DataType::Utf8, true),
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
            Arc::new(StringArray::from(
                outcomes
                    .iter()
                    .map(|o| o.worker.as_deref())
                    .collect::<Vec<_>>(),
            )),
        ],
    )?;
    let table = warehouse.open_or_create(&RUNS_TABLE, &schema).await?;
    let mut file = DataFile::create(&table, schema.clone(), writer_properties(65_536)?, None)?;
    file.write(&batch).await?;
    let add = file.finish().await?.add;
    let snapshot = table.snapshot()?;
    let mut actions = Vec::with_capacity(2);
    let current = snapshot.snapshot().arrow_schema();
    if schema
        .fields()
        .iter()
        .any(|f| current.field_with_name(f.name()).is_err())
    {
        // A run log of an older release: the columns it lacks join in this commit.
        let mut fields: Vec<Field> = current
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            schema
                .fields()
                .iter()
                .filter(|f| current.field_with_name(f.name()).is_err())
                .map(|f| f.as_ref().clone()),
        );
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&StructType::try_new(delta_fields(&Schema::new(fields))?)?)?;
        actions.push(Action::Metadata(metadata));
    }
    actions.push(Action::Add(add));
    CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(
            Some(snapshot),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;
    use arrow::array::{Array, AsArray};

    fn outcome(stream: &str, worker: Option<&str>) -> StreamOutcome {
        let mut o = StreamOutcome::new("stripe", stream, Status::Succeeded);
        o.worker = worker.map(str::to_owned);
        o
    }

    /// The `worker` of every row, read from the table's data files.
    async fn workers(warehouse: &Warehouse, dir: &std::path::Path) -> Vec<Option<String>> {
        let table = warehouse.open(&RUNS_TABLE).await.unwrap().unwrap();
        let root = dir.join("_tributary/sync_runs");
        let mut out = Vec::new();
        let mut files: Vec<String> = table
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| f.path().to_string())
            .collect();
        files.sort();
        for f in files {
            let file = std::fs::File::open(root.join(f)).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
                    .unwrap();
            for b in reader {
                let b = b.unwrap();
                match b.column_by_name("worker") {
                    Some(c) => {
                        let c = c.as_string::<i32>();
                        out.extend(
                            (0..c.len()).map(|i| (!c.is_null(i)).then(|| c.value(i).to_owned())),
                        );
                    }
                    None => out.extend(std::iter::repeat_n(None, b.num_rows())),
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn the_run_log_names_the_worker_and_an_older_log_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        // A run log as an older release created it: no `worker` column.
        let old = schema();
        let old = Arc::new(Schema::new(
            old.fields()
                .iter()
                .filter(|f| f.name() != "worker")
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        w.open_or_create(&RUNS_TABLE, &old).await.unwrap();

        record(
            &w,
            "run-1",
            &[outcome("charges", Some("h:1:a")), outcome("events", None)],
        )
        .await
        .unwrap();
        let table = w.open(&RUNS_TABLE).await.unwrap().unwrap();
        let fields = table.snapshot().unwrap().snapshot().arrow_schema();
        assert!(fields.field_with_name("worker").is_ok(), "{fields:?}");
        // A second append needs no schema change.
        record(&w, "run-2", &[outcome("charges", Some("h:2:b"))])
            .await
            .unwrap();
        let mut got = workers(&w, dir.path()).await;
        got.sort();
        assert_eq!(
            got,
            vec![None, Some("h:1:a".to_owned()), Some("h:2:b".to_owned())]
        );
    }
}
