//! The simulated account: every object of every type, in Stripe's list order, with its
//! rendered JSON cached, plus the event feed that mutations append to.
//!
//! Each table is a `Vec` sorted by `(created, seq)` (oldest first) and a map from id to
//! that key, so a cursor is found by one hash lookup and one binary search. Deleted objects
//! stay in the vector as tombstones: a client paging over them concurrently still holds a
//! valid cursor. Objects are kept only as their rendered bytes (a parsed tree of 100k
//! charges would cost gigabytes); a mutation parses, changes and re-renders one object.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::generate::{DIRECT_ITEM_BASE, Fields, Gen};
use super::kinds::{ALL_KINDS, DeleteMode, KIND_COUNT, Kind};
use super::render::{LIST_DEPTH, Template, dedent_list_item, render, render_top, set_path};

/// The fixture objects, copied from Stripe's OpenAPI fixtures (one per type we serve).
const FIXTURES: &str = include_str!("../../fixtures/fixtures3.json");

/// The simulator's own API version: the one its objects are shaped in, the version of
/// Stripe's example objects in `fixtures3.json` (stripe/openapi's `2026-07-29.dahlia`
/// release). Objects fetched or listed are always in it, as are events until the account's
/// version is set to another.
pub(crate) const API_VERSION: &str = "2026-07-29.dahlia";

/// Stripe keeps events for 30 days.
pub(crate) const EVENT_RETENTION: i64 = 30 * 86_400;

/// Seeding works in chunks of this many objects, spread over the available cores.
const CHUNK: usize = 8_192;

/// One object (or tombstone) in a table.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    created: i64,
    seq: u64,
    id: Box<str>,
    /// The object rendered at [`LIST_DEPTH`]; empty once deleted.
    body: Bytes,
    deleted: bool,
    /// What the indexed filter of the type compares: an event's type, a subscription
    /// item's subscription.
    tag: Option<Box<str>>,
}

impl Entry {
    fn key(&self) -> (i64, u64) {
        (self.created, self.seq)
    }
}

#[derive(Debug)]
struct Table {
    /// Oldest first: `(created, seq)` ascending.
    entries: Vec<Entry>,
    index: HashMap<Box<str>, (i64, u64)>,
    next_seq: u64,
    /// The generator index of the next object created through the API.
    next_index: u64,
}

impl Table {
    fn position(&self, id: &str) -> Option<usize> {
        let key = *self.index.get(id)?;
        self.entries.binary_search_by(|e| e.key().cmp(&key)).ok()
    }

    fn insert(&mut self, entry: Entry) {
        let key = entry.key();
        let pos = self.entries.partition_point(|e| e.key() < key);
        self.index.insert(entry.id.clone(), key);
        self.entries.insert(pos, entry);
    }

    fn first_at_or_after(&self, created: i64) -> usize {
        self.entries.partition_point(|e| e.created < created)
    }
}

/// Who caused a mutation, for the event's `request` field.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub(crate) request_id: Option<String>,
    pub(crate) idempotency_key: Option<String>,
}

/// Which way a list request pages.
#[derive(Debug, Clone, Default)]
pub(crate) enum Cursor {
    #[default]
    None,
    StartingAfter(String),
    EndingBefore(String),
}

/// A parsed list request.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub(crate) limit: usize,
    pub(crate) cursor: Cursor,
    /// Inclusive bounds on `created`.
    pub(crate) created_min: i64,
    pub(crate) created_max: i64,
    /// Events: names, `*` matching any run of characters. Empty = all.
    pub(crate) types: Vec<String>,
    /// Subscription items: the subscription.
    pub(crate) parent: Option<String>,
    /// Equality filters on top-level fields.
    pub(crate) fields: Vec<(String, String)>,
    /// Statuses listed (empty: any) and one left out: Stripe's subscription list leaves
    /// out canceled ones unless `status` asks (see `http::list_query`).
    pub(crate) status_in: Vec<&'static str>,
    pub(crate) status_not: Option<&'static str>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            limit: 10,
            cursor: Cursor::None,
            created_min: i64::MIN,
            created_max: i64::MAX,
            types: Vec::new(),
            parent: None,
            fields: Vec::new(),
            status_in: Vec::new(),
            status_not: None,
        }
    }
}

/// One page of a list, newest first, as cached bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    pub(crate) items: Vec<Bytes>,
    pub(crate) has_more: bool,
}

/// The whole simulated account.
#[derive(Debug)]
pub(crate) struct Store {
    tables: Vec<Table>,
    generator: Gen,
    fixtures: Vec<Value>,
    /// The account's API version, which Stripe renders new events in (see
    /// [`Store::set_account_version`]).
    account_version: String,
    /// Pending balance transactions by `available_on`, oldest first.
    pending: Vec<(i64, Box<str>)>,
}

impl Store {
    /// Seeds an account of `records` charges (see [`Kind::seeded_count`]) whose objects were
    /// created during the 60 days before `start`.
    pub(crate) fn generate(seed: u64, start: i64, records: usize) -> Result<Store, ApiError> {
        let mut store = Store::generate_objects(seed, start, records)?;
        store.seed_history(start);
        Ok(store)
    }

