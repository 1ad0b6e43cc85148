//! Seeded fault injection: the misbehaviour every vendor shows and a connector must survive
//! (errors, throttling, slow answers, bodies cut short, malformed JSON), decided by one RNG
//! seeded from the simulator's seed so that a test run is repeatable.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Faults to inject into API answers: the common ones, and the vendor's own (`X`, flattened
/// into the same JSON). Each "next" counter applies to that many upcoming requests before
/// its probability (0..1) takes over. Missing fields default to off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults<X = NoExtra> {
    /// Probability of answering with a server error (500 or 503; the vendor says which it
    /// answers) in the vendor's error shape.
    pub error_rate: f64,
    /// Answer the next N requests with a server error.
    pub error_next: u32,
    /// Probability of answering 429 with `Retry-After: 1`, whatever the rate limit.
    pub throttle_rate: f64,
    /// Answer the next N requests with 429 and `Retry-After: 1`, whatever the rate limit.
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
    /// A vendor that never stops: a page requested with a cursor is answered as if that
    /// cursor led to itself (the same page again, with more to come).
    pub repeat_cursor: bool,
    /// A vendor whose cursors cycle: the first cursor requested is answered properly,
    /// every later one as if it led back to that first one (A → B → A → B).
    pub cycle_cursor: bool,
    /// List pages answered intact before the vendor's shape fault (`bad_shape`) applies to
    /// every later one.
    pub bad_shape_after: u32,
    /// The vendor's own faults.
    #[serde(flatten)]
    pub vendor: X,
}

/// Only the vendor's own faults, the common ones off: lets a test write
/// `set_faults(StripeFaults { forbid_after_first_page: true, ..Default::default() }.into())`.
impl<X> From<X> for Faults<X> {
    fn from(vendor: X) -> Faults<X> {
        Faults {
            error_rate: 0.0,
            error_next: 0,
            throttle_rate: 0.0,
            throttle_next: 0,
            slow_ms: 0,
            slow_rate: 0.0,
            truncate_rate: 0.0,
            truncate_next: 0,
            malformed_rate: 0.0,
            malformed_next: 0,
            repeat_cursor: false,
            cycle_cursor: false,
            bad_shape_after: 0,
            vendor,
        }
    }
}

/// No vendor faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoExtra {}

/// What to do to one request before it is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Before {
    /// Answer with this status (a 5xx, or 429) instead of the real response.
    pub error: Option<u16>,
    /// Wait this long first.
    pub delay: Option<Duration>,
}

impl Before {
    /// How many faults this is (for the statistics).
    pub fn count(&self) -> u64 {
        u64::from(self.error.is_some()) + u64::from(self.delay.is_some())
    }
}

/// Faults applied to a successful response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct After {
    /// Announce the full length, send half, drop the connection.
    pub truncate: bool,
    /// Send a body that starts well and ends in garbage.
    pub malformed: bool,
}

impl After {
    /// How many faults this is (for the statistics).
    pub fn count(&self) -> u64 {
        u64::from(self.truncate) + u64::from(self.malformed)
    }
}

/// What the cursor and shape faults remember between requests; forgotten whenever the
/// faults are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Memory {
    /// The first cursor requested since the faults were set (for cycling cursors).
    cycle_first: Option<String>,
    /// List pages served since the faults were set (for faults that start after N pages).
    pages_served: u32,
}

/// The configured faults, the seeded RNG that decides them, and what they remember.
#[derive(Debug)]
pub struct FaultState<X> {
    faults: Faults<X>,
    rng: StdRng,
    memory: Memory,
    /// The server errors the vendor answers, one picked at random when there are several.
    error_statuses: &'static [u16],
}

impl<X: Default + Clone> FaultState<X> {
    /// No faults, decided by an RNG seeded with `seed`; injected server errors are one of
    /// `error_statuses` (e.g. `[500, 503]`).
    pub fn new(seed: u64, error_statuses: &'static [u16]) -> FaultState<X> {
        FaultState {
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(seed),
            memory: Memory::default(),
            error_statuses,
        }
    }

    /// Replaces the faults and forgets what the old ones remembered.
    pub fn set(&mut self, faults: Faults<X>) {
        self.faults = faults;
        self.memory = Memory::default();
    }

    /// The configured faults.
    pub fn get(&self) -> Faults<X> {
        self.faults.clone()
    }

    /// The cursor a page requested with `cursor` should name as the next one, when a
    /// cursor fault says so: the same cursor (`repeat_cursor`), or the first one requested
    /// since the faults were set (`cycle_cursor`, from the second distinct cursor on).
    pub fn cursor_fault(&mut self, cursor: &str) -> Option<String> {
        if self.faults.repeat_cursor {
            return Some(cursor.to_owned());
        }
        if !self.faults.cycle_cursor {
            return None;
        }
        let first = self
            .memory
            .cycle_first
            .get_or_insert_with(|| cursor.to_owned());
        (first != cursor).then(|| first.clone())
    }

