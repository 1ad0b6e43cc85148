//! The warehouse: one Delta Lake table per stream at `<warehouse>/<source>/<stream>/`,
//! written through object_store.
//!
//! Guarantees:
//! - **Data first, commit last.** Parquet files are uploaded before the commit that names
//!   them; a run that dies before its commit leaves only unreferenced files, which no reader
//!   sees (and `compact` removes).
//! - **Exactly once.** Every commit of a stream carries a Delta application transaction
//!   (`txn`, app id `tributary/<source>/<stream>`, version = the commit's sequence number)
//!   and the stream's cursor in the commit's metadata (`commitInfo.tributary`). The next
//!   run reads both back and resumes from that cursor, so a page is landed by exactly the
//!   commit that advanced the cursor past it. Two writers racing on one stream conflict on
//!   the `txn` and one of them fails without landing anything.
//! - **Schema evolution.** A column the stream did not have is added (nullable) by a
//!   metadata update inside the same commit as the first rows that carry it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::datatypes::{DataType as ArrowType, Schema as ArrowSchema, TimeUnit};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, Remove, StructField, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::WarehouseConfig;

/// The key of Tributary's entry in a commit's `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "tributary";

/// Whether `s` can be one level of a table path: lowercase letters, digits, `_`, `-`.
pub fn is_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The warehouse root and the object-store options to reach it.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
    options: HashMap<String, String>,
}

impl Warehouse {
    /// Resolves `[warehouse]`: a local path becomes an absolute `file://` URL (created if
    /// missing); URLs must use a scheme object_store knows.
    pub fn new(config: &WarehouseConfig) -> Result<Self> {
        let url = config.url.trim();
        let root = if url.contains("://") {
            let mut u = Url::parse(url)
                .map_err(|e| anyhow!("`warehouse.url` = {url:?} is not a valid URL: {e}"))?;
            match u.scheme() {
                "file" | "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "memory" => {}
                other => bail!(
                    "`warehouse.url` uses the scheme `{other}`; use a local path or file://, s3://, gs://, az:// or abfss://"
                ),
            }
            if u.scheme() == "file" {
                std::fs::create_dir_all(u.path()).with_context(|| {
                    format!("cannot create the warehouse directory {}", u.path())
                })?;
            }
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            u
        } else {
            let path = std::path::Path::new(url);
            std::fs::create_dir_all(path).with_context(|| {
                format!("cannot create the warehouse directory {}", path.display())
            })?;
            let abs = std::fs::canonicalize(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            Url::from_directory_path(&abs).map_err(|()| {
                anyhow!("`warehouse.url` {} is not an absolute path", abs.display())
            })?
        };
        Ok(Warehouse {
            root,
            options: config.options.clone(),
        })
    }

    /// The warehouse root URL, ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The object store of the whole warehouse and the path of its root in it: for files
    /// the runtime keeps beside the tables (the Tracking-API outbox).
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let (store, root) = object_store::parse_url_opts(&self.root, self.options.iter())
            .map_err(|e| anyhow!("cannot open the warehouse at {}: {e}", self.root))?;
        Ok((Arc::from(store), root))
    }

    /// The URL of the table at `parts` below the root.
    pub fn table_url(&self, parts: &[&str]) -> Result<Url> {
        let mut url = self.root.clone();
        for p in parts {
            url = url
                .join(&format!("{p}/"))
                .map_err(|e| anyhow!("bad table path {p}: {e}"))?;
        }
        Ok(url)
    }

    fn builder(&self, url: &Url) -> Result<DeltaTableBuilder> {
        if url.scheme() == "file" {
            std::fs::create_dir_all(url.path())
                .with_context(|| format!("cannot create the table directory {}", url.path()))?;
        }
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| anyhow!("table {url}: {e}"))?
            .with_storage_options(self.options.clone()))
    }

    /// Opens the table at `parts` if it exists.
    pub async fn open(&self, parts: &[&str]) -> Result<Option<DeltaTable>> {
        let url = self.table_url(parts)?;
        let builder = self.builder(&url)?;
        // Ask first, so a table that does not exist yet is not an error in the logs.
        let exists = builder
            .build_storage()
            .map_err(|e| anyhow!("cannot reach the table location {url}: {e}"))?
            .is_delta_table_location()
            .await
            .map_err(|e| anyhow!("cannot list the table location {url}: {e}"))?;
        if !exists {
            return Ok(None);
        }
        match builder.load().await {
            Ok(t) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(anyhow!("cannot open the table at {url}: {e}")),
        }
    }

    /// Opens the table at `parts`, creating it with `schema` if it does not exist yet.
    pub async fn open_or_create(&self, parts: &[&str], schema: &ArrowSchema) -> Result<DeltaTable> {
        if let Some(t) = self.open(parts).await? {
            return Ok(t);
        }
        let url = self.table_url(parts)?;
        let name = parts.last().copied().unwrap_or("table");
        let created = deltalake::operations::create::CreateBuilder::new()
            .with_location(url.as_str())
            .with_storage_options(self.options.clone())
            .with_table_name(name)
            .with_columns(delta_fields(schema)?)
            .with_comment(format!("Synced by tributary {}", env!("CARGO_PKG_VERSION")))
            .await;
        match created {
            Ok(t) => Ok(t),
            // Another worker created it first: use theirs.
            Err(_) if self.open(parts).await?.is_some() => self
                .open(parts)
                .await?
                .ok_or_else(|| anyhow!("table at {url} vanished")),
            Err(e) => Err(anyhow!("cannot create the table at {url}: {e}")),
        }
    }
}

