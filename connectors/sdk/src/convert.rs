//! Records to Arrow: vendor JSON straight into typed column builders.
//!
//! The converter never builds a `serde_json::Value` tree for a record: measured on 100k
//! pretty-printed Stripe charges, allocating and freeing that tree was ~80% of the time and
//! capped conversion near 40k records/s, against ~95k/s for this visitor. A serde visitor
//! walks the response body once: a field whose flattened path is a known column is
//! captured as a borrowed raw slice and parsed by the column's type; any other object is
//! flattened recursively; a field nobody declared becomes a new nullable column typed by
//! its first value. Columns are filled lazily: a column only gets a builder when it first
//! sees a value, so the many always-null columns of a vendor object cost nothing until
//! [`BatchBuilder::finish`].
//!
//! An integer column that meets a fraction (`12.5`) is widened to float on the spot: the
//! values so far become floats and the batch carries the wider type (the table follows in
//! the commit, see the runtime's warehouse). Any other value that does not fit its column's
//! type is not lost: the column stays null in that row and the value is kept, as JSON, in
//! the row's `_rescued_data` object (`{"amount": "\"12.5 EUR\""}` →
//! `{"amount":"12.5 EUR"}`), and counted.
//!
//! Hostile records are bounded ([`Limits`]). A run of a stream adds at most
//! `max_new_columns` columns, and no column name is longer than [`MAX_COLUMN_NAME_BYTES`]:
//! a field past either cap is not dropped but kept in `_rescued_data` under its flattened
//! name and counted (`ConvertReport::capped_fields`). The text bytes of a batch are bounded
//! too: when the rows appended pass `batch_bytes`, the rows so far are sealed into a batch
//! of their own at the next record boundary (the builder reports [`BatchBuilder::is_full`]
//! so the caller flushes), so a page of huge strings splits into several batches instead
//! of overflowing Arrow's 32-bit offsets. A single value that cannot fit in any batch
//! (over 2 GiB with the rest of its row) is left null and counted, never a panic. Nesting
//! is bounded by serde_json's recursion limit (128) while parsing; a nested object whose
//! flattened name is already past the name cap is rescued whole rather than walked.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, new_null_array,
};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use rustc_hash::FxHashMap;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::page::{Page, Records};
use crate::schema::{
    ColumnType, IS_DELETED, RECEIVED_AT, RESCUED, StreamSchema, UUID_TS, is_column_name,
    to_column_name,
};

/// The longest column name the converter creates, in bytes. Longer flattened names are
/// rescued (see the module doc). Delta and Parquet readers handle names this long; much
/// longer ones bloat every commit's schema and every log line that names the column.
pub const MAX_COLUMN_NAME_BYTES: usize = 255;

/// The default of [`Limits::max_new_columns`].
pub const DEFAULT_MAX_NEW_COLUMNS: usize = 1_000;

/// The default of [`Limits::batch_bytes`].
pub const DEFAULT_BATCH_BYTES: usize = 64 << 20;

/// How many characters of a vendor-made name a log line or summary shows.
pub const LOGGED_NAME_CHARS: usize = 64;

/// Bounds on what one run of a stream can do to its table and to memory, whatever the
/// vendor sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Columns the builder may add to the table over its lifetime (one stream's run).
    /// Fields past it are kept in `_rescued_data` and counted.
    pub max_new_columns: usize,
    /// Text bytes of one batch: past it, the rows so far become a batch of their own at
    /// the next record boundary and [`BatchBuilder::is_full`] says so.
    pub batch_bytes: usize,
    /// Text bytes one column of one batch can hold; at most (and by default) `i32::MAX`,
    /// the limit of Arrow's `Utf8` offsets. A value that does not fit is left null and
    /// counted. Lower only to test that path without allocating gigabytes.
    pub column_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_new_columns: DEFAULT_MAX_NEW_COLUMNS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            column_bytes: i32::MAX as usize,
        }
    }
}

/// Builds Arrow record batches of one stream's table from pages of vendor JSON.
pub struct BatchBuilder {
    inner: Inner,
}

struct Inner {
    stream: String,
    cols: Vec<Col>,
    index: FxHashMap<Box<str>, usize>,
    /// (top-level field, the minified JSON text that means deleted)
    deletion: Option<(String, String)>,
    rows: usize,
    path: String,
    row_deleted: bool,
    /// This row's rescued values: (the column's index, or the name of a field that could
    /// not become a column; the value as JSON text).
    row_rescued: Vec<(RescueKey, String)>,
    rescued_total: u64,
    discovered: Vec<String>,
    widened: Vec<String>,
    received_at: i64,
    sys: SysCols,
    limits: Limits,
    /// Text bytes appended since the last seal.
    bytes: usize,
    /// Columns added over the builder's lifetime (checked against `max_new_columns`).
    added_columns: usize,
    /// The longest column name known, in bytes: a path longer than this and than
    /// [`MAX_COLUMN_NAME_BYTES`] can neither be a column nor lead to one.
    longest_name: usize,
    capped_total: u64,
    capped_example: Option<String>,
    oversized_total: u64,
    /// Batches sealed because `batch_bytes` was reached, not yet handed out.
    sealed: Vec<RecordBatch>,
    /// Rows and text bytes in `sealed`.
    sealed_rows: usize,
    sealed_bytes: usize,
    /// The fields of the last records in the order met, with their columns: the records
    /// of a page share their fields' order, so the next field is nearly always the one met
    /// at the same position last time, and comparing its key (or path) is cheaper than
    /// hashing its path. Cleared whenever a column is added (a cached `None` would go
    /// stale).
    seen: Vec<Seen>,
    /// The position of the next field in `seen`.
    seen_pos: usize,
    /// Whether every field of this record so far was the one cached at its position, by
    /// key and parent path length (see [`Inner::enter`]).
    seen_all: bool,
    /// The number of the record being appended (counts every record of the builder).
    record: u64,
}

/// A field met at one position of a record (see [`Inner::seen`]).
struct Seen {
    /// The vendor's key, as it came.
    key: String,
    /// The length of the parent's path when it was met.
    mark: usize,
    /// Its flattened path.
    path: String,
    col: Option<usize>,
    /// The number of the record it was last met in.
    record: u64,
}

/// The most field positions [`Inner::seen`] remembers per record.
const SEEN_FIELDS: usize = 4_096;

enum RescueKey {
    Col(usize),
    Name(String),
}

#[derive(Clone, Copy)]
struct SysCols {
    received_at: usize,
    uuid_ts: usize,
    is_deleted: usize,
    rescued: usize,
}

struct Col {
    name: String,
    ty: ColumnType,
    data: Option<ColData>,
    /// Rows appended to `data` (values or nulls); lags `rows` while the column is absent.
    len: usize,
    /// Text bytes appended to `data` since its last finish (Arrow's `Utf8` offsets are
    /// 32-bit: a column of one batch holds at most `i32::MAX` bytes).
    bytes: usize,
}

