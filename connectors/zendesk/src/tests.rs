//! The connector against the Zendesk simulator: every stream lands every object once, the
//! exports land exactly what changed (after the one-minute window), every cursor is a
//! place to resume, snapshots replace their table, custom fields become typed columns,
//! ticket events carry their requester, bad bodies are fetched again, and the SDK
//! conformance kit passes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tributary_sdk::connector::find_stream;
use tributary_sdk::cursor::{decode, encode};
use tributary_sdk::schema::ColumnType;
use tributary_sdk::{Connector, Error, Page, ReadRequest, Records, Secret, SourceContext};

use crate::sandbox::{BadShape, Faults, SandboxConfig, ZendeskFaults, ZendeskSandbox};
use crate::streams::{Cursor, STREAMS};
use crate::{Zendesk, ZendeskConfig};

async fn sandbox(records: usize) -> ZendeskSandbox {
    ZendeskSandbox::start(
        SandboxConfig {
            records,
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap()
}

fn config(sandbox: &ZendeskSandbox, export_page_size: u32, page_size: u32) -> ZendeskConfig {
    let mut config = ZendeskConfig::new(
        ZendeskSandbox::SUBDOMAIN,
        ZendeskSandbox::EMAIL,
        Secret::new(ZendeskSandbox::API_TOKEN),
    );
    config.api_base = Some(sandbox.url());
    // The simulator has no limits here; keep the client's out of the way too.
    config.requests_per_minute = 600_000;
    config.export_requests_per_minute = 600_000;
    config.export_page_size = export_page_size;
    config.page_size = page_size;
    config
}

fn zendesk(sandbox: &ZendeskSandbox, export_page_size: u32, page_size: u32) -> Zendesk {
    Zendesk::new(
        config(sandbox, export_page_size, page_size),
        SourceContext {
            source: "zendesk".into(),
        },
    )
    .unwrap()
}

/// The read of `stream` the runtime would ask for, with the committed cursor as JSON
/// (decoded by the SDK on its way to the connector). The schema is the declared one: the
/// connector reads tickets' custom fields afresh whatever columns discovery added, and
/// discovering here would send requests the tests do not count on.
fn request(stream: &str, cursor: Option<Value>, full_refresh: bool) -> ReadRequest {
    let schemas = crate::streams::schemas().unwrap();
    ReadRequest {
        schema: find_stream(&schemas, stream).unwrap().clone(),
        cursor,
        full_refresh,
    }
}

async fn read(
    zendesk: &Zendesk,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> Vec<Page> {
    let mut pages = tributary_sdk::Source::read(zendesk, request(stream, cursor, full_refresh))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        // Every cursor is one the next run can start from.
        decode::<Cursor>(stream, Some(page.cursor.clone()))
            .unwrap()
            .unwrap();
        out.push(page);
    }
    out
}

/// The records of a page as values with their deletion flag.
fn values(page: &Page) -> Vec<(Value, bool)> {
    match &page.records {
        Records::Json { body, path } => {
            // The converter flags deletions of a body by the stream's schema rule
            // (tickets: `status: deleted`).
            let rule = crate::streams::STREAMS
                .iter()
                .find(|def| def.records == *path)
                .and_then(|def| {
                    crate::streams::schemas()
                        .unwrap()
                        .into_iter()
                        .find(|schema| schema.name == def.name)
                })
                .and_then(|schema| schema.deletion);
            let root: Value = serde_json::from_slice(body).unwrap();
            let mut list = &root;
            for key in path.iter() {
                list = &list[*key];
            }
            list.as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let deleted = rule
                        .as_ref()
                        .is_some_and(|r| v.get(&r.field) == Some(&r.equals));
                    (v.clone(), deleted)
                })
                .collect()
        }
        Records::Values(records) => records
            .iter()
            .map(|r| (r.value.clone(), r.is_deleted))
            .collect(),
    }
}

fn all_values(pages: &[Page]) -> Vec<(Value, bool)> {
    pages.iter().flat_map(values).collect()
}

