//! How one object is read: REST `queryAll` pages or a Bulk API 2.0 query job, and the
//! [`Cursor`] committed with every page.
//!
//! # Incremental objects
//!
//! Objects with `SystemModstamp` (else `LastModifiedDate`, else `CreatedDate`) are read in
//! windows of that field. A read selects the records with a stamp below Salesforce's clock
//! at the start of the read (truncated to the second, so a record changed again within the
//! same second is never half-seen), and from the committed cursor:
//!
//! - **resuming** an interrupted read (`complete: false`): exactly after the last landed
//!   `(stamp, Id)`, so a crash lands nothing twice;
//! - **a new run** (`complete: true`): from `lookback_seconds` before the last stamp, to
//!   catch records whose transaction committed after later ones were read. The cursor keeps
//!   the `(Id, stamp)` pairs landed within that window (`recent`, at most 1000), and a
//!   re-read record with the same stamp is skipped: only real changes land again.
//!
//! REST pages are ordered by `(stamp, Id)`, so every page's cursor is its last record.
//! Bulk API 2.0 does not order results (`ORDER BY` is not supported), so while a job's CSV
//! pages are landed the cursor is the job and the locator of the next page, plus the
//! greatest `(stamp, Id)` so far; the last page turns it back into a position. A job that
//! can no longer be resumed (Salesforce deletes them after a few days) is run again from
//! where it started.
//!
//! # Snapshot objects
//!
//! Objects with none of those fields are read whole on every run, ordered by `Id`; the
//! first page of each new snapshot replaces the table.
//!
//! # REST or Bulk
//!
//! A `SELECT COUNT()` of what the read would return (whose answer also tells Salesforce's
//! clock) decides: at `bulk_threshold` or more,
//! a Bulk job; objects Bulk cannot serve (an `INVALIDENTITY` refusal, a failed, aborted or
//! timed-out job) fall back to REST, and so does a read whose job Salesforce refuses to
//! create (the org's daily Bulk query jobs used up, or a user without the permission:
//! [`bulk_refused`]), for that run, with a warning. `IsDeleted = true` rows (`queryAll`
//! includes them) land with `is_deleted` set.
//!
//! A REST read whose query URL would be too long for Salesforce (many or long field names)
//! reads its fields in chunks, joined by Id page by page ([`crate::chunks`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_sdk::convert::parse_timestamp;
use tributary_sdk::pagination::{PageSender, ProgressGuard, spawn_pages};
use tributary_sdk::ranges::{self, Answer, Fetch, Fetched, Order, RangeReader};
use tributary_sdk::schema::to_column_name;
use tributary_sdk::{Error, Page, PageStream, Record, Records, Result};

use crate::auth::VENDOR;
use crate::chunks::{self, ChunkPlan, URI_BUDGET};
use crate::client::{SalesforceClient, bulk_refused, bulk_unsupported, bulk_unsupported_message};
use crate::describe::{DELETED_FIELD, ObjectPlan};

/// How many pages a read fetches ahead of the runtime's conversion.
const FETCH_AHEAD: usize = 2;

/// The most `(Id, stamp)` pairs a cursor keeps for the lookback window.
pub const RECENT_CAP: usize = 1000;

/// The longest wait between two polls of a Bulk job.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// Where a read resumes: the cursor committed with every page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Cursor {
    /// Every record up to `(stamp, id)` in (cursor field, Id) order is landed.
    Incremental {
        /// The cursor field (`SystemModstamp`, …).
        field: String,
        /// Its value, `YYYY-MM-DDTHH:MM:SS.sssZ`.
        stamp: String,
        /// The Id of the last record at that stamp.
        id: String,
        /// Whether the read that wrote this reached the end: the next run starts a new read
        /// (with the lookback window); `false` resumes exactly after `(stamp, id)`.
        complete: bool,
        /// `[Id, stamp]` of records landed within the lookback window.
        #[serde(default)]
        recent: Vec<(String, String)>,
    },
    /// A full snapshot, ordered by Id.
    Snapshot {
        /// The last Id landed by an interrupted snapshot.
        after_id: Option<String>,
        /// Whether the snapshot is finished (the next run starts a new one).
        complete: bool,
    },
    /// A first read split into time ranges of the cursor field, read at once (see
    /// [`Reader::rest_ranges`]).
    Ranges {
        /// The cursor field.
        field: String,
        /// Salesforce's clock when the read began: every range lies below it.
        upper: String,
        /// The ranges not finished, in whole seconds of the cursor field, each with the
        /// last `(stamp, Id)` landed from it.
        ranges: Vec<ranges::Range<Keyset>>,
        /// The greatest `(stamp, Id)` landed so far.
        max: Option<(String, String)>,
        /// `[Id, stamp]` of records landed within the lookback window of `max`.
        #[serde(default)]
        recent: Vec<(String, String)>,
    },
    /// A Bulk API 2.0 job whose results are being landed.
    Bulk {
        /// The job's id.
        job: String,
        /// The locator of the next results page.
        locator: String,
        /// The cursor the job started from (`None`: everything).
        base: Option<Box<Cursor>>,
        /// The greatest `(stamp, Id)` landed from the job so far.
        max: Option<(String, String)>,
        /// `[Id, stamp]` of records landed within the lookback window.
        #[serde(default)]
        recent: Vec<(String, String)>,
    },
}

