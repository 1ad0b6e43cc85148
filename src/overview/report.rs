//! The Source Overview's numbers: per source, the breakdown Segment shows (event type,
//! event name for tracks, event count, and % change against the previous period of the
//! same length), records per collection for object sources and reverse-ETL models, and the
//! volume series of its chart; and their text form for `tributary overview`.
//!
//! Segment's breakdown table has "Event type", "Event name", "Event count" and "% Change:
//! how the event counts differ from the last comparable time range as a percentage"
//! (<https://segment.com/docs/connections/delivery-overview/#breakdown-table>).
//!
//! Counts come from the volume table ([`super::volume`]); stream runs that started before
//! that table existed are counted from the run log ([`crate::runs`]) instead, at the
//! minute they ended.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::range::{TimeRange, minute, percent_change};
use super::volume::{self, EVENT_KINDS, RECORDS, Sums, VolumeRow};
use crate::runs::RUNS_TABLE;
use crate::warehouse::Warehouse;
use crate::warehouse::merge::live_rows;

/// What a source sends: events (an event-stream source) or records (objects of a
/// cloud-app source, rows of a reverse-ETL model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Tracking-API calls.
    Events,
    /// Objects per collection.
    Records,
}

/// One line of a source's breakdown table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakdownRow {
    /// The event type (`track`, `identify`, …) or `records`.
    pub kind: String,
    /// The event name of a track, the collection (stream or model) of records.
    pub name: Option<String>,
    /// The count in the range.
    pub count: u64,
    /// The count in the previous period of the same length.
    pub previous: u64,
}

impl BreakdownRow {
    /// `% change` against the previous period ("new" when it had none).
    pub fn change(&self) -> String {
        percent_change(self.count, self.previous)
    }
}

/// One source's overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOverview {
    /// The source's name.
    pub name: String,
    /// Events or records.
    pub kind: SourceKind,
    /// The breakdown, largest count first.
    pub rows: Vec<BreakdownRow>,
    /// Per kind (event type, or `records`), the count of each chart bucket of the range.
    pub series: Vec<(String, Vec<u64>)>,
    /// Everything in the range, and in the previous period.
    pub total: u64,
    /// Everything in the previous period.
    pub previous_total: u64,
}

impl SourceOverview {
    /// `% change` of the whole source.
    pub fn change(&self) -> String {
        percent_change(self.total, self.previous_total)
    }
}

/// The overview of every source (or one) over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    /// The range shown.
    pub range: TimeRange,
    /// The sources, configured ones first (in config order), then any other the volume
    /// table names.
    pub sources: Vec<SourceOverview>,
}

