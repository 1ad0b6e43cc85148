//! Zendesk ticket events delivered as Segment `track` messages to the fake collector of
//! the Stripe tracking tests, exactly once across syncs.

use std::sync::Arc;

use serde_json::{Value, json};
use tributary_sdk::tracking::message_id;

use super::{FAST, ZendeskEnv};
use crate::common::{id_counts, read_table};
use crate::stripe::tracking::{Collector, start};

#[tokio::test(flavor = "multi_thread")]
async fn ticket_events_reach_the_collector_as_track_messages() {
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let env = ZendeskEnv::start(12, "streams = [\"ticket_events\"]").await;
    env.write_config(
        FAST,
        &format!(
            "streams = [\"ticket_events\"]\n\n[sources.zendesk.tracking]\nendpoint = \"{url}\"\nwrite_key = \"wk\"\n"
        ),
    );

    let summary = env.sync_ok(&[]).await;
    let events = id_counts(&read_table(&env.table("ticket_events")).await);
    let n = events.len();
    assert_eq!(n, env.sandbox.ids("ticket_events").len());
    assert!(
        summary.contains(&format!(
            "tracking zendesk: {n} messages accepted by the collector, 0 pending, 0 rejected ({n} queued by this run)"
        )),
        "{summary}"
    );
    let mut got = collector.ids();
    got.sort();
    let mut want: Vec<String> = events.keys().map(|id| message_id("zendesk", id)).collect();
    want.sort();
    assert_eq!(
        got, want,
        "one message per ticket event, with its derived id"
    );
    let accepted = collector.accepted.lock().unwrap().clone();
    for m in &accepted {
        assert_eq!(m["type"], "track");
        assert!(m["event"].as_str().unwrap().starts_with("Ticket "), "{m}");
        assert!(m["userId"].as_str().is_some_and(|u| !u.is_empty()), "{m}");
        assert_eq!(m["context"]["library"]["name"], "tributary");
    }
    let created = accepted
        .iter()
        .filter(|m| m["event"] == "Ticket Created")
        .count();
    assert_eq!(created, 12, "one creation per seeded ticket");

    // A new ticket, solved: two more messages, from its requester, nothing resent.
    let users = env.sandbox.ids("users");
    let requester = users.last().unwrap().clone();
    let ticket = env.sandbox.create(
        "tickets",
        json!({"subject": "Tracked", "requester_id": requester.parse::<i64>().unwrap()}),
    );
    let id = ticket["id"].to_string();
    env.sandbox
        .update("tickets", &id, json!({"status": "solved"}))
        .unwrap();
    env.past_the_minute();
    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains("tracking zendesk: 2 messages accepted by the collector, 0 pending"),
        "{summary}"
    );
    let accepted = collector.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), n + 2);
    let new: Vec<&Value> = accepted[n..].iter().collect();
    assert_eq!(new[0]["event"], "Ticket Created");
    assert_eq!(new[0]["properties"]["subject"], "Tracked");
    assert_eq!(new[1]["event"], "Ticket Solved");
    assert_eq!(new[1]["properties"]["status"], "solved");
    assert_eq!(new[1]["properties"]["previous_status"], "new");
    for m in &new {
        assert_eq!(m["userId"], requester.as_str());
        assert_eq!(m["properties"]["ticket_id"].to_string(), id);
    }
    let events = env.sandbox.ticket_events(&id);
    assert_eq!(
        new[1]["messageId"],
        message_id("zendesk", &events[1]["id"].to_string()).as_str()
    );
    assert!(collector.violations.lock().unwrap().is_empty());
}

/// A collector that refuses every write key as RudderStack does: 401 "Invalid Write Key"
/// (rudder-server, gateway/response/response.go).
async fn refusing_collector() -> String {
    let app = axum::Router::new().route(
        "/v1/batch",
        axum::routing::post(|| async {
            (axum::http::StatusCode::UNAUTHORIZED, "Invalid Write Key\n")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_what_it_can_know_about_the_collector() {
    let env = ZendeskEnv::start(5, "").await;
    let tracking = |endpoint: &str| {
        format!(
            "streams = [\"ticket_events\"]\n\n[sources.zendesk.tracking]\nendpoint = \"{endpoint}\"\nwrite_key = \"wk-not-to-be-printed\"\n"
        )
    };

    // Segment: not asked (it answers 200 to any key), so the line says where to look.
    env.write_config(FAST, &tracking("https://api.segment.io"));
    let out = env.run(&["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let source = lines
        .iter()
        .position(|l| l.starts_with("zendesk") && l.contains("ok (1 streams)"))
        .unwrap_or_else(|| panic!("no ok line: {stdout}"));
    let line = lines.get(source + 1).copied().unwrap_or_default().trim();
    assert!(
        line.starts_with("tracking: api.segment.io — Segment does not validate write keys"),
        "{stdout}"
    );
    assert!(
        line.contains("confirm delivery in Segment's Debugger (Connections > Sources >"),
        "{stdout}"
    );

    // A collector that checks keys and refuses this one: the check fails, without the key.
    let refusing = refusing_collector().await;
    env.write_config(FAST, &tracking(&refusing));
    let out = env.run(&["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("ok (1 streams)"),
        "the source itself is fine: {stdout}"
    );
    let host = refusing.trim_start_matches("http://");
    assert!(
        stdout.contains(&format!(
            "tracking: {host} — FAILED: the collector refused the write key (HTTP 401: Invalid Write Key)"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("wk-not-to-be-printed"), "{stdout}");

    // One that accepts it: ok, and nothing was delivered by asking.
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    env.write_config(FAST, &tracking(&url).replace("wk-not-to-be-printed", "wk"));
    let out = env.run(&["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let host = url.trim_start_matches("http://");
    assert!(
        stdout.contains(&format!(
            "tracking: {host} — ok (the collector accepted the write key)"
        )),
        "{stdout}"
    );
    assert!(collector.ids().is_empty());
    assert!(collector.violations.lock().unwrap().is_empty());
}
