//! The sync engine: one stream from its committed cursor into its table.
//!
//! A bounded pipeline. The connector fetches pages ahead on its own task (a few pages at
//! most); this task converts each page into Arrow builders and hands full batches to the
//! Parquet writer, which encodes and uploads each on a thread of its own (see
//! [`FileWriter`]) while this task converts the next; every `commit_every` rows it waits
//! for the writer to finish the files and commits them with the cursor of the last page
//! those rows came from. Nothing holds a whole stream.
//!
//! Event streams of a source with tracking enabled also map each page's records to
//! Tracking-API messages; the messages of a commit's rows are written to the stream's
//! outbox just before that commit (see [`crate::tracking::outbox`]).
//!
//! Stopping (SIGTERM/SIGINT, or a failing page) commits what is complete and stops:
//! nothing already fetched and converted is lost, and nothing is landed twice.
//!
//! A page marked [`Page::reset`] starts a snapshot; only a read that ends normally
//! completes it, in its last commit (made even when it has no new rows), which then drops
//! the rows the snapshot no longer has (see [`crate::warehouse::table`]). A read that
//! fails, is cancelled or deferred leaves the snapshot open for the next run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::watch;
use tributary_sdk::convert::{BatchBuilder, Limits, MAX_COLUMN_NAME_BYTES};
use tributary_sdk::{Page, ReadRequest, Records, Source, StreamSchema};

use crate::config::SyncConfig;
use crate::lease::LeaseCheck;
use crate::sink::{Commit, StreamSink};
use crate::tracking::outbox::Outbox;
use crate::warehouse::{FileWriter, NewFile, SnapshotStep, StreamTable, Warehouse};

/// A cancellation signal shared by every task of a run.
#[derive(Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The trigger of a [`Cancel`].
pub struct CancelHandle(watch::Sender<bool>);

impl Cancel {
    /// A signal and its trigger.
    pub fn new() -> (CancelHandle, Cancel) {
        let (tx, rx) = watch::channel(false);
        (CancelHandle(tx), Cancel(rx))
    }

    /// A signal that never fires.
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Cancel(rx)
    }

    /// Whether the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the run is asked to stop.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                // The trigger is gone without firing: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl CancelHandle {
    /// Asks every holder of the signal to stop.
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

/// How a stream's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every page was landed.
    Succeeded,
    /// Stopped on request after committing what was complete.
    Cancelled,
    /// Failed; what was committed before the failure stays.
    Failed(String),
    /// The connector declined to start or go on (e.g. the vendor's API budget is nearly
    /// spent); what was committed stays and the next run resumes. Not a failure.
    Deferred(String),
    /// The account cannot read this stream (e.g. not on its plan); skipped with a warning.
    /// Not a failure.
    Skipped(String),
    /// Another worker holds the stream's lease (who, and until when): not synced by this
    /// run, and not a failure (see [`crate::lease`]).
    Leased(String),
}

impl Status {
    /// The word shown in summaries and stored in the run log.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Succeeded => "ok",
            Status::Cancelled => "cancelled",
            Status::Failed(_) => "failed",
            Status::Deferred(_) => "deferred",
            Status::Skipped(_) => "skipped",
            Status::Leased(_) => "leased",
        }
    }
}

/// What one stream's run did.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// The source's name.
    pub source: String,
    /// The stream.
    pub stream: String,
    /// Rows landed.
    pub records: u64,
    /// Rows landed per minute their commit landed in (for the volume table of the Source
    /// Overview, see [`crate::overview::volume`]).
    pub landed_per_minute: Vec<(chrono::DateTime<chrono::Utc>, u64)>,
    /// Data files landed.
    pub files: u64,
    /// Bytes of data files landed.
    pub bytes: u64,
    /// Commits made.
    pub commits: u64,
    /// When the run of this stream started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it ended.
    pub ended_at: chrono::DateTime<chrono::Utc>,
    /// Columns added to the table.
    pub new_columns: Vec<String>,
    /// Values kept in `_rescued_data`.
    pub rescued_values: u64,
    /// Integer columns widened to float.
    pub widened_columns: Vec<String>,
    /// Fields kept in `_rescued_data` instead of becoming columns: past `max_new_columns`
    /// new columns in this run, or a name over 255 bytes.
    pub capped_fields: u64,
    /// The first such field's name, cut to 64 characters.
    pub capped_example: Option<String>,
    /// Values left null because they could not fit in a batch (over 2 GiB of text).
    pub oversized_values: u64,
    /// Older rows of objects replaced by their newer versions.
    pub replaced: u64,
    /// Tracking-API messages queued in the stream's outbox with its commits.
    pub messages_queued: u64,
    /// What delivering the stream's outbox did, for tracked event streams.
    pub tracking: Option<TrackingOutcome>,
    /// What a reverse-ETL model's run found (`stream` is then the model).
    pub changes: Option<crate::retl::Changes>,
    /// How it ended.
    pub status: Status,
    /// The owner id of the lease this run of the stream held (`host:pid:random`), if it
    /// took one: which worker synced the stream, in the run log.
    pub worker: Option<String>,
}

