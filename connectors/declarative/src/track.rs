//! An event stream's records as Segment `track` calls, from the stream's `track` mapping
//! (<https://segment.com/docs/connections/spec/track/>).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tributary_sdk::Message;
use tributary_sdk::tracking::{Identity, anonymous_id, message_id};

use crate::extract::get_path;
use crate::spec::{TimeFormat, Track, dotted};
use crate::template::Template;

/// The value at a dotted path of `record` (validated by `check-spec`).
fn at<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    get_path(record, &dotted(path).ok()?)
}

/// A scalar as text (a string as it is); nothing for null, objects and arrays.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// When the event happened, read as `format` says.
fn time(v: &Value, format: Option<TimeFormat>) -> Option<DateTime<Utc>> {
    let ms = match v {
        Value::Number(n) => {
            let n = n.as_i64()?;
            match format {
                Some(TimeFormat::UnixMs) => n,
                _ => n.checked_mul(1000)?,
            }
        }
        Value::String(s) => format.unwrap_or(TimeFormat::Rfc3339).parse(s)?,
        _ => return None,
    };
    DateTime::from_timestamp_millis(ms)
}

/// `text` in Title Case: words split at `_`, `.`, `-` and spaces, each capitalized, joined
/// by one space (`customer_created` → `Customer Created`).
fn title_case(text: &str) -> String {
    text.split(['_', '.', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `track` call for `record` of `stream` (whose records are keyed by `key`), or none
/// when the record lacks its key, its time or an event name: a call without them would be
/// refused by Segment or could not be deduplicated.
pub fn message(
    track: &Track,
    source: &str,
    stream: &str,
    key: &str,
    record: &Value,
) -> Option<Message> {
    let id = at(record, key).and_then(text).filter(|s| !s.is_empty())?;
    let event = Template::parse(&track.event)
        .ok()?
        .render(|name| {
            name.strip_prefix("record.")
                .and_then(|p| at(record, p))
                .and_then(text)
        })
        .trim()
        .to_owned();
    let event = if track.title_case {
        title_case(&event)
    } else {
        event
    };
    if event.is_empty() {
        return None;
    }
    let timestamp = time(at(record, &track.timestamp)?, track.timestamp_format)?;
    let identity = match track
        .user_id
        .as_deref()
        .and_then(|p| at(record, p))
        .and_then(text)
        .filter(|s| !s.is_empty())
    {
        Some(user) => Identity::User(user),
        None => Identity::Anonymous(anonymous_id(source, &format!("{stream}/{id}"))),
    };
    let object = record.as_object()?;
    let properties: Map<String, Value> = match &track.properties {
        Some(names) => names
            .iter()
            .filter_map(|n| object.get(n).map(|v| (n.clone(), v.clone())))
            .collect(),
        None => object.clone(),
    };
    // An event's record never changes: its stream and key name it for good, so a re-read
    // sends the same messageId and the collector keeps one.
    Some(Message::track(
        message_id(source, &format!("{stream}/{id}")),
        identity,
        event,
        timestamp,
        properties,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn track(user: Option<&str>, props: Option<Vec<&str>>) -> Track {
        Track {
            event: "Message {{ record.status }}".into(),
            user_id: user.map(str::to_owned),
            timestamp: "sent.at".into(),
            timestamp_format: Some(TimeFormat::Rfc2822),
            properties: props.map(|p| p.into_iter().map(str::to_owned).collect()),
            title_case: false,
        }
    }

    #[test]
    fn title_case_writes_segments_object_action_form() {
        assert_eq!(title_case("customer_created"), "Customer Created");
        assert_eq!(title_case("payment_source.added"), "Payment Source Added");
        assert_eq!(title_case("  Order  completed "), "Order Completed");
        let t = Track {
            event: "{{ record.event_type }}".into(),
            title_case: true,
            ..track(None, None)
        };
        let record = json!({"sid": "EV1", "event_type": "subscription_cancelled",
            "sent": {"at": "Wed, 01 May 2024 12:00:00 +0000"}});
        let m = message(&t, "cb", "events", "sid", &record).unwrap();
        assert_eq!(m.event.as_deref(), Some("Subscription Cancelled"));
    }

    #[test]
    fn a_record_becomes_a_track_call_with_a_stable_message_id() {
        let record = json!({"sid": "SM1", "status": "delivered", "to": "+15550001",
            "sent": {"at": "Wed, 01 May 2024 12:00:00 +0000"}, "price": "-0.0075"});
        let m = message(
            &track(Some("to"), Some(vec!["status", "price"])),
            "tw",
            "messages",
            "sid",
            &record,
        )
        .unwrap();
        assert_eq!(m.event.as_deref(), Some("Message delivered"));
        assert_eq!(m.identity, Identity::User("+15550001".into()));
        assert_eq!(m.timestamp.to_rfc3339(), "2024-05-01T12:00:00+00:00");
        assert_eq!(
            Value::Object(m.payload.clone()),
            json!({"status": "delivered", "price": "-0.0075"})
        );
        let again = message(&track(Some("to"), None), "tw", "messages", "sid", &record).unwrap();
        assert_eq!(
            m.message_id, again.message_id,
            "a re-read sends the same id"
        );
        assert_eq!(again.payload.len(), 5, "every field by default");
        let other = message(&track(Some("to"), None), "tw2", "messages", "sid", &record).unwrap();
        assert_ne!(m.message_id, other.message_id, "per source");
    }

    #[test]
    fn without_a_user_the_call_is_anonymous_and_without_a_time_there_is_none() {
        let record = json!({"sid": "SM2", "status": "sent", "sent": {"at": "Wed, 01 May 2024 12:00:00 +0000"}});
        let m = message(&track(Some("to"), None), "tw", "messages", "sid", &record).unwrap();
        assert!(matches!(m.identity, Identity::Anonymous(_)));
        let no_time = json!({"sid": "SM3", "status": "sent"});
        assert!(message(&track(None, None), "tw", "messages", "sid", &no_time).is_none());
        let no_key = json!({"status": "sent", "sent": {"at": "Wed, 01 May 2024 12:00:00 +0000"}});
        assert!(message(&track(None, None), "tw", "messages", "sid", &no_key).is_none());
        let unix = Track {
            timestamp: "t".into(),
            timestamp_format: None,
            ..track(None, None)
        };
        let m = message(
            &unix,
            "tw",
            "messages",
            "sid",
            &json!({"sid": "SM4", "status": "x", "t": 1714564800}),
        )
        .unwrap();
        assert_eq!(m.timestamp.timestamp(), 1714564800);
    }
}
