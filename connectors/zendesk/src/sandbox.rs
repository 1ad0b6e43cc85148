//! A Zendesk Support simulator for `tributary demo`, `tributary sandbox zendesk` and the
//! tests.
//!
//! It serves a seeded account over HTTP on 127.0.0.1 and behaves like Zendesk where a
//! connector can tell the difference:
//!
//! - Cursor-based incremental exports (`/api/v2/incremental/tickets/cursor.json`,
//!   `/api/v2/incremental/users/cursor.json`): `start_time` or `cursor`, `per_page` up to
//!   1000 (the default), `after_cursor`/`after_url` on every page, `end_of_stream` on the
//!   last; tickets ordered by `generated_timestamp`, users by `updated_at`; deleted tickets
//!   exported with `status: deleted` (unless `exclude_deleted=true`), deleted users with
//!   `active: false`.
//! - Time-based incremental exports (`/api/v2/incremental/organizations.json`,
//!   `/api/v2/incremental/ticket_events.json`): inclusive `start_time`, `per_page` up to
//!   1000, `next_page`, `count`, `end_time` (the last item's time) and `end_of_stream`. A
//!   page never splits a second: it runs past `per_page` to hold every item of its last
//!   second, so the next page's inclusive start cannot loop. Deleted organizations are
//!   exported with `deleted_at`.
//! - The one-minute exclusion window: exports leave out everything changed within the
//!   last minute of the simulator's clock, and refuse a `start_time` less than a minute old
//!   with 400 `InvalidValue`.
//! - Cursor pagination on the other lists (`page[size]` up to 100, `page[after]`,
//!   `meta.has_more`, `meta.after_cursor`, `links.next`), and offset pagination (`page`,
//!   `per_page`, `next_page`, `count`) without `page[size]`; `tickets/show_many.json`;
//!   `users/me.json`; single objects; tags counted from the live objects.
//! - Writes: `POST /api/v2/<resource>.json` `{"<singular>": {...}}`, `PUT
//!   /api/v2/<resource>/<id>.json`, `DELETE /api/v2/<resource>/<id>.json`. Ticket changes
//!   are logged as ticket events: an "Audit" with one child event per field (`Create`, or
//!   `Change` with `previous_value`; custom fields as `field_name`/`value`; tags with
//!   `added_tags`/`removed_tags`; a comment as `comment_present`/`comment_public`).
//! - Authentication as Zendesk does it: Basic `<email>/token:<api token>` or `Bearer
//!   <OAuth token>` (see [`ZendeskSandbox::API_TOKEN`], [`ZendeskSandbox::OAUTH_TOKEN`]);
//!   anything else is 401 `{"error": "Couldn't authenticate you"}`.
//! - Two rate limits ([`RateLimits`]): the account's requests per window and the exports'
//!   own stricter one, each a sliding window; 429 `APIRateLimitExceeded` with `Retry-After`
//!   above either. `X-Rate-Limit`, `X-Rate-Limit-Remaining`, `ratelimit-limit`,
//!   `ratelimit-remaining`, `ratelimit-reset` describe the account's limit on every answer
//!   (Zendesk documents them as account-wide), and the cursor-based exports also send
//!   `Zendesk-RateLimit-incremental-exports-cursor: total=N; remaining=N; resets=N` for the
//!   exports' limit, as Zendesk documents it on its cursor-based user export; the
//!   time-based exports send no export header (Zendesk documents none there).
//! - Plans: resources the account's plan does not include ([`SandboxConfig::unavailable`],
//!   [`ZendeskSandbox::set_unavailable`]) answer 403 `Forbidden` with Zendesk's "You do
//!   not have access to this page" description.
//! - Faults on demand (the sandbox kit's, seeded): 500/503, 429s, slow responses, bodies
//!   cut short, malformed JSON; and Zendesk's own ([`ZendeskFaults`]): cursors that repeat
//!   or cycle, bodies of the wrong shape, lists that fail past their first page.
//!
//! Zendesk's own error JSON throughout, a `Date` header from the simulator's clock (which
//! tests can move forward), and compact JSON bodies.
//!
//! # How many objects
//!
//! `records` tickets, each with one ticket metric and one or two ticket events; `records/2`
//! end users and `records/50` agents (at least 5 and 2) plus the admin; `records/20`
//! organizations (at least 3); two to eight groups; half the solved tickets have a
//! satisfaction rating; 15 ticket fields (7 system, 8 custom); 2 ticket forms; 2 brands.
//! Everything seeded happened between 300 and 2 days ago.
//!
//! # Control endpoints (no credentials needed)
//!
//! The sandbox kit's, as for every simulator (`tributary_sandbox_kit::control`), with
//! Zendesk's two limits in `rate_limit`: `GET /_sandbox/stats`, `POST /_sandbox/stats/reset`, `GET|POST /_sandbox/faults` (a
//! [`Faults`] JSON, missing fields default to off), `POST /_sandbox/clock`
//! `{"advance_seconds": N}`, `POST /_sandbox/rate_limit` `{"window_seconds": s,
//! "requests": n, "export_requests": m}` (an empty object turns limiting off),
//! `GET|POST /_sandbox/plan` `{"unavailable": ["ticket_forms"]}` (the resources the plan
//! does not include; an empty list includes all).

