//! Reading a table's data files back: finding the rows that hold given keys (to replace
//! older versions of objects) or were received before an instant (the rows a completed
//! snapshot leaves out), and streaming a file's live rows (those its deletion vector
//! does not mark) in the table's current schema, for rewrites and compaction.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow::array::{Array, AsArray, BooleanArray, new_null_array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{Schema as ArrowSchema, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use roaring::RoaringTreemap;

use super::datafile::Keys;

/// Rows read per batch when reading files back.
const READ_BATCH: usize = 8192;

// `ParquetObjectReader` is deprecated in favour of hand-written readers, but it is the
// object_store reader this parquet release ships and it does what is needed here.
#[allow(deprecated)]
fn reader(store: &Arc<dyn ObjectStore>, path: &str, size: i64) -> ParquetObjectReader {
    ParquetObjectReader::new(store.clone(), Path::from(path)).with_file_size(size.max(0) as u64)
}

/// The positions of the rows of data file `path` whose `key` column holds one of `keys`.
/// Reads only that column.
pub async fn rows_with_keys(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    key: &str,
    keys: &HashSet<&str>,
) -> Result<RoaringTreemap> {
    // A file written before the table had its key column holds no keys.
    rows_where(store, path, size, key, false, |col, offset, found| {
        let col = col
            .as_string_opt::<i32>()
            .ok_or_else(|| anyhow!("the key column `{key}` of {path} is not text"))?;
        for (i, k) in col.iter().enumerate() {
            if k.is_some_and(|k| keys.contains(k)) {
                found.insert(offset + i as u64);
            }
        }
        Ok(())
    })
    .await
}

/// The positions of the rows of data file `path` whose `column` (a microsecond timestamp)
/// is earlier than `since` (microseconds), or null: a row without it cannot belong to a
/// snapshot. Reads only that column; a file without the column has only such rows.
pub async fn rows_received_before(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    column: &str,
    since: i64,
) -> Result<RoaringTreemap> {
    rows_where(store, path, size, column, true, |col, offset, found| {
        let col = col
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| anyhow!("the column `{column}` of {path} is not a timestamp"))?;
        for (i, at) in col.iter().enumerate() {
            if at.is_none_or(|at| at < since) {
                found.insert(offset + i as u64);
            }
        }
        Ok(())
    })
    .await
}

/// The rows of data file `path` that `mark` picks from its `column`, read alone and batch
/// by batch (`mark` gets each batch's column and the position of its first row). A file
/// without the column yields every row when `all_if_missing`, else none.
async fn rows_where<F>(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    column: &str,
    all_if_missing: bool,
    mut mark: F,
) -> Result<RoaringTreemap>
where
    F: FnMut(&arrow::array::ArrayRef, u64, &mut RoaringTreemap) -> Result<()>,
{
    let builder = ParquetRecordBatchStreamBuilder::new(reader(store, path, size))
        .await
        .with_context(|| format!("opening the data file {path}"))?;
    let Some(leaf) = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [column.to_owned()])
    else {
        if !all_if_missing {
            return Ok(RoaringTreemap::new());
        }
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        return Ok((0..rows).collect());
    };
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
    let mut batches = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH)
        .build()
        .with_context(|| format!("reading the data file {path}"))?;
    let mut found = RoaringTreemap::new();
    let mut offset = 0u64;
    while let Some(batch) = batches
        .try_next()
        .await
        .with_context(|| format!("reading the data file {path}"))?
    {
        mark(batch.column(0), offset, &mut found)?;
        offset += batch.num_rows() as u64;
    }
    Ok(found)
}

/// The schema of data file `path` and the value of its `key` column in every row.
pub async fn read_keys(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    key: &str,
) -> Result<(Arc<ArrowSchema>, Keys)> {
    let builder = ParquetRecordBatchStreamBuilder::new(reader(store, path, size))
        .await
        .with_context(|| format!("opening the data file {path}"))?;
    let schema = builder.schema().clone();
    let Some(leaf) = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [key.to_owned()])
    else {
        return Ok((schema, Keys::default()));
    };
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
    let mut batches = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH)
        .build()
        .with_context(|| format!("reading the data file {path}"))?;
    let mut keys = Keys::default();
    while let Some(batch) = batches
        .try_next()
        .await
        .with_context(|| format!("reading the data file {path}"))?
    {
        let col = batch.column(0);
        let col = col
            .as_string_opt::<i32>()
            .ok_or_else(|| anyhow!("the key column `{key}` of {path} is not text"))?;
        keys.push(col.clone());
    }
    Ok((schema, keys))
}

