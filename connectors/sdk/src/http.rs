//! The HTTP client every connector uses: one rate limiter per vendor account, the vendor's
//! own rate signals (429 + `Retry-After`, remaining-quota headers), retries with capped
//! exponential backoff and full jitter, and errors that carry the vendor's own message.
//!
//! A connector builds its requests with a closure ([`HttpClient::send`]); the client calls it
//! once per attempt, waits for the account's limiter, sends, and reads the whole body before
//! deciding, so a body cut short by the network is retried like any other transport failure.
//! URLs in errors and logs are reduced to scheme, host and path ([`redact_url`]), because
//! vendors put tokens in query strings.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota};
/// Response headers, as [`HttpConfig::throttle_scope`] reads them.
pub use reqwest::header::HeaderMap;
use reqwest::header::{DATE, RETRY_AFTER};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// How many characters of a body [`vendor_message`] keeps when the body is not a known
/// JSON error shape.
const MESSAGE_PREFIX_CHARS: usize = 300;

/// Values above this in a reset header are Unix timestamps (as some vendors send), not
/// seconds to wait: no vendor asks to wait 30 years.
const EPOCH_THRESHOLD_SECS: f64 = 1_000_000_000.0;

/// The vendor's remaining-quota headers, so the client slows down before the quota hits
/// zero instead of waiting for a 429.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuotaHeaders {
    /// Names of headers that carry the requests left in the current window, tried in
    /// order (e.g. `["x-rate-limit-remaining", "ratelimit-remaining"]`).
    pub remaining: Vec<String>,
    /// Names of headers that carry the seconds until the window resets, tried in order
    /// (e.g. `["ratelimit-reset"]`). A value above 10^9 is read as a Unix timestamp.
    pub reset: Vec<String>,
    /// Names of headers that carry the whole quota in one structured value,
    /// `total=10; remaining=9; resets=52` (see [`StructuredQuota::parse`]), tried in order
    /// before `remaining` and `reset`. Zendesk reports its per-endpoint limits this way
    /// (`zendesk-ratelimit-tickets-index`,
    /// `zendesk-ratelimit-incremental-exports-cursor`).
    pub structured: Vec<String>,
    /// When the remaining quota is at or below this, the account's next request waits until
    /// the reset (or 1 s when the vendor does not say when that is).
    pub low_water: u64,
}

/// How an [`HttpClient`] talks to one vendor.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The vendor's name, for error messages and logs (e.g. `Stripe`).
    pub vendor: String,
    /// The sustained rate of the account's limiter, in requests per second. Rates below one
    /// per second are fine: `10.0 / 60.0` is ten requests a minute.
    pub requests_per_second: f64,
    /// How many requests may go out back to back before the rate applies. The default of 1
    /// means the vendor never sees more than `requests_per_second × window` requests in any
    /// window of 0.2 s or longer (see [`SLOT_MARGIN`]); a larger burst adds `burst - 1` to
    /// that bound.
    pub burst: u32,
    /// The time limit of one attempt, from sending until the last byte of the body.
    pub timeout: Duration,
    /// The time limit for opening a connection.
    pub connect_timeout: Duration,
    /// How many times a failed request is retried (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// The backoff before the first retry; it doubles with each retry, before jitter.
    pub base_backoff: Duration,
    /// The cap on one backoff.
    pub max_backoff: Duration,
    /// The longest `Retry-After` the client waits out; a longer one fails the request with
    /// [`Error::RateLimited`] so the run can end and be rescheduled instead of hanging.
    pub max_retry_after: Duration,
    /// The vendor's remaining-quota headers, if it sends them.
    pub quota: Option<QuotaHeaders>,
    /// The largest body, after decompression, the client reads; a larger answer fails the
    /// request with [`Error::Protocol`] instead of exhausting memory (a small gzip body can
    /// inflate a thousandfold). Default: [`max_body_bytes`], which the runtime sets from
    /// `[sync] max_response_mb`.
    pub max_body_bytes: u64,
    /// Statuses retried with backoff besides 429, 500, 502, 503 and 504 (a vendor that
    /// documents a transient 423 or 409, say). Default: none.
    pub retry_statuses: Vec<u16>,
    /// For a vendor whose 429s say which limit was exceeded (Stripe's
    /// `Stripe-Rate-Limited-Reason`): reads a 429's headers and says whose requests pause
    /// ([`Throttle`]) and for how long: the `Retry-After` if the 429 has one, else the
    /// request's backoff. [`Throttle::Account`], [`Throttle::Own`] and
    /// [`Throttle::Concurrency`] count as the vendor pacing the account (four times
    /// `max_retries`); [`Throttle::Request`] pauses nothing and uses the request's own
    /// retries. Default `None`: a 429 with `Retry-After` pauses
    /// this client's own limit, one without backs off alone.
    pub throttle_scope: Option<fn(&HeaderMap) -> Throttle>,
}

/// Which limit a vendor's 429 says was exceeded (see [`HttpConfig::throttle_scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The account's: every request of the account pauses, whatever nested limit
    /// ([`HttpClient::shared_within`]) it also waits for.
    Account,
    /// This client's own limit (one endpoint's, inside the account): its requests pause.
    Own,
    /// A limit on requests at once (Stripe's concurrency limiter): nothing pauses, since
    /// the answers in flight free it and a pause would idle the account; the request backs
    /// off, and a reader keeping several in flight keeps fewer (it sees the 429 in
    /// [`HttpClient::throttled`]).
    Concurrency,
    /// No limit the client paces (a lock on one object, a limit of one resource): only
    /// this request backs off.
    Request,
}

/// The default of [`HttpConfig::max_body_bytes`] when the runtime sets none: 256 MiB, far
/// above any vendor's documented page (Stripe's 100 objects, Zendesk's 1,000 records, a
/// Salesforce Bulk results chunk) and far below what would exhaust a worker's memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;

static MAX_BODY_BYTES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_BODY_BYTES);

/// The process-wide default body cap that [`HttpConfig::new`] uses.
pub fn max_body_bytes() -> u64 {
    MAX_BODY_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the process-wide default body cap (the runtime calls this once from its config,
/// before building sources), so every connector's client gets it without a config key of
/// its own.
pub fn set_max_body_bytes(bytes: u64) {
    MAX_BODY_BYTES.store(bytes.max(1), std::sync::atomic::Ordering::Relaxed);
}

impl HttpConfig {
    /// A config with the given vendor name and rate and the defaults for everything else:
    /// burst 1, 60 s timeout, 10 s connect timeout, 8 retries, backoff from 500 ms capped at
    /// 60 s, `Retry-After` honoured up to 15 minutes, no quota headers, bodies capped at
    /// the process-wide [`max_body_bytes`].
    pub fn new(vendor: impl Into<String>, requests_per_second: f64) -> Self {
        HttpConfig {
            vendor: vendor.into(),
            requests_per_second,
            burst: 1,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 8,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(15 * 60),
            quota: None,
            max_body_bytes: max_body_bytes(),
            retry_statuses: Vec::new(),
            throttle_scope: None,
        }
    }

    /// Like [`HttpConfig::new`], with the rate given per minute.
    pub fn per_minute(vendor: impl Into<String>, requests_per_minute: f64) -> Self {
        Self::new(vendor, requests_per_minute / 60.0)
    }

    /// The limiter quota and the cells of it one request takes (see [`SLOT_MARGIN`]), or
    /// the reason the rate or burst cannot make one.
    fn limiter_quota(&self) -> Result<(Quota, NonZeroU32)> {
        let rate = self.requests_per_second;
        if !rate.is_finite() || rate <= 0.0 {
            return Err(Error::config(
                "requests_per_second",
                format!("must be a positive number, got {rate}"),
            ));
        }
        let out_of_range = || {
            Error::config(
                "requests_per_second",
                format!("{rate} is outside the supported range"),
            )
        };
        let period = Duration::try_from_secs_f64((1.0 + SLOT_MARGIN) / rate)
            .ok()
            .filter(|period| !period.is_zero())
            .ok_or_else(out_of_range)?;
        if self.burst == 0 {
            return Err(Error::config("burst", "must be at least 1"));
        }
        // A request is `cells` cells of about CELL each; the quota holds `burst` requests'
        // worth of cells and the lateness allowance on top.
        let cells = (period.as_secs_f64() / CELL.as_secs_f64())
            .round()
            .clamp(1.0, 1e6) as u32;
        let cell = period / cells;
        let allowance = (LATE_WAKE_ALLOWANCE.as_secs_f64() / cell.as_secs_f64()).floor() as u64;
        let capacity = u64::from(cells) * u64::from(self.burst) + allowance;
        let capacity = u32::try_from(capacity)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                Error::config(
                    "burst",
                    format!("{} is too large for {rate} requests a second", self.burst),
                )
            })?;
        let quota = Quota::with_period(cell).ok_or_else(out_of_range)?;
        let cells = NonZeroU32::new(cells).ok_or_else(out_of_range)?;
        Ok((quota.allow_burst(capacity), cells))
    }
}

/// How much wider than `1 / requests_per_second` the limiter spaces requests.
///
/// A request waiting for its slot wakes a little after it (the timer's resolution, the
/// scheduler). With a plain limiter of burst 1 the next slot is then timed from that late
/// wake, so the lateness adds up: 97.9 requests a second at 100 under tokio (BENCHMARKS.md,
/// ninth sitting). So a request may go out up to [`LATE_WAKE_ALLOWANCE`] late without
/// moving the slots after it, which it does by taking its slot that much early at most;
/// and the slots are spaced by this margin more, so any `r × W + 1` requests in a row
/// still span `W × (1 + SLOT_MARGIN) − LATE_WAKE_ALLOWANCE`, more than a window `W` of
/// 0.2 s or longer: a vendor counting a sliding window never sees `r × W + 1` in it. Over
/// a second that leaves 8 ms for the requests' trip to the vendor to vary in; half a
/// percent and 3 ms (2 ms left) met a 429 in four benchmark runs of five (BENCHMARKS.md,
/// tenth sitting). Sustained, the limiter admits `rate / 1.01` (99.0 a second at 100).
pub const SLOT_MARGIN: f64 = 0.01;

