//! Reading a model from a Delta table: its live rows (deletion vectors applied), a file
//! and an Arrow batch at a time, so memory does not grow with the table; the columns the
//! model lists, the rows its filter keeps. Tables written by Tributary, Spark, Databricks
//! or delta-rs are read alike; a partitioned table is refused (its partition values are
//! not in the data files), as is one whose reader features this build does not know.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use futures::{Stream, StreamExt};
use object_store::ObjectStore;

use super::Row;
use super::config::DeltaConnection;
use super::filter::Filter;
use crate::config::WarehouseConfig;
use crate::warehouse::merge::live_rows;
use crate::warehouse::table::LiveFile;
use crate::warehouse::{Warehouse, dv};

type Batches = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// A model's rows, read from a Delta table.
pub struct DeltaReader {
    store: Arc<dyn ObjectStore>,
    schema: Arc<ArrowSchema>,
    files: VecDeque<LiveFile>,
    current: Option<Batches>,
    /// The columns read, in order (the model's `columns`, or all).
    columns: Vec<String>,
    projection: Vec<usize>,
    id: usize,
    filter: Option<Filter>,
}

/// The location of `table`: a URL, or a path below the source's `url`.
fn location(conn: &DeltaConnection, table: &str) -> Result<(Warehouse, Vec<String>)> {
    let (url, parts) = if table.contains("://") {
        (table.to_owned(), Vec::new())
    } else {
        let parts: Vec<String> = table
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if parts.iter().any(|p| p == "..") {
            bail!("the table path {table:?} leaves the source's url (`..`)");
        }
        (conn.url.clone(), parts)
    };
    let warehouse = Warehouse::new(&WarehouseConfig {
        url,
        options: conn.options.clone(),
        ..WarehouseConfig::default()
    })?;
    Ok((warehouse, parts))
}

impl DeltaReader {
    /// Opens the model's table at its latest version and checks that it has the id column
    /// and every listed column.
    pub async fn open(
        conn: &DeltaConnection,
        table: &str,
        columns: Option<&[String]>,
        filter: Option<&Filter>,
        id: &str,
        model: &str,
    ) -> Result<DeltaReader> {
        let (warehouse, parts) =
            location(conn, table).map_err(|e| anyhow!("model `{model}`: {e:#}"))?;
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let url = warehouse.table_url(&parts)?;
        let delta = warehouse
            .open(&parts)
            .await
            .map_err(|e| anyhow!("model `{model}`: {e:#}"))?
            .ok_or_else(|| {
                anyhow!("model `{model}`: there is no Delta table at {url} (`table` = {table:?})")
            })?;
        let snapshot = delta.snapshot()?;
        let partitioned = snapshot.metadata().partition_columns();
        if !partitioned.is_empty() {
            bail!(
                "model `{model}`: the table at {url} is partitioned by {}; partitioned tables are not supported yet",
                partitioned.join(", ")
            );
        }
        if let Some(features) = snapshot.protocol().reader_features() {
            for f in features {
                let name = format!("{f:?}");
                if !matches!(
                    name.as_str(),
                    "DeletionVectors"
                        | "TimestampWithoutTimezone"
                        | "V2Checkpoint"
                        | "VacuumProtocolCheck"
                ) {
                    bail!(
                        "model `{model}`: the table at {url} needs the reader feature {name}, which this build cannot read"
                    );
                }
            }
        }
        let schema = snapshot.snapshot().arrow_schema();
        let all: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let wanted: Vec<String> = match columns {
            Some(c) => c.to_vec(),
            None => all.clone(),
        };
        let index = |name: &str, key: &str| {
            schema.index_of(name).map_err(|_| {
                anyhow!(
                    "model `{model}`: {key} `{name}` is not a column of the table at {url} (its columns: {})",
                    all.join(", ")
                )
            })
        };
        let projection = wanted
            .iter()
            .map(|c| index(c, "the column"))
            .collect::<Result<Vec<_>>>()?;
        let id_index = index(id, "the id column")?;
        if !wanted.iter().any(|c| c == id) {
            bail!("model `{model}`: `columns` must include the id column `{id}`");
        }
        if let Some(f) = filter {
            for c in f.columns() {
                if !wanted.iter().any(|w| w == c) {
                    index(c, "the filter's column")?;
                    bail!(
                        "model `{model}`: the filter reads `{c}`, which is not in `columns`; add it there"
                    );
                }
            }
        }
        let files = snapshot
            .log_data()
            .iter()
            .map(|f| LiveFile::of(&f))
            .collect();
        Ok(DeltaReader {
            store: delta.object_store(),
            schema,
            files,
            current: None,
            columns: wanted,
            projection,
            id: id_index,
            filter: filter.cloned(),
        })
    }

    /// The columns read.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next batch of rows; `None` at the end.
    pub async fn next(&mut self, model: &str) -> Result<Option<Vec<Row>>> {
        loop {
            if let Some(batches) = self.current.as_mut() {
                match batches.next().await {
                    Some(batch) => {
                        let batch = batch.map_err(|e| anyhow!("model `{model}`: {e:#}"))?;
                        let rows = self.rows(&batch, model)?;
                        if !rows.is_empty() {
                            return Ok(Some(rows));
                        }
                        continue;
                    }
                    None => self.current = None,
                }
            }
            let Some(file) = self.files.pop_front() else {
                return Ok(None);
            };
            let add = file.add;
            let deleted = match &add.deletion_vector {
                Some(d) => Some(
                    dv::read(self.store.as_ref(), d)
                        .await
                        .map_err(|e| anyhow!("model `{model}`: {e:#}"))?,
                ),
                None => None,
            };
            let stream = live_rows(
                &self.store,
                &add.path,
                add.size,
                deleted,
                self.schema.clone(),
            )
            .await
            .map_err(|e| anyhow!("model `{model}`: {e:#}"))?;
            self.current = Some(Box::pin(stream));
        }
    }

    fn rows(&self, batch: &RecordBatch, model: &str) -> Result<Vec<Row>> {
        let ids = cast(batch.column(self.id), &DataType::Utf8)
            .map_err(|e| anyhow!("model `{model}`: the id column as text: {e}"))?;
        let ids = ids.as_string::<i32>();
        let projected = batch.project(&self.projection)?;
        let mut buf = Vec::with_capacity(projected.get_array_memory_size());
        {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            writer.write(&projected)?;
            writer.finish()?;
        }
        let text = String::from_utf8(buf)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for (i, line) in text.lines().enumerate() {
            if let Some(f) = &self.filter {
                let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)?;
                if !f.matches(&row) {
                    continue;
                }
            }
            out.push(Row {
                id: (!ids.is_null(i)).then(|| ids.value(i).to_owned()),
                json: line.to_owned(),
            });
        }
        Ok(out)
    }
}
