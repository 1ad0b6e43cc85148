//! The misbehaviour a real API shows and a connector must survive: Zendesk's two rate
//! limits (the account's requests per window, and the incremental exports' own, stricter
//! one), with the statistics tests assert on, and injected faults; both switchable at
//! runtime.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use serde_json::Value;

use super::{BadShape, Faults, RateLimits};

/// A sliding-window limiter that also measures the busiest window it admitted.
#[derive(Debug)]
pub(crate) struct Window {
    /// Requests admitted per window; `None` = unlimited (still measured).
    limit: Option<u32>,
    window: Duration,
    /// Admission times, oldest first, kept for one window.
    admitted: VecDeque<Instant>,
    max_in_window: u64,
    /// Admissions before this do not count towards `max_in_window`.
    stats_since: Instant,
}

impl Window {
    pub(crate) fn new(limit: Option<u32>, window: Duration) -> Window {
        Window {
            limit,
            window: window.max(Duration::from_millis(1)),
            admitted: VecDeque::new(),
            max_in_window: 0,
            stats_since: Instant::now(),
        }
    }

    fn forget_before(&mut self, now: Instant) {
        if let Some(horizon) = now.checked_sub(self.window) {
            while self.admitted.front().is_some_and(|&t| t <= horizon) {
                self.admitted.pop_front();
            }
        }
    }

    /// Admissions in `(now - window, now]`, not counting those before `floor`.
    fn count(&self, now: Instant, floor: Option<Instant>) -> usize {
        let start = now.checked_sub(self.window);
        let older = self
            .admitted
            .partition_point(|&t| start.is_some_and(|s| t <= s) || floor.is_some_and(|f| t < f));
        self.admitted.len() - older
    }

    /// How long until the oldest admission leaves the window (a slot frees).
    fn until_slot(&self, now: Instant) -> Duration {
        self.admitted
            .front()
            .map(|&oldest| (oldest + self.window).saturating_duration_since(now))
            .unwrap_or(Duration::ZERO)
    }

    /// `Err(wait)` when a request at `now` would exceed the limit.
    fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.forget_before(now);
        match self.limit {
            Some(limit) if self.count(now, None) >= limit as usize => Err(self.until_slot(now)),
            _ => Ok(()),
        }
    }

    fn record(&mut self, now: Instant) {
        self.admitted.push_back(now);
        let in_window = self.count(now, Some(self.stats_since)) as u64;
        self.max_in_window = self.max_in_window.max(in_window);
    }

    /// The limit, what is left of it after `now`'s admissions, and the seconds until a
    /// slot frees (rounded up), for the quota headers.
    fn quota(&self, now: Instant) -> Option<(u32, u32, u64)> {
        let limit = self.limit?;
        let used = self.count(now, None) as u32;
        let reset = self.until_slot(now).as_secs_f64().ceil() as u64;
        Some((limit, limit.saturating_sub(used), reset))
    }
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

/// Why a request was refused with 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Seconds to wait (`Retry-After`), at least 1.
    pub(crate) retry_after: u64,
    /// The export limit refused it (else the account's).
    pub(crate) export: bool,
}

/// Both limits of the account.
#[derive(Debug)]
pub(crate) struct Limiter {
    account: Window,
    export: Window,
}

