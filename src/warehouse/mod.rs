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
//! - **Latest state.** An object stream's table holds one row per primary key, its newest
//!   version, replaced in the same commit that lands the change (see [`table`]).
//! - **Schema evolution.** A column the stream did not have is added (nullable) by a
//!   metadata update inside the same commit as the first rows that carry it; an integer
//!   column that starts receiving fractions is widened to float, its files rewritten in
//!   that same commit.
//! - **No unsafe commits.** A commit is a create-if-absent put of the next log version, so
//!   it is only as safe as the store's conditional put. Before writing to a remote store,
//!   [`Warehouse::check_conditional_put`] proves that the store refuses to overwrite an
//!   object that exists, and the run stops if it does not (some emulators accept the
//!   precondition and ignore it), unless `allow_unsafe_commits` says otherwise.

pub mod compact;
pub mod datafile;
pub mod dv;
pub mod history;
pub mod merge;
pub mod table;
pub mod writer;

pub use datafile::{DataFile, NewFile};
pub use table::{CommitMeta, Landed, SnapshotStep, StreamTable, read_position};
pub use writer::FileWriter;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::datatypes::{DataType as ArrowType, Schema as ArrowSchema, TimeUnit};
use deltalake::kernel::StructField;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use url::Url;

use crate::config::WarehouseConfig;