/// Builds the overview of `range` for the sources `configured` plus any other with
/// volume (or `only` that one). An `only` that is neither configured nor has volume in
/// the table is refused, naming the sources there are.
pub async fn build(
    warehouse: &Warehouse,
    configured: &[(String, SourceKind)],
    range: &TimeRange,
    only: Option<&str>,
) -> Result<Overview> {
    let previous = range.previous();
    let buckets = range.buckets();
    let mut current = Sums::default();
    let mut before = Sums::default();
    let mut add = |row: VolumeRow| {
        if range.contains(row.minute) {
            let b = range.bucket_of(row.minute);
            current.add(row, b, buckets);
        } else if previous.contains(row.minute) {
            before.add(row, None, 0);
        }
    };
    volume::scan(warehouse, previous.from, range.to, only, &mut add).await?;
    if let Some(cutoff) = volume::fallback_before(warehouse).await? {
        run_log(warehouse, previous.from, range.to, cutoff, only, &mut add).await?;
    }
    let mut names: Vec<String> = configured
        .iter()
        .map(|(n, _)| n)
        .filter(|n| only.is_none_or(|o| o == n.as_str()))
        .cloned()
        .collect();
    let seen: BTreeSet<&String> = current
        .totals
        .keys()
        .chain(before.totals.keys())
        .map(|(s, _, _)| s)
        .collect();
    for s in seen {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    if let Some(o) = only
        && names.is_empty()
    {
        bail!(
            "there is no source `{o}`: it is not in the config and has no volume in the warehouse{}",
            match configured.is_empty() {
                true => String::new(),
                false => format!(
                    " (configured: {})",
                    configured
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        );
    }
    let sources = names
        .into_iter()
        .map(|name| {
            let declared = configured.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
            source_overview(name, declared, &current, &before, buckets)
        })
        .collect();
    Ok(Overview {
        range: range.clone(),
        sources,
    })
}

/// `declared`: what the config says the source sends; else what its volume shows.
fn source_overview(
    name: String,
    declared: Option<SourceKind>,
    current: &Sums,
    before: &Sums,
    buckets: usize,
) -> SourceOverview {
    let of = |sums: &Sums| -> Vec<(String, Option<String>, u64)> {
        sums.totals
            .iter()
            .filter(|((s, _, _), _)| *s == name)
            .map(|((_, k, n), c)| (k.clone(), n.clone(), *c))
            .collect()
    };
    let (now, then) = (of(current), of(before));
    let events = match declared {
        Some(kind) => kind == SourceKind::Events,
        None => now
            .iter()
            .chain(&then)
            .any(|(k, _, _)| EVENT_KINDS.contains(&k.as_str())),
    };
    // The event name is a track's only.
    let key = |kind: &str, name: &Option<String>| {
        let name = match kind == "track" || kind == RECORDS {
            true => name.clone(),
            false => None,
        };
        (kind.to_owned(), name)
    };
    let mut rows: BTreeMap<(String, Option<String>), (u64, u64)> = BTreeMap::new();
    for (k, n, c) in &now {
        rows.entry(key(k, n)).or_default().0 += c;
    }
    for (k, n, c) in &then {
        rows.entry(key(k, n)).or_default().1 += c;
    }
    let mut rows: Vec<BreakdownRow> = rows
        .into_iter()
        .map(|((kind, name), (count, previous))| BreakdownRow {
            kind,
            name,
            count,
            previous,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| kind_order(&a.kind).cmp(&kind_order(&b.kind)))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut series: Vec<(String, Vec<u64>)> = current
        .series
        .iter()
        .filter(|((s, _), _)| *s == name)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect();
    series.sort_by_key(|(k, _)| kind_order(k));
    if series.is_empty() {
        series.push((
            match events {
                true => "track".to_owned(),
                false => RECORDS.to_owned(),
            },
            vec![0; buckets],
        ));
    }
    SourceOverview {
        kind: match events {
            true => SourceKind::Events,
            false => SourceKind::Records,
        },
        total: rows.iter().map(|r| r.count).sum(),
        previous_total: rows.iter().map(|r| r.previous).sum(),
        name,
        rows,
        series,
    }
}

/// Segment's order of the calls, then `records`.
fn kind_order(kind: &str) -> usize {
    EVENT_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(EVENT_KINDS.len())
}

/// Feeds `visit` the stream runs of the run log that started before `cutoff` and ended in
/// `[from, to)`, as `records` rows at the minute they ended.
async fn run_log(
    warehouse: &Warehouse,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    only: Option<&str>,
    visit: &mut impl FnMut(VolumeRow),
) -> Result<()> {
    let Some(table) = warehouse.open(&RUNS_TABLE).await? else {
        return Ok(());
    };
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, true),
        Field::new("stream", DataType::Utf8, true),
        Field::new("started_at", ts.clone(), true),
        Field::new("ended_at", ts, true),
        Field::new("records", DataType::Int64, true),
    ]));
    let snapshot = table.snapshot()?;
    let files: Vec<(String, i64)> = snapshot
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.size()))
        .collect();
    let store = table.object_store();
    for (path, size) in files {
        let mut batches = live_rows(&store, &path, size, None, schema.clone()).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let sources = batch.column(0).as_string::<i32>();
            let streams = batch.column(1).as_string::<i32>();
            let started = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            let ended = batch.column(3).as_primitive::<TimestampMicrosecondType>();
            let records = batch.column(4).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                if [sources.is_null(i), streams.is_null(i), records.is_null(i)]
                    .into_iter()
                    .any(|n| n)
                    || started.is_null(i)
                    || ended.is_null(i)
                    || records.value(i) <= 0
                {
                    continue;
                }
                let (Some(start), Some(end)) = (
                    DateTime::from_timestamp_micros(started.value(i)),
                    DateTime::from_timestamp_micros(ended.value(i)),
                ) else {
                    continue;
                };
                let end = minute(end);
                if start >= cutoff || end < from || end >= to {
                    continue;
                }
                if only.is_some_and(|o| o != sources.value(i)) {
                    continue;
                }
                visit(VolumeRow {
                    minute: end,
                    source: sources.value(i).to_owned(),
                    kind: RECORDS.to_owned(),
                    name: Some(streams.value(i).to_owned()),
                    count: records.value(i) as u64,
                });
            }
        }
    }
    Ok(())
}