impl StreamOutcome {
    /// An outcome with nothing done yet, started now.
    pub fn new(source: &str, stream: &str, status: Status) -> Self {
        let now = chrono::Utc::now();
        StreamOutcome {
            source: source.to_owned(),
            stream: stream.to_owned(),
            records: 0,
            landed_per_minute: Vec::new(),
            files: 0,
            bytes: 0,
            commits: 0,
            started_at: now,
            ended_at: now,
            new_columns: Vec::new(),
            rescued_values: 0,
            widened_columns: Vec::new(),
            capped_fields: 0,
            capped_example: None,
            oversized_values: 0,
            replaced: 0,
            messages_queued: 0,
            tracking: None,
            changes: None,
            status,
            worker: None,
        }
    }

    /// Seconds the stream took.
    pub fn seconds(&self) -> f64 {
        (self.ended_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }
}

/// What delivering one stream's Tracking-API outbox did.
#[derive(Debug, Clone, Default)]
pub struct TrackingOutcome {
    /// Messages the collector accepted (answered 2xx). Against Segment this is not proof
    /// of delivery: Segment answers 200 to any write key and drops invalid messages later.
    pub sent: u64,
    /// Whether the collector accepts any write key (Segment), so `sent` is only
    /// "accepted".
    pub unverified: bool,
    /// Messages still in the outbox (the collector failed; the next run retries them).
    pub pending: u64,
    /// Messages reported and skipped (too big, or refused by the collector).
    pub rejected: u64,
    /// Why delivery stopped early, if it did.
    pub error: Option<String>,
}

impl TrackingOutcome {
    /// What a delivery pass did (or why it could not read the outbox), for a collector
    /// that accepts any write key when `unverified`.
    pub fn of(
        delivered: &anyhow::Result<crate::tracking::outbox::Delivery>,
        unverified: bool,
    ) -> Self {
        match delivered {
            Ok(d) => TrackingOutcome {
                unverified,
                sent: d.sent,
                pending: d.pending,
                rejected: d.rejected.len() as u64,
                error: d.error.clone(),
            },
            Err(e) => TrackingOutcome {
                unverified,
                error: Some(crate::logging::scrubbed(e)),
                ..TrackingOutcome::default()
            },
        }
    }
}

/// What to do in one stream run.
pub struct StreamJob<'a> {
    /// Where the table lives.
    pub warehouse: &'a Warehouse,
    /// The source's name.
    pub source_name: &'a str,
    /// The connector.
    pub source: Arc<dyn Source>,
    /// The stream's schema.
    pub schema: StreamSchema,
    /// Batching and commit sizes.
    pub tuning: &'a SyncConfig,
    /// Ignore the committed cursor and replace the table.
    pub full_refresh: bool,
    /// The run's id, stored in each commit.
    pub run_id: &'a str,
    /// Stop signal.
    pub cancel: Cancel,
    /// A progress bar, on a terminal.
    pub progress: Option<ProgressBar>,
    /// The stream's Tracking-API outbox, when its source has tracking enabled.
    pub outbox: Option<Outbox>,
    /// Keep every version in `<stream>_history` too (object streams of sources with
    /// `history = true`).
    pub history: bool,
    /// The stream's lease, when the run holds one: a lost lease stops the stream before
    /// its next commit, without committing.
    pub lease: Option<LeaseCheck>,
}