    /// The seeded objects without their event history.
    fn generate_objects(seed: u64, start: i64, records: usize) -> Result<Store, ApiError> {
        let fixtures = load_fixtures()?;
        let generator = Gen::new(seed, start, records);
        let mut tables = Vec::with_capacity(KIND_COUNT);
        let templates: Vec<Option<Template>> = ALL_KINDS
            .iter()
            .map(|&kind| {
                let mut sample = Fields::new();
                generator.vary(kind, 0, generator.start, &mut sample);
                let paths = sample.into_iter().map(|(p, _)| p.into_owned()).collect();
                Template::new(&fixtures[kind.index()], paths)
            })
            .collect();

        // Work items: (kind, first index, end index); workers take them in turn.
        let mut work = Vec::new();
        for kind in ALL_KINDS {
            let n = generator.count(kind);
            for start in (0..n).step_by(CHUNK) {
                work.push((kind, start, (start + CHUNK).min(n)));
            }
        }
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let mut chunks: Vec<(usize, Vec<Entry>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        let mut scratch = Vec::with_capacity(16 * 1024);
                        loop {
                            let w = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(kind, from, to)) = work.get(w) else {
                                break;
                            };
                            let template = templates[kind.index()].as_ref();
                            let fixture = &fixtures[kind.index()];
                            let entries = (from..to)
                                .map(|i| {
                                    seed_entry(
                                        &generator,
                                        kind,
                                        i as u64,
                                        template,
                                        fixture,
                                        &mut scratch,
                                    )
                                })
                                .collect();
                            done.push((w, entries));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        chunks.sort_by_key(|(w, _)| *w);
        if chunks.len() != work.len() {
            return Err(ApiError::internal("a seeding thread failed"));
        }

        let mut chunks = chunks.into_iter().peekable();
        for kind in ALL_KINDS {
            let mut entries = Vec::with_capacity(generator.count(kind));
            while let Some((_, chunk)) = chunks.next_if(|(w, _)| work[*w].0 == kind) {
                entries.extend(chunk);
            }
            if !entries.is_sorted_by_key(Entry::key) {
                entries.sort_by_key(Entry::key);
            }
            let index = entries.iter().map(|e| (e.id.clone(), e.key())).collect();
            let n = entries.len() as u64;
            tables.push(Table {
                entries,
                index,
                next_seq: n,
                next_index: n,
            });
        }
        let mut store = Store {
            tables,
            generator,
            fixtures,
            account_version: API_VERSION.to_owned(),
            pending: Vec::new(),
        };
        let pending: Vec<Value> = store
            .table(Kind::BalanceTransaction)
            .entries
            .iter()
            .rev()
            .take_while(|e| e.created >= start - 30 * 86_400)
            .filter_map(|e| serde_json::from_slice(&e.body).ok())
            .collect();
        for bt in &pending {
            store.track_pending(bt);
        }
        Ok(store)
    }

    /// The account's API version. Stripe renders an event's `data.object` "using the API
    /// version of the account at the time the event was created" (the event's
    /// `api_version`; https://docs.stripe.com/api/events/object#event_object-api_version),
    /// not the version a client later reads it with; a client's `Stripe-Version` header
    /// only shapes what it fetches itself. Events created after this call carry `version`
    /// and, for versions before the simulator's own, the older shape of their objects
    /// (see [`legacy_shape`]).
    pub(crate) fn set_account_version(&mut self, version: &str) {
        self.account_version = version.to_owned();
    }

    /// Stripe keeps 30 days of events, so an account that exists before anyone syncs it
    /// already has the events of its objects created in that window (older objects have
    /// none left). Each seeded object created in the 30 days before `start` gets its
    /// created event at its `created`, and one in four of the customers, subscriptions and
    /// products created then also a later update (a `metadata` change, a day after).
    fn seed_history(&mut self, start: i64) {
        let since = start - EVENT_RETENTION;
        let origin = Origin::default();
        // (time, kind, id, update?) in time order, so the feed stays ordered.
        let mut plan: Vec<(i64, Kind, Box<str>, bool)> = Vec::new();
        for kind in ALL_KINDS {
            if kind.event_prefix().is_none() {
                continue;
            }
            let table = self.table(kind);
            let from = table.first_at_or_after(since);
            for (n, e) in table.entries[from..].iter().enumerate() {
                if e.created > start {
                    break;
                }
                plan.push((e.created, kind, e.id.clone(), false));
                let updated = e.created + 86_400;
                if matches!(kind, Kind::Customer | Kind::Subscription | Kind::Product)
                    && n % 4 == 1
                    && updated <= start
                {
                    plan.push((updated, kind, e.id.clone(), true));
                }
            }
        }
        plan.sort_by_key(|(t, k, _, update)| (*t, *update, k.index()));
        for (at, kind, id, update) in plan {
            if update {
                let _ = self.update(
                    kind,
                    &id,
                    |current| {
                        let mut metadata = current
                            .get("metadata")
                            .cloned()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| json!({}));
                        metadata["lifecycle"] = "reviewed".into();
                        let mut changes = Map::new();
                        changes.insert("metadata".into(), metadata);
                        Ok(changes)
                    },
                    at,
                    &origin,
                );
            } else if let Some(object) = self.get_value(kind, &id, at)
                && let Some(event) = kind.created_event(&object)
            {
                self.emit(event, object, None, at, &origin);
            }
        }
    }

