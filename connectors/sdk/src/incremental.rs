//! Reusable cursor logic for the three ways vendors page through changing data, kept
//! vendor-neutral so that any connector can be assembled from them:
//!
//! - [`CursorExport`]: an incremental export that hands out an opaque `after_cursor` with
//!   every page and says `end_of_stream` on the last one (Zendesk's cursor-based ticket and
//!   user exports). The last page's cursor is where the next run starts.
//! - [`TimeBoundary`]: an export that takes an inclusive `start_time` (Unix seconds) and
//!   answers with an `end_time` to start the next page from (Zendesk's time-based exports).
//!   Because the start is inclusive, the items at the boundary second come again on the
//!   next page; the boundary remembers their ids so each item lands once.
//! - [`after_cursor`]: a list paginated with `page[size]`/`page[after]` and
//!   `meta.has_more`/`meta.after_cursor` (Zendesk's cursor pagination, JSON:API style).
//!
//! Each works from the [`Envelope`] that [`crate::pagination::scan_envelope`] finds, so a
//! page is never parsed into a tree just to find where the next one starts.

use serde::{Deserialize, Serialize};

use crate::pagination::Envelope;

/// One page of a cursor-based incremental export, as its envelope describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorExport {
    /// The cursor after this page (`after_cursor`), if the vendor sent one.
    pub after_cursor: Option<String>,
    /// Whether this page reaches the present (`end_of_stream`).
    pub end_of_stream: bool,
    /// Records on this page.
    pub count: usize,
}

impl CursorExport {
    /// Reads `after_cursor` and `end_of_stream` from a page's envelope.
    pub fn from_envelope(envelope: &Envelope) -> Self {
        CursorExport {
            after_cursor: envelope.string("after_cursor"),
            end_of_stream: envelope.flag("end_of_stream"),
            count: envelope.count,
        }
    }

    /// Whether the export is caught up after this page, read from `position`: the vendor
    /// says so, or it gave no cursor to go on with, or an empty page that does not move
    /// (so a vendor that never says `end_of_stream` cannot make us loop). An empty page
    /// with a new cursor is not the end: Zendesk can answer `[]` with `end_of_stream`
    /// false and a cursor further on (a stretch of changes the export leaves out), and
    /// stopping there would drain a backlog one page per run.
    pub fn caught_up(&self, position: Option<&str>) -> bool {
        self.end_of_stream
            || self.after_cursor.is_none()
            || (self.count == 0 && self.after_cursor.as_deref() == position)
    }
}

/// The `meta.after_cursor` to request the next page of a cursor-paginated list with, or
/// `None` on the last page (`meta.has_more` false, or an empty page).
pub fn after_cursor(envelope: &Envelope) -> Option<String> {
    if envelope.count == 0 || !envelope.flag("meta.has_more") {
        return None;
    }
    envelope.string("meta.after_cursor")
}

/// Where a time-based export resumes: the inclusive `start_time` of the next request and
/// the ids already landed at exactly that second.
///
/// Guarantee: fed every page in order, [`TimeBoundary::advance`] keeps each item version
/// once. It relies on what such exports promise: items are ordered by time, and no item
/// gets a time at or before a boundary once the vendor has shown that boundary (Zendesk
/// holds back the most recent minute for this reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeBoundary {
    /// The `start_time` of the next request (Unix seconds, inclusive).
    pub start_time: i64,
    /// Ids landed whose time is exactly `start_time`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

/// What one page did to a [`TimeBoundary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// Indices (into the page's items) of the items to land: all but those already seen.
    pub keep: Vec<usize>,
    /// The boundary after the page.
    pub next: TimeBoundary,
    /// Whether the page moved anything: an item to land, or a later boundary. A page that
    /// did not, and is not the end of the stream, holds more items at one second than the
    /// vendor pages at once: see [`TimeBoundary::past_second`].
    pub progressed: bool,
}

impl TimeBoundary {
    /// A boundary at `start_time`, nothing seen.
    pub fn new(start_time: i64) -> Self {
        TimeBoundary {
            start_time,
            seen: Vec::new(),
        }
    }

