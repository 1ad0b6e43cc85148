//! Sliding-window rate limits, answered with 429 and `Retry-After`, that also measure the
//! busiest window they admitted (what tests assert a client's manners on).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const SECOND: Duration = Duration::from_secs(1);

/// `requests` admitted in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests admitted per window (0 refuses everything).
    pub requests: u32,
    /// The sliding window.
    pub window: Duration,
}

impl RateLimit {
    /// `rps` requests per second. Below 1 request/s the window widens to `1/rps` seconds
    /// with one request, so 0.5 means one request every two seconds; 0, a negative number
    /// or NaN refuses everything.
    pub fn per_second(rps: f64) -> RateLimit {
        if rps.is_nan() || rps <= 0.0 {
            return RateLimit {
                requests: 0,
                window: SECOND,
            };
        }
        if rps >= 1.0 {
            return RateLimit {
                requests: rps.floor().min(f64::from(u32::MAX)) as u32,
                window: SECOND,
            };
        }
        RateLimit {
            requests: 1,
            window: Duration::from_secs_f64((1.0 / rps).min(86_400.0)),
        }
    }
}

/// Over which window the busiest-window statistic is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Always this window (e.g. one second, whatever the limit).
    Fixed(Duration),
    /// The limit's own window, or this one while unlimited.
    LimitWindow(Duration),
}

/// Why a request was refused with 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Seconds until a slot frees (`Retry-After`), at least 1.
    pub retry_after: u64,
}

/// A sliding-window limiter that also measures the busiest window it admitted.
#[derive(Debug)]
pub struct Window {
    limit: Option<RateLimit>,
    measure: Measure,
    /// Admission times, oldest first, kept as long as the limit or the statistic needs them.
    admitted: VecDeque<Instant>,
    max_in_window: u64,
    /// Admissions before this do not count towards `max_in_window` (see `reset_stats`).
    stats_since: Instant,
}

impl Window {
    /// A limiter with `limit` (`None` = unlimited, still measured).
    pub fn new(limit: Option<RateLimit>, measure: Measure) -> Window {
        Window {
            limit: limit.map(Self::sane),
            measure,
            admitted: VecDeque::new(),
            max_in_window: 0,
            stats_since: Instant::now(),
        }
    }

    fn sane(limit: RateLimit) -> RateLimit {
        RateLimit {
            window: limit.window.max(Duration::from_millis(1)),
            ..limit
        }
    }

    /// Replaces the limit, keeping the admissions and the statistic.
    pub fn set(&mut self, limit: Option<RateLimit>) {
        self.limit = limit.map(Self::sane);
    }

    /// The current limit.
    pub fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    fn measure_window(&self) -> Duration {
        match self.measure {
            Measure::Fixed(w) => w,
            Measure::LimitWindow(default) => self.limit.map_or(default, |l| l.window),
        }
    }

    fn forget_before(&mut self, now: Instant) {
        let keep = self
            .limit
            .map_or(SECOND, |l| l.window)
            .max(self.measure_window());
        if let Some(horizon) = now.checked_sub(keep) {
            while self.admitted.front().is_some_and(|&t| t <= horizon) {
                self.admitted.pop_front();
            }
        }
    }

    /// Admissions in `(now - window, now]`, not counting those before `floor`.
    fn count(&self, now: Instant, window: Duration, floor: Option<Instant>) -> usize {
        let start = now.checked_sub(window);
        let older = self
            .admitted
            .partition_point(|&t| start.is_some_and(|s| t <= s) || floor.is_some_and(|f| t < f));
        self.admitted.len() - older
    }

    /// How long until a request would be admitted again (zero when it would be now).
    fn until_slot(&self, now: Instant, limit: RateLimit) -> Duration {
        let in_window = self.count(now, limit.window, None);
        if in_window < limit.requests as usize {
            return Duration::ZERO;
        }
        if limit.requests == 0 {
            return limit.window;
        }
        // The admission whose leaving brings the window under the limit.
        self.admitted
            .get(self.admitted.len() - limit.requests as usize)
            .map(|&t| (t + limit.window).saturating_duration_since(now))
            .unwrap_or(Duration::ZERO)
    }