    fn table(&self, kind: Kind) -> &Table {
        &self.tables[kind.index()]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut Table {
        &mut self.tables[kind.index()]
    }

    /// Where the visible events start: older ones have passed Stripe's retention.
    fn event_floor(&self, kind: Kind, now: i64) -> usize {
        if kind == Kind::Event {
            self.table(kind).first_at_or_after(now - EVENT_RETENTION)
        } else {
            0
        }
    }

    /// The position of a cursor id, or Stripe's `resource_missing` for `param`.
    fn cursor_position(
        &self,
        kind: Kind,
        id: &str,
        param: &str,
        now: i64,
    ) -> Result<usize, ApiError> {
        self.table(kind)
            .position(id)
            .filter(|&pos| pos >= self.event_floor(kind, now))
            .ok_or_else(|| ApiError::no_such(kind.object(), id, param))
    }

    /// One page, newest first, with Stripe's cursor semantics.
    pub(crate) fn list(&self, kind: Kind, q: &ListQuery, now: i64) -> Result<Page, ApiError> {
        let table = self.table(kind);
        let entries = &table.entries;
        let lo = table
            .first_at_or_after(q.created_min)
            .max(self.event_floor(kind, now));
        let hi = entries.partition_point(|e| e.created <= q.created_max);
        let matches = |e: &Entry| entry_matches(e, q);
        let limit = q.limit.max(1);
        let mut items = Vec::with_capacity(limit.min(entries.len()));
        let has_more;
        match &q.cursor {
            Cursor::EndingBefore(id) => {
                // The `limit` objects just newer than the cursor, still returned newest first.
                let pos = self.cursor_position(kind, id, "ending_before", now)?;
                let range = (pos + 1).max(lo)..hi.max(lo);
                let mut it = entries[range].iter().filter(|e| matches(e));
                items.extend(it.by_ref().take(limit).map(|e| e.body.clone()));
                has_more = it.next().is_some();
                items.reverse();
            }
            cursor => {
                let end = match cursor {
                    Cursor::StartingAfter(id) => self
                        .cursor_position(kind, id, "starting_after", now)?
                        .min(hi),
                    _ => hi,
                };
                let mut it = entries[lo.min(end)..end]
                    .iter()
                    .rev()
                    .filter(|e| matches(e));
                items.extend(it.by_ref().take(limit).map(|e| e.body.clone()));
                has_more = it.next().is_some();
            }
        }
        Ok(Page { items, has_more })
    }

    /// Live ids, newest first.
    pub(crate) fn ids(&self, kind: Kind) -> Vec<String> {
        self.table(kind)
            .entries
            .iter()
            .rev()
            .filter(|e| !e.deleted)
            .map(|e| e.id.to_string())
            .collect()
    }

    /// `GET /v1/<resource>/<id>`: the object as a top-level body.
    pub(crate) fn get_body(&self, kind: Kind, id: &str, now: i64) -> Result<Vec<u8>, ApiError> {
        let pos = self.cursor_position(kind, id, "id", now)?;
        let entry = &self.table(kind).entries[pos];
        let mut body = if entry.deleted {
            render_top(&deleted_stub(kind, id))
        } else {
            dedent_list_item(&entry.body)
        };
        body.push(b'\n');
        Ok(body)
    }

    /// The object (or its deletion stub), parsed.
    pub(crate) fn get_value(&self, kind: Kind, id: &str, now: i64) -> Option<Value> {
        let pos = self.cursor_position(kind, id, "id", now).ok()?;
        let entry = &self.table(kind).entries[pos];
        if entry.deleted {
            Some(deleted_stub(kind, id))
        } else {
            serde_json::from_slice(&entry.body).ok()
        }
    }

    /// Creates an object: a fresh generated one with `fields` merged over its top level.
    /// `created` (or `date`) may be given to place it in the past. Emits its created event.
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        mut fields: Map<String, Value>,
        now: i64,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let table = self.table(kind);
        let index = match kind {
            Kind::SubscriptionItem => DIRECT_ITEM_BASE + table.next_index,
            _ => table.next_index,
        };
        let mut generated = Fields::new();
        self.generator.vary(kind, index, now, &mut generated);
        let mut object = self.fixtures[kind.index()].clone();
        for (path, value) in generated {
            set_path(&mut object, &path, value.into_value());
        }
        if let Some(id) = fields.remove("id") {
            let Some(id) = id.as_str().filter(|s| !s.is_empty() && kind.custom_id()) else {
                return Err(ApiError::unknown_parameter("id"));
            };
            if table.index.contains_key(id) {
                return Err(ApiError::invalid(
                    "resource_already_exists",
                    format!("{} already exists.", capitalized(kind.object())),
                    "id".to_owned(),
                ));
            }
            object["id"] = Value::String(id.to_owned());
        }
        if kind == Kind::Subscription
            && let Some(items) = fields.remove("items")
        {
            self.apply_item_params(&mut object, &items)?;
        }
        if kind == Kind::SubscriptionItem {
            let sub = fields
                .get("subscription")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if sub.is_empty() {
                return Err(ApiError::invalid(
                    "parameter_missing",
                    "Missing required param: subscription.",
                    "subscription".to_owned(),
                ));
            }
            if self.get_value(Kind::Subscription, sub, now).is_none() {
                return Err(ApiError::no_such("subscription", sub, "subscription"));
            }
        }
        for (key, value) in fields {
            object[key.as_str()] = value;
        }
        if kind == Kind::SubscriptionItem
            && let Some(price) = object
                .get("price")
                .and_then(Value::as_str)
                .map(str::to_owned)
        {
            self.attach_price(&mut object, &price)?;
        }
        let created = object
            .get(kind.created_field())
            .and_then(Value::as_i64)
            .unwrap_or(now);
        let id = object["id"].as_str().unwrap_or_default().to_owned();

        let table = self.table_mut(kind);
        table.next_index += 1;
        let seq = table.next_seq;
        table.next_seq += 1;
        table.insert(Entry {
            created,
            seq,
            id: id.clone().into(),
            body: render_cached(&object),
            deleted: false,
            tag: tag_of(kind, &object),
        });

        if kind == Kind::Subscription {
            self.index_embedded_items(&id, &object, now);
        }
        if kind == Kind::BalanceTransaction {
            self.track_pending(&object);
        }
        if let Some(event) = kind.created_event(&object) {
            self.emit(event, object.clone(), None, now, origin);
        }
        if kind == Kind::SubscriptionItem {
            self.sync_parent_item(&object, false, now, origin);
        }
        Ok(object)
    }

    /// Stripe's create parameter `items[0][price]=..&items[0][quantity]=..` (or the same as
    /// a JSON array): applied to the generated subscription's item. One item per
    /// subscription is simulated; further entries are ignored.
    fn apply_item_params(&self, sub: &mut Value, items: &Value) -> Result<(), ApiError> {
        let first = match items {
            Value::Array(list) => list.first(),
            Value::Object(map) => map.get("0"),
            _ => None,
        };
        let Some(first) = first else {
            return Ok(());
        };
        let Some(item) = sub.pointer_mut("/items/data/0") else {
            return Ok(());
        };
        if let Some(price) = first.get("price").and_then(Value::as_str) {
            self.attach_price(item, price)?;
        }
        if let Some(quantity) = first.get("quantity") {
            let quantity = match quantity {
                Value::String(s) => s.parse::<i64>().map(Value::from).map_err(|_| {
                    ApiError::invalid(
                        "parameter_invalid_integer",
                        format!("Invalid integer: {s}"),
                        "items[0][quantity]".to_owned(),
                    )
                })?,
                other => other.clone(),
            };
            item["quantity"] = quantity;
        }
        Ok(())
    }

    /// Replaces an item's `price` (given as an id) with the price object, and mirrors it
    /// into `plan` the way Stripe does.
    fn attach_price(&self, item: &mut Value, price_id: &str) -> Result<(), ApiError> {
        let price = self
            // The clock only matters for event retention, not for prices.
            .get_value(Kind::Price, price_id, 0)
            .filter(|p| p.get("deleted").is_none())
            .ok_or_else(|| ApiError::no_such("price", price_id, "price"))?;
        if let Some(plan) = item.get_mut("plan").filter(|p| p.is_object()) {
            plan["id"] = price["id"].clone();
            plan["product"] = price["product"].clone();
            plan["amount"] = price["unit_amount"].clone();
            plan["amount_decimal"] = price["unit_amount_decimal"].clone();
            plan["currency"] = price["currency"].clone();
        }
        item["price"] = price;
        Ok(())
    }

