//! Contract tests: the connector against Zendesk's own documented responses, not our
//! simulator.
//!
//! The bodies in `fixtures/contract/` are the example responses of Zendesk's API reference
//! (see the README there for each source). A tiny replay server on 127.0.0.1 answers each
//! request with one of them, so these tests go through the connector's real path: the HTTP
//! client, the envelope scan, the export and list cursors, the record shaping and the
//! conversion into Arrow. A parser that only accepts the simulator's shapes fails here.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::StreamExt;
use tributary_sandbox_kit::replay::{Replay, Route};
use tributary_sdk::convert::BatchBuilder;
use tributary_sdk::cursor::decode;
use tributary_sdk::http::vendor_message;
use tributary_sdk::{Connector, Error, Page, Records, Result, Secret, SourceContext, StreamSchema};

use crate::client::ZendeskClient;
use crate::streams::{self, Cursor, ReadContext};
use crate::{Zendesk, ZendeskConfig};

const TICKETS_CURSOR_EXPORT: &str = include_str!("../fixtures/contract/tickets_cursor_export.json");
const ORGANIZATIONS_TIME_EXPORT: &str =
    include_str!("../fixtures/contract/organizations_time_export.json");
const TICKET_EVENTS_REFERENCE_EXAMPLE: &str =
    include_str!("../fixtures/contract/ticket_events_reference_example.json");
const GROUPS_PAGE_1: &str = include_str!("../fixtures/contract/groups_page_1.json");
const GROUPS_PAGE_2: &str = include_str!("../fixtures/contract/groups_page_2.json");
const ERROR_COULDNT_AUTHENTICATE: &str =
    include_str!("../fixtures/contract/error_couldnt_authenticate.json");
const ERROR_FORBIDDEN: &str = include_str!("../fixtures/contract/error_forbidden.json");
const ERROR_RECORD_NOT_FOUND: &str =
    include_str!("../fixtures/contract/error_record_not_found.json");

/// The `after_cursor` of the documented ticket export page.
const AFTER_CURSOR: &str = "MTU3NjYxMzUzOS4wfHw0Njd8";

fn config(replay: &Replay) -> ZendeskConfig {
    let mut config = ZendeskConfig::new("acme", "admin@example.com", Secret::new("contract-token"));
    config.api_base = Some(replay.url().to_owned());
    // Before every documented record, so the first export asks from there.
    config.start_date = Some("2008-01-01".to_owned());
    config.requests_per_minute = 600_000;
    config.export_requests_per_minute = 600_000;
    config
}

/// Reads `stream` through the connector's own reader (custom ticket fields: none), from
/// `cursor`.
async fn read(replay: &Replay, stream: &str, cursor: Option<Cursor>) -> Result<Vec<Page>> {
    let settings = config(replay).validate()?;
    let context = ReadContext {
        client: Arc::new(ZendeskClient::new(&settings)?),
        settings,
        custom_fields: HashMap::new(),
    };
    let def = streams::stream(stream).unwrap();
    let mut pages = streams::read(context, def, cursor, false);
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        out.push(page?);
    }
    Ok(out)
}

fn schema(stream: &str) -> StreamSchema {
    streams::schemas()
        .unwrap()
        .into_iter()
        .find(|s| s.name == stream)
        .unwrap()
}

/// The pages converted by the SDK's converter; nothing may need rescuing.
fn convert(stream: &str, pages: &[Page]) -> arrow::record_batch::RecordBatch {
    let mut builder = BatchBuilder::new(&schema(stream), None);
    for page in pages {
        builder.append_page(page).unwrap();
    }
    let (batches, report) = builder.finish().unwrap();
    // One small page: one batch (the converter splits only past its byte budget).
    assert_eq!(batches.len(), 1);
    let batch = batches.into_iter().next().unwrap();
    assert_eq!(report.rescued_values, 0, "{stream}: {report:?}");
    batch
}

fn text(batch: &arrow::record_batch::RecordBatch, column: &str, row: usize) -> String {
    batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .as_string::<i32>()
        .value(row)
        .to_owned()
}

fn micros(batch: &arrow::record_batch::RecordBatch, column: &str, row: usize) -> i64 {
    batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .as_primitive::<TimestampMicrosecondType>()
        .value(row)
}

