//! The TOML configuration: the warehouse, the sync tuning and the sources.
//!
//! Every error a user can make here names the file and the key to fix: unknown keys,
//! a bad cron expression, a `${VAR}` that is not set, a source type nobody registered.
//! Secrets are written as `${ENV_VAR}` or `${file:/path}` references and resolved here;
//! the resolved values only ever reach the connector's `Secret` fields.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tributary_sdk::options::check_range;

/// The default schedule: every three hours, on the hour.
pub const DEFAULT_SCHEDULE: &str = "0 */3 * * *";

/// The most rows `sync.batch_size` accepts (a batch is converted in memory).
pub const MAX_BATCH_SIZE: u64 = 1_048_576;
/// The most rows `sync.row_group_size` accepts (Parquet writers' usual maximum; the row
/// group is buffered in memory).
pub const MAX_ROW_GROUP_SIZE: u64 = 1_048_576;
/// The most rows `sync.commit_every` accepts.
pub const MAX_COMMIT_EVERY: u64 = 100_000_000;
/// The longest `sync.lease_seconds` (a day).
pub const MAX_LEASE_SECONDS: u64 = 86_400;
/// The most streams `sync.concurrency` runs at once.
pub const MAX_CONCURRENCY: u64 = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the tables land.
    #[serde(default)]
    pub warehouse: WarehouseConfig,
    /// Tuning of the sync engine.
    #[serde(default)]
    pub sync: SyncConfig,
    /// The sources, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, toml::Table>,
    /// `[serve]`: the event collector.
    #[serde(default)]
    pub serve: crate::collector::config::ServeConfig,
}

/// `[warehouse]`: where the tables land.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// A local path or a `file://`, `s3://`, `gs://` or `az://` URL. Tables land at
    /// `<url>/<source>/<stream>/`. Default `./warehouse`.
    #[serde(default = "default_warehouse_url")]
    pub url: String,
    /// object_store options, with object_store's own keys (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_allow_http`, `google_service_account`, …). Values may be
    /// `${ENV_VAR}` references.
    #[serde(default)]
    pub options: HashMap<String, String>,
    /// How a sync replaces older versions of objects in their tables:
    /// `"deletion-vectors"` (default; a few bytes per sync, read by Spark, Databricks,
    /// DuckDB, Trino) or `"copy-on-write"` (rewrites the touched files; readable by every
    /// Delta reader, e.g. Snowflake and BigQuery).
    #[serde(default)]
    pub merge: crate::warehouse::MergeMode,
    /// Commit without checking that the store refuses to overwrite an object that exists.
    /// Before its first commit, `sync` and `compact` check that the store turns down a
    /// create-if-absent put of an existing object (what keeps two writers from overwriting
    /// each other's commit), and refuse to write when it does not. `true` skips the check:
    /// only for a store known to lack conditional puts that one process at a time writes.
    /// Default `false`.
    #[serde(default)]
    pub allow_unsafe_commits: bool,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            url: default_warehouse_url(),
            options: HashMap::new(),
            merge: Default::default(),
            allow_unsafe_commits: false,
        }
    }
}

fn default_warehouse_url() -> String {
    "./warehouse".to_owned()
}

