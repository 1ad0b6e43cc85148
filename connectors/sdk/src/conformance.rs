//! The conformance kit: the same checks for every connector, run against its simulator.
//!
//! A connector's tests implement [`Harness`] (how to reach its simulator and change
//! objects there) and call [`run`]. The kit drives the connector the way the runtime does
//! (pages converted by the real [`BatchBuilder`], cursors handed back) and checks:
//!
//! 1. `check` succeeds and `discover` returns valid, uniquely named schemas;
//! 2. a full read yields every object the vendor has, exactly once;
//! 3. resuming from the cursor of a page in the middle yields exactly the rest;
//! 4. an incremental read after a create, an update and a delete yields exactly those
//!    objects, the deleted one flagged, and nothing else;
//! 5. an incremental read with no change yields nothing;
//! 6. a full refresh starts with a resetting page.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use async_trait::async_trait;
use futures::StreamExt;

use crate::connector::{ReadRequest, Source};
use crate::convert::BatchBuilder;
use crate::schema::{IS_DELETED, StreamSchema};

/// How the kit reaches a connector's simulator.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The connector under test, configured against the simulator.
    fn source(&self) -> Arc<dyn Source>;
    /// The ids of the live objects of `stream` at the vendor.
    async fn ids(&self, stream: &str) -> Vec<String>;
    /// Creates an object in `stream`; returns its id.
    async fn create(&self, stream: &str) -> String;
    /// Changes the object `id` of `stream`.
    async fn update(&self, stream: &str, id: &str);
    /// Deletes the object `id` of `stream`.
    async fn delete(&self, stream: &str, id: &str);
    /// Waits until changes made so far are visible to incremental reads (e.g. the
    /// vendor's event times have second resolution, or a one-minute exclusion window).
    async fn settle(&self);
}

/// One read's result: every page's ids and deletion flags, and the cursors.
#[derive(Debug, Default)]
pub struct ReadLog {
    /// `(id, is_deleted)` per record, in order.
    pub records: Vec<(String, bool)>,
    /// The cursor after each page, with the number of records read up to it.
    pub cursors: Vec<(usize, serde_json::Value)>,
    /// Whether the first page reset the table.
    pub first_page_resets: bool,
}

impl ReadLog {
    /// The distinct ids read.
    pub fn ids(&self) -> BTreeSet<String> {
        self.records.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Ids read more than once.
    pub fn duplicates(&self) -> Vec<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &self.records {
            *counts.entry(id).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// The last cursor.
    pub fn last_cursor(&self) -> Option<serde_json::Value> {
        self.cursors.last().map(|(_, c)| c.clone())
    }
}

/// Reads `request` until the read fails, for tests of hostile vendors: the pages delivered
/// before the error, and the error. Panics if the read ends without one, or does not stop
/// within 30 s (a walk that never ends is the failure such tests look for).
pub async fn read_until_error(
    source: &dyn Source,
    request: ReadRequest,
) -> (Vec<crate::Page>, crate::Error) {
    let stream = request.schema.name.clone();
    let walk = async {
        let mut pages = source.read(request).await.expect("the read starts");
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => out.push(page),
                Err(e) => return (out, e),
            }
        }
        panic!(
            "{stream}: the read ended without an error after {} pages",
            out.len()
        );
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), walk)
        .await
        .unwrap_or_else(|_| panic!("{stream}: the read did not stop within 30 s"))
}

/// Asserts `err` is a protocol error of `vendor` about `stream` whose message has `needle`.
pub fn assert_protocol(err: &crate::Error, vendor: &str, stream: &str, needle: &str) {
    match err {
        crate::Error::Protocol {
            vendor: v,
            stream: s,
            message,
        } => {
            assert_eq!((v.as_str(), s.as_str()), (vendor, stream), "{err}");
            assert!(message.contains(needle), "wanted `{needle}` in: {message}");
        }
        other => panic!("expected a protocol error, got: {other}"),
    }
}

/// Reads `stream` from `cursor` to its end, converting every page like the runtime does.
pub async fn read_all(
    source: &dyn Source,
    schema: &StreamSchema,
    cursor: Option<serde_json::Value>,
    full_refresh: bool,
) -> Result<ReadLog, String> {
    let mut pages = source
        .read(ReadRequest {
            schema: schema.clone(),
            cursor,
            full_refresh,
        })
        .await
        .map_err(|e| format!("read `{}`: {e}", schema.name))?;
    let mut log = ReadLog::default();
    let mut first = true;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("page of `{}`: {e}", schema.name))?;
        if first {
            log.first_page_resets = page.reset;
            first = false;
        }
        let mut builder = BatchBuilder::new(schema, None);
        builder
            .append_page(&page)
            .map_err(|e| format!("converting a page of `{}`: {e}", schema.name))?;
        let (batches, _) = builder.finish().map_err(|e| e.to_string())?;
        for batch in &batches {
            let ids = batch
                .column_by_name(&schema.primary_key)
                .ok_or("no primary key column")?
                .as_string_opt::<i32>()
                .ok_or("the primary key is not text")?
                .clone();
            let deleted = batch
                .column_by_name(IS_DELETED)
                .ok_or("no is_deleted column")?
                .as_boolean()
                .clone();
            for i in 0..batch.num_rows() {
                if ids.is_null(i) {
                    return Err(format!("`{}`: a record without an id", schema.name));
                }
                log.records
                    .push((ids.value(i).to_owned(), deleted.value(i)));
            }
        }
        log.cursors.push((log.records.len(), page.cursor));
    }
    Ok(log)
}

