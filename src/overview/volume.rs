//! The volume table: how many events or records each source landed, per minute, in a small
//! append-only Delta table at `<warehouse>/_tributary/volume/`. The Source Overview reads
//! its counts here, never by scanning the data tables.
//!
//! Columns: `minute` (UTC, truncated to the minute), `source`, `kind` (`track`,
//! `identify`, `page`, `screen`, `group`, `alias` for event-stream sources; `records` for
//! object sources and reverse-ETL models), `name` (the event name of a track, the stream
//! or model of `records`; null otherwise) and `count`.
//!
//! Guarantees:
//! - **Blind appends.** Each [`append`] is one data file and one commit that only adds it,
//!   so several processes (collectors, syncs, workers) append at once without conflicting:
//!   a commit that loses the race for a log version is retried at the next one.
//! - **Cheap.** A sync appends once per stream run (its records per minute of commit), a
//!   collector once per merge of its spool; `compact` merges the small files.
//! - Counts are what landed: a sync counts the records of its commits, at the minute each
//!   commit landed. Appends are not idempotent: a row appended twice counts twice, so an
//!   appender records a batch once, after its commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::engine::StreamOutcome;
use crate::warehouse::merge::live_rows;
use crate::warehouse::{DataFile, Warehouse, writer_properties};

use super::range::minute;

/// The volume table's path below the warehouse root.
pub const VOLUME_TABLE: [&str; 2] = ["_tributary", "volume"];

/// The kinds of event-stream sources, as Segment names its calls.
pub const EVENT_KINDS: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// The kind of object sources' and reverse-ETL models' rows.
pub const RECORDS: &str = "records";

/// One row of the volume table: `count` events or records of one kind (and name) that one
/// source landed within one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// The minute (truncated by [`append`] if it is not).
    pub minute: DateTime<Utc>,
    /// The source's name.
    pub source: String,
    /// `track`, `identify`, `page`, `screen`, `group`, `alias`, or `records`.
    pub kind: String,
    /// The event name of a `track`; the stream, collection or model of `records`.
    pub name: Option<String>,
    /// How many.
    pub count: u64,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("source", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("count", DataType::Int64, true),
    ]))
}

/// Creates the volume table if it does not exist yet. A sync calls it before its streams
/// start, so that every stream run that began after the table existed has its volume in
/// it, and the run log stands in only for runs that began before (see
/// [`fallback_before`]).
pub async fn ensure(warehouse: &Warehouse) -> Result<()> {
    warehouse
        .open_or_create(&VOLUME_TABLE, &schema())
        .await
        .context("creating the volume table")?;
    Ok(())
}

/// Appends `rows` (rows with a zero count are left out) in one blind-append commit;
/// nothing when none is left. Safe while other processes append.
pub async fn append(warehouse: &Warehouse, rows: &[VolumeRow]) -> Result<()> {
    let rows: Vec<&VolumeRow> = rows.iter().filter(|r| r.count > 0).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let schema = schema();
    let minutes: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from_iter_values(
            rows.iter().map(|r| minute(r.minute).timestamp_micros()),
        )
        .with_timezone("UTC"),
    );
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            minutes,
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.kind.as_str()),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.name.as_deref()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter()
                    .map(|r| i64::try_from(r.count).unwrap_or(i64::MAX)),
            )),
        ],
    )?;
    let table = warehouse
        .open_or_create(&VOLUME_TABLE, &schema)
        .await
        .context("opening the volume table")?;
    let mut file = DataFile::create(&table, schema.clone(), writer_properties(65_536)?, None)?;
    file.write(&batch).await?;
    let add = file.finish().await?.add;
    // A blind append: delta-rs retries it at the next version when another writer took
    // this one, as the run log's appends.
    CommitBuilder::from(CommitProperties::default())
        .with_actions(vec![Action::Add(add)])
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .context("committing to the volume table")?;
    Ok(())
}

/// The volume rows of one stream run: the records of its commits per minute they landed
/// (kind `records`, named after the stream, or the model of a reverse-ETL run). A run
/// that counted no minutes but landed records (a reverse-ETL run) counts them at its end.
pub fn rows_of(outcome: &StreamOutcome) -> Vec<VolumeRow> {
    let row = |at: DateTime<Utc>, count: u64| VolumeRow {
        minute: minute(at),
        source: outcome.source.clone(),
        kind: RECORDS.to_owned(),
        name: Some(outcome.stream.clone()),
        count,
    };
    if outcome.landed_per_minute.is_empty() {
        return match outcome.records {
            0 => Vec::new(),
            n => vec![row(outcome.ended_at, n)],
        };
    }
    outcome
        .landed_per_minute
        .iter()
        .map(|(at, n)| row(*at, *n))
        .collect()
}