    /// The fixture of a type: the reference for which fields exist and their JSON types.
    pub(crate) fn fixture(&self, kind: Kind) -> &Value {
        &self.fixtures[kind.index()]
    }

    /// A new subscription's items become subscription items of their own.
    fn index_embedded_items(&mut self, sub_id: &str, sub: &Value, now: i64) {
        let items = sub
            .pointer("/items/data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let table = self.table_mut(Kind::SubscriptionItem);
        for mut item in items {
            let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if table.index.contains_key(id.as_str()) {
                continue;
            }
            item["subscription"] = Value::String(sub_id.to_owned());
            let created = item.get("created").and_then(Value::as_i64).unwrap_or(now);
            let seq = table.next_seq;
            table.next_seq += 1;
            table.insert(Entry {
                created,
                seq,
                id: id.into(),
                body: render_cached(&item),
                deleted: false,
                tag: tag_of(Kind::SubscriptionItem, &item),
            });
        }
    }

    /// Keeps a subscription's embedded `items` in step with a created or updated
    /// subscription item, as Stripe does (announced as `customer.subscription.updated`).
    fn sync_parent_item(&mut self, item: &Value, replace: bool, now: i64, origin: &Origin) {
        let (Some(sub_id), Some(item_id)) = (
            item.get("subscription").and_then(Value::as_str),
            item.get("id").and_then(Value::as_str),
        ) else {
            return;
        };
        let sub_id = sub_id.to_owned();
        let item_id = item_id.to_owned();
        let item = item.clone();
        let _ = self.update(
            Kind::Subscription,
            &sub_id,
            |sub| {
                let mut items = sub.get("items").cloned().unwrap_or_else(|| json!({}));
                let list = items
                    .get_mut("data")
                    .and_then(Value::as_array_mut)
                    .ok_or_else(|| ApiError::internal("subscription without items"))?;
                match list
                    .iter_mut()
                    .find(|i| i.get("id").and_then(Value::as_str) == Some(&item_id))
                {
                    Some(existing) => *existing = item,
                    None if !replace => list.push(item),
                    None => {}
                }
                let mut changes = Map::new();
                changes.insert("items".into(), items);
                Ok(changes)
            },
            now,
            origin,
        );
    }

    /// Applies `changes` (top-level fields, computed from the current object inside the
    /// lock so concurrent updates cannot interleave) and emits the update event with
    /// `previous_attributes`. Returns the object; nothing is emitted when nothing changed.
    pub(crate) fn update(
        &mut self,
        kind: Kind,
        id: &str,
        changes: impl FnOnce(&Value) -> Result<Map<String, Value>, ApiError>,
        now: i64,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        if kind == Kind::InvoiceItem {
            return self.update_invoice_item(id, changes, now, origin);
        }
        let (old, new, previous) = self.apply(kind, id, changes, now)?;
        if previous.is_empty() {
            return Ok(new);
        }
        if let Some(event) = kind.updated_event(&old, &new) {
            self.emit(event, new.clone(), Some(previous), now, origin);
        }
        if kind == Kind::SubscriptionItem {
            self.sync_parent_item(&new, true, now, origin);
        }
        Ok(new)
    }

    /// The mutation shared by update and cancel: returns (old, new, previous_attributes).
    fn apply(
        &mut self,
        kind: Kind,
        id: &str,
        changes: impl FnOnce(&Value) -> Result<Map<String, Value>, ApiError>,
        now: i64,
    ) -> Result<(Value, Value, Map<String, Value>), ApiError> {
        let pos = self.cursor_position(kind, id, "id", now)?;
        let entry = &self.table(kind).entries[pos];
        if entry.deleted {
            return Err(ApiError::no_such(kind.object(), id, "id"));
        }
        let old: Value = serde_json::from_slice(&entry.body)
            .map_err(|e| ApiError::internal(format!("stored object does not parse: {e}")))?;
        let mut changes = changes(&old)?;
        if kind == Kind::SubscriptionItem
            && let Some(price) = changes
                .get("price")
                .and_then(Value::as_str)
                .map(str::to_owned)
        {
            let mut item = old.clone();
            self.attach_price(&mut item, &price)?;
            changes.insert("price".into(), item["price"].take());
            changes.insert("plan".into(), item["plan"].take());
        }
        let table = self.table_mut(kind);
        let mut new = old.clone();
        let mut previous = Map::new();
        for (key, value) in changes {
            let before = old.get(&key);
            if before == Some(&value) {
                continue;
            }
            previous.insert(key.clone(), previous_attribute(before, &value));
            new[key.as_str()] = value;
        }
        if previous.is_empty() {
            return Ok((old, new, previous));
        }
        let created = new
            .get(kind.created_field())
            .and_then(Value::as_i64)
            .unwrap_or(table.entries[pos].created);
        let entry = &mut table.entries[pos];
        entry.body = render_cached(&new);
        entry.tag = tag_of(kind, &new);
        if created != entry.created {
            // A changed `created` moves the object in the list order.
            let mut moved = table.entries.remove(pos);
            moved.created = created;
            table.insert(moved);
        }
        Ok((old, new, previous))
    }

    /// Deletes (or, for subscriptions, cancels) an object and emits the event. Returns the
    /// response body object.
    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        id: &str,
        now: i64,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        if kind.delete_mode() == DeleteMode::RemoveItem {
            return self.remove_item(id, now, origin);
        }
        let Some(prefix) = kind.event_prefix() else {
            return Err(ApiError::unrecognized_url(
                "DELETE",
                &format!("/v1/{}/{id}", kind.resource()),
            ));
        };
        match kind.delete_mode() {
            DeleteMode::Unsupported | DeleteMode::RemoveItem => Err(ApiError::unrecognized_url(
                "DELETE",
                &format!("/v1/{}/{id}", kind.resource()),
            )),
            DeleteMode::Cancel => {
                let (_, new, _) = self.apply(
                    kind,
                    id,
                    |sub| {
                        if sub.get("status").and_then(Value::as_str) == Some("canceled") {
                            return Err(ApiError::invalid(
                                "subscription_canceled",
                                format!("This subscription has already been canceled: '{id}'"),
                                None,
                            ));
                        }
                        let mut changes = Map::new();
                        changes.insert("status".into(), "canceled".into());
                        changes.insert("canceled_at".into(), now.into());
                        changes.insert("ended_at".into(), now.into());
                        changes.insert("cancel_at".into(), Value::Null);
                        Ok(changes)
                    },
                    now,
                )?;
                self.emit(format!("{prefix}.deleted"), new.clone(), None, now, origin);
                Ok(new)
            }
            DeleteMode::Delete => {
                let pos = self.cursor_position(kind, id, "id", now)?;
                let entry = &mut self.table_mut(kind).entries[pos];
                if entry.deleted {
                    return Err(ApiError::no_such(kind.object(), id, "id"));
                }
                let mut last: Value = serde_json::from_slice(&entry.body).map_err(|e| {
                    ApiError::internal(format!("stored object does not parse: {e}"))
                })?;
                entry.deleted = true;
                entry.body = Bytes::new();
                last["deleted"] = Value::Bool(true);
                self.emit(format!("{prefix}.deleted"), last, None, now, origin);
                Ok(deleted_stub(kind, id))
            }
        }
    }

