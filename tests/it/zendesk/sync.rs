//! Full sync of every stream, then an incremental sync after creates, updates and deletes
//! (only after Zendesk's one-minute window), custom field columns typed and filled, and
//! snapshots replacing their tables.

use arrow::datatypes::{DataType, TimeUnit};
use serde_json::json;

use super::ZendeskEnv;
use crate::common::{id_counts, latest_by_id, read_table, strings};

const STREAMS: [&str; 13] = [
    "tickets",
    "users",
    "organizations",
    "ticket_events",
    "groups",
    "group_memberships",
    "organization_memberships",
    "ticket_fields",
    "ticket_forms",
    "ticket_metrics",
    "satisfaction_ratings",
    "brands",
    "tags",
];

/// Asserts the table of `stream` holds exactly `want`, each once.
async fn assert_table_is(env: &ZendeskEnv, stream: &str, want: &[String]) {
    let counts = id_counts(&read_table(&env.table(stream)).await);
    let mut got: Vec<String> = counts.keys().cloned().collect();
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want, "{stream}: every object lands");
    assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incremental_sync_lands_every_change_once() {
    let env = ZendeskEnv::start(80, "export_page_size = 30\npage_size = 25").await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("13 streams"), "{summary}");
    assert!(summary.contains("0 failed"), "{summary}");
    for stream in STREAMS {
        assert_table_is(&env, stream, &env.sandbox.ids(stream)).await;
    }

    // Custom ticket fields are typed columns, filled from `custom_fields`.
    let tickets = read_table(&env.table("tickets")).await;
    let schema = tickets[0].schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(ty("custom_seats"), DataType::Int64);
    assert_eq!(ty("custom_refund_amount"), DataType::Float64);
    assert_eq!(ty("custom_vip_customer"), DataType::Boolean);
    assert_eq!(ty("custom_components"), DataType::Utf8);
    assert_eq!(
        ty("custom_follow_up_date"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let newest_field = env.sandbox.ids("ticket_fields").last().unwrap().clone();
    assert_eq!(
        ty(&format!("custom_product_{newest_field}")),
        DataType::Utf8,
        "the younger of two `product` fields gets its id"
    );
    let seats = strings(&tickets, "custom_seats");
    assert!(seats.iter().any(|s| !s.is_empty()), "values landed");
    assert!(
        strings(&tickets, "_rescued_data")
            .iter()
            .all(String::is_empty),
        "every custom value fit its column"
    );

    // Changes: a ticket updated (a custom field and its status), one created, one
    // deleted; a user, an organization and a group membership deleted.
    let ids = env.sandbox.ids("tickets");
    let fields = env.sandbox.ids("ticket_fields");
    let seats_field = fields
        .iter()
        .find(|id| env.sandbox.get("ticket_fields", id).unwrap()["title"] == "Seats")
        .unwrap()
        .parse::<i64>()
        .unwrap();
    env.sandbox
        .update(
            "tickets",
            &ids[0],
            json!({"status": "solved", "subject": "Renamed", "custom_fields": [{"id": seats_field, "value": "77"}]}),
        )
        .unwrap();
    let created = env
        .sandbox
        .create("tickets", json!({"subject": "Brand new"}))["id"]
        .to_string();
    assert!(env.sandbox.delete("tickets", &ids[1]));
    let user = env.sandbox.ids("users").last().unwrap().clone();
    assert!(env.sandbox.delete("users", &user));
    let org = env.sandbox.ids("organizations")[0].clone();
    assert!(env.sandbox.delete("organizations", &org));
    let membership = env.sandbox.ids("group_memberships")[0].clone();
    assert!(env.sandbox.delete("group_memberships", &membership));
    let events_before = id_counts(&read_table(&env.table("ticket_events")).await).len();

    // Within the minute the exports hold the changes back; the snapshot does not.
    env.sync_ok(&[]).await;
    assert_eq!(
        id_counts(&read_table(&env.table("tickets")).await).len(),
        ids.len()
    );
    assert_table_is(
        &env,
        "group_memberships",
        &env.sandbox.ids("group_memberships"),
    )
    .await;
    assert!(!env.sandbox.ids("group_memberships").contains(&membership));

    env.past_the_minute();
    env.sync_ok(&[]).await;
    let tickets = read_table(&env.table("tickets")).await;
    let counts = id_counts(&tickets);
    assert_eq!(counts.len(), ids.len() + 1, "the new ticket landed");
    assert!(
        counts.values().all(|&n| n == 1),
        "one row per ticket, its latest version: {counts:?}"
    );
    assert_eq!(latest_by_id(&tickets, "subject")[&ids[0]], "Renamed");
    assert_eq!(latest_by_id(&tickets, "custom_seats")[&ids[0]], "77");
    assert_eq!(latest_by_id(&tickets, "status")[&ids[0]], "solved");
    let deleted = latest_by_id(&tickets, "is_deleted");
    assert_eq!(deleted[&ids[1]], "true");
    assert_eq!(deleted[&ids[0]], "false");
    assert_eq!(deleted[&created], "false");

    let users = read_table(&env.table("users")).await;
    assert_eq!(latest_by_id(&users, "is_deleted")[&user], "true");
    assert_eq!(latest_by_id(&users, "active")[&user], "false");
    let orgs = read_table(&env.table("organizations")).await;
    assert_eq!(latest_by_id(&orgs, "is_deleted")[&org], "true");
    assert!(!latest_by_id(&orgs, "deleted_at")[&org].is_empty());

    let events = id_counts(&read_table(&env.table("ticket_events")).await);
    assert_eq!(
        events.len(),
        events_before + 3,
        "update, create and delete events"
    );
    assert!(events.values().all(|&n| n == 1));
    for stream in ["ticket_metrics", "tags", "group_memberships"] {
        assert_table_is(&env, stream, &env.sandbox.ids(stream)).await;
    }

    // Nothing changed: the exports land nothing more.
    env.past_the_minute();
    env.sync_ok(&[]).await;
    for (stream, rows) in [("tickets", ids.len() + 1), ("ticket_events", events.len())] {
        let total: usize = id_counts(&read_table(&env.table(stream)).await)
            .values()
            .sum();
        assert_eq!(total, rows, "{stream}");
    }

    // `state` shows each stream's committed cursor.
    let out = env.run(&["state"]).await;
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(state.contains("zendesk.tickets"), "{state}");
    assert!(state.contains("\"mode\":\"export\""), "{state}");
    assert!(state.contains("\"mode\":\"time\""), "{state}");
    assert!(state.contains("\"mode\":\"snapshot_done\""), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_refresh_replaces_an_export_table() {
    let env = ZendeskEnv::start(30, "streams = [\"tickets\"]").await;
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("tickets");
    env.sandbox
        .update("tickets", &ids[0], json!({"subject": "Again"}))
        .unwrap();
    env.past_the_minute();
    env.sync_ok(&[]).await;
    let before = read_table(&env.table("tickets")).await;
    assert_eq!(id_counts(&before)[&ids[0]], 1, "latest state: one row");
    assert_eq!(latest_by_id(&before, "subject")[&ids[0]], "Again");
    env.sync_ok(&["--full-refresh"]).await;
    let tickets = read_table(&env.table("tickets")).await;
    let counts = id_counts(&tickets);
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|&n| n == 1), "one row per ticket again");
    assert_eq!(latest_by_id(&tickets, "subject")[&ids[0]], "Again");
}