/// Appends the volume of `outcomes` (see [`rows_of`]); a failure is logged, not returned:
/// the data and cursors are committed, and the overview is only short of these counts.
pub async fn record(warehouse: &Warehouse, outcomes: &[StreamOutcome]) {
    let rows: Vec<VolumeRow> = outcomes.iter().flat_map(rows_of).collect();
    if let Err(e) = append(warehouse, &rows).await {
        tracing::warn!(error = %format!("{e:#}"), rows = rows.len(), "Could not append to the volume table; the Source Overview will not count these records.");
    }
}

/// The collector's side of the volume table: [`Recorder::start`] gives the hook the
/// collector's committer calls after each round of commits
/// ([`crate::collector::landing::Committer::on_volume`]) and appends what it was handed
/// in the background, one blind append a second at most, so a round never waits for it.
///
/// Memory is bounded by the distinct (minute, source, call type, event name) keys of the
/// rounds not appended yet: a second's worth while the table is reachable, and never more
/// than [`Recorder::MAX_PENDING_KEYS`] (past that, counts are dropped with a warning).
/// A collector killed between a round's commits and the next append loses those counts
/// (the events themselves are landed): the overview is short by them, never over.
pub struct Recorder {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

type PendingCounts = BTreeMap<(DateTime<Utc>, String, String, Option<String>), u64>;

impl Recorder {
    /// The most keys held while appends fail.
    pub const MAX_PENDING_KEYS: usize = 100_000;

    /// Starts appending the counts the returned hook receives to `warehouse`'s volume
    /// table.
    pub fn start(warehouse: Warehouse) -> (crate::collector::landing::VolumeHook, Recorder) {
        let pending: Arc<std::sync::Mutex<PendingCounts>> = Arc::default();
        let wake = Arc::new(tokio::sync::Notify::new());
        let hook = {
            let pending = pending.clone();
            let wake = wake.clone();
            Box::new(
                move |counts: &BTreeMap<crate::collector::landing::VolumeKey, u64>| {
                    let Ok(mut p) = pending.lock() else {
                        return;
                    };
                    for (k, n) in counts {
                        let key = (
                            minute(k.minute),
                            k.source.clone(),
                            k.call.to_owned(),
                            k.event.clone(),
                        );
                        if p.len() >= Self::MAX_PENDING_KEYS && !p.contains_key(&key) {
                            tracing::warn!(
                                source = %k.source,
                                count = n,
                                "The volume table is unreachable and too many counts wait; the Source Overview will not count these events."
                            );
                            continue;
                        }
                        *p.entry(key).or_default() += n;
                    }
                    drop(p);
                    wake.notify_one();
                },
            ) as crate::collector::landing::VolumeHook
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                // A dropped sender (a Recorder dropped unfinished) stops it too.
                let stopping = *stopped.borrow() || stopped.has_changed().is_err();
                if !stopping {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = stopped.changed() => {}
                    }
                    // Gather a second of rounds into one append.
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = stopped.changed() => {}
                    }
                }
                let taken = match pending.lock() {
                    Ok(mut p) => std::mem::take(&mut *p),
                    Err(_) => return,
                };
                let rows: Vec<VolumeRow> = taken
                    .iter()
                    .map(|((minute, source, kind, name), count)| VolumeRow {
                        minute: *minute,
                        source: source.clone(),
                        kind: kind.clone(),
                        name: name.clone(),
                        count: *count,
                    })
                    .collect();
                match append(&warehouse, &rows).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %format!("{e:#}"), rows = rows.len(), failures, "Could not append to the volume table; trying again.");
                        if let Ok(mut p) = pending.lock() {
                            for (k, n) in taken {
                                *p.entry(k).or_default() += n;
                            }
                        }
                        if stopping && failures >= 3 {
                            tracing::error!(
                                "Stopping without appending some counts to the volume table; the Source Overview will be short by them."
                            );
                            return;
                        }
                        wake.notify_one();
                        tokio::time::sleep(std::time::Duration::from_millis(
                            (500u64 << failures.min(6)).min(30_000),
                        ))
                        .await;
                        continue;
                    }
                }
                if stopping {
                    return;
                }
            }
        });
        (hook, Recorder { stop, task })
    }

    /// Appends what is pending and stops. Call it after the committer's last round.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The run log stands in for the volume of stream runs that started before this instant:
