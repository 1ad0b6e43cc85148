//! A Stripe simulator for `tributary demo`, `tributary sandbox stripe` and the tests.
//!
//! It serves a seeded test-mode account over HTTP on 127.0.0.1 and behaves like Stripe where
//! a connector can tell the difference:
//!
//! - `GET /v1/<resource>` lists newest first with `limit`, `starting_after`,
//!   `ending_before` (the objects just newer than the cursor, still newest first),
//!   `created[gt|gte|lt|lte]`, Stripe's per-resource filters and, on `/v1/events`, `type`
//!   (with `*`) and `types[]`. `GET /v1/<resource>/<id>` fetches one object.
//! - `POST /v1/<resource>` creates, `POST /v1/<resource>/<id>` updates (form encoded,
//!   `metadata[k]=v`), `DELETE /v1/<resource>/<id>` deletes (or cancels a subscription)
//!   where Stripe's API does: no price, no finalized or subscription invoice, no item of a
//!   finalized invoice, no product with prices (a test's [`StripeSandbox::delete`], like the
//!   Dashboard or Stripe itself, may still remove them); each mutation appends to
//!   `/v1/events`, which keeps 30 days of simulator time. One mutation emits one event:
//!   the specific one when a state field moves (`charge.refunded`, `invoice.paid`,
//!   `payout.failed`, ...), else `<type>.updated`; payment intents emit
//!   nothing for other updates, as in Stripe. Deleted objects leave lists but their ids stay
//!   valid cursors.
//!
//! The default subscription list leaves out canceled subscriptions, as Stripe's does
//! (`status=all` lists them, `ended` the canceled and incomplete_expired).
//!
//! Simplifications: each seeded subscription has one item (more can be added with
//! `POST /v1/subscription_items` and removed with `DELETE`); parameters are checked against the
//! object's own fields, so create-only Stripe parameters such as `source=tok_visa` are
//! refused; `expand[]` is accepted and ignored.
//! - Stripe's error JSON, 401 for a missing or non-test key, 429 above the configured rate
//!   (with `Stripe-Rate-Limited-Reason: global-rate` and, as Stripe, no `Retry-After`), a
//!   `Date` header from the simulator clock and a `Request-Id`. As in Stripe, each endpoint
//!   (a method and a path with its ids taken out, `GET /v1/charges`, `GET
//!   /v1/customers/{id}`) may also have a limit of its own within the account's
//!   ([`SandboxConfig::endpoint_rate_limit`], answered with `endpoint-rate`; the simulator
//!   binary sets Stripe's 25 a second whenever it is given a rate limit, or
//!   `--endpoint-rate-limit`), and the requests answered at once may be limited too
//!   ([`SandboxConfig::concurrency_limit`], answered with `global-concurrency`).
//! - Faults on demand (the sandbox kit's, seeded): 500/503, 429s, slow responses, bodies
//!   cut short, malformed JSON; and Stripe's own ([`StripeFaults`]).
//!
//! Objects are Stripe's own fixture objects (`fixtures/fixtures3.json`) with ids, times,
//! amounts, names and references varied, and the fields Stripe's examples fill with
//! placeholders named after the field (a charge's legacy `source`, invoices' and invoice
//! items' `parent`) set as a real account's objects have them. Like a real account, the seeded one has the
//! events of its last 30 days (Stripe's retention): the created event of every object
//! created then and a `metadata` update of some customers, subscriptions and products;
//! older objects have none left.
//!
//! Events are rendered in the account's API version (`POST /_sandbox/account
//! {"api_version": "2020-03-02"}`), older versions with the older shape of the fields
//! that changed; objects fetched or listed are always in the simulator's own version,
//! `2026-07-29.dahlia`, the version of Stripe's example objects it is built on. A request
//! whose `Stripe-Version` Stripe would not know is refused as Stripe refuses it (`Invalid
//! Stripe API version`), and one asking for another real version is refused with a message
//! saying the simulator renders only its own: a client pinned to another version must not
//! pass against shapes it would never get. Event types are Stripe's own list (`fixtures/event_types.txt`): only
//! those are emitted, and an unknown `type`/`types[]` is refused with Stripe's
//! `invalid_request_error`. Stripe has no `invoiceitem.updated`: an edit of an item on a
//! draft invoice emits `invoice.updated`, an item on a finalized invoice cannot be edited,
//! and a pending item's edit emits nothing. Balance transactions turn from `pending` to
//! `available` when the clock passes their `available_on`, without an event.
//!
//! # How many objects
//!
//! `records` charges and as many balance transactions (one per charge); payment intents
//! `records/4`; customers, invoices and invoice items `records/10`; subscriptions (one
//! subscription item each) and refunds `records/20`; prices and payouts `records/50`;
//! products, plans and disputes `records/100`; coupons `records/200`. Every type gets at
//! least `min(records, 5)`. Events: see above.
//!
//! # Control endpoints (no API key needed)
//!
//! The sandbox kit's, as for every simulator (`tributary_sandbox_kit::control`):
//! `GET /_sandbox/stats`, `POST /_sandbox/stats/reset`, `GET|POST /_sandbox/faults` (a
//! [`Faults`] JSON, missing fields default to off), `POST /_sandbox/clock`
//! `{"advance_seconds": N}`, `POST /_sandbox/rate_limit` `{"requests_per_second": x|null}`
//! (or `{"requests": n, "window_seconds": s}`); and Stripe's own `POST /_sandbox/account`
//! `{"api_version": "YYYY-MM-DD"}`.

