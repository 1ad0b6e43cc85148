//! The mapping of Stripe events to Tracking-API messages (the README's "Tracking API"
//! section documents it for users).
//!
//! - `customer.created` and `customer.updated` → `identify` of the customer (traits
//!   `email`, `name`, `phone`, `created`, `address`).
//! - Every other event → `track` named in Title Case from its type (`charge.succeeded` →
//!   "Charge Succeeded"), with the event's object as properties. Integer amounts of an
//!   object with a `currency` become currency units (`amount` 2000 usd → 20.0; zero-decimal
//!   currencies such as jpy stay as they are) and keep the raw integer as `<field>_raw`.
//! - `userId` is the object's customer (an id, or the id of an expanded customer), or the
//!   object's own id for `customer.*` events; otherwise `anonymousId` is a UUID v5 of the
//!   source and the object's id, so one object's events group together.
//! - `messageId` is a UUID v5 of the source and the event id, `timestamp` the event's
//!   `created`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::warn;
use tributary_sdk::Message;
use tributary_sdk::tracking::{Identity, anonymous_id, iso8601, message_id};

/// Currencies Stripe counts in whole units (no minor unit).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies Stripe counts in thousandths.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// The messages of one record of the `events` stream; none for other streams.
pub fn messages(source: &str, stream: &str, event: &Value) -> Vec<Message> {
    if stream != "events" {
        return Vec::new();
    }
    let (Some(event_id), Some(kind)) = (
        event.get("id").and_then(Value::as_str),
        event.get("type").and_then(Value::as_str),
    ) else {
        warn!(
            source,
            "Skipped a Stripe event without an id or type for tracking."
        );
        return Vec::new();
    };
    let Some(timestamp) = event
        .get("created")
        .and_then(Value::as_i64)
        .and_then(|created| DateTime::<Utc>::from_timestamp(created, 0))
    else {
        warn!(
            source,
            event_id, "Skipped a Stripe event without a valid created time for tracking."
        );
        return Vec::new();
    };
    let Some(object) = event.pointer("/data/object").and_then(Value::as_object) else {
        warn!(
            source,
            event_id, "Skipped a Stripe event without data.object for tracking."
        );
        return Vec::new();
    };
    let object_id = object.get("id").and_then(Value::as_str).unwrap_or(event_id);
    let id = message_id(source, event_id);
    if matches!(kind, "customer.created" | "customer.updated") {
        return vec![Message::identify(
            id,
            object_id,
            timestamp,
            customer_traits(object),
        )];
    }
    let identity = match customer_of(object) {
        Some(customer) => Identity::User(customer.to_owned()),
        None if kind.starts_with("customer.") => Identity::User(object_id.to_owned()),
        None => Identity::Anonymous(anonymous_id(source, object_id)),
    };
    vec![Message::track(
        id,
        identity,
        event_name(kind),
        timestamp,
        properties(object),
    )]
}

