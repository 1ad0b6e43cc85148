//! The time range of an overview: a preset (`10m`, `1h`, `24h`, `7d`, `2w`, the time
//! picker of Segment's overview pages) or a custom `FROM..TO` in RFC 3339, within the last
//! two weeks; the previous period of the same length it is compared with; and the buckets
//! its chart is drawn in.
//!
//! Segment's picker offers "last 10 minutes, 1 hour, 24 hours, 7 days, 2 weeks, or a custom
//! date range over the last two weeks"
//! (<https://segment.com/docs/connections/delivery-overview/>); so does this one.

use anyhow::{Result, bail};
use chrono::{DateTime, Duration, DurationRound, Utc};

/// How far back a range may start: the overview keeps two weeks, as Segment's does.
pub fn max_age() -> Duration {
    Duration::weeks(2)
}

/// The presets of the time picker: (the `--range` word, its label, its length).
pub const PRESETS: [(&str, &str, i64); 5] = [
    ("10m", "Last 10 minutes", 10),
    ("1h", "Last 1 hour", 60),
    ("24h", "Last 24 hours", 24 * 60),
    ("7d", "Last 7 days", 7 * 24 * 60),
    ("2w", "Last 2 weeks", 14 * 24 * 60),
];

/// A half-open time range `[from, to)` of whole minutes, with the word it was given as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeRange {
    /// The first minute counted.
    pub from: DateTime<Utc>,
    /// The end (exclusive).
    pub to: DateTime<Utc>,
    /// The preset word (`1h`), or `FROM..TO` as given.
    pub spec: String,
}

/// `at` truncated to its minute.
pub fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::minutes(1)).unwrap_or(at)
}