mod error;
mod generate;
mod http;
mod kinds;
mod render;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_sandbox_kit::{Kit, KitConfig, Measure, RateLimit, Server, StoreLock, Window};

use error::ApiError;
use kinds::Kind;
use store::{Origin, Store};

/// How the simulated account is seeded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Charges to seed; the other types scale from it (see the module docs).
    pub records: usize,
    /// Requests per second admitted in any 1-second sliding window; `None` = unlimited.
    pub rate_limit: Option<f64>,
    /// Requests per second each endpoint admits in any 1-second sliding window, on top of
    /// `rate_limit` (Stripe: "API endpoints have a default limit of 25 requests per
    /// second", https://docs.stripe.com/rate-limits); `None` = no limit of their own.
    pub endpoint_rate_limit: Option<f64>,
    /// Requests answered at once (the simulated latency included) above which another is
    /// refused with 429 and `Stripe-Rate-Limited-Reason: global-concurrency`: Stripe's
    /// concurrency limiter, whose number Stripe does not document; `None` = no limit.
    pub concurrency_limit: Option<usize>,
    /// Seed of the generated data and of fault injection, for repeatable runs.
    pub seed: u64,
    /// Compress responses when the client sends `Accept-Encoding: gzip`. Off by default so
    /// benchmarks measure the client, not the sandbox's compressor.
    pub gzip: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            records: 200,
            rate_limit: None,
            endpoint_rate_limit: None,
            concurrency_limit: None,
            seed: 42,
            gzip: false,
        }
    }
}

/// Faults to inject into `/v1` responses: the kit's common ones (errors answered with
/// Stripe's `api_error` JSON, 429s, slow answers, cut and malformed bodies) and Stripe's
/// own ([`StripeFaults`]), in one JSON.
pub type Faults = tributary_sandbox_kit::Faults<StripeFaults>;

/// The faults only the Stripe simulator has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StripeFaults {
    /// Answer list pages with a body that is not Stripe's list object.
    pub bad_shape: Option<BadShape>,
    /// Answer 403 `permission_error` (not retried) to every list request past its first
    /// page (one with `starting_after`) until turned off: a walk that keeps failing
    /// part-way, as when a restricted key loses a permission during a run.
    pub forbid_after_first_page: bool,
}

