//! The mapping of Zendesk ticket events to Tracking-API messages (the README's "Tracking
//! API" section documents it for users).
//!
//! Each record of the `ticket_events` stream (one ticket update, an "Audit" with its
//! `child_events`) becomes one `track`:
//!
//! - `event`, in Segment's "Object Action" Title Case: "Ticket Created" (a `Create` child
//!   event), "Ticket Merged", "Ticket Solved" / "Ticket Closed" / "Ticket Deleted" /
//!   "Ticket Reopened" (a `status` change to solved, closed, deleted, or from solved or
//!   closed back to open, pending, hold or new), "Ticket Updated" (any other change),
//!   "Ticket Comment Added" (only a comment).
//! - `properties`: `ticket_id`, `updater_id`, `via`, then every field the update set or
//!   changed with its new value, and `previous_<field>` with the old one. Custom fields
//!   appear as `custom_field_<id>`. A comment adds `comment_present` and `comment_public`.
//! - `userId` is the ticket's requester (`requester_id`, which the stream adds to each
//!   event); without one, `anonymousId` is a UUID v5 of the source and the ticket id, so
//!   one ticket's events group together.
//! - `messageId` is a UUID v5 of the source and the ticket event id; `timestamp` is the
//!   event's own time.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::warn;
use tributary_sdk::Message;
use tributary_sdk::tracking::{Identity, anonymous_id, message_id};

/// Keys of a child event that describe the event rather than a ticket field.
const META: &[&str] = &[
    "id",
    "via",
    "via_reference_id",
    "event_type",
    "type",
    "previous_value",
    "audit_id",
    "created_at",
    "field_name",
    "value",
    "author_id",
    "body",
    "html_body",
    "plain_body",
    "public",
    "attachments",
    "comment_present",
    "comment_public",
];

/// The messages of one record of the `ticket_events` stream; none for other streams.
pub fn messages(source: &str, stream: &str, event: &Value) -> Vec<Message> {
    if stream != "ticket_events" {
        return Vec::new();
    }
    let (Some(event_id), Some(ticket_id)) = (
        event.get("id").and_then(id_text),
        event.get("ticket_id").and_then(id_text),
    ) else {
        warn!(
            source,
            "Skipped a Zendesk ticket event without an id or ticket_id for tracking."
        );
        return Vec::new();
    };
    let Some(timestamp) = event_time(event) else {
        warn!(
            source,
            event_id, "Skipped a Zendesk ticket event without a valid time for tracking."
        );
        return Vec::new();
    };
    let children: &[Value] = event
        .get("child_events")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let merged = event
        .get("merged_ticket_ids")
        .and_then(Value::as_array)
        .is_some_and(|ids| !ids.is_empty());

    let mut properties = Map::new();
    for key in ["ticket_id", "updater_id", "via"] {
        if let Some(value) = event.get(key).filter(|v| !v.is_null()) {
            properties.insert(key.to_owned(), value.clone());
        }
    }
    for child in children {
        match child_type(child) {
            "Create" | "Change" => changed_fields(child, &mut properties),
            "Comment" => {
                properties.insert("comment_present".into(), Value::Bool(true));
                let public = child
                    .get("comment_public")
                    .or_else(|| child.get("public"))
                    .cloned()
                    .unwrap_or(Value::Null);
                properties.insert("comment_public".into(), public);
            }
            _ => {}
        }
    }

    let identity = match event.get("requester_id").and_then(id_text) {
        Some(requester) => Identity::User(requester),
        None => Identity::Anonymous(anonymous_id(source, &format!("ticket:{ticket_id}"))),
    };
    vec![Message::track(
        message_id(source, &event_id),
        identity,
        event_name(children, merged),
        timestamp,
        properties,
    )]
}