/// The window statistics are measured over when no limit is set.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl Limiter {
    pub(crate) fn new(limits: Option<RateLimits>) -> Limiter {
        let window = limits.map_or(DEFAULT_WINDOW, |l| l.window);
        Limiter {
            account: Window::new(limits.map(|l| l.requests), window),
            export: Window::new(limits.map(|l| l.export_requests), window),
        }
    }

    /// Replaces the limits, keeping the statistics' window history.
    pub(crate) fn set(&mut self, limits: Option<RateLimits>) {
        let window = limits.map_or(DEFAULT_WINDOW, |l| l.window);
        for (w, limit) in [
            (&mut self.account, limits.map(|l| l.requests)),
            (&mut self.export, limits.map(|l| l.export_requests)),
        ] {
            w.limit = limit;
            w.window = window.max(Duration::from_millis(1));
        }
    }

    /// Admits a request arriving at `now` (counting it against both limits for an export
    /// request), or refuses it without counting it.
    pub(crate) fn admit(&mut self, export: bool, now: Instant) -> Result<Quota, Refused> {
        let refused = |wait: Duration, export: bool| Refused {
            retry_after: (wait.as_secs_f64().ceil() as u64).max(1),
            export,
        };
        if export {
            self.export.check(now).map_err(|w| refused(w, true))?;
        }
        self.account.check(now).map_err(|w| refused(w, false))?;
        self.account.record(now);
        if export {
            self.export.record(now);
        }
        Ok(Quota {
            account: self.account.quota(now),
            export: if export { self.export.quota(now) } else { None },
        })
    }

    /// The most requests admitted in any one window: (all, exports).
    pub(crate) fn max_in_window(&self) -> (u64, u64) {
        (self.account.max_in_window, self.export.max_in_window)
    }

    pub(crate) fn reset_stats(&mut self) {
        let now = Instant::now();
        for w in [&mut self.account, &mut self.export] {
            w.max_in_window = 0;
            w.stats_since = now;
        }
    }
}

/// What to do to one request before it is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Before {
    /// Answer with this status (500, 503, or 429) instead of the real response.
    pub(crate) error: Option<u16>,
    pub(crate) delay: Option<Duration>,
}

/// Faults applied to a successful response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct After {
    pub(crate) truncate: bool,
    pub(crate) malformed: bool,
}

/// The configured faults and the seeded RNG that decides them, so a test run is repeatable.
#[derive(Debug)]
pub(crate) struct FaultState {
    faults: Faults,
    rng: StdRng,
    /// The first request cursor seen since `cycle_cursor` was set.
    cycle_first: Option<String>,
    /// List and export bodies served since the faults were set.
    lists_served: u32,
}

impl FaultState {
    pub(crate) fn new(seed: u64) -> FaultState {
        FaultState {
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(seed),
            cycle_first: None,
            lists_served: 0,
        }
    }

    pub(crate) fn set(&mut self, faults: Faults) {
        self.faults = faults;
        self.cycle_first = None;
        self.lists_served = 0;
    }

