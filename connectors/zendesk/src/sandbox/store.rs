//! The simulated account: objects by kind, the ticket event log, and the queries and
//! mutations the HTTP layer and the Rust API share.
//!
//! Each exported kind keeps an index by (export time, id) — a ticket's
//! `generated_timestamp`, a user's or organization's `updated_at` — so export pages are
//! range reads. Every ticket change appends a ticket event ("Audit") with its child
//! events, in time order, the way Zendesk's ticket event export shows them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::generate;

/// The kinds of object the simulator stores (tags are derived from tickets, users and
/// organizations; ticket events are a log of ticket changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Ticket,
    User,
    Organization,
    Group,
    GroupMembership,
    OrganizationMembership,
    TicketField,
    TicketForm,
    TicketMetric,
    SatisfactionRating,
    Brand,
}

impl Kind {
    pub(crate) const ALL: [Kind; 11] = [
        Kind::Ticket,
        Kind::User,
        Kind::Organization,
        Kind::Group,
        Kind::GroupMembership,
        Kind::OrganizationMembership,
        Kind::TicketField,
        Kind::TicketForm,
        Kind::TicketMetric,
        Kind::SatisfactionRating,
        Kind::Brand,
    ];

    /// The plural in URLs and response keys: `tickets`.
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Ticket => "tickets",
            Kind::User => "users",
            Kind::Organization => "organizations",
            Kind::Group => "groups",
            Kind::GroupMembership => "group_memberships",
            Kind::OrganizationMembership => "organization_memberships",
            Kind::TicketField => "ticket_fields",
            Kind::TicketForm => "ticket_forms",
            Kind::TicketMetric => "ticket_metrics",
            Kind::SatisfactionRating => "satisfaction_ratings",
            Kind::Brand => "brands",
        }
    }

    /// The singular key of one object in request and response bodies: `ticket`.
    pub(crate) fn singular(self) -> &'static str {
        match self {
            Kind::Ticket => "ticket",
            Kind::User => "user",
            Kind::Organization => "organization",
            Kind::Group => "group",
            Kind::GroupMembership => "group_membership",
            Kind::OrganizationMembership => "organization_membership",
            Kind::TicketField => "ticket_field",
            Kind::TicketForm => "ticket_form",
            Kind::TicketMetric => "ticket_metric",
            Kind::SatisfactionRating => "satisfaction_rating",
            Kind::Brand => "brand",
        }
    }

    pub(crate) fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }

    /// Whether deleting keeps the object, marked (tickets, users, organizations, groups),
    /// rather than removing it.
    fn soft_deletes(self) -> bool {
        matches!(
            self,
            Kind::Ticket | Kind::User | Kind::Organization | Kind::Group
        )
    }
}

/// One object, its export time and its JSON.
#[derive(Debug, Clone)]
pub(crate) struct Obj {
    pub(crate) value: Map<String, Value>,
    /// Unix seconds the export orders and filters by.
    pub(crate) ts: i64,
    /// `value` as compact JSON, rendered when the object is stored (objects change only
    /// by being stored again): export pages copy it instead of serializing a thousand maps
    /// per request, which was nearly all of the simulator's CPU, taken from the sync it
    /// serves on the same cores (Stripe's simulator pre-renders its pages likewise).
    pub(crate) json: Box<[u8]>,
}

impl Obj {
    pub(crate) fn new(value: Map<String, Value>, ts: i64) -> Obj {
        // Serialising a map of JSON values cannot fail.
        let json = serde_json::to_vec(&value)
            .unwrap_or_default()
            .into_boxed_slice();
        Obj { value, ts, json }
    }
}

/// The objects of one kind, by id and by (export time, id).
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) objects: BTreeMap<u64, Obj>,
    order: BTreeSet<(i64, u64)>,
}

impl Table {
    pub(crate) fn put(&mut self, id: u64, obj: Obj) {
        if let Some(old) = self.objects.get(&id) {
            self.order.remove(&(old.ts, id));
        }
        self.order.insert((obj.ts, id));
        self.objects.insert(id, obj);
    }

    fn remove(&mut self, id: u64) -> Option<Obj> {
        let obj = self.objects.remove(&id)?;
        self.order.remove(&(obj.ts, id));
        Some(obj)
    }
}

/// A page of a cursor-based export.
#[derive(Debug)]
pub(crate) struct CursorPage<'a> {
    pub(crate) items: Vec<&'a Obj>,
    /// The position after the last item (or the one asked from, when empty).
    pub(crate) after: (i64, u64),
    pub(crate) end_of_stream: bool,
}