/// A list body that breaks Stripe's documented list object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadShape {
    /// `data` is an object (the first element) instead of an array.
    DataObject,
    /// `data` is a string.
    DataString,
    /// `has_more` is left out.
    HasMoreMissing,
    /// `has_more` is the string `"true"`.
    HasMoreString,
    /// `has_more: true` with an empty `data`.
    EmptyHasMore,
}

/// What the sandbox saw, for tests to assert the client's manners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `/v1` requests received (control endpoints are not counted).
    pub requests: u64,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// The most requests admitted (not 429) in any 1-second sliding window.
    pub max_admitted_per_second: u64,
    /// Faults injected (errors, delays, truncations, malformed bodies).
    pub faults_injected: u64,
}

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: StoreLock<Store>,
    pub(crate) kit: Kit<StripeFaults>,
    gzip: bool,
    /// Each endpoint's own limit and the window of its admissions, by endpoint.
    endpoint_limit: Option<RateLimit>,
    endpoint_rps: Option<f64>,
    endpoints: std::sync::Mutex<std::collections::HashMap<String, Window>>,
    /// Stripe's concurrency limit, and the requests being answered now.
    concurrency_limit: Option<usize>,
    active: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Admits a request to `endpoint` under the endpoint's own limit; a refusal is counted
    /// and answered like the account's (429, reason `endpoint-rate`).
    pub(crate) fn admit_endpoint(
        &self,
        endpoint: &str,
        now: std::time::Instant,
    ) -> Result<(), tributary_sandbox_kit::SandboxError> {
        let Some(limit) = self.endpoint_limit else {
            return Ok(());
        };
        let mut windows = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Paths a client makes up are endpoints too (answered 404 later): keep the map
        // bounded by starting over once it is far larger than Stripe's API.
        if windows.len() >= 4096 && !windows.contains_key(endpoint) {
            windows.clear();
        }
        let window = windows
            .entry(endpoint.to_owned())
            .or_insert_with(|| Window::new(Some(limit), Measure::Fixed(Duration::from_secs(1))));
        window.admit(now).map_err(|refused| {
            self.kit.count_rate_limited();
            tributary_sandbox_kit::SandboxError::Throttled {
                retry_after: refused.retry_after,
                injected: false,
                limit: "endpoint",
            }
        })
    }

    pub(crate) fn now(&self) -> i64 {
        self.kit.now()
    }

    /// A Stripe-looking request id (`req_` and 14 characters), from the seed.
    pub(crate) fn next_request_id(&self) -> String {
        let n = self.kit.next_request_number();
        let mut h = self.kit.seed() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut id = String::from("req_");
        for _ in 0..14 {
            h = h
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            id.push(
                b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                    [((h >> 33) % 62) as usize] as char,
            );
        }
        id
    }

    /// The list query as a hostile server reads it: without its pagination cursor when a
    /// cursor fault applies, so the walk gets its first page (with `has_more`) again
    /// (`repeat_cursor`), or goes A → B → A → B (`cycle_cursor`).
    pub(crate) fn hostile_query(&self, query: &str) -> String {
        let is_cursor =
            |pair: &str| pair.starts_with("starting_after=") || pair.starts_with("ending_before=");
        let Some(cursor) = query.split('&').find(|p| is_cursor(p)) else {
            return query.to_owned();
        };
        if self.kit.cursor_fault(cursor).is_none() {
            return query.to_owned();
        }
        self.kit.inject(1);
        query
            .split('&')
            .filter(|p| !is_cursor(p))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The shape fault to apply to this list body, if any.
    pub(crate) fn bad_shape(&self) -> Option<BadShape> {
        let shape = self.kit.shape_fault(|f| f.bad_shape);
        if shape.is_some() {
            self.kit.inject(1);
        }
        shape
    }

    pub(crate) fn advance_clock(&self, by: Duration) {
        self.kit.clock.advance(by);
        self.clock_moved(self.now());
    }

    /// Events older than 30 days of the new time are forgotten; balances settle.
    pub(crate) fn clock_moved(&self, now: i64) {
        let mut store = self.store.write();
        store.prune_events(now);
        store.settle(now);
    }

    pub(crate) fn stats(&self) -> Stats {
        let counters = self.kit.counters();
        Stats {
            requests: counters.requests,
            rate_limited: counters.rate_limited,
            max_admitted_per_second: counters.max_admitted_per_window,
            faults_injected: counters.faults_injected,
        }
    }
}