/// `[sync]`: how the engine batches and commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Rows per Arrow batch handed to the Parquet writer, from 1 to 1048576. Bounds the
    /// memory of conversion.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Columns one run may add to a stream's table (fields the vendor added), from 0 to
    /// 100000. Fields past it, and fields whose column name would be over 255 bytes, are
    /// kept in `_rescued_data` and counted in the summary: a record with thousands of
    /// distinct keys cannot blow up the table's schema. Default 1000.
    #[serde(default = "default_max_new_columns")]
    pub max_new_columns: usize,
    /// Rows per Parquet row group, from 1 to 1048576 (64k–128k keeps the writer's buffer
    /// bounded). A row group also closes once it holds 16 MiB in the writer, so wide rows
    /// stay bounded too.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// Rows per table commit. Each commit carries the stream's cursor, so a run that dies
    /// resumes from the last commit; smaller means less to redo, more small files. From 1
    /// to 100000000.
    #[serde(default = "default_commit_every")]
    pub commit_every: u64,
    /// Streams of one source synced at the same time, from 1 to 64.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The largest vendor answer read, in MiB after decompression (1 to 4096, default
    /// 256): a larger one fails its stream instead of exhausting memory.
    #[serde(default = "default_max_response_mb")]
    pub max_response_mb: u64,
    /// Seconds a stream's lease lives without renewal, from 1 to 86400 (default 300).
    /// Before syncing a stream a worker takes its lease in the warehouse and renews it
    /// every third of this; another worker skips the stream (status `leased`) while the
    /// lease is live. A killed worker's streams wait this long before another takes them
    /// over. Must be well above the clock differences between workers.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Take a lease on each stream (and reverse-ETL model) before syncing it. Default
    /// `true`. `false` skips the lease objects, for a scheduler that never starts two runs
    /// of one stream at once (one `run` daemon; Kubernetes `concurrencyPolicy: Forbid`):
    /// overlapping runs are then not skipped, and the commits still refuse the second
    /// writer of a version (it fails with "another writer committed").
    #[serde(default = "default_leases")]
    pub leases: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_size: default_batch_size(),
            max_new_columns: default_max_new_columns(),
            row_group_size: default_row_group_size(),
            commit_every: default_commit_every(),
            concurrency: default_concurrency(),
            max_response_mb: default_max_response_mb(),
            lease_seconds: default_lease_seconds(),
            leases: true,
        }
    }
}

fn default_batch_size() -> usize {
    8192
}
fn default_max_new_columns() -> usize {
    tributary_sdk::convert::DEFAULT_MAX_NEW_COLUMNS
}
fn default_row_group_size() -> usize {
    65_536
}
fn default_commit_every() -> u64 {
    250_000
}
fn default_concurrency() -> usize {
    4
}
fn default_leases() -> bool {
    true
}
fn default_lease_seconds() -> u64 {
    crate::lease::DEFAULT_LEASE_SECONDS
}
fn default_max_response_mb() -> u64 {
    tributary_sdk::http::DEFAULT_MAX_BODY_BYTES / (1024 * 1024)
}

/// The keys of `[sources.<name>]` the runtime reads itself; every other key belongs to
/// the connector.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The source's name (`[sources.<name>]`), also the first level of its tables' path.
    pub name: String,
    /// The connector type (`stripe`).
    pub kind: String,
    /// When `run` syncs it.
    pub schedule: Schedule,
    /// The streams to sync; `None` means all.
    pub streams: Option<Vec<String>>,
    /// The connector's own options, `${…}` resolved.
    pub options: serde_json::Value,
    /// `[sources.<name>.tracking]`: where its event streams' messages go; `None` when the
    /// source only lands tables.
    pub tracking: Option<TrackingConfig>,
    /// `history = true`: besides the latest-state table, each object stream keeps every
    /// distinct version it landed in an append-only `<stream>_history` table.
    pub history: bool,
}

/// `[sources.<name>.tracking]`: deliver the source's event streams as Tracking-API
/// messages to a Segment-compatible collector.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    /// The collector's base URL; messages go to `{endpoint}/v1/batch`. Default
    /// `https://api.segment.io`.
    pub endpoint: String,
    /// The collector's write key (a secret; write it as `${ENV_VAR}`).
    pub write_key: tributary_sdk::Secret,
    /// Set to `false` to stop sending (and queueing) without removing the section. Default
    /// `true`.
    pub enabled: bool,
}

/// Whether an object_store option holds a credential (`aws_secret_access_key`,
/// `azure_storage_sas_key`, `google_service_account_key`, a session token, …).
fn is_credential_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "password", "sas", "_key", "credential"]
        .iter()
        .any(|word| key.contains(word))
        && !key.ends_with("key_id")
}