/// A page of a time-based export.
#[derive(Debug)]
pub(crate) struct TimePage<'a> {
    pub(crate) items: Vec<&'a Map<String, Value>>,
    /// The time of the last item (or the start time, when empty).
    pub(crate) end_time: i64,
    pub(crate) end_of_stream: bool,
}

/// The account.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) tables: HashMap<Kind, Table>,
    /// Ticket events, in (timestamp, id) order.
    pub(crate) events: Vec<Map<String, Value>>,
    next_id: u64,
    /// Ticket ids are the account's own sequence, 1, 2, 3, … as at Zendesk.
    next_ticket_id: u64,
    pub(crate) rng: StdRng,
    /// The admin the sandbox's credentials sign in as.
    pub(crate) admin_id: u64,
}

/// `ts` as Zendesk prints times: `2024-05-01T12:00:00Z`.
pub(crate) fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// How long after it closed Zendesk archives a ticket: "in most cases ... 120 days after
/// the ticket status changes to Closed" (About ticket archiving,
/// https://support.zendesk.com/hc/en-us/articles/4408887617050).
pub(crate) const ARCHIVE_AFTER_SECS: i64 = 120 * 86_400;

/// Fields clients may not set.
const READ_ONLY: &[&str] = &[
    "id",
    "url",
    "created_at",
    "updated_at",
    "generated_timestamp",
    "deleted_at",
];

