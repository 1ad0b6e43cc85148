//! The Zendesk streams ([`STREAMS`], one table each) and how one stream is read.
//!
//! Three ways of reading, each with its own [`Cursor`], committed with every page:
//!
//! - **Cursor-based incremental exports** (tickets, users): `start_time` on the first
//!   request, then Zendesk's opaque `after_cursor` until `end_of_stream`. The last page's
//!   cursor is where the next run starts; Zendesk leaves out the most recent minute, so
//!   nothing changed after a cursor can slip in before it.
//! - **Time-based incremental exports** (organizations, ticket events): an inclusive
//!   `start_time` and the page's `end_time`; the ids seen at the boundary second travel in
//!   the cursor so each item lands once ([`TimeBoundary`]).
//! - **Snapshots** (groups, memberships, ticket fields and forms, ticket metrics,
//!   satisfaction ratings, brands, tags): the whole list with cursor pagination
//!   (`page[size]`, `meta.has_more`, `meta.after_cursor`) every run. Its first page
//!   starts a snapshot, which replaces the table's rows once complete (until then the old
//!   rows stay), so the table is always the latest complete list; a run killed or failed
//!   mid-way resumes the same snapshot from its committed `page[after]`. Zendesk offers no
//!   change feed for these (the satisfaction ratings' `start_time` filter is documented as
//!   the time of the oldest rating, and ratings change after they are made), so a
//!   snapshot is the only way not to miss an update.
//!
//! Tickets gain one column per custom ticket field (see [`custom_fields`]); deleted
//! organizations are flagged from `deleted_at`; ticket events gain the ticket's
//! `requester_id`, which their Tracking-API messages need.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_sdk::incremental::{CursorExport, TimeBoundary};
use tributary_sdk::page::{AddedFields, append_fields};
use tributary_sdk::pagination::{PageSender, ProgressGuard, malformed_page, spawn_pages};
use tributary_sdk::schema::{Column, ColumnType, to_column_name};
use tributary_sdk::{Error, Page, PageStream, Record, Records, Result, StreamSchema};

use crate::client::{Limit, Listing, VENDOR, ZendeskClient, is_bad_cursor};
use crate::config::{DEFAULT_LOOKBACK_DAYS, Settings};

/// How many pages a read fetches ahead of the runtime's conversion.
const FETCH_AHEAD: usize = 2;

/// Empty cursor-export pages in a row a run follows before it stops for the next run.
const MAX_EMPTY_PAGES: u32 = 100;

/// Zendesk refuses an export `start_time` less than a minute old; keep a second spare.
const EXCLUSION_WINDOW_SECS: i64 = 61;

/// The most ticket ids one `show_many` request takes.
const SHOW_MANY_MAX: usize = 100;