mod error;
mod generate;
mod http;
mod store;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_sandbox_kit::{
    Kit, KitConfig, Measure, RateLimit, Refused, SandboxError, Server, StoreLock, Window, lock,
};

use error::ApiError;
use store::{Kind, Store};

/// Zendesk's rate limits, scaled for tests: `requests` per `window` for the account, of
/// which at most `export_requests` may be incremental exports. Zendesk's own are
/// 200 (Team plan) and 10 per 60 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// The sliding window.
    pub window: Duration,
    /// Requests per window for the whole account.
    pub requests: u32,
    /// Incremental export requests per window.
    pub export_requests: u32,
}

impl RateLimits {
    /// Zendesk's documented limits: `requests_per_minute` for the account (200 on the Team
    /// plan) and 10 export requests a minute.
    pub fn per_minute(requests_per_minute: u32) -> RateLimits {
        RateLimits {
            window: Duration::from_secs(60),
            requests: requests_per_minute,
            export_requests: 10,
        }
    }

    fn account(self) -> RateLimit {
        RateLimit {
            requests: self.requests,
            window: self.window,
        }
    }

    fn export(self) -> RateLimit {
        RateLimit {
            requests: self.export_requests,
            window: self.window,
        }
    }
}

/// The window statistics are measured over when no limit is set.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// How the simulated account is seeded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Tickets to seed; the other kinds scale from it (see the module docs).
    pub records: usize,
    /// The rate limits; `None` = unlimited (still measured, over 60-second windows).
    pub rate_limits: Option<RateLimits>,
    /// Seed of the generated data and of fault injection, for repeatable runs.
    pub seed: u64,
    /// Resources the simulated account's plan does not include (e.g. `ticket_forms`,
    /// which Zendesk offers from Suite Growth): every request to them is answered 403
    /// `Forbidden` as Zendesk does. See [`ZendeskSandbox::set_unavailable`].
    pub unavailable: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            records: 200,
            rate_limits: None,
            seed: 42,
            unavailable: Vec::new(),
        }
    }
}

/// Faults to inject into `/api/v2` responses: the kit's common ones (500/503 with
/// Zendesk's `InternalError`, 429 `APIRateLimitExceeded` with `Retry-After: 1`, slow
/// answers, cut and malformed bodies) and Zendesk's own ([`ZendeskFaults`]), in one JSON.
pub type Faults = tributary_sandbox_kit::Faults<ZendeskFaults>;

/// The faults only the Zendesk simulator has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZendeskFaults {
    /// Answer list and export pages with a body that is not the documented shape.
    pub bad_shape: Option<BadShape>,
    /// Answer 403 `Forbidden` (not retried) to every cursor-paginated list request past
    /// its first page (one with `page[after]`) until turned off: a snapshot that keeps
    /// failing part-way, as when the token loses access during a run.
    pub forbid_after_first_page: bool,
    /// Answer each cursor-export page that would hold records first as an empty page with
    /// `end_of_stream` false and a cursor moved up to just before them, as Zendesk does
    /// where the records it passes are ones the export leaves out.
    pub empty_export_pages: bool,
}

/// A list or export body that breaks Zendesk's documented shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadShape {
    /// The records (`tickets`, `groups`, …) are an object instead of an array.
    RecordsObject,
    /// An export page without `end_of_stream`.
    EndOfStreamMissing,
    /// A list page without `meta.has_more`.
    HasMoreMissing,
}

/// What the sandbox saw, for tests to assert the client's manners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `/api/v2` requests received (control endpoints are not counted).
    pub requests: u64,
    /// Incremental export requests received.
    pub export_requests: u64,
    /// Requests refused with 429 by the rate limits (injected 429s not counted).
    pub rate_limited: u64,
    /// The most requests admitted within one sliding window.
    pub max_admitted_per_window: u64,
    /// The most export requests admitted within one sliding window.
    pub max_export_admitted_per_window: u64,
    /// Faults injected (errors, 429s, delays, truncations, malformed bodies).
    pub faults_injected: u64,
}