    /// `DELETE /v1/subscription_items/<id>`: the item leaves its subscription, whose
    /// `customer.subscription.updated` carries the old `items` in `previous_attributes`.
    /// Stripe refuses to remove a subscription's last item (a subscription needs one; cancel
    /// it instead), and so does the simulator.
    fn remove_item(&mut self, id: &str, now: i64, origin: &Origin) -> Result<Value, ApiError> {
        let kind = Kind::SubscriptionItem;
        let pos = self.cursor_position(kind, id, "id", now)?;
        let entry = &self.table(kind).entries[pos];
        if entry.deleted {
            return Err(ApiError::no_such(kind.object(), id, "id"));
        }
        let item: Value = serde_json::from_slice(&entry.body)
            .map_err(|e| ApiError::internal(format!("stored object does not parse: {e}")))?;
        let sub_id = item
            .get("subscription")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let item_id = id.to_owned();
        self.update(
            Kind::Subscription,
            &sub_id,
            |sub| {
                let mut items = sub.get("items").cloned().unwrap_or_else(|| json!({}));
                let list = items
                    .get_mut("data")
                    .and_then(Value::as_array_mut)
                    .ok_or_else(|| ApiError::internal("subscription without items"))?;
                let before = list.len();
                list.retain(|i| i.get("id").and_then(Value::as_str) != Some(&item_id));
                if list.is_empty() && before > 0 {
                    return Err(ApiError::invalid(
                        "parameter_invalid_empty",
                        "A subscription must have at least one active plan. To cancel a \
                         subscription, please use the cancel API endpoint on /v1/subscriptions.",
                        None,
                    ));
                }
                let left = list.len();
                if let Some(total) = items.get_mut("total_count") {
                    *total = Value::from(left);
                }
                let mut changes = Map::new();
                changes.insert("items".into(), items);
                Ok(changes)
            },
            now,
            origin,
        )?;
        let entry = &mut self.table_mut(kind).entries[pos];
        entry.deleted = true;
        entry.body = Bytes::new();
        Ok(deleted_stub(kind, id))
    }

    /// An update of an invoice item. Stripe lets an item change only while it is pending
    /// or its invoice is a draft ("Updates the amount or description of an invoice item on
    /// an upcoming invoice. Updating an invoice item is only possible before the invoice
    /// it's attached to is closed", https://docs.stripe.com/api/invoiceitems/update), and
    /// sends no event for the item itself: Stripe has no `invoiceitem.updated`. An edit of
    /// an item on a draft invoice changes the invoice's amounts, announced as
    /// `invoice.updated`.
    fn update_invoice_item(
        &mut self,
        id: &str,
        changes: impl FnOnce(&Value) -> Result<Map<String, Value>, ApiError>,
        now: i64,
        origin: &Origin,
    ) -> Result<Value, ApiError> {
        let current = self
            .get_value(Kind::InvoiceItem, id, now)
            .filter(|v| v.get("deleted").is_none())
            .ok_or_else(|| ApiError::no_such("invoiceitem", id, "id"))?;
        let invoice_id = current
            .get("invoice")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let invoice = match &invoice_id {
            Some(invoice_id) => Some(
                self.get_value(Kind::Invoice, invoice_id, now)
                    .ok_or_else(|| ApiError::no_such("invoice", invoice_id, "invoice"))?,
            ),
            None => None,
        };
        if let Some(invoice) = &invoice
            && invoice.get("status").and_then(Value::as_str) != Some("draft")
        {
            return Err(ApiError::invalid(
                "invoice_not_editable",
                format!(
                    "You can only update invoice items on draft invoices. Invoice {} is {}.",
                    invoice_id.as_deref().unwrap_or_default(),
                    invoice["status"].as_str().unwrap_or("finalized")
                ),
                None,
            ));
        }
        let (old, new, previous) = self.apply(Kind::InvoiceItem, id, changes, now)?;
        let delta = new.get("amount").and_then(Value::as_i64).unwrap_or(0)
            - old.get("amount").and_then(Value::as_i64).unwrap_or(0);
        if let (Some(invoice_id), Some(invoice)) = (invoice_id, invoice)
            && !previous.is_empty()
        {
            let mut changes = Map::new();
            for field in ["amount_due", "amount_remaining", "subtotal", "total"] {
                if let Some(v) = invoice.get(field).and_then(Value::as_i64)
                    && delta != 0
                {
                    changes.insert(field.into(), (v + delta).into());
                }
            }
            // `apply` + `emit` rather than `update`, which would instantiate itself again.
            let (_, new_invoice, mut invoice_previous) =
                self.apply(Kind::Invoice, &invoice_id, |_| Ok(changes), now)?;
            // The invoice's lines show the item: its `lines` changed even when no amount did.
            invoice_previous.insert(
                "lines".into(),
                json!({"data": [{"invoice_item": id, "previous_attributes": Value::Object(previous)}]}),
            );
            self.emit(
                "invoice.updated".to_owned(),
                new_invoice,
                Some(invoice_previous),
                now,
                origin,
            );
        }
        Ok(new)
    }