/// the volume table's creation (its first commit), since every sync creates the table
/// before its streams start (see [`ensure`]). Far in the future when there is no volume
/// table yet (every run counts from the run log); `None` when its first commit is no
/// longer in the log (a table that old covers the two weeks the overview shows).
pub async fn fallback_before(warehouse: &Warehouse) -> Result<Option<DateTime<Utc>>> {
    let Some(table) = warehouse.open(&VOLUME_TABLE).await? else {
        return Ok(Some(DateTime::<Utc>::MAX_UTC));
    };
    let store = table.object_store();
    let first = object_store::path::Path::from("_delta_log/00000000000000000000.json");
    let bytes = match store.get(&first).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e).context("reading the volume table's first commit"),
    };
    for line in String::from_utf8_lossy(&bytes).lines() {
        let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ms = action
            .pointer("/commitInfo/timestamp")
            .or_else(|| action.pointer("/metaData/createdTime"))
            .and_then(|v| v.as_i64());
        if let Some(ms) = ms {
            return Ok(DateTime::from_timestamp_millis(ms));
        }
    }
    Ok(None)
}

/// Calls `visit` with every row of the volume table whose minute is in `[from, to)` and
/// whose source is `only` (when given). Files whose `minute` statistics lie outside the
/// range are not read; memory is one Parquet batch at a time.
pub async fn scan(
    warehouse: &Warehouse,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    only: Option<&str>,
    mut visit: impl FnMut(VolumeRow),
) -> Result<()> {
    let Some(table) = warehouse.open(&VOLUME_TABLE).await? else {
        return Ok(());
    };
    let snapshot = table.snapshot()?;
    let files: Vec<(String, i64, Option<String>)> = snapshot
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.size(), f.stats()))
        .collect();
    let store = table.object_store();
    let schema = schema();
    let (lo, hi) = (from.timestamp_micros(), to.timestamp_micros());
    for (path, size, stats) in files {
        if let Some((min, max)) = minute_range(stats.as_deref())
            && (max < lo || min >= hi)
        {
            continue;
        }
        let mut batches = live_rows(&store, &path, size, None, schema.clone()).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let minutes = batch.column(0).as_primitive::<TimestampMicrosecondType>();
            let sources = batch.column(1).as_string::<i32>();
            let kinds = batch.column(2).as_string::<i32>();
            let names = batch.column(3).as_string::<i32>();
            let counts = batch
                .column(4)
                .as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..batch.num_rows() {
                if minutes.is_null(i) || sources.is_null(i) || kinds.is_null(i) {
                    continue;
                }
                let micros = minutes.value(i);
                if micros < lo || micros >= hi {
                    continue;
                }
                let source = sources.value(i);
                if only.is_some_and(|s| s != source) {
                    continue;
                }
                let Some(minute) = DateTime::from_timestamp_micros(micros) else {
                    continue;
                };
                visit(VolumeRow {
                    minute,
                    source: source.to_owned(),
                    kind: kinds.value(i).to_owned(),
                    name: (!names.is_null(i)).then(|| names.value(i).to_owned()),
                    count: u64::try_from(counts.value(i)).unwrap_or(0),
                });
            }
        }
    }
    Ok(())
}

/// The `[min, max]` of a file's `minute` column (microseconds) from its statistics.
fn minute_range(stats: Option<&str>) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let at = |values: &str| {
        let text = v.get(values)?.get("minute")?.as_str()?;
        Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()?
                .timestamp_micros(),
        )
    };
    Some((at("minValues")?, at("maxValues")?))
}

/// Counts summed per (source, kind, name) and per chart bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    /// Per (source, kind, name).
    pub totals: BTreeMap<(String, String, Option<String>), u64>,
    /// Per source and kind, the count of each bucket.
    pub series: BTreeMap<(String, String), Vec<u64>>,
}

impl Sums {
    /// Adds `row` to a sum of `buckets` buckets, in bucket `bucket` when it has one.
    pub fn add(&mut self, row: VolumeRow, bucket: Option<usize>, buckets: usize) {
        if let Some(b) = bucket {
            let series = self
                .series
                .entry((row.source.clone(), row.kind.clone()))
                .or_insert_with(|| vec![0; buckets]);
            if let Some(slot) = series.get_mut(b) {
                *slot += row.count;
            }
        }
        *self
            .totals
            .entry((row.source, row.kind, row.name))
            .or_default() += row.count;
    }
}