/// A place in a read ordered by `(stamp, Id)`: the last record landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyset {
    /// Its cursor field, canonical (`YYYY-MM-DDTHH:MM:SS.sssZ`).
    pub stamp: String,
    /// Its Id.
    pub id: String,
}

impl std::fmt::Display for Keyset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.stamp, self.id)
    }
}

/// The knobs of a read, from the source's settings.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Records from which Bulk is used.
    pub bulk_threshold: u64,
    /// `maxRecords` of Bulk results pages.
    pub bulk_page_size: u32,
    /// The first wait between Bulk polls.
    pub bulk_poll: Duration,
    /// The longest a Bulk job may take.
    pub bulk_timeout: Duration,
    /// The lookback window, in seconds.
    pub lookback_seconds: u64,
    /// The share of the org's daily API requests past which no further page is read.
    pub api_budget_percent: f64,
    /// Records per REST page (`batchSize`, and the `LIMIT` of a range's query).
    pub page_size: u32,
    /// Most REST queries in flight for one object's concurrent first read.
    pub max_concurrency: u32,
}

/// Reads `plan`'s object from `cursor` (or from scratch), fetching ahead of the consumer.
pub fn read(
    client: Arc<SalesforceClient>,
    plan: Arc<ObjectPlan>,
    options: ReadOptions,
    cursor: Option<Cursor>,
    full_refresh: bool,
) -> PageStream {
    spawn_pages(FETCH_AHEAD, move |tx| {
        let reader = Reader {
            client,
            plan,
            options,
            tx,
        };
        reader.run(if full_refresh { None } else { cursor }, full_refresh)
    })
}

/// A stamp in the one text form cursors use: `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC), which sorts
/// like the time it stands for.
pub fn canonical_stamp(text: &str) -> Option<String> {
    let micros = parse_timestamp(text)?;
    DateTime::from_timestamp_micros(micros).map(format_stamp)
}

fn format_stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn parse_stamp(stamp: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(parse_timestamp(stamp)?)
}

/// `stamp` moved back by `seconds`.
fn stamp_minus(stamp: &str, seconds: u64) -> String {
    match parse_stamp(stamp) {
        Some(t) => format_stamp(t - chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64)),
        None => stamp.to_owned(),
    }
}

/// A datetime literal for SOQL (whole seconds unless the stamp has milliseconds).
pub fn soql_datetime(stamp: &str) -> String {
    match parse_stamp(stamp) {
        Some(t) if t.timestamp_subsec_millis() == 0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => stamp.to_owned(),
    }
}

/// A string literal for SOQL.
pub fn soql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The `(Id, stamp)` pairs landed within the lookback window.
#[derive(Debug, Clone, Default)]
struct Recent {
    by_id: HashMap<String, String>,
    /// `(stamp, Id)`, oldest first.
    order: BTreeSet<(String, String)>,
}

impl Recent {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut recent = Recent::default();
        for (id, stamp) in pairs {
            recent.insert(id, stamp);
        }
        recent
    }

    fn contains(&self, id: &str, stamp: &str) -> bool {
        self.by_id.get(id).is_some_and(|s| s == stamp)
    }

    fn insert(&mut self, id: &str, stamp: &str) {
        if let Some(old) = self.by_id.insert(id.to_owned(), stamp.to_owned()) {
            self.order.remove(&(old, id.to_owned()));
        }
        self.order.insert((stamp.to_owned(), id.to_owned()));
    }

    /// Forgets pairs older than `floor`, then the oldest beyond the cap.
    fn prune(&mut self, floor: &str) {
        while let Some((stamp, id)) = self.order.first().cloned() {
            if stamp.as_str() < floor || self.order.len() > RECENT_CAP {
                self.order.pop_first();
                self.by_id.remove(&id);
            } else {
                break;
            }
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        self.order
            .iter()
            .map(|(stamp, id)| (id.clone(), stamp.clone()))
            .collect()
    }
}

/// Where a read starts.
#[derive(Debug, Clone)]
enum Lower {
    /// Every record.
    All,
    /// Records with a stamp at or after this one (a new run's lookback window).
    Since(String),
    /// Records after `(stamp, Id)` (an interrupted read).
    After(String, String),
    /// Records after this Id (an interrupted snapshot).
    AfterId(String),
}

/// A read's starting point.
#[derive(Debug, Clone)]
struct Start {
    lower: Lower,
    /// The first page replaces the table.
    reset: bool,
    recent: Recent,
    /// The committed position, if any.
    position: Option<(String, String)>,
    /// The cursor the read starts from, kept in Bulk cursors.
    base: Option<Cursor>,
}

/// Where a concurrent first read stands, besides its ranges.
#[derive(Debug)]
struct RangeRead {
    /// Salesforce's clock when the read began.
    upper: String,
    recent: Recent,
    /// The greatest `(stamp, Id)` landed so far.
    max: Option<(String, String)>,
    /// The next page replaces the table.
    reset: bool,
}

/// How a Bulk attempt ended.
enum BulkOutcome {
    Done,
    /// Bulk cannot serve it: read with REST from the same start.
    Fallback(Box<Start>, String),
    /// Salesforce refused to create the job (quota, permission): read with REST from the
    /// same start, this run.
    Refused(Box<Start>, String),
}