    /// Balance transactions move from `pending` to `available` once their `available_on`
    /// has passed (https://docs.stripe.com/api/balance_transactions/object#balance_transaction_object-status);
    /// Stripe sends no event per transaction, so only a re-read sees it.
    pub(crate) fn settle(&mut self, now: i64) {
        let due = self.pending.partition_point(|(on, _)| *on <= now);
        if due == 0 {
            return;
        }
        let settled: Vec<(i64, Box<str>)> = self.pending.drain(..due).collect();
        for (_, id) in settled {
            let _ = self.apply(
                Kind::BalanceTransaction,
                &id,
                |_| {
                    let mut changes = Map::new();
                    changes.insert("status".into(), "available".into());
                    Ok(changes)
                },
                now,
            );
        }
    }

    /// Notes a pending balance transaction, to settle it when its time comes.
    fn track_pending(&mut self, object: &Value) {
        if object.get("status").and_then(Value::as_str) != Some("pending") {
            return;
        }
        let (Some(on), Some(id)) = (
            object.get("available_on").and_then(Value::as_i64),
            object.get("id").and_then(Value::as_str),
        ) else {
            return;
        };
        let at = self.pending.partition_point(|(o, _)| *o <= on);
        self.pending.insert(at, (on, id.into()));
    }

    /// Appends an event. Its `created` never goes below the previous event's, so the feed
    /// stays in emission order (and in id order) even if the wall clock steps back.
    fn emit(
        &mut self,
        event_type: String,
        mut object: Value,
        previous: Option<Map<String, Value>>,
        now: i64,
        origin: &Origin,
    ) {
        self.prune_events(now);
        let table = self.table(Kind::Event);
        let created = table.entries.last().map_or(now, |e| e.created.max(now));
        let index = table.next_index;
        let id = self.generator.id(Kind::Event, index);
        // The snapshot is the object as Stripe renders it in a list, without a `deleted`
        // flag for non-deletions.
        if !event_type.ends_with(".deleted")
            && let Some(map) = object.as_object_mut()
        {
            map.remove("deleted");
        }
        debug_assert!(
            super::kinds::known_event_type(&event_type),
            "the simulator emits only Stripe's event types, not {event_type}"
        );
        if self.account_version.as_str() != API_VERSION {
            legacy_shape(&event_type, &self.account_version, &mut object);
        }
        let mut data = Map::new();
        data.insert("object".into(), object);
        if let Some(previous) = previous {
            data.insert("previous_attributes".into(), Value::Object(previous));
        }
        let mut event = self.fixtures[Kind::Event.index()].clone();
        event["id"] = Value::String(id.clone());
        event["api_version"] = self.account_version.clone().into();
        event["created"] = created.into();
        event["data"] = Value::Object(data);
        event["livemode"] = false.into();
        event["pending_webhooks"] = 0.into();
        event["request"] =
            json!({"id": origin.request_id, "idempotency_key": origin.idempotency_key});
        event["type"] = Value::String(event_type.clone());

        let table = self.table_mut(Kind::Event);
        table.next_index += 1;
        let seq = table.next_seq;
        table.next_seq += 1;
        table.insert(Entry {
            created,
            seq,
            id: id.into(),
            body: render_cached(&event),
            deleted: false,
            tag: Some(event_type.into()),
        });
    }

    /// Forgets every event.
    pub(crate) fn clear_events(&mut self) {
        let table = self.table_mut(Kind::Event);
        table.entries.clear();
        table.index.clear();
    }

    /// Forgets events past retention, so their ids stop working as cursors too.
    pub(crate) fn prune_events(&mut self, now: i64) {
        let table = self.table_mut(Kind::Event);
        let floor = table.first_at_or_after(now - EVENT_RETENTION);
        if floor == 0 {
            return;
        }
        for entry in table.entries.drain(..floor) {
            table.index.remove(&entry.id);
        }
    }

    /// How many objects (live or deleted) a type holds.
    #[cfg(test)]
    pub(crate) fn len(&self, kind: Kind) -> usize {
        self.table(kind).entries.len()
    }
}

fn load_fixtures() -> Result<Vec<Value>, ApiError> {
    let all: Value = serde_json::from_str(FIXTURES)
        .map_err(|e| ApiError::internal(format!("fixtures3.json does not parse: {e}")))?;
    ALL_KINDS
        .iter()
        .map(|kind| {
            all.pointer(&format!("/resources/{}", kind.object()))
                .filter(|v| v.is_object())
                .cloned()
                .ok_or_else(|| {
                    ApiError::internal(format!("fixtures3.json lacks {}", kind.object()))
                })
        })
        .collect()
}

fn seed_entry(
    generator: &Gen,
    kind: Kind,
    i: u64,
    template: Option<&Template>,
    fixture: &Value,
    scratch: &mut Vec<u8>,
) -> Entry {
    let created = generator.created(kind, i);
    let mut fields = Fields::with_capacity(48);
    generator.vary(kind, i, created, &mut fields);
    let id: Box<str> = fields
        .iter()
        .find(|(p, _)| p == "id")
        .and_then(|(_, v)| match v {
            super::render::Scalar::Str(s) => Some(s.as_str().into()),
            _ => None,
        })
        .unwrap_or_else(|| generator.id(kind, i).into());
    let tag = match kind {
        Kind::SubscriptionItem => Some(generator.id(Kind::Subscription, i).into()),
        _ => None,
    };
    let body = match template.filter(|t| t.fill_into(&fields, scratch)) {
        // Copied out at its exact size: 100k charges must not each carry spare capacity.
        Some(_) => Bytes::copy_from_slice(scratch),
        None => {
            // The slow path, for a generator whose fields do not match its template.
            let mut object = fixture.clone();
            for (path, value) in fields {
                set_path(&mut object, &path, value.into_value());
            }
            render_cached(&object)
        }
    };
    Entry {
        created,
        seq: i,
        id,
        body,
        deleted: false,
        tag,
    }
}

fn render_cached(object: &Value) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    render(object, LIST_DEPTH, &mut out);
    out.shrink_to_fit();
    Bytes::from(out)
}

fn tag_of(kind: Kind, object: &Value) -> Option<Box<str>> {
    match kind {
        Kind::SubscriptionItem => object
            .get("subscription")
            .and_then(Value::as_str)
            .map(Into::into),
        Kind::Event => object.get("type").and_then(Value::as_str).map(Into::into),
        _ => None,
    }
}

