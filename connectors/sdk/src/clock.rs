//! The vendor's clock, as its answers tell it.
//!
//! Decisions that compare times the vendor wrote (Stripe's 30-day event retention,
//! Zendesk's export start times, Salesforce's lookback window) must not depend on the
//! local clock, which may be minutes off. Every HTTP answer carries the vendor's `Date`;
//! a client feeds them to one [`ServerClock`] and asks it for "now".

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// The latest `Date` a vendor answered with. Shared by reference between the tasks of one
/// client; never goes backwards.
#[derive(Debug, Default)]
pub struct ServerClock {
    latest: Mutex<Option<DateTime<Utc>>>,
}

impl ServerClock {
    /// A clock that has seen no answer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in the `Date` of an answer (`None`: it had none, nothing changes). An older
    /// date than one already seen (answers arrive out of order) is ignored.
    pub fn observe(&self, date: Option<DateTime<Utc>>) {
        if let Some(date) = date {
            let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            if latest.is_none_or(|latest| latest < date) {
                *latest = Some(date);
            }
        }
    }

    /// The vendor's clock as of the latest answer, or the local clock before any.
    pub fn now(&self) -> DateTime<Utc> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Utc::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keeps_the_latest_date_and_falls_back_to_the_local_clock() {
        let clock = ServerClock::new();
        let before = Utc::now();
        assert!(clock.now() >= before);
        let late = Utc.with_ymd_and_hms(2020, 5, 1, 12, 0, 0).unwrap();
        let early = Utc.with_ymd_and_hms(2020, 5, 1, 11, 0, 0).unwrap();
        clock.observe(Some(late));
        clock.observe(Some(early));
        clock.observe(None);
        assert_eq!(clock.now(), late);
    }
}