    /// Applies one page: its items as `(id, time)` in the vendor's order, and the page's
    /// `end_time` if it sent one.
    pub fn advance(&self, items: &[(String, i64)], end_time: Option<i64>) -> Advance {
        let keep: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, (id, time))| !(*time == self.start_time && self.seen.contains(id)))
            .map(|(i, _)| i)
            .collect();
        let latest = items.iter().map(|(_, time)| *time).max();
        let start_time = [Some(self.start_time), latest, end_time]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.start_time);
        let mut seen: Vec<String> = if start_time == self.start_time {
            self.seen.clone()
        } else {
            Vec::new()
        };
        for (id, time) in items {
            if *time == start_time && !seen.contains(id) {
                seen.push(id.clone());
            }
        }
        let progressed = !keep.is_empty() || start_time > self.start_time;
        Advance {
            keep,
            next: TimeBoundary { start_time, seen },
            progressed,
        }
    }

    /// The boundary one second later, for a page that made no progress: the vendor showed
    /// every item of the boundary second at once (that is how such exports page past a
    /// second holding more items than a page), and all were seen.
    pub fn past_second(&self) -> TimeBoundary {
        TimeBoundary::new(self.start_time.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pagination::scan_envelope;

    fn items(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|(id, t)| ((*id).to_owned(), *t)).collect()
    }

    #[test]
    fn cursor_exports_stop_at_the_end_of_the_stream() {
        let body = br#"{"tickets":[{"id":1},{"id":2}],"after_url":"x","after_cursor":"MTA=","before_cursor":null,"end_of_stream":false}"#;
        let page = CursorExport::from_envelope(&scan_envelope(body, "tickets", "id").unwrap());
        assert_eq!(page.after_cursor.as_deref(), Some("MTA="));
        assert!(!page.end_of_stream && !page.caught_up(None));
        assert_eq!(page.count, 2);
        let last = br#"{"tickets":[{"id":3}],"after_cursor":"MTE=","end_of_stream":true}"#;
        let page = CursorExport::from_envelope(&scan_envelope(last, "tickets", "id").unwrap());
        assert!(page.caught_up(Some("MTA=")));
        assert_eq!(page.after_cursor.as_deref(), Some("MTE="));
        let empty = br#"{"tickets":[],"after_cursor":null,"end_of_stream":false}"#;
        let page = CursorExport::from_envelope(&scan_envelope(empty, "tickets", "id").unwrap());
        assert!(page.caught_up(Some("MTE=")), "no cursor to go on with");
        let still = br#"{"tickets":[],"after_cursor":"MTE=","end_of_stream":false}"#;
        let page = CursorExport::from_envelope(&scan_envelope(still, "tickets", "id").unwrap());
        assert!(
            page.caught_up(Some("MTE=")),
            "an empty page that does not move never loops"
        );
        let on = br#"{"tickets":[],"after_cursor":"MTI=","end_of_stream":false}"#;
        let page = CursorExport::from_envelope(&scan_envelope(on, "tickets", "id").unwrap());
        assert!(
            !page.caught_up(Some("MTE=")),
            "an empty page further on goes on"
        );
    }

    #[test]
    fn after_cursor_follows_has_more() {
        let more = br#"{"groups":[{"id":1}],"meta":{"has_more":true,"after_cursor":"xyz","before_cursor":"abc"},"links":{"next":"u"}}"#;
        let env = scan_envelope(more, "groups", "id").unwrap();
        assert_eq!(after_cursor(&env).as_deref(), Some("xyz"));
        let last = br#"{"groups":[{"id":1}],"meta":{"has_more":false,"after_cursor":"xyz"}}"#;
        assert_eq!(
            after_cursor(&scan_envelope(last, "groups", "id").unwrap()),
            None
        );
        let empty = br#"{"groups":[],"meta":{"has_more":true,"after_cursor":"xyz"}}"#;
        assert_eq!(
            after_cursor(&scan_envelope(empty, "groups", "id").unwrap()),
            None
        );
    }

    #[test]
    fn a_boundary_lands_each_item_once_across_inclusive_pages() {
        let start = TimeBoundary::new(100);
        // Page 1 ends at second 105, where a and b sit.
        let one = start.advance(&items(&[("x", 100), ("a", 105), ("b", 105)]), Some(105));
        assert_eq!(one.keep, [0, 1, 2]);
        assert_eq!(one.next.start_time, 105);
        assert_eq!(one.next.seen, ["a", "b"]);
        assert!(one.progressed);
        // Page 2 starts at 105 inclusive: a and b come again, c is new.
        let two = one.next.advance(
            &items(&[("a", 105), ("b", 105), ("c", 105), ("d", 107)]),
            Some(107),
        );
        assert_eq!(two.keep, [2, 3]);
        assert_eq!(
            two.next,
            TimeBoundary {
                start_time: 107,
                seen: vec!["d".into()]
            }
        );
        // A later version of a seen item (a new time) is kept.
        let three = two
            .next
            .advance(&items(&[("d", 107), ("a", 109)]), Some(109));
        assert_eq!(three.keep, [1]);
        // Nothing new: the boundary stays, seen ids and all.
        let idle = three.next.advance(&[], None);
        assert!(idle.keep.is_empty() && !idle.progressed);
        assert_eq!(idle.next, three.next);
    }

    #[test]
    fn a_stuck_second_is_passed() {
        let at = TimeBoundary {
            start_time: 50,
            seen: vec!["a".into(), "b".into()],
        };
        let page = at.advance(&items(&[("a", 50), ("b", 50)]), Some(50));
        assert!(!page.progressed);
        assert_eq!(at.past_second(), TimeBoundary::new(51));
    }

    #[test]
    fn boundaries_round_trip_and_omit_an_empty_seen_list() {
        let b = TimeBoundary {
            start_time: 7,
            seen: vec!["1".into()],
        };
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json, serde_json::json!({"start_time": 7, "seen": ["1"]}));
        assert_eq!(serde_json::from_value::<TimeBoundary>(json).unwrap(), b);
        assert_eq!(
            serde_json::to_value(TimeBoundary::new(3)).unwrap(),
            serde_json::json!({"start_time": 3})
        );
    }
}