/// Reads `[sources.<name>.tracking]` (`at` is `sources.<name>.tracking`).
fn parse_tracking(value: toml::Value, at: &str, file: &str) -> Result<TrackingConfig> {
    let toml::Value::Table(table) = value else {
        bail!(
            "{file}: `{at}` must be a table with `write_key` (and optionally `endpoint`, `enabled`)"
        );
    };
    let mut endpoint = crate::tracking::client::DEFAULT_ENDPOINT.to_owned();
    let mut write_key = None;
    let mut enabled = true;
    for (key, value) in table {
        let here = format!("{at}.{key}");
        match (key.as_str(), value) {
            ("endpoint", toml::Value::String(s)) => endpoint = resolve_str(&s, &here, file)?,
            ("write_key", toml::Value::String(s)) => {
                write_key = Some(tributary_sdk::Secret::new(resolve_str(&s, &here, file)?))
            }
            ("enabled", toml::Value::Boolean(b)) => enabled = b,
            ("endpoint" | "write_key", _) => bail!("{file}: `{here}` must be a string"),
            ("enabled", _) => bail!("{file}: `{here}` must be true or false"),
            _ => bail!(
                "{file}: unknown key `{here}`; `{at}` takes `endpoint`, `write_key` and `enabled`"
            ),
        }
    }
    let Some(write_key) = write_key.filter(|k| !k.expose().is_empty()) else {
        bail!(
            "{file}: `{at}.write_key` is missing or empty; write e.g. write_key = \"${{SEGMENT_WRITE_KEY}}\""
        );
    };
    // The write key travels in every request's Authorization header: https only (http to
    // a loopback collector for tests), and no user:password in the URL.
    let endpoint =
        tributary_sdk::endpoint::base_url(&format!("{at}.endpoint"), &endpoint, "`write_key`")
            .map_err(|e| anyhow::anyhow!("{file}: {e}; write e.g. \"https://api.segment.io\""))?;
    Ok(TrackingConfig {
        endpoint,
        write_key,
        enabled,
    })
}

/// A parsed cron schedule with the text the user wrote.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written (5-field or 6-field cron).
    pub text: String,
    /// Parsed.
    pub cron: cron::Schedule,
}

impl Schedule {
    /// Parses a cron expression: standard 5 fields (`min hour dom mon dow`) or 6 with
    /// seconds first.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        let full = match fields {
            5 => {
                // Standard cron (crontab(5)) numbers the days of the week 0-7 with Sunday 0
                // and 7; the `cron` crate 1-7 with Sunday 1. Five fields are standard cron.
                let parts: Vec<&str> = text.split_whitespace().collect();
                let dow = standard_days_of_week(parts[4])
                    .map_err(|e| format!("`{text}`: the day of the week: {e}"))?;
                format!("0 {} {dow}", parts[..4].join(" "))
            }
            6 | 7 => text.to_owned(),
            _ => {
                return Err(format!(
                    "`{text}` has {fields} fields; write 5 (minute hour day-of-month month day-of-week), e.g. \"{DEFAULT_SCHEDULE}\""
                ));
            }
        };
        let cron = cron::Schedule::from_str(&full).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Schedule {
            text: text.to_owned(),
            cron,
        })
    }
}

