//! The state every simulator's handler consults: clock, rate limit, faults, latency and
//! counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::control::SandboxError;
use crate::faults::{After, Before, FaultState, Faults};
use crate::latency::{Latency, LatencyState};
use crate::limiter::{Measure, RateLimit, Refused, Window};
use crate::lock;

/// How a [`Kit`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct KitConfig {
    /// Seed of fault injection (and of the vendor's request ids), for repeatable runs.
    pub seed: u64,
    /// The account's rate limit; `None` = unlimited (still measured).
    pub rate_limit: Option<RateLimit>,
    /// Over which window the busiest-window statistic is measured.
    pub measure: Measure,
    /// The server errors the vendor answers when an error is injected.
    pub error_statuses: &'static [u16],
}

impl Default for KitConfig {
    fn default() -> Self {
        KitConfig {
            seed: 42,
            rate_limit: None,
            measure: Measure::Fixed(Duration::from_secs(1)),
            error_statuses: &[500, 503],
        }
    }
}

/// What the kit counted, for the vendor's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// API requests received (control endpoints are not counted).
    pub requests: u64,
    /// Requests refused with 429 by the rate limit (injected 429s not counted).
    pub rate_limited: u64,
    /// The most requests admitted within one measured window.
    pub max_admitted_per_window: u64,
    /// Faults injected (the kit's and those the vendor reported with [`Kit::inject`]).
    pub faults_injected: u64,
}

/// Clock, rate limit, faults (with the vendor's own, `X`) and counters of one simulator.
/// Every method takes `&self`: the kit is shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub struct Kit<X> {
    /// The simulated clock.
    pub clock: Clock,
    limiter: Mutex<Window>,
    faults: Mutex<FaultState<X>>,
    latency: Mutex<LatencyState>,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    faults_injected: AtomicU64,
    request_counter: AtomicU64,
    seed: u64,
}

impl<X: Default + Clone> Kit<X> {
    /// A kit with no faults, the clock at real time and `config`'s rate limit.
    pub fn new(config: KitConfig) -> Kit<X> {
        Kit {
            clock: Clock::new(),
            limiter: Mutex::new(Window::new(config.rate_limit, config.measure)),
            faults: Mutex::new(FaultState::new(config.seed, config.error_statuses)),
            latency: Mutex::new(LatencyState::new(config.seed)),
            requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            request_counter: AtomicU64::new(0),
            seed: config.seed,
        }
    }

    /// The seed the kit was started with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulator time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// 0, 1, 2, … one per call, for request ids.
    pub fn next_request_number(&self) -> u64 {
        self.request_counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an API request.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Admits a request arriving at `now` under the rate limit, with the limit's quota
    /// (limit, remaining, seconds to reset) when there is one; a refusal is counted.
    pub fn admit(&self, now: Instant) -> Result<Option<(u32, u32, u64)>, Refused> {
        let mut limiter = lock(&self.limiter);
        match limiter.admit(now) {
            Ok(()) => Ok(limiter.quota(now)),
            Err(refused) => {
                drop(limiter);
                self.count_rate_limited();
                Err(refused)
            }
        }
    }

    /// [`Kit::admit`] with a refusal as the answer to give ([`SandboxError::Throttled`] by
    /// the `"account"` limit).
    pub fn admit_request(&self, now: Instant) -> Result<Option<(u32, u32, u64)>, SandboxError> {
        self.admit(now).map_err(|r| SandboxError::Throttled {
            retry_after: r.retry_after,
            injected: false,
            limit: "account",
        })
    }

    /// Decides the faults of a request before it is answered, waits out an injected delay,
    /// and returns the error to answer instead, if any; an injected 429 names `limit`, the
    /// limit the request counts against.
    pub async fn before_answer(&self, limit: &'static str) -> Option<SandboxError> {
        let before = self.before();
        if let Some(delay) = before.delay {
            tokio::time::sleep(delay).await;
        }
        before.error.map(|status| match status {
            429 => SandboxError::Throttled {
                retry_after: 1,
                injected: true,
                limit,
            },
            status => SandboxError::Injected { status },
        })
    }

    /// See [`FaultState::cursor_fault`]; not counted (the vendor counts what it injects).
    pub fn cursor_fault(&self, cursor: &str) -> Option<String> {
        lock(&self.faults).cursor_fault(cursor)
    }

    /// See [`FaultState::shape_fault`]; not counted (the vendor counts what it injects).
    pub fn shape_fault<S>(&self, shape: impl FnOnce(&X) -> Option<S>) -> Option<S> {
        lock(&self.faults).shape_fault(shape)
    }

    /// Counts a request a vendor's own limit refused with 429.
    pub fn count_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces the rate limit (`None` = unlimited), keeping the statistic.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        lock(&self.limiter).set(limit);
    }

