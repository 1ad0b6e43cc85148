//! A Salesforce simulator for `tributary demo`, `tributary sandbox salesforce` and the tests.
//!
//! It serves a seeded org over HTTP on 127.0.0.1 and behaves like Salesforce where the
//! connector can tell the difference:
//!
//! - `POST /services/oauth2/token`: the refresh-token, JWT bearer and client-credentials
//!   grants, with Salesforce's `{"error", "error_description"}` refusals. JWT assertions must
//!   be RS256-signed with the test-only key in `fixtures/` (see its README), with `iss` the
//!   client id, `sub` the username and `aud` the simulator's URL or a Salesforce login
//!   server. The answer's `instance_url` is the simulator itself.
//! - `GET /services/data/vXX.X/sobjects` (describeGlobal), `/sobjects/<Object>/describe`
//!   (fields with types, labels and compound components) and `/limits`.
//! - `GET …/query?q=` and `…/queryAll?q=` (the SOQL subset of [`soql`]; `queryAll` includes
//!   deleted records), paged by `Sforce-Query-Options: batchSize=` (200–2000; fewer for
//!   rows of many fields) with `nextRecordsUrl`.
//! - Bulk API 2.0 query jobs: `POST …/jobs/query` (refusing `ORDER BY`, `LIMIT`, compound
//!   fields and the objects in [`SandboxConfig::bulk_unsupported`] as Salesforce does), `GET`
//!   (state `UploadComplete` → `InProgress` → `JobComplete` after
//!   [`SandboxConfig::bulk_polls`] polls), `PATCH` (abort), `DELETE`, and
//!   `GET …/results?locator=&maxRecords=` as CSV (gzip when accepted) with `Sforce-Locator` and
//!   `Sforce-NumberOfRecords`.
//! - Every API request counts against a daily limit, reported in `Sforce-Limit-Info:
//!   api-usage=USED/LIMIT`; past it, `403 REQUEST_LIMIT_EXCEEDED`. Sessions can be expired on
//!   demand or after N requests (`401 INVALID_SESSION_ID`).
//! - A request line and headers over 16,384 bytes are refused before the API, as
//!   Salesforce's front end does: `414 URI Too Long` when the URI alone is that long, else
//!   `431 Request Header Fields Too Large`.
//! - Faults on demand (the sandbox kit's, seeded): 503s, 429s with `Retry-After`, slow
//!   answers, bodies cut short, malformed JSON; and Salesforce's own ([`SalesforceFaults`]):
//!   cursors that repeat or cycle, query pages of the wrong shape, Bulk jobs refused. An
//!   optional rate limit (429 with `Retry-After`) and a clock tests can move forward.
//!
//! # The org
//!
//! `records` accounts; twice as many contacts, opportunity histories and tasks; as many
//! leads, opportunities, cases, campaign members, events and `Invoice__c` (a custom object);
//! campaigns `records/10` and users `records/20` (at least 3 each); 5 case statuses. Every
//! record was last changed between 30 days and 2 hours before the simulator started.
//! `Account` has the custom fields `Tier__c`, `Customer_Since__c` (date) and
//! `Health_Score__c` (percent), and the `BillingAddress` compound; `Invoice__c` has the
//! `Store_Location__c` geolocation compound. `CaseStatus` has no audit fields (a snapshot
//! object) and, by default, Bulk API refuses it. With [`SandboxConfig::wide_fields`], the org
//! also has [`WIDE_OBJECT`], whose hundreds of 40-character field names do not fit in one
//! REST query URL.
//!
//! # Control endpoints (no session needed)
//!
//! The sandbox kit's, as for every simulator (`tributary_sandbox_kit::control`):
//! `GET /_sandbox/stats`, `POST /_sandbox/stats/reset`, `GET|POST /_sandbox/faults` (a
//! [`Faults`] JSON), `POST /_sandbox/clock` `{"advance_seconds": N}`, `POST
//! /_sandbox/rate_limit` `{"requests_per_second": x|null}`; and Salesforce's own `POST
//! /_sandbox/limits` `{"daily_api_limit": N, "reset_usage": true}`, `POST
//! /_sandbox/expire_sessions`.

mod error;
mod http;
mod org;
mod soql;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub(crate) use tributary_sandbox_kit::lock;
use tributary_sandbox_kit::{Kit, KitConfig, Measure, RateLimit, Server, StoreLock, server};

use org::Org;
pub use org::{WIDE_OBJECT, wide_field};

/// The connected app's consumer key the simulator accepts.
pub const CLIENT_ID: &str = "tributary-sandbox-client";
/// The consumer secret the simulator accepts.
pub const CLIENT_SECRET: &str = "tributary-sandbox-secret";
/// The refresh token the simulator accepts.
pub const REFRESH_TOKEN: &str = "tributary-sandbox-refresh-token";
/// The integration user of the JWT bearer flow.
pub const USERNAME: &str = "integration@sandbox.tributary.test";

