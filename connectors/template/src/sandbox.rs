//! An Acme simulator for `tributary demo`, `tributary sandbox acme` and the tests, on the
//! sandbox kit: the kit serves it ([`tributary_sandbox_kit::api::handle`]) with the
//! control API, authentication, the rate limit, faults and gzip; this file holds only
//! Acme's store, its generator, its routes and its error shape.
//!
//! The API it serves, as Acme documents it:
//!
//! - `GET /v1/me`: the account (proves the key).
//! - `GET /v1/items`: `limit` (1–100, default 10), `updated_since` (inclusive) and
//!   `updated_before` (exclusive) in Unix seconds, `page_token` from the previous page's
//!   `next_page_token` (valid only with the same filters). Items ordered by
//!   `(updated_at, id)`; deleted items stay as tombstones (`deleted: true`). The answer is
//!   `{"object": "list", "data": [...], "has_more": bool, "next_page_token": string|null}`.
//! - Authentication: `Authorization: Bearer <key>` with [`AcmeSandbox::API_KEY`]; anything
//!   else is 401.
//! - Errors: `{"error": {"type": "...", "message": "...", "param": "..."}}`; 400 for a bad
//!   parameter, 404 for an unknown path, 429 with `Retry-After` above the rate limit;
//!   `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` on every answer
//!   while a limit is set.
//!
//! Control endpoints (no credentials): the kit's `/_sandbox/stats`, `/_sandbox/faults`
//! (the kit's faults, plus `bad_shape`: list pages without `has_more`),
//! `/_sandbox/clock` and `/_sandbox/rate_limit`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tributary_sandbox_kit::api::{Answer, Api, ApiRequest, handle};
use tributary_sandbox_kit::{
    Kit, KitConfig, RateLimit, SandboxError, Server, StoreLock, Vendor, base64, to_json,
};

/// How the simulated account is seeded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Items to seed.
    pub records: usize,
    /// Requests per second above which it answers 429 (`None`: no limit).
    pub rate_limit: Option<f64>,
    /// Seed of the generated data and of fault injection.
    pub seed: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            records: 200,
            rate_limit: None,
            seed: 42,
        }
    }
}

/// Acme's own faults, next to the kit's in `/_sandbox/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeFaults {
    /// Answer list pages without `has_more` (after the kit's `bad_shape_after` pages).
    pub bad_shape: bool,
}

/// All faults: the kit's common ones and Acme's.
pub type Faults = tributary_sandbox_kit::Faults<AcmeFaults>;

/// The objects of the account: every item (tombstones included) by id, and the list
/// order.
#[derive(Debug, Default)]
struct Store {
    items: BTreeMap<String, Map<String, Value>>,
    order: BTreeSet<(i64, String)>,
    next_id: u64,
}

impl Store {
    fn put(&mut self, item: Map<String, Value>) {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        if let Some(old) = self.items.get(&id) {
            self.order.remove(&(stamp(old), id.clone()));
        }
        self.order.insert((stamp(&item), id.clone()));
        self.items.insert(id, item);
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("item_{:08}", self.next_id)
    }
}

fn stamp(item: &Map<String, Value>) -> i64 {
    item.get("updated_at").and_then(Value::as_i64).unwrap_or(0)
}

/// A deterministic stream of numbers (SplitMix64), so a seed gives the same account.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const NAMES: [&str; 6] = ["Anvil", "Rocket", "Magnet", "Spring", "Dynamite", "Skates"];

/// `records` items created over the last 90 days, most updated since.
fn seed(seed: u64, now: i64, records: usize) -> Store {
    let mut rng = Rng(seed);
    let mut store = Store::default();
    for _ in 0..records {
        let id = store.new_id();
        let created = now - 90 * 86_400 + rng.below(89 * 86_400) as i64;
        let updated = created + rng.below((now - 3_600 - created).max(1) as u64) as i64;
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        let item = json!({
            "id": id,
            "object": "item",
            "name": format!("{name} #{}", rng.below(1000)),
            "status": if rng.below(5) == 0 { "archived" } else { "active" },
            "quantity": rng.below(500),
            "price": (rng.below(100_000) as f64) / 100.0,
            "deleted": false,
            "created_at": created,
            "updated_at": updated,
        });
        if let Value::Object(item) = item {
            store.put(item);
        }
    }
    store
}

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub struct Shared {
    store: StoreLock<Store>,
    kit: Kit<AcmeFaults>,
}