#[tokio::test]
async fn contract_the_cursor_ticket_export_keeps_zendesks_after_cursor() {
    let replay = Replay::start(vec![Route::new(
        "/api/v2/incremental/tickets/cursor.json",
        None,
        TICKETS_CURSOR_EXPORT,
    )])
    .await;
    let pages = read(&replay, "tickets", None).await.unwrap();
    // `end_of_stream: true` ends the read after one page; its cursor is Zendesk's.
    assert_eq!(pages.len(), 1);
    assert_eq!(
        decode::<Cursor>("tickets", Some(pages[0].cursor.clone())).unwrap(),
        Some(Cursor::Export {
            after_cursor: AFTER_CURSOR.to_owned()
        })
    );
    let requests = replay.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    // Every ticket, those an AI agent handled included (Zendesk's default scope is `agent`).
    assert!(
        requests[0].contains("start_time=1199145600")
            && requests[0].contains("support_type_scope=all"),
        "{requests:?}"
    );
    // Converted straight from the body, custom columns appended to each ticket.
    let Records::Json { path, .. } = &pages[0].records else {
        panic!("tickets are converted from the body");
    };
    assert_eq!(*path, ["tickets"]);

    let batch = convert("tickets", &pages);
    assert_eq!(batch.num_rows(), 1);
    let deleted = batch.column_by_name("is_deleted").unwrap().as_boolean();
    assert!(!deleted.value(0));
    assert_eq!(text(&batch, "id", 0), "35436");
    assert_eq!(text(&batch, "requester_id", 0), "20978392");
    assert_eq!(text(&batch, "subject", 0), "Help, my printer is on fire!");
    assert_eq!(text(&batch, "via_channel", 0), "web");
    assert_eq!(text(&batch, "satisfaction_rating_score", 0), "good");
    assert_eq!(text(&batch, "tags", 0), r#"["enterprise","other_tag"]"#);
    assert_eq!(
        text(&batch, "custom_fields", 0),
        r#"[{"id":27642,"value":"745"},{"id":27648,"value":"yes"}]"#
    );
    // 2011-05-05T10:38:52Z
    assert_eq!(micros(&batch, "updated_at", 0), 1_304_591_932_000_000);
    assert!(batch.column_by_name("due_at").unwrap().is_null(0));

    // The next run resumes from the cursor, not from a start time.
    let again = read(
        &replay,
        "tickets",
        Some(Cursor::Export {
            after_cursor: AFTER_CURSOR.to_owned(),
        }),
    )
    .await
    .unwrap();
    let requests = replay.requests();
    assert!(
        requests[1].contains(&format!("cursor={AFTER_CURSOR}"))
            && !requests[1].contains("start_time")
            && requests[1].contains("support_type_scope=all"),
        "{requests:?}"
    );
    assert_eq!(again[0].cursor["after_cursor"], AFTER_CURSOR);
}

#[tokio::test]
async fn contract_the_time_based_organization_export_moves_to_end_time() {
    let replay = Replay::start(vec![Route::new(
        "/api/v2/incremental/organizations.json",
        None,
        ORGANIZATIONS_TIME_EXPORT,
    )])
    .await;
    let pages = read(&replay, "organizations", None).await.unwrap();
    assert_eq!(pages.len(), 1);
    // The next start is the page's `end_time`; no id sits at that second.
    assert_eq!(
        decode::<Cursor>("organizations", Some(pages[0].cursor.clone())).unwrap(),
        Some(Cursor::Time {
            start_time: 1_601_357_503,
            seen: vec![]
        })
    );
    let Records::Values(records) = &pages[0].records else {
        panic!("organizations are shaped records");
    };
    assert_eq!(records.len(), 1);
    assert!(!records[0].is_deleted, "no `deleted_at`: not deleted");

    let batch = convert("organizations", &pages);
    assert_eq!(text(&batch, "id", 0), "4112492");
    assert_eq!(text(&batch, "name", 0), "Groablet Enterprises");
    assert_eq!(text(&batch, "group_id", 0), "1835962");
    assert_eq!(text(&batch, "domain_names", 0), r#"["remain.com"]"#);
    assert_eq!(
        text(&batch, "organization_fields", 0),
        r#"{"datepudding":"2018-11-04T00:00:00+00:00","org_field_1":"happy happy","org_field_2":"teapot_kettle"}"#
    );
    // 2018-11-14T00:54:22Z
    assert_eq!(micros(&batch, "updated_at", 0), 1_542_156_862_000_000);
}

#[tokio::test]
async fn contract_a_cursor_paginated_list_follows_meta_after_cursor() {
    let replay = Replay::start(vec![
        Route::new(
            "/api/v2/groups.json",
            Some("page[after]=xxx"),
            GROUPS_PAGE_2,
        ),
        Route::new("/api/v2/groups.json", None, GROUPS_PAGE_1),
    ])
    .await;
    let pages = read(&replay, "groups", None).await.unwrap();
    assert_eq!(pages.len(), 2);
    assert!(pages[0].reset, "a new snapshot replaces the table");
    assert_eq!(
        decode::<Cursor>("groups", Some(pages[0].cursor.clone())).unwrap(),
        Some(Cursor::Snapshot {
            after: "xxx".to_owned()
        })
    );
    assert_eq!(pages[1].cursor["mode"], "snapshot_done");
    let requests = replay.requests();
    assert!(requests[1].contains("page[after]=xxx"), "{requests:?}");
    for page in &pages {
        let Records::Json { path, .. } = &page.records else {
            panic!("group pages land as their bodies");
        };
        assert_eq!(path, &["groups"]);
    }
    let batch = convert("groups", &pages);
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(text(&batch, "id", 0), "211");
    assert_eq!(text(&batch, "name", 1), "MCs");
}

#[tokio::test]
async fn contract_the_documented_ticket_event_example_is_refused_not_misread() {
    // Zendesk's API reference shows a ticket *metric* event (`time`, `metric`) as the
    // example of the ticket event export; real ticket events carry `timestamp`, which the
    // time-based export pages on. The connector must say so rather than land it at a
    // made-up time.
    let replay = Replay::start(vec![Route::new(
        "/api/v2/incremental/ticket_events.json",
        None,
        TICKET_EVENTS_REFERENCE_EXAMPLE,
    )])
    .await;
    let err = read(&replay, "ticket_events", None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode { .. }) && err.to_string().contains("timestamp"),
        "{err}"
    );
}

#[tokio::test]
async fn contract_error_bodies_yield_zendesks_message() {
    let replay = Replay::start(vec![
        Route::new("/api/v2/users/me.json", None, ERROR_COULDNT_AUTHENTICATE).status(401),
        Route::new("/api/v2/brands.json", None, ERROR_RECORD_NOT_FOUND).status(404),
    ])
    .await;
    let source = Zendesk::new(config(&replay), SourceContext::default()).unwrap();
    match source.check().await.unwrap_err() {
        Error::Auth {
            status, message, ..
        } => assert_eq!(
            (status, message.as_str()),
            (401, "Couldn't authenticate you")
        ),
        other => panic!("expected an auth error, got {other:?}"),
    }
    match read(&replay, "brands", None).await.unwrap_err() {
        Error::Http {
            status, message, ..
        } => assert_eq!(
            (status, message.as_str()),
            (404, "RecordNotFound: Not found")
        ),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert_eq!(
        vendor_message(ERROR_FORBIDDEN.as_bytes()),
        "You do not have access to this page. Please contact the account owner of this help \
         desk for further help."
    );

    // A 403 to a stream while `users/me` shows an admin: the endpoint is not on the plan,
    // told in Zendesk's words. (`users/me` answers in the shape of the "Show Self"
    // example, https://developer.zendesk.com/api-reference/ticketing/users/users/#show-self,
    // as an admin.)
    let replay = Replay::start(vec![
        Route::new(
            "/api/v2/users/me.json",
            None,
            r#"{"user":{"id":35436,"name":"Johnny Admin","role":"admin"}}"#,
        ),
        Route::new("/api/v2/groups.json", None, ERROR_FORBIDDEN).status(403),
    ])
    .await;
    match read(&replay, "groups", None).await.unwrap_err() {
        Error::Unavailable { message } => assert!(
            message.starts_with(
                "You do not have access to this page. Please contact the account owner of \
                 this help desk for further help. (Zendesk answered HTTP 403"
            ),
            "{message}"
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