/// Rows converted but not committed yet.
struct Pending {
    /// Files the writer finished, not committed yet.
    files: Vec<NewFile>,
    /// The Parquet writer, with the rows flushed since `files` in its open file.
    writer: FileWriter,
    /// Rows in `files` and the writer's open file, and the cursor they reach.
    flushed_records: u64,
    flushed_cursor: Option<serde_json::Value>,
    /// Rows in the builder, and the cursor of the last page appended to it.
    open_records: u64,
    open_cursor: Option<serde_json::Value>,
    /// Tracking-API messages of the rows in `files`/the writer, and of the rows in the
    /// builder.
    flushed_messages: Vec<serde_json::Value>,
    open_messages: Vec<serde_json::Value>,
    /// When a page of the rows in `files`/the writer started a snapshot: the latest such
    /// page's `received_at`; likewise for the rows in the builder.
    snapshot_start: Option<chrono::DateTime<chrono::Utc>>,
    open_snapshot_start: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs one stream and reports what it did; never panics on vendor or storage errors.
pub async fn sync_stream(job: StreamJob<'_>) -> StreamOutcome {
    let mut outcome = StreamOutcome::new(job.source_name, &job.schema.name, Status::Succeeded);
    let result = run(&job, &mut outcome).await;
    outcome.ended_at = chrono::Utc::now();
    match result {
        Ok(true) => {}
        Ok(false) => outcome.status = Status::Cancelled,
        Err(e) => {
            outcome.status = match e.downcast_ref::<tributary_sdk::Error>() {
                Some(tributary_sdk::Error::Deferred { reason }) => Status::Deferred(reason.clone()),
                Some(tributary_sdk::Error::Unavailable { message }) => {
                    Status::Skipped(tributary_sdk::secret::scrub(message).into_owned())
                }
                // Stored in the run log and printed: no secret a vendor echoed may stay.
                _ => Status::Failed(crate::logging::scrubbed(&e)),
            }
        }
    }
    if let Some(pb) = &job.progress {
        pb.finish_with_message(outcome.status.word());
    }
    // Once per stream and run, however many fields a hostile vendor sent.
    if outcome.capped_fields > 0 {
        tracing::warn!(source = %outcome.source, stream = %outcome.stream, fields = outcome.capped_fields, example = %outcome.capped_example.as_deref().unwrap_or(""), max_new_columns = job.tuning.max_new_columns, max_name_bytes = MAX_COLUMN_NAME_BYTES, "Fields past the new-column cap or with over-long names were kept in _rescued_data, not added as columns.");
    }
    if outcome.oversized_values > 0 {
        tracing::warn!(source = %outcome.source, stream = %outcome.stream, values = outcome.oversized_values, "Values too large for a batch (over 2 GiB of text) were left null.");
    }
    match &outcome.status {
        Status::Failed(e) => {
            tracing::error!(source = %outcome.source, stream = %outcome.stream, records = outcome.records, error = %e, "Stream failed; what was committed before stays.")
        }
        s => {
            tracing::info!(source = %outcome.source, stream = %outcome.stream, records = outcome.records, files = outcome.files, bytes = outcome.bytes, seconds = outcome.seconds(), status = s.word(), "Stream synced.")
        }
    }
    outcome
}

/// Returns `Ok(true)` when the stream ran to its end, `Ok(false)` when cancelled.
async fn run(job: &StreamJob<'_>, out: &mut StreamOutcome) -> Result<bool> {
    let stream = job.schema.name.as_str();
    let mut sink = StreamSink::open(
        job.warehouse,
        job.source_name,
        &job.schema,
        job.tuning.row_group_size,
        job.history,
        job.outbox.clone(),
    )
    .await?;
    if let Some(seq) = sink.recover().await? {
        // The last run died between the history commit and this table's.
        tracing::warn!(source = %job.source_name, stream, seq, "Landed the commit the history has and this table missed.");
    }
    let cursor = if job.full_refresh {
        None
    } else {
        sink.cursor()
    };
    tracing::info!(source = %job.source_name, stream, cursor = %cursor.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "none".into()), full_refresh = job.full_refresh, "Starting stream.");
    let existing = sink.arrow_schema()?;
    let limits = Limits {
        max_new_columns: job.tuning.max_new_columns,
        ..Limits::default()
    };
    let mut builder = BatchBuilder::with_limits(&job.schema, Some(existing.as_ref()), limits);
    let mut pages = job
        .source
        .read(ReadRequest {
            schema: job.schema.clone(),
            cursor,
            full_refresh: job.full_refresh,
        })
        .await
        .with_context(|| format!("starting to read `{stream}`"))?;
    let mut p = Pending {
        files: Vec::new(),
        writer: FileWriter::spawn(),
        flushed_records: 0,
        flushed_cursor: None,
        open_records: 0,
        open_cursor: None,
        flushed_messages: Vec::new(),
        open_messages: Vec::new(),
        snapshot_start: None,
        open_snapshot_start: None,
    };
    let batch_size = job.tuning.batch_size;
    loop {
        let next = tokio::select! {
            biased;
            reason = lease_lost(job) => {
                // Another worker may be syncing the stream now: commit nothing.
                anyhow::bail!("{reason}; stopped before the next commit (what was committed before stays)");
            }
            _ = job.cancel.cancelled() => {
                tracing::info!(stream, "Stop requested; committing what is complete.");
                commit(job, &mut sink, &mut builder, &mut p, out, false).await?;
                return Ok(false);
            }
            next = pages.next() => next,
        };
        let page = match next {
            None => break,
            Some(Ok(page)) => page,
            Some(Err(e)) => {
                // Land what was fetched before the failure, then report it.
                commit(job, &mut sink, &mut builder, &mut p, out, false)
                    .await
                    .context("committing before reporting a read error")?;
                return Err(anyhow::Error::new(e).context(format!("reading `{stream}`")));
            }
        };
        let appended = tokio::task::block_in_place(|| builder.append_page(&page));
        let n = match appended {
            Ok(n) => n as u64,
            Err(e) => {
                // The builder holds part of a broken page: land only what was flushed.
                land_flushed(job, &mut sink, &builder, &mut p, out, false).await?;
                return Err(anyhow::Error::new(e));
            }
        };
        if job.outbox.is_some() {
            let messages = page_messages(job, &page)?;
            p.open_messages.extend(messages);
        }
        p.open_records += n;
        p.open_cursor = Some(page.cursor);
        if page.reset {
            // A new snapshot, or the open one started over.
            p.open_snapshot_start = Some(page.received_at);
        }
        if let Some(pb) = &job.progress {
            pb.inc(n);
        }
        // By rows, or by bytes when the records are large (see `Limits::batch_bytes`).
        if builder.rows() >= batch_size || builder.is_full() {
            flush(sink.table(), &mut builder, &mut p, out).await?;
        }
        if p.flushed_records + p.open_records >= job.tuning.commit_every {
            commit(job, &mut sink, &mut builder, &mut p, out, false).await?;
        }
    }
    // The read ended normally: a snapshot it was in is complete.
    commit(job, &mut sink, &mut builder, &mut p, out, true).await?;
    Ok(true)
}