/// A standard-cron day-of-week field (`1-5`, `0,6`, `MON-FRI`, `*/2`, `5-7`; Sunday is 0
/// or 7) as the `cron` crate reads it (Sunday 1): the days it names, as a list.
fn standard_days_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_owned());
    }
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let day = |s: &str| -> Result<u32, String> {
        if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(format!(
                "`{s}` is not a day (0-7 with Sunday 0 or 7, or SUN-SAT)"
            )),
        }
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("`{item}`: the step must be a positive number"))?,
            ),
            None => (item, 1),
        };
        let (from, to) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None if step > 1 => (day(r)?, 6),
                None => (day(r)?, day(r)?),
            },
        };
        if from > to {
            return Err(format!("`{item}`: the range runs backwards"));
        }
        for d in (from..=to).step_by(step as usize) {
            days[(d % 7) as usize] = true;
        }
    }
    Ok(days
        .iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(d, _)| (d + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// A loaded configuration: the file's path (for error messages) and its parts.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// `[warehouse]`, resolved.
    pub warehouse: WarehouseConfig,
    /// `[sync]`.
    pub sync: SyncConfig,
    /// The cloud-app sources, in name order.
    pub sources: Vec<SourceConfig>,
    /// The reverse-ETL sources (`type = "postgres"` or `"delta"`), in name order.
    pub retl: Vec<crate::retl::config::RetlSource>,
    /// The event-stream sources (`type = "http"`, …), in name order: `serve` collects
    /// their messages; the sync commands pass them by.
    pub events: Vec<crate::collector::config::EventSource>,
    /// `[serve]`.
    pub serve: crate::collector::config::ServeConfig,
}

impl Loaded {
    /// Whether a command over `only` (or every source) covers cloud-app sources: not when
    /// `only` is a reverse-ETL source, nor when every configured source is one.
    pub fn selects_cloud(&self, only: Option<&str>) -> bool {
        match only {
            Some(name) => {
                self.retl_source(name).is_none() && !self.events.iter().any(|e| e.name == name)
            }
            None => !self.sources.is_empty() || (self.retl.is_empty() && self.events.is_empty()),
        }
    }

    /// The reverse-ETL sources a command over `only` (or every source) covers.
    pub fn selected_retl(&self, only: Option<&str>) -> Vec<&crate::retl::config::RetlSource> {
        match only {
            Some(name) => self.retl_source(name).into_iter().collect(),
            None => self.retl.iter().collect(),
        }
    }

    /// The reverse-ETL source called `name`, if it is one.
    pub fn retl_source(&self, name: &str) -> Option<&crate::retl::config::RetlSource> {
        self.retl.iter().find(|s| s.name == name)
    }

    /// The source called `name`, or an error listing the ones that exist.
    pub fn source(&self, name: &str) -> Result<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow!(
                "{}: there is no source `{name}`; configured sources: {}",
                self.path.display(),
                self.sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the config file {} (pass --config FILE, or copy config.example.toml to ./tributary.toml)",
            path.display()
        )
    })?;
    parse(&text, path)
}