/// How late a request may go out for its slot without the later slots moving back: well
/// under [`SLOT_MARGIN`] of a second, so a one-second window stays whole.
pub const LATE_WAKE_ALLOWANCE: Duration = Duration::from_millis(2);

/// The unit of the limiter's quota: a request takes as many cells as its period holds,
/// so the lateness allowance can be a fraction of a request. (governor's tolerance is a
/// whole number of cells.)
const CELL: Duration = Duration::from_micros(250);

/// One page of a JSON list (see [`HttpClient::list`]): the response, its body untouched,
/// and what a scan of the body found.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The response (status, headers, the whole body, the vendor's `Date`).
    pub response: Response,
    /// Record count, first and last ids, and the envelope's scalars.
    pub envelope: crate::pagination::Envelope,
}

/// The key under which every source of one vendor account shares a limiter
/// ([`HttpClient::shared`]): `vendor:` and a short, non-reversible digest (FNV-1a) of
/// `credential`, never the credential itself.
pub fn account_key(vendor: &str, credential: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in credential.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{vendor}:{:012x}", hash >> 16)
}

/// A successful (2xx) response, with its body read in full.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body, decompressed.
    pub body: Bytes,
    /// The URL as scheme, host and path only; see [`redact_url`]. (Redirects are never
    /// followed, so it is the URL asked.)
    pub url: String,
    /// The vendor's clock, from the `Date` header: the safe "fetched at" for incremental
    /// cursors, since it does not depend on the local clock.
    pub date: Option<DateTime<Utc>>,
}

impl Response {
    /// The value of a header, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body parsed as JSON; a body that does not parse is an [`Error::Decode`] naming
    /// the URL.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|err| Error::decode(format!("response from {}", self.url), err))
    }
}

