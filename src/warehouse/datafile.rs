//! One Parquet data file being written into a table's directory through object_store,
//! streamed (the multipart upload goes on while rows arrive), with the Delta statistics
//! readers use to skip it: row count, null counts, and min/max of the primary key and of
//! `received_at` (which tells a completed snapshot which files it leaves out, see
//! [`super::table`]).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{
    DataType as ArrowType, Schema as ArrowSchema, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use tributary_sdk::schema::RECEIVED_AT;

/// Key statistics are kept only for keys up to this length, so they are exact (Delta
/// readers take min/max strings as bounds; a truncated max would not be one).
const MAX_STAT_KEY: usize = 64;

/// Values of a column the first batch must show before its cardinality decides its
/// encoding (fewer: Parquet's default, dictionary encoding, stays).
const CARDINALITY_SAMPLE_MIN: usize = 256;

/// At most this many values of a column are looked at to judge its cardinality. A smaller
/// sample sees fewer repeats and calls more columns distinct: with 1,024, a Stripe charges
/// table grew from 8.3 to 9.1 MB and the peak RSS reached 152 MB (BENCHMARKS.md,
/// thirteenth sitting). The judgement runs once per data file, on the task that opens it.
const CARDINALITY_SAMPLE_MAX: usize = 4_096;

/// `props` for a file whose first batch is `sample`, with dictionary encoding turned off
/// for each column whose sampled values are nine in ten distinct (ids, URLs, timestamps
/// of creation). Parquet dictionary-encodes every column by default and falls back to
/// plain encoding only once a row group's dictionary passes its page size limit (1 MiB):
/// for a column of unique values that means hashing and interning every value to build a
/// dictionary as large as the data, then writing both the dictionary and an index per
/// row. Plain encoding of those columns, compressed, is smaller and cheaper to write.
pub fn tuned_for(props: WriterProperties, sample: &RecordBatch) -> WriterProperties {
    let mut builder: Option<parquet::file::properties::WriterPropertiesBuilder> = None;
    for (field, column) in sample.schema().fields().iter().zip(sample.columns()) {
        if !mostly_distinct(column.as_ref()) {
            continue;
        }
        let b = builder
            .take()
            .unwrap_or_else(|| props.clone().into_builder());
        builder = Some(b.set_column_dictionary_enabled(
            parquet::schema::types::ColumnPath::from(field.name().as_str()),
            false,
        ));
    }
    builder.map_or(props, |b| b.build())
}

/// Whether at least nine in ten of the first non-null values of `column` are distinct,
/// with at least [`CARDINALITY_SAMPLE_MIN`] of them; only for the flat types the
/// converter writes (text, integers, floats, timestamps).
fn mostly_distinct(column: &dyn Array) -> bool {
    use std::collections::HashSet;
    fn judge<T: std::hash::Hash + Eq>(values: impl Iterator<Item = Option<T>>) -> bool {
        let mut seen = HashSet::new();
        let mut n = 0usize;
        for v in values.flatten().take(CARDINALITY_SAMPLE_MAX) {
            n += 1;
            seen.insert(v);
        }
        n >= CARDINALITY_SAMPLE_MIN && seen.len() * 10 >= n * 9
    }
    match column.data_type() {
        ArrowType::Utf8 => judge(column.as_string::<i32>().iter()),
        ArrowType::Int64 => judge(column.as_primitive::<arrow::datatypes::Int64Type>().iter()),
        ArrowType::Float64 => judge(
            column
                .as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .map(|v| v.map(f64::to_bits)),
        ),
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => {
            judge(column.as_primitive::<TimestampMicrosecondType>().iter())
        }
        _ => false,
    }
}

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
    /// The `received_at` column's index and the least and greatest value written
    /// (microseconds), once a row had one.
    received: Option<(usize, Option<(i64, i64)>)>,
}