/// What an event's object looked like in an older API version, for the fields where
/// Stripe's versions differ in ways a table notices (https://docs.stripe.com/upgrades):
///
/// - before `2020-08-27` a customer carried its `sources`, `subscriptions` and `tax_ids`
///   lists, which later versions leave out unless expanded;
/// - before `2022-11-15` a payment intent carried its `charges` list, which later versions
///   replaced with `latest_charge`;
/// - before `2025-03-31.basil` a subscription carried `current_period_start` and
///   `current_period_end` itself, and its items did not
///   (https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end).
///
/// Versions compare as text (they are ISO dates, optionally with a `.name` suffix).
fn legacy_shape(event_type: &str, version: &str, object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let id = map
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let list = |url: String| json!({"object": "list", "data": [], "has_more": false, "total_count": 0, "url": url});
    if event_type.starts_with("customer.")
        && !event_type.starts_with("customer.subscription.")
        && version < "2020-08-27"
    {
        map.insert(
            "sources".into(),
            list(format!("/v1/customers/{id}/sources")),
        );
        map.insert(
            "subscriptions".into(),
            list(format!("/v1/customers/{id}/subscriptions")),
        );
        map.insert(
            "tax_ids".into(),
            list(format!("/v1/customers/{id}/tax_ids")),
        );
    }
    if event_type.starts_with("payment_intent.") && version < "2022-11-15" {
        let latest = map.remove("latest_charge").unwrap_or(Value::Null);
        let mut charges = list(format!("/v1/charges?payment_intent={id}"));
        if let Some(charge) = latest.as_str() {
            charges["data"] = json!([{"id": charge, "object": "charge"}]);
            charges["total_count"] = 1.into();
        }
        map.insert("charges".into(), charges);
    }
    if event_type.starts_with("customer.subscription.") && version < "2025-03-31" {
        let mut period = (Value::Null, Value::Null);
        if let Some(items) = map
            .get_mut("items")
            .and_then(|i| i.get_mut("data"))
            .and_then(Value::as_array_mut)
        {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                let start = item.remove("current_period_start").unwrap_or(Value::Null);
                let end = item.remove("current_period_end").unwrap_or(Value::Null);
                if period.0.is_null() {
                    period = (start, end);
                }
            }
        }
        map.insert("current_period_start".into(), period.0);
        map.insert("current_period_end".into(), period.1);
    }
}