/// Sums the volume rows of `range` (per source, kind and name, and per bucket of the
/// range's chart), for one source or all.
pub async fn sum(
    warehouse: &Warehouse,
    range: &super::range::TimeRange,
    only: Option<&str>,
) -> Result<Sums> {
    if range.from >= range.to {
        bail!("an empty time range");
    }
    let mut sums = Sums::default();
    let buckets = range.buckets();
    scan(warehouse, range.from, range.to, only, |row| {
        let b = range.bucket_of(row.minute);
        sums.add(row, b, buckets);
    })
    .await?;
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WarehouseConfig;
    use crate::overview::range::TimeRange;

    fn warehouse(dir: &tempfile::TempDir) -> Warehouse {
        Warehouse::new(&WarehouseConfig {
            url: dir.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn row(minute: &str, source: &str, kind: &str, name: Option<&str>, count: u64) -> VolumeRow {
        VolumeRow {
            minute: DateTime::parse_from_rfc3339(minute).unwrap().to_utc(),
            source: source.into(),
            kind: kind.into(),
            name: name.map(str::to_owned),
            count,
        }
    }

    #[tokio::test]
    async fn appends_of_every_event_kind_sum_per_name_and_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let w = warehouse(&dir);
        assert_eq!(
            fallback_before(&w).await.unwrap(),
            Some(DateTime::<Utc>::MAX_UTC)
        );
        let mut rows = vec![
            row(
                "2026-12-02T06:00:10Z",
                "web",
                "track",
                Some("Order Completed"),
                3,
            ),
            row(
                "2026-12-02T06:00:00Z",
                "web",
                "track",
                Some("<script>x</script>"),
                1,
            ),
            row(
                "2026-12-02T06:01:00Z",
                "web",
                "track",
                Some("Order Completed"),
                2,
            ),
            row(
                "2026-12-02T06:59:00Z",
                "stripe",
                "records",
                Some("charges"),
                7,
            ),
            // Outside the range, and a zero count: neither is counted.
            row(
                "2026-12-02T07:00:00Z",
                "web",
                "track",
                Some("Order Completed"),
                100,
            ),
            row("2026-12-02T06:02:00Z", "web", "track", Some("Zero"), 0),
        ];
        for kind in EVENT_KINDS.iter().skip(1) {
            rows.push(row("2026-12-02T06:30:00Z", "web", kind, None, 1));
        }
        // Two appends at once: both land.
        let (a, b) = rows.split_at(3);
        let (ra, rb) = tokio::join!(append(&w, a), append(&w, b));
        ra.unwrap();
        rb.unwrap();
        let created = fallback_before(&w).await.unwrap().unwrap();
        assert!(created <= Utc::now() && created > Utc::now() - chrono::Duration::minutes(5));

        let range = TimeRange::parse(
            "2026-12-02T06:00:00Z..2026-12-02T07:00:00Z",
            DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")
                .unwrap()
                .to_utc(),
        )
        .unwrap();
        let sums = sum(&w, &range, None).await.unwrap();
        let total = |s: &str, k: &str, n: Option<&str>| {
            sums.totals
                .get(&(s.into(), k.into(), n.map(str::to_owned)))
                .copied()
        };
        assert_eq!(total("web", "track", Some("Order Completed")), Some(5));
        assert_eq!(total("web", "track", Some("<script>x</script>")), Some(1));
        assert_eq!(total("web", "track", Some("Zero")), None);
        for kind in ["identify", "page", "screen", "group", "alias"] {
            assert_eq!(total("web", kind, None), Some(1), "{kind}");
        }
        assert_eq!(total("stripe", "records", Some("charges")), Some(7));
        let track = &sums.series[&("web".to_owned(), "track".to_owned())];
        assert_eq!(track.len(), 60);
        assert_eq!((track[0], track[1], track.iter().sum::<u64>()), (4, 2, 6));
        assert_eq!(
            sums.series[&("stripe".to_owned(), "records".to_owned())][59],
            7
        );

        let only = sum(&w, &range, Some("stripe")).await.unwrap();
        assert_eq!(only.totals.len(), 1);
    }
}