impl Vendor for Shared {
    type Faults = AcmeFaults;

    fn kit(&self) -> &Kit<AcmeFaults> {
        &self.kit
    }

    fn error_body(&self, error: &SandboxError) -> Vec<u8> {
        let (kind, message, param) = match error {
            SandboxError::Injected { .. } => ("api_error", "Something went wrong.".into(), None),
            SandboxError::Throttled { retry_after, .. } => (
                "rate_limited",
                format!("Too many requests; retry after {retry_after} seconds."),
                None,
            ),
            SandboxError::BadControl { message, param } => {
                ("invalid_request", message.clone(), *param)
            }
            SandboxError::UnknownControl { method, path } => (
                "not_found",
                format!("Unrecognized request URL ({method} {path})."),
                None,
            ),
        };
        error_json(kind, &message, param).1
    }

    fn stats(&self) -> Value {
        to_json(&self.kit.counters())
    }
}

fn error_json(kind: &str, message: &str, param: Option<&str>) -> Answer {
    let status = match kind {
        "unauthorized" => 401,
        "not_found" => 404,
        "rate_limited" => 429,
        "api_error" => 500,
        _ => 400,
    };
    let mut error = json!({"type": kind, "message": message});
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    (status, json!({ "error": error }).to_string().into_bytes())
}

fn bad_param(param: &str, message: &str) -> Answer {
    error_json("invalid_request", message, Some(param))
}

impl Api for Shared {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Answer> {
        let expected = format!("Bearer {}", AcmeSandbox::API_KEY);
        match headers.get(header::AUTHORIZATION) {
            Some(value) if value.as_bytes() == expected.as_bytes() => Ok(()),
            _ => Err(error_json("unauthorized", "Invalid API key.", None)),
        }
    }

    fn route(&self, request: &ApiRequest) -> Answer {
        match (&request.method, request.path.as_str()) {
            (&Method::GET, "/v1/me") => (
                200,
                json!({"object": "account", "id": "acct_sandbox", "name": "Acme Sandbox"})
                    .to_string()
                    .into_bytes(),
            ),
            (&Method::GET, "/v1/items") => self.list(request),
            (method, path) => error_json(
                "not_found",
                &format!("Unrecognized request URL ({method} {path})."),
                None,
            ),
        }
    }

    fn headers(&self, quota: Option<(u32, u32, u64)>, headers: &mut HeaderMap) {
        let number = self.kit.next_request_number();
        if let Ok(id) = HeaderValue::from_str(&format!("req_{number:012}")) {
            headers.insert("request-id", id);
        }
        if let Some((limit, remaining, reset)) = quota {
            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
    }
}

/// Where a page token continues: after `(updated_at, id)`, for the filters it was made for.
fn token(updated_at: i64, id: &str, since: i64, before: i64) -> String {
    base64::encode(format!("{updated_at}|{id}|{since}|{before}").as_bytes())
}

fn parse_token(token: &str, since: i64, before: i64) -> Option<(i64, String)> {
    let text = String::from_utf8(base64::decode(token)?).ok()?;
    let mut parts = text.split('|');
    let updated_at = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_owned();
    let made_for = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    (made_for == (since, before) && parts.next().is_none()).then_some((updated_at, id))
}

impl Shared {
    fn list(&self, request: &ApiRequest) -> Answer {
        let int = |name: &str, default: i64| -> Result<i64, Answer> {
            match request.param(name) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| bad_param(name, &format!("{name} must be an integer."))),
            }
        };
        let parsed = (|| {
            let limit = int("limit", 10)?;
            if !(1..=100).contains(&limit) {
                return Err(bad_param("limit", "limit must be between 1 and 100."));
            }
            Ok((
                limit as usize,
                int("updated_since", 0)?,
                int("updated_before", i64::MAX)?,
            ))
        })();
        let (limit, since, before) = match parsed {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        let start = match request.param("page_token") {
            None => None,
            Some(t) => match parse_token(t, since, before) {
                Some(position) => Some(position),
                None => return bad_param("page_token", "Invalid page_token for this query."),
            },
        };
        let store = self.store.read();
        let mut matching = store
            .order
            .iter()
            .filter(|(at, _)| *at >= since && *at < before)
            .filter(|(at, id)| {
                start
                    .as_ref()
                    .is_none_or(|(s_at, s_id)| (at, id) > (s_at, s_id))
            });
        let page: Vec<&(i64, String)> = matching.by_ref().take(limit).collect();
        let has_more = matching.next().is_some();
        let data: Vec<&Map<String, Value>> = page
            .iter()
            .filter_map(|(_, id)| store.items.get(id))
            .collect();
        let mut next = match (has_more, page.last()) {
            (true, Some((at, id))) => Some(token(*at, id, since, before)),
            _ => None,
        };
        let mut has_more = has_more;
        // A hostile Acme: a token that leads to itself, or back to the first.
        if let Some(t) = request.param("page_token")
            && let Some(fault) = self.kit.cursor_fault(t)
        {
            self.kit.inject(1);
            next = Some(fault);
            has_more = true;
        }
        let mut body = json!({
            "object": "list",
            "data": data,
            "has_more": has_more,
            "next_page_token": next,
        });
        if self
            .kit
            .shape_fault(|f| f.bad_shape.then_some(()))
            .is_some()
        {
            self.kit.inject(1);
            if let Some(body) = body.as_object_mut() {
                body.remove("has_more");
            }
        }
        (200, body.to_string().into_bytes())
    }
}