    /// Rewrites a 200 list or export body (one with an array of records, or an export
    /// envelope) as the hostile faults say; whether anything was injected.
    pub(crate) fn hostile_body(&mut self, cursor: Option<&str>, body: Vec<u8>) -> (Vec<u8>, bool) {
        let f = &self.faults;
        if !f.repeat_cursor && !f.cycle_cursor && f.bad_shape.is_none() {
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
        let next = match cursor {
            Some(cursor) if f.repeat_cursor => Some(cursor.to_owned()),
            Some(cursor) if f.cycle_cursor => {
                let first = self.cycle_first.get_or_insert_with(|| cursor.to_owned());
                (first != cursor).then(|| first.clone())
            }
            _ => None,
        };
        if let Some(next) = next {
            injected = true;
            if is_export {
                page.insert("after_cursor".into(), Value::String(next));
                page.insert("end_of_stream".into(), Value::Bool(false));
            } else if let Some(Value::Object(meta)) = page.get_mut("meta") {
                meta.insert("after_cursor".into(), Value::String(next));
                meta.insert("has_more".into(), Value::Bool(true));
            }
        }
        self.lists_served = self.lists_served.saturating_add(1);
        if let Some(shape) = self.faults.bad_shape
            && self.lists_served > self.faults.bad_shape_after
        {
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

    pub(crate) fn get(&self) -> Faults {
        self.faults.clone()
    }

    /// "Next N" counters are used first, then the probability.
    fn hit(rng: &mut StdRng, next: &mut u32, rate: f64) -> bool {
        if *next > 0 {
            *next -= 1;
            return true;
        }
        rate > 0.0 && rng.random::<f64>() < rate
    }

    pub(crate) fn before(&mut self) -> Before {
        let f = &mut self.faults;
        let throttled = Self::hit(&mut self.rng, &mut f.throttle_next, 0.0);
        let error = if throttled {
            Some(429)
        } else {
            Self::hit(&mut self.rng, &mut f.error_next, f.error_rate)
                .then(|| if self.rng.random::<bool>() { 500 } else { 503 })
        };
        let delay = (f.slow_ms > 0 && Self::hit(&mut self.rng, &mut 0, f.slow_rate))
            .then(|| Duration::from_millis(f.slow_ms));
        Before { error, delay }
    }

    pub(crate) fn after(&mut self) -> After {
        let f = &mut self.faults;
        let truncate = Self::hit(&mut self.rng, &mut f.truncate_next, f.truncate_rate);
        let malformed =
            !truncate && Self::hit(&mut self.rng, &mut f.malformed_next, f.malformed_rate);
        After {
            truncate,
            malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u32, export_requests: u32) -> Option<RateLimits> {
        Some(RateLimits {
            window: Duration::from_secs(1),
            requests,
            export_requests,
        })
    }

    #[test]
    fn exports_have_their_own_stricter_window() {
        let mut limiter = Limiter::new(limits(5, 2));
        let t0 = Instant::now() + Duration::from_secs(10);
        let q = limiter.admit(true, t0).unwrap();
        assert_eq!(q.export, Some((2, 1, 1)));
        assert_eq!(q.account, Some((5, 4, 1)));
        let q = limiter.admit(false, t0 + Duration::from_millis(5)).unwrap();
        assert_eq!(q.export, None, "only exports report the export limit");
        assert_eq!(q.account, Some((5, 3, 1)));
        limiter.admit(true, t0 + Duration::from_millis(10)).unwrap();
        let refused = limiter
            .admit(true, t0 + Duration::from_millis(20))
            .unwrap_err();
        assert!(refused.export);
        assert_eq!(refused.retry_after, 1);
        // Other endpoints still have the account's room.
        for i in 0..2 {
            limiter
                .admit(false, t0 + Duration::from_millis(30 + i))
                .unwrap();
        }
        let refused = limiter
            .admit(false, t0 + Duration::from_millis(40))
            .unwrap_err();
        assert!(!refused.export);
        // A window later, both have room again.
        assert!(
            limiter
                .admit(true, t0 + Duration::from_millis(1100))
                .is_ok()
        );
        assert_eq!(limiter.max_in_window(), (5, 2));
    }

    #[test]
    fn a_refused_request_is_not_counted() {
        let mut limiter = Limiter::new(limits(1, 1));
        let t0 = Instant::now() + Duration::from_secs(10);
        limiter.admit(false, t0).unwrap();
        for i in 1..5 {
            assert!(limiter.admit(true, t0 + Duration::from_millis(i)).is_err());
        }
        assert_eq!(limiter.max_in_window(), (1, 0));
    }

    #[test]
    fn unlimited_still_measures() {
        let mut limiter = Limiter::new(None);
        let t0 = Instant::now() + Duration::from_secs(10);
        for i in 0..30 {
            let q = limiter
                .admit(i % 3 == 0, t0 + Duration::from_millis(i))
                .unwrap();
            assert_eq!(q, Quota::default());
        }
        assert_eq!(limiter.max_in_window(), (30, 10));
        limiter.reset_stats();
        assert_eq!(limiter.max_in_window(), (0, 0));
    }

    #[test]
    fn next_counters_then_rates() {
        let mut state = FaultState::new(1);
        state.set(Faults {
            error_next: 2,
            throttle_next: 1,
            truncate_next: 1,
            ..Faults::default()
        });
        assert_eq!(state.before().error, Some(429));
        assert!(matches!(state.before().error, Some(500 | 503)));
        assert!(state.before().error.is_some());
        assert!(state.before().error.is_none());
        assert!(state.after().truncate);
        assert_eq!(state.after(), After::default());
        state.set(Faults {
            malformed_rate: 1.0,
            ..Faults::default()
        });
        assert!(state.after().malformed);
    }
}