/// The limiter and quota pause of one vendor account, shared by all its clients.
struct Account {
    limiter: DefaultDirectRateLimiter,
    /// The limiter's cells one request takes.
    cells: NonZeroU32,
    /// Set by a low remaining quota or a 429; every request of the account waits for it.
    paused_until: Mutex<Option<Instant>>,
    /// The rate and burst the limiter was built with, to flag a second, different config.
    requests_per_second: f64,
    burst: u32,
    /// The account whose limit this one's requests also count against (a vendor's
    /// stricter per-endpoint limit inside its account-wide one), see
    /// [`HttpClient::shared_within`].
    parent: Option<Arc<Account>>,
    /// 429 answers seen by any client of the account (see [`HttpClient::throttled`]).
    throttled: std::sync::atomic::AtomicU64,
    /// Those of them that named a rate limit (see [`HttpClient::rate_throttled`]).
    rate_throttled: std::sync::atomic::AtomicU64,
    /// Requests retried, for any reason, by any client of the account and the accounts
    /// nested in it; counted on the root (see [`HttpClient::retried`]).
    retried: std::sync::atomic::AtomicU64,
    /// The vendor's answer time, smoothed, in microseconds (0: none yet); see
    /// [`HttpClient::answer_time`].
    answer_micros: std::sync::atomic::AtomicU64,
    /// Concurrent readers sharing the account (see [`HttpClient::join_readers`]).
    readers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Account {
    fn new(config: &HttpConfig) -> Result<Self> {
        let (quota, cells) = config.limiter_quota()?;
        Ok(Account {
            limiter: DefaultDirectRateLimiter::direct(quota),
            cells,
            paused_until: Mutex::new(None),
            requests_per_second: config.requests_per_second,
            burst: config.burst,
            parent: None,
            throttled: std::sync::atomic::AtomicU64::new(0),
            rate_throttled: std::sync::atomic::AtomicU64::new(0),
            retried: std::sync::atomic::AtomicU64::new(0),
            answer_micros: std::sync::atomic::AtomicU64::new(0),
            readers: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Folds one answer time into the smoothed one (a fifth of each new sample).
    fn observe_answer(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX / 8)) as u64;
        let old = self
            .answer_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            ((old * 4 + sample) / 5).max(1)
        };
        // Racing updates lose a sample at worst.
        self.answer_micros
            .store(new, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits out any pause, then for the limiter, of the parent account (if any) and then
    /// of this one, so a request of a nested account counts against both. The nested,
    /// stricter limit is waited for last, right before the request goes out: its pacing is
    /// then what the vendor sees, however long the shared parent made the request wait.
    async fn ready(&self) {
        loop {
            if let Some(parent) = &self.parent {
                Box::pin(parent.ready()).await;
            }
            self.ready_own().await;
            // A pause of an outer account set while this one's limiter held the request (a
            // 429 naming the account's limit) holds it too.
            if !self
                .parent
                .as_ref()
                .is_some_and(|parent| parent.paused_now())
            {
                break;
            }
        }
    }

    /// Whether this account or one it counts against is paused now.
    fn paused_now(&self) -> bool {
        let own = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| until > Instant::now());
        own || self
            .parent
            .as_ref()
            .is_some_and(|parent| parent.paused_now())
    }

    /// Waits out this account's pause, then for its limiter.
    async fn ready_own(&self) {
        // A loop, because another stream of the account may extend the pause while we sleep.
        loop {
            let until = *self
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        // The quota always holds a request's cells (`limiter_quota`), so this cannot fail.
        if self.limiter.until_n_ready(self.cells).await.is_err() {
            self.limiter.until_ready().await;
        }
    }

    /// The outermost account whose limit this one's requests count against.
    fn root(&self) -> &Account {
        match &self.parent {
            Some(parent) => parent.root(),
            None => self,
        }
    }

    /// Holds every request of the account until `until` (never shortens a pause).
    fn pause_until(&self, until: Instant) {
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

/// A concurrent reader's place among the account's readers ([`HttpClient::join_readers`]);
/// it leaves when dropped.
#[derive(Debug)]
pub struct ReaderSlot {
    readers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.readers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The process-wide accounts of [`HttpClient::shared`]. Entries are never removed: an
/// account's limiter must outlive any one sync so back-to-back runs in one process do not
/// each start with a fresh allowance, and there are only as many entries as configured
/// accounts.
fn accounts() -> &'static Mutex<HashMap<String, Arc<Account>>> {
    static ACCOUNTS: OnceLock<Mutex<HashMap<String, Arc<Account>>>> = OnceLock::new();
    ACCOUNTS.get_or_init(|| Mutex::new(HashMap::new()))
}

struct Inner {
    config: HttpConfig,
    client: reqwest::Client,
    account: Arc<Account>,
}

/// A rate-limited, retrying HTTP client for one vendor account. Cloning is cheap and clones
/// share the limiter.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the account key: callers derive it from the credentials.
        f.debug_struct("HttpClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why one attempt did not succeed, when it may be retried.
enum Failure {
    /// A retryable status (429, 500, 502, 503, 504).
    Status {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
        /// For a 429, the limit it says was exceeded ([`HttpConfig::throttle_scope`]).
        scope: Option<Throttle>,
    },
    /// No complete answer: connect error, timeout, reset, truncated or malformed body.
    Transport(String),
}

impl HttpClient {
    /// GETs one page of a JSON list whose records sit in the top-level array
    /// `records_key`, each identified by `id_field`, built by `build` (called once per
    /// attempt). A body that is not one complete JSON object (cut short, garbled) is
    /// retried like a transport failure; the page comes back with what
    /// [`scan_envelope`](crate::pagination::scan_envelope) found in it (and without its
    /// insignificant whitespace, the same JSON: see
    /// [`scan_and_compact`](crate::pagination::scan_and_compact)), so the caller reads
    /// its cursor and flags without parsing the records (and checks the documented shape
    /// with [`Envelope::require_records_array`](crate::pagination::Envelope::require_records_array)
    /// and friends). With a `mark_field`, the envelope also holds that field of the first
    /// and last record.
    pub async fn list<F>(
        &self,
        what: &str,
        records_key: &str,
        id_field: &str,
        mark_field: Option<&str>,
        build: F,
    ) -> Result<Listing>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        // The check already scans the body; keep what it found instead of scanning twice,
        // and the body without its indentation (see `scan_and_compact`).
        type Scanned = (crate::pagination::Envelope, Option<Vec<u8>>);
        let scanned: Mutex<Option<Scanned>> = Mutex::new(None);
        let mut response = self
            .send_checked(what, build, |r: &Response| {
                let found = crate::pagination::scan_and_compact(
                    &r.body,
                    records_key,
                    id_field,
                    mark_field,
                )?;
                *scanned.lock().unwrap_or_else(PoisonError::into_inner) = Some(found);
                Ok(())
            })
            .await?;
        let (envelope, compact) = scanned
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| Error::decode(format!("{what} response"), "the body was not scanned"))?;
        if let Some(compact) = compact {
            response.body = Bytes::from(compact);
        }
        Ok(Listing { response, envelope })
    }

    /// A client with its own limiter, not shared with any other client (clones excepted).
    pub fn new(config: HttpConfig) -> Result<Self> {
        let account = Arc::new(Account::new(&config)?);
        Self::with_account(config, account)
    }

    /// A client that shares one limiter and quota pause with every other client built with
    /// the same `account_key` in this process, so all streams of one vendor account stay
    /// within the account's rate together. The first config for a key sets the rate and
    /// burst; later ones keep their own timeouts and retries.
    ///
    /// The key is only compared, never logged: derive it from the credentials (e.g.
    /// `"stripe:" + a hash of the API key`), never pass the credential itself.
    pub fn shared(account_key: &str, config: HttpConfig) -> Result<Self> {
        // Validate before touching the registry, so a bad config does not poison the key.
        config.limiter_quota()?;
        let account = {
            let mut accounts = accounts().lock().unwrap_or_else(PoisonError::into_inner);
            match accounts.get(account_key) {
                Some(account) => Arc::clone(account),
                None => {
                    let account = Arc::new(Account::new(&config)?);
                    accounts.insert(account_key.to_owned(), Arc::clone(&account));
                    account
                }
            }
        };
        if account.requests_per_second != config.requests_per_second
            || account.burst != config.burst
        {
            tracing::warn!(
                vendor = %config.vendor,
                requests_per_second = account.requests_per_second,
                burst = account.burst,
                "Account already has a limiter with another rate; keeping the first."
            );
        }
        Self::with_account(config, account)
    }

    /// A client for a stricter limit inside `parent`'s account (e.g. Zendesk's 10 export
    /// requests a minute within the account's 200): its requests wait for its own limiter,
    /// shared under `account_key` like [`HttpClient::shared`], and then for `parent`'s, so
    /// they count against both. A 429 or a low remaining quota seen by this client pauses
    /// only its own limit. The first config for a key sets the rate and the parent.
    pub fn shared_within(
        parent: &HttpClient,
        account_key: &str,
        config: HttpConfig,
    ) -> Result<Self> {
        config.limiter_quota()?;
        let account = {
            let mut accounts = accounts().lock().unwrap_or_else(PoisonError::into_inner);
            match accounts.get(account_key) {
                Some(account) => Arc::clone(account),
                None => {
                    let mut account = Account::new(&config)?;
                    account.parent = Some(Arc::clone(&parent.inner.account));
                    let account = Arc::new(account);
                    accounts.insert(account_key.to_owned(), Arc::clone(&account));
                    account
                }
            }
        };
        Self::with_account(config, account)
    }

    fn with_account(config: HttpConfig, account: Arc<Account>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            // Follow no redirect: reqwest would re-send the Authorization header to a
            // same-host redirect and re-POST a token request's form (client secret, refresh
            // token) on a 307/308 to wherever it points, and a redirected list call would
            // read another server's answer as the vendor's. A 3xx is an error naming where
            // it pointed (see `classify`).
            .redirect(reqwest::redirect::Policy::none())
            .gzip(true)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|err| {
                Error::config(
                    "http",
                    format!("could not build the HTTP client: {}", describe(err)),
                )
            })?;
        Ok(HttpClient {
            inner: Arc::new(Inner {
                config,
                client,
                account,
            }),
        })
    }

    /// How many 429 answers the clients of this account have had so far that say the
    /// account is over a limit (all but those [`HttpConfig::throttle_scope`] reads as
    /// [`Throttle::Request`]): a caller that keeps several requests in flight (a
    /// concurrent backfill) watches it to back off, since the retries that follow a 429
    /// are otherwise invisible to it.
    pub fn throttled(&self) -> u64 {
        self.inner
            .account
            .throttled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Of [`HttpClient::throttled`], the 429s that named a rate limit, the account's or
    /// this client's own ([`Throttle::Account`], [`Throttle::Own`]), or that named no
    /// limit but said how long to wait (`Retry-After`): requests over a number a second,
    /// which the account's limiter paces, not over a number at once, which the requests in
    /// flight make. Counted after [`HttpClient::throttled`] (both `SeqCst`): read before
    /// it, it never counts a 429 that the later `throttled` read does not.
    pub fn rate_throttled(&self) -> u64 {
        self.inner
            .account
            .rate_throttled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times requests of the whole account (this client's, and those of every
    /// client nested in the same account) were retried so far, whatever failed (a 429, a
    /// 5xx, a transport error, a malformed body): a reader that judges the vendor's answer
    /// time by how long its requests go unanswered cannot once a retry's backoff, or a
    /// pause of the account it brought, may be part of that time.
    pub fn retried(&self) -> u64 {
        self.inner
            .account
            .root()
            .retried
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a retry as [`HttpClient::send`] does, for a test that fakes the vendor.
    #[cfg(test)]
    pub(crate) fn note_retried(&self) {
        self.inner
            .account
            .root()
            .retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a 429 as [`HttpClient::send`] does, for a test that fakes the vendor.
    #[cfg(test)]
    pub(crate) fn note_throttled(&self) {
        self.inner
            .account
            .throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a 429 naming a rate limit as [`HttpClient::send`] does, for a test.
    #[cfg(test)]
    pub(crate) fn note_rate_throttled(&self) {
        self.note_throttled();
        self.inner
            .account
            .rate_throttled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How long the vendor takes to answer, smoothed over the account's recent successful
    /// requests: from sending to the whole body, without the wait at the account's
    /// limiter or pause (which a caller keeping requests in flight would otherwise count
    /// as latency and answer with even more requests in flight). `None` before the first.
    pub fn answer_time(&self) -> Option<Duration> {
        match self
            .inner
            .account
            .answer_micros
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Counts a reader that keeps several requests in flight (a concurrent backfill) as
    /// sharing the account until the returned slot is dropped; see
    /// [`HttpClient::readers`].
    pub fn join_readers(&self) -> ReaderSlot {
        let readers = Arc::clone(&self.inner.account.readers);
        readers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ReaderSlot { readers }
    }

    /// How many concurrent readers share the account now (at least one): each takes its
    /// share of the requests in flight the account's rate needs, so two streams of one
    /// account backfilling at once split it instead of each asking for all of it.
    pub fn readers(&self) -> usize {
        self.inner
            .account
            .readers
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1)
    }

    /// The config this client was built with.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// Sends a request built by `build`, retrying as configured, and returns the first 2xx
    /// response with its whole body. `what` names the request in logs (e.g. `list charges`).
    ///
    /// `build` is called once per attempt, so it must build the same request every time.
    /// 401/403 fail at once with [`Error::Auth`], other 4xx with [`Error::Http`]; 429, 500,
    /// 502, 503, 504 and transport failures are retried, and when retries run out they fail
    /// with [`Error::RateLimited`], [`Error::Http`] and [`Error::Transport`].
    pub async fn send<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        self.send_checked(what, build, |_| Ok(())).await
    }

    /// Like [`HttpClient::send`], and `check` validates each 2xx response (e.g. that the JSON
    /// is complete). A failed check is retried like a truncated body: vendors do send cut
    /// or garbled bodies with a 200.
    pub async fn send_checked<F, C>(&self, what: &str, build: F, check: C) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        C: Fn(&Response) -> Result<(), String>,
    {
        self.send_inner(what, build, check, false).await
    }

    /// GETs a file that needs no credentials (e.g. an export's pre-signed link), following
    /// up to [`MAX_FILE_REDIRECTS`] redirects to other http(s) URLs: a file store may
    /// answer a link with where the file lives (S3 answers `307 TemporaryRedirect` for a
    /// bucket in another region,
    /// <https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html>). Each
    /// request is paced, retried and checked as [`HttpClient::send_checked`]'s are, with
    /// `timeout` each. Only for requests that carry nothing secret beyond the URL the
    /// vendor gave: this request adds no header, and a redirect may point anywhere.
    pub async fn get_file<C>(
        &self,
        what: &str,
        url: reqwest::Url,
        timeout: Duration,
        check: C,
    ) -> Result<Response>
    where
        C: Fn(&Response) -> Result<(), String>,
    {
        let mut url = url;
        let mut status = 0;
        for _ in 0..=MAX_FILE_REDIRECTS {
            let at = url.clone();
            let response = self
                .send_inner(what, |c| c.get(at.clone()).timeout(timeout), &check, true)
                .await?;
            if !(300..400).contains(&response.status) {
                return Ok(response);
            }
            status = response.status;
            let redirect_error = |message: String| Error::Http {
                method: "GET".to_owned(),
                url: redact_url(&at),
                status: response.status,
                message,
            };
            let location = response
                .headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let next = redirect_target(&at, location).map_err(redirect_error)?;
            tracing::debug!(what, from = %redact_url(&at), to = %redact_url(&next), "Following a file's redirect.");
            url = next;
        }
        Err(Error::Http {
            method: "GET".to_owned(),
            url: redact_url(&url),
            status,
            message: format!(
                "the file was redirected more than {MAX_FILE_REDIRECTS} times; giving up"
            ),
        })
    }

    async fn send_inner<F, C>(
        &self,
        what: &str,
        build: F,
        check: C,
        redirects: bool,
    ) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        C: Fn(&Response) -> Result<(), String>,
    {
        let config = &self.inner.config;
        let mut retries = 0u32;
        // 429s that said how long to wait are the vendor pacing the account: with several
        // requests in flight sharing its budget, one request can lose the race a few times
        // in a row. They get four times `max_retries`, and `max_retry_after` of waiting in
        // total, before the request fails.
        let mut throttled_for = Duration::ZERO;
        let mut paced_retries = 0u32;
        loop {
            let (client, request) = build(&self.inner.client).build_split();
            let request = request.map_err(|err| Error::Transport {
                method: String::new(),
                url: err.url().map(redact_url).unwrap_or_default(),
                attempts: retries,
                message: describe(err),
            })?;
            let method = request.method().to_string();
            let mut url = redact_url(request.url());

            let waiting = Instant::now();
            self.inner.account.ready().await;
            crate::stats::limiter_wait(&config.vendor, waiting.elapsed());
            let started = Instant::now();
            let executed = client.execute(request).await;
            crate::stats::request(
                &config.vendor,
                executed.as_ref().ok().map(|r| r.status().as_u16()),
            );
            let failure = match executed {
                Err(err) if err.is_builder() || err.is_redirect() => {
                    // Retrying cannot help a request that cannot be built or that loops.
                    return Err(Error::Transport {
                        method,
                        url,
                        attempts: retries + 1,
                        message: describe(err),
                    });
                }
                Err(err) => Failure::Transport(describe(err)),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    url = redact_url(response.url());
                    match read_body(response, config.max_body_bytes).await {
                        Err(BodyError::Transport(err)) => Failure::Transport(describe(err)),
                        Err(BodyError::TooLarge) => {
                            return Err(Error::Protocol {
                                vendor: config.vendor.clone(),
                                stream: what.to_owned(),
                                message: format!(
                                    "{method} {url} answered with a body larger than {} MiB \
                                     (after decompression); refusing to read it. Raise \
                                     `[sync] max_response_mb` if the vendor really sends pages \
                                     this large",
                                    config.max_body_bytes.div_ceil(1024 * 1024)
                                ),
                            });
                        }
                        Ok(body) => {
                            let date = header_date(&headers);
                            self.observe_quota(&headers, date);
                            if (200..300).contains(&status) {
                                self.inner.account.observe_answer(started.elapsed());
                            }
                            tracing::debug!(
                                vendor = %config.vendor,
                                what,
                                status,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "Request answered."
                            );
                            let response = Response {
                                status,
                                headers,
                                body,
                                url: url.clone(),
                                date,
                            };
                            if redirects && (300..400).contains(&status) {
                                return Ok(response);
                            }
                            match self.classify(&method, response, &check)? {
                                Ok(response) => return Ok(response),
                                Err(failure) => failure,
                            }
                        }
                    }
                }
            };

            // A 429 that says how long to wait, or which of the client's limits it hit, is
            // the vendor pacing the account.
            let paced = matches!(
                failure,
                Failure::Status {
                    status: 429,
                    retry_after: Some(_),
                    ..
                } | Failure::Status {
                    status: 429,
                    scope: Some(Throttle::Account | Throttle::Own | Throttle::Concurrency),
                    ..
                }
            );
            let exhausted = if paced {
                throttled_for >= config.max_retry_after
                    || paced_retries >= config.max_retries.saturating_mul(4)
            } else {
                retries >= config.max_retries
            };
            if exhausted {
                return Err(match failure {
                    Failure::Status {
                        status: 429,
                        retry_after,
                        ..
                    } => Error::RateLimited {
                        url,
                        retry_after: retry_after.unwrap_or_else(|| {
                            self.backoff_cap(if paced { paced_retries } else { retries })
                        }),
                    },
                    Failure::Status {
                        status, message, ..
                    } => Error::Http {
                        method,
                        url,
                        status,
                        message,
                    },
                    Failure::Transport(message) => Error::Transport {
                        method,
                        url,
                        attempts: retries + 1,
                        message,
                    },
                });
            }

            let (status, retry_after, scope, error) = match &failure {
                Failure::Status {
                    status,
                    retry_after,
                    scope,
                    ..
                } => (Some(*status), *retry_after, *scope, None),
                Failure::Transport(message) => (None, None, None, Some(message.as_str())),
            };
            // A 429 that holds only its own request (a lock timeout) says nothing of how
            // busy the account is.
            if status == Some(429) && scope != Some(Throttle::Request) {
                self.inner
                    .account
                    .throttled
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if matches!(scope, Some(Throttle::Account | Throttle::Own))
                    || (scope.is_none() && retry_after.is_some())
                {
                    self.inner
                        .account
                        .rate_throttled
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let delay = retry_after
                .unwrap_or_else(|| self.backoff(if paced { paced_retries } else { retries }));
            if status == Some(429) {
                let until = Instant::now() + delay;
                match scope {
                    // Every stream of the account is over the limit, not just this one.
                    Some(Throttle::Account) => self.inner.account.root().pause_until(until),
                    Some(Throttle::Own) => self.inner.account.pause_until(until),
                    Some(Throttle::Concurrency | Throttle::Request) => {}
                    None if retry_after.is_some() => self.inner.account.pause_until(until),
                    None => {}
                }
            }
            crate::stats::retry(&config.vendor);
            self.inner
                .account
                .root()
                .retried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                vendor = %config.vendor,
                what,
                method = %method,
                url = %url,
                status,
                error,
                attempt = retries + 1,
                delay_ms = delay.as_millis() as u64,
                "Retrying request."
            );
            tokio::time::sleep(delay).await;
            if paced {
                throttled_for += delay;
                paced_retries += 1;
            } else {
                retries += 1;
            }
        }
    }

    /// Sorts a response with its body: `Ok(Ok)` is done, `Ok(Err)` is retryable, `Err` is
    /// final.
    fn classify<C>(
        &self,
        method: &str,
        response: Response,
        check: &C,
    ) -> Result<Result<Response, Failure>>
    where
        C: Fn(&Response) -> Result<(), String>,
    {
        let config = &self.inner.config;
        let status = response.status;
        match status {
            200..=299 => Ok(match check(&response) {
                Ok(()) => Ok(response),
                Err(message) => Err(Failure::Transport(format!("malformed body: {message}"))),
            }),
            300..=399 => Err(Error::Http {
                method: method.to_owned(),
                url: response.url,
                status,
                message: redirect_message(&response.headers),
            }),
            401 | 403 => Err(Error::Auth {
                vendor: config.vendor.clone(),
                status,
                message: vendor_message(&response.body),
            }),
            429 => {
                let retry_after = retry_after(&response.headers, response.date);
                if let Some(wait) = retry_after
                    && wait > config.max_retry_after
                {
                    return Err(Error::RateLimited {
                        url: response.url,
                        retry_after: wait,
                    });
                }
                Ok(Err(Failure::Status {
                    status,
                    retry_after,
                    message: vendor_message(&response.body),
                    scope: config.throttle_scope.map(|scope| scope(&response.headers)),
                }))
            }
            500 | 502 | 503 | 504 => Ok(Err(Failure::Status {
                status,
                // A 503 may say when to come back; a too-long wait falls back to backoff,
                // since the outage may end sooner.
                retry_after: retry_after(&response.headers, response.date)
                    .filter(|wait| *wait <= config.max_retry_after),
                message: vendor_message(&response.body),
                scope: None,
            })),
            _ if config.retry_statuses.contains(&status) => Ok(Err(Failure::Status {
                status,
                retry_after: retry_after(&response.headers, response.date)
                    .filter(|wait| *wait <= config.max_retry_after),
                message: vendor_message(&response.body),
                scope: None,
            })),
            _ => Err(Error::Http {
                method: method.to_owned(),
                url: response.url,
                status,
                message: vendor_message(&response.body),
            }),
        }
    }

    /// Pauses the account when the vendor says its quota is (nearly) used up.
    fn observe_quota(&self, headers: &HeaderMap, date: Option<DateTime<Utc>>) {
        let config = &self.inner.config;
        let Some(quota) = &config.quota else {
            return;
        };
        // Both kinds are read: a client may be held by its own limit (a structured header)
        // and by the account-wide one (plain headers) at once, e.g. Zendesk's exports.
        let structured =
            first_structured(headers, &quota.structured).map(|q| (q.remaining, q.resets));
        let plain = first_number(headers, &quota.remaining)
            .map(|remaining| (remaining, first_number(headers, &quota.reset)));
        let Some(wait) = [structured, plain]
            .into_iter()
            .flatten()
            .filter(|(remaining, _)| *remaining <= quota.low_water as f64)
            .map(|(_, reset)| {
                reset
                    .map(|reset| reset_delay(reset, date))
                    .unwrap_or(Duration::from_secs(1))
            })
            .max()
        else {
            return;
        };
        let wait = wait.min(config.max_retry_after);
        let remaining = structured.or(plain).map_or(0.0, |(r, _)| r);
        tracing::debug!(
            vendor = %config.vendor,
            remaining,
            wait_ms = wait.as_millis() as u64,
            "Quota nearly used up; pausing the account."
        );
        self.inner.account.pause_until(Instant::now() + wait);
    }

    /// The largest backoff before retry number `retries + 1`: `base × 2^retries`, capped.
    fn backoff_cap(&self, retries: u32) -> Duration {
        let config = &self.inner.config;
        config
            .base_backoff
            .saturating_mul(2u32.saturating_pow(retries))
            .min(config.max_backoff)
    }

    /// The backoff with full jitter: uniform in `[0, cap)`, so clients that failed together
    /// do not retry together.
    fn backoff(&self, retries: u32) -> Duration {
        let cap = self.backoff_cap(retries);
        Duration::try_from_secs_f64(cap.as_secs_f64() * rand::random::<f64>()).unwrap_or(cap)
    }
}

/// Why a body could not be read.
enum BodyError {
    /// The connection failed mid-body (retryable).
    Transport(reqwest::Error),
    /// The body, decompressed, passed the cap (not retryable: the same answer would come).
    TooLarge,
}

/// Reads a whole body (decompressed, as reqwest streams it), stopping as soon as it passes
/// `cap` bytes so a hostile or broken answer cannot exhaust memory.
async fn read_body(mut response: reqwest::Response, cap: u64) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|len| len > cap) && !is_compressed(&response) {
        return Err(BodyError::TooLarge);
    }
    // Sized from the announced length: a list page is hundreds of KB, and growing by
    // doubling copies it over and over and can hold twice its size. Not more than
    // `PRESIZE_MAX` up front, whatever a (maybe lying) header says; past it, it grows.
    const PRESIZE_MAX: u64 = 16 << 20;
    let announced = response
        .content_length()
        .filter(|_| !is_compressed(&response));
    let presize = announced.map_or(0, |len| len.min(cap).min(PRESIZE_MAX));
    let mut body = bytes::BytesMut::with_capacity(presize as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Whether the body arrives compressed, so its `Content-Length` is not its read size.
fn is_compressed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The most redirects [`HttpClient::get_file`] follows for one file.
pub const MAX_FILE_REDIRECTS: usize = 5;

/// Where a redirect from `at` with `location` leads, if [`HttpClient::get_file`] may
/// follow it: an http(s) URL, and not from https down to plain http.
fn redirect_target(at: &reqwest::Url, location: Option<&str>) -> Result<reqwest::Url, String> {
    let location = location.ok_or("a redirect without a readable Location header")?;
    let next = at
        .join(location)
        .map_err(|e| format!("a redirect to a bad URL: {e}"))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(format!(
            "a redirect to a {} URL; only http(s) is followed",
            next.scheme()
        ));
    }
    if at.scheme() == "https" && next.scheme() == "http" {
        // The link and the file would then cross the network unencrypted.
        return Err("a redirect from https to plain http; not followed".to_owned());
    }
    Ok(next)
}

/// The error text of a redirect: where it pointed (host only: a Location may carry a
/// token in its query) and why it is not followed.
fn redirect_message(headers: &HeaderMap) -> String {
    let target = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|location| match reqwest::Url::parse(location) {
            Ok(url) => format!(
                "{}://{}",
                url.scheme(),
                url.host_str().unwrap_or("(no host)")
            ),
            // A relative Location stays on the same host.
            Err(_) => "the same host".to_owned(),
        })
        .unwrap_or_else(|| "nowhere (no Location header)".to_owned());
    format!(
        "the vendor redirected the request to {target}; Tributary follows no redirects, since \
         they could carry credentials to another server. If the vendor moved, set the \
         source's base URL to where it lives now"
    )
}

/// A URL as scheme, host, port and path: no user info, query or fragment, since vendors
/// put tokens there. Use it for anything that ends up in an error or a log.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(url.path());
    out
}

/// The vendor's own message from an error body: JSON `error.message` (Stripe), `error` as a
/// string (with `description`/`error_description` when present: Zendesk, OAuth),
/// `error.title`/`error.description` (Zendesk), `[0].message` (Salesforce, with its
/// `errorCode`), or a top-level `message`; otherwise the first 300 characters of the body.
///
/// The message is [`scrub`](crate::secret::scrub)bed: vendors echo credentials back in
/// error bodies (an `Authorization` header, a posted form), and this text is logged and
/// stored.
pub fn vendor_message(body: &[u8]) -> String {
    crate::secret::scrub(&raw_vendor_message(body)).into_owned()
}

fn raw_vendor_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(message) = json_message(&json)
    {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(MESSAGE_PREFIX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn json_message(json: &serde_json::Value) -> Option<String> {
    let text = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match json.get("error") {
        Some(serde_json::Value::Object(error)) => {
            if let Some(message) = text(error.get("message")) {
                return Some(message);
            }
            match (text(error.get("title")), text(error.get("description"))) {
                (Some(title), Some(description)) => return Some(format!("{title}: {description}")),
                (Some(one), None) | (None, Some(one)) => return Some(one),
                (None, None) => {}
            }
        }
        Some(serde_json::Value::String(_)) => {
            if let Some(error) = text(json.get("error")) {
                let description =
                    text(json.get("description")).or_else(|| text(json.get("error_description")));
                return Some(match description {
                    Some(description) => format!("{error}: {description}"),
                    None => error,
                });
            }
        }
        _ => {}
    }
    if let Some(first) = json.get(0)
        && let Some(message) = text(first.get("message"))
    {
        return Some(match text(first.get("errorCode")) {
            Some(code) => format!("{message} ({code})"),
            None => message,
        });
    }
    text(json.get("message"))
}

/// Describes a reqwest error with its causes (hyper's "connection reset" is only in the
/// chain) and without its URL, which may hold a token.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.ends_with(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// The `Date` header, if present and valid.
fn header_date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let value = headers.get(DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// The wait a `Retry-After` header asks for, as seconds or as an HTTP-date. A date is
/// measured from the response's own `Date` when present, so a skewed local clock does not
/// shorten the wait.
fn retry_after(headers: &HeaderMap, date: Option<DateTime<Utc>>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).ok())
            .flatten();
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    let now = date.unwrap_or_else(Utc::now);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The first of `names` present as a number.
fn first_number(headers: &HeaderMap, names: &[String]) -> Option<f64> {
    names.iter().find_map(|name| {
        headers
            .get(name.to_ascii_lowercase().as_str())?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
    })
}

/// A quota reported in one header as `key=value` pairs: `total=100; remaining=99;
/// resets=41`, the format of Zendesk's per-endpoint limit headers ("'Total' signifies the
/// initial allocation, 'Remaining' indicates the remaining allowance for the current
/// interval, and 'Resets' denotes the wait time in seconds before the limit refreshes":
/// https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-user-export-cursor-based,
/// and `zendesk-ratelimit-tickets-index` in
/// https://developer.zendesk.com/api-reference/introduction/rate-limits/).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StructuredQuota {
    /// The allocation per interval (`total`), when given.
    pub total: Option<f64>,
    /// What is left of it (`remaining`).
    pub remaining: f64,
    /// Seconds until it refreshes (`resets`, or `reset`), when given.
    pub resets: Option<f64>,
}

impl StructuredQuota {
    /// Parses a header value. Pairs may be separated by `;` or `,`, keys are
    /// case-insensitive, unknown keys are ignored. `None` without a finite, non-negative
    /// `remaining`: a value we cannot read must not pause anything.
    pub fn parse(value: &str) -> Option<StructuredQuota> {
        let mut total = None;
        let mut remaining = None;
        let mut resets = None;
        for pair in value.split([';', ',']) {
            let Some((key, number)) = pair.split_once('=') else {
                continue;
            };
            let Some(number) = number
                .trim()
                .trim_matches('"')
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
            else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "total" => total = Some(number),
                "remaining" => remaining = Some(number),
                "resets" | "reset" => resets = Some(number),
                _ => {}
            }
        }
        Some(StructuredQuota {
            total,
            remaining: remaining?,
            resets,
        })
    }
}

/// The first of `names` present as a readable [`StructuredQuota`].
fn first_structured(headers: &HeaderMap, names: &[String]) -> Option<StructuredQuota> {
    names.iter().find_map(|name| {
        headers
            .get(name.to_ascii_lowercase().as_str())?
            .to_str()
            .ok()
            .and_then(StructuredQuota::parse)
    })
}

/// The wait until a quota reset given as seconds, or as a Unix timestamp when large.
fn reset_delay(reset: f64, date: Option<DateTime<Utc>>) -> Duration {
    let seconds = if reset > EPOCH_THRESHOLD_SECS {
        let now = date.unwrap_or_else(Utc::now).timestamp_millis() as f64 / 1000.0;
        reset - now
    } else {
        reset
    };
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderMap as AxumHeaders, HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Fast retries, a generous rate: tests measure behaviour, not the defaults.
    fn config() -> HttpConfig {
        HttpConfig {
            max_retries: 3,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            ..HttpConfig::new("Testvendor", 1000.0)
        }
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    /// A server that answers with `respond(n)` to its n-th request (from 0) and counts them.
    async fn counting<R>(respond: fn(u32) -> R) -> (String, Arc<AtomicU32>)
    where
        R: IntoResponse + Send + 'static,
    {
        let count = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&count);
        // Every path, so tests can send realistic URLs.
        let router = Router::new().fallback(get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { respond(n) }
        }));
        (serve(router).await, count)
    }

    #[tokio::test]
    async fn retries_503_then_succeeds() {
        let (url, count) = counting(|n| {
            if n < 2 {
                (StatusCode::SERVICE_UNAVAILABLE, "busy")
            } else {
                (StatusCode::OK, "done")
            }
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let response = client.send("test", |c| c.get(&url)).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"done");
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn honours_retry_after_seconds() {
        let (url, count) = counting(|n| {
            if n == 0 {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    "slow down",
                )
            } else {
                (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], "ok")
            }
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let started = Instant::now();
        let response = client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(response.status, 200);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn retry_after_http_date_is_measured_from_the_response_date() {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:03 GMT"),
        );
        headers.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let date = header_date(&headers);
        assert_eq!(retry_after(&headers, date), Some(Duration::from_secs(3)));
        // A date in the past means "now".
        headers.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 08:00:00 GMT"),
        );
        assert_eq!(
            retry_after(&headers, header_date(&headers)),
            Some(Duration::ZERO)
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("garbage"));
        assert_eq!(retry_after(&headers, None), None);
    }

    #[tokio::test]
    async fn paced_429s_get_four_times_the_retries_and_are_counted() {
        // Five 429s with `Retry-After: 0` then success: more than `max_retries` (3), as a
        // request sharing the account's budget with others may lose the race that often.
        let (url, count) = counting(|n| {
            if n < 5 {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "0")],
                    "wait",
                )
            } else {
                (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], "ok")
            }
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let response = client.send("test", |c| c.get(&url)).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(client.throttled(), 5);
        // A vendor that never stops pacing: 4 × 3 retries, then the request fails.
        let (url, count_forever) = counting(|_| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "0")],
                "wait",
            )
        })
        .await;
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
        assert_eq!(count_forever.load(Ordering::SeqCst), 13);
        assert_eq!(count.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn too_long_retry_after_fails_at_once() {
        let (url, count) = counting(|_| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "3600")],
                "",
            )
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        match err {
            Error::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(3600))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_retries() {
        let (url, count) = counting(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"message":"Down for maintenance"}}"#,
            )
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        match err {
            Error::Http {
                method,
                status,
                message,
                ..
            } => {
                assert_eq!(method, "GET");
                assert_eq!(status, 503);
                assert_eq!(message, "Down for maintenance");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 4);

        let (url, count) = counting(|_| (StatusCode::TOO_MANY_REQUESTS, "no")).await;
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connection_refused_is_a_transport_error_after_retries() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = HttpClient::new(config()).unwrap();
        let url = format!("http://{addr}/v1/things?api_key=sk_secret");
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        match &err {
            Error::Transport { attempts, url, .. } => {
                assert_eq!(*attempts, 4);
                assert_eq!(url, &format!("http://{addr}/v1/things"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.to_string().contains("sk_secret"), "{err}");
    }

    #[tokio::test]
    async fn unauthorized_is_an_auth_error_with_the_vendor_message() {
        let (url, count) = counting(|_| {
            (
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"Invalid API Key provided: sk_test_***"}}"#,
            )
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        match err {
            Error::Auth {
                vendor,
                status,
                message,
            } => {
                assert_eq!(vendor, "Testvendor");
                assert_eq!(status, 401);
                assert_eq!(message, "Invalid API Key provided: sk_test_***");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_request_is_an_http_error_without_the_query() {
        let (url, count) = counting(|_| {
            (
                StatusCode::BAD_REQUEST,
                r#"{"error":{"message":"No such parameter: limitt"}}"#,
            )
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let err = client
            .send("test", |c| c.get(format!("{url}/v1/charges?token=secret")))
            .await
            .unwrap_err();
        match &err {
            Error::Http {
                status,
                message,
                url: error_url,
                ..
            } => {
                assert_eq!(*status, 400);
                assert_eq!(message, "No such parameter: limitt");
                assert_eq!(error_url, &format!("{url}/v1/charges"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.to_string().contains("secret"));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// Reads one request's head, so the client sees its request accepted.
    async fn read_head(socket: &mut tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn truncated_body_is_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                read_head(&mut socket).await;
                let reply: &[u8] = if n == 0 {
                    // Promises 100 bytes, sends 7, hangs up.
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\""
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"data\":[]}"
                };
                socket.write_all(reply).await.unwrap();
                socket.shutdown().await.ok();
            }
        });
        let client = HttpClient::new(config()).unwrap();
        let url = format!("http://{addr}/");
        let response = client.send("test", |c| c.get(&url)).await.unwrap();
        assert_eq!(&response.body[..], b"{\"data\":[]}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_check_is_retried() {
        let (url, count) = counting(|n| {
            if n == 0 {
                "{\"data\": ["
            } else {
                "{\"data\": []}"
            }
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let response = client
            .send_checked(
                "test",
                |c| c.get(&url),
                |r| {
                    serde_json::from_slice::<serde_json::Value>(&r.body)
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )
            .await
            .unwrap();
        let json: serde_json::Value = response.json().unwrap();
        assert_eq!(json["data"], serde_json::json!([]));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn shared_clients_stay_within_the_account_rate() {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&arrivals);
        let router = Router::new().route(
            "/",
            get(move || {
                seen.lock().unwrap().push(std::time::Instant::now());
                async { "ok" }
            }),
        );
        let url = serve(router).await;
        let config = HttpConfig {
            requests_per_second: 20.0,
            burst: 1,
            ..config()
        };
        let key = "test:shared-limiter";
        let a = HttpClient::shared(key, config.clone()).unwrap();
        let b = HttpClient::shared(key, config).unwrap();
        assert!(Arc::ptr_eq(&a.inner.account, &b.inner.account));

        let started = Instant::now();
        let requests = (0..40).map(|i| {
            let client = if i % 2 == 0 { a.clone() } else { b.clone() };
            let url = url.clone();
            async move { client.send("test", |c| c.get(&url)).await }
        });
        for result in futures::future::join_all(requests).await {
            result.unwrap();
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");

        let mut arrivals = arrivals.lock().unwrap().clone();
        arrivals.sort();
        assert_eq!(arrivals.len(), 40);
        for (i, start) in arrivals.iter().enumerate() {
            let in_window = arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 21, "{in_window} requests within 1 s");
        }
    }

    #[tokio::test]
    async fn nested_clients_count_against_their_parent_too() {
        let (url, count) = counting(|_| "ok").await;
        let parent = HttpClient::shared(
            "test:nested-parent",
            HttpConfig {
                requests_per_second: 10.0,
                ..config()
            },
        )
        .unwrap();
        // The nested limit is generous: the parent's 10/s is what paces these requests.
        let nested = HttpClient::shared_within(&parent, "test:nested-child", config()).unwrap();
        assert!(Arc::ptr_eq(
            nested.inner.account.parent.as_ref().unwrap(),
            &parent.inner.account
        ));
        let started = Instant::now();
        for _ in 0..6 {
            nested.send("test", |c| c.get(&url)).await.unwrap();
        }
        for _ in 0..5 {
            parent.send("test", |c| c.get(&url)).await.unwrap();
        }
        // 11 requests at 10/s with a burst of 1: at least a second.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
        assert_eq!(count.load(Ordering::SeqCst), 11);

        // And the nested limit applies on its own: 3 requests at 5/s take 400 ms or more.
        let slow = HttpClient::shared_within(
            &parent,
            "test:nested-slow",
            HttpConfig {
                requests_per_second: 5.0,
                ..config()
            },
        )
        .unwrap();
        let started = Instant::now();
        for _ in 0..3 {
            slow.send("test", |c| c.get(&url)).await.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(380));
    }

    /// A 429 whose headers name the limit it hit pauses that limit, even without
    /// `Retry-After` (Stripe sends none): the account's holds every nested client, a
    /// nested one's holds only that client, and a limit of one request holds nothing (nor
    /// counts in [`HttpClient::throttled`]).
    #[tokio::test]
    async fn a_429_naming_its_limit_pauses_that_limit() {
        fn scope(headers: &HeaderMap) -> Throttle {
            match headers.get("x-limit").and_then(|v| v.to_str().ok()) {
                Some("account") => Throttle::Account,
                Some("own") => Throttle::Own,
                Some("at-once") => Throttle::Concurrency,
                _ => Throttle::Request,
            }
        }
        fn paused(account: &Account) -> bool {
            account
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        }
        async fn after_one_429(
            key: &str,
            url: &str,
            counted: u64,
            rate: u64,
        ) -> (HttpClient, HttpClient, HttpClient) {
            let config = || HttpConfig {
                throttle_scope: Some(scope),
                ..config()
            };
            let parent = HttpClient::shared(&format!("{key}:parent"), config()).unwrap();
            let a = HttpClient::shared_within(&parent, &format!("{key}:a"), config()).unwrap();
            let b = HttpClient::shared_within(&parent, &format!("{key}:b"), config()).unwrap();
            let response = a.send("test", |c| c.get(url)).await.unwrap();
            assert_eq!(response.status, 200, "retried after the 429");
            assert_eq!(a.throttled(), counted, "a reader backs off for it");
            assert_eq!(a.rate_throttled(), rate, "a limit on requests a second");
            assert_eq!(a.retried(), 1, "every retry counts");
            assert_eq!(b.retried(), 1, "for the whole account");
            (parent, a, b)
        }
        fn answer(n: u32, limit: &'static str) -> (StatusCode, [(&'static str, &'static str); 1]) {
            if n == 0 {
                (StatusCode::TOO_MANY_REQUESTS, [("x-limit", limit)])
            } else {
                (StatusCode::OK, [("x-limit", "-")])
            }
        }

        let (url, count) = counting(|n| answer(n, "account")).await;
        let (parent, a, b) = after_one_429("test:scope-account", &url, 1, 1).await;
        assert!(paused(&parent.inner.account), "the account pauses");
        assert!(!paused(&a.inner.account) && !paused(&b.inner.account));
        assert_eq!(count.load(Ordering::SeqCst), 2);

        let (url, _) = counting(|n| answer(n, "own")).await;
        let (parent, a, b) = after_one_429("test:scope-own", &url, 1, 1).await;
        assert!(paused(&a.inner.account), "the nested limit pauses");
        assert!(!paused(&parent.inner.account) && !paused(&b.inner.account));

        let (url, _) = counting(|n| answer(n, "at-once")).await;
        // A limit on requests at once: a reader keeps fewer in flight, nothing pauses.
        let (parent, a, b) = after_one_429("test:scope-at-once", &url, 1, 0).await;
        assert!(
            !paused(&parent.inner.account)
                && !paused(&a.inner.account)
                && !paused(&b.inner.account)
        );

        let (url, _) = counting(|n| answer(n, "lock")).await;
        // And a reader keeping several in flight does not take it for a busy account.
        let (parent, a, b) = after_one_429("test:scope-request", &url, 0, 0).await;
        assert!(
            !paused(&parent.inner.account)
                && !paused(&a.inner.account)
                && !paused(&b.inner.account),
            "only the request backs off"
        );
    }

    /// 429s naming the account's limit, on and on: four times `max_retries` retries, each
    /// after a backoff that pauses the account, then [`Error::RateLimited`] with the next
    /// backoff it would have waited (not a wait the vendor asked for: it named none).
    #[tokio::test]
    async fn endless_429s_naming_the_account_end_in_rate_limited() {
        let (url, count) = counting(|_| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("x-limit", "account")],
                "slow down",
            )
        })
        .await;
        let client = HttpClient::shared(
            "test:scope-endless",
            HttpConfig {
                throttle_scope: Some(|_| Throttle::Account),
                base_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                ..config()
            },
        )
        .unwrap();
        let err = client.send("test", |c| c.get(&url)).await.unwrap_err();
        match &err {
            Error::RateLimited { retry_after, .. } => {
                assert_eq!(*retry_after, Duration::from_millis(2), "{err}")
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("giving up"), "{err}");
        // max_retries is 3: 12 paced retries after the first attempt, each counted.
        assert_eq!(count.load(Ordering::SeqCst), 13);
        assert_eq!(client.throttled(), 12);
    }

    /// A request held by its nested limiter when the account is paused (a 429 naming the
    /// account's limit, seen by another request) waits out that pause too.
    #[tokio::test]
    async fn a_pause_of_the_account_holds_requests_already_at_a_nested_limiter() {
        let (url, _) = counting(|_| "ok").await;
        let parent = HttpClient::shared("test:pause-parent", config()).unwrap();
        let slow = HttpClient::shared_within(
            &parent,
            "test:pause-slow",
            HttpConfig {
                requests_per_second: 2.0,
                ..config()
            },
        )
        .unwrap();
        slow.send("test", |c| c.get(&url)).await.unwrap();
        let started = Instant::now();
        // The next request waits about 500 ms at the nested limiter; 100 ms in, the
        // account is paused for a second.
        let account = Arc::clone(&parent.inner.account);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            account.pause_until(Instant::now() + Duration::from_secs(1));
        });
        slow.send("test", |c| c.get(&url)).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_050), "{waited:?}");
    }

    /// Without a way to read its limit, a 429 with no `Retry-After` backs off alone.
    #[tokio::test]
    async fn a_429_without_retry_after_or_scope_pauses_nothing() {
        let (url, _) = counting(|n| {
            if n == 0 {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            }
        })
        .await;
        let client = HttpClient::shared("test:scope-none", config()).unwrap();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(client.inner.account.paused_until.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn low_quota_pauses_the_next_request() {
        let (url, _) = counting(|n| {
            let mut headers = AxumHeaders::new();
            if n == 0 {
                headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
                headers.insert("ratelimit-reset", HeaderValue::from_static("1"));
            } else {
                headers.insert("x-rate-limit-remaining", HeaderValue::from_static("99"));
            }
            (headers, "ok")
        })
        .await;
        let client = HttpClient::new(HttpConfig {
            quota: Some(QuotaHeaders {
                remaining: vec![
                    "X-Rate-Limit-Remaining".into(),
                    "ratelimit-remaining".into(),
                ],
                reset: vec!["ratelimit-reset".into()],
                low_water: 0,
                ..Default::default()
            }),
            ..config()
        })
        .unwrap();
        client.send("test", |c| c.get(&url)).await.unwrap();
        let started = Instant::now();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Plenty left: no pause.
        let started = Instant::now();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_spent_structured_quota_waits_for_its_reset_not_for_a_429() {
        // Zendesk's export header says nothing is left and the window refreshes in 1 s;
        // the separate headers (the account's quota, plenty left) must not override it.
        let (url, count) = counting(|n| {
            let mut headers = AxumHeaders::new();
            headers.insert("ratelimit-remaining", HeaderValue::from_static("399"));
            let quota = if n == 0 {
                "total=10; remaining=0; resets=1"
            } else {
                "total=10; remaining=8; resets=59"
            };
            headers.insert(
                "zendesk-ratelimit-incremental-exports-cursor",
                HeaderValue::from_static(quota),
            );
            (headers, "ok")
        })
        .await;
        let client = HttpClient::new(HttpConfig {
            quota: Some(QuotaHeaders {
                structured: vec!["Zendesk-RateLimit-incremental-exports-cursor".into()],
                remaining: vec!["ratelimit-remaining".into()],
                low_water: 0,
                ..Default::default()
            }),
            ..config()
        })
        .unwrap();
        client.send("test", |c| c.get(&url)).await.unwrap();
        let started = Instant::now();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        // Eight left: no pause.
        let started = Instant::now();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_spent_account_quota_pauses_a_client_with_its_own_quota_too() {
        // The export's own header has plenty left, but the account-wide quota is spent
        // (Zendesk's exports count against both): the next request waits for its reset.
        let (url, count) = counting(|n| {
            let mut headers = AxumHeaders::new();
            let (account, reset) = if n == 0 { ("0", "1") } else { ("300", "59") };
            headers.insert("ratelimit-remaining", HeaderValue::from_static(account));
            headers.insert("ratelimit-reset", HeaderValue::from_static(reset));
            headers.insert(
                "zendesk-ratelimit-incremental-exports-cursor",
                HeaderValue::from_static("total=10; remaining=9; resets=59"),
            );
            (headers, "ok")
        })
        .await;
        let client = HttpClient::new(HttpConfig {
            quota: Some(QuotaHeaders {
                structured: vec!["Zendesk-RateLimit-incremental-exports-cursor".into()],
                remaining: vec!["ratelimit-remaining".into()],
                reset: vec!["ratelimit-reset".into()],
                low_water: 0,
            }),
            ..config()
        })
        .unwrap();
        client.send("test", |c| c.get(&url)).await.unwrap();
        let started = Instant::now();
        client.send("test", |c| c.get(&url)).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn structured_quotas_parse_like_zendesk_writes_them() {
        // The examples of Zendesk's rate-limit reference and incremental exports reference.
        assert_eq!(
            StructuredQuota::parse("total=100; remaining=99; resets=41"),
            Some(StructuredQuota {
                total: Some(100.0),
                remaining: 99.0,
                resets: Some(41.0),
            })
        );
        assert_eq!(
            StructuredQuota::parse("total=10;remaining=0;resets=52"),
            Some(StructuredQuota {
                total: Some(10.0),
                remaining: 0.0,
                resets: Some(52.0),
            })
        );
        // Case, commas, spaces, unknown keys and a missing reset are fine.
        assert_eq!(
            StructuredQuota::parse(" Remaining = 3 , Reset=7, policy=x "),
            Some(StructuredQuota {
                total: None,
                remaining: 3.0,
                resets: Some(7.0),
            })
        );
        assert_eq!(
            StructuredQuota::parse("remaining=5").map(|q| q.resets),
            Some(None)
        );
        // Nothing usable: no remaining, garbage, negatives.
        for bad in [
            "",
            "total=10; resets=3",
            "remaining=lots",
            "remaining=-1",
            "remaining=NaN",
            "garbage",
        ] {
            assert_eq!(StructuredQuota::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn sends_the_user_agent_and_decodes_gzip() {
        let router = Router::new().route(
            "/",
            get(|headers: AxumHeaders| async move {
                let agent = headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let accepts_gzip = headers
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("gzip"));
                let body = format!("{{\"agent\":\"{agent}\",\"gzip\":{accepts_gzip}}}");
                (
                    [
                        (header::CONTENT_ENCODING, "gzip"),
                        (header::DATE, "Wed, 21 Oct 2015 07:28:00 GMT"),
                    ],
                    gzip_stored(body.as_bytes()),
                )
            }),
        );
        let url = serve(router).await;
        let client = HttpClient::new(config()).unwrap();
        let response = client.send("test", |c| c.get(&url)).await.unwrap();
        let json: serde_json::Value = response.json().unwrap();
        assert!(
            json["agent"].as_str().unwrap().starts_with("tributary/"),
            "{json}"
        );
        assert_eq!(json["gzip"], true);
        assert_eq!(
            response.date.map(|d| d.to_rfc3339()),
            Some("2015-10-21T07:28:00+00:00".to_owned())
        );
    }

    #[tokio::test]
    async fn follows_no_redirect_and_names_where_it_pointed() {
        // The server a hostile vendor points to: it must never be asked anything.
        let (elsewhere, reached) = counting(|_| (StatusCode::OK, "{\"data\":[]}")).await;
        let location = format!("{elsewhere}/v1/charges?token=leak");
        let router = Router::new()
            .route(
                "/list",
                get({
                    let location = location.clone();
                    move || async move { (StatusCode::FOUND, [(header::LOCATION, location)]) }
                }),
            )
            .route(
                "/token",
                axum::routing::post({
                    let location = location.clone();
                    move || async move {
                        (
                            StatusCode::TEMPORARY_REDIRECT,
                            [(header::LOCATION, location)],
                        )
                    }
                }),
            );
        let url = serve(router).await;
        let client = HttpClient::new(config()).unwrap();

        let err = client
            .send("list", |c| {
                c.get(format!("{url}/list")).bearer_auth("sk_test_x")
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Http { status: 302, .. }), "{text}");
        assert!(
            text.contains("redirected the request to http://127.0.0.1"),
            "{text}"
        );
        assert!(!text.contains("token=leak"), "{text}");

        let err = client
            .send("token", |c| {
                c.post(format!("{url}/token"))
                    .form(&[("client_secret", "shh"), ("refresh_token", "rt")])
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Http { status: 307, .. }), "{err}");
        assert_eq!(reached.load(Ordering::SeqCst), 0, "a redirect was followed");
    }

    #[test]
    fn a_file_redirect_stays_on_http_s_and_never_downgrades() {
        let at = reqwest::Url::parse("https://bucket.s3.amazonaws.com/f.gz?sig=1").unwrap();
        let to = |l: Option<&str>| redirect_target(&at, l).map(|u| u.to_string());
        assert_eq!(
            to(Some("https://bucket.s3.eu-west-1.amazonaws.com/f.gz?sig=2")).unwrap(),
            "https://bucket.s3.eu-west-1.amazonaws.com/f.gz?sig=2"
        );
        assert_eq!(
            to(Some("/g.gz")).unwrap(),
            "https://bucket.s3.amazonaws.com/g.gz"
        );
        assert!(
            to(Some("http://bucket.example/f.gz"))
                .unwrap_err()
                .contains("plain http")
        );
        assert!(
            to(Some("file:///etc/passwd"))
                .unwrap_err()
                .contains("only http(s)")
        );
        assert!(to(None).unwrap_err().contains("Location"));
        let plain = reqwest::Url::parse("http://127.0.0.1:1/f").unwrap();
        assert!(redirect_target(&plain, Some("https://127.0.0.1:2/f")).is_ok());
    }

    #[tokio::test]
    async fn a_file_follows_redirects_to_where_it_lives_and_gives_up_on_a_loop() {
        // The file lives on another server (S3's regional endpoint); the link answers 307
        // with an absolute Location there, which answers 302 with a relative one.
        let moved = Router::new()
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/file?sig=1")]) }),
            )
            .route("/file", get(|| async { (StatusCode::OK, "line 1\n") }));
        let region = serve(moved).await;
        let router = Router::new()
            .route(
                "/link",
                get({
                    let to = format!("{region}/moved?sig=2");
                    move || async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]) }
                }),
            )
            .route(
                "/loop",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
            )
            .route(
                "/nowhere",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "ftp://x/y")]) }),
            );
        let url = serve(router).await;
        let client = HttpClient::new(config()).unwrap();
        let get = |path: &str| {
            let url = reqwest::Url::parse(&format!("{url}{path}")).unwrap();
            client.get_file("file", url, Duration::from_secs(5), |_| Ok(()))
        };
        let got = get("/link").await.unwrap();
        assert_eq!((got.status, &got.body[..]), (200, &b"line 1\n"[..]));
        let err = get("/loop").await.unwrap_err();
        assert!(err.to_string().contains("more than 5 times"), "{err}");
        let err = get("/nowhere").await.unwrap_err();
        assert!(err.to_string().contains("only http(s)"), "{err}");
        // Other requests still follow none.
        let err = client
            .send("list", |c| c.get(format!("{url}/link")))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Http { status: 307, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_body_inflating_past_the_cap_fails_without_reading_it_all() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        // 64 MiB of zeros gzip to ~64 KiB: a small answer that inflates a thousandfold.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = bytes::Bytes::from(encoder.finish().unwrap());
        assert!(bomb.len() < 200 * 1024);
        let count = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&count);
        let router = Router::new().fallback(get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let bomb = bomb.clone();
            async move { ([(header::CONTENT_ENCODING, "gzip")], bomb) }
        }));
        let url = serve(router).await;
        let client = HttpClient::new(HttpConfig {
            max_body_bytes: 4 * 1024 * 1024,
            ..config()
        })
        .unwrap();
        let err = client
            .send("list charges", |c| c.get(format!("{url}/v1/charges")))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Protocol { .. }), "{text}");
        assert!(text.contains("larger than 4 MiB"), "{text}");
        assert!(text.contains("max_response_mb"), "{text}");
        // Not retried: the same answer would come again.
        assert_eq!(count.load(Ordering::SeqCst), 1);

        // An uncompressed body announcing its size is refused before it is read.
        let big =
            serve(Router::new().fallback(get(|| async { vec![b'x'; 5 * 1024 * 1024] }))).await;
        let err = client.send("big", |c| c.get(&big)).await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }

    #[tokio::test]
    async fn error_bodies_echoing_credentials_are_scrubbed() {
        let secret = crate::Secret::new("sk_live_echoed_back_by_the_vendor");
        let (url, _) = counting(|_| {
            (
                StatusCode::UNAUTHORIZED,
                "{\"message\":\"bad credentials: sk_live_echoed_back_by_the_vendor \
                 (Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl)\"}",
            )
        })
        .await;
        let client = HttpClient::new(config()).unwrap();
        let err = client
            .send("check", |c| c.get(&url).bearer_auth(secret.expose()))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("echoed_back"), "{text}");
        assert!(!text.contains("eyJhbGci"), "{text}");
        assert!(text.contains("bad credentials: ***"), "{text}");
    }

    /// A gzip member holding `data` in one stored (uncompressed) deflate block: valid gzip
    /// without a compressor in the dev-dependencies.
    fn gzip_stored(data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(data.len()).unwrap();
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.push(1); // final block, stored
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn vendor_message_knows_the_vendor_shapes() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"error":{"message":"No such charge","type":"invalid_request_error"}}"#,
                "No such charge",
            ),
            (
                r#"{"error":"invalid_grant","error_description":"expired"}"#,
                "invalid_grant: expired",
            ),
            (
                r#"{"error":"RecordNotFound","description":"Not found"}"#,
                "RecordNotFound: Not found",
            ),
            (
                r#"{"error":"Couldn't authenticate you"}"#,
                "Couldn't authenticate you",
            ),
            (
                r#"{"error":{"title":"Forbidden","description":"No access"}}"#,
                "Forbidden: No access",
            ),
            (
                r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#,
                "Session expired or invalid (INVALID_SESSION_ID)",
            ),
            (r#"{"message":"Bad credentials"}"#, "Bad credentials"),
            ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
            ("", "(empty body)"),
        ];
        for (body, expected) in cases {
            assert_eq!(vendor_message(body.as_bytes()), *expected, "{body}");
        }
        let long = "é".repeat(1000);
        let message = vendor_message(long.as_bytes());
        assert_eq!(message.chars().count(), 301);
    }

    #[test]
    fn config_rejects_unusable_rates() {
        assert!(HttpClient::new(HttpConfig::new("V", 0.0)).is_err());
        assert!(HttpClient::new(HttpConfig::new("V", f64::NAN)).is_err());
        assert!(
            HttpClient::new(HttpConfig {
                burst: 0,
                ..HttpConfig::new("V", 1.0)
            })
            .is_err()
        );
        assert!(HttpClient::new(HttpConfig::per_minute("V", 10.0)).is_ok());
        let err = HttpClient::new(HttpConfig {
            burst: u32::MAX,
            ..HttpConfig::new("V", 100.0)
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("burst"), "{err}");
    }

    /// Admissions of `limiter` (on a fake clock) when every request asks the moment the
    /// one before it went out and wakes `late(i)` after the slot it was told to wait for,
    /// over `seconds`.
    fn paced(
        quota: Quota,
        cells: NonZeroU32,
        seconds: u64,
        late: impl Fn(u64) -> Duration,
    ) -> Vec<Duration> {
        use governor::clock::{Clock, FakeRelativeClock, Reference};
        let clock = FakeRelativeClock::default();
        let start = clock.now();
        let limiter = governor::RateLimiter::direct_with_clock(quota, clock.clone());
        let mut admitted = Vec::new();
        for i in 0.. {
            match limiter.check_n(cells).unwrap() {
                Ok(()) => admitted.push(clock.now().duration_since(start).into()),
                Err(not_until) => {
                    clock.advance(not_until.wait_time_from(clock.now()) + late(i));
                }
            }
            if clock.now().duration_since(start) >= Duration::from_secs(seconds).into() {
                break;
            }
        }
        admitted
    }

    /// The most admissions in any half-open window `[t, t + window)`.
    fn busiest(admitted: &[Duration], window: Duration) -> usize {
        (0..admitted.len())
            .map(|i| {
                admitted[i..]
                    .iter()
                    .take_while(|t| **t - admitted[i] < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The limiter keeps its rate when requests wake late for their slots (tokio's timer
    /// rounds up to the millisecond), where a plain burst-1 limiter loses the lateness on
    /// every request; and no sliding window of 0.2 s or more ever sees more than its share.
    #[test]
    fn late_wakes_do_not_cost_the_limiter_its_rate() {
        // A deterministic spread of lateness from 0 to 1.6 ms, mostly under a millisecond
        // (the allowance is whole cells of about 250 µs: 1.77-2 ms).
        let jitter = |i: u64| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            Duration::from_micros(match x % 10 {
                0 => 1_600,
                1 | 2 => 1_500,
                _ => x % 1_000,
            })
        };
        let (quota, cells) = HttpConfig::new("V", 100.0).limiter_quota().unwrap();
        let admitted = paced(quota, cells, 20, jitter);
        // 100 / 1.01 = 99.0 a second, whatever the lateness under the allowance.
        assert!(admitted.len() >= 1_979, "{} in 20 s", admitted.len());
        for window in [200, 600, 1_000, 2_500, 10_000] {
            let most = busiest(&admitted, Duration::from_millis(window));
            assert!(most as u64 <= window / 10, "{most} within {window} ms");
        }

        // The plain limiter under the same lateness: every slot moves by its lateness.
        let plain = Quota::with_period(Duration::from_millis(10)).unwrap();
        let plain = paced(plain, NonZeroU32::MIN, 20, jitter);
        assert!(plain.len() < 1_950, "{} in 20 s", plain.len());

        // Later than the allowance, the slots after move back, and still no window holds
        // more than its share; at 25 a second as at 100.
        let (quota, cells) = HttpConfig::new("V", 25.0).limiter_quota().unwrap();
        let admitted = paced(quota, cells, 20, |i| Duration::from_micros(i % 9 * 1_000));
        for window in [200, 600, 1_000, 4_000] {
            let most = busiest(&admitted, Duration::from_millis(window));
            assert!(most as u64 <= window / 40, "{most} within {window} ms");
        }
        let admitted = paced(quota, cells, 20, jitter);
        assert!(admitted.len() >= 495, "{} in 20 s", admitted.len());

        // A burst of 3 lets three go at once, and then the rate holds.
        let (quota, cells) = HttpConfig {
            burst: 3,
            ..HttpConfig::new("V", 100.0)
        }
        .limiter_quota()
        .unwrap();
        let admitted = paced(quota, cells, 5, jitter);
        assert_eq!(&admitted[..3], &[Duration::ZERO; 3]);
        assert!(busiest(&admitted, Duration::from_secs(1)) <= 102);
    }

    #[test]
    fn reset_may_be_seconds_or_a_timestamp() {
        let date = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(reset_delay(2.0, Some(date)), Duration::from_secs(2));
        let at = date.timestamp() as f64 + 30.0;
        assert_eq!(reset_delay(at, Some(date)), Duration::from_secs(30));
        assert_eq!(reset_delay(-5.0, None), Duration::ZERO);
    }

    #[test]
    fn redacted_urls_keep_only_scheme_host_port_and_path() {
        let url =
            reqwest::Url::parse("https://user:pw@api.example.com:8443/v1/x?key=s#frag").unwrap();
        assert_eq!(redact_url(&url), "https://api.example.com:8443/v1/x");
    }
}