/// A running Acme simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct AcmeSandbox {
    shared: Arc<Shared>,
    server: Server,
}

impl AcmeSandbox {
    /// The API key the sandbox accepts.
    pub const API_KEY: &'static str = "acme_sandbox_key";

    /// Seeds the account and serves it on `127.0.0.1:port` (0 = an ephemeral port).
    pub async fn start(config: SandboxConfig, port: u16) -> std::io::Result<AcmeSandbox> {
        let kit = Kit::new(KitConfig {
            seed: config.seed,
            rate_limit: config.rate_limit.map(RateLimit::per_second),
            ..KitConfig::default()
        });
        let (seed_value, records, now) = (config.seed, config.records, kit.now());
        let store = tokio::task::spawn_blocking(move || seed(seed_value, now, records))
            .await
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            store: StoreLock::new(store),
            kit,
        });
        let router = axum::Router::new()
            .fallback(handle::<Shared>)
            .with_state(Arc::clone(&shared));
        let server = Server::start(port, router, "Acme").await?;
        Ok(AcmeSandbox { shared, server })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The kit: clock, faults, rate limit, counters.
    pub fn kit(&self) -> &Kit<AcmeFaults> {
        &self.shared.kit
    }

    /// The ids of the live (not deleted) items.
    pub fn ids(&self) -> Vec<String> {
        let store = self.shared.store.read();
        store
            .items
            .values()
            .filter(|item| item.get("deleted") != Some(&Value::Bool(true)))
            .filter_map(|item| item["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Creates an item named `name` now (the simulator's clock); returns its id.
    pub fn create(&self, name: &str) -> String {
        let now = self.shared.kit.now();
        let mut store = self.shared.store.write();
        let id = store.new_id();
        let item = json!({
            "id": id, "object": "item", "name": name, "status": "active", "quantity": 1,
            "price": 9.99, "deleted": false, "created_at": now, "updated_at": now,
        });
        if let Value::Object(item) = item {
            store.put(item);
        }
        id
    }

    /// Sets `field` of item `id` to `value` now; false if there is no such item.
    pub fn update(&self, id: &str, field: &str, value: Value) -> bool {
        self.change(id, |item| {
            item.insert(field.to_owned(), value);
        })
    }

    /// Deletes item `id` now (it stays as a tombstone); false if there is no such item.
    pub fn delete(&self, id: &str) -> bool {
        self.change(id, |item| {
            item.insert("deleted".to_owned(), Value::Bool(true));
        })
    }

    fn change(&self, id: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> bool {
        let now = self.shared.kit.now();
        let mut store = self.shared.store.write();
        let Some(mut item) = store.items.get(id).cloned() else {
            return false;
        };
        edit(&mut item);
        item.insert("updated_at".to_owned(), json!(now));
        store.put(item);
        true
    }

    /// Stops serving, waiting (boundedly) for requests in flight.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
