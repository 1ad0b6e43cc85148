//! The committer: spooled messages into Delta tables in Segment's warehouse schema,
//! exactly once.
//!
//! Tables (<https://segment.com/docs/connections/storage/warehouses/schema/>): one per
//! call type under `<warehouse>/<source>/` (`tracks`, `identifies`, `pages`, `screens`,
//! `groups`, `aliases`), and one per track event name (`order_completed` for "Order
//! Completed"), whose rows also carry the event's properties. Columns: `id` (the
//! messageId), `anonymous_id`, `user_id`, `received_at`, `sent_at`, `original_timestamp`
//! (the client's `timestamp`), `timestamp` (corrected for the client's clock skew, as
//! Segment does: `receivedAt − (sentAt − originalTimestamp)`), `context_*` flattened,
//! `event` (the event's table name) and `event_text` (its name as sent) on tracks,
//! `name` on pages and screens, `group_id` on groups, `previous_id` on aliases, and
//! `properties` (event tables, pages, screens) or `traits` (identifies, groups) as
//! un-prefixed columns; a property named like one of these columns is dropped, as
//! Segment drops it. Nested objects flatten to `parent_child` columns and a new property
//! becomes a new column, by the same converter and schema evolution as the synced tables.
//!
//! **Exactly once.** Each round reads the spooled messages after the last landed one and
//! commits each touched table once, with this collector's position in the spool in that
//! commit (a Delta `txn` of app id `tributary/collector/<collector id>/<source>/<table>`
//! and the last sequence number in the commit's metadata), just as a sync commits a
//! stream's cursor. After a crash the spool is read again from its oldest segment, and a
//! table takes only the messages after its own committed position: a round that died
//! between two tables' commits completes the second without repeating the first.
//! Collectors write with their own app ids and only append, so several can write one
//! warehouse at once.
//!
//! **Deduplication.** A message whose `messageId` (per source) this collector saw within
//! the last 24 hours lands once; ids are remembered in memory (at most
//! `serve.dedupe_capacity`) and, across restarts, in the spool's `seen-<hour>.ids` files
//! (24 bytes a message, written after each round, deleted after 25 hours).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tributary_sdk::convert::{BatchBuilder, Limits};
use tributary_sdk::schema::{Column, ColumnType, StreamKind, StreamSchema, to_column_name};
use tributary_sdk::{Page, Records};

use super::config::ServeConfig;
use super::message::Call;
use super::spool::{self, Progress, Reader, Record};
use crate::warehouse::{SnapshotStep, StreamTable, Warehouse};

/// How long a messageId is remembered.
const DEDUPE_WINDOW_MICROS: i64 = 24 * 3600 * 1_000_000;
/// The most event tables one source gets; later event names land in `tracks` only.
pub const MAX_EVENT_TABLES: usize = 1000;
/// The most message text one landing round reads from the spool (besides
/// `serve.commit_messages`): a round of messages near Segment's 32 KB limit stays bounded
/// in memory as a round of small ones does (25,000 messages of ~350 bytes are ~9 MB).
const MAX_ROUND_BYTES: usize = 32 << 20;
/// The longest event table name.
const MAX_TABLE_NAME: usize = 120;

/// Columns the collector writes itself; a property or trait with one of these names is
/// dropped (Segment's rule), as are the converter's system columns.
const RESERVED: [&str; 17] = [
    "id",
    "anonymous_id",
    "user_id",
    "received_at",
    "sent_at",
    "original_timestamp",
    "timestamp",
    "context",
    "event",
    "event_text",
    "name",
    "group_id",
    "previous_id",
    "uuid_ts",
    "is_deleted",
    "_rescued_data",
    "type",
];

/// Table names an event cannot take (the call types' tables).
const CALL_TABLES: [&str; 7] = [
    "tracks",
    "identifies",
    "pages",
    "screens",
    "groups",
    "aliases",
    "users",
];