enum ColData {
    Str(StringBuilder),
    Int(Int64Builder),
    Num(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl ColData {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String | ColumnType::Json => ColData::Str(StringBuilder::new()),
            ColumnType::Integer => ColData::Int(Int64Builder::new()),
            ColumnType::Number => ColData::Num(Float64Builder::new()),
            ColumnType::Boolean => ColData::Bool(BooleanBuilder::new()),
            ColumnType::Timestamp => ColData::Ts(TimestampMicrosecondBuilder::new()),
            ColumnType::Date => ColData::Date(Date32Builder::new()),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            ColData::Str(b) => b.append_nulls(n),
            ColData::Int(b) => b.append_nulls(n),
            ColData::Num(b) => b.append_nulls(n),
            ColData::Bool(b) => b.append_nulls(n),
            ColData::Ts(b) => b.append_nulls(n),
            ColData::Date(b) => b.append_nulls(n),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColData::Str(b) => Arc::new(b.finish()),
            ColData::Int(b) => Arc::new(b.finish()),
            ColData::Num(b) => Arc::new(b.finish()),
            ColData::Bool(b) => Arc::new(b.finish()),
            ColData::Ts(b) => Arc::new(b.finish().with_timezone("UTC")),
            ColData::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// A value parsed for a column, ready to append.
enum Cell<'a> {
    Str(&'a str),
    Owned(String),
    Int(i64),
    Num(f64),
    Bool(bool),
    Ts(i64),
    /// Days since 1970-01-01.
    Date(i32),
}

impl Cell<'_> {
    /// The text bytes this cell adds to a `Utf8` column.
    fn text_len(&self) -> usize {
        match self {
            Cell::Str(s) => s.len(),
            Cell::Owned(s) => s.len(),
            _ => 0,
        }
    }
}

impl Col {
    fn new(name: String, ty: ColumnType) -> Self {
        Col {
            name,
            ty,
            data: None,
            len: 0,
            bytes: 0,
        }
    }

    /// Appends `cell` as row `row`, padding the rows this column missed with nulls.
    fn put(&mut self, row: usize, cell: Cell<'_>) {
        let ty = self.ty;
        let data = self.data.get_or_insert_with(|| ColData::new(ty));
        if self.len < row {
            data.append_nulls(row - self.len);
        }
        match (data, cell) {
            (ColData::Str(b), Cell::Str(s)) => b.append_value(s),
            (ColData::Str(b), Cell::Owned(s)) => b.append_value(s),
            (ColData::Int(b), Cell::Int(v)) => b.append_value(v),
            (ColData::Num(b), Cell::Num(v)) => b.append_value(v),
            (ColData::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColData::Ts(b), Cell::Ts(v)) => b.append_value(v),
            (ColData::Date(b), Cell::Date(v)) => b.append_value(v),
            // `parse_cell` only produces cells of the column's own type.
            (data, _) => data.append_nulls(1),
        }
        self.len = row + 1;
    }

    fn finish(&mut self, rows: usize) -> ArrayRef {
        match &mut self.data {
            Some(data) => {
                if self.len < rows {
                    data.append_nulls(rows - self.len);
                }
                self.len = 0;
                self.bytes = 0;
                data.finish()
            }
            None => new_null_array(&self.ty.arrow_type(), rows),
        }
    }
}

/// What a batch's conversion reported, for logs and the run summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertReport {
    /// Columns met for the first time (new vendor fields), in order.
    pub new_columns: Vec<String>,
    /// Values kept in `_rescued_data` because they did not fit their column.
    pub rescued_values: u64,
    /// Integer columns widened to float because a value had a fraction.
    pub widened_columns: Vec<String>,
    /// Fields kept in `_rescued_data` instead of becoming columns, because the run had
    /// added [`Limits::max_new_columns`] columns already or because their name was longer
    /// than [`MAX_COLUMN_NAME_BYTES`].
    pub capped_fields: u64,
    /// The first such field's name, cut to [`LOGGED_NAME_CHARS`] characters.
    pub capped_example: Option<String>,
    /// Values left null because they could not fit in a batch (over 2 GiB of text with the
    /// rest of their row in one column).
    pub oversized_values: u64,
}

impl BatchBuilder {
    /// A builder for `schema`'s table. `existing` is the schema of the table as it is in
    /// the warehouse (it may hold columns discovered by earlier runs, in its own order);
    /// the builder keeps that order and appends what is new. Uses the default [`Limits`].
    pub fn new(schema: &StreamSchema, existing: Option<&Schema>) -> Self {
        Self::with_limits(schema, existing, Limits::default())
    }