/// Parses configuration text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Loaded> {
    let file = path.display();
    let doc: toml::Table = toml::from_str(text).map_err(|e| syntax_error(&file, text, &e))?;
    // Typed through the SDK's reader: errors name the key's full path, never its value.
    let config: Config = tributary_sdk::options::from_value(plain_json(toml::Value::Table(doc)))
        .map_err(|e| anyhow!("{file}: {e}"))?;
    let mut warehouse = config.warehouse;
    if warehouse.url.trim().is_empty() {
        bail!("{file}: `warehouse.url` is empty; give a path or an s3://, gs://, az:// URL");
    }
    warehouse.url = resolve_str(&warehouse.url, "warehouse.url", &file.to_string())?;
    for (k, v) in warehouse.options.iter_mut() {
        *v = resolve_str(v, &format!("warehouse.options.{k}"), &file.to_string())?;
        // The store's credentials: masked wherever an error or log line would carry them.
        if is_credential_option(k) {
            tributary_sdk::secret::register(v);
        }
    }
    let sync = config.sync;
    let in_range = |key: &str, value: u64, max: u64| {
        check_range(key, value, 1, max).map_err(|e| anyhow!("{file}: {e}"))
    };
    in_range("sync.batch_size", sync.batch_size as u64, MAX_BATCH_SIZE)?;
    in_range(
        "sync.row_group_size",
        sync.row_group_size as u64,
        MAX_ROW_GROUP_SIZE,
    )?;
    in_range("sync.commit_every", sync.commit_every, MAX_COMMIT_EVERY)?;
    in_range("sync.concurrency", sync.concurrency as u64, MAX_CONCURRENCY)?;
    // MiB after decompression; see the SDK's `http::set_max_body_bytes`.
    in_range("sync.max_response_mb", sync.max_response_mb, 4096)?;
    in_range("sync.lease_seconds", sync.lease_seconds, MAX_LEASE_SECONDS)?;
    check_range("sync.max_new_columns", sync.max_new_columns, 0, 100_000)
        .map_err(|e| anyhow!("{file}: {e}"))?;
    config.serve.validate(&file.to_string())?;
    let mut sources = Vec::new();
    let mut retl = Vec::new();
    let mut events = Vec::new();
    for (name, mut table) in config.sources {
        let at = format!("sources.{name}");
        if !crate::warehouse::is_path_segment(&name) {
            bail!(
                "{file}: `[{at}]`: a source name must be lowercase letters, digits, `_` or `-` (it becomes a folder of the warehouse)"
            );
        }
        let kind = match table.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(_) => bail!("{file}: `{at}.type` must be a string such as \"stripe\""),
            None => bail!("{file}: `[{at}]` has no `type`; add e.g. type = \"stripe\""),
        };
        if crate::collector::config::KINDS.contains(&kind.as_str()) {
            let file = file.to_string();
            events.push(crate::collector::config::parse(
                name.clone(),
                kind,
                table,
                &at,
                &file,
                |s, here| resolve_str(s, here, &file),
            )?);
            continue;
        }
        let schedule = match table.remove("schedule") {
            Some(toml::Value::String(s)) => {
                Schedule::parse(&s).map_err(|e| anyhow!("{file}: `{at}.schedule`: {e}"))?
            }
            Some(_) => bail!("{file}: `{at}.schedule` must be a cron expression in a string"),
            None => Schedule::parse(DEFAULT_SCHEDULE).map_err(|e| anyhow!(e))?,
        };
        let tracking = match table.remove("tracking") {
            Some(value) => Some(parse_tracking(
                value,
                &format!("{at}.tracking"),
                &file.to_string(),
            )?),
            None => None,
        };
        if crate::retl::config::KINDS.contains(&kind.as_str()) {
            for key in ["streams", "history"] {
                if table.contains_key(key) {
                    bail!(
                        "{file}: `{at}.{key}` is for cloud-app sources; a reverse-ETL source (type \"{kind}\") has `models`"
                    );
                }
            }
            let options = resolve_value(toml::Value::Table(table), &at, &file.to_string())?;
            retl.push(crate::retl::config::parse(
                name,
                &kind,
                schedule,
                tracking,
                options,
                &warehouse,
                &file.to_string(),
            )?);
            continue;
        }
        let streams = match table.remove("streams") {
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        _ => bail!("{file}: `{at}.streams` must be a list of stream names"),
                    }
                }
                if out.is_empty() {
                    bail!("{file}: `{at}.streams` is empty; remove it to sync every stream");
                }
                Some(out)
            }
            Some(_) => bail!("{file}: `{at}.streams` must be a list of stream names"),
            None => None,
        };
        let history = match table.remove("history") {
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => bail!("{file}: `{at}.history` must be true or false"),
            None => false,
        };
        let options = resolve_value(toml::Value::Table(table), &at, &file.to_string())?;
        sources.push(SourceConfig {
            name,
            kind,
            schedule,
            streams,
            options,
            tracking,
            history,
        });
    }
    Ok(Loaded {
        path: path.to_owned(),
        warehouse,
        sync,
        sources,
        retl,
        events,
        serve: config.serve,
    })
}

/// A TOML syntax error as `file:line:column: message`. toml's own rendering quotes the
/// offending line, which may hold a secret written in the file; this one does not.
fn syntax_error(file: &dyn std::fmt::Display, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow!("{file}:{line}:{column}: {message}")
        }
        None => anyhow!("{file}: {message}"),
    }
}

/// The keys of a `[sources.<name>]` section the runtime reads; the rest are the connector's
/// options.
pub(crate) const RUNTIME_KEYS: [&str; 5] = ["type", "schedule", "tracking", "streams", "history"];