/// Resolves with the reason once the job's lease is lost; never without a lease.
async fn lease_lost(job: &StreamJob<'_>) -> String {
    match &job.lease {
        Some(lease) => lease.lost().await,
        None => std::future::pending().await,
    }
}

/// Hands the builder's rows to the writer, for the current data file (a new file when the
/// schema grew).
async fn flush(
    table: &StreamTable,
    builder: &mut BatchBuilder,
    p: &mut Pending,
    out: &mut StreamOutcome,
) -> Result<()> {
    if builder.rows() > 0 {
        let (batches, report) = tokio::task::block_in_place(|| builder.finish())?;
        out.new_columns.extend(report.new_columns);
        out.widened_columns.extend(report.widened_columns);
        out.rescued_values += report.rescued_values;
        out.capped_fields += report.capped_fields;
        if out.capped_example.is_none() {
            out.capped_example = report.capped_example;
        }
        out.oversized_values += report.oversized_values;
        for batch in batches {
            p.writer.write(table, batch).await?;
        }
    }
    p.flushed_records += p.open_records;
    p.open_records = 0;
    p.flushed_messages.append(&mut p.open_messages);
    if let Some(c) = p.open_cursor.take() {
        p.flushed_cursor = Some(c);
    }
    if let Some(start) = p.open_snapshot_start.take() {
        p.snapshot_start = Some(start);
    }
    Ok(())
}

/// Waits for the writer to finish every file of the rows flushed so far.
async fn close_files(p: &mut Pending, out: &mut StreamOutcome) -> Result<()> {
    for file in p.writer.finish().await? {
        out.files += 1;
        out.bytes += file.add.size as u64;
        p.files.push(file);
    }
    Ok(())
}

