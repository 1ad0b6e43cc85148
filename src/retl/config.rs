//! `[sources.<name>]` of `type = "postgres"` or `type = "delta"`: the connection, the
//! models and their mappings. Parsed and validated when the config loads (no connection
//! is made); the columns a mapping names are checked against the model's own columns when
//! it runs (see [`super::Model::check_columns`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use tributary_sdk::Secret;
use tributary_sdk::options::{check_range, from_value};

use super::filter::Filter;
use crate::config::{Schedule, TrackingConfig};

/// The source types that are reverse-ETL sources.
pub const KINDS: [&str; 2] = ["postgres", "delta"];

/// Changes a model sends by default: Segment's "Added or updated records" (its Reverse ETL
/// mappings offer added, updated, added or updated, and deleted records:
/// https://segment.com/docs/connections/reverse-etl/setup/).
const DEFAULT_SEND: [Change; 2] = [Change::Added, Change::Updated];

/// Changed rows per commit (and per outbox file) by default.
pub const DEFAULT_COMMIT_EVERY: u64 = 10_000;
/// The most changed rows per commit: a commit's messages are held in memory while its
/// outbox file is written, and read back whole when it is delivered.
pub const MAX_COMMIT_EVERY: u64 = 100_000;

/// A reverse-ETL source: where the models are read, and where their messages go.
#[derive(Debug, Clone)]
pub struct RetlSource {
    /// `[sources.<name>]`.
    pub name: String,
    /// When `run` runs its models.
    pub schedule: Schedule,
    /// The collector the messages go to (required).
    pub tracking: TrackingConfig,
    /// What the models are read from.
    pub connection: Connection,
    /// The models, in name order.
    pub models: Vec<Model>,
    /// Changed rows per commit.
    pub commit_every: u64,
}

impl RetlSource {
    /// The model called `name`, or an error listing the ones there are.
    pub fn model(&self, name: &str) -> Result<&Model> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            anyhow!(
                "source `{}` has no model `{name}`; its models: {}",
                self.name,
                self.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// What a reverse-ETL source reads.
#[derive(Debug, Clone)]
pub enum Connection {
    /// A PostgreSQL server.
    Postgres(PostgresConnection),
    /// Delta tables under a URL (our own warehouse by default).
    Delta(DeltaConnection),
}

/// How to reach a PostgreSQL server.
#[derive(Clone)]
pub struct PostgresConnection {
    /// The connection URL (`postgres://user:pass@host:port/db?...`); a secret, it may hold
    /// the password.
    pub url: Secret,
    /// TLS: `disable`, `prefer` or `require`.
    pub tls: TlsMode,
    /// A PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for the connection.
    pub connect_timeout_seconds: u64,
    /// Seconds a model's query may run before the server cancels it.
    pub statement_timeout_seconds: u64,
}

impl std::fmt::Debug for PostgresConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConnection")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Whether the connection to PostgreSQL is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS, with the server's certificate verified against the system's CAs or `ca_file`.
    #[default]
    Require,
}

/// Where the Delta tables of a `delta` source are.
#[derive(Debug, Clone)]
pub struct DeltaConnection {
    /// The folder or bucket URL the models' `table` paths are relative to.
    pub url: String,
    /// object_store options for it.
    pub options: HashMap<String, String>,
}

/// One model: what is read, which column identifies a row, and how a row becomes a call.
#[derive(Debug, Clone)]
pub struct Model {
    /// `[sources.<name>.models.<model>]`.
    pub name: String,
    /// What is read.
    pub query: Query,
    /// The unique identifier column.
    pub id: String,
    /// How a changed row becomes a Tracking-API call.
    pub mapping: Mapping,
}

/// What a model reads.
#[derive(Debug, Clone)]
pub enum Query {
    /// A PostgreSQL query.
    Sql(String),
    /// A Delta table (path relative to the source's `url`, or a URL), optionally only some
    /// columns, optionally filtered.
    Table {
        /// The table's path or URL.
        table: String,
        /// The columns read (all when `None`).
        columns: Option<Vec<String>>,
        /// Rows kept.
        filter: Option<Filter>,
    },
}

/// The kind of call a model sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `identify`: traits of a user.
    Identify,
    /// `track` with a fixed event name or the name in a column.
    Track(EventName),
    /// `group`: traits of a group a user belongs to.
    Group,
}

/// Where a `track` call's event name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventName {
    /// The same name for every row.
    Fixed(String),
    /// The value of this column.
    Column(String),
}

/// A change of a row between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A row whose id was not in the last run (or was deleted since).
    Added,
    /// A row whose content changed.
    Updated,
    /// A row whose id is gone from the model.
    Deleted,
}