fn deleted_stub(kind: Kind, id: &str) -> Value {
    json!({"id": id, "object": kind.object(), "deleted": true})
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Stripe reports only the changed keys of a changed hash (`metadata`), and the whole old
/// value of anything else.
fn previous_attribute(before: Option<&Value>, after: &Value) -> Value {
    match (before, after) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            let mut changed = Map::new();
            for (k, v) in old {
                if new.get(k) != Some(v) {
                    changed.insert(k.clone(), v.clone());
                }
            }
            for k in new.keys() {
                if !old.contains_key(k) {
                    changed.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(changed)
        }
        (before, _) => before.cloned().unwrap_or(Value::Null),
    }
}

fn entry_matches(e: &Entry, q: &ListQuery) -> bool {
    if e.deleted {
        return false;
    }
    if let Some(parent) = &q.parent
        && e.tag.as_deref() != Some(parent.as_str())
    {
        return false;
    }
    if !q.types.is_empty() {
        let Some(tag) = e.tag.as_deref() else {
            return false;
        };
        if !q.types.iter().any(|p| glob(p, tag)) {
            return false;
        }
    }
    if q.fields.is_empty() && q.status_in.is_empty() && q.status_not.is_none() {
        return true;
    }
    // Rare filters: parse the object rather than index every field of every type.
    let Ok(object) = serde_json::from_slice::<Value>(&e.body) else {
        return false;
    };
    let status = object
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if (!q.status_in.is_empty() && !q.status_in.contains(&status)) || q.status_not == Some(status) {
        return false;
    }
    q.fields
        .iter()
        .all(|(field, want)| match object.get(field) {
            Some(Value::String(s)) => s == want,
            Some(Value::Bool(b)) => want == if *b { "true" } else { "false" },
            Some(Value::Number(n)) => n.to_string() == *want,
            Some(Value::Null) | None => want.is_empty(),
            Some(_) => false,
        })
}

/// Matches `*` as any run of characters, the way Stripe's event `type` filter does.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn store(records: usize) -> Store {
        Store::generate(42, NOW, records).expect("seeding works")
    }

    fn ids(page: &Page) -> Vec<String> {
        page.items
            .iter()
            .map(|b| {
                let v: Value = serde_json::from_slice(b).expect("cached bytes are JSON");
                v["id"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    #[test]
    fn glob_matches_like_stripe() {
        assert!(glob("charge.*", "charge.succeeded"));
        assert!(glob("charge.*", "charge.dispute.created"));
        assert!(!glob("charge.*", "customer.created"));
        assert!(glob("*.created", "customer.created"));
        assert!(glob("*", "anything"));
        assert!(glob("customer.*.updated", "customer.subscription.updated"));
        assert!(!glob("customer.*.updated", "customer.updated"));
        assert!(glob("invoice.paid", "invoice.paid"));
    }

    #[test]
    fn every_type_seeds_fixture_shaped_json() {
        let s = store(40);
        for kind in ALL_KINDS {
            let fixture = &s.fixtures[kind.index()];
            for bytes in &s.table(kind).entries {
                let v: Value = serde_json::from_slice(&bytes.body).expect("valid JSON");
                assert_eq!(v["object"], kind.object());
                assert_eq!(v["id"].as_str(), Some(&*bytes.id));
                for key in fixture.as_object().into_iter().flat_map(|m| m.keys()) {
                    assert!(v.get(key).is_some(), "{kind:?} lost {key}");
                }
            }
        }
        assert_eq!(s.len(Kind::Charge), 40);
    }

    #[test]
    fn history_holds_the_last_thirty_days_of_real_events() {
        let s = store(200);
        let page = s
            .list(
                Kind::Event,
                &ListQuery {
                    limit: 100,
                    ..ListQuery::default()
                },
                NOW,
            )
            .expect("events");
        assert!(!page.items.is_empty(), "a seeded account has recent events");
        let mut created_events = 0;
        let mut updates = 0;
        for entry in &s.table(Kind::Event).entries {
            let event: Value = serde_json::from_slice(&entry.body).expect("json");
            let kind = event["type"].as_str().expect("type");
            assert!(super::super::kinds::known_event_type(kind), "{kind}");
            assert!(event["created"].as_i64().unwrap() >= NOW - EVENT_RETENTION);
            assert!(event["created"].as_i64().unwrap() <= NOW);
            let object = &event["data"]["object"];
            if kind.ends_with(".created") || kind == "charge.succeeded" || kind == "charge.failed" {
                created_events += 1;
                // Created when the object was.
                let field = if kind.starts_with("invoiceitem.") {
                    "date"
                } else {
                    "created"
                };
                assert_eq!(object[field], event["created"], "{kind}");
            } else {
                updates += 1;
                assert_eq!(kind.split('.').next_back(), Some("updated"), "{kind}");
                assert_eq!(object["metadata"]["lifecycle"], "reviewed");
            }
        }
        // Objects created more than 30 days ago have no events left.
        let recent: usize = ALL_KINDS
            .iter()
            .filter(|k| k.event_prefix().is_some())
            .map(|&k| {
                let t = s.table(k);
                t.entries.len() - t.first_at_or_after(NOW - EVENT_RETENTION)
            })
            .sum();
        assert_eq!(created_events, recent);
        assert!(updates > 0);
        assert!(recent < ALL_KINDS.iter().map(|&k| s.len(k)).sum::<usize>());
    }

    #[test]
    fn generation_is_deterministic() {
        let a = store(30);
        let b = store(30);
        for kind in ALL_KINDS {
            let x: Vec<_> = a
                .table(kind)
                .entries
                .iter()
                .map(|e| e.body.clone())
                .collect();
            let y: Vec<_> = b
                .table(kind)
                .entries
                .iter()
                .map(|e| e.body.clone())
                .collect();
            assert_eq!(x, y);
        }
    }

    #[test]
    fn template_and_slow_path_agree() {
        // Without history: its updates re-render some objects.
        let s = Store::generate_objects(42, NOW, 20).expect("seeding works");
        for kind in ALL_KINDS {
            if s.generator.count(kind) == 0 {
                continue;
            }
            let slow = seed_entry(
                &s.generator,
                kind,
                3,
                None,
                &s.fixtures[kind.index()],
                &mut Vec::new(),
            );
            let entry = &s.table(kind).entries[3];
            assert_eq!(
                String::from_utf8_lossy(&slow.body),
                String::from_utf8_lossy(&entry.body),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn pages_both_ways() {
        let s = store(57);
        let all = s.ids(Kind::Charge);
        let mut q = ListQuery {
            limit: 10,
            ..ListQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = s.list(Kind::Charge, &q, NOW).expect("list");
            let got = ids(&page);
            seen.extend(got.clone());
            if !page.has_more {
                break;
            }
            q.cursor = Cursor::StartingAfter(got.last().cloned().unwrap_or_default());
        }
        assert_eq!(seen, all);

        let oldest = all.last().cloned().unwrap_or_default();
        let mut q = ListQuery {
            limit: 10,
            cursor: Cursor::EndingBefore(oldest.clone()),
            ..ListQuery::default()
        };
        let mut back = vec![oldest];
        loop {
            let page = s.list(Kind::Charge, &q, NOW).expect("list");
            let got = ids(&page);
            // Within a page: newest first.
            back.extend(got.iter().rev().cloned());
            if !page.has_more {
                break;
            }
            q.cursor = Cursor::EndingBefore(got.first().cloned().unwrap_or_default());
        }
        back.reverse();
        assert_eq!(back, all);
    }

    #[test]
    fn deleted_objects_leave_lists_but_stay_valid_cursors() {
        let mut s = store(20);
        let ids_before = s.ids(Kind::Customer);
        let victim = ids_before[2].clone();
        s.delete(Kind::Customer, &victim, NOW, &Origin::default())
            .expect("delete");
        let q = ListQuery {
            limit: 100,
            cursor: Cursor::StartingAfter(victim.clone()),
            ..ListQuery::default()
        };
        let page = s
            .list(Kind::Customer, &q, NOW)
            .expect("list after tombstone");
        assert_eq!(ids(&page), ids_before[3..].to_vec());
        assert!(!s.ids(Kind::Customer).contains(&victim));
        assert_eq!(
            s.get_value(Kind::Customer, &victim, NOW),
            Some(json!({"id": victim, "object": "customer", "deleted": true}))
        );
        let events = s
            .list(Kind::Event, &ListQuery::default(), NOW)
            .expect("events");
        let event: Value = serde_json::from_slice(&events.items[0]).expect("json");
        assert_eq!(event["type"], "customer.deleted");
        assert_eq!(event["data"]["object"]["deleted"], true);
        assert_eq!(event["data"]["object"]["id"], victim.as_str());
    }

    #[test]
    fn subscription_items_follow_their_subscription() {
        let mut s = store(40);
        let sub = s
            .create(Kind::Subscription, Map::new(), NOW, &Origin::default())
            .expect("create");
        let sub_id = sub["id"].as_str().unwrap_or_default().to_owned();
        let q = ListQuery {
            parent: Some(sub_id.clone()),
            ..ListQuery::default()
        };
        let page = s.list(Kind::SubscriptionItem, &q, NOW).expect("list");
        assert_eq!(page.items.len(), 1);
        let item_id = ids(&page)[0].clone();
        assert_eq!(sub["items"]["data"][0]["id"], item_id.as_str());

        let item = s
            .update(
                Kind::SubscriptionItem,
                &item_id,
                |_| Ok(Map::from_iter([("quantity".to_owned(), json!(7))])),
                NOW + 1,
                &Origin::default(),
            )
            .expect("update item");
        assert_eq!(item["quantity"], 7);
        let sub = s
            .get_value(Kind::Subscription, &sub_id, NOW)
            .unwrap_or_default();
        assert_eq!(sub["items"]["data"][0]["quantity"], 7);
        let events = s
            .list(Kind::Event, &ListQuery::default(), NOW + 1)
            .expect("events");
        let newest: Value = serde_json::from_slice(&events.items[0]).expect("json");
        assert_eq!(newest["type"], "customer.subscription.updated");
        assert!(newest["data"]["previous_attributes"]["items"].is_object());
    }
}