/// Delta fields for an Arrow schema made by the converter.
pub fn delta_fields(schema: &ArrowSchema) -> Result<Vec<StructField>> {
    use deltalake::kernel::DataType as D;
    schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => D::STRING,
                ArrowType::Int64 | ArrowType::Int32 => D::LONG,
                ArrowType::Float64 | ArrowType::Float32 => D::DOUBLE,
                ArrowType::Boolean => D::BOOLEAN,
                ArrowType::Timestamp(TimeUnit::Microsecond, Some(_)) => D::TIMESTAMP,
                ArrowType::Date32 => D::DATE,
                other => bail!(
                    "column `{}` has a type Delta tables here do not use: {other}",
                    f.name()
                ),
            };
            Ok(StructField::new(f.name(), t, true))
        })
        .collect()
}

/// Parquet settings of every data file: zstd(1), row groups capped at `row_group_size`
/// rows so the writer's buffer stays bounded however long the stream.
pub fn writer_properties(row_group_size: usize) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(row_group_size))
        .build())
}

/// Tributary's part of a commit's `commitInfo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitMeta {
    /// The stream's commit sequence number (equals the `txn` version).
    pub seq: i64,
    /// The connector cursor after this commit's rows.
    pub cursor: serde_json::Value,
    /// The run that made the commit.
    pub run_id: String,
    /// Rows landed by this commit.
    pub records: u64,
    /// Whether this commit replaced every earlier row.
    #[serde(default)]
    pub reset: bool,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
}

/// A stream's table, with the position its last commit reached.
pub struct StreamTable {
    table: DeltaTable,
    app_id: String,
    seq: i64,
    last: Option<CommitMeta>,
    writer_props: WriterProperties,
}

impl StreamTable {
    /// Opens (or creates) the table of `source`/`stream` and reads its committed position.
    pub async fn open(
        warehouse: &Warehouse,
        source: &str,
        stream: &str,
        schema: &ArrowSchema,
        row_group_size: usize,
    ) -> Result<Self> {
        let table = warehouse.open_or_create(&[source, stream], schema).await?;
        let app_id = format!("tributary/{source}/{stream}");
        let (seq, last) = read_position(&table, &app_id).await?;
        let writer_props = writer_properties(row_group_size)?;
        Ok(StreamTable {
            table,
            app_id,
            seq,
            last,
            writer_props,
        })
    }

    /// The last commit's metadata, `None` before the first commit.
    pub fn last_commit(&self) -> Option<&CommitMeta> {
        self.last.as_ref()
    }

    /// The committed cursor, `None` before the first commit.
    pub fn cursor(&self) -> Option<serde_json::Value> {
        self.last.as_ref().map(|m| m.cursor.clone())
    }

    /// The table's current Arrow schema.
    pub fn arrow_schema(&self) -> Result<Arc<ArrowSchema>> {
        Ok(self.table.snapshot()?.snapshot().arrow_schema())
    }

    /// The stream's committed sequence number (0 before the first commit); the next commit
    /// is `seq() + 1`.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The table's version.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// Starts a new Parquet data file in the table.
    pub fn new_file(&self, schema: Arc<ArrowSchema>) -> Result<DataFile> {
        DataFile::create(&self.table, schema, self.writer_props.clone())
    }