/// The simulator's RSA public key for JWT assertions (test-only; see `fixtures/README.md`).
const JWT_PUBLIC_KEY: &[u8] = include_bytes!("../fixtures/test-only-jwt-public-key.pem");

/// The test-only private key matching the simulator's JWT public key, as PEM.
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/test-only-jwt-private-key.pem");

/// The path of the test-only private key file in this crate's source tree.
pub fn test_private_key_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-only-jwt-private-key.pem")
}

/// How the simulated org is seeded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Accounts to seed; the other objects scale from it (see the module docs).
    pub records: usize,
    /// Seed of the generated data.
    pub seed: u64,
    /// API requests allowed per day (`Sforce-Limit-Info`); a real org has at least 15,000.
    pub daily_api_limit: u64,
    /// Objects Bulk API refuses (`INVALIDENTITY`).
    pub bulk_unsupported: Vec<String>,
    /// Polls of a Bulk job answered `InProgress` before it is `JobComplete`.
    pub bulk_polls: u32,
    /// Requests an access token is good for; `None` = until expired on demand.
    pub session_ttl_requests: Option<u64>,
    /// Custom fields of [`WIDE_OBJECT`], which has `records` records; 0 (the default) leaves
    /// the object out of the org.
    pub wide_fields: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            records: 50,
            seed: 42,
            daily_api_limit: 15_000,
            bulk_unsupported: vec!["CaseStatus".into()],
            bulk_polls: 1,
            session_ttl_requests: None,
            wide_fields: 0,
        }
    }
}

/// Faults to inject into API answers: the kit's common ones (503 `SERVER_UNAVAILABLE`,
/// 429 with `Retry-After`, slow answers, cut and malformed bodies; "next" counters apply to
/// that many upcoming requests before the probabilities take over) and Salesforce's own
/// ([`SalesforceFaults`]), in one JSON.
pub type Faults = tributary_sandbox_kit::Faults<SalesforceFaults>;

/// The faults only the Salesforce simulator has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceFaults {
    // The kit's `repeat_cursor` makes a `nextRecordsUrl` page name itself as the next page
    // and a Bulk results page name its own locator; `cycle_cursor` names the first one
    // requested; `bad_shape_after` counts query pages, the `COUNT()` one included.
    /// Answer query pages with a body that is not the documented shape.
    pub bad_shape: Option<BadShape>,
    /// Refuse every Bulk API 2.0 query job creation (`POST …/jobs/query`) this way.
    pub bulk_refusal: Option<BulkRefusal>,
}

/// How Salesforce refuses to create a Bulk API 2.0 query job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkRefusal {
    /// The org's daily query jobs are used up: `400` with `LIMIT_EXCEEDED`, "Max bulk v2
    /// query jobs (10000) per 24 hrs has been reached" (the limit is DailyBulkV2QueryJobs,
    /// https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/bulk_api_2_limits.htm;
    /// the answer as integrations record it, e.g. airbytehq/airbyte's source-salesforce tests).
    DailyJobLimit,
    /// The user may not run Bulk jobs: `403` with `InvalidUser` ("the user … doesn't have the
    /// correct permission",
    /// https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/bulk_api_2_0_errors.htm).
    NoPermission,
}

/// A query response that breaks Salesforce's documented shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadShape {
    /// `records` is an object instead of an array.
    RecordsObject,
    /// `done` is left out.
    DoneMissing,
}

/// What the simulator saw, for tests to assert the connector's manners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// API requests counted against the daily limit.
    pub api_requests: u64,
    /// Tokens issued, by grant type.
    pub tokens_issued: u64,
    /// Token requests refused.
    pub tokens_refused: u64,
    /// Requests refused with `INVALID_SESSION_ID`.
    pub invalid_sessions: u64,
    /// Requests refused with `REQUEST_LIMIT_EXCEEDED`.
    pub limit_exceeded: u64,
    /// SOQL queries started (first pages, `COUNT()` included).
    pub queries: u64,
    /// `nextRecordsUrl` pages served.
    pub query_more: u64,
    /// Bulk query jobs created.
    pub bulk_jobs: u64,
    /// Bulk results pages served.
    pub bulk_result_pages: u64,
    /// Faults injected.
    pub faults_injected: u64,
    /// Requests refused with 429 by the simulated rate limit (injected 429s not counted).
    pub rate_limited: u64,
    /// Requests refused before the API for a request line and headers over 16,384 bytes
    /// (414 or 431).
    pub too_long: u64,
}

