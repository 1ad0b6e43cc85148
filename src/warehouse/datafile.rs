//! One Parquet data file being written into a table's directory through object_store,
//! streamed (the multipart upload goes on while rows arrive), with the Delta statistics
//! readers use to skip it: row count, null counts, and min/max of the primary key.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType as ArrowType, Schema as ArrowSchema};
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;

/// Key statistics are kept only for keys up to this length, so they are exact (Delta
/// readers take min/max strings as bounds; a truncated max would not be one).
const MAX_STAT_KEY: usize = 64;

/// A Parquet data file being written to a table's store.
pub struct DataFile {
    name: String,
    store: Arc<dyn ObjectStore>,
    writer: AsyncArrowWriter<BufWriter>,
    schema: Arc<ArrowSchema>,
    null_counts: Vec<i64>,
    rows: u64,
    /// The primary key column's index and the key of every row written, in order.
    key: Option<(usize, Keys)>,
}

/// The primary key of every row of a file, in order: the key columns of the batches
/// written, shared with them (no copy per row on the write path).
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<StringArray>);

impl Keys {
    /// Appends a batch's key column.
    pub fn push(&mut self, column: StringArray) {
        self.0.push(column);
    }

    /// Every row's key, by position.
    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        self.0.iter().flat_map(|a| a.iter())
    }
}

/// A finished data file: its `add` action and, for keyed tables, the key of each row.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// The action that adds it to the table.
    pub add: Add,
    /// The key of every row, by position; empty for tables without a primary key.
    pub keys: Keys,
    /// The file's schema.
    pub schema: Arc<ArrowSchema>,
}

impl NewFile {
    /// Whether a column of this file has another type than in `target` (a column widened
    /// after the file was written); missing columns read as null and do not count.
    pub fn schema_differs(&self, target: &ArrowSchema) -> bool {
        self.schema.fields().iter().any(|f| {
            target
                .field_with_name(f.name())
                .is_ok_and(|t| t.data_type() != f.data_type())
        })
    }
}

impl DataFile {
    /// Starts a new data file with a unique name in `table`'s directory. With `key`, the
    /// values of that column are kept, so the commit can replace older rows of the same
    /// objects.
    pub fn create(
        table: &DeltaTable,
        schema: Arc<ArrowSchema>,
        props: WriterProperties,
        key: Option<&str>,
    ) -> Result<Self> {
        let name = format!("part-{}-c000.zstd.parquet", uuid::Uuid::new_v4());
        Self::create_named(table.object_store(), name, schema, props, key)
    }

    /// Starts a data file at `name` (relative to the table root) in `store`.
    pub fn create_named(
        store: Arc<dyn ObjectStore>,
        name: String,
        schema: Arc<ArrowSchema>,
        props: WriterProperties,
        key: Option<&str>,
    ) -> Result<Self> {
        let writer = AsyncArrowWriter::try_new(
            BufWriter::new(store.clone(), Path::from(name.as_str())),
            schema.clone(),
            Some(props),
        )?;
        let key = key
            .and_then(|k| schema.index_of(k).ok())
            .filter(|&i| schema.field(i).data_type() == &ArrowType::Utf8)
            .map(|i| (i, Keys::default()));
        Ok(DataFile {
            name,
            store,
            writer,
            null_counts: vec![0; schema.fields().len()],
            schema,
            rows: 0,
            key,
        })
    }

    /// The schema the file was started with.
    pub fn schema(&self) -> &Arc<ArrowSchema> {
        &self.schema
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a batch with exactly this file's schema.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        for (i, c) in batch.columns().iter().enumerate() {
            if let Some(n) = self.null_counts.get_mut(i) {
                *n += c.null_count() as i64;
            }
        }
        if let Some((i, keys)) = self.key.as_mut() {
            keys.push(batch.column(*i).as_string::<i32>().clone());
        }
        self.rows += batch.num_rows() as u64;
        let name = &self.name;
        self.writer
            .write(batch)
            .await
            .map_err(|e| write_error(name, e))?;
        Ok(())
    }

    /// Finishes the file and returns its `add` action and row keys.
    pub async fn finish(self) -> Result<NewFile> {
        let name = &self.name;
        self.writer
            .close()
            .await
            .map_err(|e| write_error(name, e))?;
        let path = Path::from(self.name.as_str());
        let meta = self.store.head(&path).await.map_err(|e| {
            anyhow!(
                "reading back the size of the data file {}: {}",
                self.name,
                super::store_error(&e)
            )
        })?;
        let null_count: serde_json::Map<String, serde_json::Value> = self
            .schema
            .fields()
            .iter()
            .zip(&self.null_counts)
            .map(|(f, n)| (f.name().clone(), serde_json::Value::from(*n)))
            .collect();
        let mut stats = serde_json::json!({"numRecords": self.rows, "nullCount": null_count});
        let (keys, key_name) = match self.key {
            Some((i, keys)) => (keys, Some(self.schema.field(i).name().clone())),
            None => (Keys::default(), None),
        };
        if let Some(name) = key_name {
            let min = keys.iter().flatten().min();
            let max = keys.iter().flatten().max();
            if let (Some(min), Some(max)) = (min, max)
                && max.len() <= MAX_STAT_KEY
                && min.len() <= MAX_STAT_KEY
            {
                stats["minValues"] = serde_json::json!({ name.clone(): min });
                stats["maxValues"] = serde_json::json!({ name: max });
            }
        }
        Ok(NewFile {
            add: Add {
                path: self.name,
                partition_values: HashMap::new(),
                size: meta.size as i64,
                modification_time: chrono::Utc::now().timestamp_millis(),
                data_change: true,
                stats: Some(stats.to_string()),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
                clustering_provider: None,
            },
            keys,
            schema: self.schema,
        })
    }
}

/// An error writing data file `name`. Object-store errors (the upload failed) keep their
/// own text only: it already holds their causes, which a chained error would repeat.
fn write_error(name: &str, e: parquet::errors::ParquetError) -> anyhow::Error {
    match e {
        parquet::errors::ParquetError::External(e) => {
            anyhow!(
                "uploading the data file {name}: {}",
                super::store_error(&*e)
            )
        }
        e => anyhow!("writing the data file {name}: {e}"),
    }
}

/// The `[min, max]` key range a file's statistics give, if they give one.
pub fn key_range(stats: Option<&str>, key: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let min = v.get("minValues")?.get(key)?.as_str()?.to_owned();
    let max = v.get("maxValues")?.get(key)?.as_str()?.to_owned();
    Some((min, max))
}
