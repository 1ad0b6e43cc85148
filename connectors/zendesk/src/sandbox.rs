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
//! - Faults on demand: 500/503, 429s, slow responses, bodies cut short, malformed JSON,
//!   and lists that fail past their first page.
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
//! `GET /_sandbox/stats`, `POST /_sandbox/stats/reset`, `GET|POST /_sandbox/faults` (a
//! [`Faults`] JSON, missing fields default to off), `POST /_sandbox/clock`
//! `{"advance_seconds": N}`, `POST /_sandbox/rate_limit` `{"window_seconds": s,
//! "requests": n, "export_requests": m}` (an empty object turns limiting off),
//! `GET|POST /_sandbox/plan` `{"unavailable": ["ticket_forms"]}` (the resources the plan
//! does not include; an empty list includes all).

mod control;
mod error;
mod generate;
mod http;
mod store;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use control::{After, Before, FaultState, Limiter, Quota, Refused};
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
}

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

/// Faults to inject into `/api/v2` responses. Each "next" counter applies to that many
/// upcoming requests before its probability (0..1) takes over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Probability of answering 500 or 503.
    pub error_rate: f64,
    /// Answer the next N requests with 500 or 503.
    pub error_next: u32,
    /// Answer the next N requests with 429 and `Retry-After: 1`, whatever the limits.
    pub throttle_next: u32,
    /// Delay of a slow response, in milliseconds.
    pub slow_ms: u64,
    /// Probability that a response is delayed by `slow_ms` (which alone does nothing).
    pub slow_rate: f64,
    /// Probability that a successful body is cut in half after a full `Content-Length`.
    pub truncate_rate: f64,
    /// Truncate the next N successful bodies.
    pub truncate_next: u32,
    /// Probability that a successful response is 200 with a malformed JSON body.
    pub malformed_rate: f64,
    /// Malform the next N successful bodies.
    pub malformed_next: u32,
    /// A vendor that never stops: a page requested with a cursor (an export's `cursor`, a
    /// list's `page[after]`) names that same cursor as the next one and says there is more.
    pub repeat_cursor: bool,
    /// A vendor whose cursors cycle: the first page requested with a cursor is answered
    /// properly, every later one names that first cursor as the next (A → B → A).
    pub cycle_cursor: bool,
    /// Answer list and export pages with a body that is not the documented shape.
    pub bad_shape: Option<BadShape>,
    /// List and export pages answered intact before `bad_shape` applies (to every later one).
    pub bad_shape_after: u32,
    /// Answer 403 `Forbidden` (not retried) to every cursor-paginated list request past
    /// its first page (one with `page[after]`) until turned off: a snapshot that keeps
    /// failing part-way, as when the token loses access during a run.
    pub forbid_after_first_page: bool,
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

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub(crate) struct Shared {
    store: RwLock<Store>,
    /// Simulator time minus real time, in milliseconds.
    clock_offset_ms: AtomicI64,
    limiter: Mutex<Limiter>,
    faults: Mutex<FaultState>,
    /// Resources the plan does not include.
    unavailable: RwLock<Vec<String>>,
    requests: AtomicU64,
    export_requests: AtomicU64,
    rate_limited: AtomicU64,
    faults_injected: AtomicU64,
    request_counter: AtomicU64,
}

