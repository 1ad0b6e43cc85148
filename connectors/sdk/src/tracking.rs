//! Segment Tracking-API messages (`identify`, `track`, `group`) that event streams hand to
//! the runtime alongside their records.
//!
//! A connector maps a vendor event to [`Message`]s (see [`crate::Connector::messages`]);
//! the runtime serialises them with [`Message::to_json`] into Segment's wire format. Ids are
//! derived, never random: [`message_id`] is a UUID v5 of the source name and the vendor's
//! event id, so a message sent again after a retry or a crash carries the same `messageId`
//! and the collector deduplicates it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The namespace of every UUID v5 Tributary derives (itself the v5 of a fixed URL, so it
/// never changes between releases: changing it would re-key every message downstream).
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://tributary.dev/tracking")
}

/// The `messageId` of the message made from vendor event `event_id` of source `source`:
/// stable across runs and retries, distinct between sources.
pub fn message_id(source: &str, event_id: &str) -> String {
    // The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    Uuid::new_v5(
        &namespace(),
        format!("message\0{source}\0{event_id}").as_bytes(),
    )
    .to_string()
}

/// The `anonymousId` of an object that has no known user: stable for the object, so all its
/// events group together downstream.
pub fn anonymous_id(source: &str, object_id: &str) -> String {
    Uuid::new_v5(
        &namespace(),
        format!("anonymous\0{source}\0{object_id}").as_bytes(),
    )
    .to_string()
}

/// The kind of a Tracking-API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Who a user is: `traits` describe them.
    Identify,
    /// Something a user did: `event` names it, `properties` describe it.
    Track,
    /// The account or company a user belongs to: `group_id` and its `traits`.
    Group,
}

impl MessageKind {
    /// The wire name: `identify`, `track` or `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Identify => "identify",
            MessageKind::Track => "track",
            MessageKind::Group => "group",
        }
    }
}

/// Who a message is about: Segment requires one of the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A known user (`userId`).
    User(String),
    /// An object without a known user (`anonymousId`).
    Anonymous(String),
}

/// One Tracking-API message, before serialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `identify`, `track` or `group`.
    pub kind: MessageKind,
    /// The deduplication id, see [`message_id`].
    pub message_id: String,
    /// `userId` or `anonymousId`.
    pub identity: Identity,
    /// The `event` name of a `track` call, e.g. `"Charge Succeeded"`.
    pub event: Option<String>,
    /// The `groupId` of a `group` call.
    pub group_id: Option<String>,
    /// When the vendor says the event happened.
    pub timestamp: DateTime<Utc>,
    /// `properties` of a `track` call, `traits` of an `identify` or `group` call.
    pub payload: Map<String, Value>,
    /// Extra `context` fields; `context.library` is always added by [`Message::to_json`].
    pub context: Map<String, Value>,
}

impl Message {
    /// A `track` message named `event`.
    pub fn track(
        message_id: String,
        identity: Identity,
        event: impl Into<String>,
        timestamp: DateTime<Utc>,
        properties: Map<String, Value>,
    ) -> Message {
        Message {
            kind: MessageKind::Track,
            message_id,
            identity,
            event: Some(event.into()),
            group_id: None,
            timestamp,
            payload: properties,
            context: Map::new(),
        }
    }

    /// An `identify` message for `user_id`.
    pub fn identify(
        message_id: String,
        user_id: impl Into<String>,
        timestamp: DateTime<Utc>,
        traits: Map<String, Value>,
    ) -> Message {
        Message {
            kind: MessageKind::Identify,
            message_id,
            identity: Identity::User(user_id.into()),
            event: None,
            group_id: None,
            timestamp,
            payload: traits,
            context: Map::new(),
        }
    }

    /// The message in Segment's wire format, as one element of a `/v1/batch` body.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), self.kind.as_str().into());
        out.insert("messageId".into(), self.message_id.clone().into());
        match &self.identity {
            Identity::User(id) => out.insert("userId".into(), id.clone().into()),
            Identity::Anonymous(id) => out.insert("anonymousId".into(), id.clone().into()),
        };
        if let Some(event) = &self.event {
            out.insert("event".into(), event.clone().into());
        }
        if let Some(group_id) = &self.group_id {
            out.insert("groupId".into(), group_id.clone().into());
        }
        out.insert("timestamp".into(), iso8601(self.timestamp).into());
        let payload_key = match self.kind {
            MessageKind::Track => "properties",
            MessageKind::Identify | MessageKind::Group => "traits",
        };
        out.insert(payload_key.into(), Value::Object(self.payload.clone()));
        let mut context = self.context.clone();
        context.insert(
            "library".into(),
            json!({"name": "tributary", "version": env!("CARGO_PKG_VERSION")}),
        );
        out.insert("context".into(), Value::Object(context));
        Value::Object(out)
    }
}

/// `time` as ISO 8601 in UTC with millisecond precision, the form Segment documents.
pub fn iso8601(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_distinct() {
        assert_eq!(message_id("stripe", "evt_1"), message_id("stripe", "evt_1"));
        assert_ne!(message_id("stripe", "evt_1"), message_id("stripe", "evt_2"));
        assert_ne!(
            message_id("stripe", "evt_1"),
            message_id("stripe2", "evt_1")
        );
        assert_ne!(message_id("ab", "c"), message_id("a", "bc"));
        assert_ne!(message_id("s", "x"), anonymous_id("s", "x"));
        let id = Uuid::parse_str(&message_id("stripe", "evt_1")).unwrap();
        assert_eq!(id.get_version_num(), 5);
    }

    #[test]
    fn track_wire_format() {
        let time = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut properties = Map::new();
        properties.insert("amount".into(), json!(20.0));
        let message = Message::track(
            "m1".into(),
            Identity::Anonymous("a1".into()),
            "Charge Succeeded",
            time,
            properties,
        );
        let json = message.to_json();
        assert_eq!(json["type"], "track");
        assert_eq!(json["messageId"], "m1");
        assert_eq!(json["anonymousId"], "a1");
        assert!(json.get("userId").is_none());
        assert_eq!(json["event"], "Charge Succeeded");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["properties"]["amount"], 20.0);
        assert_eq!(json["context"]["library"]["name"], "tributary");
        assert_eq!(
            json["context"]["library"]["version"],
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn identify_wire_format() {
        let time = DateTime::from_timestamp(0, 0).unwrap();
        let json = Message::identify("m2".into(), "cus_1", time, Map::new()).to_json();
        assert_eq!(json["type"], "identify");
        assert_eq!(json["userId"], "cus_1");
        assert!(json["traits"].is_object());
        assert!(json.get("event").is_none());
    }
}