fn ids(pages: &[Page]) -> Vec<String> {
    all_values(pages)
        .into_iter()
        .map(|(v, _)| match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Asserts every id of `expected` lands exactly once and nothing else does.
fn assert_exactly_once(stream: &str, got: &[String], expected: &[String]) {
    let mut seen = HashSet::new();
    for id in got {
        assert!(seen.insert(id), "{stream}: {id} landed twice");
    }
    let expected: HashSet<_> = expected.iter().collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    let extra: Vec<_> = seen.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{stream}: missing {missing:?}, unexpected {extra:?}"
    );
}

#[tokio::test]
async fn check_accepts_the_credentials_and_names_a_wrong_one() {
    let sandbox = sandbox(5).await;
    zendesk(&sandbox, 1000, 100).check().await.unwrap();

    let mut oauth = config(&sandbox, 1000, 100);
    oauth.email = None;
    oauth.api_token = None;
    oauth.oauth_access_token = Some(Secret::new(ZendeskSandbox::OAUTH_TOKEN));
    Zendesk::new(oauth, SourceContext::default())
        .unwrap()
        .check()
        .await
        .unwrap();

    let mut wrong = config(&sandbox, 1000, 100);
    wrong.api_token = Some(Secret::new("wrong-token"));
    let wrong = Zendesk::new(wrong, SourceContext::default()).unwrap();
    let err = wrong.check().await.unwrap_err();
    match &err {
        Error::Auth {
            vendor,
            status,
            message,
        } => {
            assert_eq!((vendor.as_str(), status), ("Zendesk", &401));
            assert_eq!(message, "Couldn't authenticate you");
        }
        other => panic!("expected an auth error, got {other}"),
    }
    assert!(!err.to_string().contains("wrong-token"));
    // Discovery still answers (without custom fields), so other sources keep syncing; the
    // stream's own read reports the credentials.
    let schemas = wrong.discover().await.unwrap();
    assert_eq!(schemas.len(), STREAMS.len());
    let read = tributary_sdk::Source::read(&wrong, request("tickets", None, false)).await;
    assert!(matches!(read, Err(Error::Auth { status: 401, .. })));
}

#[tokio::test]
async fn discover_adds_typed_custom_field_columns() {
    let sandbox = sandbox(5).await;
    let schemas = zendesk(&sandbox, 1000, 100).discover().await.unwrap();
    assert_eq!(schemas.len(), 13);
    let tickets = schemas.iter().find(|s| s.name == "tickets").unwrap();
    tickets.validate().unwrap();
    let custom: HashMap<&str, ColumnType> = tickets
        .columns
        .iter()
        .filter(|c| {
            c.name.starts_with("custom_")
                && c.name != "custom_fields"
                && c.name != "custom_status_id"
        })
        .map(|c| (c.name.as_str(), c.ty))
        .collect();
    let product_lowercase = format!(
        "custom_product_{}",
        sandbox.ids("ticket_fields").last().unwrap()
    );
    let want: HashMap<&str, ColumnType> = [
        ("custom_order_number", ColumnType::String),
        ("custom_refund_amount", ColumnType::Number),
        ("custom_vip_customer", ColumnType::Boolean),
        ("custom_product", ColumnType::String),
        ("custom_follow_up_date", ColumnType::Timestamp),
        ("custom_components", ColumnType::Json),
        ("custom_seats", ColumnType::Integer),
        (product_lowercase.as_str(), ColumnType::String),
    ]
    .into_iter()
    .collect();
    assert_eq!(custom, want);
}

#[tokio::test]
async fn every_stream_lands_every_object_once() {
    let sandbox = sandbox(120).await;
    let zendesk = zendesk(&sandbox, 25, 10);
    for def in STREAMS {
        let pages = read(&zendesk, def.name, None, false).await;
        assert!(!pages.is_empty(), "{}", def.name);
        let expected = sandbox.ids(def.name);
        assert!(!expected.is_empty(), "{}", def.name);
        assert_exactly_once(def.name, &ids(&pages), &expected);
        let snapshot = def.fetch.whole_list();
        assert_eq!(
            pages[0].reset,
            def.fetch.replaces(),
            "{}: only snapshots that replace the table reset",
            def.name
        );
        assert!(pages[1..].iter().all(|p| !p.reset), "{}", def.name);
        let last = pages.last().unwrap().cursor.clone();
        let again = read(&zendesk, def.name, Some(last.clone()), false).await;
        if snapshot {
            assert_eq!(last["mode"], "snapshot_done", "{}", def.name);
            assert_eq!(
                again[0].reset,
                def.fetch.replaces(),
                "{}: the next run is a new snapshot",
                def.name
            );
            assert_exactly_once(def.name, &ids(&again), &expected);
        } else {
            assert!(ids(&again).is_empty(), "{}: {:?}", def.name, ids(&again));
        }
    }
}

#[tokio::test]
async fn tickets_carry_typed_custom_columns_and_deletions() {
    let sandbox = sandbox(40).await;
    let zendesk = zendesk(&sandbox, 1000, 100);
    let fields = zendesk.custom_fields(false).await.unwrap();
    let seats = fields
        .iter()
        .find(|f| f.column == "custom_seats")
        .unwrap()
        .id;
    let refund = fields
        .iter()
        .find(|f| f.column == "custom_refund_amount")
        .unwrap()
        .id;
    let vip = fields
        .iter()
        .find(|f| f.column == "custom_vip_customer")
        .unwrap()
        .id;
    let pages = read(&zendesk, "tickets", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    let with_seats = all_values(&pages)
        .into_iter()
        .filter(|(t, _)| t.get("custom_seats").is_some_and(|v| !v.is_null()))
        .count();
    assert!(with_seats > 0);
    for (ticket, deleted) in all_values(&pages) {
        assert!(!deleted);
        if let Some(seats) = ticket.get("custom_seats").filter(|v| !v.is_null()) {
            assert!(seats.is_i64(), "Zendesk's text became an integer: {seats}");
        }
    }

    let id = sandbox.ids("tickets")[0].clone();
    sandbox
        .update(
            "tickets",
            &id,
            json!({"custom_fields": [{"id": seats, "value": "42"}, {"id": refund, "value": "19.90"}, {"id": vip, "value": true}]}),
        )
        .unwrap();
    let gone = sandbox.ids("tickets")[1].clone();
    assert!(sandbox.delete("tickets", &gone));
    sandbox.advance_clock(Duration::from_secs(61));
    let changes = read(&zendesk, "tickets", Some(cursor), false).await;
    let changed: HashMap<String, (Value, bool)> = all_values(&changes)
        .into_iter()
        .map(|(v, d)| (v["id"].to_string(), (v, d)))
        .collect();
    assert_eq!(changed.len(), 2, "{:?}", changed.keys());
    let (ticket, deleted) = &changed[&id];
    assert!(!deleted);
    assert_eq!(ticket["custom_seats"], 42);
    assert_eq!(ticket["custom_refund_amount"], 19.9);
    assert_eq!(ticket["custom_vip_customer"], true);
    let (ticket, deleted) = &changed[&gone];
    assert!(deleted, "status deleted flags the row");
    assert_eq!(ticket["status"], "deleted");
}

#[tokio::test]
async fn exports_wait_out_the_one_minute_window() {
    let sandbox = sandbox(20).await;
    let zendesk = zendesk(&sandbox, 1000, 100);
    let cursor = read(&zendesk, "users", None, false)
        .await
        .last()
        .unwrap()
        .cursor
        .clone();
    let user = sandbox.create("users", json!({"name": "Just now"}));
    let early = read(&zendesk, "users", Some(cursor.clone()), false).await;
    assert!(ids(&early).is_empty(), "not within the minute");
    sandbox.advance_clock(Duration::from_secs(61));
    let later = read(&zendesk, "users", Some(cursor), false).await;
    assert_eq!(ids(&later), [user["id"].to_string()]);
}

#[tokio::test]
async fn resuming_from_any_export_page_lands_exactly_the_rest() {
    let sandbox = sandbox(100).await;
    let zendesk = zendesk(&sandbox, 2, 100);
    for stream in ["tickets", "organizations", "ticket_events"] {
        let pages = read(&zendesk, stream, None, false).await;
        assert!(pages.len() > 2, "{stream}");
        let all = ids(&pages);
        for k in [0, pages.len() / 2, pages.len() - 2] {
            let rest = read(&zendesk, stream, Some(pages[k].cursor.clone()), false).await;
            let landed: usize = pages[..=k].iter().map(|p| values(p).len()).sum();
            assert_eq!(
                ids(&rest),
                all[landed..].to_vec(),
                "{stream}: after page {k}"
            );
        }
    }
}

#[tokio::test]
async fn organizations_changed_in_one_second_land_once_across_pages() {
    let sandbox = sandbox(20).await;
    let zendesk = zendesk(&sandbox, 2, 100);
    let cursor = read(&zendesk, "organizations", None, false)
        .await
        .last()
        .unwrap()
        .cursor
        .clone();
    let existing = sandbox.ids("organizations");
    let mut changed = Vec::new();
    for i in 0..6 {
        let org = sandbox.create("organizations", json!({"name": format!("Burst {i}")}));
        changed.push(org["id"].to_string());
    }
    assert!(
        sandbox
            .update("organizations", &existing[0], json!({"notes": "VIP"}))
            .is_some()
    );
    assert!(sandbox.delete("organizations", &existing[1]));
    changed.push(existing[0].clone());
    changed.push(existing[1].clone());
    sandbox.advance_clock(Duration::from_secs(61));
    let pages = read(&zendesk, "organizations", Some(cursor), false).await;
    assert_exactly_once("organizations", &ids(&pages), &changed);
    let deleted: Vec<String> = all_values(&pages)
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(v, _)| v["id"].to_string())
        .collect();
    assert_eq!(deleted, [existing[1].clone()], "deleted_at flags the row");
    let end = pages.last().unwrap().cursor.clone();
    assert!(ids(&read(&zendesk, "organizations", Some(end), false).await).is_empty());
}

#[tokio::test]
async fn ticket_events_carry_their_requester() {
    let sandbox = sandbox(30).await;
    let zendesk = zendesk(&sandbox, 1000, 100);
    let cursor = read(&zendesk, "ticket_events", None, false)
        .await
        .last()
        .unwrap()
        .cursor
        .clone();
    let requester = sandbox.ids("users").last().unwrap().clone();
    let requester_id: i64 = requester.parse().unwrap();
    let ticket = sandbox.create("tickets", json!({"requester_id": requester_id}));
    let id = ticket["id"].to_string();
    sandbox
        .update("tickets", &id, json!({"status": "solved"}))
        .unwrap();
    // An older ticket's change: its requester is looked up with show_many.
    let old = sandbox.ids("tickets")[0].clone();
    let old_requester = sandbox.get("tickets", &old).unwrap()["requester_id"].clone();
    sandbox
        .update("tickets", &old, json!({"subject": "A subject no seed has"}))
        .unwrap();
    sandbox.advance_clock(Duration::from_secs(61));
    let pages = read(&zendesk, "ticket_events", Some(cursor), false).await;
    let events: Vec<Value> = all_values(&pages).into_iter().map(|(v, _)| v).collect();
    assert_eq!(events.len(), 3);
    for event in &events {
        let want = if event["ticket_id"] == json!(ticket["id"]) {
            json!(requester_id)
        } else {
            old_requester.clone()
        };
        assert_eq!(event["requester_id"], want, "{event}");
    }
    let messages: Vec<Value> = events
        .iter()
        .flat_map(|e| zendesk.messages("zendesk", "ticket_events", e))
        .map(|m| m.to_json())
        .collect();
    let names: Vec<&str> = messages
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Ticket Created", "Ticket Solved", "Ticket Updated"]);
    assert_eq!(messages[0]["userId"], requester.as_str());
}

/// A whole-list read resumes mid-way without touching the table again, and a cursor
/// Zendesk refuses starts the list over: a new snapshot replaces the table, a merged list
/// (`ticket_metrics`) never does.
#[tokio::test]
async fn a_snapshot_resumes_mid_way_and_restarts_on_a_refused_cursor() {
    for (stream, tickets) in [("satisfaction_ratings", 600), ("ticket_metrics", 150)] {
        let sandbox = sandbox(tickets).await;
        let zendesk = zendesk(&sandbox, 1000, 20);
        let replaces = crate::streams::stream(stream).unwrap().fetch.replaces();
        let pages = read(&zendesk, stream, None, false).await;
        assert!(pages.len() > 5, "{stream}: {}", pages.len());
        assert_eq!(pages[0].reset, replaces, "{stream}");
        let all = ids(&pages);
        let rest = read(&zendesk, stream, Some(pages[2].cursor.clone()), false).await;
        assert!(
            !rest[0].reset,
            "{stream}: a resumed snapshot does not replace the table again"
        );
        assert_eq!(ids(&rest), all[60..].to_vec(), "{stream}");

        let bogus = encode(&Cursor::Snapshot {
            after: "bm90IGFuIGlk".into(),
        });
        let again = read(&zendesk, stream, Some(bogus), false).await;
        assert_eq!(again[0].reset, replaces, "{stream}: starts over");
        assert_exactly_once(stream, &ids(&again), &sandbox.ids(stream));
    }
    let sandbox = sandbox(20).await;
    let zendesk = zendesk(&sandbox, 1000, 20);

    // A deleted membership leaves the next snapshot.
    let memberships = sandbox.ids("group_memberships");
    assert!(sandbox.delete("group_memberships", &memberships[0]));
    let next = read(&zendesk, "group_memberships", None, false).await;
    assert!(!ids(&next).contains(&memberships[0]));
    assert_eq!(ids(&next).len(), memberships.len() - 1);
}

/// Zendesk's ticket metrics list leaves out archived tickets (closed for 120 days): the
/// stream merges each run's list into the table, so the metrics landed before a ticket
/// was archived stay.
#[tokio::test]
async fn ticket_metrics_of_archived_tickets_stay_landed() {
    let sandbox = sandbox(200).await;
    let zendesk = zendesk(&sandbox, 1000, 100);
    let first = read(&zendesk, "ticket_metrics", None, false).await;
    assert!(
        first.iter().all(|p| !p.reset),
        "a merged list never replaces the table"
    );
    let before = ids(&first);
    sandbox.advance_clock(Duration::from_secs(121 * 86_400));
    let after = read(&zendesk, "ticket_metrics", None, false).await;
    assert!(after.iter().all(|p| !p.reset), "nor does the next run's");
    let listed = ids(&after);
    assert_exactly_once("ticket_metrics", &listed, &sandbox.ids("ticket_metrics"));
    assert!(
        listed.len() < before.len() && listed.iter().all(|id| before.contains(id)),
        "tickets archived since: {} listed, {} before",
        listed.len(),
        before.len()
    );
}

#[tokio::test]
async fn deleted_groups_stay_listed_and_flagged_by_the_schema() {
    let sandbox = sandbox(20).await;
    let zendesk = zendesk(&sandbox, 1000, 100);
    let group = sandbox.ids("groups")[0].clone();
    assert!(sandbox.delete("groups", &group));
    let schemas = zendesk.discover().await.unwrap();
    let schema = schemas.iter().find(|s| s.name == "groups").unwrap();
    let log = tributary_sdk::conformance::read_all(&zendesk, schema, None, false)
        .await
        .unwrap();
    let deleted: Vec<&String> = log
        .records
        .iter()
        .filter(|(_, d)| *d)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(deleted, [&group]);
}

#[tokio::test]
async fn a_full_refresh_resets_and_ignores_the_cursor() {
    let sandbox = sandbox(30).await;
    let zendesk = zendesk(&sandbox, 10, 100);
    for stream in ["tickets", "organizations"] {
        let pages = read(&zendesk, stream, None, false).await;
        let cursor = pages.last().unwrap().cursor.clone();
        let again = read(&zendesk, stream, Some(cursor), true).await;
        assert!(
            again[0].reset && again[1..].iter().all(|p| !p.reset),
            "{stream}"
        );
        assert_exactly_once(stream, &ids(&again), &sandbox.ids(stream));
    }
}

#[tokio::test]
async fn a_cursor_of_another_kind_is_refused_by_name() {
    let sandbox = sandbox(5).await;
    let zendesk = zendesk(&sandbox, 10, 100);
    let cursor = json!({"mode": "export", "after_cursor": "abc"});
    let mut pages = tributary_sdk::Source::read(&zendesk, request("groups", Some(cursor), false))
        .await
        .unwrap();
    let err = pages.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Cursor { ref stream, .. } if stream == "groups"),
        "{err}"
    );
    assert!(err.to_string().contains("--full-refresh"), "{err}");
}