impl TimeRange {
    /// Parses `spec` at `now`. A preset ends with the current minute (included); a custom
    /// range is rounded out to whole minutes. Refused, saying what to give instead: an
    /// unknown word, a timestamp that is not RFC 3339, an empty or inverted range, one
    /// that starts more than two weeks before `now`, or one that ends in the future.
    pub fn parse(spec: &str, now: DateTime<Utc>) -> Result<Self> {
        let spec = spec.trim();
        let end = minute(now) + Duration::minutes(1);
        if let Some((_, _, minutes)) = PRESETS.iter().find(|(word, _, _)| *word == spec) {
            return Ok(TimeRange {
                from: end - Duration::minutes(*minutes),
                to: end,
                spec: spec.to_owned(),
            });
        }
        let Some((from, to)) = spec.split_once("..") else {
            bail!(
                "--range {spec:?} is not a range: use 10m, 1h, 24h, 7d, 2w, or FROM..TO with RFC 3339 times (e.g. 2026-01-02T10:00:00Z..2026-01-02T12:00:00Z)"
            );
        };
        let parse = |text: &str, which: &str| -> Result<DateTime<Utc>> {
            match DateTime::parse_from_rfc3339(text.trim()) {
                Ok(t) => Ok(t.with_timezone(&Utc)),
                Err(e) => bail!(
                    "--range: the {which} time {text:?} is not an RFC 3339 time ({e}); write it like 2026-01-02T10:00:00Z"
                ),
            }
        };
        let (from, to) = (parse(from, "start")?, parse(to, "end")?);
        if from >= to {
            bail!(
                "--range {spec}: the start is not before the end; write FROM..TO with FROM earlier"
            );
        }
        let earliest = end - max_age();
        if from < earliest {
            bail!(
                "--range {spec}: it starts before {}, and the overview only covers the last two weeks; start it later",
                earliest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        if to > end {
            bail!(
                "--range {spec}: it ends in the future (after {}); end it now or earlier",
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        // Whole minutes: the volume table counts per minute.
        let from = minute(from);
        let to = if minute(to) == to {
            to
        } else {
            minute(to) + Duration::minutes(1)
        };
        Ok(TimeRange {
            from,
            to,
            spec: spec.to_owned(),
        })
    }

    /// Its length.
    pub fn length(&self) -> Duration {
        self.to - self.from
    }

    /// The period of the same length just before it, which `% change` compares with.
    pub fn previous(&self) -> TimeRange {
        TimeRange {
            from: self.from - self.length(),
            to: self.from,
            spec: format!("previous {}", self.spec),
        }
    }

    /// Whether `at` falls in it.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at < self.to
    }

    /// The width of one chart bucket: the smallest of 1 minute, 5 minutes, 15 minutes, 1
    /// hour, 6 hours and a day that keeps the chart at 168 points or fewer (10 minutes:
    /// 10 points; 1 hour: 60; 24 hours: 96; 7 days: 168; 2 weeks: 56).
    pub fn bucket(&self) -> Duration {
        let minutes = self.minutes();
        [1u64, 5, 15, 60, 360, 1440]
            .into_iter()
            .find(|b| minutes.div_ceil(*b) <= 168)
            .map(|b| Duration::minutes(b as i64))
            .unwrap_or(Duration::days(1))
    }

    /// Its length in whole minutes, at least 1.
    fn minutes(&self) -> u64 {
        u64::try_from(self.length().num_minutes())
            .unwrap_or(0)
            .max(1)
    }

    /// How many buckets the chart has.
    pub fn buckets(&self) -> usize {
        let bucket = u64::try_from(self.bucket().num_minutes())
            .unwrap_or(1)
            .max(1);
        self.minutes().div_ceil(bucket) as usize
    }

    /// The bucket `at` falls in, if it is in the range.
    pub fn bucket_of(&self, at: DateTime<Utc>) -> Option<usize> {
        if !self.contains(at) {
            return None;
        }
        let offset = (at - self.from).num_minutes();
        Some((offset / self.bucket().num_minutes()) as usize)
    }

    /// The start of bucket `i`.
    pub fn bucket_start(&self, i: usize) -> DateTime<Utc> {
        self.from + self.bucket() * i as i32
    }
}

/// The `% change` of `current` against `previous`, as Segment shows it: "new" when the
/// previous period had none, else a signed whole percentage ("+133%", "-25%", "0%").
pub fn percent_change(current: u64, previous: u64) -> String {
    if previous == 0 {
        return match current {
            0 => "0%".to_owned(),
            _ => "new".to_owned(),
        };
    }
    let change = (current as f64 - previous as f64) / previous as f64 * 100.0;
    let rounded = change.round() as i64;
    match rounded {
        0 => "0%".to_owned(),
        r if r > 0 => format!("+{r}%"),
        r => format!("{r}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn presets_end_with_the_current_minute() {
        let now = at("2026-12-02T06:30:42Z");
        let r = TimeRange::parse("10m", now).unwrap();
        assert_eq!(r.from, at("2026-12-02T06:21:00Z"));
        assert_eq!(r.to, at("2026-12-02T06:31:00Z"));
        assert!(r.contains(at("2026-12-02T06:30:00Z")));
        assert!(!r.contains(at("2026-12-02T06:20:59Z")));
        let prev = r.previous();
        assert_eq!(prev.from, at("2026-12-02T06:11:00Z"));
        assert_eq!(prev.to, r.from);
        for (word, _, minutes) in PRESETS {
            let r = TimeRange::parse(word, now).unwrap();
            assert_eq!(r.length(), Duration::minutes(minutes), "{word}");
        }
    }

    #[test]
    fn custom_ranges_round_out_to_minutes() {
        let now = at("2026-12-02T06:30:00Z");
        let r = TimeRange::parse("2026-12-02T05:00:30Z..2026-12-02T06:00:01+00:00", now).unwrap();
        assert_eq!(r.from, at("2026-12-02T05:00:00Z"));
        assert_eq!(r.to, at("2026-12-02T06:01:00Z"));
        // Another offset is converted.
        let r =
            TimeRange::parse("2026-12-02T07:00:00+02:00..2026-12-02T08:00:00+02:00", now).unwrap();
        assert_eq!(r.from, at("2026-12-02T05:00:00Z"));
    }

    #[test]
    fn refuses_old_inverted_future_and_unknown_ranges() {
        let now = at("2026-12-02T06:30:00Z");
        let err = |spec: &str| TimeRange::parse(spec, now).unwrap_err().to_string();
        assert!(
            err("3w").contains("use 10m, 1h, 24h, 7d, 2w"),
            "{}",
            err("3w")
        );
        let old = err("2026-11-01T00:00:00Z..2026-11-02T00:00:00Z");
        assert!(old.contains("last two weeks"), "{old}");
        let inverted = err("2026-12-02T06:00:00Z..2026-12-02T05:00:00Z");
        assert!(inverted.contains("not before the end"), "{inverted}");
        assert!(err("2026-12-02T06:00:00Z..2026-12-02T06:00:00Z").contains("not before"));
        assert!(err("2026-12-02T06:00:00Z..2026-12-03T06:00:00Z").contains("future"));
        assert!(err("yesterday..2026-12-02T06:00:00Z").contains("RFC 3339"));
        // Exactly two weeks back is allowed.
        TimeRange::parse("2026-11-18T06:31:00Z..2026-12-02T06:31:00Z", now).unwrap();
    }

    #[test]
    fn buckets_keep_the_chart_small() {
        let now = at("2026-12-02T06:30:00Z");
        let points = |spec| {
            let r = TimeRange::parse(spec, now).unwrap();
            (r.bucket().num_minutes(), r.buckets())
        };
        assert_eq!(points("10m"), (1, 10));
        assert_eq!(points("1h"), (1, 60));
        assert_eq!(points("24h"), (15, 96));
        assert_eq!(points("7d"), (60, 168));
        assert_eq!(points("2w"), (360, 56));
        let r = TimeRange::parse("1h", now).unwrap();
        assert_eq!(r.bucket_of(r.from), Some(0));
        assert_eq!(r.bucket_of(r.to - Duration::minutes(1)), Some(59));
        assert_eq!(r.bucket_of(r.to), None);
        let r = TimeRange::parse("24h", now).unwrap();
        assert_eq!(r.bucket_of(r.from + Duration::minutes(29)), Some(1));
        assert_eq!(r.bucket_start(1), r.from + Duration::minutes(15));
        // A custom range whose length is not a multiple of the bucket: the last is partial.
        let r = TimeRange::parse("2026-12-02T04:00:00Z..2026-12-02T06:07:00Z", now).unwrap();
        assert_eq!((r.bucket().num_minutes(), r.buckets()), (1, 127));
    }

    #[test]
    fn percent_change_is_signed_and_new_without_a_previous_period() {
        assert_eq!(percent_change(5, 0), "new");
        assert_eq!(percent_change(0, 0), "0%");
        assert_eq!(percent_change(7, 3), "+133%");
        assert_eq!(percent_change(3, 4), "-25%");
        assert_eq!(percent_change(0, 9), "-100%");
        assert_eq!(percent_change(10, 10), "0%");
        assert_eq!(percent_change(1001, 1000), "0%");
        assert_eq!(percent_change(200, 100), "+100%");
    }
}