/// A name (user- or vendor-controlled) safe to print on a terminal: control characters
/// (escape sequences) are shown escaped.
pub fn printable(name: &str) -> String {
    name.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

/// How a time is shown: RFC 3339 to the second, UTC.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The text `tributary overview` prints.
pub fn text(overview: &Overview) -> String {
    let range = &overview.range;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Source Overview, {} .. {} ({}), % change against {} .. {}",
        time(range.from),
        time(range.to),
        range.spec,
        time(range.previous().from),
        time(range.from)
    );
    if overview.sources.is_empty() {
        let _ = writeln!(out, "\nNo sources configured and no volume recorded.");
    }
    for s in &overview.sources {
        let _ = writeln!(out);
        let (what, name_header) = match s.kind {
            SourceKind::Events => ("events", "event name"),
            SourceKind::Records => ("records", "collection"),
        };
        let _ = writeln!(
            out,
            "{}: {} {what} ({} against the previous period)",
            printable(&s.name),
            s.total,
            s.change()
        );
        if s.rows.is_empty() {
            let _ = writeln!(out, "  no {what} in this range or the one before");
            continue;
        }
        let names: Vec<String> = s
            .rows
            .iter()
            .map(|r| printable(r.name.as_deref().unwrap_or("-")))
            .collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .chain([name_header.len()])
            .max()
            .unwrap_or(0)
            .min(60);
        let count_header = match s.kind {
            SourceKind::Events => "event count",
            SourceKind::Records => "records",
        };
        let _ = writeln!(
            out,
            "  {:<10} {:<width$} {:>12} {:>9}",
            "event type", name_header, count_header, "% change"
        );
        for (r, name) in s.rows.iter().zip(names) {
            let _ = writeln!(
                out,
                "  {:<10} {:<width$} {:>12} {:>9}",
                r.kind,
                name,
                r.count,
                r.change()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn row(minute: &str, source: &str, kind: &str, name: Option<&str>, count: u64) -> VolumeRow {
        VolumeRow {
            minute: at(minute),
            source: source.into(),
            kind: kind.into(),
            name: name.map(str::to_owned),
            count,
        }
    }

    #[tokio::test]
    async fn the_breakdown_compares_with_the_previous_period_and_names_tracks_only() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        volume::append(
            &w,
            &[
                // The previous hour.
                row("2026-12-02T05:10:00Z", "web", "track", Some("Signed Up"), 3),
                row("2026-12-02T05:20:00Z", "web", "identify", None, 4),
                row("2026-12-02T05:30:00Z", "web", "page", None, 2),
                // The range.
                row("2026-12-02T06:00:00Z", "web", "track", Some("Signed Up"), 7),
                row(
                    "2026-12-02T06:05:00Z",
                    "web",
                    "track",
                    Some("Order Completed"),
                    1,
                ),
                row(
                    "2026-12-02T06:10:00Z",
                    "web",
                    "identify",
                    Some("ignored"),
                    3,
                ),
                row(
                    "2026-12-02T06:11:00Z",
                    "stripe",
                    "records",
                    Some("charges"),
                    40,
                ),
                row(
                    "2026-12-02T06:12:00Z",
                    "stripe",
                    "records",
                    Some("customers"),
                    10,
                ),
            ],
        )
        .await
        .unwrap();
        let range = TimeRange::parse(
            "2026-12-02T06:00:00Z..2026-12-02T07:00:00Z",
            at("2026-12-02T08:00:00Z"),
        )
        .unwrap();
        let configured = vec![
            ("stripe".to_owned(), SourceKind::Records),
            ("zendesk".to_owned(), SourceKind::Records),
        ];
        let o = build(&w, &configured, &range, None).await.unwrap();
        let names: Vec<&str> = o.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stripe", "zendesk", "web"]);
        let web = &o.sources[2];
        assert_eq!(web.kind, SourceKind::Events);
        let lines: Vec<(&str, Option<&str>, u64, String)> = web
            .rows
            .iter()
            .map(|r| (r.kind.as_str(), r.name.as_deref(), r.count, r.change()))
            .collect();
        assert_eq!(
            lines,
            [
                ("track", Some("Signed Up"), 7, "+133%".to_owned()),
                ("identify", None, 3, "-25%".to_owned()),
                ("track", Some("Order Completed"), 1, "new".to_owned()),
                ("page", None, 0, "-100%".to_owned()),
            ]
        );
        assert_eq!((web.total, web.previous_total), (11, 9));
        let kinds: Vec<&str> = web.series.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["track", "identify"]);
        assert_eq!(web.series[0].1[0], 7);
        let stripe = &o.sources[0];
        assert_eq!(stripe.kind, SourceKind::Records);
        assert_eq!(stripe.total, 50);
        assert_eq!(stripe.rows[0].name.as_deref(), Some("charges"));
        let zendesk = &o.sources[1];
        assert_eq!((zendesk.total, zendesk.rows.len()), (0, 0));
        assert_eq!(zendesk.series[0].1.len(), 60);

        let text = text(&o);
        assert!(text.contains("web: 11 events (+22% against"), "{text}");
        assert!(text.contains("charges"), "{text}");
        assert!(text.contains("no records in this range"), "{text}");

        let only = build(&w, &configured, &range, Some("web")).await.unwrap();
        assert_eq!(only.sources.len(), 1);
        let err = build(&w, &configured, &range, Some("nope"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("configured: stripe, zendesk"), "{err}");
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        assert_eq!(printable("Order <Completed>"), "Order <Completed>");
    }
}