struct Reader {
    client: Arc<SalesforceClient>,
    plan: Arc<ObjectPlan>,
    options: ReadOptions,
    tx: PageSender,
}

impl Reader {
    fn object(&self) -> &str {
        &self.plan.object
    }

    /// The stream's name, as errors name it.
    fn stream(&self) -> &str {
        &self.plan.schema.name
    }

    async fn run(mut self, cursor: Option<Cursor>, full_refresh: bool) -> Result<()> {
        let cursor = match cursor {
            Some(Cursor::Bulk {
                job,
                locator,
                base,
                max,
                recent,
            }) => {
                match self.client.bulk_job(&job).await {
                    Ok(info) if info.state == "JobComplete" => {
                        let mut start = self.start(base.map(|b| *b), false);
                        start.recent = Recent::from_pairs(&recent);
                        start.reset = false;
                        tracing::info!(object = %self.object(), job = %job, "Resuming the results of a Bulk query job.");
                        return self.bulk_results(&job, Some(locator), start, max).await;
                    }
                    Ok(info) => {
                        tracing::warn!(object = %self.object(), job = %job, state = %info.state, "The committed Bulk job cannot be resumed; reading again from where it started.");
                    }
                    Err(Error::Http {
                        status: 400 | 404,
                        message,
                        ..
                    }) => {
                        tracing::warn!(object = %self.object(), job = %job, error = %message, "The committed Bulk job is gone; reading again from where it started.");
                    }
                    Err(e) => return Err(e),
                }
                base.map(|b| *b)
            }
            Some(Cursor::Ranges {
                field,
                upper,
                ranges,
                max,
                recent,
            }) if self.plan.cursor_field.as_deref() == Some(field.as_str()) => {
                tracing::info!(object = %self.object(), ranges = ranges.len(), "Resuming a concurrent first read.");
                let read = RangeRead {
                    upper,
                    recent: Recent::from_pairs(&recent),
                    max,
                    reset: false,
                };
                return self.rest_ranges(read, ranges).await;
            }
            other => other,
        };
        let start = self.start(cursor, full_refresh);
        // The count also reads Salesforce's clock (its `Date`), which bounds this read.
        let soql = format!(
            "SELECT COUNT() FROM {}{}",
            self.object(),
            self.where_clause(&start.lower, None)
        );
        let count = self
            .client
            .query_all(self.stream(), &soql)
            .await?
            .total_size;
        let upper = self.upper();
        tracing::debug!(object = %self.object(), count, upper = ?upper, "Counted the records to read.");
        let use_bulk = count >= self.options.bulk_threshold;
        let start = if use_bulk {
            match self.bulk(start, upper.as_deref()).await? {
                BulkOutcome::Done => return Ok(()),
                BulkOutcome::Fallback(start, reason) => {
                    tracing::info!(object = %self.object(), reason = %reason, "Bulk API cannot serve this object; reading it with REST queryAll.");
                    *start
                }
                BulkOutcome::Refused(start, reason) => {
                    tracing::warn!(object = %self.object(), reason = %reason, "Salesforce refused to start a Bulk API 2.0 query job; reading the object with REST queryAll this run.");
                    *start
                }
            }
        } else {
            start
        };
        if let Some(upper) = upper.as_deref()
            && self.concurrent(&start, count)
        {
            return self.rest_ranges_from_scratch(start, upper).await;
        }
        self.rest(start, upper.as_deref()).await
    }

    /// Whether a REST read from `start` of `count` records is read as time ranges at once:
    /// a first read (or a full refresh) of an object with a cursor field and more than a
    /// page of records. Later runs read only what changed since the cursor, in one walk.
    fn concurrent(&self, start: &Start, count: u64) -> bool {
        self.options.max_concurrency > 1
            && self.plan.cursor_field.is_some()
            && matches!(start.lower, Lower::All)
            && count > u64::from(self.options.page_size)
    }

    /// Plans the ranges of a concurrent first read from the object's oldest stamp to
    /// `upper` (Salesforce's clock at the start of the read, so what changes during the
    /// read is left to the next run, whose lookback window starts at or before `upper`).
    async fn rest_ranges_from_scratch(&mut self, start: Start, upper: &str) -> Result<()> {
        let field = self.plan.cursor_field.clone().unwrap_or_default();
        let soql = format!(
            "SELECT {field} FROM {} WHERE {field} < {} ORDER BY {field} ASC LIMIT 1",
            self.object(),
            soql_datetime(upper)
        );
        let first = self.client.query_all(self.stream(), &soql).await?;
        let oldest = first
            .records
            .first()
            .and_then(|r| r.get(&field))
            .and_then(Value::as_str)
            .and_then(parse_stamp);
        let (Some(oldest), Some(top)) = (oldest, parse_stamp(upper)) else {
            // Nothing below the clock: the walk lands the empty read (and resets).
            return self.rest(start, Some(upper)).await;
        };
        let (lo, hi) = (
            oldest.timestamp(),
            top.timestamp().max(oldest.timestamp() + 1),
        );
        // Even slices of the span, one per request wanted in flight; the dense ones split
        // as they are read.
        let n = self.options.max_concurrency.max(1) as i64;
        let width = ((hi - lo) / n).max(1);
        let mut planned = Vec::new();
        let mut gte = lo;
        while gte < hi {
            let lt = if planned.len() as i64 + 1 == n {
                hi
            } else {
                (gte + width).min(hi)
            };
            planned.push(ranges::Range::new(gte, lt));
            gte = lt;
        }
        tracing::info!(object = %self.object(), ranges = planned.len(), "Reading the object's first read as time ranges at once.");
        let read = RangeRead {
            upper: upper.to_owned(),
            recent: start.recent,
            max: None,
            reset: start.reset,
        };
        self.rest_ranges(read, planned).await
    }