    /// Counts a list page served and returns the vendor's shape fault (read from its own
    /// faults by `shape`) once `bad_shape_after` pages were served intact.
    pub fn shape_fault<S>(&mut self, shape: impl FnOnce(&X) -> Option<S>) -> Option<S> {
        self.memory.pages_served = self.memory.pages_served.saturating_add(1);
        shape(&self.faults.vendor)
            .filter(|_| self.memory.pages_served > self.faults.bad_shape_after)
    }

    /// "Next N" counters are used first, then the probability.
    fn hit(rng: &mut StdRng, next: &mut u32, rate: f64) -> bool {
        if *next > 0 {
            *next -= 1;
            return true;
        }
        rate > 0.0 && rng.random::<f64>() < rate
    }

    /// Decides the faults of one request before it is answered: throttling first, then a
    /// server error, then a delay.
    pub fn before(&mut self) -> Before {
        let f = &mut self.faults;
        let error = if Self::hit(&mut self.rng, &mut f.throttle_next, f.throttle_rate) {
            Some(429)
        } else if Self::hit(&mut self.rng, &mut f.error_next, f.error_rate) {
            Some(match self.error_statuses {
                [] => 500,
                [only] => *only,
                // One draw, as before the kit: a 500 or a 503.
                [first, second] => {
                    if self.rng.random::<bool>() {
                        *first
                    } else {
                        *second
                    }
                }
                many => many[self.rng.random_range(0..many.len())],
            })
        } else {
            None
        };
        let delay = (f.slow_ms > 0 && Self::hit(&mut self.rng, &mut 0, f.slow_rate))
            .then(|| Duration::from_millis(f.slow_ms));
        Before { error, delay }
    }

    /// Decides the faults of one successful response: a cut body, else a malformed one.
    pub fn after(&mut self) -> After {
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

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Extra {
        refuse_jobs: bool,
    }

    #[test]
    fn next_counters_then_rates() {
        let mut state = FaultState::<NoExtra>::new(1, &[500, 503]);
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

    #[test]
    fn the_same_seed_injects_the_same_faults() {
        let run = |seed: u64| {
            let mut state = FaultState::<NoExtra>::new(seed, &[500, 503]);
            state.set(Faults {
                error_rate: 0.3,
                throttle_rate: 0.1,
                slow_ms: 5,
                slow_rate: 0.5,
                truncate_rate: 0.2,
                malformed_rate: 0.2,
                ..Faults::default()
            });
            (0..200)
                .map(|_| (state.before(), state.after()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let faults = run(7);
        let errors = faults.iter().filter(|(b, _)| b.error.is_some()).count();
        assert!((40..120).contains(&errors), "{errors} of 200");
    }

    #[test]
    fn cursor_and_shape_faults() {
        let mut state = FaultState::<Option<u8>>::new(1, &[500]);
        assert_eq!(state.cursor_fault("a"), None);
        state.set(Faults {
            repeat_cursor: true,
            ..Faults::default()
        });
        assert_eq!(state.cursor_fault("a").as_deref(), Some("a"));
        state.set(Faults {
            cycle_cursor: true,
            bad_shape_after: 1,
            vendor: Some(7),
            ..Faults::default()
        });
        assert_eq!(
            state.cursor_fault("a"),
            None,
            "the first cursor is answered"
        );
        assert_eq!(state.cursor_fault("b").as_deref(), Some("a"));
        assert_eq!(state.cursor_fault("a"), None);
        assert_eq!(state.shape_fault(|v| *v), None, "one page intact");
        assert_eq!(state.shape_fault(|v| *v), Some(7));
        state.set(state.get());
        assert_eq!(
            state.shape_fault(|v| *v),
            None,
            "setting forgets the pages served"
        );
    }

    #[test]
    fn one_error_status_is_always_that_one() {
        let mut state = FaultState::<NoExtra>::new(3, &[503]);
        state.set(Faults {
            error_next: 20,
            ..Faults::default()
        });
        assert!((0..20).all(|_| state.before().error == Some(503)));
    }

    #[test]
    fn vendor_faults_share_the_json() {
        let faults: Faults<Extra> =
            serde_json::from_str(r#"{"error_next": 2, "refuse_jobs": true}"#).unwrap();
        assert_eq!(faults.error_next, 2);
        assert!(faults.vendor.refuse_jobs);
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["refuse_jobs"], true);
        assert_eq!(json["throttle_next"], 0);
        let mut state = FaultState::<Extra>::new(1, &[500]);
        state.set(faults.clone());
        assert_eq!(state.get(), faults);
        let from_vendor: Faults<Extra> = Extra { refuse_jobs: true }.into();
        assert_eq!(from_vendor.error_next, 0);
        assert!(from_vendor.vendor.refuse_jobs);
    }
}