/// The messages of one (minute, source, call type, event name) that a round landed: what
/// the Source Overview's volume table counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeKey {
    /// The minute the messages were received in (UTC, seconds zero).
    pub minute: DateTime<Utc>,
    /// The source.
    pub source: String,
    /// The call type (`track`, `identify`, …).
    pub call: &'static str,
    /// The event name as sent (track only).
    pub event: Option<String>,
}

/// A hook called after each round of commits with the counts it landed (duplicates and
/// messages a restart found already landed are not counted).
pub type VolumeHook = Box<dyn Fn(&BTreeMap<VolumeKey, u64>) + Send + Sync>;

/// The table an event called `name` lands in: its snake_case name (`Order Completed` →
/// `order_completed`), prefixed `event_` if it would be a call type's table.
pub fn event_table(name: &str) -> String {
    let mut t = to_column_name(name.trim());
    while t.contains("__") {
        t = t.replace("__", "_");
    }
    let mut t = t.trim_matches('_').to_owned();
    if t.is_empty() {
        t = "unnamed".to_owned();
    }
    t.truncate(MAX_TABLE_NAME);
    if CALL_TABLES.contains(&t.as_str()) || t.as_bytes()[0].is_ascii_digit() {
        t = format!("event_{t}");
    }
    t
}

/// The declared columns of a table of `call` (`event`: an event's own table).
fn schema(table: &str, call: Call) -> StreamSchema {
    let col = |name: &str, ty| Column {
        name: name.to_owned(),
        ty,
        description: None,
    };
    let mut columns = vec![
        col("id", ColumnType::String),
        col("anonymous_id", ColumnType::String),
        col("user_id", ColumnType::String),
        col("sent_at", ColumnType::Timestamp),
        col("original_timestamp", ColumnType::Timestamp),
        col("timestamp", ColumnType::Timestamp),
    ];
    match call {
        Call::Track => {
            columns.push(col("event", ColumnType::String));
            columns.push(col("event_text", ColumnType::String));
        }
        Call::Page | Call::Screen => columns.push(col("name", ColumnType::String)),
        Call::Group => columns.push(col("group_id", ColumnType::String)),
        Call::Alias => columns.push(col("previous_id", ColumnType::String)),
        Call::Identify => {}
    }
    StreamSchema {
        name: table.to_owned(),
        kind: StreamKind::Events,
        primary_key: "id".to_owned(),
        cursor_field: None,
        deletion: None,
        columns,
    }
}

/// The fields of a spooled message that landing reads, borrowed from the spool record's
/// text (its other fields are ignored; a JSON `null` reads as absent). The spool holds
/// each message as the collector re-serialized it, so no key repeats.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    call: Option<&'a RawValue>,
    #[serde(borrow)]
    message_id: Option<&'a RawValue>,
    #[serde(borrow)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    received_at: Option<&'a RawValue>,
    #[serde(borrow)]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    group_id: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
}

/// A JSON string's text, unescaped (borrowed when it has no escapes); `None` for any other
/// JSON value.
fn raw_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// The JSON text of an id column: a string as sent, a number as its text in a string,
/// anything else null.
fn id_text<'a>(raw: Option<&'a RawValue>) -> Cow<'a, str> {
    let Some(raw) = raw else {
        return Cow::Borrowed("null");
    };
    let text = raw.get();
    if text.starts_with('"') {
        return Cow::Borrowed(text);
    }
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) => Cow::Owned(format!("\"{n}\"")),
        Err(_) => Cow::Borrowed("null"),
    }
}

fn parse_time(raw: Option<&RawValue>) -> Option<DateTime<Utc>> {
    raw_str(raw)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A row of one table as (column name as sent, JSON text of its value) pairs.
type Fields<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Adds `from`'s fields (a JSON object) to `row` as un-prefixed columns, dropping reserved
/// names; a key sent twice keeps its last value.
fn spread<'a>(row: &mut Fields<'a>, from: Option<&'a RawValue>) {
    let Some(from) = from.filter(|r| r.get().starts_with('{')) else {
        return;
    };
    let Ok(fields) = serde_json::from_str::<BTreeMap<Cow<'a, str>, &'a RawValue>>(from.get())
    else {
        return;
    };
    for (k, v) in fields {
        let column = to_column_name(&k);
        if RESERVED.contains(&column.as_str()) || column.starts_with("context_") {
            continue;
        }
        row.push((k, Cow::Borrowed(v.get())));
    }
}