    /// A REST read of time ranges of the cursor field at once, by the SDK's
    /// [`RangeReader`]. Each range is queried with keyset pages: `WHERE field >= lo AND
    /// field < hi AND (field, Id) > last ORDER BY field, Id LIMIT page_size`. Each page is
    /// a query of its own (no `nextRecordsUrl`): a page resumes from the committed
    /// position alone, and holds no server-side cursor. Before API version 56.0 Salesforce
    /// kept at most 10 query cursors per user and released the oldest when an 11th opened
    /// (https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/salesforce-app-limits-platform-apicursors.html;
    /// the limit is gone since), which would break walks in flight on the older versions
    /// `api_version` accepts (47.0 and later). The
    /// cursor holds every open range where its last committed page ended; the last page
    /// turns it into the usual incremental position (the greatest `(stamp, Id)` landed,
    /// `complete`), so the next run reads from there with the lookback window.
    async fn rest_ranges(
        &mut self,
        mut read: RangeRead,
        planned: Vec<ranges::Range<Keyset>>,
    ) -> Result<()> {
        let field = self.plan.cursor_field.clone().unwrap_or_default();
        let page_size = self.options.page_size.max(1) as usize;
        let mut settings = ranges::settings(
            VENDOR,
            self.stream(),
            Order::Ascending,
            page_size,
            self.options.max_concurrency as usize,
        );
        settings.position_name = format!("position ({field}, Id)");
        settings.still = "a full page kept coming".to_owned();
        let keys: Vec<String> = vec!["Id".to_owned(), field.clone()];
        let mut always = keys.clone();
        if self.plan.has_is_deleted {
            always.push(DELETED_FIELD.to_owned());
        }
        let (client, plan) = (Arc::clone(&self.client), Arc::clone(&self.plan));
        let stream = self.stream().to_owned();
        let fetch: Fetch<Keyset, Vec<Map<String, Value>>> =
            Box::new(move |range: ranges::Range<Keyset>| {
                let (client, plan, stream) =
                    (Arc::clone(&client), Arc::clone(&plan), stream.clone());
                let (field, keys, always) = (field.clone(), keys.clone(), always.clone());
                Box::pin(async move {
                    let bound = |seconds: i64| {
                        DateTime::from_timestamp(seconds, 0)
                            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_default()
                    };
                    let mut tail = format!(
                        " WHERE {field} >= {} AND {field} < {}",
                        bound(range.gte),
                        bound(range.lt)
                    );
                    if let Some(at) = &range.position {
                        let stamp = soql_datetime(&at.stamp);
                        tail.push_str(&format!(
                            " AND ({field} > {stamp} OR ({field} = {stamp} AND Id > {}))",
                            soql_string(&at.id)
                        ));
                    }
                    tail.push_str(&format!(" ORDER BY {field} ASC, Id ASC LIMIT {page_size}"));
                    let chunks = ChunkPlan::new(
                        &plan.object,
                        &plan.select,
                        &always,
                        keys,
                        tail,
                        client.query_all_prefix_len(),
                        URI_BUDGET,
                    )
                    .map_err(|message| chunks::plan_error(&stream, message))?;
                    let page = client.query_all(&stream, &chunks.driving_soql()).await?;
                    let done = page.done && page.records.len() < page_size;
                    // What Salesforce answered, before the fill below may leave out a record:
                    // the reader's progress checks count the page as answered.
                    let answered = page.records.len();
                    let last = match page.records.last() {
                        None => None,
                        Some(raw) => {
                            let id = raw.get("Id").and_then(Value::as_str);
                            let stamp = raw
                                .get(&field)
                                .and_then(Value::as_str)
                                .and_then(canonical_stamp);
                            match (id, stamp) {
                                (Some(id), Some(stamp)) => Some(Keyset {
                                    stamp,
                                    id: id.to_owned(),
                                }),
                                _ => {
                                    return Err(Error::decode(
                                        format!("a {} record", plan.object),
                                        format!("the last of a page has no Id or no valid {field}"),
                                    ));
                                }
                            }
                        }
                    };
                    // The position comes from the page as Salesforce answered it: the fill below may
                    // leave out a record hidden since, which the next query must not return to.
                    let mut records = page.records;
                    if chunks.is_chunked() {
                        chunks::fill(
                            &chunks,
                            &client,
                            &stream,
                            Some(&field),
                            plan.has_is_deleted,
                            &mut records,
                            |_| true,
                        )
                        .await?;
                    }
                    let key = last
                        .as_ref()
                        .and_then(|k| parse_stamp(&k.stamp))
                        .map(|t| t.timestamp());
                    Ok(Answer::Page(Fetched {
                        count: answered,
                        next: if done {
                            None
                        } else {
                            last.or_else(|| range.position.clone())
                        },
                        last: key,
                        page: records,
                    }))
                })
            });
        let field = self.plan.cursor_field.clone().unwrap_or_default();
        let mut reader = RangeReader::new(settings, self.client.http().clone(), planned, fetch);
        while let Some(step) = reader.next().await? {
            let mut records = Vec::with_capacity(step.count);
            for raw in step.page {
                let (id, stamp, record) = self.convert(raw)?;
                if let Some(stamp) = stamp {
                    if read.recent.contains(&id, &stamp) {
                        continue;
                    }
                    read.recent.insert(&id, &stamp);
                    let at = (stamp, id);
                    if read.max.as_ref().is_none_or(|max| at > *max) {
                        read.max = Some(at);
                    }
                }
                records.push(record);
            }
            read.recent.prune(&self.floor(&read.max));
            let cursor = if reader.is_done() {
                let stats = reader.stats();
                tracing::info!(
                    object = %self.object(),
                    ranges = stats.ranges,
                    requests = stats.requests,
                    part_full_pages = stats.part_full,
                    "Concurrent first read complete."
                );
                read.max.as_ref().map(|(stamp, id)| Cursor::Incremental {
                    field: field.clone(),
                    stamp: stamp.clone(),
                    id: id.clone(),
                    complete: true,
                    recent: read.recent.pairs(),
                })
            } else {
                Some(Cursor::Ranges {
                    field: field.clone(),
                    upper: read.upper.clone(),
                    ranges: reader.open().cloned().collect(),
                    max: read.max.clone(),
                    recent: read.recent.pairs(),
                })
            };
            if !self.emit(records, cursor.as_ref(), read.reset).await {
                return Ok(());
            }
            read.reset = false;
            if reader.is_done() {
                return Ok(());
            }
            // Past the org's API budget the read stops here, its pages committed; the next
            // run resumes every range from its cursor.
            self.client.budget().check(
                self.options.api_budget_percent,
                &format!("the rest of {}", self.object()),
            )?;
        }
        // Resumed with every range finished.
        let cursor = read.max.as_ref().map(|(stamp, id)| Cursor::Incremental {
            field: field.clone(),
            stamp: stamp.clone(),
            id: id.clone(),
            complete: true,
            recent: read.recent.pairs(),
        });
        self.emit(Vec::new(), cursor.as_ref(), read.reset).await;
        Ok(())
    }