impl Store {
    pub(crate) fn empty(rng: StdRng) -> Store {
        Store {
            tables: Kind::ALL
                .into_iter()
                .map(|k| (k, Table::default()))
                .collect(),
            events: Vec::new(),
            next_id: 360_000_000_000,
            next_ticket_id: 0,
            rng,
            admin_id: 0,
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The id of a new object of `kind`.
    pub(crate) fn new_id(&mut self, kind: Kind) -> u64 {
        if kind == Kind::Ticket {
            self.next_ticket_id += 1;
            self.next_ticket_id
        } else {
            self.next_id()
        }
    }

    pub(crate) fn table(&self, kind: Kind) -> &Table {
        // Every kind has a table from `empty`; an absent one reads as empty.
        static EMPTY: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
        self.tables
            .get(&kind)
            .unwrap_or_else(|| EMPTY.get_or_init(Table::default))
    }

    pub(crate) fn table_mut(&mut self, kind: Kind) -> &mut Table {
        self.tables.entry(kind).or_default()
    }

    pub(crate) fn get(&self, kind: Kind, id: u64) -> Option<&Map<String, Value>> {
        self.table(kind).objects.get(&id).map(|o| &o.value)
    }

    /// Whether the object is deleted (but kept, as Zendesk keeps it).
    pub(crate) fn is_deleted(kind: Kind, value: &Map<String, Value>) -> bool {
        match kind {
            Kind::Ticket => value.get("status").and_then(Value::as_str) == Some("deleted"),
            Kind::User => value.get("active").and_then(Value::as_bool) == Some(false),
            Kind::Organization => value.get("deleted_at").is_some_and(|d| !d.is_null()),
            Kind::Group => value.get("deleted").and_then(Value::as_bool) == Some(true),
            _ => false,
        }
    }

    /// The lowest id of an object of `kind` that is not deleted (without collecting them
    /// all: the seed asks once per membership).
    pub(crate) fn first_live_id(&self, kind: Kind) -> Option<u64> {
        self.table(kind)
            .objects
            .iter()
            .find(|(_, o)| !Self::is_deleted(kind, &o.value))
            .map(|(id, _)| *id)
    }

    /// Ids of the objects of `kind` that are not deleted, ascending.
    /// Whether a list of `kind` shows the object at `now`: "Archived tickets are not
    /// included" in the ticket metrics list
    /// (https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_metrics/), and
    /// Zendesk archives a ticket closed for 120 days.
    pub(crate) fn listed(&self, kind: Kind, value: &Map<String, Value>, now: i64) -> bool {
        kind != Kind::TicketMetric
            || !value
                .get("ticket_id")
                .and_then(Value::as_u64)
                .and_then(|ticket| self.get(Kind::Ticket, ticket))
                .is_some_and(|ticket| {
                    ticket.get("status").and_then(Value::as_str) == Some("closed")
                        && ticket
                            .get("generated_timestamp")
                            .and_then(Value::as_i64)
                            .is_some_and(|at| at < now - ARCHIVE_AFTER_SECS)
                })
    }

    /// Whether ticket `id` was handled by an AI agent: one ticket in twenty, by id, so
    /// exports left at Zendesk's default `support_type_scope` (`agent`) miss some.
    pub(crate) fn ai_agent_ticket(id: u64) -> bool {
        id % 20 == 7
    }

    pub(crate) fn live_ids(&self, kind: Kind) -> Vec<u64> {
        self.table(kind)
            .objects
            .iter()
            .filter(|(_, o)| !Self::is_deleted(kind, &o.value))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stores an object built by the seed (no event, no checks).
    pub(crate) fn insert(&mut self, kind: Kind, value: Map<String, Value>) -> u64 {
        let id = value.get("id").and_then(Value::as_u64).unwrap_or(0);
        let ts = export_time(kind, &value);
        self.table_mut(kind).put(id, Obj::new(value, ts));
        id
    }

    /// Appends a ticket event, keeping the log in time order.
    pub(crate) fn push_event(&mut self, event: Map<String, Value>) {
        self.events.push(event);
    }

    /// Sorts the event log (after seeding, which builds it out of order).
    pub(crate) fn sort_events(&mut self) {
        self.events.sort_by_key(|e| {
            (
                e.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
                e.get("id").and_then(Value::as_u64).unwrap_or(0),
            )
        });
    }

    // -----------------------------------------------------------------------------------
    // Mutations
    // -----------------------------------------------------------------------------------

    /// Creates an object: a generated one with `fields` set over it.
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        fields: Map<String, Value>,
        now: i64,
    ) -> Result<Map<String, Value>, ApiError> {
        let id = self.new_id(kind);
        let mut value = generate::template(self, kind, id, now);
        let comment = check_fields(kind, &fields, &value)?;
        for (key, new) in fields {
            if key == "custom_fields" {
                merge_custom_fields(&mut value, &new)?;
            } else if key != "comment" {
                value.insert(key, new);
            }
        }
        if kind == Kind::Ticket {
            if let Some(body) = comment
                .as_ref()
                .and_then(|c| c.get("body"))
                .and_then(Value::as_str)
            {
                value.insert("description".into(), Value::String(body.to_owned()));
            }
            let event = generate::created_event(self, &value, now);
            self.push_event(event);
            let metric = generate::ticket_metric(self, &value, now);
            self.insert(Kind::TicketMetric, metric);
        }
        self.insert(kind, value.clone());
        Ok(value)
    }

    /// Changes the given top-level fields of an object; a ticket change is logged as a
    /// ticket event with one child event per changed field.
    pub(crate) fn update(
        &mut self,
        kind: Kind,
        id: u64,
        fields: Map<String, Value>,
        now: i64,
    ) -> Result<Map<String, Value>, ApiError> {
        let current = self
            .get(kind, id)
            .filter(|v| !Self::is_deleted(kind, v))
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        let comment = check_fields(kind, &fields, &current)?;
        let mut value = current.clone();
        let mut children: Vec<Value> = Vec::new();
        for (key, new) in fields {
            match key.as_str() {
                "comment" => {}
                "custom_fields" => {
                    let before = value.get("custom_fields").cloned().unwrap_or(Value::Null);
                    merge_custom_fields(&mut value, &new)?;
                    children.extend(custom_field_changes(&before, &value["custom_fields"]));
                }
                "tags" => {
                    let old = value.get("tags").cloned().unwrap_or(json!([]));
                    if old != new {
                        children.push(tags_change(&old, &new));
                        value.insert(key, new);
                    }
                }
                _ => {
                    let old = value.get(&key).cloned().unwrap_or(Value::Null);
                    if old != new {
                        let mut child = Map::new();
                        child.insert(key.clone(), new.clone());
                        child.insert("previous_value".into(), old);
                        children.push(Value::Object(child));
                        value.insert(key, new);
                    }
                }
            }
        }
        if kind == Kind::Ticket {
            if let Some(comment) = &comment {
                let public = comment
                    .get("public")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                children.push(json!({"comment_present": true, "comment_public": public, "event_type": "Comment"}));
            }
            if children.is_empty() {
                return Ok(value);
            }
            let solved = value.get("status") != current.get("status")
                && matches!(
                    value.get("status").and_then(Value::as_str),
                    Some("solved" | "closed")
                );
            touch(kind, &mut value, now);
            let event = generate::audit(self, &value, now, children);
            self.push_event(event);
            if solved {
                self.mark_solved(id, now);
            }
        } else if value == current {
            return Ok(value);
        } else {
            touch(kind, &mut value, now);
        }
        self.insert(kind, value.clone());
        Ok(value)
    }

    /// Deletes an object: tickets become `status: deleted`, users `active: false`,
    /// organizations get `deleted_at`, groups `deleted: true` (all still exported or
    /// listed, as at Zendesk); other kinds are removed.
    pub(crate) fn delete(&mut self, kind: Kind, id: u64, now: i64) -> Result<(), ApiError> {
        let current = self
            .get(kind, id)
            .filter(|v| !Self::is_deleted(kind, v))
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        if !kind.soft_deletes() {
            self.table_mut(kind).remove(id);
            return Ok(());
        }
        let mut value = current;
        match kind {
            Kind::Ticket => {
                let old = value.insert("status".into(), json!("deleted"));
                touch(kind, &mut value, now);
                let child =
                    json!({"status": "deleted", "previous_value": old, "event_type": "Change"});
                let event = generate::audit(self, &value, now, vec![child]);
                self.push_event(event);
            }
            Kind::User => {
                value.insert("active".into(), json!(false));
                touch(kind, &mut value, now);
            }
            Kind::Organization => {
                value.insert("deleted_at".into(), json!(iso(now)));
                touch(kind, &mut value, now);
            }
            _ => {
                value.insert("deleted".into(), json!(true));
                touch(kind, &mut value, now);
            }
        }
        self.insert(kind, value);
        Ok(())
    }

    fn mark_solved(&mut self, ticket: u64, now: i64) {
        let metric = self
            .table(Kind::TicketMetric)
            .objects
            .iter()
            .find(|(_, m)| m.value.get("ticket_id").and_then(Value::as_u64) == Some(ticket))
            .map(|(id, m)| (*id, m.value.clone()));
        if let Some((_, mut metric)) = metric {
            metric.insert("solved_at".into(), json!(iso(now)));
            touch(Kind::TicketMetric, &mut metric, now);
            self.insert(Kind::TicketMetric, metric);
        }
    }

    // -----------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------

    /// Objects of `kind` after position `after` in (time, id) order, up to `horizon`
    /// (inclusive): a cursor-based export page.
    pub(crate) fn cursor_export(
        &self,
        kind: Kind,
        after: (i64, u64),
        per_page: usize,
        horizon: i64,
    ) -> CursorPage<'_> {
        let table = self.table(kind);
        if after.0 > horizon {
            return CursorPage {
                items: Vec::new(),
                after,
                end_of_stream: true,
            };
        }
        let mut range = table
            .order
            .range((
                std::ops::Bound::Excluded(after),
                std::ops::Bound::Included((horizon, u64::MAX)),
            ))
            .peekable();
        let mut items = Vec::new();
        let mut last = after;
        while items.len() < per_page {
            let Some(&(ts, id)) = range.next() else { break };
            if let Some(obj) = table.objects.get(&id) {
                items.push(obj);
            }
            last = (ts, id);
        }
        CursorPage {
            items,
            after: last,
            end_of_stream: range.peek().is_none(),
        }
    }

    /// Objects of `kind` with time at or after `start`, up to `horizon`, `per_page` of them
    /// and then every other item of the last one's second (a page never splits a second,
    /// or the inclusive `start_time` of the next page could loop): a time-based export page.
    pub(crate) fn time_export(
        &self,
        kind: Kind,
        start: i64,
        per_page: usize,
        horizon: i64,
    ) -> TimePage<'_> {
        let table = self.table(kind);
        if start > horizon {
            return TimePage {
                items: Vec::new(),
                end_time: start,
                end_of_stream: true,
            };
        }
        let mut range = table
            .order
            .range((start, 0)..=(horizon, u64::MAX))
            .peekable();
        let mut items = Vec::new();
        let mut end_time = start;
        while let Some(&&(ts, id)) = range.peek() {
            if items.len() >= per_page && ts != end_time {
                break;
            }
            range.next();
            if let Some(obj) = table.objects.get(&id) {
                items.push(&obj.value);
            }
            end_time = ts;
        }
        TimePage {
            items,
            end_time,
            end_of_stream: range.peek().is_none(),
        }
    }