/// How a stream is fetched.
#[derive(Debug, Clone, Copy)]
pub enum Fetch {
    /// A cursor-based incremental export at this path.
    CursorExport(&'static str),
    /// A time-based incremental export at this path; each record's `time_field` (Unix
    /// seconds or RFC 3339) is what Zendesk compares `start_time` with.
    TimeExport {
        /// The endpoint.
        path: &'static str,
        /// The record's time field.
        time_field: &'static str,
    },
    /// A cursor-paginated list at this path, read whole every run; it replaces the table.
    Snapshot(&'static str),
    /// A list Zendesk answers whole, unpaged, read every run; it replaces the table.
    Whole(&'static str),
    /// A cursor-paginated list read whole every run and merged into the table: a row it
    /// no longer lists stays.
    Merged(&'static str),
}

impl Fetch {
    /// Whether every run reads the whole list (its first page resets the table only for
    /// [`Fetch::Snapshot`] and [`Fetch::Whole`]).
    pub fn whole_list(&self) -> bool {
        matches!(
            self,
            Fetch::Snapshot(_) | Fetch::Whole(_) | Fetch::Merged(_)
        )
    }

    /// Whether a run's list replaces the table.
    pub fn replaces(&self) -> bool {
        matches!(self, Fetch::Snapshot(_) | Fetch::Whole(_))
    }
}

/// What a stream does to Zendesk's records before they land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Nothing: the response body lands as it is.
    Plain,
    /// One column per custom ticket field; `status: deleted` flags the row.
    Tickets,
    /// A set `deleted_at` flags the row.
    Organizations,
    /// The ticket's `requester_id` is added.
    TicketEvents,
    /// Tags have no id: their name is it.
    Tags,
}

/// One Zendesk stream.
#[derive(Debug)]
pub struct StreamDef {
    /// The stream's name, which is also its table's.
    pub name: &'static str,
    /// The schema file's text.
    pub schema: &'static str,
    /// The key of the records array in a response, as a path.
    pub records: &'static [&'static str],
    /// How it is fetched.
    pub fetch: Fetch,
    /// What is done to its records.
    pub shape: Shape,
}

impl StreamDef {
    fn records_key(&self) -> &'static str {
        self.records.first().copied().unwrap_or("")
    }
}

/// Every stream, in the order `discover` lists them.
pub static STREAMS: &[StreamDef] = &[
    StreamDef {
        name: "tickets",
        schema: include_str!("../../../schemas/zendesk/tickets.json"),
        records: &["tickets"],
        fetch: Fetch::CursorExport("/api/v2/incremental/tickets/cursor.json"),
        shape: Shape::Tickets,
    },
    StreamDef {
        name: "users",
        schema: include_str!("../../../schemas/zendesk/users.json"),
        records: &["users"],
        fetch: Fetch::CursorExport("/api/v2/incremental/users/cursor.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "organizations",
        schema: include_str!("../../../schemas/zendesk/organizations.json"),
        records: &["organizations"],
        fetch: Fetch::TimeExport {
            path: "/api/v2/incremental/organizations.json",
            time_field: "updated_at",
        },
        shape: Shape::Organizations,
    },
    StreamDef {
        name: "ticket_events",
        schema: include_str!("../../../schemas/zendesk/ticket_events.json"),
        records: &["ticket_events"],
        fetch: Fetch::TimeExport {
            path: "/api/v2/incremental/ticket_events.json",
            time_field: "timestamp",
        },
        shape: Shape::TicketEvents,
    },
    StreamDef {
        name: "groups",
        schema: include_str!("../../../schemas/zendesk/groups.json"),
        records: &["groups"],
        fetch: Fetch::Snapshot("/api/v2/groups.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "group_memberships",
        schema: include_str!("../../../schemas/zendesk/group_memberships.json"),
        records: &["group_memberships"],
        fetch: Fetch::Snapshot("/api/v2/group_memberships.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "organization_memberships",
        schema: include_str!("../../../schemas/zendesk/organization_memberships.json"),
        records: &["organization_memberships"],
        fetch: Fetch::Snapshot("/api/v2/organization_memberships.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "ticket_fields",
        schema: include_str!("../../../schemas/zendesk/ticket_fields.json"),
        records: &["ticket_fields"],
        fetch: Fetch::Snapshot("/api/v2/ticket_fields.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "ticket_forms",
        schema: include_str!("../../../schemas/zendesk/ticket_forms.json"),
        records: &["ticket_forms"],
        // "List Ticket Forms" documents no pagination, and its answer only the
        // `ticket_forms` array; an account has at most 300 forms.
        // https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_forms/
        fetch: Fetch::Whole("/api/v2/ticket_forms.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "ticket_metrics",
        schema: include_str!("../../../schemas/zendesk/ticket_metrics.json"),
        records: &["ticket_metrics"],
        // "Archived tickets are not included in the response" (List Ticket Metrics,
        // https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_metrics/):
        // a ticket archived (closed ~120 days) keeps the metrics already landed.
        fetch: Fetch::Merged("/api/v2/ticket_metrics.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "satisfaction_ratings",
        schema: include_str!("../../../schemas/zendesk/satisfaction_ratings.json"),
        records: &["satisfaction_ratings"],
        fetch: Fetch::Snapshot("/api/v2/satisfaction_ratings.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "brands",
        schema: include_str!("../../../schemas/zendesk/brands.json"),
        records: &["brands"],
        fetch: Fetch::Snapshot("/api/v2/brands.json"),
        shape: Shape::Plain,
    },
    StreamDef {
        name: "tags",
        schema: include_str!("../../../schemas/zendesk/tags.json"),
        records: &["tags"],
        fetch: Fetch::Snapshot("/api/v2/tags.json"),
        shape: Shape::Tags,
    },
];

/// What Zendesk documents about the plans that include `stream`'s endpoint, for the
/// warning when the account's plan does not.
pub fn plan_note(stream: &str) -> Option<&'static str> {
    match stream {
        // "Ticket forms are supported on Suite Growth plans and above, as well as on
        // Support Enterprise plans. For legacy accounts, ticket forms are only available on
        // Enterprise accounts or accounts with the Productivity Pack add-on."
        // https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_forms/
        "ticket_forms" => Some(
            "Zendesk offers ticket forms on Suite Growth and above and on Support Enterprise \
             (legacy accounts: Enterprise, or the Productivity Pack add-on)",
        ),
        _ => None,
    }
}

/// The stream called `name`, or [`Error::UnknownStream`] listing them.
pub fn stream(name: &str) -> Result<&'static StreamDef> {
    tributary_sdk::connector::find_named(STREAMS, name, |s| s.name)
}

/// The parsed schemas of every stream as declared (tickets without custom field columns;
/// see [`tributary_sdk::schema::load`]).
pub fn schemas() -> Result<Vec<StreamSchema>> {
    tributary_sdk::schema::load("zendesk", STREAMS.iter().map(|def| (def.name, def.schema)))
}

// ---------------------------------------------------------------------------------------
// Custom ticket fields
// ---------------------------------------------------------------------------------------

/// Ticket field types that are custom fields (system fields have types of their own:
/// `subject`, `status`, `priority`, …).
const CUSTOM_TYPES: &[&str] = &[
    "text",
    "textarea",
    "checkbox",
    "date",
    "integer",
    "decimal",
    "regexp",
    "partialcreditcard",
    "multiselect",
    "tagger",
    "lookup",
];

/// A custom ticket field and the column its values land in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomField {
    /// Zendesk's field id.
    pub id: i64,
    /// The field's title.
    pub title: String,
    /// Zendesk's field type (`checkbox`, `decimal`, …).
    pub kind: String,
    /// The column.
    pub column: String,
    /// The column's type.
    pub ty: ColumnType,
}

/// The column type of a custom field type: checkbox → boolean, integer → integer, decimal
/// → number, date → timestamp, multiselect → JSON (the list of option tags), anything else
/// → string (dropdown option tags, text, lookup ids).
pub fn column_type(kind: &str) -> ColumnType {
    match kind {
        "checkbox" => ColumnType::Boolean,
        "integer" => ColumnType::Integer,
        "decimal" => ColumnType::Number,
        "date" => ColumnType::Timestamp,
        "multiselect" => ColumnType::Json,
        _ => ColumnType::String,
    }
}

/// The columns of the custom ticket fields among `fields` (Zendesk's ticket field
/// objects), named so that a name never changes while its field lives:
///
/// 1. `custom_` + the title in snake_case (`Order Number` → `custom_order_number`; a title
///    with no letter or digit gives `custom_<id>`);
/// 2. fields are named in ascending id order, and a field whose name is taken (by an older
///    field or by a ticket column such as `custom_fields`) gets `_<id>` appended
///    (`custom_order_number_360001`). Newer fields have larger ids, so adding a field never
///    renames an existing column; renaming a field's title starts a new column.
///
/// Inactive fields keep their column: tickets still carry their values.
pub fn custom_fields(fields: &[Value], reserved: &[String]) -> Vec<CustomField> {
    let mut candidates: Vec<(i64, String, String)> = fields
        .iter()
        .filter_map(|field| {
            let id = field.get("id").and_then(Value::as_i64)?;
            let kind = field.get("type").and_then(Value::as_str).unwrap_or("text");
            let removable = field.get("removable").and_then(Value::as_bool) == Some(true);
            if !(CUSTOM_TYPES.contains(&kind) || removable) {
                return None;
            }
            let title = field
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Some((id, title.to_owned(), kind.to_owned()))
        })
        .collect();
    candidates.sort_by_key(|(id, _, _)| *id);
    let mut taken: HashSet<String> = reserved.iter().cloned().collect();
    candidates
        .into_iter()
        .map(|(id, title, kind)| {
            let base = column_base(&title, id);
            let mut column = base.clone();
            while taken.contains(&column) {
                column = format!("{column}_{id}");
            }
            taken.insert(column.clone());
            CustomField {
                id,
                title,
                ty: column_type(&kind),
                kind,
                column,
            }
        })
        .collect()
}

/// `custom_` + the snake_case title, or `custom_<id>` when the title has nothing to keep.
fn column_base(title: &str, id: i64) -> String {
    let snake = to_column_name(title);
    let mut out = String::with_capacity(snake.len());
    for c in snake.chars() {
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_end_matches('_');
    if out.is_empty() {
        format!("custom_{id}")
    } else {
        format!("custom_{out}")
    }
}

/// The tickets schema with a column per custom field.
pub fn tickets_schema(base: &StreamSchema, fields: &[CustomField]) -> StreamSchema {
    let mut schema = base.clone();
    for field in fields {
        schema.columns.push(Column {
            name: field.column.clone(),
            ty: field.ty,
            description: Some(format!(
                "Custom ticket field {} \"{}\" ({})",
                field.id, field.title, field.kind
            )),
        });
    }
    schema
}

/// A custom field value as its column type wants it: Zendesk sends numbers of integer and
/// decimal fields as text. A value that does not parse stays as it is (and lands in
/// `_rescued_data`, not lost).
fn coerce(ty: ColumnType, value: &Value) -> Value {
    match (ty, value) {
        (ColumnType::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| value.clone()),
        (ColumnType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| value.clone()),
        (ColumnType::Boolean, Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => value.clone(),
        },
        _ => value.clone(),
    }
}

/// Adds a column per known custom field to a ticket, from its `custom_fields` list.
pub fn with_custom_columns(mut ticket: Value, fields: &HashMap<i64, CustomField>) -> Value {
    let values: Vec<(i64, Value)> = ticket
        .get("custom_fields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|entry| {
                    Some((
                        entry.get("id")?.as_i64()?,
                        entry.get("value").cloned().unwrap_or(Value::Null),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Value::Object(object) = &mut ticket {
        for (id, value) in values {
            if let Some(field) = fields.get(&id) {
                object
                    .entry(field.column.clone())
                    .or_insert_with(|| coerce(field.ty, &value));
            }
        }
    }
    ticket
}

/// The custom columns of one ticket (its JSON text), as [`with_custom_columns`] adds them,
/// for [`append_fields`]: a column per known field of its `custom_fields` list (the first
/// entry of a field wins, its value coerced to the column's type), except a column the
/// ticket already has as a field of its own. Only `custom_fields` is parsed.
pub fn custom_columns_of(
    ticket: &str,
    fields: &HashMap<i64, CustomField>,
    columns: &HashSet<&str>,
) -> serde_json::Result<AddedFields> {
    struct Visit<'c> {
        columns: &'c HashSet<&'c str>,
    }
    impl<'de> serde::de::Visitor<'de> for Visit<'_> {
        type Value = (Option<Value>, Vec<String>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a ticket object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let (mut custom, mut taken) = (None, Vec::new());
            while let Some(key) = map.next_key_seed(KeyKind {
                columns: self.columns,
            })? {
                match key {
                    // The last one, as a parsed map keeps it.
                    Key::CustomFields => custom = Some(map.next_value::<Value>()?),
                    Key::Column(column) => {
                        taken.push(column);
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                    Key::Other => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok((custom, taken))
        }
    }
    /// What a ticket's key is to us, read without allocating it (most keys are neither).
    enum Key {
        CustomFields,
        Column(String),
        Other,
    }
    struct KeyKind<'c> {
        columns: &'c HashSet<&'c str>,
    }
    impl<'de> serde::de::DeserializeSeed<'de> for KeyKind<'_> {
        type Value = Key;
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Key, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for KeyKind<'_> {
        type Value = Key;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> std::result::Result<Key, E> {
            Ok(if key == "custom_fields" {
                Key::CustomFields
            } else if self.columns.contains(key) {
                Key::Column(key.to_owned())
            } else {
                Key::Other
            })
        }
    }
    let mut de = serde_json::Deserializer::from_str(ticket);
    let (custom, taken) = serde::Deserializer::deserialize_map(&mut de, Visit { columns })?;
    let mut added: AddedFields = Vec::new();
    let Some(Value::Array(list)) = custom else {
        return Ok(added);
    };
    for entry in &list {
        let Some(id) = entry.get("id").and_then(Value::as_i64) else {
            continue;
        };
        let Some(field) = fields.get(&id) else {
            continue;
        };
        if taken.contains(&field.column) || added.iter().any(|(c, _)| *c == field.column) {
            continue;
        }
        let value = coerce(field.ty, entry.get("value").unwrap_or(&Value::Null));
        added.push((field.column.clone(), serde_json::to_string(&value)?));
    }
    Ok(added)
}

// ---------------------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------------------

/// Where a read resumes: the cursor committed with every page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Cursor {
    /// A cursor-based export's position: Zendesk's `after_cursor`.
    Export {
        /// The cursor to send as `cursor`.
        after_cursor: String,
    },
    /// A time-based export's boundary.
    Time {
        /// The next `start_time` (Unix seconds, inclusive).
        start_time: i64,
        /// Ids landed at exactly `start_time`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seen: Vec<String>,
    },
    /// A snapshot in progress: the `page[after]` to continue from.
    Snapshot {
        /// The list cursor.
        after: String,
    },
    /// The last snapshot is complete; the next run takes a new one.
    SnapshotDone {
        /// When it completed, by Zendesk's clock (Unix seconds).
        completed_at: i64,
    },
}

impl Cursor {
    fn boundary(boundary: TimeBoundary) -> Cursor {
        Cursor::Time {
            start_time: boundary.start_time,
            seen: boundary.seen,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// What a read needs besides its cursor.
#[derive(Debug, Clone)]
pub struct ReadContext {
    /// The API client.
    pub client: Arc<ZendeskClient>,
    /// The source's settings.
    pub settings: Settings,
    /// The custom ticket fields, by id (tickets only).
    pub custom_fields: HashMap<i64, CustomField>,
}

/// Reads stream `def` from `cursor` (or from the start; `None` on a full refresh),
/// fetching ahead of the consumer.
pub fn read(
    context: ReadContext,
    def: &'static StreamDef,
    cursor: Option<Cursor>,
    full_refresh: bool,
) -> PageStream {
    // An open snapshot resumed from its page cursor is a walk the endpoint already
    // answered: a 403 there is access lost part-way, not a plan without the endpoint.
    let resumes = matches!(cursor, Some(Cursor::Snapshot { .. }));
    spawn_pages(FETCH_AHEAD, move |tx| {
        let reader = Reader {
            context,
            def,
            tx,
            first: AtomicBool::new(!resumes),
        };
        reader.run(cursor, full_refresh)
    })
}

struct Reader {
    context: ReadContext,
    def: &'static StreamDef,
    tx: PageSender,
    /// No request of this read has been answered yet (and it does not resume an open
    /// snapshot): a 403 now may mean the account's plan lacks the endpoint.
    first: AtomicBool,
}

impl Reader {
    async fn run(self, cursor: Option<Cursor>, full_refresh: bool) -> Result<()> {
        match self.def.fetch {
            Fetch::CursorExport(path) => self.cursor_export(path, cursor, full_refresh).await,
            Fetch::TimeExport { path, time_field } => {
                self.time_export(path, time_field, cursor, full_refresh)
                    .await
            }
            Fetch::Snapshot(path) => self.snapshot(path, cursor, true).await,
            Fetch::Merged(path) => self.snapshot(path, cursor, false).await,
            Fetch::Whole(path) => self.whole(path).await,
        }
    }

    fn client(&self) -> &ZendeskClient {
        &self.context.client
    }

    /// One page of the walk. A 403 to the read's first request is asked about (see
    /// [`ZendeskClient::forbidden`]): an endpoint the account's plan lacks becomes
    /// [`Error::Unavailable`]. A 403 later in the walk stays a failure: the endpoint
    /// answered this walk before, so access was lost part-way and the next run resumes.
    async fn fetch(
        &self,
        limit: Limit,
        path: &'static str,
        query: &[(&str, String)],
    ) -> Result<Listing> {
        let result = self
            .client()
            .get(self.def.name, limit, path, query, self.def.records_key())
            .await;
        let first = self.first.swap(false, Ordering::Relaxed);
        match result {
            Err(Error::Auth {
                status: 403,
                message,
                ..
            }) if first => Err(self.client().forbidden(self.def.name, path, &message).await),
            other => other,
        }
    }

    /// Hands a page to the runtime; `false` when the read was cancelled.
    async fn emit(&self, records: Records, cursor: &Cursor, reset: bool) -> bool {
        self.tx
            .send(Page::with_cursor(records, cursor).resetting(reset))
            .await
    }

    fn wrong_cursor(&self, cursor: &Cursor) -> Error {
        Error::Cursor {
            stream: self.def.name.to_owned(),
            message: format!(
                "a `{}` cursor does not fit this stream (was it written by another version?); \
                 run `sync --full-refresh` for it",
                tributary_sdk::cursor::encode(cursor)["mode"]
                    .as_str()
                    .unwrap_or("?")
            ),
        }
    }

    /// The `start_time` of a first export: `start_date`, or a year back, and at least a
    /// minute in Zendesk's past.
    fn initial_start(&self) -> i64 {
        let now = self.client().clock().now().timestamp();
        self.context
            .settings
            .start_date
            .unwrap_or(now - DEFAULT_LOOKBACK_DAYS * 24 * 3600)
            .min(now - EXCLUSION_WINDOW_SECS)
    }

    fn per_page(&self) -> (&'static str, String) {
        (
            "per_page",
            self.context.settings.export_page_size.to_string(),
        )
    }

    /// `start_time`, then `after_cursor` until `end_of_stream`.
    async fn cursor_export(
        &self,
        path: &'static str,
        cursor: Option<Cursor>,
        mut reset: bool,
    ) -> Result<()> {
        let mut position = match cursor {
            None => None,
            Some(Cursor::Export { after_cursor }) => Some(after_cursor),
            Some(other) => return Err(self.wrong_cursor(&other)),
        };
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.def.name,
            "export cursor `after_cursor`",
            "end_of_stream stayed false",
        );
        if let Some(position) = &position {
            guard.start_at(position);
        }
        let mut empty_pages = 0;
        loop {
            let mut query = vec![self.per_page()];
            match &position {
                Some(cursor) => query.push(("cursor", cursor.clone())),
                None => query.push(("start_time", self.initial_start().to_string())),
            }
            query.extend(support_scope(path));
            let listing = self.fetch(Limit::Export, path, &query).await?;
            // Zendesk documents `end_of_stream` on every cursor-based export page ("true if
            // the current request has returned all the results up to the current time"):
            // https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#cursor-based-incremental-exports
            // Without it we cannot tell the last page from a broken one.
            self.require(path, listing.envelope.require_boolean("end_of_stream"))?;
            let page = CursorExport::from_envelope(&listing.envelope);
            let Some(next) = page.after_cursor.clone().or_else(|| position.clone()) else {
                if page.count > 0 {
                    return Err(Error::decode(
                        format!("GET {path} response"),
                        "a page with records has no `after_cursor` to resume from",
                    ));
                }
                return Ok(());
            };
            let mut caught_up = page.caught_up(position.as_deref());
            if page.count == 0 && !caught_up {
                // An empty page further on ("could be [] but end_of_stream false", as
                // other clients of this export note): go on, a bounded number of times.
                empty_pages += 1;
                if empty_pages >= MAX_EMPTY_PAGES {
                    tracing::warn!(
                        stream = self.def.name,
                        "Zendesk answered {MAX_EMPTY_PAGES} empty export pages in a row without reaching the end; the next run goes on from the last cursor."
                    );
                    caught_up = true;
                }
            } else {
                empty_pages = 0;
            }
            if !caught_up {
                // The walk goes on from `next`: it must be a cursor this walk has not
                // followed, or this page repeats what was delivered and must not land.
                guard.follow(&next)?;
            }
            if page.count > 0 || reset || position.as_ref() != Some(&next) {
                let records = self.body_records(listing).await?;
                let cursor = Cursor::Export {
                    after_cursor: next.clone(),
                };
                if !self.emit(records, &cursor, reset).await {
                    return Ok(());
                }
                reset = false;
            }
            if caught_up {
                return Ok(());
            }
            position = Some(next);
        }
    }

    /// Inclusive `start_time` pages, each boundary's ids remembered.
    async fn time_export(
        &self,
        path: &'static str,
        time_field: &'static str,
        cursor: Option<Cursor>,
        mut reset: bool,
    ) -> Result<()> {
        let mut at = match cursor {
            None => TimeBoundary::new(self.initial_start()),
            Some(Cursor::Time { start_time, seen }) => TimeBoundary { start_time, seen },
            Some(other) => return Err(self.wrong_cursor(&other)),
        };
        let key = self.def.records_key();
        // A boundary (start time and the ids landed at it) is this walk's cursor: one that
        // comes back means Zendesk answered a later start time with items already landed.
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.def.name,
            "export boundary (`start_time` and the ids landed at it)",
            "end_of_stream stayed false",
        );
        guard.start_at(&boundary_key(&at));
        loop {
            let mut query = vec![("start_time", at.start_time.to_string()), self.per_page()];
            query.extend(support_scope(path));
            let listing = self.fetch(Limit::Export, path, &query).await?;
            // Time-based export pages document `end_of_stream` (and `end_time`, the next
            // `start_time`): https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#time-based-incremental-exports
            let end_of_stream =
                self.require(path, listing.envelope.require_boolean("end_of_stream"))?;
            let end_time = listing
                .envelope
                .field("end_time")
                .and_then(|t| t.parse::<i64>().ok());
            let count = listing.envelope.count;
            let records = listing.records(key)?;
            let items = records
                .iter()
                .map(|r| {
                    let id = id_of(r).ok_or_else(|| self.malformed(path, "an `id`"))?;
                    let time = time_of(r, time_field)
                        .ok_or_else(|| self.malformed(path, &format!("a valid `{time_field}`")))?;
                    Ok((id, time))
                })
                .collect::<Result<Vec<_>>>()?;
            let advance = at.advance(&items, end_time);
            let mut next = advance.next;
            if !advance.progressed && !end_of_stream && count > 0 {
                // Every item of this page is landed and all share its second: go past the
                // second, or the walk would ask for this page forever. If the second held
                // more items than the page, those after the cut are skipped until they
                // change again, which is data a user must hear about: a warning, not debug.
                tracing::warn!(
                    stream = self.def.name,
                    start_time = at.start_time,
                    "Zendesk answered an export page holding only items already landed from one second; going on past that second. Items of that second beyond this page, if any, land when they next change (or with a full refresh)."
                );
                next = at.past_second();
            }
            if !end_of_stream && count > 0 {
                guard.follow(&boundary_key(&next))?;
            }
            let keep: HashSet<usize> = advance.keep.into_iter().collect();
            let kept: Vec<Value> = records
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.contains(i))
                .map(|(_, r)| r)
                .collect();
            if !kept.is_empty() || reset || next != at {
                let records = self.shape(kept).await?;
                if !self
                    .emit(
                        Records::Values(records),
                        &Cursor::boundary(next.clone()),
                        reset,
                    )
                    .await
                {
                    return Ok(());
                }
                reset = false;
            }
            at = next;
            if end_of_stream || count == 0 {
                return Ok(());
            }
        }
    }

    /// The whole list, page by page; the first page starts a new snapshot.
    async fn snapshot(
        &self,
        path: &'static str,
        cursor: Option<Cursor>,
        replace: bool,
    ) -> Result<()> {
        let (mut after, mut reset) = match cursor {
            None | Some(Cursor::SnapshotDone { .. }) => (None, replace),
            Some(Cursor::Snapshot { after }) => (Some(after), false),
            Some(other) => return Err(self.wrong_cursor(&other)),
        };
        let mut restarted = false;
        let mut guard = list_guard(self.def.name);
        if let Some(after) = &after {
            guard.start_at(after);
        }
        loop {
            let mut query = vec![("page[size]", self.context.settings.page_size.to_string())];
            if let Some(after) = &after {
                query.push(("page[after]", after.clone()));
            }
            let listing = match self.fetch(Limit::Api, path, &query).await {
                Ok(listing) => listing,
                Err(e) if after.is_some() && !restarted && is_bad_cursor(&e) => {
                    tracing::warn!(
                        stream = self.def.name,
                        error = %e,
                        "Zendesk no longer accepts the snapshot's page cursor; taking a new snapshot."
                    );
                    restarted = true;
                    after = None;
                    reset = replace;
                    guard = list_guard(self.def.name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next = next_list_page(&listing, self.def.name, path, &mut guard)?;
            let completed_at = unix(listing.date);
            let records = self.body_records(listing).await?;
            let cursor = match &next {
                Some(after) => Cursor::Snapshot {
                    after: after.clone(),
                },
                None => Cursor::SnapshotDone { completed_at },
            };
            if !self.emit(records, &cursor, reset).await {
                return Ok(());
            }
            reset = false;
            match next {
                None => return Ok(()),
                Some(next) => after = Some(next),
            }
        }
    }

    /// A list answered whole (no paging asked for or documented): one page that replaces
    /// the table. An answer that says more pages follow is refused rather than cut short.
    async fn whole(&self, path: &'static str) -> Result<()> {
        let listing = self.fetch(Limit::Api, path, &[]).await?;
        let more = listing.envelope.flag("meta.has_more")
            || listing.envelope.string("next_page").is_some();
        if more {
            return Err(malformed_page(
                VENDOR,
                self.def.name,
                &format!("GET {path}"),
                "the answer says more pages follow, but Zendesk documents this list as one page",
            ));
        }
        let completed_at = unix(listing.date);
        let records = self.body_records(listing).await?;
        self.emit(records, &Cursor::SnapshotDone { completed_at }, true)
            .await;
        Ok(())
    }

    /// The records of a response body: the body itself when nothing needs changing.
    async fn body_records(&self, listing: Listing) -> Result<Records> {
        if self.def.shape == Shape::Plain {
            return Ok(if listing.envelope.count == 0 {
                Records::Values(Vec::new())
            } else {
                Records::Json {
                    body: listing.body,
                    path: self.def.records,
                }
            });
        }
        if self.def.shape == Shape::Tickets {
            // Converted straight from the body with the custom columns appended to each
            // ticket; `status: deleted` flags the row by the schema's deletion rule.
            if listing.envelope.count == 0 {
                return Ok(Records::Values(Vec::new()));
            }
            let fields = &self.context.custom_fields;
            let columns: HashSet<&str> = fields.values().map(|f| f.column.as_str()).collect();
            let key = self.def.records_key();
            let body = append_fields(&listing.body, key, |ticket| {
                custom_columns_of(ticket, fields, &columns)
            })
            .map_err(|e| Error::decode(format!("Zendesk `{key}` response"), e))?;
            return Ok(Records::Json {
                body: body.into(),
                path: self.def.records,
            });
        }
        let records = listing.records(self.def.records_key())?;
        Ok(Records::Values(self.shape(records).await?))
    }

    /// Applies the stream's shape to parsed records.
    async fn shape(&self, records: Vec<Value>) -> Result<Vec<Record>> {
        let plain = |value: Value| Record {
            value,
            is_deleted: false,
        };
        Ok(match self.def.shape {
            Shape::Plain => records.into_iter().map(plain).collect(),
            Shape::Tickets => records
                .into_iter()
                .map(|ticket| {
                    let is_deleted =
                        ticket.get("status").and_then(Value::as_str) == Some("deleted");
                    Record {
                        value: with_custom_columns(ticket, &self.context.custom_fields),
                        is_deleted,
                    }
                })
                .collect(),
            Shape::Organizations => records
                .into_iter()
                .map(|org| Record {
                    is_deleted: org.get("deleted_at").is_some_and(|d| !d.is_null()),
                    value: org,
                })
                .collect(),
            Shape::Tags => records
                .into_iter()
                .map(|mut tag| {
                    if let Value::Object(fields) = &mut tag {
                        let name = fields.get("name").cloned().unwrap_or(Value::Null);
                        fields.entry("id").or_insert(name);
                    }
                    plain(tag)
                })
                .collect(),
            Shape::TicketEvents => self
                .with_requesters(records)
                .await?
                .into_iter()
                .map(plain)
                .collect(),
        })
    }

    /// Adds `requester_id` to each ticket event: the requester as of the event when this
    /// page's events set it (a `Create` or `Change` of `requester_id`), else the ticket's
    /// current requester from `show_many` (null for a ticket deleted since).
    async fn with_requesters(&self, mut events: Vec<Value>) -> Result<Vec<Value>> {
        let mut current: HashMap<String, Value> = HashMap::new();
        let mut as_of_event: Vec<Option<Value>> = Vec::with_capacity(events.len());
        for event in &events {
            let ticket = event.get("ticket_id").and_then(id_text);
            if let Some(ticket) = &ticket
                && let Some(requester) = requester_set_by(event)
            {
                current.insert(ticket.clone(), requester);
            }
            as_of_event.push(ticket.and_then(|t| current.get(&t).cloned()));
        }
        let missing: BTreeSet<String> = events
            .iter()
            .zip(&as_of_event)
            .filter(|(_, known)| known.is_none())
            .filter_map(|(event, _)| event.get("ticket_id").and_then(id_text))
            .collect();
        let missing: Vec<String> = missing.into_iter().collect();
        let mut looked_up: HashMap<String, Value> = HashMap::new();
        for chunk in missing.chunks(SHOW_MANY_MAX) {
            let query = [("ids", chunk.join(","))];
            // Not a walk: one request per chunk of known ids, so it cannot loop.
            let listing = self
                .client()
                .get(
                    self.def.name,
                    Limit::Api,
                    "/api/v2/tickets/show_many.json",
                    &query,
                    "tickets",
                )
                .await?;
            for ticket in listing.records("tickets")? {
                if let Some(id) = id_of(&ticket) {
                    let requester = ticket.get("requester_id").cloned().unwrap_or(Value::Null);
                    looked_up.insert(id, requester);
                }
            }
        }
        for (event, known) in events.iter_mut().zip(as_of_event) {
            let requester = known.unwrap_or_else(|| {
                event
                    .get("ticket_id")
                    .and_then(id_text)
                    .and_then(|t| looked_up.get(&t).cloned())
                    .unwrap_or(Value::Null)
            });
            if let Value::Object(fields) = event {
                fields.insert("requester_id".to_owned(), requester);
            }
        }
        Ok(events)
    }

    /// `checked`, or a protocol error: the page at `path` is not the documented shape.
    fn require<T>(&self, path: &str, checked: std::result::Result<T, String>) -> Result<T> {
        checked.map_err(|problem| {
            malformed_page(VENDOR, self.def.name, &format!("GET {path}"), &problem)
        })
    }

    fn malformed(&self, path: &str, what: &str) -> Error {
        Error::decode(
            format!("GET {path} response for stream `{}`", self.def.name),
            format!("a record has no {what}"),
        )
    }
}

/// A guard for one cursor-paginated list walk of `stream`.
pub(crate) fn list_guard(stream: &str) -> ProgressGuard {
    ProgressGuard::new(
        VENDOR,
        stream,
        "page cursor `meta.after_cursor`",
        "meta.has_more stayed true",
    )
}

/// The `page[after]` of the page after `listing` in a cursor-paginated list, `None` on the
/// last page.
///
/// Zendesk documents the shape: `meta.has_more` (a boolean) says whether there is a next
/// page, and `meta.after_cursor` is the cursor to request it with
/// (https://developer.zendesk.com/api-reference/introduction/pagination/#using-cursor-pagination).
/// So a missing or non-boolean `has_more`, `has_more` without an `after_cursor`, `has_more`
/// on an empty page, or an `after_cursor` this walk has followed before, is a broken answer
/// that must not end the walk as if complete, nor loop it.
pub(crate) fn next_list_page(
    listing: &Listing,
    stream: &str,
    path: &str,
    guard: &mut ProgressGuard,
) -> Result<Option<String>> {
    let malformed = |problem: &str| malformed_page(VENDOR, stream, &format!("GET {path}"), problem);
    let has_more = listing
        .envelope
        .require_boolean("meta.has_more")
        .map_err(|p| malformed(&p))?;
    if !has_more {
        return Ok(None);
    }
    if listing.envelope.count == 0 {
        return Err(guard.no_progress("an empty records array"));
    }
    let after = listing
        .envelope
        .string("meta.after_cursor")
        .ok_or_else(|| malformed("`meta.has_more` is true but `meta.after_cursor` is missing"))?;
    guard.follow(&after)?;
    Ok(Some(after))
}

/// `support_type_scope=all` for the exports that take it: tickets and ticket events
/// default to `agent`, which leaves out the tickets an AI agent handled ("Lists tickets by
/// support type. Possible values are "all", "agent", or "ai_agent". Defaults to "agent"",
/// https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/).
/// Sent on every request, cursor ones included.
fn support_scope(path: &str) -> Option<(&'static str, String)> {
    matches!(
        path,
        "/api/v2/incremental/tickets/cursor.json" | "/api/v2/incremental/ticket_events.json"
    )
    .then(|| ("support_type_scope", "all".to_owned()))
}

/// A time boundary as a guard key.
fn boundary_key(at: &TimeBoundary) -> String {
    let mut seen = at.seen.clone();
    seen.sort_unstable();
    format!("{}:{}", at.start_time, seen.join(","))
}

/// The `requester_id` a ticket event's `Create` or `Change` child events set, if any.
fn requester_set_by(event: &Value) -> Option<Value> {
    event
        .get("child_events")?
        .as_array()?
        .iter()
        .filter(|child| {
            matches!(
                child.get("event_type").and_then(Value::as_str),
                Some("Create" | "Change")
            )
        })
        .filter_map(|child| child.get("requester_id").filter(|v| !v.is_null()).cloned())
        .next_back()
}

/// A JSON id (number or string) as text.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A record's `id` as text.
pub fn id_of(record: &Value) -> Option<String> {
    record.get("id").and_then(id_text)
}

/// A record's `field` as Unix seconds, from a number or an RFC 3339 text.
pub fn time_of(record: &Value, field: &str) -> Option<i64> {
    match record.get(field)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            tributary_sdk::convert::parse_timestamp(s).map(|m| m.div_euclid(1_000_000))
        }
        _ => None,
    }
}

/// Unix seconds of Zendesk's clock, or of the local clock when Zendesk sent no `Date`.
fn unix(date: Option<DateTime<Utc>>) -> i64 {
    date.unwrap_or_else(Utc::now).timestamp()
}

/// Turns a ticket field list into the fields by id (for [`with_custom_columns`]).
pub fn by_id(fields: &[CustomField]) -> HashMap<i64, CustomField> {
    fields.iter().map(|f| (f.id, f.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tributary_sdk::cursor::{decode, encode};

    #[test]
    fn every_stream_has_a_schema_of_its_name() {
        let schemas = schemas().unwrap();
        assert_eq!(schemas.len(), STREAMS.len());
        assert_eq!(STREAMS.len(), 13);
        for (def, schema) in STREAMS.iter().zip(&schemas) {
            assert_eq!(def.name, schema.name);
            assert_eq!(schema.primary_key, "id");
            assert!(
                schema
                    .column("id")
                    .is_some_and(|c| c.ty == ColumnType::String),
                "{}: ids are text",
                def.name
            );
            let is_events = def.name == "ticket_events";
            assert_eq!(
                schema.kind == tributary_sdk::StreamKind::Events,
                is_events,
                "{}",
                def.name
            );
        }
        assert!(stream("tickets").is_ok());
        let err = stream("nope").unwrap_err();
        assert!(
            matches!(&err, Error::UnknownStream { stream, available } if stream == "nope"
                && available.split(", ").count() == STREAMS.len()),
            "{err}"
        );
    }

    fn field(id: i64, title: &str, kind: &str) -> Value {
        json!({"id": id, "title": title, "type": kind, "removable": true})
    }

    #[test]
    fn custom_field_columns_are_snake_case_and_stable() {
        let fields = vec![
            field(30, "Order number", "text"),
            json!({"id": 1, "title": "Subject", "type": "subject", "removable": false}),
            field(10, "Order Number", "integer"),
            field(20, "VIP customer?", "checkbox"),
            field(40, "Refund (EUR)", "decimal"),
            field(50, "Follow-up date", "date"),
            field(60, "Components", "multiselect"),
            field(70, "Product", "tagger"),
            field(80, "Fields", "text"),
            field(90, "???", "text"),
            field(100, "3D Model", "text"),
        ];
        let reserved = vec!["custom_fields".to_owned(), "id".to_owned()];
        let columns: Vec<(i64, String, ColumnType)> = custom_fields(&fields, &reserved)
            .into_iter()
            .map(|f| (f.id, f.column, f.ty))
            .collect();
        assert_eq!(
            columns,
            vec![
                (10, "custom_order_number".into(), ColumnType::Integer),
                (20, "custom_vip_customer".into(), ColumnType::Boolean),
                (30, "custom_order_number_30".into(), ColumnType::String),
                (40, "custom_refund_eur".into(), ColumnType::Number),
                (50, "custom_follow_up_date".into(), ColumnType::Timestamp),
                (60, "custom_components".into(), ColumnType::Json),
                (70, "custom_product".into(), ColumnType::String),
                (80, "custom_fields_80".into(), ColumnType::String),
                (90, "custom_90".into(), ColumnType::String),
                (100, "custom_3_d_model".into(), ColumnType::String),
            ]
        );
        // A newer field with a clashing title never renames the older one's column.
        let mut more = fields.clone();
        more.push(field(5_000, "order-number", "text"));
        let again = custom_fields(&more, &reserved);
        assert_eq!(again[0].column, "custom_order_number");
        assert_eq!(
            again.last().map(|f| f.column.as_str()),
            Some("custom_order_number_5000")
        );
        for f in &again {
            assert!(
                tributary_sdk::schema::is_column_name(&f.column),
                "{}",
                f.column
            );
        }
    }

    #[test]
    fn tickets_gain_typed_custom_columns() {
        let fields = custom_fields(
            &[
                field(1, "Seats", "integer"),
                field(2, "Refund", "decimal"),
                field(3, "VIP", "checkbox"),
                field(4, "Parts", "multiselect"),
            ],
            &[],
        );
        let ticket = json!({"id": 9, "custom_fields": [
            {"id": 1, "value": "12"}, {"id": 2, "value": "19.50"}, {"id": 3, "value": true},
            {"id": 4, "value": ["a", "b"]}, {"id": 99, "value": "unknown field"}
        ]});
        let out = with_custom_columns(ticket, &by_id(&fields));
        assert_eq!(out["custom_seats"], 12);
        assert_eq!(out["custom_refund"], 19.5);
        assert_eq!(out["custom_vip"], true);
        assert_eq!(out["custom_parts"], json!(["a", "b"]));
        assert_eq!(out["custom_fields"].as_array().map(Vec::len), Some(5));
        let schema = tickets_schema(&schemas().unwrap()[0], &fields);
        assert_eq!(
            schema.column("custom_refund").map(|c| c.ty),
            Some(ColumnType::Number)
        );
        schema.validate().unwrap();
        // Text that is not a number stays as it is, to be rescued, not lost.
        assert_eq!(coerce(ColumnType::Integer, &json!("n/a")), json!("n/a"));
    }

    #[test]
    fn custom_columns_appended_to_the_body_match_the_shaped_ticket() {
        let fields = by_id(&custom_fields(
            &[
                field(1, "Seats", "integer"),
                field(2, "Refund", "decimal"),
                field(3, "VIP", "checkbox"),
                field(4, "Parts", "multiselect"),
                field(5, "Mine", "text"),
            ],
            &[],
        ));
        let columns: HashSet<&str> = fields.values().map(|f| f.column.as_str()).collect();
        // The first entry of a field wins, even null; a column the ticket has is kept.
        let ticket = json!({"id": 9, "custom_mine": "own", "custom_fields": [
            {"id": 1, "value": "12"}, {"id": 1, "value": "13"}, {"id": 2, "value": "19.50"},
            {"id": 3, "value": null}, {"id": 3, "value": true}, {"id": 4, "value": ["a", "b"]},
            {"id": 5, "value": "theirs"}, {"id": 99, "value": "unknown field"}, 7, {"id": "1"}
        ]});
        let body = serde_json::to_vec(
            &json!({"tickets": [ticket, {"id": 10}, {}], "end_of_stream": true}),
        )
        .unwrap();
        let out = append_fields(&body, "tickets", |raw| {
            custom_columns_of(raw, &fields, &columns)
        })
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let shaped: Vec<Value> = body_tickets(&body)
            .into_iter()
            .map(|t| with_custom_columns(t, &fields))
            .collect();
        assert_eq!(out["tickets"], Value::Array(shaped));
        assert_eq!(out["tickets"][0]["custom_seats"], 12);
        assert_eq!(out["tickets"][0]["custom_vip"], Value::Null);
        assert_eq!(out["tickets"][0]["custom_mine"], "own");
        assert_eq!(out["end_of_stream"], true);
    }

    fn body_tickets(body: &[u8]) -> Vec<Value> {
        let root: Value = serde_json::from_slice(body).unwrap();
        root["tickets"].as_array().unwrap().clone()
    }

    #[test]
    fn cursors_round_trip() {
        let cursors = [
            Cursor::Export {
                after_cursor: "MTU3NjYxMzUzOS4wfHw0Njd8".into(),
            },
            Cursor::Time {
                start_time: 1_700_000_000,
                seen: vec!["1".into(), "2".into()],
            },
            Cursor::Time {
                start_time: 5,
                seen: vec![],
            },
            Cursor::Snapshot {
                after: "abc".into(),
            },
            Cursor::SnapshotDone { completed_at: 9 },
        ];
        for cursor in cursors {
            let json = encode(&cursor);
            assert_eq!(decode::<Cursor>("s", Some(json)).unwrap(), Some(cursor));
        }
        assert_eq!(
            encode(&Cursor::Time {
                start_time: 5,
                seen: vec![]
            }),
            json!({"mode": "time", "start_time": 5})
        );
        assert_eq!(decode::<Cursor>("s", Some(Value::Null)).unwrap(), None);
        let err = decode::<Cursor>("tickets", Some(json!({"mode": "later"}))).unwrap_err();
        assert!(
            matches!(err, Error::Cursor { ref stream, .. } if stream == "tickets"),
            "{err}"
        );
    }

    #[test]
    fn requesters_come_from_create_and_change_events() {
        let event = json!({"id": 1, "ticket_id": 5, "child_events": [
            {"event_type": "Create", "requester_id": 11},
            {"event_type": "Comment", "comment_present": true},
            {"event_type": "Change", "requester_id": 12, "previous_value": 11}
        ]});
        assert_eq!(requester_set_by(&event), Some(json!(12)));
        let none = json!({"id": 2, "ticket_id": 5, "child_events": [
            {"event_type": "Change", "status": "solved", "previous_value": "open"}
        ]});
        assert_eq!(requester_set_by(&none), None);
    }

    #[test]
    fn times_and_ids_read_numbers_and_text() {
        let record = json!({"id": 7, "updated_at": "2024-01-01T00:00:05Z", "timestamp": 9});
        assert_eq!(id_of(&record).as_deref(), Some("7"));
        assert_eq!(time_of(&record, "updated_at"), Some(1_704_067_205));
        assert_eq!(time_of(&record, "timestamp"), Some(9));
        assert_eq!(time_of(&record, "nope"), None);
        assert_eq!(id_of(&json!({"id": null})), None);
    }
}