    /// Commits `files` with the new `cursor`, atomically: the rows, the schema change (if
    /// `schema` has new columns), the removal of every earlier file (if `reset`), the
    /// stream's `txn` and the cursor land together or not at all.
    pub async fn commit(
        &mut self,
        files: Vec<Add>,
        schema: &ArrowSchema,
        reset: bool,
        cursor: serde_json::Value,
        records: u64,
        run_id: &str,
    ) -> Result<u64> {
        let snapshot = self.table.snapshot()?;
        let mut actions = Vec::with_capacity(files.len() + 1);
        let current = snapshot.snapshot().arrow_schema();
        if schema
            .fields()
            .iter()
            .any(|f| current.field_with_name(f.name()).is_err())
        {
            // Keep every column the table has, in its order, then the new ones.
            let mut fields = delta_fields(&current)?;
            for f in delta_fields(schema)? {
                if current.field_with_name(f.name()).is_err() {
                    fields.push(f);
                }
            }
            let metadata = snapshot
                .metadata()
                .clone()
                .with_schema(&StructType::try_new(fields)?)?;
            actions.push(Action::Metadata(metadata));
        }
        if reset {
            let now = chrono::Utc::now().timestamp_millis();
            for f in snapshot.log_data().iter() {
                actions.push(Action::Remove(Remove {
                    path: f.path().to_string(),
                    data_change: true,
                    deletion_timestamp: Some(now),
                    extended_file_metadata: Some(true),
                    partition_values: Some(HashMap::new()),
                    size: Some(f.size()),
                    tags: None,
                    deletion_vector: None,
                    base_row_id: None,
                    default_row_commit_version: None,
                }));
            }
        }
        actions.extend(files.into_iter().map(Action::Add));
        let seq = self.seq + 1;
        let meta = CommitMeta {
            seq,
            cursor,
            run_id: run_id.to_owned(),
            records,
            reset,
            committed_at: chrono::Utc::now().to_rfc3339(),
        };
        let operation = DeltaOperation::Write {
            mode: if reset {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            },
            partition_by: None,
            predicate: None,
        };
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, seq))
            .with_metadata([(COMMIT_INFO_KEY.to_owned(), serde_json::to_value(&meta)?)]);
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(|e| anyhow!("committing to the table of `{}`: {e}", self.app_id))?;
        let version = finalized.version();
        self.table.update_incremental(None).await?;
        // A concurrent writer on the same stream would have advanced the txn too; the
        // conflict checker rejects that, so our seq is the table's now.
        self.seq = seq;
        self.last = Some(meta);
        Ok(version)
    }
}

/// Reads a stream's committed sequence number and the cursor of that commit.
pub async fn read_position(table: &DeltaTable, app_id: &str) -> Result<(i64, Option<CommitMeta>)> {
    let snapshot = table.snapshot()?;
    let Some(seq) = snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?
    else {
        return Ok((0, None));
    };
    // The commit is almost always among the newest; look further back only if not.
    for limit in [Some(8), Some(256), None] {
        let mut history = table.history(limit);
        while let Some(info) = history.try_next().await? {
            if let Some(value) = info.info.get(COMMIT_INFO_KEY) {
                let meta: CommitMeta = serde_json::from_value(value.clone()).with_context(|| {
                    format!("the table of `{app_id}` has a commit whose tributary metadata cannot be read")
                })?;
                if meta.seq == seq {
                    return Ok((seq, Some(meta)));
                }
            }
        }
    }
    bail!(
        "the table of `{app_id}` says commit {seq} landed, but its cursor is not in the table's log (log files removed?); run `sync --full-refresh` for this stream"
    )
}

/// A Parquet data file being written to the table's store.
pub struct DataFile {
    name: String,
    store: Arc<dyn ObjectStore>,
    writer: AsyncArrowWriter<BufWriter>,
    schema: Arc<ArrowSchema>,
    null_counts: Vec<i64>,
    rows: u64,
}

impl DataFile {
    /// Starts a new data file with a unique name in `table`'s directory.
    pub fn create(
        table: &DeltaTable,
        schema: Arc<ArrowSchema>,
        props: WriterProperties,
    ) -> Result<Self> {
        let name = format!("part-{}-c000.zstd.parquet", uuid::Uuid::new_v4());
        let store = table.object_store();
        let writer = AsyncArrowWriter::try_new(
            BufWriter::new(store.clone(), Path::from(name.as_str())),
            schema.clone(),
            Some(props),
        )?;
        Ok(DataFile {
            name,
            store,
            writer,
            null_counts: vec![0; schema.fields().len()],
            schema,
            rows: 0,
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
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).await?;
        Ok(())
    }

    /// Finishes the file and returns its `add` action.
    pub async fn finish(self) -> Result<Add> {
        self.writer.close().await?;
        let path = Path::from(self.name.as_str());
        let meta = self
            .store
            .head(&path)
            .await
            .with_context(|| format!("reading back the size of {}", self.name))?;
        let null_count: serde_json::Map<String, serde_json::Value> = self
            .schema
            .fields()
            .iter()
            .zip(&self.null_counts)
            .map(|(f, n)| (f.name().clone(), serde_json::Value::from(*n)))
            .collect();
        let stats = serde_json::json!({"numRecords": self.rows, "nullCount": null_count});
        Ok(Add {
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
        })
    }
}