    /// Whether a request at `now` fits, without counting it.
    pub fn check(&mut self, now: Instant) -> Result<(), Refused> {
        self.forget_before(now);
        match self.limit {
            Some(limit) if self.count(now, limit.window, None) >= limit.requests as usize => {
                let wait = self.until_slot(now, limit);
                Err(Refused {
                    retry_after: (wait.as_secs_f64().ceil() as u64).max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a request admitted at `now`.
    pub fn record(&mut self, now: Instant) {
        self.admitted.push_back(now);
        let in_window = self.count(now, self.measure_window(), Some(self.stats_since)) as u64;
        self.max_in_window = self.max_in_window.max(in_window);
    }

    /// Admits a request arriving at `now` (counting it), or refuses it (not counting it).
    pub fn admit(&mut self, now: Instant) -> Result<(), Refused> {
        self.check(now)?;
        self.record(now);
        Ok(())
    }

    /// The limit, what is left of it after `now`'s admissions, and the seconds until a
    /// slot frees (rounded up), for quota headers; `None` while unlimited.
    pub fn quota(&self, now: Instant) -> Option<(u32, u32, u64)> {
        let limit = self.limit?;
        let used = self.count(now, limit.window, None) as u32;
        let oldest = self.admitted.len() - used as usize;
        let reset = self
            .admitted
            .get(oldest)
            .map(|&t| (t + limit.window).saturating_duration_since(now))
            .unwrap_or(Duration::ZERO);
        Some((
            limit.requests,
            limit.requests.saturating_sub(used),
            reset.as_secs_f64().ceil() as u64,
        ))
    }

    /// The most requests admitted within one measured window since the last reset.
    pub fn max_in_window(&self) -> u64 {
        self.max_in_window
    }

    /// Starts measuring afresh.
    pub fn reset_stats(&mut self) {
        self.max_in_window = 0;
        self.stats_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(rps: f64) -> Window {
        Window::new(Some(RateLimit::per_second(rps)), Measure::Fixed(SECOND))
    }

    #[test]
    fn admits_at_most_the_rate_per_sliding_second() {
        let mut limiter = per_second(5.0);
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut admitted = 0;
        // 40 requests over 2 seconds, every 50 ms.
        for i in 0..40 {
            if limiter.admit(t0 + Duration::from_millis(50 * i)).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(limiter.max_in_window(), 5);
    }

    #[test]
    fn slow_rates_mean_one_request_per_period() {
        let mut limiter = per_second(0.5);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.admit(t0).is_ok());
        let refused = limiter.admit(t0 + Duration::from_millis(1500)).unwrap_err();
        assert_eq!(refused.retry_after, 1, "half a second left, rounded up");
        assert!(limiter.admit(t0 + Duration::from_millis(2001)).is_ok());
        assert_eq!(per_second(0.0).admit(t0), Err(Refused { retry_after: 1 }));
    }

    #[test]
    fn retry_after_is_the_wait_for_a_free_slot() {
        let limit = RateLimit {
            requests: 2,
            window: Duration::from_secs(10),
        };
        let mut limiter = Window::new(Some(limit), Measure::LimitWindow(SECOND));
        let t0 = Instant::now() + Duration::from_secs(10);
        limiter.admit(t0).unwrap();
        limiter.admit(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(limiter.quota(t0 + Duration::from_secs(3)), Some((2, 0, 7)));
        let refused = limiter.admit(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(refused.retry_after, 6);
        // Refused requests are not counted: the slot frees when the first leaves.
        assert!(limiter.admit(t0 + Duration::from_millis(10_001)).is_ok());
        assert_eq!(limiter.max_in_window(), 2);
    }

    #[test]
    fn unlimited_still_measures_and_resets() {
        let mut limiter = Window::new(None, Measure::Fixed(SECOND));
        let t0 = Instant::now() + Duration::from_secs(10);
        for i in 0..30 {
            assert!(limiter.admit(t0 + Duration::from_millis(10 * i)).is_ok());
        }
        assert_eq!(limiter.quota(t0), None);
        assert_eq!(limiter.max_in_window(), 30);
        limiter.reset_stats();
        assert_eq!(limiter.max_in_window(), 0);
    }
}