impl Change {
    /// `added`, `updated` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }
}

/// Which columns become which fields of the call.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The call.
    pub call: Call,
    /// The column that becomes `userId`.
    pub user_id: Option<String>,
    /// The column that becomes `anonymousId`.
    pub anonymous_id: Option<String>,
    /// The column that becomes `groupId` (group calls).
    pub group_id: Option<String>,
    /// The columns that become `traits` (identify, group) or `properties` (track); every
    /// column when `None`.
    pub payload: Option<Vec<String>>,
    /// The column that becomes `timestamp` (the run's time when `None` or null).
    pub timestamp: Option<String>,
    /// The changes sent; every change is recorded whether sent or not.
    pub send: Vec<Change>,
}

impl Model {
    /// The SQL of a `postgres` model.
    pub fn query_text(&self) -> Option<&str> {
        match &self.query {
            Query::Sql(sql) => Some(sql),
            Query::Table { .. } => None,
        }
    }
}

impl Mapping {
    /// Every column the mapping names, with the key that names it.
    pub fn columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (key, column) in [
            ("user_id", &self.user_id),
            ("anonymous_id", &self.anonymous_id),
            ("group_id", &self.group_id),
            ("timestamp", &self.timestamp),
        ] {
            if let Some(c) = column {
                out.push((key, c.as_str()));
            }
        }
        if let Call::Track(EventName::Column(c)) = &self.call {
            out.push(("event_column", c.as_str()));
        }
        let payload_key = match self.call {
            Call::Track(_) => "properties",
            _ => "traits",
        };
        for c in self.payload.iter().flatten() {
            out.push((payload_key, c.as_str()));
        }
        out
    }

    /// Whether `change` is sent.
    pub fn sends(&self, change: Change) -> bool {
        self.send.contains(&change)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresOptions {
    url: String,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_seconds: u64,
    #[serde(default = "default_statement_timeout")]
    statement_timeout_seconds: u64,
    #[serde(default = "default_commit_every")]
    commit_every: u64,
    #[serde(default)]
    models: BTreeMap<String, ModelOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaOptions {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    options: HashMap<String, String>,
    #[serde(default = "default_commit_every")]
    commit_every: u64,
    #[serde(default)]
    models: BTreeMap<String, ModelOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelOptions {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<String>,
    id: String,
    mapping: MappingOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingOptions {
    call: CallKind,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    event_column: Option<String>,
    #[serde(default)]
    traits: Option<Vec<String>>,
    #[serde(default)]
    properties: Option<Vec<String>>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    send: Option<Vec<Change>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CallKind {
    Identify,
    Track,
    Group,
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_statement_timeout() -> u64 {
    3600
}
fn default_commit_every() -> u64 {
    DEFAULT_COMMIT_EVERY
}

/// Reads the options of reverse-ETL source `name` of type `kind` (one of [`KINDS`]); `at`
/// is `sources.<name>`, `file` the config's path for messages. `warehouse` is the default
/// location of a `delta` source's tables.
pub fn parse(
    name: String,
    kind: &str,
    schedule: Schedule,
    tracking: Option<TrackingConfig>,
    options: serde_json::Value,
    warehouse: &crate::config::WarehouseConfig,
    file: &str,
) -> Result<RetlSource> {
    let at = format!("sources.{name}");
    let tracking = tracking.ok_or_else(|| {
        anyhow!(
            "{file}: `[{at}]` is a reverse-ETL source: its models are sent to a Segment-compatible collector, so it needs `[{at}.tracking]` with `write_key` (and `endpoint`)"
        )
    })?;
    let typed = |e: tributary_sdk::Error| match e {
        tributary_sdk::Error::Config { key, message } => {
            anyhow!("{file}: invalid option `{at}.{key}`: {message}")
        }
        other => anyhow!("{file}: `{at}`: {other}"),
    };
    let (connection, models, commit_every) = match kind {
        "postgres" => {
            let o: PostgresOptions = from_value(options).map_err(typed)?;
            let url = o.url.trim().to_owned();
            let parsed = tokio_postgres::Config::from_str(&url).map_err(|e| {
                anyhow!(
                    "{file}: `{at}.url` is not a PostgreSQL connection URL ({}); write e.g. \"postgres://user:${{PG_PASSWORD}}@db.example.com:5432/app\"",
                    tributary_sdk::secret::scrub(&e.to_string())
                )
            })?;
            if let Some(password) = parsed.get_password() {
                tributary_sdk::secret::register(&String::from_utf8_lossy(password));
            }
            if parsed.get_hosts().is_empty() {
                bail!(
                    "{file}: `{at}.url` names no host; write e.g. \"postgres://user@db.example.com:5432/app\""
                );
            }
            if parsed.get_user().is_none() {
                bail!(
                    "{file}: `{at}.url` names no user; write e.g. \"postgres://reporting@db.example.com/app\""
                );
            }
            check_range(
                &format!("{at}.connect_timeout_seconds"),
                o.connect_timeout_seconds,
                1,
                600,
            )
            .map_err(|e| anyhow!("{file}: {e}"))?;
            check_range(
                &format!("{at}.statement_timeout_seconds"),
                o.statement_timeout_seconds,
                1,
                86_400,
            )
            .map_err(|e| anyhow!("{file}: {e}"))?;
            if let Some(ca) = &o.ca_file
                && !ca.is_file()
            {
                bail!(
                    "{file}: `{at}.ca_file`: {} is not a readable file",
                    ca.display()
                );
            }
            let connection = Connection::Postgres(PostgresConnection {
                url: Secret::new(url),
                tls: o.tls,
                ca_file: o.ca_file,
                connect_timeout_seconds: o.connect_timeout_seconds,
                statement_timeout_seconds: o.statement_timeout_seconds,
            });
            (connection, o.models, o.commit_every)
        }
        _ => {
            let o: DeltaOptions = from_value(options).map_err(typed)?;
            let (url, options) = match o.url {
                Some(url) if !url.trim().is_empty() => (url, o.options),
                Some(_) => bail!(
                    "{file}: `{at}.url` is empty; give the folder or bucket URL of the tables, or remove it to read this config's warehouse"
                ),
                None => {
                    if !o.options.is_empty() {
                        bail!(
                            "{file}: `{at}.options` is set without `{at}.url`; the warehouse's own options are used for its tables"
                        );
                    }
                    (warehouse.url.clone(), warehouse.options.clone())
                }
            };
            (
                Connection::Delta(DeltaConnection { url, options }),
                o.models,
                o.commit_every,
            )
        }
    };
    check_range(
        &format!("{at}.commit_every"),
        commit_every,
        1,
        MAX_COMMIT_EVERY,
    )
    .map_err(|e| anyhow!("{file}: {e}"))?;
    if models.is_empty() {
        bail!(
            "{file}: `[{at}]` has no models; add one, e.g. `[{at}.models.users]` with `query`, `id` and `[{at}.models.users.mapping]`"
        );
    }
    let models = models
        .into_iter()
        .map(|(model, o)| parse_model(&at, kind, model, o, file))
        .collect::<Result<Vec<_>>>()?;
    Ok(RetlSource {
        name,
        schedule,
        tracking,
        connection,
        models,
        commit_every,
    })
}

fn parse_model(at: &str, kind: &str, name: String, o: ModelOptions, file: &str) -> Result<Model> {
    let at = format!("{at}.models.{name}");
    if !crate::warehouse::is_path_segment(&name) {
        bail!(
            "{file}: `[{at}]`: a model name must be lowercase letters, digits, `_` or `-` (it names a folder of the warehouse)"
        );
    }
    let query = match kind {
        "postgres" => {
            if o.table.is_some() || o.columns.is_some() || o.filter.is_some() {
                bail!(
                    "{file}: `{at}`: `table`, `columns` and `filter` are for `delta` sources; a `postgres` model has a `query`"
                );
            }
            match o.query {
                Some(q) if !q.trim().is_empty() => {
                    Query::Sql(q.trim().trim_end_matches(';').trim_end().to_owned())
                }
                _ => bail!(
                    "{file}: `{at}.query` is missing or empty; write the SELECT that picks the model's rows"
                ),
            }
        }
        _ => {
            if o.query.is_some() {
                bail!(
                    "{file}: `{at}.query`: a `delta` model reads a `table` (with optional `columns` and `filter`), not SQL"
                );
            }
            let table = match o.table {
                Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
                _ => bail!(
                    "{file}: `{at}.table` is missing; give the table's path under the source's url, e.g. \"stripe/customers\""
                ),
            };
            if let Some(columns) = &o.columns
                && columns.is_empty()
            {
                bail!("{file}: `{at}.columns` is empty; remove it to read every column");
            }
            let filter = match o.filter {
                Some(f) => {
                    Some(Filter::parse(&f).map_err(|e| anyhow!("{file}: `{at}.filter`: {e}"))?)
                }
                None => None,
            };
            Query::Table {
                table,
                columns: o.columns,
                filter,
            }
        }
    };
    if o.id.trim().is_empty() {
        bail!("{file}: `{at}.id` is empty; name the model's unique identifier column");
    }
    let m = o.mapping;
    let map_at = format!("{at}.mapping");
    let call = match m.call {
        CallKind::Identify | CallKind::Group => {
            if m.event.is_some() || m.event_column.is_some() {
                bail!("{file}: `{map_at}`: `event` and `event_column` are for track calls");
            }
            if m.properties.is_some() {
                bail!(
                    "{file}: `{map_at}.properties`: identify and group calls carry `traits`, not properties"
                );
            }
            if m.call == CallKind::Group {
                if m.group_id.is_none() {
                    bail!(
                        "{file}: `{map_at}`: a group call needs `group_id`, the column holding the group's id"
                    );
                }
                Call::Group
            } else {
                if m.group_id.is_some() {
                    bail!("{file}: `{map_at}.group_id` is for group calls");
                }
                Call::Identify
            }
        }
        CallKind::Track => {
            if m.traits.is_some() {
                bail!("{file}: `{map_at}.traits`: a track call carries `properties`");
            }
            if m.group_id.is_some() {
                bail!("{file}: `{map_at}.group_id` is for group calls");
            }
            match (m.event, m.event_column) {
                (Some(e), None) if !e.trim().is_empty() => Call::Track(EventName::Fixed(e)),
                (None, Some(c)) if !c.trim().is_empty() => Call::Track(EventName::Column(c)),
                (Some(_), Some(_)) => bail!(
                    "{file}: `{map_at}`: give either `event` (one name for every row) or `event_column`, not both"
                ),
                _ => bail!(
                    "{file}: `{map_at}`: a track call needs `event` (e.g. \"Plan Changed\") or `event_column` (the column holding the name)"
                ),
            }
        }
    };
    if m.user_id.is_none() && m.anonymous_id.is_none() {
        bail!(
            "{file}: `{map_at}`: Segment needs `userId` or `anonymousId` on every call; map `user_id` or `anonymous_id` to a column"
        );
    }
    let payload = m.traits.or(m.properties);
    let send = match m.send {
        Some(send) if send.is_empty() => bail!(
            "{file}: `{map_at}.send` is empty; list what to send: \"added\", \"updated\", \"deleted\""
        ),
        Some(mut send) => {
            send.sort_by_key(|c| *c as u8);
            send.dedup();
            send
        }
        None => DEFAULT_SEND.to_vec(),
    };
    Ok(Model {
        name,
        query,
        id: o.id.trim().to_owned(),
        mapping: Mapping {
            call,
            user_id: m.user_id,
            anonymous_id: m.anonymous_id,
            group_id: m.group_id,
            payload,
            timestamp: m.timestamp,
            send,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = "[sources.db]\ntype = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/app\"\n\n[sources.db.tracking]\nwrite_key = \"wk_test_1234\"\n\n[sources.db.models.users]\nquery = \"SELECT id, email FROM users;\"\nid = \"id\"\n\n[sources.db.models.users.mapping]\n";

    fn parse(mapping: &str) -> anyhow::Result<crate::config::Loaded> {
        crate::config::parse(&format!("{BASE}{mapping}"), Path::new("t.toml"))
    }

    fn error(text: &str) -> String {
        match crate::config::parse(text, Path::new("t.toml")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_example_reverse_etl_source_parses() {
        let example = include_str!("../../config.example.toml");
        let start = example
            .find("# [sources.app_db]")
            .expect("the example has it");
        let text: String = example[start..]
            .lines()
            .filter(|l| !l.contains("ca_file"))
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n")
            .replace("${PG_PASSWORD}", "pw-123456")
            .replace("${SEGMENT_WRITE_KEY}", "wk-123456");
        let loaded = crate::config::parse(&text, Path::new("example")).unwrap();
        assert!(loaded.sources.is_empty());
        let source = &loaded.retl[0];
        assert_eq!(source.name, "app_db");
        let model = source.model("users").unwrap();
        assert_eq!(model.id, "id");
        assert_eq!(model.mapping.call, super::Call::Identify);
        assert_eq!(
            model.mapping.send,
            [super::Change::Added, super::Change::Updated]
        );
        assert_eq!(source.schedule.text, "*/30 * * * *");
        // The password is a secret: masked in anything printed.
        assert_eq!(tributary_sdk::secret::scrub("x pw-123456 y"), "x *** y");
        assert!(!format!("{source:?}").contains("pw-123456"));
    }

    #[test]
    fn mappings_are_checked_when_the_config_loads() {
        let ok = parse("call = \"track\"\nevent = \"Plan Changed\"\nanonymous_id = \"id\"\nproperties = [\"email\"]\nsend = [\"deleted\", \"added\", \"added\"]\n").unwrap();
        let m = &ok.retl[0].models[0];
        assert_eq!(
            m.mapping.call,
            super::Call::Track(super::EventName::Fixed("Plan Changed".into()))
        );
        assert_eq!(
            m.mapping.send,
            [super::Change::Added, super::Change::Deleted]
        );
        // The query's trailing semicolon is dropped (it is wrapped in a cursor).
        assert_eq!(m.query_text(), Some("SELECT id, email FROM users"));
        for (mapping, says) in [
            ("call = \"identify\"\n", "map `user_id` or `anonymous_id`"),
            (
                "call = \"group\"\nuser_id = \"id\"\n",
                "a group call needs `group_id`",
            ),
            (
                "call = \"track\"\nuser_id = \"id\"\n",
                "a track call needs `event`",
            ),
            (
                "call = \"track\"\nuser_id = \"id\"\nevent = \"A\"\nevent_column = \"b\"\n",
                "not both",
            ),
            (
                "call = \"identify\"\nuser_id = \"id\"\nproperties = [\"a\"]\n",
                "carry `traits`",
            ),
            (
                "call = \"identify\"\nuser_id = \"id\"\nsend = []\n",
                "`sources.db.models.users.mapping.send` is empty",
            ),
            (
                "call = \"identify\"\nuser_id = \"id\"\nsend = [\"changed\"]\n",
                "sources.db.models.users.mapping.send",
            ),
            (
                "call = \"alias\"\nuser_id = \"id\"\n",
                "sources.db.models.users.mapping.call",
            ),
            (
                "call = \"identify\"\nuser_id = \"id\"\ncolour = \"red\"\n",
                "colour",
            ),
        ] {
            let e = format!("{:#}", parse(mapping).unwrap_err());
            assert!(e.contains(says), "{mapping}: {e}");
        }
    }

    #[test]
    fn source_errors_name_the_key() {
        let no_tracking = BASE.replace("[sources.db.tracking]\nwrite_key = \"wk_test_1234\"\n", "");
        assert!(
            error(&format!(
                "{no_tracking}call = \"identify\"\nuser_id = \"id\"\n"
            ))
            .contains("needs `[sources.db.tracking]`")
        );
        let with = |from: &str, to: &str| {
            format!(
                "{}call = \"identify\"\nuser_id = \"id\"\n",
                BASE.replace(from, to)
            )
        };
        for (text, says) in [
            (
                with("postgres://app@127.0.0.1:5432/app", "mysql://nope"),
                "`sources.db.url` is not a PostgreSQL connection URL",
            ),
            (
                with(
                    "postgres://app@127.0.0.1:5432/app",
                    "postgres://127.0.0.1/app",
                ),
                "names no user",
            ),
            (
                with(
                    "type = \"postgres\"\n",
                    "type = \"postgres\"\ntls = \"maybe\"\n",
                ),
                "sources.db.tls",
            ),
            (
                with(
                    "type = \"postgres\"\n",
                    "type = \"postgres\"\ncommit_every = 0\n",
                ),
                "sources.db.commit_every",
            ),
            (
                with(
                    "type = \"postgres\"\n",
                    "type = \"postgres\"\nca_file = \"/nonexistent/ca.pem\"\n",
                ),
                "is not a readable file",
            ),
            (
                with(
                    "type = \"postgres\"\n",
                    "type = \"postgres\"\nstreams = [\"a\"]\n",
                ),
                "`sources.db.streams` is for cloud-app sources",
            ),
            (
                with(
                    "query = \"SELECT id, email FROM users;\"\n",
                    "table = \"users\"\n",
                ),
                "`table`, `columns` and `filter` are for `delta` sources",
            ),
            (
                with("query = \"SELECT id, email FROM users;\"\n", ""),
                "`sources.db.models.users.query` is missing",
            ),
            (
                with("[sources.db.models.users", "[sources.db.models.Users"),
                "a model name must be lowercase",
            ),
            (
                with("type = \"postgres\"", "type = \"delta\""),
                "a `delta` model reads a `table`",
            ),
            (
                with(
                    "type = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/app\"",
                    "type = \"delta\"",
                )
                .replace(
                    "query = \"SELECT id, email FROM users;\"",
                    "table = \"t\"\nfilter = \"a = 1 OR b = 2\"",
                ),
                "`sources.db.models.users.filter`: conditions are joined by AND",
            ),
        ] {
            let e = error(&text);
            assert!(e.contains(says), "{says}\n{e}");
        }
    }
}