    /// Ticket events with `timestamp` at or after `start`, like [`Store::time_export`].
    pub(crate) fn event_export(&self, start: i64, per_page: usize, horizon: i64) -> TimePage<'_> {
        let time = |e: &Map<String, Value>| e.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
        let first = self.events.partition_point(|e| time(e) < start);
        let mut items = Vec::new();
        let mut end_time = start;
        let mut i = first;
        while let Some(event) = self.events.get(i) {
            let ts = time(event);
            if ts > horizon || (items.len() >= per_page && ts != end_time) {
                break;
            }
            items.push(event);
            end_time = ts;
            i += 1;
        }
        let end_of_stream = self.events.get(i).is_none_or(|e| time(e) > horizon);
        TimePage {
            items,
            end_time,
            end_of_stream,
        }
    }

    /// A page of `kind` in id order after `after`: (items, has_more).
    pub(crate) fn list(
        &self,
        kind: Kind,
        after: Option<u64>,
        size: usize,
        now: i64,
    ) -> (Vec<&Map<String, Value>>, bool) {
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut range = self
            .table(kind)
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, o)| &o.value)
            .filter(|v| self.listed(kind, v, now));
        let items: Vec<_> = range.by_ref().take(size).collect();
        let has_more = range.next().is_some();
        (items, has_more)
    }

    /// Tags in use on live tickets, users and organizations, with counts, by name.
    pub(crate) fn tags(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for kind in [Kind::Ticket, Kind::User, Kind::Organization] {
            for obj in self.table(kind).objects.values() {
                if Self::is_deleted(kind, &obj.value) {
                    continue;
                }
                let tags = obj.value.get("tags").and_then(Value::as_array);
                for tag in tags.into_iter().flatten().filter_map(Value::as_str) {
                    *counts.entry(tag.to_owned()).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

/// Sets `updated_at` (and a ticket's `generated_timestamp`) to `now`.
fn touch(kind: Kind, value: &mut Map<String, Value>, now: i64) {
    value.insert("updated_at".into(), json!(iso(now)));
    if kind == Kind::Ticket {
        value.insert("generated_timestamp".into(), json!(now));
    }
}

/// The time the exports order `value` by.
fn export_time(kind: Kind, value: &Map<String, Value>) -> i64 {
    if kind == Kind::Ticket
        && let Some(ts) = value.get("generated_timestamp").and_then(Value::as_i64)
    {
        return ts;
    }
    value
        .get("updated_at")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0, |t| t.timestamp())
}

/// Refuses fields the object does not have or clients may not set; returns a ticket's
/// `comment`, which is not a field.
fn check_fields(
    kind: Kind,
    fields: &Map<String, Value>,
    reference: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let mut comment = None;
    for (key, value) in fields {
        if kind == Kind::Ticket && key == "comment" {
            match value {
                Value::Object(c) => comment = Some(c.clone()),
                _ => return Err(ApiError::record_invalid("comment must be an object")),
            }
            continue;
        }
        if READ_ONLY.contains(&key.as_str()) {
            return Err(ApiError::record_invalid(format!("`{key}` is read-only")));
        }
        if !reference.contains_key(key) {
            return Err(ApiError::record_invalid(format!(
                "`{key}` is not an attribute of {}",
                kind.singular()
            )));
        }
        if key == "custom_fields" && !value.is_array() {
            return Err(ApiError::record_invalid(
                "custom_fields must be a list of {id, value}",
            ));
        }
    }
    Ok(comment)
}

/// Merges `[{id, value}]` into a ticket's `custom_fields` (and its legacy copy `fields`).
fn merge_custom_fields(ticket: &mut Map<String, Value>, new: &Value) -> Result<(), ApiError> {
    let mut list: Vec<Value> = ticket
        .get("custom_fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in new.as_array().into_iter().flatten() {
        let Some(id) = entry.get("id").and_then(Value::as_i64) else {
            return Err(ApiError::record_invalid("a custom field has no numeric id"));
        };
        let value = entry.get("value").cloned().unwrap_or(Value::Null);
        match list
            .iter_mut()
            .find(|e| e.get("id").and_then(Value::as_i64) == Some(id))
        {
            Some(existing) => existing["value"] = value,
            None => list.push(json!({"id": id, "value": value})),
        }
    }
    ticket.insert("custom_fields".into(), Value::Array(list.clone()));
    ticket.insert("fields".into(), Value::Array(list));
    Ok(())
}

/// Child events for custom fields whose value changed, in the `field_name`/`value` form.
fn custom_field_changes(before: &Value, after: &Value) -> Vec<Value> {
    let old: HashMap<i64, &Value> = before
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e.get("id")?.as_i64()?, e.get("value")?)))
        .collect();
    after
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let id = e.get("id")?.as_i64()?;
            let value = e.get("value").cloned().unwrap_or(Value::Null);
            let previous = old.get(&id).map_or(Value::Null, |v| (*v).clone());
            (previous != value).then(|| {
                json!({"field_name": id.to_string(), "value": value, "previous_value": previous})
            })
        })
        .collect()
}

/// The child event of a tags change: the new tags, and which were added and removed.
fn tags_change(old: &Value, new: &Value) -> Value {
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let (old, new_set) = (set(old), set(new));
    json!({
        "tags": new,
        "added_tags": new_set.difference(&old).collect::<Vec<_>>(),
        "removed_tags": old.difference(&new_set).collect::<Vec<_>>(),
    })
}