/// A running simulator. Dropping it stops the server; [`StripeSandbox::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct StripeSandbox {
    shared: Arc<Shared>,
    server: Server,
}

impl StripeSandbox {
    /// Seeds the account and serves it on `127.0.0.1:port` (0 = an ephemeral port) from a
    /// tokio task. Seeding runs on a blocking thread: 100k charges take a moment.
    pub async fn start(config: SandboxConfig, port: u16) -> std::io::Result<StripeSandbox> {
        let start = chrono::Utc::now().timestamp_millis().div_euclid(1000);
        let (seed, records) = (config.seed, config.records);
        let store = tokio::task::spawn_blocking(move || Store::generate(seed, start, records))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|e: ApiError| std::io::Error::other(e.message))?;
        let shared = Arc::new(Shared {
            store: StoreLock::new(store),
            kit: Kit::new(KitConfig {
                seed: config.seed,
                rate_limit: config.rate_limit.map(RateLimit::per_second),
                measure: Measure::Fixed(Duration::from_secs(1)),
                error_statuses: &[500, 503],
            }),
            gzip: config.gzip,
            endpoint_limit: config.endpoint_rate_limit.map(RateLimit::per_second),
            endpoint_rps: config.endpoint_rate_limit,
            endpoints: std::sync::Mutex::default(),
            concurrency_limit: config.concurrency_limit,
            active: std::sync::atomic::AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .fallback(http::handle)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                tributary_sandbox_kit::latency::delay::<Shared>,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                http::concurrency,
            ))
            .with_state(Arc::clone(&shared));
        let server = Server::start(port, router, "Stripe").await?;
        Ok(StripeSandbox { shared, server })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A key the sandbox accepts (any `sk_test_...` or `rk_test_...` key is accepted).
    pub fn api_key() -> &'static str {
        "sk_test_tributary_sandbox"
    }

    /// Creates an object of `resource` (`"customers"`): a generated one with the top-level
    /// `fields` merged over it (`created` may be set to place it in the past; `id` only for
    /// coupons, products and plans). Emits its created event and returns the object, or
    /// Stripe's error JSON (`{"error": {...}}`) when the resource or a field is invalid.
    pub fn create(&self, resource: &str, fields: Value) -> Value {
        let result = (|| {
            let kind = kind_of(resource)?;
            let fields = match fields {
                Value::Object(map) => map,
                Value::Null => Map::new(),
                _ => {
                    return Err(ApiError::invalid(
                        "parameter_invalid",
                        "fields must be a JSON object",
                        None,
                    ));
                }
            };
            let now = self.now();
            self.shared
                .store
                .write()
                .create(kind, fields, now, &Origin::default())
        })();
        result.unwrap_or_else(|e| serde_json::from_slice(&e.body()).unwrap_or(Value::Null))
    }

    /// Replaces the given top-level fields (any JSON; fields the fixture lacks are added)
    /// and emits the update event with `previous_attributes`. `None` when the object does
    /// not exist or is deleted. Nothing is emitted when no field changes.
    pub fn update(&self, resource: &str, id: &str, fields: Value) -> Option<Value> {
        let kind = kind_of(resource).ok()?;
        let Value::Object(fields) = fields else {
            return None;
        };
        let now = self.now();
        self.shared
            .store
            .write()
            .update(kind, id, |_| Ok(fields), now, &Origin::default())
            .ok()
    }

    /// Deletes an object (cancels a subscription) and emits the event, without the checks
    /// of Stripe's API (see the module docs). False when the type cannot be deleted or the
    /// object does not exist (or is already gone).
    pub fn delete(&self, resource: &str, id: &str) -> bool {
        let Ok(kind) = kind_of(resource) else {
            return false;
        };
        let now = self.now();
        self.shared
            .store
            .write()
            .delete(kind, id, now, &Origin::default())
            .is_ok()
    }

    /// Live ids of a resource, newest first (empty for an unknown resource).
    pub fn ids(&self, resource: &str) -> Vec<String> {
        kind_of(resource)
            .map(|k| self.shared.store.read().ids(k))
            .unwrap_or_default()
    }

    /// The object as `GET /v1/<resource>/<id>` returns it (a deleted object as its
    /// `{"id", "object", "deleted": true}` stub).
    pub fn get(&self, resource: &str, id: &str) -> Option<Value> {
        let kind = kind_of(resource).ok()?;
        self.shared.store.read().get_value(kind, id, self.now())
    }

    /// Forgets every event so far, for tests that count the events they cause themselves
    /// (a real account's feed is never empty for long: see the module docs).
    pub fn clear_events(&self) {
        self.shared.store.write().clear_events();
    }

    /// The newest `n` events (any age within retention), newest first, parsed.
    pub fn latest_events(&self, n: usize) -> Vec<Value> {
        let now = self.now();
        let store = self.shared.store.read();
        store
            .ids(Kind::Event)
            .into_iter()
            .take(n)
            .filter_map(|id| store.get_value(Kind::Event, &id, now))
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

    /// Requests whose path starts with `prefix` (e.g. `/v1/events`) take `extra` longer
    /// than the others.
    pub fn slow_down(&self, prefix: &str, extra: std::time::Duration) {
        self.shared.kit.slow_down(prefix, extra);
    }

    /// Changes the admitted requests per second (`None` = unlimited).
    pub fn set_rate_limit(&self, rps: Option<f64>) {
        self.shared
            .kit
            .set_rate_limit(rps.map(RateLimit::per_second));
    }

    /// Moves the simulator clock forward; events older than 30 days of it are forgotten.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.advance_clock(by);
    }

    /// Sets the account's API version: events created from now on carry it as their
    /// `api_version` and render their objects in its shape (see `Store::set_account_version`).
    /// Panics on a string that is not a Stripe API version.
    pub fn set_account_api_version(&self, version: &str) {
        assert!(
            http::valid_api_version(version),
            "not a Stripe API version: {version}"
        );
        self.shared.store.write().set_account_version(version);
    }

    /// Simulator time, unix seconds.
    pub fn now(&self) -> i64 {
        self.shared.now()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Each endpoint's own limit in requests per second, if it has one.
    pub fn endpoint_rate_limit(&self) -> Option<f64> {
        self.shared.endpoint_rps
    }

    pub fn reset_stats(&self) {
        self.shared.kit.reset_stats();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn kind_of(resource: &str) -> Result<Kind, ApiError> {
    Kind::from_resource(resource.trim_matches('/')).ok_or_else(|| {
        ApiError::invalid(
            "resource_missing",
            format!("Unknown Stripe resource: {resource}"),
            None,
        )
    })
}

/// Runs a sandbox on `port` until ctrl-c, for `tributary sandbox stripe`.
pub async fn serve_forever(config: SandboxConfig, port: u16) -> std::io::Result<()> {
    let sandbox = StripeSandbox::start(config, port).await?;
    tracing::info!(
        "Stripe sandbox listening on {} (api key {})",
        sandbox.url(),
        StripeSandbox::api_key()
    );
    let stopped = tokio::signal::ctrl_c().await;
    sandbox.shutdown().await;
    stopped
}