/// What the quota headers of an admitted request say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Quota {
    /// The account's limit, remaining requests and seconds to a free slot
    /// (`X-Rate-Limit`, `X-Rate-Limit-Remaining`, `ratelimit-limit`, `ratelimit-remaining`,
    /// `ratelimit-reset`: Zendesk documents all of them as the account-wide limit).
    pub(crate) account: Option<(u32, u32, u64)>,
    /// On export requests, the exports' own limit, likewise
    /// (`Zendesk-RateLimit-incremental-exports-cursor: total=; remaining=; resets=`).
    pub(crate) export: Option<(u32, u32, u64)>,
}

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: StoreLock<Store>,
    /// Clock, the account's rate limit, faults and the common counters.
    pub(crate) kit: Kit<ZendeskFaults>,
    /// The incremental exports' own, stricter limit (the account's is the kit's).
    export_limit: Mutex<Window>,
    /// Resources the plan does not include.
    unavailable: StoreLock<Vec<String>>,
    export_requests: AtomicU64,
}

impl Shared {
    fn new(store: Store, config: SandboxConfig) -> Shared {
        let measure = Measure::LimitWindow(DEFAULT_WINDOW);
        Shared {
            store: StoreLock::new(store),
            kit: Kit::new(KitConfig {
                seed: config.seed,
                rate_limit: config.rate_limits.map(RateLimits::account),
                measure,
                error_statuses: &[500, 503],
            }),
            export_limit: Mutex::new(Window::new(
                config.rate_limits.map(RateLimits::export),
                measure,
            )),
            unavailable: StoreLock::new(config.unavailable),
            export_requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn now(&self) -> i64 {
        self.kit.now()
    }

    pub(crate) fn next_request_id(&self) -> String {
        let n = self.kit.next_request_number();
        format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub(crate) fn count_request(&self, export: bool) {
        self.kit.count_request();
        if export {
            self.export_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Admits a request (counting it against both limits for an export request), or
    /// refuses it without counting it: the export limit is checked first.
    pub(crate) fn admit(&self, export: bool, now: Instant) -> Result<Quota, SandboxError> {
        let refused = |r: Refused, limit| SandboxError::Throttled {
            retry_after: r.retry_after,
            injected: false,
            limit,
        };
        let mut exports = lock(&self.export_limit);
        if export && let Err(r) = exports.check(now) {
            self.kit.count_rate_limited();
            return Err(refused(r, "export"));
        }
        let account = self.kit.admit(now).map_err(|r| refused(r, "account"))?;
        if export {
            exports.record(now);
        }
        Ok(Quota {
            account,
            export: if export { exports.quota(now) } else { None },
        })
    }

    /// A 200 list or export body as a hostile server sends it (see the kit's cursor faults
    /// and `ZendeskFaults::bad_shape`); `cursor` is the request's cursor, if it had one.
    pub(crate) fn hostile_body(&self, cursor: Option<&str>, body: Vec<u8>) -> Vec<u8> {
        let (body, injected) = self.rewrite_page(cursor, body);
        if injected {
            self.kit.inject(1);
        }
        body
    }

    /// Whether `resource` (`ticket_forms`, or an export's `tickets`) is off the plan.
    pub(crate) fn is_unavailable(&self, resource: &str) -> bool {
        self.unavailable.read().iter().any(|r| r == resource)
    }

    pub(crate) fn unavailable(&self) -> Vec<String> {
        self.unavailable.read().clone()
    }

    pub(crate) fn set_unavailable(&self, resources: Vec<String>) {
        *self.unavailable.write() = resources;
    }

    pub(crate) fn set_rate_limits(&self, limits: Option<RateLimits>) {
        self.kit.set_rate_limit(limits.map(RateLimits::account));
        lock(&self.export_limit).set(limits.map(RateLimits::export));
    }

    pub(crate) fn stats(&self) -> Stats {
        let counters = self.kit.counters();
        Stats {
            requests: counters.requests,
            export_requests: self.export_requests.load(Ordering::Relaxed),
            rate_limited: counters.rate_limited,
            max_admitted_per_window: counters.max_admitted_per_window,
            max_export_admitted_per_window: lock(&self.export_limit).max_in_window(),
            faults_injected: counters.faults_injected,
        }
    }

    /// Zeroes Zendesk's own statistics (the kit zeroes the common ones).
    pub(crate) fn reset_own_stats(&self) {
        self.export_requests.store(0, Ordering::Relaxed);
        lock(&self.export_limit).reset_stats();
    }
}

impl Shared {
    /// Rewrites a 200 list or export body (one with an array of records, or an export
    /// envelope) as the hostile faults say; whether anything was injected.
    fn rewrite_page(&self, cursor: Option<&str>, body: Vec<u8>) -> (Vec<u8>, bool) {
        let f = self.kit.faults();
        if !f.repeat_cursor && !f.cycle_cursor && f.vendor.bad_shape.is_none() {
            return (body, false);
        }
        let Ok(Value::Object(mut page)) = serde_json::from_slice::<Value>(&body) else {
            return (body, false);
        };
        let is_export = page.contains_key("end_of_stream");
        let is_list = page
            .get("meta")
            .is_some_and(|m| m.get("has_more").is_some());
        if !is_export && !is_list {
            return (body, false);
        }
        let mut injected = false;
        if let Some(next) = cursor.and_then(|c| self.kit.cursor_fault(c)) {
            injected = true;
            if is_export {
                page.insert("after_cursor".into(), Value::String(next));
                page.insert("end_of_stream".into(), Value::Bool(false));
            } else if let Some(Value::Object(meta)) = page.get_mut("meta") {
                meta.insert("after_cursor".into(), Value::String(next));
                meta.insert("has_more".into(), Value::Bool(true));
            }
        }
        if let Some(shape) = self.kit.shape_fault(|f| f.bad_shape) {
            injected = true;
            match shape {
                BadShape::RecordsObject => {
                    let key = page
                        .iter()
                        .find(|(_, v)| v.is_array())
                        .map(|(k, _)| k.clone());
                    if let Some(key) = key {
                        let first = page[&key].get(0).cloned().unwrap_or(Value::Null);
                        page.insert(key, serde_json::json!({"0": first}));
                    }
                }
                BadShape::EndOfStreamMissing => {
                    page.remove("end_of_stream");
                }
                BadShape::HasMoreMissing => {
                    if let Some(Value::Object(meta)) = page.get_mut("meta") {
                        meta.remove("has_more");
                    }
                }
            }
        }
        let body = serde_json::to_vec(&Value::Object(page)).unwrap_or_default();
        (body, injected)
    }
}

/// A running simulator. Dropping it stops the server; [`ZendeskSandbox::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct ZendeskSandbox {
    shared: Arc<Shared>,
    server: Server,
}

impl ZendeskSandbox {
    /// The subdomain to configure (any valid one works with `api_base` set).
    pub const SUBDOMAIN: &'static str = "tributary";
    /// The admin's email for API token authentication.
    pub const EMAIL: &'static str = "admin@tributary.example";
    /// The API token the sandbox accepts (with any email).
    pub const API_TOKEN: &'static str = "tributary-sandbox-token";
    /// The OAuth access token the sandbox accepts.
    pub const OAUTH_TOKEN: &'static str = "tributary-sandbox-oauth";

    /// Seeds the account and serves it on `127.0.0.1:port` (0 = an ephemeral port) from a
    /// tokio task. Seeding runs on a blocking thread: large accounts take a moment.
    pub async fn start(config: SandboxConfig, port: u16) -> std::io::Result<ZendeskSandbox> {
        let now = chrono::Utc::now().timestamp();
        let (seed, records) = (config.seed, config.records);
        let store = tokio::task::spawn_blocking(move || generate::seed(seed, now, records))
            .await
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared::new(store, config));
        let router = axum::Router::new()
            .fallback(http::handle)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                tributary_sandbox_kit::latency::delay::<Shared>,
            ))
            .with_state(Arc::clone(&shared));
        let server = Server::start(port, router, "Zendesk").await?;
        Ok(ZendeskSandbox { shared, server })
    }

    /// The base URL, `http://127.0.0.1:PORT`, to configure as `api_base`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Creates an object of `resource` (`"tickets"`, `"users"`, …): a generated one with the
    /// top-level `fields` set over it (a ticket also takes `comment: {body, public}`). A
    /// ticket creation is logged as a ticket event. Returns the object, or Zendesk's error
    /// JSON when the resource or a field is invalid.
    pub fn create(&self, resource: &str, fields: Value) -> Value {
        let result = (|| {
            let kind = kind_of(resource)?;
            let fields = as_map(fields)?;
            let now = self.now();
            self.shared.store.write().create(kind, fields, now)
        })();
        match result {
            Ok(object) => Value::Object(object),
            Err(e) => serde_json::from_slice(&e.body()).unwrap_or(Value::Null),
        }
    }

    /// Changes the given top-level fields (a ticket's `custom_fields` merge by id); a ticket
    /// change is logged as a ticket event. `None` when the object does not exist, is
    /// deleted, or a field is invalid.
    pub fn update(&self, resource: &str, id: &str, fields: Value) -> Option<Value> {
        let kind = kind_of(resource).ok()?;
        let id = id.parse().ok()?;
        let fields = as_map(fields).ok()?;
        let now = self.now();
        self.shared
            .store
            .write()
            .update(kind, id, fields, now)
            .ok()
            .map(Value::Object)
    }

    /// Deletes an object the way Zendesk does (tickets to `status: deleted`, users
    /// inactive, organizations with `deleted_at`, groups `deleted: true`; memberships and
    /// the rest removed). False when it does not exist or is already deleted.
    pub fn delete(&self, resource: &str, id: &str) -> bool {
        let (Ok(kind), Ok(id)) = (kind_of(resource), id.parse()) else {
            return false;
        };
        let now = self.now();
        self.shared.store.write().delete(kind, id, now).is_ok()
    }

    /// Ids of the live (not deleted) objects of a resource, ascending; for
    /// `ticket_events`, every event id; for `tags`, the tags in use.
    pub fn ids(&self, resource: &str) -> Vec<String> {
        let store = self.shared.store.read();
        match resource {
            "ticket_events" => store
                .events
                .iter()
                .filter_map(|e| e.get("id").map(Value::to_string))
                .collect(),
            "tags" => store.tags().into_keys().collect(),
            _ => kind_of(resource)
                .map(|k| {
                    let now = self.shared.now();
                    store
                        .live_ids(k)
                        .into_iter()
                        .filter(|id| store.get(k, *id).is_some_and(|v| store.listed(k, v, now)))
                        .map(|id| id.to_string())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The object as `GET /api/v2/<resource>/<id>.json` shows it (deleted ones included).
    pub fn get(&self, resource: &str, id: &str) -> Option<Value> {
        let kind = kind_of(resource).ok()?;
        let id = id.parse().ok()?;
        self.shared
            .store
            .read()
            .get(kind, id)
            .cloned()
            .map(Value::Object)
    }

    /// The ticket events of ticket `id`, oldest first.
    pub fn ticket_events(&self, ticket: &str) -> Vec<Value> {
        self.shared
            .store
            .read()
            .events
            .iter()
            .filter(|e| e.get("ticket_id").map(Value::to_string).as_deref() == Some(ticket))
            .map(|e| Value::Object(e.clone()))
            .collect()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.kit.set_faults(faults);
    }

    /// Answers every API request no sooner than `latency` after it arrived (the control
    /// endpoints at once); requests wait in parallel.
    pub fn set_latency(&self, latency: tributary_sandbox_kit::Latency) {
        self.shared.kit.set_latency(latency);
    }

    /// Sets the resources the account's plan does not include (replacing the list):
    /// requests to `/api/v2/<resource>…` and `/api/v2/incremental/<resource>…` are then
    /// answered 403 with Zendesk's `Forbidden` body. An empty list includes everything.
    pub fn set_unavailable(&self, resources: &[&str]) {
        self.shared
            .set_unavailable(resources.iter().map(|r| (*r).to_owned()).collect());
    }

    /// Changes the rate limits (`None` = unlimited).
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        self.shared.set_rate_limits(limits);
    }

    /// Moves the simulator clock forward, e.g. past the exports' one-minute exclusion
    /// window.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.kit.clock.advance(by);
    }

    /// Simulator time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.shared.now()
    }

    /// What the sandbox saw since the start or the last [`ZendeskSandbox::reset_stats`].
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Zeroes the statistics.
    pub fn reset_stats(&self) {
        self.shared.kit.reset_stats();
        self.shared.reset_own_stats();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn kind_of(resource: &str) -> Result<Kind, ApiError> {
    Kind::from_resource(resource.trim_matches('/')).ok_or_else(ApiError::invalid_endpoint)
}

fn as_map(fields: Value) -> Result<Map<String, Value>, ApiError> {
    match fields {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(ApiError::record_invalid("fields must be a JSON object")),
    }
}

/// Runs a sandbox on `port` until ctrl-c, for `tributary sandbox zendesk`.
pub async fn serve_forever(config: SandboxConfig, port: u16) -> std::io::Result<()> {
    let sandbox = ZendeskSandbox::start(config, port).await?;
    tracing::info!(
        "Zendesk sandbox listening on {} (subdomain {}, email {}, api token {})",
        sandbox.url(),
        ZendeskSandbox::SUBDOMAIN,
        ZendeskSandbox::EMAIL,
        ZendeskSandbox::API_TOKEN
    );
    let stopped = tokio::signal::ctrl_c().await;
    sandbox.shutdown().await;
    stopped
}