/// Flushes everything converted and commits it with the last page's cursor; `complete`
/// when the read ended normally (completing an open snapshot).
async fn commit(
    job: &StreamJob<'_>,
    sink: &mut StreamSink,
    builder: &mut BatchBuilder,
    p: &mut Pending,
    out: &mut StreamOutcome,
    complete: bool,
) -> Result<()> {
    flush(sink.table(), builder, p, out).await?;
    land_flushed(job, sink, builder, p, out, complete).await
}

/// Commits the closed files with the cursor they reach, if anything moved or a snapshot
/// starts or completes.
async fn land_flushed(
    job: &StreamJob<'_>,
    sink: &mut StreamSink,
    builder: &BatchBuilder,
    p: &mut Pending,
    out: &mut StreamOutcome,
    complete: bool,
) -> Result<()> {
    let closing = Instant::now();
    close_files(p, out).await?;
    let close_ms = closing.elapsed().as_millis() as u64;
    let snapshot = SnapshotStep {
        since: match p.snapshot_start {
            Some(start) => SnapshotStep::starting(start).since,
            None => sink.open_snapshot(),
        },
        complete,
    };
    let completes = complete && snapshot.since.is_some();
    // A completing snapshot commits even with nothing new, at the committed cursor.
    let Some(cursor) = p
        .flushed_cursor
        .take()
        .or_else(|| completes.then(|| sink.cursor()).flatten())
    else {
        return Ok(());
    };
    let unchanged = sink.cursor().as_ref() == Some(&cursor);
    if p.files.is_empty() && p.snapshot_start.is_none() && !completes && unchanged {
        return Ok(());
    }
    if let Some(lease) = &job.lease {
        lease.check().map_err(|reason| {
            anyhow::anyhow!(
                "{reason}; stopped before the next commit (what was committed before stays)"
            )
        })?;
    }
    let started = Instant::now();
    let files = std::mem::take(&mut p.files);
    let nfiles = files.len();
    let files_bytes: u64 = files.iter().map(|f| f.add.size as u64).sum();
    let records = p.flushed_records;
    let messages = std::mem::take(&mut p.flushed_messages);
    let schema = builder.schema();
    let landed = sink
        .land(Commit {
            files,
            schema: &schema,
            snapshot,
            cursor,
            records,
            run_id: job.run_id,
            messages: &messages,
        })
        .await?;
    if sink.has_outbox() {
        out.messages_queued += messages.len() as u64;
    }
    let landed_bytes = files_bytes + landed.rewritten_bytes + landed.dv_bytes;
    crate::metrics::commit(
        job.source_name,
        &job.schema.name,
        records,
        landed_bytes,
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(source = %job.source_name, stream = %job.schema.name, version = landed.version, records, files = nfiles, replaced = landed.replaced, swept = landed.swept, rewritten_bytes = landed.rewritten_bytes, snapshot_started = p.snapshot_start.is_some(), snapshot_completed = completes, close_ms, ms = started.elapsed().as_millis() as u64, "Committed batch.");
    out.records += records;
    if records > 0 {
        let minute = crate::overview::range::minute(chrono::Utc::now());
        match out.landed_per_minute.last_mut() {
            Some((m, n)) if *m == minute => *n += records,
            _ => out.landed_per_minute.push((minute, records)),
        }
    }
    out.replaced += landed.replaced;
    out.bytes += landed.rewritten_bytes + landed.dv_bytes;
    out.commits += 1;
    p.flushed_records = 0;
    p.snapshot_start = None;
    Ok(())
}

/// The Tracking-API messages (wire format) of a page's records.
fn page_messages(job: &StreamJob<'_>, page: &Page) -> Result<Vec<serde_json::Value>> {
    let stream = job.schema.name.as_str();
    let map = |record: &serde_json::Value| {
        job.source
            .messages(job.source_name, stream, record)
            .into_iter()
            .map(|m| m.to_json())
    };
    Ok(match &page.records {
        Records::Values(records) => records.iter().flat_map(|r| map(&r.value)).collect(),
        Records::Json { body, path } => {
            // Only tracked event streams pay for this tree.
            let root: serde_json::Value = serde_json::from_slice(body)
                .with_context(|| format!("reading a page of `{stream}` for tracking"))?;
            let mut records = &root;
            for key in path.iter() {
                records = &records[*key];
            }
            records
                .as_array()
                .map(|records| records.iter().flat_map(map).collect())
                .unwrap_or_default()
        }
    })
}
