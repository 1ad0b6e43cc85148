//! Acme's streams, their schemas and how each is read incrementally.
//!
//! Every Acme list (`GET /v1/<stream>`) filters by `updated_since` (inclusive) and
//! `updated_before` (exclusive), in Unix seconds, orders by `(updated_at, id)` and pages
//! with an opaque `page_token`. A read is one time window `[synced_before,
//! Acme's now)`: nothing changed in a second that has not ended yet is read, so a later
//! change in the same second cannot slip behind the cursor. Deleted objects come back as
//! tombstones (`deleted: true`), which the schema's deletion rule flags.
//!
//! The cursor says where the table stands: everything changed before `synced_before` has
//! landed, and while a window is being read, the window's end and the token of its next
//! page, so a killed read resumes at the page after the last committed one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary_sdk::pagination::{ProgressGuard, malformed_page, spawn_pages};
use tributary_sdk::{Page, PageStream, Records, Result, StreamSchema};

use crate::client::{AcmeClient, VENDOR};

/// One stream: its name, its schema file and its list endpoint.
#[derive(Debug, Clone, Copy)]
pub struct StreamDef {
    /// The stream's (and table's) name.
    pub name: &'static str,
    /// The text of `schemas/acme/<name>.json`.
    pub schema: &'static str,
    /// The list endpoint.
    pub path: &'static str,
}

/// Every stream, in the order `discover` lists them.
pub const STREAMS: &[StreamDef] = &[StreamDef {
    name: "items",
    schema: include_str!("../schemas/items.json"),
    path: "/v1/items",
}];

/// The declared schemas.
pub fn schemas() -> Result<Vec<StreamSchema>> {
    tributary_sdk::schema::load("acme", STREAMS.iter().map(|s| (s.name, s.schema)))
}

/// Where a read of one stream resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every change before this second (Unix seconds, Acme's clock) has landed.
    pub synced_before: i64,
    /// The window being read, if a read stopped inside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// A window read part-way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The window's end (exclusive).
    pub before: i64,
    /// The token of the window's next page.
    pub page_token: String,
}

/// Reads `def` from `cursor` (`None`: from the beginning) with fetch-ahead. A full refresh
/// reads everything again and marks its first page as the start of a snapshot.
pub fn read(
    client: Arc<AcmeClient>,
    def: StreamDef,
    page_size: u32,
    cursor: Option<Cursor>,
    full_refresh: bool,
) -> PageStream {
    spawn_pages(4, move |pages| async move {
        let cursor = cursor.unwrap_or(Cursor {
            synced_before: 0,
            window: None,
        });
        let since = cursor.synced_before;
        let (before, mut token) = match cursor.window {
            Some(window) => (window.before, Some(window.page_token)),
            // A new window ends at Acme's "now": ask it (this also proves the key).
            None => {
                client.me().await?;
                (client.clock.now().timestamp(), None)
            }
        };
        let mut guard = ProgressGuard::new(
            VENDOR,
            def.name,
            "pagination cursor `page_token`",
            "has_more stayed true",
        );
        if let Some(token) = &token {
            guard.start_at(token);
        }
        let mut first = true;
        loop {
            let mut query = vec![
                ("limit", page_size.to_string()),
                ("updated_since", since.to_string()),
                ("updated_before", before.to_string()),
            ];
            if let Some(token) = &token {
                query.push(("page_token", token.clone()));
            }
            let listing = client.list(def.path, &query).await?;
            let envelope = &listing.envelope;
            let what = format!("GET {}", def.path);
            let bad = |problem: String| malformed_page(VENDOR, def.name, &what, &problem);
            envelope.require_records_array("data").map_err(bad)?;
            let has_more = envelope.require_boolean("has_more").map_err(bad)?;
            let next = if has_more {
                let next = envelope.string("next_page_token").ok_or_else(|| {
                    bad("`has_more` is true but `next_page_token` is missing".to_owned())
                })?;
                if envelope.count == 0 {
                    return Err(guard.no_progress("no records"));
                }
                // Before the page lands: a page leading back to a followed token repeats
                // what was delivered, so it must not commit.
                guard.follow(&next)?;
                Some(next)
            } else {
                None
            };
            let resume = match &next {
                Some(page_token) => Cursor {
                    synced_before: since,
                    window: Some(Window {
                        before,
                        page_token: page_token.clone(),
                    }),
                },
                None => Cursor {
                    synced_before: before.max(since),
                    window: None,
                },
            };
            let records = Records::Json {
                body: listing.response.body,
                path: &["data"],
            };
            let page = Page::with_cursor(records, &resume).resetting(first && full_refresh);
            first = false;
            if !pages.send(page).await {
                return Ok(());
            }
            match next {
                Some(next) => token = Some(next),
                None => return Ok(()),
            }
        }
    })
}

/// The definition of stream `name`.
pub fn stream(name: &str) -> Result<StreamDef> {
    tributary_sdk::connector::find_named(STREAMS, name, |s| s.name).copied()
}
