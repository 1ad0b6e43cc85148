//! The simulated clock: real time plus an offset that tests move forward, so a simulator
//! can age its data (retention, exclusion windows) without the test waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Real time plus an offset; only ever moves forward.
#[derive(Debug, Default)]
pub struct Clock {
    /// Simulator time minus real time, in milliseconds.
    offset_ms: AtomicI64,
}

impl Clock {
    /// A clock showing real time.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// Simulator time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Simulator time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// How far the clock is ahead of real time.
    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed).max(0) as u64)
    }

    /// The simulator time in RFC 7231 format, for the `Date` header.
    pub fn http_date(&self) -> String {
        chrono::DateTime::from_timestamp(self.now(), 0)
            .unwrap_or_default()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_and_the_date_header() {
        let clock = Clock::new();
        let before = clock.now();
        clock.advance(Duration::from_secs(86_400));
        let after = clock.now();
        assert!(
            (86_400..=86_402).contains(&(after - before)),
            "{before} {after}"
        );
        assert_eq!(clock.offset(), Duration::from_secs(86_400));
        let date = clock.http_date();
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    }
}