/// The most memory an open row group holds before it is closed, whatever
/// `sync.row_group_size` says (BENCHMARKS.md: 16 MiB took a Stripe charges sync from 153
/// to 126 MB peak RSS, at the same speed, for a table 9% larger).
const ROW_GROUP_MEMORY: usize = 16 << 20;

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
        let received = schema
            .index_of(RECEIVED_AT)
            .ok()
            .filter(|&i| {
                matches!(
                    schema.field(i).data_type(),
                    ArrowType::Timestamp(TimeUnit::Microsecond, _)
                )
            })
            .map(|i| (i, None));
        Ok(DataFile {
            name,
            store,
            writer,
            null_counts: vec![0; schema.fields().len()],
            schema,
            rows: 0,
            key,
            received,
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
        if let Some((i, range)) = self.received.as_mut() {
            let column = batch.column(*i).as_primitive::<TimestampMicrosecondType>();
            if let (Some(lo), Some(hi)) = (arrow::compute::min(column), arrow::compute::max(column))
            {
                *range = Some(match *range {
                    Some((l, h)) => (l.min(lo), h.max(hi)),
                    None => (lo, hi),
                });
            }
        }
        self.rows += batch.num_rows() as u64;
        let name = &self.name;
        self.writer
            .write(batch)
            .await
            .map_err(|e| write_error(name, e))?;
        // Close the row group early when wide rows fill the writer's buffers before
        // `row_group_size` rows: the open row group's column buffers and dictionaries are
        // the largest thing a sync holds (Stripe charges: ~20 MiB at 16,000 rows).
        if self.writer.memory_size() >= ROW_GROUP_MEMORY {
            self.writer
                .flush()
                .await
                .map_err(|e| write_error(name, e))?;
        }
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
        let mut min_values = serde_json::Map::new();
        let mut max_values = serde_json::Map::new();
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
                min_values.insert(name.clone(), min.into());
                max_values.insert(name, max.into());
            }
        }
        if let Some((i, Some((min, max)))) = self.received {
            let name = self.schema.field(i).name();
            if let (Some(min), Some(max)) = (stat_timestamp(min), stat_timestamp(max)) {
                min_values.insert(name.clone(), min.into());
                max_values.insert(name.clone(), max.into());
            }
        }
        let mut stats = serde_json::json!({"numRecords": self.rows, "nullCount": null_count});
        if !min_values.is_empty() {
            stats["minValues"] = min_values.into();
            stats["maxValues"] = max_values.into();
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

/// A timestamp statistic as Delta writes it: truncated to the millisecond (the protocol's
/// precision for JSON statistics; readers take the maximum as `max + 1 ms` exclusive).
fn stat_timestamp(micros: i64) -> Option<String> {
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)?;
    Some(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// Bounds of a file's `received_at` from its statistics, in microseconds: every row's value
/// is in `[min, max]` (inclusive). `None` when the statistics do not give them.
pub fn received_range(stats: Option<&str>) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let at = |values: &str| {
        let text = v.get(values)?.get(RECEIVED_AT)?.as_str()?;
        let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        // Truncated to the millisecond when written; anything finer is kept as given.
        Some(t.timestamp_micros())
    };
    let min = at("minValues")?;
    let max = at("maxValues")?;
    // The truncated maximum covers the whole millisecond it starts.
    let max = max - max.rem_euclid(1000) + 999;
    Some((min, max))
}

/// The `[min, max]` key range a file's statistics give, if they give one.
pub fn key_range(stats: Option<&str>, key: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let min = v.get("minValues")?.get(key)?.as_str()?.to_owned();
    let max = v.get("maxValues")?.get(key)?.as_str()?.to_owned();
    Some((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use bytes::Bytes;
    use object_store::memory::InMemory;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::ColumnPath;

    /// 1,000 rows: a unique `id`, a `status` of three values, a unique `created`, an
    /// `amount` of ten values, and a `note` too sparse to judge (100 values).
    fn batch() -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", ArrowType::Utf8, true),
            Field::new("status", ArrowType::Utf8, true),
            Field::new("created", ArrowType::Int64, true),
            Field::new("amount", ArrowType::Int64, true),
            Field::new("note", ArrowType::Utf8, true),
        ]));
        let n = 1_000;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("ch_{i:024}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["succeeded", "pending", "failed"][i % 3]),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|i| 1_700_000_000 + i),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|i| (i % 10) * 100),
                )),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 10 == 0).then(|| format!("note {i}"))),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn columns_of_distinct_values_are_written_without_a_dictionary() {
        let props = tuned_for(super::super::writer_properties(65_536).unwrap(), &batch());
        let dictionary = |c: &str| props.dictionary_enabled(&ColumnPath::from(c));
        assert!(!dictionary("id"));
        assert!(!dictionary("created"));
        assert!(dictionary("status"));
        assert!(dictionary("amount"));
        // 100 values, all distinct, are too few to judge: the default stays.
        assert!(dictionary("note"));
        // The other settings are kept.
        assert_eq!(props.max_row_group_row_count(), Some(65_536));
    }

    #[tokio::test]
    async fn a_tuned_file_reads_back_the_same_rows() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let b = batch();
        let props = tuned_for(super::super::writer_properties(65_536).unwrap(), &b);
        let mut file = DataFile::create_named(
            store.clone(),
            "f.parquet".into(),
            b.schema(),
            props,
            Some("id"),
        )
        .unwrap();
        file.write(&b).await.unwrap();
        file.finish().await.unwrap();
        let bytes: Bytes = store
            .get(&Path::from("f.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();

        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let group = reader.metadata().row_group(0);
        let encodings = |i: usize| group.column(i).encodings().collect::<Vec<_>>();
        let dictionary = |i: usize| {
            group.column(i).dictionary_page_offset().is_some()
                || encodings(i).contains(&Encoding::RLE_DICTIONARY)
        };
        assert!(!dictionary(0), "id: {:?}", encodings(0));
        assert!(dictionary(1), "status: {:?}", encodings(1));
        assert!(!dictionary(2), "created: {:?}", encodings(2));
        assert!(dictionary(3), "amount: {:?}", encodings(3));

        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 4_096)
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
        assert_eq!(read, vec![b]);
    }
}
