//! Process-wide counters of the HTTP client, per vendor: requests by status, retries,
//! 429s, and time spent waiting for the rate limiter. Cheap to bump (one short lock per
//! request); the runtime reads a [`snapshot`] to serve them as Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The counters of one vendor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VendorStats {
    /// Answers by HTTP status; transport failures (no answer) under `"error"`.
    pub requests: BTreeMap<String, u64>,
    /// Requests retried (each retry once).
    pub retries: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Seconds requests spent waiting for the account's limiter or a vendor-set pause.
    pub limiter_wait_seconds: f64,
}

static STATS: Mutex<BTreeMap<String, VendorStats>> = Mutex::new(BTreeMap::new());

fn with(vendor: &str, f: impl FnOnce(&mut VendorStats)) {
    let mut stats = STATS.lock().unwrap_or_else(|p| p.into_inner());
    match stats.get_mut(vendor) {
        Some(s) => f(s),
        None => f(stats.entry(vendor.to_owned()).or_default()),
    }
}

/// Counts an answer with `status` (`None`: no answer, a transport failure).
pub fn request(vendor: &str, status: Option<u16>) {
    let key = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    with(vendor, |s| {
        *s.requests.entry(key).or_default() += 1;
        if status == Some(429) {
            s.throttled += 1;
        }
    });
}

/// Counts a retry.
pub fn retry(vendor: &str) {
    with(vendor, |s| s.retries += 1);
}

/// Adds time spent waiting before a request could go out.
pub fn limiter_wait(vendor: &str, waited: Duration) {
    with(vendor, |s| s.limiter_wait_seconds += waited.as_secs_f64());
}

/// Every vendor's counters so far, by vendor name.
pub fn snapshot() -> BTreeMap<String, VendorStats> {
    STATS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