/// How a commit takes older versions of objects out of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeMode {
    /// Mark the old rows in a deletion vector: a few bytes per touched file. Read by
    /// Spark/Databricks, DuckDB's delta extension, Trino and delta-rs's SQL engine.
    #[default]
    DeletionVectors,
    /// Rewrite every touched file without the old rows: more bytes per sync, readable by
    /// every Delta reader (Snowflake, BigQuery, pyarrow datasets).
    CopyOnWrite,
}

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
    merge: MergeMode,
    allow_unsafe_commits: bool,
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
            merge: config.merge,
            allow_unsafe_commits: config.allow_unsafe_commits,
        })
    }

    /// How commits replace older versions of objects.
    pub fn merge_mode(&self) -> MergeMode {
        self.merge
    }

    /// The warehouse root URL, ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The object store of the whole warehouse and the path of its root in it: for files
    /// the runtime keeps beside the tables (the Tracking-API outbox).
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, Path)> {
        // Built by delta-rs, like the tables' stores: the retry options of
        // `[warehouse.options]` (`max_retries`, `retry_timeout`, `backoff_config.*`) are
        // delta-rs's, which object_store's own URL parser would ignore.
        let store = self
            .builder(&self.root)?
            .build_storage()
            .map_err(|e| anyhow!("cannot open the warehouse at {}: {e}", self.root))?
            .object_store(None);
        Ok((store, Path::default()))
    }

    /// Checks that the store refuses a create-if-absent put of an object that exists, which
    /// is what makes a commit atomic (of two writers committing one version, exactly one
    /// lands). Puts a probe object under `_tributary/conditional_put/` twice, the second
    /// time expecting "already exists", then deletes it. A local directory always refuses
    /// (object_store links the file into place) and is not probed; nor is any store when
    /// `allow_unsafe_commits` is set. Errors when the store overwrote the probe or does
    /// not support the put at all, naming what to fix.
    pub async fn check_conditional_put(&self) -> Result<()> {
        if self.allow_unsafe_commits || matches!(self.root.scheme(), "file" | "memory") {
            return Ok(());
        }
        let (store, root) = self.store()?;
        check_conditional_put(store.as_ref(), &root, &self.root).await
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
        // A local table that is not there is not created by looking (previews read only).
        if url.scheme() == "file" && url.to_file_path().is_ok_and(|p| !p.exists()) {
            return Ok(None);
        }
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
            // One attempt, at version 0 only. When another writer created the table between
            // the check above and this commit, delta-rs would otherwise retry the creation
            // as the next version: a second table definition on top of theirs, which resets
            // the protocol (dropping deletion vectors another writer may have enabled).
            .with_commit_properties(CommitProperties::default().with_max_retries(0));
        let created = created.await;
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

fn no_conditional_put(url: &Url) -> anyhow::Error {
    anyhow!(
        "the object store at {url} does not support create-if-absent puts, which commits need to stay atomic when two runs write one table; enable them (on S3: `aws_conditional_put = \"etag\"` in `[warehouse.options]`)"
    )
}

/// [`Warehouse::check_conditional_put`] on `store`, whose root `root` is `url`.
async fn check_conditional_put(store: &dyn ObjectStore, root: &Path, url: &Url) -> Result<()> {
    let probe = root
        .clone()
        .join("_tributary")
        .join("conditional_put")
        .join(format!("{}.json", uuid::Uuid::new_v4()));
    let create = || PutOptions::from(PutMode::Create);
    match store.put_opts(&probe, "{}".into(), create()).await {
        // A fresh name exists only if this very put landed and its answer was lost.
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(object_store::Error::NotImplemented { .. }) => return Err(no_conditional_put(url)),
        Err(e) => bail!(
            "cannot write to the warehouse at {url} (checking its conditional puts): {}",
            store_error(&e)
        ),
    }
    let second = store.put_opts(&probe, "{}".into(), create()).await;
    if let Err(e) = store.delete(&probe).await {
        tracing::warn!(path = %probe, error = %store_error(&e), "Could not delete the conditional-put probe.");
    }
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => bail!(
            "the object store at {url} overwrote an object that a create-if-absent put must leave alone: it ignores the precondition, so two runs committing to one table could overwrite each other's commit and lose data. Nothing was written. Use a store that honours conditional puts; only if a single process ever writes this warehouse, set `warehouse.allow_unsafe_commits = true`"
        ),
        Err(object_store::Error::NotImplemented { .. }) => Err(no_conditional_put(url)),
        Err(e) => bail!(
            "the object store at {url} answered a create-if-absent put of an existing object with an error instead of \"already exists\", so commits cannot tell a lost race from a failure: {}",
            store_error(&e)
        ),
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

/// The text of an object-store error for a user: its own message, which already holds
/// most of its causes, plus the innermost cause when the message leaves it out (a timeout
/// reads "error sending request" until its cause says "operation timed out").
pub fn store_error(e: &(dyn std::error::Error + 'static)) -> String {
    let text = e.to_string();
    let mut root = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    if cause.is_empty() || text.contains(&cause) {
        text
    } else {
        format!("{text} ({cause})")
    }
}

#[cfg(test)]
mod tests {
    use super::store_error;

    mod conditional_put {
        use std::sync::Arc;

        use futures::stream::BoxStream;
        use object_store::memory::InMemory;
        use object_store::path::Path;
        use object_store::{
            CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
            ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
        };
        use url::Url;

        /// A store that takes every put as an overwrite, as emulators that accept a
        /// precondition header and ignore it do.
        #[derive(Debug)]
        struct IgnoresPreconditions(InMemory);

        impl std::fmt::Display for IgnoresPreconditions {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("IgnoresPreconditions")
            }
        }

        #[async_trait::async_trait]
        impl ObjectStore for IgnoresPreconditions {
            async fn put_opts(
                &self,
                location: &Path,
                payload: PutPayload,
                opts: PutOptions,
            ) -> Result<PutResult> {
                let opts = PutOptions {
                    mode: PutMode::Overwrite,
                    ..opts
                };
                self.0.put_opts(location, payload, opts).await
            }
            async fn put_multipart_opts(
                &self,
                location: &Path,
                opts: PutMultipartOptions,
            ) -> Result<Box<dyn MultipartUpload>> {
                self.0.put_multipart_opts(location, opts).await
            }
            async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
                self.0.get_opts(location, options).await
            }
            fn delete_stream(
                &self,
                locations: BoxStream<'static, Result<Path>>,
            ) -> BoxStream<'static, Result<Path>> {
                self.0.delete_stream(locations)
            }
            fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
                self.0.list(prefix)
            }
            async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
                self.0.list_with_delimiter(prefix).await
            }
            async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
                self.0.copy_opts(from, to, options).await
            }
        }

        fn url() -> Url {
            Url::parse("gs://lake/raw/").unwrap()
        }

        async fn leftovers(store: &dyn ObjectStore) -> usize {
            use futures::TryStreamExt;
            store
                .list(None)
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len()
        }

        #[tokio::test]
        async fn a_store_that_refuses_to_overwrite_passes_and_keeps_nothing() {
            let store = InMemory::new();
            super::super::check_conditional_put(&store, &Path::from("raw"), &url())
                .await
                .unwrap();
            assert_eq!(leftovers(&store).await, 0, "the probe is deleted");
        }

        #[tokio::test]
        async fn a_store_that_ignores_the_precondition_is_refused_by_name() {
            let store = Arc::new(IgnoresPreconditions(InMemory::new()));
            let e = super::super::check_conditional_put(store.as_ref(), &Path::from("raw"), &url())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("gs://lake/raw/")
                    && e.contains("ignores the precondition")
                    && e.contains("warehouse.allow_unsafe_commits"),
                "{e}"
            );
            assert_eq!(leftovers(store.as_ref()).await, 0, "the probe is deleted");
        }

        #[tokio::test]
        async fn local_warehouses_and_the_opt_out_are_not_probed() {
            let dir = tempfile::tempdir().unwrap();
            let local = super::super::Warehouse::new(&crate::config::WarehouseConfig {
                url: dir.path().to_string_lossy().into(),
                ..Default::default()
            })
            .unwrap();
            local.check_conditional_put().await.unwrap();
            assert!(!dir.path().join("_tributary").exists());
            // An S3 bucket nobody can reach: only skipping the probe can pass.
            let opted_out = super::super::Warehouse::new(&crate::config::WarehouseConfig {
                url: "s3://nowhere/raw".into(),
                options: [
                    ("aws_endpoint".to_owned(), "http://127.0.0.1:9".to_owned()),
                    ("aws_region".to_owned(), "us-east-1".to_owned()),
                ]
                .into(),
                allow_unsafe_commits: true,
                ..Default::default()
            })
            .unwrap();
            opted_out.check_conditional_put().await.unwrap();
        }
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_store_error_says_its_root_cause_once() {
        let timeout = E(
            "Error performing PUT - HTTP error: error sending request",
            Some(Box::new(E(
                "error sending request",
                Some(Box::new(E("operation timed out", None))),
            ))),
        );
        assert_eq!(
            store_error(&timeout),
            "Error performing PUT - HTTP error: error sending request (operation timed out)"
        );
        let status = E(
            "Error performing PUT - 503 Service Unavailable",
            Some(Box::new(E("503 Service Unavailable", None))),
        );
        assert_eq!(
            store_error(&status),
            "Error performing PUT - 503 Service Unavailable"
        );
    }
}