    /// Where to start from `cursor`.
    fn start(&self, cursor: Option<Cursor>, full_refresh: bool) -> Start {
        let snapshot = self.plan.cursor_field.is_none();
        let fresh = |base: Option<Cursor>| Start {
            lower: Lower::All,
            reset: snapshot || full_refresh,
            recent: Recent::default(),
            position: None,
            base,
        };
        match (&self.plan.cursor_field, cursor) {
            (_, None) => fresh(None),
            (
                Some(f),
                Some(Cursor::Incremental {
                    field,
                    stamp,
                    id,
                    complete,
                    recent,
                }),
            ) if *f == field => {
                let base = Cursor::Incremental {
                    field,
                    stamp: stamp.clone(),
                    id: id.clone(),
                    complete,
                    recent: recent.clone(),
                };
                Start {
                    lower: if complete {
                        Lower::Since(stamp_minus(&stamp, self.options.lookback_seconds))
                    } else {
                        Lower::After(stamp.clone(), id.clone())
                    },
                    reset: false,
                    recent: Recent::from_pairs(&recent),
                    position: Some((stamp, id)),
                    base: Some(base),
                }
            }
            (None, Some(Cursor::Snapshot { after_id, complete })) => match after_id {
                Some(id) if !complete => Start {
                    lower: Lower::AfterId(id.clone()),
                    reset: false,
                    recent: Recent::default(),
                    position: None,
                    base: Some(Cursor::Snapshot {
                        after_id: Some(id),
                        complete,
                    }),
                },
                _ => fresh(None),
            },
            (_, Some(other)) => {
                tracing::warn!(object = %self.object(), cursor = ?other, "The committed cursor does not fit the object's describe any more; reading it all again.");
                fresh(None)
            }
        }
    }

    /// The exclusive upper bound of this read's stamps: Salesforce's clock (as of the latest
    /// answer), to the second.
    fn upper(&self) -> Option<String> {
        self.plan.cursor_field.as_ref()?;
        let now = self.client.clock().now();
        let whole = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        Some(format_stamp(whole))
    }