/// Converts TOML to JSON as written (no `${…}` resolution).
pub(crate) fn plain_json(value: toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Value::from(f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(plain_json).collect())
        }
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, plain_json(v))).collect())
        }
    }
}

/// Converts TOML to JSON, resolving `${…}` references in every string.
fn resolve_value(value: toml::Value, at: &str, file: &str) -> Result<serde_json::Value> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(resolve_str(&s, at, file)?),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Value::from(f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| resolve_value(v, &format!("{at}[{i}]"), file))
                .collect::<Result<_>>()?,
        ),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.into_iter()
                .map(|(k, v)| {
                    let inner = format!("{at}.{k}");
                    Ok((k, resolve_value(v, &inner, file)?))
                })
                .collect::<Result<_>>()?,
        ),
    })
}

/// Resolves `${VAR}`, `${VAR:-default}` and `${file:/path}` references in `s`.
pub fn resolve_str(s: &str, at: &str, file: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow!("{file}: `{at}`: `${{` without a closing `}}`"))?;
        let reference = &after[..end];
        if let Some(p) = reference.strip_prefix("file:") {
            let content = std::fs::read_to_string(p).map_err(|e| {
                anyhow!("{file}: `{at}` refers to the file {p}, which cannot be read: {e}")
            })?;
            out.push_str(content.trim_end_matches(['\n', '\r']));
        } else {
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("{file}: `{at}`: `${{{reference}}}` is not an environment variable name");
            }
            match (std::env::var(name), default) {
                (Ok(v), _) if !v.is_empty() => out.push_str(&v),
                _ if default.is_some() => out.push_str(default.unwrap_or_default()),
                _ => bail!(
                    "{file}: `{at}` refers to the environment variable {name}, which is not set; export it or write the value"
                ),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("t.toml")).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_full_config() {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("TRIBUTARY_TEST_KEY", "sk_test_1") };
        let c = parse(
            r#"
            [warehouse]
            url = "s3://bucket/prefix"
            options = { aws_region = "us-east-1" }
            [sync]
            batch_size = 100
            [sources.stripe]
            type = "stripe"
            schedule = "*/15 * * * *"
            streams = ["charges"]
            api_key = "${TRIBUTARY_TEST_KEY}"
            api_base = "${TRIBUTARY_UNSET_BASE:-http://127.0.0.1:1}"
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.warehouse.url, "s3://bucket/prefix");
        assert!(
            !c.warehouse.allow_unsafe_commits,
            "commits are checked by default"
        );
        assert_eq!(c.sync.batch_size, 100);
        let s = &c.sources[0];
        assert_eq!((s.name.as_str(), s.kind.as_str()), ("stripe", "stripe"));
        assert_eq!(s.streams.as_deref(), Some(&["charges".to_owned()][..]));
        assert_eq!(s.options["api_key"], "sk_test_1");
        assert_eq!(s.options["api_base"], "http://127.0.0.1:1");
        assert!(s.options.get("type").is_none());
    }

    #[test]
    fn errors_name_the_key_and_file() {
        let e = err("[warehouse]\nurl = \"x\"\nbucket = \"y\"\n");
        assert!(
            e.contains("t.toml") && e.contains("unknown field `bucket`"),
            "{e}"
        );
        let e = err("[sources.s]\ntype = \"stripe\"\nschedule = \"every hour\"\n");
        assert!(e.contains("`sources.s.schedule`"), "{e}");
        let e = err("[sources.s]\ntype = \"stripe\"\nschedule = \"61 * * * *\"\n");
        assert!(e.contains("`sources.s.schedule`"), "{e}");
        let e = err("[sources.s]\napi_key = \"x\"\n");
        assert!(e.contains("has no `type`"), "{e}");
        let e = err("[sources.s]\ntype = \"stripe\"\napi_key = \"${TRIBUTARY_SURELY_UNSET}\"\n");
        assert!(
            e.contains("`sources.s.api_key`") && e.contains("TRIBUTARY_SURELY_UNSET"),
            "{e}"
        );
        let e = err("[sources.S]\ntype = \"stripe\"\n");
        assert!(e.contains("source name"), "{e}");
        let e = err("[sync]\ncommit_every = 0\n");
        assert!(e.contains("commit_every"), "{e}");
    }

    #[test]
    fn sync_numbers_are_bounded_and_name_their_key() {
        for (line, key, range) in [
            ("batch_size = 0", "sync.batch_size", "between 1 and 1048576"),
            (
                "batch_size = 2000000",
                "sync.batch_size",
                "between 1 and 1048576",
            ),
            (
                "row_group_size = 0",
                "sync.row_group_size",
                "between 1 and 1048576",
            ),
            (
                "commit_every = 0",
                "sync.commit_every",
                "between 1 and 100000000",
            ),
            ("concurrency = 0", "sync.concurrency", "between 1 and 64"),
            ("concurrency = 1000", "sync.concurrency", "between 1 and 64"),
            (
                "lease_seconds = 0",
                "sync.lease_seconds",
                "between 1 and 86400",
            ),
            (
                "lease_seconds = 100000",
                "sync.lease_seconds",
                "between 1 and 86400",
            ),
        ] {
            let e = err(&format!("[sync]\n{line}\n"));
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(range),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_path_and_never_the_value() {
        let e = err("[sync]\nbatch_size = \"sk_live_in_the_wrong_place\"\n");
        assert!(!e.contains("sk_live"), "{e}");
        assert!(
            e.contains("`sync.batch_size`") && e.contains("found text"),
            "{e}"
        );
        let e = err("[warehouse]\noptions = { aws_region = 5 }\n");
        assert!(e.contains("`warehouse.options.aws_region`"), "{e}");
        let e = err("[sync]\nbatch_size = \"sk_live_unterminated\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(!e.contains("sk_live"), "{e}");
        let e = err(
            "[sources.s]\ntype = \"stripe\"\n[sources.s.tracking]\nwrite_key = \"wk_123456\"\nendpoint = \"sk_live_not_a_url\"\n",
        );
        assert!(
            e.contains("`sources.s.tracking.endpoint`") && !e.contains("sk_live"),
            "{e}"
        );
    }

    #[test]
    fn default_schedule_is_every_three_hours() {
        let c = parse("[sources.s]\ntype = \"stripe\"\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.sources[0].schedule.text, DEFAULT_SCHEDULE);
        assert_eq!(c.warehouse.url, "./warehouse");
    }
}

/// config.example.toml is the configuration reference: it must parse, every source in it
/// must build, every key it shows (commented out or not) must be one the config accepts,
/// and every key must carry a comment saying what it does.
#[cfg(test)]
mod example_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    /// The example with its `${VAR}` secrets replaced by literal test values.
    fn resolved(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            let name = &rest[start + 2..start + end];
            out.push_str(if name.contains("STRIPE") {
                "sk_test_example"
            } else {
                "test-secret-value"
            });
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// `# key = value` (or `key = value`): the key, if the line is one.
    fn key_of(line: &str) -> Option<&str> {
        let body = line.trim_start_matches('#').trim_start();
        let (key, value) = body.split_once(" = ")?;
        let key = key.trim();
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.\"".contains(c));
        (valid
            && toml::from_str::<toml::Table>(&format!("k = {}", value.split(" #").next()?)).is_ok())
        .then_some(key)
    }

    fn builds(text: &str) -> Result<()> {
        let loaded = parse(&resolved(text), Path::new("config.example.toml"))?;
        crate::registry::prepare_all(&loaded, None).map(drop)
    }

    #[test]
    fn the_example_parses_and_its_sources_build() {
        builds(EXAMPLE).unwrap();
    }

    #[test]
    fn every_key_shown_is_accepted() {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let mut checked = 0;
        for (n, line) in lines.iter().enumerate() {
            if !line.starts_with('#') || key_of(line).is_none() {
                continue;
            }
            // The commented key switched on: in its section, with a commented section
            // header switched on too, together with the section's other commented keys
            // when the header was commented (a section needs its required keys).
            let header = lines[..n]
                .iter()
                .rposition(|l| l.trim_start_matches("# ").starts_with('['))
                .unwrap();
            let header_commented = lines[header].starts_with('#');
            let variant: Vec<String> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let in_section = i > header
                        && !lines[header + 1..=i]
                            .iter()
                            .any(|x| x.trim_start_matches("# ").starts_with('['));
                    let on = i == n
                        || (header_commented && i == header)
                        || (header_commented && in_section && key_of(l).is_some());
                    if on {
                        l.trim_start_matches('#').trim_start().to_owned()
                    } else {
                        (*l).to_owned()
                    }
                })
                .collect();
            let key = key_of(line).unwrap();
            match builds(&variant.join("\n")) {
                Ok(()) => {}
                Err(e) => {
                    let message = format!("{e:#}");
                    // Alternatives (e.g. two ways to authenticate) may conflict with the
                    // keys already set; a key the config does not know may not appear.
                    assert!(
                        !message.contains("unknown"),
                        "line {}: `{key}` is not a key the config accepts: {message}",
                        n + 1
                    );
                }
            }
            checked += 1;
        }
        assert!(checked > 40, "{checked} commented keys checked");
    }

    #[test]
    fn every_key_is_documented_by_a_comment() {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if key_of(line).is_none() || line.trim_start_matches('#').trim_start().starts_with('[')
            {
                continue;
            }
            // The nearest line above that is neither a key nor a section header must be
            // prose.
            let above = lines[..n]
                .iter()
                .rev()
                .find(|l| key_of(l).is_none() && !l.trim_start_matches("# ").starts_with('['))
                .copied()
                .unwrap_or("");
            assert!(
                above.starts_with('#') && !above.trim_start_matches("# ").starts_with('['),
                "line {}: `{}` has no comment above it",
                n + 1,
                key_of(line).unwrap()
            );
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc};

    /// The weekdays (0 = Sunday) a schedule fires on in a week of January 2025.
    fn weekdays(text: &str) -> Vec<u32> {
        let s = Schedule::parse(text).unwrap();
        let start = Utc.with_ymd_and_hms(2025, 1, 5, 0, 0, 0).unwrap(); // a Sunday
        let mut out: Vec<u32> = s
            .cron
            .after(&(start - chrono::Duration::seconds(1)))
            .take_while(|t| *t < start + chrono::Duration::days(7))
            .map(|t| t.weekday().num_days_from_sunday())
            .collect();
        out.dedup();
        out
    }

    #[test]
    fn five_fields_are_standard_cron_with_sunday_zero() {
        assert_eq!(weekdays("0 9 * * 1-5"), [1, 2, 3, 4, 5]);
        assert_eq!(weekdays("0 9 * * MON-FRI"), [1, 2, 3, 4, 5]);
        assert_eq!(weekdays("0 9 * * 0"), [0]);
        assert_eq!(weekdays("0 9 * * 7"), [0]);
        assert_eq!(weekdays("0 9 * * 5-7"), [0, 5, 6]);
        assert_eq!(weekdays("0 9 * * 0,6"), [0, 6]);
        assert_eq!(weekdays("0 9 * * */3"), [0, 3, 6]);
        assert_eq!(weekdays("0 9 * * 1/2"), [1, 3, 5]);
        assert_eq!(weekdays("0 9 * * *"), [0, 1, 2, 3, 4, 5, 6]);
        for (bad, says) in [
            ("0 9 * * 8", "not a day"),
            ("0 9 * * 5-2", "backwards"),
            ("0 9 * * */0", "positive"),
            ("0 9 * * FUNDAY", "not a day"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(
                e.contains(says) && e.contains("day of the week"),
                "{bad}: {e}"
            );
        }
    }
}