/// The "Object Action" name of a ticket event with these child events.
pub fn event_name(children: &[Value], merged: bool) -> &'static str {
    if children.iter().any(|c| child_type(c) == "Create") {
        return "Ticket Created";
    }
    if merged {
        return "Ticket Merged";
    }
    let status = children
        .iter()
        .filter(|c| child_type(c) == "Change")
        .find_map(|c| {
            let new = c.get("status")?.as_str()?;
            Some((new, c.get("previous_value").and_then(Value::as_str)))
        });
    match status {
        Some(("solved", _)) => return "Ticket Solved",
        Some(("closed", _)) => return "Ticket Closed",
        Some(("deleted", _)) => return "Ticket Deleted",
        Some(("open" | "pending" | "hold" | "new", Some("solved" | "closed"))) => {
            return "Ticket Reopened";
        }
        _ => {}
    }
    if children.iter().any(|c| child_type(c) == "Change") {
        return "Ticket Updated";
    }
    if children.iter().any(|c| child_type(c) == "Comment") {
        return "Ticket Comment Added";
    }
    "Ticket Updated"
}

/// A child event's type: `event_type`, else `type`; a bare comment flag counts as a
/// comment.
fn child_type(child: &Value) -> &str {
    let kind = child
        .get("event_type")
        .or_else(|| child.get("type"))
        .and_then(Value::as_str);
    match kind {
        Some(kind) => kind,
        None if child.get("comment_present").is_some() => "Comment",
        None => "",
    }
}

/// The fields a `Create` or `Change` child event sets, into `properties`: either the
/// `field_name`/`value` form (custom fields as `custom_field_<id>`) or one key per field.
fn changed_fields(child: &Value, properties: &mut Map<String, Value>) {
    let previous = child.get("previous_value").cloned();
    if let Some(name) = child.get("field_name").and_then(id_text) {
        let name = if name.bytes().all(|b| b.is_ascii_digit()) {
            format!("custom_field_{name}")
        } else {
            name
        };
        let value = child.get("value").cloned().unwrap_or(Value::Null);
        if let Some(previous) = previous {
            properties.insert(format!("previous_{name}"), previous);
        }
        properties.insert(name, value);
        return;
    }
    let Some(fields) = child.as_object() else {
        return;
    };
    let changed: Vec<(&String, &Value)> = fields
        .iter()
        .filter(|(key, _)| !META.contains(&key.as_str()))
        .collect();
    for (key, value) in &changed {
        properties.insert((*key).clone(), (*value).clone());
    }
    // `previous_value` belongs to the one field a Change carries (tags changes carry
    // `added_tags`/`removed_tags` instead).
    if let (Some(previous), [(key, _)]) = (previous, changed.as_slice()) {
        properties.insert(format!("previous_{key}"), previous);
    }
}

