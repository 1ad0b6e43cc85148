//! The misbehaviour a real API shows and a connector must survive: the rate limiter (with the
//! statistics tests assert on) and injected faults, both switchable at runtime.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{BadShape, Faults};

const SECOND: Duration = Duration::from_secs(1);

/// A sliding-window limiter that also measures the busiest second it admitted.
#[derive(Debug)]
pub(crate) struct Limiter {
    rps: Option<f64>,
    /// Admission times, oldest first, kept as long as either window needs them.
    admitted: VecDeque<Instant>,
    max_per_second: u64,
    /// Admissions before this do not count towards `max_per_second` (see `reset_stats`).
    stats_since: Instant,
}

impl Limiter {
    pub(crate) fn new(rps: Option<f64>) -> Limiter {
        Limiter {
            rps,
            admitted: VecDeque::new(),
            max_per_second: 0,
            stats_since: Instant::now(),
        }
    }

    pub(crate) fn set_rate(&mut self, rps: Option<f64>) {
        self.rps = rps;
    }

    /// The window and how many requests it admits. Below 1 request/s the window widens to
    /// `1/rps` seconds with one request, so e.g. 0.5 means one request every two seconds.
    fn window(&self) -> Option<(Duration, usize)> {
        let rps = self.rps?;
        if rps.is_nan() || rps <= 0.0 {
            return Some((SECOND, 0));
        }
        if rps >= 1.0 {
            return Some((SECOND, rps.floor().min(1e9) as usize));
        }
        Some((Duration::from_secs_f64((1.0 / rps).min(86_400.0)), 1))
    }

    /// Admits a request arriving at `now`, or refuses it (a 429).
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let limit = self.window();
        let keep = limit.map_or(SECOND, |(w, _)| w.max(SECOND));
        if let Some(horizon) = now.checked_sub(keep) {
            while self.admitted.front().is_some_and(|&t| t <= horizon) {
                self.admitted.pop_front();
            }
        }
        if let Some((window, capacity)) = limit
            && self.count_since(now, window, None) >= capacity
        {
            return false;
        }
        self.admitted.push_back(now);
        let in_last_second = self.count_since(now, SECOND, Some(self.stats_since));
        self.max_per_second = self.max_per_second.max(in_last_second as u64);
        true
    }

    /// Admissions in the window `(now - window, now]`, not counting those before `floor`.
    fn count_since(&self, now: Instant, window: Duration, floor: Option<Instant>) -> usize {
        let start = now.checked_sub(window);
        let older = self
            .admitted
            .partition_point(|&t| start.is_some_and(|s| t <= s) || floor.is_some_and(|f| t < f));
        self.admitted.len() - older
    }

    pub(crate) fn max_per_second(&self) -> u64 {
        self.max_per_second
    }

    pub(crate) fn reset_stats(&mut self) {
        self.max_per_second = 0;
        self.stats_since = Instant::now();
    }
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Before {
    /// Answer with this 5xx status instead of the real response.
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
    /// The first cursor of a paginated list request since `cycle_cursor` was set.
    cycle_first: Option<String>,
    /// List bodies served since the faults were set.
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

    /// `query` without its pagination cursor when `repeat_cursor` is on, or when
    /// `cycle_cursor` is on and this is not the first cursor seen.
    pub(crate) fn hostile_query(&mut self, query: &str) -> String {
        let is_cursor =
            |pair: &str| pair.starts_with("starting_after=") || pair.starts_with("ending_before=");
        let Some(cursor) = query.split('&').find(|p| is_cursor(p)) else {
            return query.to_owned();
        };
        let ignore = self.faults.repeat_cursor
            || (self.faults.cycle_cursor
                && self.cycle_first.get_or_insert_with(|| cursor.to_owned()) != cursor);
        if !ignore {
            return query.to_owned();
        }
        query
            .split('&')
            .filter(|p| !is_cursor(p))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The shape fault for the next list body.
    pub(crate) fn bad_shape(&mut self) -> Option<BadShape> {
        self.lists_served = self.lists_served.saturating_add(1);
        self.faults
            .bad_shape
            .filter(|_| self.lists_served > self.faults.bad_shape_after)
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
        let error = Self::hit(&mut self.rng, &mut f.error_next, f.error_rate)
            .then(|| if self.rng.random::<bool>() { 500 } else { 503 });
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

    #[test]
    fn limiter_admits_at_most_the_rate_per_sliding_second() {
        let mut limiter = Limiter::new(Some(5.0));
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut admitted = 0;
        // 40 requests over 2 seconds, every 50 ms.
        for i in 0..40 {
            if limiter.admit(t0 + Duration::from_millis(50 * i)) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(limiter.max_per_second(), 5);
    }

    #[test]
    fn slow_rates_mean_one_request_per_period() {
        let mut limiter = Limiter::new(Some(0.5));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.admit(t0));
        assert!(!limiter.admit(t0 + Duration::from_millis(1500)));
        assert!(limiter.admit(t0 + Duration::from_millis(2001)));
    }

    #[test]
    fn unlimited_still_measures() {
        let mut limiter = Limiter::new(None);
        let t0 = Instant::now() + Duration::from_secs(10);
        for i in 0..30 {
            assert!(limiter.admit(t0 + Duration::from_millis(10 * i)));
        }
        assert_eq!(limiter.max_per_second(), 30);
        limiter.reset_stats();
        assert_eq!(limiter.max_per_second(), 0);
    }

    #[test]
    fn next_counters_then_rates() {
        let mut state = FaultState::new(1);
        state.set(Faults {
            error_next: 2,
            truncate_next: 1,
            ..Faults::default()
        });
        assert!(state.before().error.is_some());
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