/// One Bulk query job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) object: String,
    pub(crate) operation: String,
    pub(crate) state: String,
    pub(crate) polls_left: u32,
    pub(crate) created: String,
    /// The CSV header cells, then one row of cells per record.
    pub(crate) header: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
}

/// A REST query's rendered records and how many fields each has (wide rows page smaller).
pub(crate) type QueryCursor = (Arc<Vec<String>>, usize);

/// Issued access tokens and how many requests each has made.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    pub(crate) tokens: HashMap<String, u64>,
    pub(crate) ttl: Option<u64>,
}

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) org: StoreLock<Org>,
    pub(crate) bulk_unsupported: Vec<String>,
    pub(crate) bulk_polls: u32,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) api_used: AtomicU64,
    pub(crate) api_limit: AtomicU64,
    /// REST query cursors: locator → rendered records and how many fields they have.
    pub(crate) cursors: Mutex<HashMap<String, QueryCursor>>,
    pub(crate) jobs: Mutex<HashMap<String, Job>>,
    /// Clock, rate limit, faults and the common counters.
    pub(crate) kit: Kit<SalesforceFaults>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) counter: AtomicU64,
}

impl Shared {
    /// A fresh identifier with a Salesforce-like prefix.
    pub(crate) fn next_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{prefix}{n:012}AAA")
    }

    pub(crate) fn stat(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }

    /// Simulator time, to the second (Salesforce's datetimes have second precision).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.kit.now(), 0).unwrap_or_else(Utc::now)
    }

    /// What the simulator saw: its own counters and the kit's.
    pub(crate) fn stats(&self) -> Stats {
        let counters = self.kit.counters();
        Stats {
            faults_injected: counters.faults_injected,
            rate_limited: counters.rate_limited,
            ..lock(&self.stats).clone()
        }
    }

    pub(crate) fn reset_stats(&self) {
        self.kit.reset_stats();
        *lock(&self.stats) = Stats::default();
    }
}

/// A running simulator. Dropping it stops the server; [`SalesforceSandbox::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct SalesforceSandbox {
    shared: Arc<Shared>,
    server: Server,
}