    /// The current rate limit.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        lock(&self.limiter).limit()
    }

    /// The faults of a request before it is answered (counted).
    pub fn before(&self) -> Before {
        let before = lock(&self.faults).before();
        self.inject(before.count());
        before
    }

    /// The faults of a successful response (counted).
    pub fn after(&self) -> After {
        let after = lock(&self.faults).after();
        self.inject(after.count());
        after
    }

    /// Counts `n` faults the vendor injected itself.
    pub fn inject(&self, n: u64) {
        self.faults_injected.fetch_add(n, Ordering::Relaxed);
    }

    /// Replaces the response latency of vendor requests (see [`crate::latency`]).
    pub fn set_latency(&self, latency: Latency) {
        lock(&self.latency).set(latency);
    }

    /// The configured response latency.
    pub fn latency(&self) -> Latency {
        lock(&self.latency).get()
    }

    /// The latency of the next vendor request, jitter drawn (zero when none is set).
    pub fn draw_latency(&self) -> Duration {
        lock(&self.latency).draw()
    }

    /// Vendor requests whose path starts with `prefix` take `extra` longer (an endpoint
    /// slower than the rest, e.g. for a test of what a client does meanwhile).
    pub fn slow_down(&self, prefix: &str, extra: Duration) {
        lock(&self.latency).slow_down(prefix, extra);
    }

    /// The latency of the next vendor request to `path`, its path's extra included.
    pub fn draw_latency_for(&self, path: &str) -> Duration {
        lock(&self.latency).draw_for(path)
    }

    /// The configured faults.
    pub fn faults(&self) -> Faults<X> {
        lock(&self.faults).get()
    }

    /// Replaces the faults; what the old ones remembered is forgotten.
    pub fn set_faults(&self, faults: Faults<X>) {
        lock(&self.faults).set(faults);
    }

    /// What the kit counted since the start or the last reset.
    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            max_admitted_per_window: lock(&self.limiter).max_in_window(),
            faults_injected: self.faults_injected.load(Ordering::Relaxed),
        }
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        for counter in [&self.requests, &self.rate_limited, &self.faults_injected] {
            counter.store(0, Ordering::Relaxed);
        }
        lock(&self.limiter).reset_stats();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::NoExtra;

    #[test]
    fn counts_what_it_sees() {
        let kit = Kit::<NoExtra>::new(KitConfig {
            rate_limit: Some(RateLimit::per_second(2.0)),
            ..KitConfig::default()
        });
        let t0 = Instant::now() + Duration::from_secs(5);
        kit.count_request();
        assert_eq!(kit.admit(t0), Ok(Some((2, 1, 1))));
        assert!(kit.admit(t0).is_ok());
        assert_eq!(kit.admit(t0), Err(Refused { retry_after: 1 }));
        kit.set_faults(Faults {
            error_next: 1,
            ..Faults::default()
        });
        assert!(kit.before().error.is_some());
        kit.inject(2);
        assert_eq!(
            kit.counters(),
            Counters {
                requests: 1,
                rate_limited: 1,
                max_admitted_per_window: 2,
                faults_injected: 3,
            }
        );
        kit.reset_stats();
        assert_eq!(kit.counters(), Counters::default());
        assert_eq!(
            (kit.next_request_number(), kit.next_request_number()),
            (0, 1)
        );
    }
}