/// Runs every check on `stream` (an object stream the harness can create, update and
/// delete in). Returns the first failure, described.
pub async fn run(harness: &dyn Harness, stream: &str) -> Result<(), String> {
    run_checks(harness, stream, true).await
}

/// Runs every check on `stream`, a stream whose vendor keeps no trace of a deleted object
/// (Intercom's contacts, Twilio's messages): check 4 creates and updates only, and
/// [`Harness::delete`] is never called.
pub async fn run_without_deletes(harness: &dyn Harness, stream: &str) -> Result<(), String> {
    run_checks(harness, stream, false).await
}

async fn run_checks(harness: &dyn Harness, stream: &str, deletes: bool) -> Result<(), String> {
    let source = harness.source();
    source.check().await.map_err(|e| format!("check: {e}"))?;
    let schemas = source
        .discover()
        .await
        .map_err(|e| format!("discover: {e}"))?;
    let mut names = BTreeSet::new();
    for s in &schemas {
        s.validate().map_err(|e| format!("discover: {e}"))?;
        if !names.insert(s.name.clone()) {
            return Err(format!("discover: stream `{}` appears twice", s.name));
        }
    }
    let schema = schemas
        .iter()
        .find(|s| s.name == stream)
        .ok_or_else(|| format!("discover: no stream `{stream}`"))?;

    // 2. Full read: everything, once.
    let full = read_all(source.as_ref(), schema, None, false).await?;
    let want: BTreeSet<String> = harness.ids(stream).await.into_iter().collect();
    if !full.duplicates().is_empty() {
        return Err(format!("full read: read twice: {:?}", full.duplicates()));
    }
    if full.ids() != want {
        return Err(format!(
            "full read: got {} ids, the vendor has {}; missing {:?}, extra {:?}",
            full.ids().len(),
            want.len(),
            want.difference(&full.ids()).take(5).collect::<Vec<_>>(),
            full.ids().difference(&want).take(5).collect::<Vec<_>>()
        ));
    }
    let end = full
        .last_cursor()
        .ok_or("full read: no page, so no cursor to resume from")?;

    // 3. Resume from the middle.
    if let Some((done, cursor)) = full
        .cursors
        .iter()
        .find(|(n, _)| *n > 0 && *n < full.records.len())
        .cloned()
    {
        let rest = read_all(source.as_ref(), schema, Some(cursor), false).await?;
        let before: BTreeSet<String> = full.records[..done]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        let overlap: Vec<_> = before.intersection(&rest.ids()).take(5).cloned().collect();
        if !overlap.is_empty() {
            return Err(format!(
                "resume: re-read records before the cursor: {overlap:?}"
            ));
        }
        let union: BTreeSet<String> = before.union(&rest.ids()).cloned().collect();
        if union != want {
            return Err(format!(
                "resume: {} + {} ids do not make the {} the vendor has",
                before.len(),
                rest.ids().len(),
                want.len()
            ));
        }
    }

    // 5. No change, nothing read.
    let idle = read_all(source.as_ref(), schema, Some(end.clone()), false).await?;
    if !idle.records.is_empty() {
        return Err(format!(
            "incremental read without changes returned {:?}",
            idle.ids().iter().take(5).collect::<Vec<_>>()
        ));
    }
    let end = idle.last_cursor().unwrap_or(end);

    // 4. Create, update, delete: exactly those come back.
    let existing: Vec<String> = want.iter().cloned().collect();
    if existing.len() < 2 {
        return Err("the simulator needs at least two objects in the stream".into());
    }
    let created = harness.create(stream).await;
    harness.update(stream, &existing[0]).await;
    if deletes {
        harness.delete(stream, &existing[1]).await;
    }
    harness.settle().await;
    let changes = read_all(source.as_ref(), schema, Some(end), false).await?;
    let mut expected: BTreeSet<String> =
        [created.clone(), existing[0].clone()].into_iter().collect();
    if deletes {
        expected.insert(existing[1].clone());
    }
    if changes.ids() != expected {
        return Err(format!(
            "incremental read after create/update/delete returned {:?}, expected {expected:?}",
            changes.ids()
        ));
    }
    let deleted: BTreeSet<String> = changes
        .records
        .iter()
        .filter(|(_, d)| *d)
        .map(|(id, _)| id.clone())
        .collect();
    let want_deleted: BTreeSet<String> = if deletes {
        [existing[1].clone()].into_iter().collect()
    } else {
        BTreeSet::new()
    };
    if deleted != want_deleted {
        return Err(format!(
            "incremental read flagged {deleted:?} as deleted, expected {want_deleted:?}"
        ));
    }

    // 6. A full refresh resets the table with its first page.
    let refresh = read_all(source.as_ref(), schema, None, true).await?;
    if !refresh.first_page_resets {
        return Err("full refresh: the first page does not reset the table".into());
    }
    Ok(())
}