    fn where_clause(&self, lower: &Lower, upper: Option<&str>) -> String {
        let mut parts = Vec::new();
        let field = self.plan.cursor_field.as_deref();
        match (lower, field) {
            (Lower::All, _) => {}
            (Lower::Since(stamp), Some(f)) => {
                parts.push(format!("{f} >= {}", soql_datetime(stamp)))
            }
            (Lower::After(stamp, id), Some(f)) => {
                let at = soql_datetime(stamp);
                parts.push(format!(
                    "({f} > {at} OR ({f} = {at} AND Id > {}))",
                    soql_string(id)
                ));
            }
            (Lower::AfterId(id), _) => parts.push(format!("Id > {}", soql_string(id))),
            (_, None) => {}
        }
        if let (Some(f), Some(upper)) = (field, upper) {
            parts.push(format!("{f} < {}", soql_datetime(upper)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", parts.join(" AND "))
        }
    }

    /// The SOQL of the read; REST orders it, Bulk cannot.
    fn soql(&self, start: &Start, upper: Option<&str>, ordered: bool) -> String {
        format!(
            "SELECT {} FROM {}{}",
            self.plan.select.join(", "),
            self.object(),
            self.tail(start, upper, ordered)
        )
    }

    /// What follows `FROM Object` in the read's SOQL: its `WHERE`, and its `ORDER BY` if
    /// `ordered`.
    fn tail(&self, start: &Start, upper: Option<&str>, ordered: bool) -> String {
        let mut tail = self.where_clause(&start.lower, upper);
        if ordered {
            match &self.plan.cursor_field {
                Some(f) => tail.push_str(&format!(" ORDER BY {f} ASC, Id ASC")),
                None => tail.push_str(" ORDER BY Id ASC"),
            }
        }
        tail
    }

    /// How a REST read from `start` splits its fields so every query URL fits (one query,
    /// exactly [`Reader::soql`], when they all fit).
    fn chunk_plan(&self, start: &Start, upper: Option<&str>) -> Result<ChunkPlan> {
        let keys: Vec<String> = std::iter::once("Id".to_owned())
            .chain(self.plan.cursor_field.clone())
            .collect();
        let mut always = keys.clone();
        if self.plan.has_is_deleted {
            always.push(DELETED_FIELD.to_owned());
        }
        // The describe's spelling of `Id` (always `Id` in practice).
        let always: Vec<String> = always
            .iter()
            .map(|a| {
                self.plan
                    .select
                    .iter()
                    .find(|f| f.eq_ignore_ascii_case(a))
                    .cloned()
                    .unwrap_or_else(|| a.clone())
            })
            .collect();
        let keys = always[..keys.len()].to_vec();
        ChunkPlan::new(
            self.object(),
            &self.plan.select,
            &always,
            keys,
            self.tail(start, upper, true),
            self.client.query_all_prefix_len(),
            URI_BUDGET,
        )
        .map_err(|message| chunks::plan_error(self.stream(), message))
    }

    /// One record as the table wants it: columns named, nulls left out, `IsDeleted` moved
    /// to the record's flag. Returns its Id and stamp too.
    fn convert(&self, mut raw: Map<String, Value>) -> Result<(String, Option<String>, Record)> {
        raw.remove("attributes");
        let is_deleted = match raw.remove(DELETED_FIELD) {
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let what = || format!("a {} record", self.object());
        let id = raw
            .get("Id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::decode(what(), "it has no Id"))?
            .to_owned();
        let stamp = match &self.plan.cursor_field {
            Some(field) => Some(
                raw.get(field)
                    .and_then(Value::as_str)
                    .and_then(canonical_stamp)
                    .ok_or_else(|| Error::decode(what(), format!("{id} has no valid {field}")))?,
            ),
            None => None,
        };
        let mut value = Map::with_capacity(raw.len());
        for (key, v) in raw {
            if v.is_null() {
                continue;
            }
            let column = match self.plan.columns.get(&key) {
                Some(c) => c.clone(),
                None => to_column_name(&key),
            };
            value.insert(column, v);
        }
        Ok((
            id,
            stamp,
            Record {
                value: Value::Object(value),
                is_deleted,
            },
        ))
    }

    /// Hands a page over (`cursor` `None`: no position yet, committed as `null`); `false`
    /// when the consumer has gone.
    async fn emit(&self, records: Vec<Record>, cursor: Option<&Cursor>, reset: bool) -> bool {
        let page = Page::with_cursor(Records::Values(records), &cursor).resetting(reset);
        self.tx.send(page).await
    }

    fn floor(&self, position: &Option<(String, String)>) -> String {
        position
            .as_ref()
            .map(|(stamp, _)| stamp_minus(stamp, self.options.lookback_seconds))
            .unwrap_or_default()
    }

    /// Reads with REST `queryAll`, page by page.
    async fn rest(&mut self, start: Start, upper: Option<&str>) -> Result<()> {
        let chunks = self.chunk_plan(&start, upper)?;
        let soql = chunks.driving_soql();
        tracing::debug!(object = %self.object(), soql = %soql, "Reading with REST queryAll.");
        if chunks.is_chunked() {
            tracing::info!(
                object = %self.object(),
                fields = self.plan.select.len(),
                queries = chunks.chunks.len() + 1,
                "The object's fields do not fit in one query URL; reading each page's fields in several queries joined by Id."
            );
        }
        let mut page = self.client.query_all(self.stream(), &soql).await?;
        // Each `nextRecordsUrl` is followed once: one that comes back (at once or after a
        // cycle) would re-read pages already landed, and burn the org's daily API requests
        // forever.
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.stream(),
            "`nextRecordsUrl`",
            "done stayed false",
        );
        let mut recent = start.recent;
        let mut position = start.position.clone();
        let mut last_id = match &start.lower {
            Lower::AfterId(id) => Some(id.clone()),
            _ => None,
        };
        let mut reset = start.reset;
        loop {
            let done = page.done;
            if !done {
                if page.records.is_empty() {
                    return Err(guard.no_progress("no `records`"));
                }
                if let Some(next) = &page.next_records_url {
                    guard.follow(next)?;
                }
            }
            if chunks.is_chunked() {
                let field = self.plan.cursor_field.as_deref();
                // Records the lookback window re-reads unchanged are skipped below: they
                // need no other fields.
                let unchanged = |raw: &Map<String, Value>| {
                    let id = raw.get("Id").and_then(Value::as_str);
                    let stamp = field
                        .and_then(|f| raw.get(f))
                        .and_then(Value::as_str)
                        .and_then(canonical_stamp);
                    matches!((id, stamp), (Some(id), Some(stamp)) if recent.contains(id, &stamp))
                };
                chunks::fill(
                    &chunks,
                    &self.client,
                    self.stream(),
                    field,
                    self.plan.has_is_deleted,
                    &mut page.records,
                    |raw| !unchanged(raw),
                )
                .await?;
            }
            let mut records = Vec::with_capacity(page.records.len());
            let mut last: Option<(String, String)> = None;
            for raw in std::mem::take(&mut page.records) {
                let (id, stamp, record) = self.convert(raw)?;
                match stamp {
                    Some(stamp) => {
                        last = Some((stamp.clone(), id.clone()));
                        if recent.contains(&id, &stamp) {
                            continue;
                        }
                        recent.insert(&id, &stamp);
                    }
                    None => last_id = Some(id),
                }
                records.push(record);
            }
            let cursor = match &self.plan.cursor_field {
                Some(field) => {
                    // Mid-read, the last record read is where to resume; at the end, the
                    // greatest position, which the next run's window starts from.
                    position = if done {
                        position.max(last)
                    } else {
                        last.or(position)
                    };
                    recent.prune(&self.floor(&position));
                    position.as_ref().map(|(stamp, id)| Cursor::Incremental {
                        field: field.clone(),
                        stamp: stamp.clone(),
                        id: id.clone(),
                        complete: done,
                        recent: recent.pairs(),
                    })
                }
                None => Some(Cursor::Snapshot {
                    after_id: if done { None } else { last_id.clone() },
                    complete: done,
                }),
            };
            if (!records.is_empty() || done || reset)
                && !self.emit(records, cursor.as_ref(), reset).await
            {
                return Ok(());
            }
            reset = false;
            match (done, page.next_records_url.take()) {
                (false, Some(next)) => {
                    // A long REST read (a large object Bulk refused, or a wide one read in
                    // chunks of fields) checks the budget before each page, not only at
                    // its start: past it, the read stops here, its pages committed, and
                    // the next run resumes from its cursor.
                    self.client.budget().check(
                        self.options.api_budget_percent,
                        &format!("the rest of {}", self.object()),
                    )?;
                    page = self.client.query_more(self.stream(), &next).await?
                }
                _ => return Ok(()),
            }
        }
    }

    /// Reads with a Bulk API 2.0 query job.
    async fn bulk(&mut self, start: Start, upper: Option<&str>) -> Result<BulkOutcome> {
        let soql = self.soql(&start, upper, false);
        let job = match self.client.create_bulk_job(&soql).await {
            Ok(job) => job,
            Err(e) if bulk_unsupported(&e) => {
                return Ok(BulkOutcome::Fallback(Box::new(start), e.to_string()));
            }
            Err(e) => match bulk_refused(&e) {
                Some(reason) => return Ok(BulkOutcome::Refused(Box::new(start), reason)),
                None => return Err(e),
            },
        };
        tracing::info!(object = %self.object(), job = %job.id, "Started a Bulk API 2.0 query job.");
        let deadline = tokio::time::Instant::now() + self.options.bulk_timeout;
        let mut wait = self.options.bulk_poll;
        loop {
            tokio::time::sleep(wait).await;
            let info = self.client.bulk_job(&job.id).await?;
            match info.state.as_str() {
                "JobComplete" => break,
                "Failed" | "Aborted" => {
                    let message = info.error_message.unwrap_or_default();
                    if !bulk_unsupported_message(&message) {
                        tracing::warn!(object = %self.object(), job = %job.id, state = %info.state, error = %message, "The Bulk query job did not complete.");
                    }
                    return Ok(BulkOutcome::Fallback(
                        Box::new(start),
                        format!("job {} is {}: {message}", job.id, info.state),
                    ));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    if let Err(e) = self.client.abort_bulk_job(&job.id).await {
                        tracing::warn!(job = %job.id, error = %e, "Could not abort the Bulk query job.");
                    }
                    return Ok(BulkOutcome::Fallback(
                        Box::new(start),
                        format!(
                            "job {} did not complete within `bulk_timeout_seconds` ({} s)",
                            job.id,
                            self.options.bulk_timeout.as_secs()
                        ),
                    ));
                }
                _ => wait = (wait * 2).min(MAX_POLL_WAIT),
            }
        }
        tracing::debug!(object = %self.object(), job = %job.id, "The Bulk query job is complete.");
        self.bulk_results(&job.id, None, start, None).await?;
        Ok(BulkOutcome::Done)
    }

    /// Lands a completed job's results from `locator`, one commit point per page.
    async fn bulk_results(
        &mut self,
        job: &str,
        mut locator: Option<String>,
        start: Start,
        mut max: Option<(String, String)>,
    ) -> Result<()> {
        let mut recent = start.recent.clone();
        let mut reset = start.reset;
        // Each `Sforce-Locator` is followed once (see `rest`).
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.stream(),
            format!("`Sforce-Locator` of Bulk job {job}"),
            "a next locator kept coming",
        );
        if let Some(locator) = &locator {
            guard.start_at(locator);
        }
        loop {
            let page = self
                .client
                .bulk_results(job, locator.as_deref(), self.options.bulk_page_size)
                .await?;
            let done = page.next_locator.is_none();
            if let Some(next) = &page.next_locator {
                if page.rows.is_empty() {
                    return Err(guard.no_progress("no rows"));
                }
                guard.follow(next)?;
            }
            let mut records = Vec::with_capacity(page.rows.len());
            for raw in page.rows {
                let (id, stamp, record) = self.convert(raw)?;
                if let Some(stamp) = stamp {
                    let at = (stamp, id);
                    if recent.contains(&at.1, &at.0) {
                        max = max.max(Some(at));
                        continue;
                    }
                    recent.insert(&at.1, &at.0);
                    max = max.max(Some(at));
                }
                records.push(record);
            }
            recent.prune(&self.floor(&max.clone().max(start.position.clone())));
            let cursor = if done {
                match &self.plan.cursor_field {
                    Some(field) => max.clone().max(start.position.clone()).map(|(stamp, id)| {
                        Cursor::Incremental {
                            field: field.clone(),
                            stamp,
                            id,
                            complete: true,
                            recent: recent.pairs(),
                        }
                    }),
                    None => Some(Cursor::Snapshot {
                        after_id: None,
                        complete: true,
                    }),
                }
            } else {
                Some(Cursor::Bulk {
                    job: job.to_owned(),
                    locator: page.next_locator.clone().unwrap_or_default(),
                    base: start.base.clone().map(Box::new),
                    max: max.clone(),
                    recent: recent.pairs(),
                })
            };
            if (!records.is_empty() || done || reset)
                && !self.emit(records, cursor.as_ref(), reset).await
            {
                return Ok(());
            }
            reset = false;
            if done {
                return Ok(());
            }
            locator = page.next_locator;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::cursor::{decode, encode};

    #[test]
    fn stamps_are_canonical_and_soql_ready() {
        assert_eq!(
            canonical_stamp("2024-05-01T12:00:00.000+0000").as_deref(),
            Some("2024-05-01T12:00:00.000Z")
        );
        assert_eq!(
            canonical_stamp("2024-05-01T14:00:00.250+02:00").as_deref(),
            Some("2024-05-01T12:00:00.250Z")
        );
        assert_eq!(canonical_stamp("nope"), None);
        assert_eq!(
            soql_datetime("2024-05-01T12:00:00.000Z"),
            "2024-05-01T12:00:00Z"
        );
        assert_eq!(
            soql_datetime("2024-05-01T12:00:00.250Z"),
            "2024-05-01T12:00:00.250Z"
        );
        assert_eq!(
            stamp_minus("2024-05-01T12:00:00.000Z", 300),
            "2024-05-01T11:55:00.000Z"
        );
        assert_eq!(soql_string("a'b\\c"), r"'a\'b\\c'");
    }

    #[test]
    fn recent_pairs_are_pruned_by_age_and_count() {
        let mut recent = Recent::default();
        recent.insert("a", "2024-01-01T00:00:00.000Z");
        recent.insert("b", "2024-01-01T00:10:00.000Z");
        recent.insert("a", "2024-01-01T00:20:00.000Z");
        assert!(recent.contains("a", "2024-01-01T00:20:00.000Z"));
        assert!(!recent.contains("a", "2024-01-01T00:00:00.000Z"));
        recent.prune("2024-01-01T00:15:00.000Z");
        assert_eq!(
            recent.pairs(),
            vec![("a".to_owned(), "2024-01-01T00:20:00.000Z".to_owned())]
        );
        for i in 0..(RECENT_CAP + 10) {
            recent.insert(
                &format!("id{i:05}"),
                &format!("2024-02-01T00:00:{:02}.000Z", i % 60),
            );
        }
        recent.prune("");
        assert_eq!(recent.pairs().len(), RECENT_CAP);
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor::Bulk {
            job: "750x".into(),
            locator: "L1".into(),
            base: Some(Box::new(Cursor::Incremental {
                field: "SystemModstamp".into(),
                stamp: "2024-01-01T00:00:00.000Z".into(),
                id: "001".into(),
                complete: true,
                recent: vec![("001".into(), "2024-01-01T00:00:00.000Z".into())],
            })),
            max: Some(("2024-01-02T00:00:00.000Z".into(), "001B".into())),
            recent: vec![],
        };
        let json = encode(&Some(&c));
        assert_eq!(json["phase"], "bulk");
        assert_eq!(json["base"]["phase"], "incremental");
        assert_eq!(decode::<Cursor>("account", Some(json)).unwrap(), Some(c));
        assert_eq!(encode(&None::<&Cursor>), Value::Null);
        assert_eq!(
            decode::<Cursor>("account", Some(Value::Null)).unwrap(),
            None
        );
        assert!(matches!(
            decode::<Cursor>("account", Some(serde_json::json!({"phase": "changes"}))),
            Err(Error::Cursor { .. })
        ));
    }
}