/// `fields` as one JSON object (keys in order, as a JSON map orders them), appended to
/// `out`.
fn write_row(mut fields: Fields<'_>, out: &mut Vec<u8>) {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A key is a plain string; writing it cannot fail into a Vec.
        let _ = serde_json::to_writer(&mut *out, k.as_ref());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
}

/// One message routed: its rows, by table, each as the JSON text of an object.
struct Routed {
    call: Call,
    received_at: DateTime<Utc>,
    event: Option<String>,
    /// (table, row)
    rows: Vec<(String, Vec<u8>)>,
}

/// The rows a message lands as, written straight from the spooled text (no JSON tree: the
/// converter reads the rows as it reads a vendor's page). `received_at` is the message's
/// receivedAt; `event_ok` says whether its event may have a table.
fn route(
    m: &Message<'_>,
    received_at: DateTime<Utc>,
    event_ok: &mut dyn FnMut(&str) -> bool,
) -> Option<Routed> {
    let call = raw_str(m.call).as_deref().and_then(Call::parse)?;
    let sent = parse_time(m.sent_at);
    let original = parse_time(m.timestamp);
    // Segment's clock-skew correction: the client's clock is off by sentAt − receivedAt.
    let timestamp = match (sent, original) {
        (Some(s), Some(o)) => received_at - (s - o),
        (None, Some(o)) => o,
        _ => received_at,
    };
    let stamp = |t: DateTime<Utc>| {
        Cow::Owned(format!(
            "\"{}\"",
            t.to_rfc3339_opts(SecondsFormat::Micros, true)
        ))
    };
    let mut base: Fields<'_> = Vec::with_capacity(16);
    base.push((Cow::Borrowed("id"), id_text(m.message_id)));
    base.push((Cow::Borrowed("anonymous_id"), id_text(m.anonymous_id)));
    base.push((Cow::Borrowed("user_id"), id_text(m.user_id)));
    if let Some(s) = sent {
        base.push((Cow::Borrowed("sent_at"), stamp(s)));
    }
    if let Some(o) = original {
        base.push((Cow::Borrowed("original_timestamp"), stamp(o)));
    }
    base.push((Cow::Borrowed("timestamp"), stamp(timestamp)));
    if let Some(context) = m.context.filter(|c| c.get().starts_with('{')) {
        base.push((Cow::Borrowed("context"), Cow::Borrowed(context.get())));
    }
    let mut rows = Vec::with_capacity(2);
    let mut event = None;
    match call {
        Call::Track => {
            let name = raw_str(m.event).unwrap_or_default();
            let table = event_table(&name);
            let quoted = |s: &str| Cow::Owned(serde_json::Value::from(s).to_string());
            base.push((Cow::Borrowed("event"), quoted(&table)));
            base.push((Cow::Borrowed("event_text"), quoted(&name)));
            if event_ok(&table) {
                let mut own = base.clone();
                spread(&mut own, m.properties);
                let mut text = Vec::with_capacity(512);
                write_row(own, &mut text);
                rows.push((table, text));
            }
            event = Some(name.into_owned());
        }
        Call::Identify => spread(&mut base, m.traits),
        Call::Page | Call::Screen => {
            if let Some(name) = m.name {
                base.push((Cow::Borrowed("name"), Cow::Borrowed(name.get())));
            }
            spread(&mut base, m.properties);
        }
        Call::Group => {
            base.push((Cow::Borrowed("group_id"), id_text(m.group_id)));
            spread(&mut base, m.traits);
        }
        Call::Alias => {
            base.push((Cow::Borrowed("previous_id"), id_text(m.previous_id)));
        }
    }
    let mut text = Vec::with_capacity(512);
    write_row(base, &mut text);
    rows.insert(0, (call.table().to_owned(), text));
    Some(Routed {
        call,
        received_at,
        event,
        rows,
    })
}

