//! What a model's rows looked like when last recorded: one row per id in a Delta table of
//! our own bucket, `_tributary/retl/<source>/<model>`, never in the customer's database.
//!
//! Columns: `id` (the row's id as text), `checksum` (of the whole row, hex), `version` (how
//! many changes of the row were recorded: it keys the `messageId`), `ids` (the userId,
//! anonymousId, groupId and event it was last sent with, as JSON: what its deletion is sent
//! with), `is_deleted` (the row left the model) and `uuid_ts`. The table keeps one row per
//! id (newer versions replace older ones, as object streams' tables do).
//!
//! Memory: the comparison holds 32 bytes per id (a 128-bit hash of the id, a 64-bit
//! checksum, the change number and two flags), ~64 MB for a million rows with the hash
//! map's spare room; ids and their `ids`
//! are read again only for the rows found deleted.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema as ArrowSchema, TimeUnit};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::mapping::Ids;
use crate::warehouse::dv;
use crate::warehouse::merge::live_rows;
use crate::warehouse::table::LiveFile;

/// The state table's schema.
pub fn schema() -> Arc<ArrowSchema> {
    Arc::new(ArrowSchema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("checksum", DataType::Utf8, true),
        Field::new("version", DataType::Int64, true),
        Field::new("ids", DataType::Utf8, true),
        Field::new("is_deleted", DataType::Boolean, true),
        Field::new(
            "uuid_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

// Fixed keys: the hashes are stored, so they must not change between runs or releases.
const KEYS: (u64, u64) = (0x7472_6962_7574_6172, 0x792d_7265_746c_0001);

/// The 128-bit hash an id is compared by.
pub fn id_hash(id: &str) -> u128 {
    let mut h = SipHasher13::new_with_keys(KEYS.0, KEYS.1);
    h.write(id.as_bytes());
    h.finish128().as_u128()
}

/// The checksum of a row's JSON text.
pub fn checksum(json: &str) -> u64 {
    let mut h = SipHasher13::new_with_keys(KEYS.1, KEYS.0);
    h.write(json.as_bytes());
    h.finish()
}

/// What was recorded of one id: 16 bytes, so the comparison of a million ids holds ~32 MB
/// of entries (with their 128-bit keys) plus the hash map's spare room.
#[derive(Debug, Clone, Copy)]
pub struct Prior {
    /// The row's checksum when recorded.
    pub checksum: u64,
    /// Changes recorded (saturating at `u32::MAX`).
    pub version: u32,
    /// It left the model.
    pub deleted: bool,
    /// Seen in this run (a second sighting is a duplicate id).
    pub seen: bool,
}

fn text<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| anyhow!("the reverse-ETL state table has no text column `{name}`"))
}

/// Calls `each` with every live row batch of the state table.
async fn scan(table: &DeltaTable, mut each: impl FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
    let snapshot = table.snapshot()?;
    let table_schema = snapshot.snapshot().arrow_schema();
    let store = table.object_store();
    let files: Vec<LiveFile> = snapshot
        .log_data()
        .iter()
        .map(|f| LiveFile::of(&f))
        .collect();
    for file in files {
        let add = file.add;
        let deleted = match &add.deletion_vector {
            Some(d) => Some(dv::read(store.as_ref(), d).await?),
            None => None,
        };
        let mut rows =
            Box::pin(live_rows(&store, &add.path, add.size, deleted, table_schema.clone()).await?);
        while let Some(batch) = rows.try_next().await? {
            each(&batch)?;
        }
    }
    Ok(())
}

/// Every recorded id (by hash), deleted ones included (their version goes on if they come
/// back).
pub async fn load(table: &DeltaTable) -> Result<HashMap<u128, Prior>> {
    let mut out = HashMap::new();
    scan(table, |batch| {
        let ids = text(batch, "id")?;
        let sums = text(batch, "checksum")?;
        let versions = batch
            .column_by_name("version")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| anyhow!("the reverse-ETL state table has no `version` column"))?;
        let deleted = batch
            .column_by_name("is_deleted")
            .and_then(|c| c.as_boolean_opt())
            .ok_or_else(|| anyhow!("the reverse-ETL state table has no `is_deleted` column"))?;
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                continue;
            }
            let checksum = u64::from_str_radix(sums.value(i), 16).unwrap_or(0);
            out.insert(
                id_hash(ids.value(i)),
                Prior {
                    checksum,
                    version: u32::try_from(versions.value(i).max(0)).unwrap_or(u32::MAX),
                    deleted: deleted.value(i),
                    seen: false,
                },
            );
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// A recorded row that left the model.
#[derive(Debug, Clone)]
pub struct Gone {
    /// Its id.
    pub id: String,
    /// The ids it was last sent with.
    pub ids: Ids,
    /// Its last checksum.
    pub checksum: u64,
    /// Changes recorded before this one.
    pub version: i64,
}

/// The ids and last `ids` of the recorded rows whose id hashes are in `hashes`.
pub async fn gone(table: &DeltaTable, hashes: &HashSet<u128>) -> Result<Vec<Gone>> {
    let mut out = Vec::with_capacity(hashes.len());
    scan(table, |batch| {
        let ids = text(batch, "id")?;
        let sent = text(batch, "ids")?;
        let sums = text(batch, "checksum")?;
        let versions = batch
            .column_by_name("version")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| anyhow!("the reverse-ETL state table has no `version` column"))?;
        for i in 0..batch.num_rows() {
            if ids.is_null(i) || !hashes.contains(&id_hash(ids.value(i))) {
                continue;
            }
            out.push(Gone {
                id: ids.value(i).to_owned(),
                ids: if sent.is_null(i) {
                    Ids::default()
                } else {
                    serde_json::from_str(sent.value(i)).unwrap_or_default()
                },
                checksum: u64::from_str_radix(sums.value(i), 16).unwrap_or(0),
                version: versions.value(i),
            });
        }
        Ok(())
    })
    .await?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// State rows being gathered for one commit.
#[derive(Default)]
pub struct Rows {
    id: Vec<String>,
    checksum: Vec<String>,
    version: Vec<i64>,
    ids: Vec<String>,
    deleted: Vec<bool>,
}

impl Rows {
    /// Adds the state of one changed row.
    pub fn push(&mut self, id: &str, checksum: u64, version: i64, ids: &Ids, deleted: bool) {
        self.id.push(id.to_owned());
        self.checksum.push(format!("{checksum:016x}"));
        self.version.push(version);
        self.ids
            .push(serde_json::to_string(ids).unwrap_or_else(|_| "{}".into()));
        self.deleted.push(deleted);
    }

    /// Rows gathered.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// The rows as a batch, and empties itself.
    pub fn take(&mut self) -> Result<RecordBatch> {
        let now = chrono::Utc::now().timestamp_micros();
        let n = self.id.len();
        let rows = std::mem::take(self);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.id)),
            Arc::new(StringArray::from(rows.checksum)),
            Arc::new(Int64Array::from(rows.version)),
            Arc::new(StringArray::from(rows.ids)),
            Arc::new(BooleanArray::from(rows.deleted)),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}