/// A poisoned lock only means another request panicked mid-way; the data is still usable
/// for a simulator, and refusing every later request would hide the original failure.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn now(&self) -> i64 {
        (chrono::Utc::now().timestamp_millis() + self.clock_offset_ms.load(Ordering::Relaxed))
            .div_euclid(1000)
    }

    /// The simulator clock in RFC 7231 format, for the `Date` header.
    pub(crate) fn http_date(&self) -> String {
        chrono::DateTime::from_timestamp(self.now(), 0)
            .unwrap_or_default()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub(crate) fn count_request(&self, export: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if export {
            self.export_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn admit(&self, export: bool) -> Result<Quota, Refused> {
        let admitted = lock(&self.limiter).admit(export, Instant::now());
        if admitted.is_err() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    pub(crate) fn faults_before(&self) -> Before {
        let before = lock(&self.faults).before();
        let n = u64::from(before.error.is_some()) + u64::from(before.delay.is_some());
        self.faults_injected.fetch_add(n, Ordering::Relaxed);
        before
    }

    pub(crate) fn faults_after(&self) -> After {
        let after = lock(&self.faults).after();
        let n = u64::from(after.truncate) + u64::from(after.malformed);
        self.faults_injected.fetch_add(n, Ordering::Relaxed);
        after
    }

    pub(crate) fn faults(&self) -> Faults {
        lock(&self.faults).get()
    }

    /// A 200 list or export body as a hostile server sends it (see `Faults::repeat_cursor`
    /// and `Faults::bad_shape`); `cursor` is the request's cursor, if it had one.
    pub(crate) fn hostile_body(&self, cursor: Option<&str>, body: Vec<u8>) -> Vec<u8> {
        let (body, injected) = lock(&self.faults).hostile_body(cursor, body);
        if injected {
            self.faults_injected.fetch_add(1, Ordering::Relaxed);
        }
        body
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        lock(&self.faults).set(faults);
    }

    /// Whether `resource` (`ticket_forms`, or an export's `tickets`) is off the plan.
    pub(crate) fn is_unavailable(&self, resource: &str) -> bool {
        self.unavailable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r == resource)
    }

    pub(crate) fn unavailable(&self) -> Vec<String> {
        self.unavailable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_unavailable(&self, resources: Vec<String>) {
        *self.unavailable.write().unwrap_or_else(|e| e.into_inner()) = resources;
    }

    pub(crate) fn set_rate_limits(&self, limits: Option<RateLimits>) {
        lock(&self.limiter).set(limits);
    }

    pub(crate) fn advance_clock(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.clock_offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let (max, max_export) = lock(&self.limiter).max_in_window();
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            export_requests: self.export_requests.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            max_admitted_per_window: max,
            max_export_admitted_per_window: max_export,
            faults_injected: self.faults_injected.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset_stats(&self) {
        for counter in [
            &self.requests,
            &self.export_requests,
            &self.rate_limited,
            &self.faults_injected,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        lock(&self.limiter).reset_stats();
    }
}

/// A running simulator. Dropping it stops the server; [`ZendeskSandbox::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct ZendeskSandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
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
        let shared = Arc::new(Shared {
            store: RwLock::new(store),
            clock_offset_ms: AtomicI64::new(0),
            limiter: Mutex::new(Limiter::new(config.rate_limits)),
            faults: Mutex::new(FaultState::new(config.seed)),
            unavailable: RwLock::new(config.unavailable),
            requests: AtomicU64::new(0),
            export_requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            request_counter: AtomicU64::new(0),
        });

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            // Small error responses must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let router = axum::Router::new()
            .fallback(http::handle)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "Zendesk sandbox server stopped with an error.");
            }
        });
        Ok(ZendeskSandbox {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, to configure as `api_base`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
            self.shared.write().create(kind, fields, now)
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
        self.shared.write().delete(kind, id, now).is_ok()
    }

    /// Ids of the live (not deleted) objects of a resource, ascending; for
    /// `ticket_events`, every event id; for `tags`, the tags in use.
    pub fn ids(&self, resource: &str) -> Vec<String> {
        let store = self.shared.read();
        match resource {
            "ticket_events" => store
                .events
                .iter()
                .filter_map(|e| e.get("id").map(Value::to_string))
                .collect(),
            "tags" => store.tags().into_keys().collect(),
            _ => kind_of(resource)
                .map(|k| store.live_ids(k).iter().map(u64::to_string).collect())
                .unwrap_or_default(),
        }
    }

    /// The object as `GET /api/v2/<resource>/<id>.json` shows it (deleted ones included).
    pub fn get(&self, resource: &str, id: &str) -> Option<Value> {
        let kind = kind_of(resource).ok()?;
        let id = id.parse().ok()?;
        self.shared.read().get(kind, id).cloned().map(Value::Object)
    }

    /// The ticket events of ticket `id`, oldest first.
    pub fn ticket_events(&self, ticket: &str) -> Vec<Value> {
        self.shared
            .read()
            .events
            .iter()
            .filter(|e| e.get("ticket_id").map(Value::to_string).as_deref() == Some(ticket))
            .map(|e| Value::Object(e.clone()))
            .collect()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
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
        self.shared.advance_clock(by);
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
        self.shared.reset_stats();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            // A client holding a keep-alive connection open must not hang the caller.
            task.abort();
        }
    }
}

impl Drop for ZendeskSandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
