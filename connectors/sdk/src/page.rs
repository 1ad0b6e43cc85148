//! Pages: what a connector hands the runtime, one vendor response (or one deduplicated
//! window of changes) at a time, each with the cursor to resume after it.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;

use crate::error::Result;

/// The records of one page.
#[derive(Debug, Clone)]
pub enum Records {
    /// A vendor response body, untouched, whose records are the JSON array found by
    /// following `path` (object keys) from the top, e.g. `["data"]` for a Stripe list.
    /// Converted straight into Arrow builders without building a JSON tree.
    Json {
        /// The response body.
        body: Bytes,
        /// Keys leading to the array of records; empty if the body is the array.
        path: &'static [&'static str],
    },
    /// Records assembled by the connector (e.g. the latest versions of objects from an
    /// events feed).
    Values(Vec<Record>),
}

impl Records {
    /// Whether the page carries no records at all (cheap for `Values`; `Json` pages are
    /// assumed non-empty).
    pub fn is_empty_values(&self) -> bool {
        matches!(self, Records::Values(v) if v.is_empty())
    }
}

/// One record assembled by a connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The vendor object.
    pub value: serde_json::Value,
    /// Whether the vendor deleted it (overrides the schema's deletion rule when true).
    pub is_deleted: bool,
}

/// A page of records and the position to resume from once it is committed.
#[derive(Debug, Clone)]
pub struct Page {
    /// The records.
    pub records: Records,
    /// The connector's cursor after this page, as JSON: committed atomically with the
    /// page's rows, and handed back (decoded) in [`crate::ReadRequest::cursor`] on the next
    /// run. Every page's cursor must be a valid place to resume.
    pub cursor: serde_json::Value,
    /// When the page was fetched; lands in `received_at`.
    pub received_at: DateTime<Utc>,
    /// Set on the first page of a snapshot (a full resync): this page starts a new
    /// snapshot, or starts an open one over. A snapshot replaces the table's rows only when
    /// it is complete: until then, the old rows stay and are updated in place; once a read
    /// ends normally (its pages exhausted, not on an error, cancellation or deferral) the
    /// table drops every row received before the snapshot's first page. A failed or
    /// interrupted snapshot never shrinks the table, and resumes from its committed page
    /// cursor. So every page after this one, in this run and the next, must carry on the
    /// same full read until it ends.
    pub reset: bool,
}

impl Page {
    /// A page fetched now.
    pub fn new(records: Records, cursor: serde_json::Value) -> Self {
        Page {
            records,
            cursor,
            received_at: Utc::now(),
            reset: false,
        }
    }

    /// A page fetched now that resumes at `cursor`, the connector's own
    /// [`crate::Connector::Cursor`] (or `None` of it, for "no position yet"), encoded the
    /// way the SDK decodes it for the next read (see [`crate::cursor`]).
    pub fn with_cursor<C: Serialize + ?Sized>(records: Records, cursor: &C) -> Self {
        Self::new(records, crate::cursor::encode(cursor))
    }

    /// Marks the page as the start of a snapshot (see [`Page::reset`]).
    pub fn resetting(mut self, reset: bool) -> Self {
        self.reset = reset;
        self
    }
}

/// The pages of one stream read, in order. Connectors usually fetch ahead on a task of
/// their own (see [`crate::pagination::spawn_pages`]), so the runtime converts page N
/// while page N+1 is in flight.
pub type PageStream = BoxStream<'static, Result<Page>>;