    /// [`new`](Self::new) with explicit [`Limits`] (`column_bytes` is capped at
    /// `i32::MAX`).
    pub fn with_limits(schema: &StreamSchema, existing: Option<&Schema>, limits: Limits) -> Self {
        let mut cols: Vec<Col> = Vec::new();
        if let Some(existing) = existing {
            for f in existing.fields() {
                // The table is the truth: if its type differs from the declared one (an
                // older schema file, a hand-made table), keep writing the table's type and
                // rescue what does not fit, rather than land a file the table cannot read.
                let stored = ColumnType::from_arrow(f.data_type()).unwrap_or(ColumnType::String);
                let ty = match schema.column(f.name()) {
                    Some(c) if c.ty.arrow_type() == stored.arrow_type() => c.ty,
                    _ => stored,
                };
                cols.push(Col::new(f.name().clone(), ty));
            }
        }
        for c in &schema.columns {
            if !cols.iter().any(|x| x.name == c.name) {
                cols.push(Col::new(c.name.clone(), c.ty));
            }
        }
        let mut sys_col =
            |name: &str, ty: ColumnType| match cols.iter().position(|x| x.name == name) {
                Some(i) => i,
                None => {
                    cols.push(Col::new(name.to_owned(), ty));
                    cols.len() - 1
                }
            };
        let sys = SysCols {
            received_at: sys_col(RECEIVED_AT, ColumnType::Timestamp),
            uuid_ts: sys_col(UUID_TS, ColumnType::Timestamp),
            is_deleted: sys_col(IS_DELETED, ColumnType::Boolean),
            rescued: sys_col(RESCUED, ColumnType::Json),
        };
        // Vendor fields are looked up here; the system columns are written by the builder
        // only, so a vendor field named like one is not found and gets a prefixed column of
        // its own (see `discover`) instead of a second value in ours.
        let index: FxHashMap<Box<str>, usize> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| !crate::schema::SYSTEM_COLUMNS.contains(&c.name.as_str()))
            .map(|(i, c)| (c.name.clone().into_boxed_str(), i))
            .collect();
        let longest_name = cols.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let deletion = schema.deletion.as_ref().map(|rule| {
            (
                rule.field.clone(),
                serde_json::to_string(&rule.equals).unwrap_or_default(),
            )
        });
        BatchBuilder {
            inner: Inner {
                stream: schema.name.clone(),
                cols,
                index,
                deletion,
                rows: 0,
                path: String::with_capacity(128),
                row_deleted: false,
                row_rescued: Vec::new(),
                rescued_total: 0,
                discovered: Vec::new(),
                widened: Vec::new(),
                received_at: 0,
                sys,
                limits: Limits {
                    column_bytes: limits.column_bytes.min(i32::MAX as usize),
                    ..limits
                },
                bytes: 0,
                added_columns: 0,
                longest_name,
                capped_total: 0,
                capped_example: None,
                oversized_total: 0,
                sealed: Vec::new(),
                seen: Vec::new(),
                seen_pos: 0,
                seen_all: true,
                record: 0,
                sealed_rows: 0,
                sealed_bytes: 0,
            },
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn rows(&self) -> usize {
        self.inner.sealed_rows + self.inner.rows
    }

    /// Text bytes appended since the last [`finish`](Self::finish).
    pub fn bytes(&self) -> usize {
        self.inner.sealed_bytes + self.inner.bytes
    }

    /// Whether the rows appended reached [`Limits::batch_bytes`], so the caller should
    /// [`finish`](Self::finish) now (whatever its row count) to keep memory bounded.
    pub fn is_full(&self) -> bool {
        !self.inner.sealed.is_empty() || self.inner.bytes >= self.inner.limits.batch_bytes
    }

    /// The table schema as it stands: every known column, nullable, in table order.
    pub fn schema(&self) -> Arc<Schema> {
        table_schema(&self.inner.cols)
    }

    /// Appends every record of `page`. Returns how many records it held.
    ///
    /// On error the builder must be dropped: the rows of a failed page are not rolled back
    /// (the runtime never commits a batch from a builder that failed).
    pub fn append_page(&mut self, page: &Page) -> Result<usize> {
        self.inner.received_at = page.received_at.timestamp_micros();
        let before = self.inner.rows;
        match &page.records {
            Records::Json { body, path } => {
                let seed = PathSeed {
                    inner: &mut self.inner,
                    path,
                };
                // A body that is valid UTF-8 as a whole (every vendor's) is checked once
                // here, not string by string while parsing.
                let parsed = match std::str::from_utf8(body) {
                    Ok(text) => {
                        let mut de = serde_json::Deserializer::from_str(text);
                        seed.deserialize(&mut de).and_then(|()| de.end())
                    }
                    Err(_) => {
                        let mut de = serde_json::Deserializer::from_slice(body);
                        seed.deserialize(&mut de).and_then(|()| de.end())
                    }
                };
                parsed.map_err(|e| self.decode_error(e))?;
            }
            Records::Values(records) => {
                let mut buf = Vec::new();
                for record in records {
                    buf.clear();
                    serde_json::to_writer(&mut buf, &record.value)
                        .map_err(|e| self.decode_error(e))?;
                    let mut de = serde_json::Deserializer::from_slice(&buf);
                    RecordSeed {
                        inner: &mut self.inner,
                        force_deleted: record.is_deleted,
                    }
                    .deserialize(&mut de)
                    .map_err(|e| self.decode_error(e))?;
                }
            }
        }
        Ok(self.inner.rows - before)
    }

    fn decode_error(&self, e: impl fmt::Display) -> Error {
        Error::decode(format!("a page of stream `{}`", self.inner.stream), e)
    }

    /// Finishes the rows appended so far into batches (stamping `uuid_ts` now), in order,
    /// and the report of what was new or rescued in them. Usually one batch; more when
    /// the rows passed [`Limits::batch_bytes`] (each later batch's schema has every column
    /// of the earlier ones). The builder is empty afterwards and keeps every column it has
    /// learnt.
    pub fn finish(&mut self) -> Result<(Vec<RecordBatch>, ConvertReport)> {
        let inner = &mut self.inner;
        if inner.rows > 0 || inner.sealed.is_empty() {
            inner.seal()?;
        }
        inner.sealed_rows = 0;
        inner.sealed_bytes = 0;
        let report = ConvertReport {
            new_columns: std::mem::take(&mut inner.discovered),
            rescued_values: std::mem::take(&mut inner.rescued_total),
            widened_columns: std::mem::take(&mut inner.widened),
            capped_fields: std::mem::take(&mut inner.capped_total),
            capped_example: inner.capped_example.take(),
            oversized_values: std::mem::take(&mut inner.oversized_total),
        };
        Ok((std::mem::take(&mut inner.sealed), report))
    }
}

fn table_schema(cols: &[Col]) -> Arc<Schema> {
    Arc::new(Schema::new(
        cols.iter()
            .map(|c| Field::new(&c.name, c.ty.arrow_type(), true))
            .collect::<Vec<_>>(),
    ))
}

impl Inner {
    /// Moves the open rows into a batch of their own (stamping `uuid_ts` now).
    fn seal(&mut self) -> Result<()> {
        let rows = self.rows;
        let now = Utc::now().timestamp_micros();
        if let Some(uuid_ts) = self.cols.get_mut(self.sys.uuid_ts) {
            let mut b = TimestampMicrosecondBuilder::with_capacity(rows);
            b.append_value_n(now, rows);
            uuid_ts.data = Some(ColData::Ts(b));
            uuid_ts.len = rows;
        }
        let arrays: Vec<ArrayRef> = self.cols.iter_mut().map(|c| c.finish(rows)).collect();
        let batch = RecordBatch::try_new(table_schema(&self.cols), arrays)?;
        self.sealed.push(batch);
        self.sealed_rows += rows;
        self.sealed_bytes += self.bytes;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Starts a record: first seals the rows so far if they passed the byte budget, so a
    /// batch's text stays far below what Arrow's 32-bit offsets can hold.
    fn begin_row(&mut self) -> Result<()> {
        if self.rows > 0 && self.bytes >= self.limits.batch_bytes {
            self.seal()?;
        }
        self.path.clear();
        self.seen_pos = 0;
        self.seen_all = true;
        self.record += 1;
        self.row_deleted = false;
        self.row_rescued.clear();
        Ok(())
    }

    fn end_row(&mut self, force_deleted: bool) {
        let sys = self.sys;
        self.put(sys.received_at, Cell::Ts(self.received_at));
        self.put(
            sys.is_deleted,
            Cell::Bool(force_deleted || self.row_deleted),
        );
        if !self.row_rescued.is_empty() {
            let mut obj = String::from("{");
            for (i, (key, raw)) in self.row_rescued.iter().enumerate() {
                if i > 0 {
                    obj.push(',');
                }
                let name = match key {
                    RescueKey::Col(col) => self.cols.get(*col).map_or("", |c| c.name.as_str()),
                    RescueKey::Name(name) => name.as_str(),
                };
                obj.push_str(&serde_json::to_string(name).unwrap_or_default());
                obj.push(':');
                obj.push_str(raw);
            }
            obj.push('}');
            self.put(sys.rescued, Cell::Owned(obj));
        }
        self.rows += 1;
    }

    /// Enters field `key` of the object at the current path: returns the length of the path
    /// to truncate back to, and the field's column, if it has one. The key is appended to
    /// the path, except for a field met at its cached position that has a column (nothing
    /// reads the path of a field parsed by its column's type).
    ///
    /// While every field of this record so far was the one the previous record had at its
    /// position (same key, same parent-path length), a field with the previous record's key
    /// and parent length at its position has its path too: that sequence of (key, parent
    /// length) pairs fixes every path met (each open object's path has a length of its
    /// own, so a parent length names one parent). Past the first difference, the full path
    /// is compared with the one cached at the position, and past that, hashed.
    fn enter(&mut self, key: &str) -> (usize, Option<usize>) {
        let mark = self.path.len();
        let pos = self.seen_pos;
        self.seen_pos += 1;
        let record = self.record;
        if self.seen_all {
            if let Some(seen) = self.seen.get_mut(pos)
                && seen.record + 1 == record
                && seen.mark == mark
                && seen.key == key
                && let Some(rest) = seen.path.get(mark..)
            {
                seen.record = record;
                // A field with a column is parsed by the column's type and never reads
                // the path (the caller truncates back to `mark` after it): only an
                // object flattened below it needs its path spelled out.
                if seen.col.is_none() {
                    self.path.push_str(rest);
                }
                return (mark, seen.col);
            }
            self.seen_all = false;
        }
        self.push_key(key);
        if let Some(seen) = self.seen.get_mut(pos) {
            // Whatever it held, the entry now describes this record's field.
            if seen.path != self.path {
                seen.path.clear();
                seen.path.push_str(&self.path);
                seen.col = self.index.get(self.path.as_str()).copied();
            }
            if seen.key != key {
                seen.key.clear();
                seen.key.push_str(key);
            }
            seen.mark = mark;
            seen.record = record;
            return (mark, seen.col);
        }
        let col = self.index.get(self.path.as_str()).copied();
        if pos == self.seen.len() && pos < SEEN_FIELDS {
            self.seen.push(Seen {
                key: key.to_owned(),
                mark,
                path: self.path.clone(),
                col,
                record,
            });
        }
        (mark, col)
    }

    /// Appends `key` to the current path; returns the length to truncate back to.
    fn push_key(&mut self, key: &str) -> usize {
        let mark = self.path.len();
        if mark > 0 {
            self.path.push('_');
        }
        if is_column_name(key) {
            self.path.push_str(key);
        } else {
            self.path.push_str(&to_column_name(key));
        }
        mark
    }

    /// Adds a column for the current path, typed by the value first seen there; `None`
    /// when the path may not become a column (past the run's new-column cap, or a name
    /// longer than [`MAX_COLUMN_NAME_BYTES`]): the caller rescues the value instead.
    fn discover(&mut self, ty: ColumnType) -> Option<usize> {
        let mut name = self.path.clone();
        if crate::schema::SYSTEM_COLUMNS.contains(&name.as_str()) {
            // A vendor field that clashes with a system column keeps its value under a
            // prefixed name rather than overwriting ours.
            name = format!("vendor_{name}");
            if let Some(&i) = self.index.get(name.as_str()) {
                return Some(i);
            }
        }
        if name.len() > MAX_COLUMN_NAME_BYTES || self.added_columns >= self.limits.max_new_columns {
            return None;
        }
        let i = self.cols.len();
        self.seen.clear();
        self.cols.push(Col::new(name.clone(), ty));
        self.index.insert(name.clone().into_boxed_str(), i);
        self.added_columns += 1;
        self.longest_name = self.longest_name.max(name.len());
        tracing::info!(stream = %self.stream, column = %truncate(&name, LOGGED_NAME_CHARS), r#type = ?ty, "Found a new field; adding a nullable column.");
        self.discovered.push(name);
        Some(i)
    }

    /// Stores `cell` at the current path: in its column, or, when the path may not become
    /// one, in `_rescued_data`.
    fn put_new(&mut self, ty: ColumnType, cell: Cell<'_>) {
        match self.discover(ty) {
            Some(col) => self.put(col, cell),
            None => self.rescue_capped(cell_json(&cell)),
        }
    }

    fn put(&mut self, col: usize, cell: Cell<'_>) {
        let row = self.rows;
        let Some(c) = self.cols.get_mut(col) else {
            return;
        };
        if c.len > row {
            // Two fields flattened to the same name in one record: keep the second one
            // rather than lose it.
            self.rescue(col, cell_json(&cell));
            return;
        }
        let n = cell.text_len();
        if c.bytes.saturating_add(n) > self.limits.column_bytes {
            // More text than one batch's column can address (Arrow's offsets are 32-bit).
            // Rows are sealed at the byte budget, far below this, so only a single giant
            // row gets here: leave the value null and count it rather than panic.
            self.oversized_total += 1;
            if self.oversized_total == 1 {
                tracing::warn!(stream = %self.stream, column = %truncate(&c.name, LOGGED_NAME_CHARS), bytes = n, "A value too large for a batch; left null and counted.");
            }
            return;
        }
        c.bytes += n;
        self.bytes += n;
        c.put(row, cell);
    }

    fn rescue(&mut self, col: usize, raw: String) {
        self.rescued_total += 1;
        if self.rescued_total <= 5 {
            let name = self.cols.get(col).map_or("", |c| c.name.as_str());
            tracing::warn!(stream = %self.stream, column = %truncate(name, LOGGED_NAME_CHARS), value = %truncate(&raw, 80), "A value does not fit its column's type; kept in _rescued_data.");
        }
        self.row_rescued.push((RescueKey::Col(col), raw));
    }

    /// Keeps `raw` (JSON text) in `_rescued_data` under the current path, a field that may
    /// not become a column. Counted, and reported once per run by the caller, not logged
    /// here: a hostile record has thousands of them.
    fn rescue_capped(&mut self, raw: String) {
        self.capped_total += 1;
        if self.capped_example.is_none() {
            self.capped_example = Some(truncate(&self.path, LOGGED_NAME_CHARS).to_owned());
        }
        self.row_rescued
            .push((RescueKey::Name(self.path.clone()), raw));
    }

    /// Stores the raw JSON text `raw` in column `col`, by the column's type.
    fn put_raw(&mut self, col: usize, raw: &str) {
        if raw == "null" {
            return;
        }
        let Some(ty) = self.cols.get(col).map(|c| c.ty) else {
            return;
        };
        match parse_cell(ty, raw) {
            Some(cell) => self.put(col, cell),
            None if ty == ColumnType::Integer && parse_cell(ColumnType::Number, raw).is_some() => {
                self.widen(col);
                if let Some(cell) = parse_cell(ColumnType::Number, raw) {
                    self.put(col, cell);
                }
            }
            None => self.rescue(col, minify(raw)),
        }
    }

    /// Turns integer column `col` into a float column, keeping its values so far.
    fn widen(&mut self, col: usize) {
        let Some(c) = self.cols.get_mut(col) else {
            return;
        };
        if let Some(ColData::Int(b)) = &mut c.data {
            let ints = b.finish();
            let mut floats = Float64Builder::with_capacity(ints.len());
            floats.extend(ints.iter().map(|v| v.map(|v| v as f64)));
            c.data = Some(ColData::Num(floats));
        }
        c.ty = ColumnType::Number;
        tracing::info!(stream = %self.stream, column = %truncate(&c.name, LOGGED_NAME_CHARS), "A value with a fraction in an integer column; widening the column to float.");
        self.widened.push(c.name.clone());
    }
}

/// The first `n` characters of `s`.
fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

fn cell_json(cell: &Cell<'_>) -> String {
    match cell {
        Cell::Str(s) => serde_json::to_string(s).unwrap_or_default(),
        Cell::Owned(s) => serde_json::to_string(s).unwrap_or_default(),
        Cell::Int(v) | Cell::Ts(v) => v.to_string(),
        Cell::Num(v) => serde_json::to_string(v).unwrap_or_default(),
        Cell::Bool(v) => v.to_string(),
        Cell::Date(v) => serde_json::to_string(&date_text(*v)).unwrap_or_default(),
    }
}

/// Whether `text` holds a backslash (a JSON string with escapes). Most strings of a vendor
/// object are short (ids, codes, statuses): a word at a time, before `memchr`'s set-up.
#[inline]
fn has_backslash(text: &[u8]) -> bool {
    if text.len() > 32 {
        return memchr::memchr(b'\\', text).is_some();
    }
    let mut words = text.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        if crate::pagination::bytes_equal(word, b'\\') != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'\\')
}

/// Parses raw JSON text for a column of type `ty`; `None` when it does not fit.
fn parse_cell(ty: ColumnType, raw: &str) -> Option<Cell<'_>> {
    let first = *raw.as_bytes().first()?;
    let unquoted = || -> Option<std::borrow::Cow<'_, str>> {
        let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
        if !has_backslash(inner.as_bytes()) {
            Some(std::borrow::Cow::Borrowed(inner))
        } else {
            serde_json::from_str::<String>(raw)
                .ok()
                .map(std::borrow::Cow::Owned)
        }
    };
    match ty {
        ColumnType::String => Some(match first {
            b'"' => match unquoted()? {
                std::borrow::Cow::Borrowed(s) => Cell::Str(s),
                std::borrow::Cow::Owned(s) => Cell::Owned(s),
            },
            // An expanded reference keeps its id, as Segment's tables do.
            b'{' => match serde_json::from_str::<IdOnly>(raw) {
                Ok(IdOnly { id: Some(id) }) => Cell::Owned(id),
                _ => Cell::Owned(minify(raw)),
            },
            _ => Cell::Owned(minify(raw)),
        }),
        ColumnType::Json => Some(if raw.bytes().any(|b| b.is_ascii_whitespace()) {
            Cell::Owned(minify(raw))
        } else {
            Cell::Str(raw)
        }),
        ColumnType::Integer => {
            if let Ok(v) = raw.parse::<i64>() {
                return Some(Cell::Int(v));
            }
            let text = unquoted();
            let s = text.as_deref().unwrap_or(raw);
            if let Ok(v) = s.trim().parse::<i64>() {
                return Some(Cell::Int(v));
            }
            let f = s.trim().parse::<f64>().ok()?;
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(Cell::Int(f as i64))
        }
        ColumnType::Number => {
            let text = unquoted();
            let s = text.as_deref().unwrap_or(raw);
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Cell::Num)
        }
        ColumnType::Boolean => match raw {
            "true" | "\"true\"" | "\"True\"" | "\"TRUE\"" => Some(Cell::Bool(true)),
            "false" | "\"false\"" | "\"False\"" | "\"FALSE\"" => Some(Cell::Bool(false)),
            _ => None,
        },
        ColumnType::Timestamp => {
            if first == b'"' {
                let text = unquoted()?;
                parse_timestamp(&text).map(Cell::Ts)
            } else if let Ok(secs) = raw.parse::<i64>() {
                secs.checked_mul(1_000_000).map(Cell::Ts)
            } else {
                let secs = raw.parse::<f64>().ok()?;
                let micros = secs * 1e6;
                (micros.is_finite() && micros.abs() < 9.2e18).then_some(Cell::Ts(micros as i64))
            }
        }
        ColumnType::Date => parse_date(&unquoted()?).map(Cell::Date),
    }
}