#[tokio::test]
async fn cut_garbled_and_throttled_responses_are_fetched_again() {
    let sandbox = sandbox(60).await;
    let zendesk = zendesk(&sandbox, 10, 10);
    sandbox.set_faults(Faults {
        malformed_next: 1,
        truncate_next: 1,
        throttle_next: 1,
        error_next: 1,
        ..Faults::default()
    });
    let pages = read(&zendesk, "tickets", None, false).await;
    assert_exactly_once("tickets", &ids(&pages), &sandbox.ids("tickets"));
    assert_eq!(sandbox.stats().faults_injected, 4);
}

/// Reads `stream` from `cursor` until it fails, within a deadline (today's code would walk
/// a hostile vendor forever): the pages delivered and the error.
async fn read_until_error(
    zendesk: &Zendesk,
    stream: &str,
    cursor: Option<Value>,
) -> (Vec<Page>, Error) {
    tributary_sdk::conformance::read_until_error(zendesk, request(stream, cursor, false)).await
}

/// Asserts `err` is a protocol error of Zendesk about `stream` whose message has `needle`.
fn assert_protocol(err: &Error, stream: &str, needle: &str) {
    tributary_sdk::conformance::assert_protocol(err, "Zendesk", stream, needle);
}

#[tokio::test]
async fn an_export_that_repeats_its_cursor_stops_after_the_good_page() {
    let sandbox = sandbox(40).await;
    let zendesk = zendesk(&sandbox, 5, 100);
    let clean = read(&zendesk, "users", None, false).await;
    sandbox.set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&zendesk, "users", None).await;
    assert_eq!(
        ids(&pages),
        ids(&clean[..1]),
        "only the good first page lands"
    );
    let first = pages[0].cursor["after_cursor"].as_str().unwrap().to_owned();
    assert_protocol(
        &err,
        "users",
        &format!("repeated the export cursor `after_cursor` `{first}`"),
    );
    assert!(
        err.to_string().contains("end_of_stream stayed false"),
        "{err}"
    );
    assert_eq!(sandbox.stats().export_requests, 2);
}