/// The event's time: `timestamp` (Unix seconds), else `created_at`.
fn event_time(event: &Value) -> Option<DateTime<Utc>> {
    if let Some(seconds) = event.get("timestamp").and_then(Value::as_i64) {
        return DateTime::<Utc>::from_timestamp(seconds, 0);
    }
    let text = event.get("created_at")?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A JSON id (number or string) as text.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audit(children: Value) -> Value {
        json!({"id": 9001, "ticket_id": 42, "timestamp": 1_700_000_000,
               "created_at": "2023-11-14T22:13:20Z", "updater_id": 7, "via": "Web form",
               "event_type": "Audit", "child_events": children, "requester_id": 555})
    }

    fn one(record: &Value) -> Value {
        let messages = messages("zendesk", "ticket_events", record);
        assert_eq!(messages.len(), 1);
        messages[0].to_json()
    }

    #[test]
    fn a_created_ticket_is_ticket_created_with_its_fields() {
        let m = one(&audit(json!([
            {"id": 1, "via": "Web form", "via_reference_id": null, "subject": "Printer on fire", "event_type": "Create"},
            {"id": 2, "via": "Web form", "via_reference_id": null, "status": "new", "event_type": "Create"},
            {"id": 3, "via": "Web form", "via_reference_id": null, "requester_id": 555, "event_type": "Create"},
            {"id": 4, "via": "Web form", "via_reference_id": null, "comment_present": true, "comment_public": true, "event_type": "Comment"}
        ])));
        assert_eq!(m["type"], "track");
        assert_eq!(m["event"], "Ticket Created");
        assert_eq!(m["userId"], "555");
        assert_eq!(m["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(m["messageId"], message_id("zendesk", "9001"));
        assert_eq!(m["context"]["library"]["name"], "tributary");
        let p = &m["properties"];
        assert_eq!(p["ticket_id"], 42);
        assert_eq!(p["updater_id"], 7);
        assert_eq!(p["via"], "Web form");
        assert_eq!(p["subject"], "Printer on fire");
        assert_eq!(p["status"], "new");
        assert_eq!(p["requester_id"], 555);
        assert_eq!(p["comment_present"], true);
        assert_eq!(p["comment_public"], true);
        assert!(p.get("id").is_none() && p.get("event_type").is_none());
    }

    #[test]
    fn status_changes_name_the_event() {
        let change = |new: &str, old: &str| {
            audit(json!([{"id": 1, "status": new, "previous_value": old, "event_type": "Change"}]))
        };
        let m = one(&change("solved", "open"));
        assert_eq!(m["event"], "Ticket Solved");
        assert_eq!(m["properties"]["status"], "solved");
        assert_eq!(m["properties"]["previous_status"], "open");
        assert_eq!(one(&change("closed", "solved"))["event"], "Ticket Closed");
        assert_eq!(one(&change("deleted", "open"))["event"], "Ticket Deleted");
        assert_eq!(one(&change("open", "solved"))["event"], "Ticket Reopened");
        assert_eq!(one(&change("pending", "open"))["event"], "Ticket Updated");
    }

    #[test]
    fn other_changes_are_updates_with_previous_values() {
        let m = one(&audit(json!([
            {"id": 1, "priority": "high", "previous_value": "low", "event_type": "Change"},
            {"id": 2, "tags": ["a", "b"], "added_tags": ["b"], "removed_tags": [], "event_type": "Change"},
            {"id": 3, "field_name": "360001", "value": "12.5", "previous_value": null, "event_type": "Change"}
        ])));
        assert_eq!(m["event"], "Ticket Updated");
        let p = &m["properties"];
        assert_eq!(p["priority"], "high");
        assert_eq!(p["previous_priority"], "low");
        assert_eq!(p["tags"], json!(["a", "b"]));
        assert_eq!(p["added_tags"], json!(["b"]));
        assert!(p.get("previous_tags").is_none());
        assert_eq!(p["custom_field_360001"], "12.5");
        assert_eq!(p["previous_custom_field_360001"], Value::Null);
    }

    #[test]
    fn comments_and_merges() {
        let m = one(&audit(json!([
            {"id": 1, "comment_present": true, "comment_public": false, "event_type": "Comment"}
        ])));
        assert_eq!(m["event"], "Ticket Comment Added");
        assert_eq!(m["properties"]["comment_public"], false);
        let mut merged = audit(
            json!([{"id": 1, "status": "closed", "previous_value": "open", "event_type": "Change"}]),
        );
        merged["merged_ticket_ids"] = json!([41]);
        assert_eq!(one(&merged)["event"], "Ticket Merged");
    }

    #[test]
    fn without_a_requester_the_ticket_is_anonymous_and_stable() {
        let mut record = audit(
            json!([{"id": 1, "status": "solved", "previous_value": "open", "event_type": "Change"}]),
        );
        record["requester_id"] = Value::Null;
        let m = one(&record);
        assert!(m.get("userId").is_none());
        assert_eq!(m["anonymousId"], anonymous_id("zendesk", "ticket:42"));
        assert_eq!(m, one(&record), "a pure function of the record");
        let other_source = messages("zendesk_eu", "ticket_events", &record)[0].to_json();
        assert_ne!(other_source["messageId"], m["messageId"]);
    }

    #[test]
    fn other_streams_and_malformed_events_give_nothing() {
        let record = audit(json!([]));
        assert!(messages("zendesk", "tickets", &record).is_empty());
        assert!(messages("zendesk", "ticket_events", &json!({"id": 1})).is_empty());
        assert!(
            messages(
                "zendesk",
                "ticket_events",
                &json!({"id": 1, "ticket_id": 2, "child_events": []})
            )
            .is_empty(),
            "no time"
        );
        // created_at when there is no timestamp.
        let m = one(&json!({"id": 3, "ticket_id": 4, "created_at": "2024-01-01T00:00:00Z"}));
        assert_eq!(m["timestamp"], "2024-01-01T00:00:00.000Z");
        assert_eq!(m["event"], "Ticket Updated");
    }
}