/// "Object Action" Title Case of an event type: `invoice.payment_failed` → "Invoice Payment
/// Failed".
pub fn event_name(kind: &str) -> String {
    kind.split(['.', '_'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The customer an object belongs to: its `customer` id, or the id of an expanded one.
fn customer_of(object: &Map<String, Value>) -> Option<&str> {
    match object.get("customer")? {
        Value::String(id) => Some(id),
        Value::Object(customer) => customer.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// The traits of a customer's `identify`.
fn customer_traits(customer: &Map<String, Value>) -> Map<String, Value> {
    let mut traits = Map::new();
    for key in ["email", "name", "phone", "address"] {
        if let Some(value) = customer.get(key).filter(|v| !v.is_null()) {
            traits.insert(key.to_owned(), value.clone());
        }
    }
    if let Some(created) = customer
        .get("created")
        .and_then(Value::as_i64)
        .and_then(|created| DateTime::<Utc>::from_timestamp(created, 0))
    {
        traits.insert("created".to_owned(), iso8601(created).into());
    }
    traits
}

/// Whether `key` holds an amount in the minor unit of the object's currency.
fn is_amount(key: &str) -> bool {
    key == "amount"
        || key.starts_with("amount_")
        || key.ends_with("_amount")
        || matches!(
            key,
            "total" | "subtotal" | "tax" | "balance" | "starting_balance" | "ending_balance"
        )
        || key.starts_with("total_")
        || key.starts_with("subtotal_")
}

/// The object's fields as `track` properties, amounts in currency units.
fn properties(object: &Map<String, Value>) -> Map<String, Value> {
    let divisor = object
        .get("currency")
        .and_then(Value::as_str)
        .map(|currency| {
            let currency = currency.to_ascii_lowercase();
            if ZERO_DECIMAL.contains(&currency.as_str()) {
                1.0
            } else if THREE_DECIMAL.contains(&currency.as_str()) {
                1000.0
            } else {
                100.0
            }
        });
    let mut out = Map::new();
    for (key, value) in object {
        match (divisor, value.as_i64()) {
            (Some(divisor), Some(raw)) if is_amount(key) => {
                // Zero-decimal amounts stay integers: 500 jpy is 500, not 500.0.
                let units = if divisor == 1.0 {
                    Value::from(raw)
                } else {
                    Value::from(raw as f64 / divisor)
                };
                out.insert(key.clone(), units);
                out.insert(format!("{key}_raw"), Value::from(raw));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, object: Value) -> Value {
        json!({"id": "evt_1", "object": "event", "type": kind, "created": 1_700_000_000,
               "data": {"object": object}})
    }

    #[test]
    fn event_names_are_title_case() {
        assert_eq!(event_name("charge.succeeded"), "Charge Succeeded");
        assert_eq!(
            event_name("invoice.payment_failed"),
            "Invoice Payment Failed"
        );
        assert_eq!(
            event_name("customer.subscription.created"),
            "Customer Subscription Created"
        );
    }

    #[test]
    fn customer_created_is_identify() {
        let record = event(
            "customer.created",
            json!({"id": "cus_1", "object": "customer", "email": "a@b.c", "name": "Ann",
                   "phone": null, "created": 1_600_000_000, "address": {"city": "Oslo"},
                   "metadata": {}}),
        );
        let messages = messages("stripe", "events", &record);
        assert_eq!(messages.len(), 1);
        let json = messages[0].to_json();
        assert_eq!(json["type"], "identify");
        assert_eq!(json["userId"], "cus_1");
        assert_eq!(json["traits"]["email"], "a@b.c");
        assert_eq!(json["traits"]["name"], "Ann");
        assert!(json["traits"].get("phone").is_none());
        assert_eq!(json["traits"]["created"], "2020-09-13T12:26:40.000Z");
        assert_eq!(json["traits"]["address"]["city"], "Oslo");
        assert!(json["traits"].get("metadata").is_none());
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["messageId"], message_id("stripe", "evt_1"));
        assert_eq!(json["context"]["library"]["name"], "tributary");
    }

    #[test]
    fn charge_is_track_with_amounts_in_units() {
        let record = event(
            "charge.succeeded",
            json!({"id": "ch_1", "object": "charge", "amount": 2000, "amount_refunded": 150,
                   "currency": "usd", "customer": "cus_9", "paid": true}),
        );
        let json = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json["type"], "track");
        assert_eq!(json["event"], "Charge Succeeded");
        assert_eq!(json["userId"], "cus_9");
        assert_eq!(json["properties"]["amount"], 20.0);
        assert_eq!(json["properties"]["amount_raw"], 2000);
        assert_eq!(json["properties"]["amount_refunded"], 1.5);
        assert_eq!(json["properties"]["amount_refunded_raw"], 150);
        assert_eq!(json["properties"]["paid"], true);
        assert_eq!(json["properties"]["id"], "ch_1");
    }

    #[test]
    fn zero_decimal_amounts_stay_as_they_are() {
        let record = event(
            "charge.succeeded",
            json!({"id": "ch_2", "amount": 500, "currency": "JPY", "customer": null}),
        );
        let json = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json["properties"]["amount"], 500);
        assert_eq!(json["properties"]["amount_raw"], 500);
    }

    #[test]
    fn expanded_customer_is_the_user() {
        let record = event(
            "invoice.payment_failed",
            json!({"id": "in_1", "customer": {"id": "cus_2", "object": "customer"},
                   "total": 1999, "currency": "eur"}),
        );
        let json = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json["event"], "Invoice Payment Failed");
        assert_eq!(json["userId"], "cus_2");
        assert_eq!(json["properties"]["total"], 19.99);
    }

    #[test]
    fn customer_events_use_the_object_id() {
        let record = event("customer.deleted", json!({"id": "cus_3", "deleted": true}));
        let json = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json["type"], "track");
        assert_eq!(json["event"], "Customer Deleted");
        assert_eq!(json["userId"], "cus_3");
        let record = event(
            "customer.subscription.created",
            json!({"id": "sub_1", "customer": "cus_4"}),
        );
        let json = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json["event"], "Customer Subscription Created");
        assert_eq!(json["userId"], "cus_4");
    }

    #[test]
    fn objects_without_customer_are_anonymous_and_stable() {
        let record = event("product.created", json!({"id": "prod_1", "name": "Hat"}));
        let json = messages("stripe", "events", &record)[0].to_json();
        assert!(json.get("userId").is_none());
        assert_eq!(json["anonymousId"], anonymous_id("stripe", "prod_1"));
        let again = messages("stripe", "events", &record)[0].to_json();
        assert_eq!(json, again);
    }

    #[test]
    fn other_streams_and_malformed_events_give_nothing() {
        let record = event("charge.succeeded", json!({"id": "ch_1"}));
        assert!(messages("stripe", "charges", &record).is_empty());
        assert!(messages("stripe", "events", &json!({"id": "evt_1"})).is_empty());
        assert!(messages("stripe", "events", &json!({"id": "evt_1", "type": "x.y"})).is_empty());
    }
}