/// Parses a date column's text: `YYYY-MM-DD`, or the UTC date of a timestamp text (see
/// [`parse_timestamp`]). Days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    let date = match plain_date(s).or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()) {
        Some(date) => date,
        None => DateTime::from_timestamp_micros(parse_timestamp(s)?)?.date_naive(),
    };
    i32::try_from(date.signed_duration_since(epoch_day()).num_days()).ok()
}

/// `YYYY-MM-DD` exactly (four, two and two ASCII digits), read without chrono's format
/// parser; `None` for anything else, which the callers then hand to it.
fn plain_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(
        i32::try_from(number(&b[..4])?).ok()?,
        number(&b[5..7])?,
        number(&b[8..])?,
    )
}

/// 1970-01-01, day 0 of Arrow's `Date32`.
fn epoch_day() -> NaiveDate {
    DateTime::UNIX_EPOCH.date_naive()
}

/// A date column's value as `YYYY-MM-DD`.
fn date_text(days: i32) -> String {
    epoch_day()
        .checked_add_signed(chrono::Duration::days(i64::from(days)))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// Parses the timestamp texts vendors send: RFC 3339 (`2024-05-01T12:00:00Z`),
/// Salesforce's `2024-05-01T12:00:00.000+0000`, and plain dates (midnight UTC).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    // A plain date (a date field in a timestamp column) before the formats chrono parses
    // by walking a format string, which fail on it one by one first.
    if let Some(d) = plain_date(s) {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_micros());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_micros());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// Removes the insignificant whitespace of JSON text (vendors pretty-print).