/// messageIds seen in the last 24 hours, at most `capacity`.
struct Dedupe {
    seen: HashMap<u64, (u64, i64)>,
    order: VecDeque<(u64, i64)>,
    capacity: usize,
}

impl Dedupe {
    fn new(capacity: usize) -> Self {
        Dedupe {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// The key of a messageId in a source (stable across processes and builds: it is
    /// kept in the spool's `seen-*.ids` files).
    fn key(source: &str, id: &str) -> u64 {
        let mut h =
            siphasher::sip::SipHasher::new_with_keys(0x7472_6962_7574_6172, 0x636f_6c6c_6563_746f);
        source.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    }

    /// Whether another record (not `seq`) carried this key within the window; remembers
    /// it otherwise.
    fn is_duplicate(&mut self, key: u64, seq: u64, at: i64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        while let Some(&(k, t)) = self.order.front() {
            if self.order.len() >= self.capacity || at - t > DEDUPE_WINDOW_MICROS {
                self.order.pop_front();
                if self.seen.get(&k).is_some_and(|e| e.1 == t) {
                    self.seen.remove(&k);
                }
            } else {
                break;
            }
        }
        match self.seen.get(&key) {
            Some(&(s, t)) if s != seq && (at - t).abs() <= DEDUPE_WINDOW_MICROS => true,
            Some(_) => false,
            None => {
                self.seen.insert(key, (seq, at));
                self.order.push_back((key, at));
                false
            }
        }
    }

    /// Loads the ids landed in the last 24 hours from the spool's `seen-*.ids` files (and
    /// deletes older files).
    fn load(&mut self, dir: &std::path::Path) {
        let now = Utc::now();
        let oldest = (now - chrono::Duration::hours(25))
            .format("seen-%Y%m%d%H.ids")
            .to_string();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("seen-") && n.ends_with(".ids"))
            .collect();
        files.sort();
        for name in files {
            let path = dir.join(&name);
            if name < oldest {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            for e in bytes.chunks_exact(24) {
                let n = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap_or_default());
                let (key, seq, at) = (n(0), n(8), n(16) as i64);
                if now.timestamp_micros() - at <= DEDUPE_WINDOW_MICROS {
                    self.is_duplicate(key, seq, at);
                }
            }
        }
    }
}

/// Appends landed ids to this hour's `seen-*.ids` file of the spool.
fn remember_landed(dir: &std::path::Path, landed: &[(u64, u64, i64)]) -> std::io::Result<()> {
    use std::io::Write as _;
    if landed.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(landed.len() * 24);
    for (key, seq, at) in landed {
        buf.extend_from_slice(&key.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&at.to_le_bytes());
    }
    let path = dir.join(Utc::now().format("seen-%Y%m%d%H.ids").to_string());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// A row for a table: its record's sequence number, receivedAt and the row.
type Row = (u64, DateTime<Utc>, Vec<u8>);

/// Hands the memory a landing round freed back to the system. A round allocates its
/// messages' trees, rows and Arrow buffers on whichever worker threads ran it, and glibc's
/// malloc keeps what they free in per-thread arenas: under a steady backlog the collector's
/// RSS grew round after round to over 500 MB with a heap of some 100 MB (heaptrack); with a
/// trim after each round it stays near 300 MB, for some landing throughput
/// (BENCHMARKS.md, "Memory handed back after each landing round").
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; it touches no live
    // allocation and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lands the spool into the tables, round after round.
pub struct Committer {
    warehouse: Warehouse,
    collector_id: String,
    spool_dir: std::path::PathBuf,
    config: ServeConfig,
    row_group_size: usize,
    max_new_columns: usize,
    tables: HashMap<(String, String), StreamTable>,
    event_tables: HashMap<String, std::collections::HashSet<String>>,
    dedupe: Dedupe,
    reader: Reader,
    progress: Arc<Progress>,
    /// Called with each round's counts.
    pub on_volume: Option<VolumeHook>,
}

impl Committer {
    /// A committer of the spool read by `reader`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        warehouse: Warehouse,
        collector_id: String,
        spool_dir: std::path::PathBuf,
        config: ServeConfig,
        sync: &crate::config::SyncConfig,
        reader: Reader,
        progress: Arc<Progress>,
    ) -> Self {
        let mut dedupe = Dedupe::new(config.dedupe_capacity);
        dedupe.load(&spool_dir);
        Committer {
            warehouse,
            collector_id,
            spool_dir,
            dedupe,
            config,
            row_group_size: sync.row_group_size,
            max_new_columns: sync.max_new_columns,
            tables: HashMap::new(),
            event_tables: HashMap::new(),
            reader,
            progress,
            on_volume: None,
        }
    }

    /// Lands rounds until `stop` resolves and everything acknowledged has landed (or
    /// landing keeps failing after the stop).
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.commit_interval_ms);
        let mut pending: Option<Vec<Record>> = None;
        let mut failures = 0u32;
        loop {
            let stopping = *stop.borrow();
            let written = self.progress.written.load(Ordering::Acquire);
            if pending.is_none() {
                let waiting = written.saturating_sub(self.reader.next_seq().saturating_sub(1));
                if waiting == 0 {
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = self.progress.wrote.notified() => {}
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                if (waiting as usize) < self.config.commit_messages && !stopping {
                    // Let a round fill up for one interval, unless the spool catches up.
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                let written = self.progress.written.load(Ordering::Acquire);
                match self
                    .reader
                    .read(written, self.config.commit_messages, MAX_ROUND_BYTES)
                {
                    Ok(records) if records.is_empty() => continue,
                    Ok(records) => pending = Some(records),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "Cannot read the spool; trying again.");
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                }
            }
            let Some(records) = pending.as_ref() else {
                continue;
            };
            match self.land(records).await {
                Ok(last) => {
                    failures = 0;
                    pending = None;
                    self.progress.landed.store(last, Ordering::Release);
                    if let Err(e) = spool::prune(&self.spool_dir, last) {
                        tracing::warn!(error = %format!("{e:#}"), "Could not delete landed spool segments.");
                    }
                    release_freed_memory();
                }
                Err(e) => {
                    failures += 1;
                    let text = crate::logging::scrubbed(&e);
                    tracing::error!(error = %text, failures, "Could not land spooled messages; they stay in the spool and are tried again.");
                    if stopping && failures >= 3 {
                        tracing::error!(
                            "Stopping with messages still in the spool; the next `serve` lands them."
                        );
                        return;
                    }
                    let backoff = Duration::from_millis(
                        (self.config.commit_interval_ms << failures.min(6)).min(30_000),
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn app_id(&self, source: &str, table: &str) -> String {
        format!("tributary/collector/{}/{source}/{table}", self.collector_id)
    }

    /// Lands one round's records; returns the last sequence number.
    async fn land(&mut self, records: &[Record]) -> Result<u64> {
        let last = records.last().map(|r| r.seq).unwrap_or_default();
        // (source, table) → (call, rows as (seq, received_at, row))
        let mut by_table: BTreeMap<(String, String), (Call, Vec<Row>)> = BTreeMap::new();
        let mut counted: Vec<(u64, VolumeKey)> = Vec::new();
        let mut remembered: Vec<(u64, u64, i64)> = Vec::new();
        let mut duplicates: BTreeMap<String, u64> = BTreeMap::new();
        for r in records {
            let m: Message<'_> = match serde_json::from_slice(&r.json) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(seq = r.seq, error = %e, "A spooled message is not a JSON object; skipping it.");
                    continue;
                }
            };
            let id = raw_str(m.message_id).unwrap_or_default();
            let received_at = parse_time(m.received_at).unwrap_or_else(Utc::now);
            let at = received_at.timestamp_micros();
            let key = (!id.is_empty()).then(|| Dedupe::key(&r.source, &id));
            if let Some(key) = key {
                if self.dedupe.is_duplicate(key, r.seq, at) {
                    *duplicates.entry(r.source.clone()).or_default() += 1;
                    continue;
                }
                remembered.push((key, r.seq, at));
            }
            let tables = self.event_tables.entry(r.source.clone()).or_default();
            let mut event_ok = |t: &str| {
                if tables.contains(t) {
                    return true;
                }
                if tables.len() >= MAX_EVENT_TABLES {
                    return false;
                }
                tables.insert(t.to_owned());
                true
            };
            let Some(routed) = route(&m, received_at, &mut event_ok) else {
                continue;
            };
            let minute = routed
                .received_at
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(routed.received_at);
            counted.push((
                r.seq,
                VolumeKey {
                    minute,
                    source: r.source.clone(),
                    call: routed.call.name(),
                    event: routed.event.clone(),
                },
            ));
            for (table, row) in routed.rows {
                let call = if table == routed.call.table() {
                    routed.call
                } else {
                    Call::Track
                };
                by_table
                    .entry((r.source.clone(), table))
                    .or_insert_with(|| (call, Vec::new()))
                    .1
                    .push((r.seq, routed.received_at, row));
            }
        }
        // The messages this round put in their call type's table: the volume counts leave
        // out what a restart finds already landed.
        let mut fresh: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for ((source, table), (call, rows)) in by_table {
            let key = (source.clone(), table.clone());
            if !self.tables.contains_key(&key) {
                let declared = schema(&table, call);
                let opened = StreamTable::open(
                    &self.warehouse,
                    &[&source, &table],
                    self.app_id(&source, &table),
                    &declared.arrow_schema(),
                    self.row_group_size,
                    None,
                )
                .await
                .with_context(|| format!("opening the table {source}/{table}"))?;
                self.tables.insert(key.clone(), opened);
            }
            let Some(st) = self.tables.get_mut(&key) else {
                continue;
            };
            let position = st
                .cursor()
                .and_then(|c| c.get("spool_seq").and_then(Value::as_u64))
                .unwrap_or(0);
            let rows: Vec<_> = rows.into_iter().filter(|r| r.0 > position).collect();
            if call.table() == table {
                fresh.extend(rows.iter().map(|r| r.0));
            }
            if rows.is_empty() {
                continue;
            }
            let count = rows.len() as u64;
            let started = std::time::Instant::now();
            let declared = schema(&table, call);
            let existing = st.arrow_schema()?;
            let mut builder = BatchBuilder::with_limits(
                &declared,
                Some(&existing),
                Limits {
                    max_new_columns: self.max_new_columns,
                    ..Limits::default()
                },
            );
            // One page per receivedAt (a request's messages share one): the converter
            // stamps `received_at` per page. Each page is a JSON array of the rows' text,
            // converted as a vendor's page is.
            let mut page: Vec<u8> = Vec::new();
            let mut page_at = rows[0].1;
            for (_, at, row) in rows {
                if at != page_at && !page.is_empty() {
                    page.push(b']');
                    builder.append_page(&Page {
                        records: Records::Json {
                            body: std::mem::take(&mut page).into(),
                            path: &[],
                        },
                        cursor: Value::Null,
                        received_at: page_at,
                        reset: false,
                    })?;
                }
                page_at = at;
                page.push(if page.is_empty() { b'[' } else { b',' });
                page.extend_from_slice(&row);
            }
            page.push(b']');
            builder.append_page(&Page {
                records: Records::Json {
                    body: page.into(),
                    path: &[],
                },
                cursor: Value::Null,
                received_at: page_at,
                reset: false,
            })?;
            let (batches, report) = builder.finish()?;
            if !report.new_columns.is_empty() {
                tracing::info!(source = %source, table = %table, columns = ?report.new_columns, "New columns.");
            }
            let Some(newest) = batches.last() else {
                continue;
            };
            let schema = newest.schema();
            let mut file = st.new_file_for(newest)?;
            for b in &batches {
                let b = crate::warehouse::merge::conform(b, &schema)?;
                file.write(&b).await?;
            }
            let file = file.finish().await?;
            let bytes = file.add.size.max(0) as u64;
            let landed = st
                .commit(
                    vec![file],
                    &schema,
                    SnapshotStep::default(),
                    json!({ "spool_seq": last }),
                    count,
                    &format!("collector-{}", self.collector_id),
                )
                .await?;
            crate::metrics::commit(
                &source,
                &table,
                count,
                bytes + landed.rewritten_bytes + landed.dv_bytes,
                started.elapsed().as_secs_f64(),
            );
            tracing::debug!(source = %source, table = %table, rows = count, "Committed collected messages.");
        }
        if let Err(e) = remember_landed(&self.spool_dir, &remembered) {
            tracing::warn!(error = %e, "Could not record the landed messageIds; a restart forgets them for deduplication.");
        }
        let mut landed: BTreeMap<&str, u64> = BTreeMap::new();
        for (seq, k) in &counted {
            if fresh.contains(seq) {
                *landed.entry(k.source.as_str()).or_default() += 1;
            }
        }
        let sources: std::collections::BTreeSet<&str> = landed
            .keys()
            .copied()
            .chain(duplicates.keys().map(String::as_str))
            .collect();
        for source in sources {
            crate::metrics::collector_landed(
                source,
                landed.get(source).copied().unwrap_or(0),
                duplicates.get(source).copied().unwrap_or(0),
            );
        }
        if let Some(hook) = &self.on_volume {
            let counts = volume_counts(
                counted
                    .into_iter()
                    .filter(|(seq, _)| fresh.contains(seq))
                    .map(|(_, k)| k),
            );
            if !counts.is_empty() {
                hook(&counts);
            }
        }
        Ok(last)
    }
}

/// The per-(minute, source, call type, event name) counts of landed messages: what a round
/// hands to [`Committer::on_volume`] for the volume table.
pub fn volume_counts(keys: impl IntoIterator<Item = VolumeKey>) -> BTreeMap<VolumeKey, u64> {
    let mut out = BTreeMap::new();
    for k in keys {
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn event_tables_are_snake_case_and_never_a_call_table() {
        assert_eq!(event_table("Order Completed"), "order_completed");
        assert_eq!(event_table("orderCompleted"), "order_completed");
        assert_eq!(event_table("  Signed-Up!! "), "signed_up");
        assert_eq!(event_table("tracks"), "event_tracks");
        assert_eq!(event_table("3 clicks"), "event_3_clicks");
        assert_eq!(event_table("!!!"), "unnamed");
    }

    #[test]
    fn the_timestamp_is_corrected_for_clock_skew() {
        let text = json!({
            "type": "track", "event": "Order \"Completed\"", "userId": 7, "messageId": "m1",
            "receivedAt": "2024-05-01T12:00:10Z",
            "sentAt": "2024-05-01T12:00:00Z",
            "timestamp": "2024-05-01T11:59:58Z",
            "context": {"ip": "1.2.3.4"},
            "properties": {"total": 12.5, "userId": "dropped", "revenue": 3, "note\n": null}
        })
        .to_string();
        let m: Message<'_> = serde_json::from_str(&text).unwrap();
        let received = parse_time(m.received_at).unwrap();
        let r = route(&m, received, &mut |_| true).unwrap();
        assert_eq!(r.rows.len(), 2);
        let (tracks, row) = &r.rows[0];
        assert_eq!(tracks, "tracks");
        let row: Map<String, Value> = serde_json::from_slice(row).unwrap();
        assert_eq!(row["timestamp"], "2024-05-01T12:00:08.000000Z");
        assert_eq!(row["user_id"], "7");
        assert_eq!(row["id"], "m1");
        assert_eq!(row["anonymous_id"], Value::Null);
        assert_eq!(row["event"], "order_completed");
        assert_eq!(row["event_text"], "Order \"Completed\"");
        assert_eq!(row["context"], json!({"ip": "1.2.3.4"}));
        assert!(row.get("total").is_none(), "tracks has no properties");
        let (table, own) = &r.rows[1];
        assert_eq!(table, "order_completed");
        let own: Map<String, Value> = serde_json::from_slice(own).unwrap();
        assert_eq!(own["total"], 12.5);
        assert_eq!(own["revenue"], 3);
        assert_eq!(
            own["note\n"],
            Value::Null,
            "an escaped key is written back escaped"
        );
        assert!(own.get("userId").is_none(), "a reserved name is dropped");
        assert_eq!(r.event.as_deref(), Some("Order \"Completed\""));
    }

    #[test]
    fn a_message_at_the_deepest_nesting_accepted_still_lands() {
        // The page wraps each row one level deeper than the message: a message at the
        // intake's limit must still convert, or it would hold up every round after it.
        let depth = super::super::message::MAX_DEPTH - 2;
        let text = format!(
            r#"{{"type":"track","event":"e","userId":"u","receivedAt":"2024-05-01T12:00:10Z","context":{{"k":{}1{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let m: Message<'_> = serde_json::from_str(&text).unwrap();
        let r = route(&m, Utc::now(), &mut |_| true).unwrap();
        let mut page = b"[".to_vec();
        page.extend_from_slice(&r.rows[0].1);
        page.push(b']');
        let declared = schema("tracks", Call::Track);
        let mut builder = BatchBuilder::with_limits(&declared, None, Limits::default());
        builder
            .append_page(&Page {
                records: Records::Json {
                    body: page.into(),
                    path: &[],
                },
                cursor: Value::Null,
                received_at: Utc::now(),
                reset: false,
            })
            .unwrap();
        let (batches, _) = builder.finish().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    #[test]
    fn ids_sent_as_numbers_become_text_and_other_types_null() {
        let text = r#"{"type": "group", "userId": 1.5e3, "anonymousId": true, "groupId": 42,
            "messageId": "m\u0031", "receivedAt": "2024-05-01T12:00:10Z",
            "traits": {"plan": "pro", "context_x": 1, "name": "Acme"}, "context": "not an object"}"#;
        let m: Message<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(raw_str(m.message_id).as_deref(), Some("m1"));
        let r = route(&m, Utc::now(), &mut |_| true).unwrap();
        let row: Map<String, Value> = serde_json::from_slice(&r.rows[0].1).unwrap();
        assert_eq!(r.rows[0].0, "groups");
        assert_eq!(row["user_id"], "1500.0");
        assert_eq!(row["anonymous_id"], Value::Null);
        assert_eq!(row["group_id"], "42");
        assert_eq!(row["plan"], "pro");
        assert!(row.get("context_x").is_none() && row.get("context").is_none());
        assert!(row.get("name").is_none(), "`name` is reserved");
        // Written in key order, as a JSON map orders them: new columns keep the order
        // they had when rows were trees.
        let text = String::from_utf8(r.rows[0].1.clone()).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        assert!(at("anonymous_id") < at("group_id") && at("group_id") < at("plan"));
        assert!(at("plan") < at("timestamp") && at("timestamp") < at("user_id"));
    }

    #[test]
    fn dedupe_forgets_after_a_day_and_keeps_the_same_record() {
        let mut d = Dedupe::new(10);
        let (web, app) = (Dedupe::key("web", "m"), Dedupe::key("app", "m"));
        assert!(!d.is_duplicate(web, 1, 0));
        assert!(!d.is_duplicate(web, 1, 5), "the same record replayed");
        assert!(d.is_duplicate(web, 2, 10));
        assert!(!d.is_duplicate(app, 3, 10), "per source");
        assert!(!d.is_duplicate(web, 4, DEDUPE_WINDOW_MICROS + 100));
    }
}