/// The live rows of data file `path` (those not in `deleted`), in `schema`: columns the
/// file lacks are null, columns of another type are cast (an integer column widened to
/// float reads back as float).
pub async fn live_rows(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    deleted: Option<RoaringTreemap>,
    schema: Arc<ArrowSchema>,
) -> Result<impl Stream<Item = Result<RecordBatch>> + use<>> {
    let batches = ParquetRecordBatchStreamBuilder::new(reader(store, path, size))
        .await
        .with_context(|| format!("opening the data file {path}"))?
        .with_batch_size(READ_BATCH)
        .build()
        .with_context(|| format!("reading the data file {path}"))?;
    let path = path.to_owned();
    let mut offset = 0u64;
    Ok(batches.map(move |batch| {
        let batch = batch.with_context(|| format!("reading the data file {path}"))?;
        let start = offset;
        offset += batch.num_rows() as u64;
        let batch = match &deleted {
            Some(d) if d.range_cardinality(start..offset) > 0 => {
                let keep: BooleanArray = (start..offset).map(|i| Some(!d.contains(i))).collect();
                filter_record_batch(&batch, &keep)?
            }
            _ => batch,
        };
        conform(&batch, &schema)
    }))
}

/// The rows of data file `path` at the positions in `keep` (and no other), in `schema`.
pub async fn rows_at(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    size: i64,
    keep: &RoaringTreemap,
    schema: Arc<ArrowSchema>,
) -> Result<Vec<RecordBatch>> {
    let mut batches = ParquetRecordBatchStreamBuilder::new(reader(store, path, size))
        .await
        .with_context(|| format!("opening the data file {path}"))?
        .with_batch_size(READ_BATCH)
        .build()
        .with_context(|| format!("reading the data file {path}"))?;
    let mut out = Vec::new();
    let mut offset = 0u64;
    while let Some(batch) = batches
        .try_next()
        .await
        .with_context(|| format!("reading the data file {path}"))?
    {
        let start = offset;
        offset += batch.num_rows() as u64;
        if keep.range_cardinality(start..offset) == 0 {
            continue;
        }
        let picked: BooleanArray = (start..offset).map(|i| Some(keep.contains(i))).collect();
        out.push(conform(&filter_record_batch(&batch, &picked)?, &schema)?);
        if keep.max().is_some_and(|m| m < offset) {
            break;
        }
    }
    Ok(out)
}

/// `batch` in `schema`: missing columns null, differing types cast.
pub fn conform(batch: &RecordBatch, schema: &Arc<ArrowSchema>) -> Result<RecordBatch> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast(c.as_ref(), f.data_type())
                .with_context(|| format!("converting column `{}` to {}", f.name(), f.data_type())),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use parquet::arrow::ArrowWriter;

    async fn put_file(store: &Arc<dyn ObjectStore>, batch: &RecordBatch) -> i64 {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        let size = buf.len() as i64;
        store
            .put(&Path::from("f.parquet"), PutPayload::from(buf))
            .await
            .unwrap();
        size
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    None,
                    Some("c"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn finds_the_rows_of_given_keys() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let size = put_file(&store, &batch()).await;
        let keys: HashSet<&str> = ["c", "a", "zz"].into_iter().collect();
        let rows = rows_with_keys(&store, "f.parquet", size, "id", &keys)
            .await
            .unwrap();
        assert_eq!(rows.iter().collect::<Vec<_>>(), vec![0, 3]);
        let none = rows_with_keys(&store, "f.parquet", size, "missing", &keys)
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn live_rows_skip_deleted_and_widen() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let size = put_file(&store, &batch()).await;
        let target = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Float64, true),
            Field::new("new", DataType::Boolean, true),
        ]));
        let deleted: RoaringTreemap = [1u64].into_iter().collect();
        let out: Vec<RecordBatch> =
            live_rows(&store, "f.parquet", size, Some(deleted), target.clone())
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
        let b = &out[0];
        assert_eq!(b.schema(), target);
        assert_eq!(b.num_rows(), 3);
        let n = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(n.values().to_vec(), vec![1.0, 3.0, 4.0]);
        assert_eq!(b.column(2).null_count(), 3);
    }
}