impl SalesforceSandbox {
    /// Seeds the org and serves it on `127.0.0.1:port` (0 = an ephemeral port).
    pub async fn start(config: SandboxConfig, port: u16) -> std::io::Result<SalesforceSandbox> {
        let listener = server::bind(port).await?;
        let addr = listener.local_addr()?;
        let (seed, records, wide) = (config.seed, config.records, config.wide_fields);
        let start = Utc::now();
        let start = DateTime::from_timestamp(start.timestamp(), 0).unwrap_or(start);
        let org = tokio::task::spawn_blocking(move || Org::generate(seed, records, wide, start))
            .await
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            url: format!("http://{addr}"),
            org: StoreLock::new(org),
            bulk_unsupported: config.bulk_unsupported,
            bulk_polls: config.bulk_polls,
            sessions: Mutex::new(Sessions {
                tokens: HashMap::new(),
                ttl: config.session_ttl_requests,
            }),
            api_used: AtomicU64::new(0),
            api_limit: AtomicU64::new(config.daily_api_limit),
            cursors: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            kit: Kit::new(KitConfig {
                seed: config.seed,
                rate_limit: None,
                measure: Measure::Fixed(Duration::from_secs(1)),
                // Salesforce answers an unavailable server with 503 SERVER_UNAVAILABLE.
                error_statuses: &[503],
            }),
            stats: Mutex::new(Stats::default()),
            counter: AtomicU64::new(0),
        });
        let router = axum::Router::new()
            .fallback(http::handle)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                tributary_sandbox_kit::latency::delay::<Shared>,
            ))
            .with_state(Arc::clone(&shared));
        let server = Server::serve(listener, router, "Salesforce")?;
        Ok(SalesforceSandbox { shared, server })
    }

    /// The base URL (login URL and instance URL alike), `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// Creates a record of `object` now: generated values with `fields` (API names) over
    /// them. Returns its Id, or Salesforce's error message.
    pub fn create(&self, object: &str, fields: Value) -> Result<String, String> {
        let fields = as_map(fields)?;
        self.shared
            .org
            .write()
            .create(object, fields, self.shared.now())
            .map_err(|e| e.message)
    }

    /// Creates a record whose transaction committed late: it becomes visible now, but its
    /// `CreatedDate`, `LastModifiedDate` and `SystemModstamp` are `stamp` (to the second).
    /// This is what a lookback window exists for.
    pub fn create_committed_late(
        &self,
        object: &str,
        fields: Value,
        stamp: DateTime<Utc>,
    ) -> Result<String, String> {
        let fields = as_map(fields)?;
        let stamp = DateTime::from_timestamp(stamp.timestamp(), 0).unwrap_or(stamp);
        self.shared
            .org
            .write()
            .create(object, fields, stamp)
            .map_err(|e| e.message)
    }

    /// Sets fields of a live record (its `SystemModstamp` becomes now).
    pub fn update(&self, object: &str, id: &str, fields: Value) -> Result<(), String> {
        let fields = as_map(fields)?;
        self.shared
            .org
            .write()
            .update(object, id, fields, self.shared.now())
            .map_err(|e| e.message)
    }

    /// Deletes a record (to the recycle bin: `queryAll` still returns it, `IsDeleted = true`).
    pub fn delete(&self, object: &str, id: &str) -> Result<(), String> {
        self.shared
            .org
            .write()
            .delete(object, id, self.shared.now())
            .map_err(|e| e.message)
    }

    /// Deletes a record for good, as emptying the recycle bin does: not even `queryAll`
    /// returns it again.
    pub fn purge(&self, object: &str, id: &str) -> Result<(), String> {
        self.shared
            .org
            .write()
            .purge(object, id)
            .map_err(|e| e.message)
    }

    /// Adds a custom field (`Name__c`, a Salesforce type such as `string` or `date`).
    pub fn add_field(&self, object: &str, name: &str, ty: &str) -> Result<(), String> {
        self.shared
            .org
            .write()
            .add_field(object, name, ty)
            .map_err(|e| e.message)
    }

    /// Ids of the live (not deleted) records of `object`, in Id order.
    pub fn ids(&self, object: &str) -> Vec<String> {
        self.shared
            .org
            .read()
            .table(object)
            .map(|t| {
                t.records
                    .iter()
                    .filter(|(_, r)| r.get("IsDeleted") != Some(&Value::Bool(true)))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ids of every record of `object`, deleted ones included.
    pub fn all_ids(&self, object: &str) -> Vec<String> {
        self.shared
            .org
            .read()
            .table(object)
            .map(|t| t.records.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A record's stored fields (API names).
    pub fn record(&self, object: &str, id: &str) -> Option<Value> {
        self.shared
            .org
            .read()
            .table(object)
            .and_then(|t| t.records.get(id))
            .map(|r| Value::Object(r.clone()))
    }

    /// Every object's API name.
    pub fn objects(&self) -> Vec<String> {
        self.shared
            .org
            .read()
            .tables
            .iter()
            .map(|t| t.meta.name.clone())
            .collect()
    }

    /// Invalidates every issued access token now.
    pub fn expire_sessions(&self) {
        lock(&self.shared.sessions).tokens.clear();
    }

    /// Makes tokens issued from now on (and current ones) expire after `requests` requests.
    pub fn set_session_ttl(&self, requests: Option<u64>) {
        lock(&self.shared.sessions).ttl = requests;
    }

    /// Changes the daily API limit.
    pub fn set_daily_api_limit(&self, limit: u64) {
        self.shared.api_limit.store(limit, Ordering::Relaxed);
    }

    /// Starts a new day: no API request used.
    pub fn reset_api_usage(&self) {
        self.shared.api_used.store(0, Ordering::Relaxed);
    }

    /// `(used, limit)` of today's API requests.
    pub fn api_usage(&self) -> (u64, u64) {
        (
            self.shared.api_used.load(Ordering::Relaxed),
            self.shared.api_limit.load(Ordering::Relaxed),
        )
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

    /// Limits API requests to `rps` per second in any sliding window (`None` =
    /// unlimited): past it, 429 with `Retry-After`.
    pub fn set_rate_limit(&self, rps: Option<f64>) {
        self.shared
            .kit
            .set_rate_limit(rps.map(RateLimit::per_second));
    }

    /// Moves the simulator clock forward: records created, changed or deleted from now on
    /// carry the later time.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.kit.clock.advance(by);
    }

    /// Simulator time, to the second.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.now()
    }

    /// What the simulator saw.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Zeroes the statistics.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn as_map(fields: Value) -> Result<Map<String, Value>, String> {
    match fields {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(format!("fields must be a JSON object, not {other}")),
    }
}

/// Runs a simulator on `port` until ctrl-c, for `tributary sandbox salesforce`.
pub async fn serve_forever(config: SandboxConfig, port: u16) -> std::io::Result<()> {
    let sandbox = SalesforceSandbox::start(config, port).await?;
    tracing::info!(
        "Salesforce sandbox listening on {} (client_id {CLIENT_ID}, client_secret {CLIENT_SECRET}, refresh_token {REFRESH_TOKEN}; JWT username {USERNAME} with {})",
        sandbox.url(),
        test_private_key_path().display()
    );
    let stopped = tokio::signal::ctrl_c().await;
    sandbox.shutdown().await;
    stopped
}