#[tokio::test]
async fn an_export_whose_cursors_cycle_stops_at_the_cycle() {
    let sandbox = sandbox(40).await;
    let zendesk = zendesk(&sandbox, 5, 100);
    let clean = read(&zendesk, "users", None, false).await;
    sandbox.set_faults(Faults {
        cycle_cursor: true,
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&zendesk, "users", None).await;
    assert_eq!(
        ids(&pages),
        ids(&clean[..2]),
        "A and B land, the return to A does not"
    );
    let first = pages[0].cursor["after_cursor"].as_str().unwrap().to_owned();
    assert_protocol(&err, "users", &format!("`{first}` after 2 distinct ones"));
    assert_eq!(sandbox.stats().export_requests, 3);
}

#[tokio::test]
async fn a_snapshot_whose_cursors_cycle_stops_at_the_cycle() {
    let sandbox = sandbox(150).await;
    let zendesk = zendesk(&sandbox, 1000, 20);
    let clean = read(&zendesk, "ticket_metrics", None, false).await;
    assert!(clean.len() > 3);
    for (faults, good) in [
        (
            Faults {
                cycle_cursor: true,
                ..Faults::default()
            },
            2,
        ),
        (
            Faults {
                repeat_cursor: true,
                ..Faults::default()
            },
            1,
        ),
    ] {
        sandbox.set_faults(faults);
        sandbox.reset_stats();
        let (pages, err) = read_until_error(&zendesk, "ticket_metrics", None).await;
        assert_eq!(ids(&pages), ids(&clean[..good]));
        // The committed cursor stays a snapshot in progress: the table is not "complete".
        assert_eq!(pages[good - 1].cursor["mode"], "snapshot");
        assert_protocol(
            &err,
            "ticket_metrics",
            "repeated the page cursor `meta.after_cursor`",
        );
        assert!(
            err.to_string().contains("meta.has_more stayed true"),
            "{err}"
        );
        assert_eq!(sandbox.stats().requests, good as u64 + 1);
    }
}

#[tokio::test]
async fn pages_of_the_wrong_shape_fail_the_stream_and_land_nothing() {
    let sandbox = sandbox(40).await;
    let zendesk = zendesk(&sandbox, 5, 10);
    let users = read(&zendesk, "users", None, false).await;
    let metrics = read(&zendesk, "ticket_metrics", None, false).await;
    assert!(users.len() > 1 && metrics.len() > 1);
    for (stream, shape, needle, clean) in [
        (
            "users",
            BadShape::RecordsObject,
            "`users` is an object, not an array",
            &users,
        ),
        (
            "users",
            BadShape::EndOfStreamMissing,
            "`end_of_stream` is missing",
            &users,
        ),
        (
            "ticket_metrics",
            BadShape::RecordsObject,
            "`ticket_metrics` is an object, not an array",
            &metrics,
        ),
        (
            "ticket_metrics",
            BadShape::HasMoreMissing,
            "`meta.has_more` is missing",
            &metrics,
        ),
    ] {
        sandbox.set_faults(Faults {
            bad_shape_after: 1,
            vendor: ZendeskFaults {
                bad_shape: Some(shape),
                ..ZendeskFaults::default()
            },
            ..Faults::default()
        });
        sandbox.reset_stats();
        let (pages, err) = read_until_error(&zendesk, stream, None).await;
        assert_eq!(
            ids(&pages),
            ids(&clean[..1]),
            "{stream} {shape:?}: only the good page"
        );
        assert_protocol(&err, stream, needle);
        assert_eq!(
            sandbox.stats().requests,
            2,
            "{stream} {shape:?}: not retried"
        );
    }
}

/// The SDK's conformance kit, on the incremental streams the simulator can change.
struct Harness {
    sandbox: ZendeskSandbox,
    source: Arc<dyn tributary_sdk::Source>,
}

#[async_trait::async_trait]
impl tributary_sdk::conformance::Harness for Harness {
    fn source(&self) -> Arc<dyn tributary_sdk::Source> {
        Arc::clone(&self.source)
    }
    async fn ids(&self, stream: &str) -> Vec<String> {
        self.sandbox.ids(stream)
    }
    async fn create(&self, stream: &str) -> String {
        let created = self.sandbox.create(stream, json!({}));
        created["id"].to_string()
    }
    async fn update(&self, stream: &str, id: &str) {
        let change = match stream {
            "tickets" => json!({"subject": "Changed by the conformance kit"}),
            _ => json!({"name": "Changed by the conformance kit"}),
        };
        assert!(self.sandbox.update(stream, id, change).is_some());
    }
    async fn delete(&self, stream: &str, id: &str) {
        assert!(self.sandbox.delete(stream, id));
    }
    async fn settle(&self) {
        // Past Zendesk's one-minute exclusion window.
        self.sandbox.advance_clock(Duration::from_secs(61));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_kit_passes() {
    for stream in ["tickets", "users", "organizations"] {
        let sandbox = sandbox(40).await;
        let source = Arc::new(zendesk(&sandbox, 7, 10)) as Arc<dyn tributary_sdk::Source>;
        let harness = Harness { sandbox, source };
        if let Err(e) = tributary_sdk::conformance::run(&harness, stream).await {
            panic!("conformance of `{stream}`: {e}");
        }
    }
}

#[tokio::test]
async fn a_stream_off_the_plan_is_unavailable_and_the_others_read() {
    let sandbox = sandbox(10).await;
    sandbox.set_unavailable(&["ticket_forms"]);
    let zendesk = zendesk(&sandbox, 1000, 100);
    // `check` proves the credentials only: the plan does not matter to it.
    zendesk.check().await.unwrap();
    let (pages, err) = read_until_error(&zendesk, "ticket_forms", None).await;
    assert!(pages.is_empty());
    match &err {
        Error::Unavailable { message } => {
            assert!(
                message.starts_with("You do not have access to this page."),
                "Zendesk's own message first: {message}"
            );
            assert!(message.contains("/api/v2/ticket_forms.json"), "{message}");
            assert!(message.contains("Suite Growth"), "{message}");
            assert!(!message.contains("credentials"), "{message}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("not available on this account's plan: You do not have access"),
        "{err}"
    );
    // An export off the plan is told the same way, without a plan note of its own.
    sandbox.set_unavailable(&["organizations"]);
    let (_, err) = read_until_error(&zendesk, "organizations", None).await;
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    // The rest of the account reads as before.
    let groups = read(&zendesk, "groups", None, false).await;
    assert_exactly_once("groups", &ids(&groups), &sandbox.ids("groups"));
}

#[tokio::test]
async fn a_403_to_the_credentials_themselves_stays_a_credentials_error() {
    let sandbox = sandbox(5).await;
    // `users` off: `users/me` answers 403 too, so the 403 on ticket forms cannot be put
    // down to the plan.
    sandbox.set_unavailable(&["users", "ticket_forms"]);
    let zendesk = zendesk(&sandbox, 1000, 100);
    let err = zendesk.check().await.unwrap_err();
    assert!(matches!(err, Error::Auth { status: 403, .. }), "{err}");
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );
    let (_, err) = read_until_error(&zendesk, "ticket_forms", None).await;
    assert!(matches!(err, Error::Auth { status: 403, .. }), "{err}");
}

/// Zendesk can answer a cursor-export page `[]` with `end_of_stream` false and a cursor
/// further on (where the export passes records it leaves out): the run goes on past it,
/// rather than stopping there and draining a backlog one page per run.
#[tokio::test]
async fn an_empty_export_page_further_on_is_not_the_end() {
    let sandbox = sandbox(60).await;
    let zendesk = zendesk(&sandbox, 25, 100);
    sandbox.set_faults(
        ZendeskFaults {
            empty_export_pages: true,
            ..ZendeskFaults::default()
        }
        .into(),
    );
    let pages = read(&zendesk, "tickets", None, false).await;
    let empty = pages
        .iter()
        .filter(|p| ids(std::slice::from_ref(*p)).is_empty())
        .count();
    assert!(empty >= 3, "{empty} empty pages of {}", pages.len());
    assert_exactly_once("tickets", &ids(&pages), &sandbox.ids("tickets"));
}

#[tokio::test]
async fn a_403_part_way_through_a_walk_is_a_failure_not_a_plan() {
    let sandbox = sandbox(40).await;
    let zendesk = zendesk(&sandbox, 1000, 2);
    sandbox.set_faults(
        ZendeskFaults {
            forbid_after_first_page: true,
            ..ZendeskFaults::default()
        }
        .into(),
    );
    let (pages, err) = read_until_error(&zendesk, "ticket_metrics", None).await;
    assert_eq!(pages.len(), 1, "the first page landed");
    assert!(matches!(err, Error::Auth { status: 403, .. }), "{err}");
    // Resuming the open snapshot: its first request already carries a page cursor.
    let cursor = Some(pages[0].cursor.clone());
    let (pages, err) = read_until_error(&zendesk, "ticket_metrics", cursor).await;
    assert!(pages.is_empty());
    assert!(matches!(err, Error::Auth { status: 403, .. }), "{err}");
}

#[tokio::test]
async fn exports_pace_on_zendesk_s_export_quota_header() {
    // The client would send exports as fast as it can; the simulator allows 3 a second
    // and says so in `Zendesk-RateLimit-incremental-exports-cursor` on the cursor-based
    // exports. Reading it, the client waits for the reset and is never refused.
    let sandbox = ZendeskSandbox::start(
        SandboxConfig {
            records: 30,
            rate_limits: Some(crate::sandbox::RateLimits {
                window: Duration::from_secs(1),
                requests: 1000,
                export_requests: 3,
            }),
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    let three_a_page = zendesk(&sandbox, 3, 100);
    sandbox.reset_stats();
    let started = std::time::Instant::now();
    let pages = read(&three_a_page, "users", None, false).await;
    let elapsed = started.elapsed();
    assert_exactly_once("users", &ids(&pages), &sandbox.ids("users"));
    let stats = sandbox.stats();
    assert!(stats.export_requests >= 6, "{stats:?}");
    assert_eq!(stats.rate_limited, 0, "the header kept it in: {stats:?}");
    // Two requests per window (the second leaves one, the low water): a pause per pair.
    let pauses = (stats.export_requests - 1) / 2;
    assert!(
        elapsed >= Duration::from_millis(900 * pauses),
        "{elapsed:?} for {stats:?}"
    );

    // The time-based exports carry no export header (Zendesk documents none): allowed one
    // a second, the client is refused, waits out `Retry-After` and lands everything once.
    sandbox.set_rate_limits(Some(crate::sandbox::RateLimits {
        window: Duration::from_secs(1),
        requests: 1000,
        export_requests: 1,
    }));
    sandbox.reset_stats();
    // One organization a page: several requests in the second the limit allows one.
    let one_a_page = zendesk(&sandbox, 1, 100);
    let pages = read(&one_a_page, "organizations", None, false).await;
    assert_exactly_once("organizations", &ids(&pages), &sandbox.ids("organizations"));
    assert!(sandbox.stats().rate_limited > 0, "{:?}", sandbox.stats());
}