pub fn minify(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was removed, so the bytes stay UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Follows `path` (object keys) from the top of the body to the records array.
struct PathSeed<'a> {
    inner: &'a mut Inner,
    path: &'a [&'a str],
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => d.deserialize_seq(RecordsVisitor { inner: self.inner }),
            Some((first, rest)) => d.deserialize_map(PathVisitor {
                inner: self.inner,
                key: first,
                rest,
            }),
        }
    }
}

struct PathVisitor<'a> {
    inner: &'a mut Inner,
    key: &'a str,
    rest: &'a [&'a str],
}

impl<'de> Visitor<'de> for PathVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with a `{}` field", self.key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key.as_str() == self.key && !found {
                found = true;
                map.next_value_seed(PathSeed {
                    inner: &mut *self.inner,
                    path: self.rest,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !found {
            return Err(de::Error::custom(format_args!(
                "the response has no `{}` field",
                self.key
            )));
        }
        Ok(())
    }
}

struct RecordsVisitor<'a> {
    inner: &'a mut Inner,
}

impl<'de> Visitor<'de> for RecordsVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(RecordSeed {
                inner: &mut *self.inner,
                force_deleted: false,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct RecordSeed<'a> {
    inner: &'a mut Inner,
    force_deleted: bool,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.inner.begin_row().map_err(de::Error::custom)?;
        d.deserialize_map(ObjectVisitor {
            inner: &mut *self.inner,
            top: true,
        })?;
        self.inner.end_row(self.force_deleted);
        Ok(())
    }
}

/// A key, borrowed from the body when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v))
    }
}

/// Visits an object at the current path: each field goes to its column, or is flattened.
struct ObjectVisitor<'a> {
    inner: &'a mut Inner,
    top: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = key.as_str();
            let is_deletion_field = self.top
                && inner
                    .deletion
                    .as_ref()
                    .is_some_and(|(field, _)| field == key);
            let (mark, col) = inner.enter(key);
            if is_deletion_field {
                let raw: &'de RawValue = map.next_value()?;
                let text = minify(raw.get());
                if inner.deletion.as_ref().is_some_and(|(_, v)| *v == text) {
                    inner.row_deleted = true;
                }
                // The flag itself lands in `is_deleted`; it only gets a column of its
                // own when the schema declares one.
                if let Some(col) = col {
                    inner.put_raw(col, raw.get());
                }
            } else {
                map.next_value_seed(FieldSeed {
                    inner: &mut *inner,
                    col,
                })?;
            }
            inner.path.truncate(mark);
        }
        Ok(())
    }
}

/// One field's value at the current path.
struct FieldSeed<'a> {
    inner: &'a mut Inner,
    /// The field's column, if it has one.
    col: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let inner = self.inner;
        if let Some(col) = self.col {
            let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
            inner.put_raw(col, raw.get());
            Ok(())
        } else if inner.path.len() > MAX_COLUMN_NAME_BYTES && inner.path.len() >= inner.longest_name
        {
            // Neither this path nor any path under it can be a column: keep the whole value
            // as one rescued field instead of walking it (a huge key, or deep nesting).
            let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
            if raw.get() != "null" {
                inner.rescue_capped(minify(raw.get()));
            }
            Ok(())
        } else {
            d.deserialize_any(UnknownVisitor { inner })
        }
    }
}

/// A value at a path that is not a column yet: objects flatten, anything else becomes a
/// new column typed by this first value.
struct UnknownVisitor<'a> {
    inner: &'a mut Inner,
}

impl<'de> Visitor<'de> for UnknownVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.inner.put_new(ColumnType::Boolean, Cell::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.inner.put_new(ColumnType::Integer, Cell::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => self.visit_f64(v as f64),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.inner.put_new(ColumnType::Number, Cell::Num(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.inner.put_new(ColumnType::String, Cell::Str(v));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            items.push(v);
        }
        let text = serde_json::to_string(&items).map_err(de::Error::custom)?;
        match self.inner.discover(ColumnType::Json) {
            Some(col) => self.inner.put(col, Cell::Owned(text)),
            // Already JSON text: rescued as it is, not quoted again.
            None => self.inner.rescue_capped(text),
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        ObjectVisitor {
            inner: self.inner,
            top: false,
        }
        .visit_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::Record;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use bytes::Bytes;

    fn schema() -> StreamSchema {
        StreamSchema::from_json(
            r#"{"name":"charges","primary_key":"id","cursor_field":"created",
            "deletion":{"field":"deleted","equals":true},
            "columns":[
              {"name":"id","type":"string"},
              {"name":"amount","type":"integer"},
              {"name":"created","type":"timestamp"},
              {"name":"paid","type":"boolean"},
              {"name":"customer","type":"string"},
              {"name":"metadata","type":"json"},
              {"name":"billing_details_address_city","type":"string"},
              {"name":"fee","type":"number"}
            ]}"#,
        )
        .unwrap()
    }

    fn json_page(body: &str) -> Page {
        Page::new(
            Records::Json {
                body: Bytes::from(body.to_owned()),
                path: &["data"],
            },
            serde_json::Value::Null,
        )
    }

    /// The only batch of a finish, and its report.
    fn one(
        (mut batches, report): (Vec<RecordBatch>, ConvertReport),
    ) -> (RecordBatch, ConvertReport) {
        assert_eq!(batches.len(), 1, "one batch expected");
        (batches.remove(0), report)
    }

    fn col<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    #[test]
    fn flattens_types_and_keeps_unknown_fields() {
        let mut b = BatchBuilder::new(&schema(), None);
        let body = r#"{
          "object": "list",
          "data": [
            {"id": "ch_1", "amount": 2000, "created": 1700000000, "paid": true,
             "customer": {"id": "cus_9", "object": "customer"},
             "metadata": {"order": "6735", "nested": {"a": [1, 2]}},
             "billing_details": {"address": {"city": "Berlin", "zip": "10115"}, "name": null},
             "refunds": {"object": "list", "data": []},
             "new_flag": false, "fee": 1},
            {"id": "ch_2", "amount": "12.5 EUR", "created": "2024-01-02T03:04:05Z",
             "customer": "cus_8", "tags": ["a", "b"], "esc\u0061ped": "x\"y"}
          ],
          "has_more": false
        }"#;
        assert_eq!(b.append_page(&json_page(body)).unwrap(), 2);
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(batch.num_rows(), 2);
        let ids = col(&batch, "id").as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("ch_1", "ch_2"));
        let amount = col(&batch, "amount").as_primitive::<Int64Type>();
        assert_eq!(amount.value(0), 2000);
        assert!(amount.is_null(1), "a value that does not fit stays null");
        let created = col(&batch, "created").as_primitive::<TimestampMicrosecondType>();
        assert_eq!(created.value(0), 1_700_000_000_000_000);
        assert_eq!(created.value(1), 1_704_164_645_000_000);
        let customer = col(&batch, "customer").as_string::<i32>();
        assert_eq!(
            customer.value(0),
            "cus_9",
            "an expanded reference keeps its id"
        );
        assert_eq!(customer.value(1), "cus_8");
        let metadata = col(&batch, "metadata").as_string::<i32>();
        assert_eq!(
            metadata.value(0),
            r#"{"order":"6735","nested":{"a":[1,2]}}"#
        );
        let city = col(&batch, "billing_details_address_city").as_string::<i32>();
        assert_eq!(city.value(0), "Berlin");
        assert_eq!(
            col(&batch, "billing_details_address_zip")
                .as_string::<i32>()
                .value(0),
            "10115"
        );
        assert_eq!(
            col(&batch, "refunds_object").as_string::<i32>().value(0),
            "list"
        );
        assert_eq!(
            col(&batch, "refunds_data").as_string::<i32>().value(0),
            "[]"
        );
        assert_eq!(
            col(&batch, "tags").as_string::<i32>().value(1),
            r#"["a","b"]"#
        );
        assert_eq!(col(&batch, "escaped").as_string::<i32>().value(1), "x\"y");
        assert!(!col(&batch, "new_flag").as_boolean().value(0));
        let fee = col(&batch, "fee").as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(fee.value(0), 1.0);
        let rescued = col(&batch, RESCUED).as_string::<i32>();
        assert!(rescued.is_null(0));
        assert_eq!(rescued.value(1), r#"{"amount":"12.5 EUR"}"#);
        assert_eq!(report.rescued_values, 1);
        assert_eq!(
            report.new_columns,
            vec![
                "billing_details_address_zip",
                "refunds_object",
                "refunds_data",
                "new_flag",
                "tags",
                "escaped"
            ]
        );
        let deleted = col(&batch, IS_DELETED).as_boolean();
        assert!(!deleted.value(0) && !deleted.value(1));
        assert_eq!(col(&batch, UUID_TS).null_count(), 0);
        assert_eq!(col(&batch, RECEIVED_AT).null_count(), 0);
        // Declared but never seen: an all-null column of the declared type.
        assert_eq!(batch.num_columns(), 8 + 4 + 6);
    }

    #[test]
    fn deletion_rule_and_forced_deletes() {
        let mut b = BatchBuilder::new(&schema(), None);
        let page = Page::new(
            Records::Values(vec![
                Record {
                    value: serde_json::json!({"id": "cus_1", "deleted": true}),
                    is_deleted: false,
                },
                Record {
                    value: serde_json::json!({"id": "cus_2"}),
                    is_deleted: true,
                },
                Record {
                    value: serde_json::json!({"id": "cus_3", "deleted": false}),
                    is_deleted: false,
                },
            ]),
            serde_json::Value::Null,
        );
        b.append_page(&page).unwrap();
        let (batch, _) = one(b.finish().unwrap());
        let deleted = col(&batch, IS_DELETED).as_boolean();
        assert_eq!(
            (deleted.value(0), deleted.value(1), deleted.value(2)),
            (true, true, false)
        );
        assert!(
            batch.column_by_name("deleted").is_none(),
            "the deletion flag lands in is_deleted only"
        );
    }

    #[test]
    fn columns_learnt_persist_across_batches_and_existing_order_is_kept() {
        let mut b = BatchBuilder::new(&schema(), None);
        b.append_page(&json_page(r#"{"data":[{"id":"a","extra":1}]}"#))
            .unwrap();
        let (first, _) = one(b.finish().unwrap());
        b.append_page(&json_page(r#"{"data":[{"id":"b"}]}"#))
            .unwrap();
        let (second, report) = one(b.finish().unwrap());
        assert!(report.new_columns.is_empty());
        assert_eq!(first.schema(), second.schema());
        assert!(col(&second, "extra").is_null(0));

        // A builder reopened on the table's schema keeps its order and types.
        let reopened = BatchBuilder::new(&schema(), Some(&first.schema()));
        assert_eq!(reopened.schema(), first.schema());

        // A table whose `amount` is text keeps getting text, whatever the schema file says.
        let fields: Vec<Field> = first
            .schema()
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "amount" => Field::new("amount", arrow::datatypes::DataType::Utf8, true),
                _ => f.as_ref().clone(),
            })
            .collect();
        let mut b = BatchBuilder::new(&schema(), Some(&Schema::new(fields)));
        b.append_page(&json_page(r#"{"data":[{"id":"c","amount":5}]}"#))
            .unwrap();
        let (batch, _) = one(b.finish().unwrap());
        assert_eq!(col(&batch, "amount").as_string::<i32>().value(0), "5");
    }

    #[test]
    fn malformed_pages_are_errors() {
        let mut b = BatchBuilder::new(&schema(), None);
        let e = b
            .append_page(&json_page(r#"{"data":[{"id":"a"},{"id":"#))
            .unwrap_err();
        assert!(e.to_string().contains("stream `charges`"), "{e}");
        let mut b = BatchBuilder::new(&schema(), None);
        let e = b.append_page(&json_page(r#"{"items":[]}"#)).unwrap_err();
        assert!(e.to_string().contains("no `data` field"), "{e}");
    }

    #[test]
    fn timestamps_from_vendor_formats() {
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00Z"),
            Some(1_704_067_200_000_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00.000+0000"),
            Some(1_704_067_200_000_000)
        );
        assert_eq!(parse_timestamp("2024-01-01"), Some(1_704_067_200_000_000));
        // The plain-date fast path agrees with chrono's parser, valid or not.
        for text in [
            "2024-01-01",
            "2024-02-29",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "0000-01-01",
            "9999-12-31",
            "2024-1-01",
            "2024-01-1",
            "+2024-01-01",
            "2024/01/01",
            "2024-01-0x",
            " 2024-01-01",
            "2024-01-01 ",
        ] {
            let chrono = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok();
            let ours = plain_date(text.trim());
            assert!(
                ours.is_none() || ours == chrono,
                "{text}: {ours:?} vs {chrono:?}"
            );
            assert_eq!(
                parse_date(text),
                chrono.map(|d| d.signed_duration_since(epoch_day()).num_days() as i32),
                "{text}"
            );
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn dates_land_as_date32_and_misfits_are_rescued() {
        let schema = StreamSchema::from_json(
            r#"{"name":"opportunity","columns":[
              {"name":"id","type":"string"},
              {"name":"close_date","type":"date"}
            ]}"#,
        )
        .unwrap();
        let mut b = BatchBuilder::new(&schema, None);
        let page = Page::new(
            Records::Values(vec![
                Record {
                    value: serde_json::json!({"Id": "006A", "CloseDate": "2024-03-01"}),
                    is_deleted: false,
                },
                Record {
                    value: serde_json::json!({"Id": "006B", "CloseDate": "1969-12-31T23:00:00Z"}),
                    is_deleted: false,
                },
                Record {
                    value: serde_json::json!({"Id": "006C", "CloseDate": "soon"}),
                    is_deleted: false,
                },
                Record {
                    value: serde_json::json!({"Id": "006D", "CloseDate": null}),
                    is_deleted: false,
                },
            ]),
            serde_json::Value::Null,
        );
        b.append_page(&page).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        let dates = col(&batch, "close_date").as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(dates.value(0), 19_783, "2024-03-01 is day 19783");
        assert_eq!(dates.value(1), -1);
        assert!(dates.is_null(2) && dates.is_null(3));
        assert_eq!(report.rescued_values, 1);
        assert_eq!(
            col(&batch, RESCUED).as_string::<i32>().value(2),
            r#"{"close_date":"soon"}"#
        );
        assert_eq!(parse_date("2024-03-01"), Some(19_783));
        assert_eq!(date_text(19_783), "2024-03-01");
        assert_eq!(parse_date("not a date"), None);
    }

    #[test]
    fn a_backslash_is_found_at_every_position_of_every_length() {
        for len in 0..80 {
            let plain = "a".repeat(len);
            assert!(!has_backslash(plain.as_bytes()), "{len}");
            for at in 0..len {
                let mut text = plain.clone().into_bytes();
                text[at] = b'\\';
                assert!(has_backslash(&text), "{len} {at}");
            }
        }
        // Bytes next to a backslash's value do not fool the word test.
        assert!(!has_backslash(
            "[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".as_bytes()
        ));
        assert!(!has_backslash("é€\u{1}\u{7f}".as_bytes()));
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            minify("{ \"a b\" : [ 1, \"x \\\" y\" ] }"),
            r#"{"a b":[1,"x \" y"]}"#
        );
    }

    #[test]
    fn a_fraction_widens_an_integer_column_and_text_is_rescued() {
        let mut b = BatchBuilder::new(&schema(), None);
        let page = json_page(
            r#"{"data":[{"id":"a","amount":100},{"id":"b","amount":12.5},{"id":"c","amount":"lots"}]}"#,
        );
        b.append_page(&page).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(report.widened_columns, vec!["amount".to_owned()]);
        assert_eq!(report.rescued_values, 1);
        let amount = col(&batch, "amount");
        assert_eq!(amount.data_type(), &arrow::datatypes::DataType::Float64);
        let a = amount.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!((a.value(0), a.value(1), a.is_null(2)), (100.0, 12.5, true));
        let rescued = col(&batch, RESCUED).as_string::<i32>();
        assert_eq!(rescued.value(2), r#"{"amount":"lots"}"#);
    }

    fn rescued_object(
        batch: &RecordBatch,
        row: usize,
    ) -> serde_json::Map<String, serde_json::Value> {
        let text = col(batch, RESCUED).as_string::<i32>().value(row);
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("_rescued_data is not an object: {other:?}"),
        }
    }

    #[test]
    fn a_record_with_twenty_thousand_keys_adds_at_most_the_cap() {
        let mut b = BatchBuilder::new(&schema(), None);
        let before = b.schema().fields().len();
        let fields: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = format!(
            r#"{{"data":[{{"id":"a",{}}},{{"id":"b","k5":1,"k19999":2}}]}}"#,
            fields.join(",")
        );
        b.append_page(&json_page(&body)).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(report.new_columns.len(), DEFAULT_MAX_NEW_COLUMNS);
        assert_eq!(batch.num_columns(), before + DEFAULT_MAX_NEW_COLUMNS);
        assert_eq!(
            report.capped_fields,
            19_000 + 1,
            "row b's k19999 is past the cap too"
        );
        assert_eq!(report.capped_example.as_deref(), Some("k1000"));
        assert_eq!(report.rescued_values, 0, "capped fields are counted apart");
        // Nothing is lost: every field is a column or a rescued value.
        let rescued = rescued_object(&batch, 0);
        assert_eq!(rescued.len(), 19_000);
        assert_eq!(rescued["k19999"], serde_json::json!(19_999));
        assert_eq!(
            col(&batch, "k999").as_primitive::<Int64Type>().value(0),
            999
        );
        assert_eq!(col(&batch, "k5").as_primitive::<Int64Type>().value(1), 1);
        assert_eq!(rescued_object(&batch, 1)["k19999"], serde_json::json!(2));

        // The cap is per run (the builder's life), not per batch.
        b.append_page(&json_page(r#"{"data":[{"id":"c","fresh":true}]}"#))
            .unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert!(report.new_columns.is_empty());
        assert_eq!(report.capped_fields, 1);
        assert_eq!(rescued_object(&batch, 0)["fresh"], serde_json::json!(true));
    }

    #[test]
    fn the_new_column_cap_is_configurable_and_keeps_nested_known_columns() {
        let limits = Limits {
            max_new_columns: 1,
            ..Limits::default()
        };
        let mut b = BatchBuilder::with_limits(&schema(), None, limits);
        let body = r#"{"data":[{"id":"a","one":"x","two":[1, 2],"three":{"n":1.5},
            "billing_details":{"address":{"city":"Oslo"}}}]}"#;
        b.append_page(&json_page(body)).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(report.new_columns, vec!["one".to_owned()]);
        assert_eq!(report.capped_fields, 2);
        let rescued = rescued_object(&batch, 0);
        assert_eq!(rescued["two"], serde_json::json!([1, 2]));
        assert_eq!(rescued["three_n"], serde_json::json!(1.5));
        assert_eq!(
            col(&batch, "billing_details_address_city")
                .as_string::<i32>()
                .value(0),
            "Oslo",
            "a declared column under an unknown object still fills past the cap"
        );
    }

    #[test]
    fn a_megabyte_key_is_rescued_not_a_column() {
        let mut b = BatchBuilder::new(&schema(), None);
        let key = "k".repeat(1 << 20);
        let long_nested = "n".repeat(300);
        let body = format!(
            r#"{{"data":[{{"id":"a","{key}":"v","{long_nested}":{{"x":1,"y":{{"z":[true]}}}},"ok":1}}]}}"#
        );
        b.append_page(&json_page(&body)).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(report.new_columns, vec!["ok".to_owned()]);
        assert_eq!(
            report.capped_fields, 2,
            "a long-named object is rescued whole"
        );
        assert!(
            batch
                .schema()
                .fields()
                .iter()
                .all(|f| f.name().len() <= MAX_COLUMN_NAME_BYTES)
        );
        let example = report.capped_example.unwrap();
        assert!(example.len() <= LOGGED_NAME_CHARS, "{}", example.len());
        let rescued = rescued_object(&batch, 0);
        assert_eq!(rescued[&key], serde_json::json!("v"));
        assert_eq!(
            rescued[&long_nested],
            serde_json::json!({"x": 1, "y": {"z": [true]}})
        );
    }

    #[test]
    fn deep_nesting_stays_bounded() {
        // Under serde_json's recursion limit: flattened until the name is too long, then
        // the rest of the object is one rescued field.
        let depth = 120;
        let key = "abcdef";
        let body = format!(
            r#"{{"data":[{{"id":"a","d":{}1{}}}]}}"#,
            format!(r#"{{"{key}":"#).repeat(depth),
            "}".repeat(depth)
        );
        let mut b = BatchBuilder::new(&schema(), None);
        b.append_page(&json_page(&body)).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert!(report.new_columns.is_empty());
        assert_eq!(report.capped_fields, 1);
        let rescued = rescued_object(&batch, 0);
        let (name, _) = rescued.iter().next().unwrap();
        assert!(name.len() > MAX_COLUMN_NAME_BYTES && name.len() < MAX_COLUMN_NAME_BYTES + 8);

        // Past it: a decode error, not a stack overflow.
        let depth = 100_000;
        let body = format!(
            r#"{{"data":[{{"id":"a","d":{}1{}}}]}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        let mut b = BatchBuilder::new(&schema(), None);
        assert!(b.append_page(&json_page(&body)).is_err());
        let body = format!(
            r#"{{"data":[{{"id":"a","d":{}1{}}}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let mut b = BatchBuilder::new(&schema(), None);
        assert!(b.append_page(&json_page(&body)).is_err());
    }

    #[test]
    fn large_strings_split_batches_by_bytes() {
        let limits = Limits {
            batch_bytes: 10_000,
            ..Limits::default()
        };
        let mut b = BatchBuilder::with_limits(&schema(), None, limits);
        let big = "x".repeat(3_000);
        let mut ids = Vec::new();
        for page in 0..3 {
            let records: Vec<String> = (0..20)
                .map(|i| format!(r#"{{"id":"r{page}_{i}","customer":"{big}","note":"{big}"}}"#))
                .collect();
            b.append_page(&json_page(&format!(
                r#"{{"data":[{}]}}"#,
                records.join(",")
            )))
            .unwrap();
            assert_eq!(b.rows(), 20, "rows counts sealed batches too");
            assert!(b.is_full());
            assert!(b.bytes() >= 10_000);
            let (batches, report) = b.finish().unwrap();
            assert_eq!(b.rows(), 0);
            assert!(!b.is_full());
            assert!(batches.len() > 1, "split by bytes: {}", batches.len());
            assert_eq!(report.oversized_values, 0);
            for batch in &batches {
                let customer = col(batch, "customer").as_string::<i32>();
                assert!(customer.value_data().len() <= 10_000 + 2 * 3_000);
                let id = col(batch, "id").as_string::<i32>();
                ids.extend(id.iter().map(|v| v.unwrap().to_owned()));
                assert_eq!(col(batch, UUID_TS).null_count(), 0);
                assert_eq!(batch.schema(), batches[batches.len() - 1].schema());
            }
        }
        let mut expected: Vec<String> = (0..3)
            .flat_map(|p| (0..20).map(move |i| format!("r{p}_{i}")))
            .collect();
        assert_eq!(ids, expected, "every row once, in order");
        expected.dedup();
        assert_eq!(expected.len(), 60);

        // Small records never seal: one batch, as before.
        let mut b = BatchBuilder::with_limits(&schema(), None, limits);
        b.append_page(&json_page(r#"{"data":[{"id":"a"},{"id":"b"}]}"#))
            .unwrap();
        assert!(!b.is_full());
        let (batch, _) = one(b.finish().unwrap());
        assert_eq!(batch.num_rows(), 2);
    }

    #[test]
    fn a_value_too_large_for_any_batch_is_left_null_and_counted() {
        // `column_bytes` stands in for Arrow's 2 GiB so the test allocates kilobytes.
        let limits = Limits {
            batch_bytes: 1_000,
            column_bytes: 4_000,
            ..Limits::default()
        };
        let mut b = BatchBuilder::with_limits(&schema(), None, limits);
        let huge = "y".repeat(5_000);
        let fits = "z".repeat(3_000);
        let body = format!(
            r#"{{"data":[{{"id":"a","customer":"{fits}"}},{{"id":"b","customer":"{huge}","amount":"{huge}"}},{{"id":"c","customer":"{fits}"}}]}}"#
        );
        b.append_page(&json_page(&body)).unwrap();
        let (batches, report) = b.finish().unwrap();
        assert_eq!(report.oversized_values, 2, "the value and its rescued copy");
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        let row_b = batches
            .iter()
            .find(|batch| col(batch, "id").as_string::<i32>().value(0) == "b")
            .unwrap();
        assert!(col(row_b, "customer").is_null(0));
        assert!(col(row_b, "amount").is_null(0));
    }

    #[test]
    fn vendor_fields_named_like_system_columns_get_their_own() {
        let mut b = BatchBuilder::new(&schema(), None);
        let body = r#"{"data":[{"id":"a","received_at":"yesterday","_rescued_data":{"x":1},
            "is_deleted":true,"amount":"oops"}]}"#;
        b.append_page(&json_page(body)).unwrap();
        let (batch, report) = one(b.finish().unwrap());
        assert_eq!(
            report.new_columns,
            vec!["vendor_received_at", "_rescued_data_x", "vendor_is_deleted"]
        );
        assert_eq!(col(&batch, RECEIVED_AT).null_count(), 0);
        assert!(!col(&batch, IS_DELETED).as_boolean().value(0));
        assert_eq!(
            col(&batch, RESCUED).as_string::<i32>().value(0),
            r#"{"amount":"oops"}"#
        );
    }
}
