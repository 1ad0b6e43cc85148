//! A changed row of a model as a Tracking-API call (Segment Spec: identify, track, group).
//!
//! Guarantees: every message has a `userId` or an `anonymousId` (Segment requires one), a
//! `messageId` derived from the source, model, row id and the row's change number (so a
//! rerun after a crash sends the same id and the collector deduplicates it, while a row that
//! changes back to an earlier value still gets a new one), and
//! `context.tributary = {source, model, change}`. A deleted row's call carries the ids it
//! was last sent with and no traits or properties.

use anyhow::{Result, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value, json};

use super::config::{Call, Change, EventName, Model};

/// The ids of the last call made for a row: what its `deleted` call is sent with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ids {
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(
        rename = "anonymousId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub anonymous_id: Option<String>,
    #[serde(rename = "groupId", default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// A column's value as an id: text as is, numbers in decimal; null or empty is `None`.
fn as_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A column's value as a timestamp: RFC 3339, or a date-time without offset (read as UTC,
/// as PostgreSQL renders `timestamp` columns), or a date.
fn as_time(value: &Value) -> Option<DateTime<Utc>> {
    let Value::String(s) = value else {
        return None;
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    // `+00` offsets (PostgreSQL's text form of timestamptz) without minutes.
    if let Ok(t) = DateTime::parse_from_str(&format!("{s}00"), "%Y-%m-%d %H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The ids `row` is sent with under `model`'s mapping. `id` is the row's id (for errors).
pub fn ids(model: &Model, row: &Map<String, Value>, id: &str) -> Result<Ids> {
    let m = &model.mapping;
    let get = |column: &Option<String>| column.as_ref().and_then(|c| as_id(row.get(c)));
    let ids = Ids {
        user_id: get(&m.user_id),
        anonymous_id: get(&m.anonymous_id),
        group_id: get(&m.group_id),
        event: match &m.call {
            Call::Track(EventName::Fixed(e)) => Some(e.clone()),
            Call::Track(EventName::Column(c)) => match row.get(c) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                _ => bail!(
                    "model `{}`: the row with id {id:?} has no event name in `{c}` (mapping.event_column); a track call needs one",
                    model.name
                ),
            },
            _ => None,
        },
    };
    if ids.user_id.is_none() && ids.anonymous_id.is_none() {
        let columns: Vec<&str> = [&m.user_id, &m.anonymous_id]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        bail!(
            "model `{}`: the row with id {id:?} has no value in {} (mapped to userId/anonymousId); Segment needs one of them on every call",
            model.name,
            columns
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    if matches!(m.call, Call::Group) && ids.group_id.is_none() {
        bail!(
            "model `{}`: the row with id {id:?} has no value in `{}` (mapping.group_id); a group call needs one",
            model.name,
            m.group_id.as_deref().unwrap_or_default()
        );
    }
    Ok(ids)
}

/// The run a call is made in: its source and its time (the timestamp of a call whose
/// mapping names none, or whose row's is null).
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    /// The source's name.
    pub source: &'a str,
    /// When the run started.
    pub now: DateTime<Utc>,
}

/// The call for change number `version` of row `id`. `row` is `None` for a deleted row
/// (its `ids` are the ones it was last sent with).
pub fn message(
    run: &RunContext<'_>,
    model: &Model,
    change: Change,
    ids: &Ids,
    row: Option<&Map<String, Value>>,
    id: &str,
    version: i64,
) -> Result<Value> {
    let (source, now) = (run.source, run.now);
    let message_id = message_id(source, &model.name, id, version);
    let m = &model.mapping;
    let timestamp = match (row, &m.timestamp) {
        (Some(row), Some(column)) => match row.get(column) {
            None | Some(Value::Null) => now,
            Some(value) => as_time(value).ok_or_else(|| {
                anyhow::anyhow!(
                    "model `{}`: the row with id {id:?} has a value in `{column}` (mapping.timestamp) that is not a date-time; write the column as a timestamp or ISO 8601 text",
                    model.name
                )
            })?,
        },
        _ => now,
    };
    let payload: Map<String, Value> = match row {
        None => Map::new(),
        Some(row) => match &m.payload {
            Some(columns) => columns
                .iter()
                .map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Value::Null)))
                .collect(),
            None => row.clone(),
        },
    };
    let mut out = Map::new();
    let kind = match m.call {
        Call::Identify => "identify",
        Call::Track(_) => "track",
        Call::Group => "group",
    };
    out.insert("type".into(), kind.into());
    out.insert("messageId".into(), message_id.into());
    if let Some(u) = &ids.user_id {
        out.insert("userId".into(), u.clone().into());
    }
    if let Some(a) = &ids.anonymous_id {
        out.insert("anonymousId".into(), a.clone().into());
    }
    if let (Call::Group, Some(g)) = (&m.call, &ids.group_id) {
        out.insert("groupId".into(), g.clone().into());
    }
    if let (Call::Track(_), Some(e)) = (&m.call, &ids.event) {
        out.insert("event".into(), e.clone().into());
    }
    out.insert(
        "timestamp".into(),
        tributary_sdk::tracking::iso8601(timestamp).into(),
    );
    let payload_key = match m.call {
        Call::Track(_) => "properties",
        _ => "traits",
    };
    out.insert(payload_key.into(), Value::Object(payload));
    out.insert(
        "context".into(),
        json!({
            "library": {"name": "tributary", "version": env!("CARGO_PKG_VERSION")},
            "tributary": {"source": source, "model": model.name, "change": change.as_str()},
        }),
    );
    Ok(Value::Object(out))
}

/// The `messageId` of change number `version` of row `id` of `model`: stable across reruns.
pub fn message_id(source: &str, model: &str, id: &str, version: i64) -> String {
    tributary_sdk::tracking::message_id(source, &format!("retl\0{model}\0{id}\0{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retl::config::{Mapping, Query};

    fn model(call: Call, payload: Option<Vec<&str>>) -> Model {
        Model {
            name: "users".into(),
            query: Query::Sql("select 1".into()),
            id: "id".into(),
            mapping: Mapping {
                call,
                user_id: Some("id".into()),
                anonymous_id: None,
                group_id: Some("org".into()),
                payload: payload.map(|p| p.into_iter().map(String::from).collect()),
                timestamp: Some("updated_at".into()),
                send: vec![Change::Added, Change::Updated],
            },
        }
    }

    #[test]
    fn identify_track_group_wire_format() {
        let row = json!({"id": 7, "email": "a@b.c", "org": "o1", "updated_at": "2024-05-01T10:00:00", "kind": "Signed Up"});
        let row = row.as_object().unwrap();
        let run = RunContext {
            source: "db",
            now: Utc::now(),
        };
        let m = model(Call::Identify, Some(vec!["email"]));
        let ids = ids(&m, row, "7").unwrap();
        assert_eq!(ids.user_id.as_deref(), Some("7"));
        let msg = message(&run, &m, Change::Added, &ids, Some(row), "7", 1).unwrap();
        assert_eq!(msg["type"], "identify");
        assert_eq!(msg["userId"], "7");
        assert_eq!(msg["traits"], json!({"email": "a@b.c"}));
        assert_eq!(msg["timestamp"], "2024-05-01T10:00:00.000Z");
        assert_eq!(msg["context"]["tributary"]["change"], "added");
        assert_eq!(msg["messageId"], message_id("db", "users", "7", 1));
        assert!(msg.get("groupId").is_none());

        let m = model(Call::Track(EventName::Column("kind".into())), None);
        let ids = super::ids(&m, row, "7").unwrap();
        let msg = message(&run, &m, Change::Updated, &ids, Some(row), "7", 2).unwrap();
        assert_eq!(msg["event"], "Signed Up");
        assert_eq!(msg["properties"]["email"], "a@b.c");

        let m = model(Call::Group, Some(vec!["email"]));
        let ids = super::ids(&m, row, "7").unwrap();
        let msg = message(&run, &m, Change::Deleted, &ids, None, "7", 3).unwrap();
        assert_eq!(msg["groupId"], "o1");
        assert_eq!(msg["traits"], json!({}));
        assert_eq!(msg["context"]["tributary"]["change"], "deleted");
    }

    #[test]
    fn missing_ids_and_bad_timestamps_name_the_column() {
        let m = model(Call::Identify, None);
        let row = json!({"id": null, "updated_at": "yesterday"});
        let e = ids(&m, row.as_object().unwrap(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model `users`") && e.contains("`id`"), "{e}");
        let row = json!({"id": 1, "updated_at": "yesterday"});
        let row = row.as_object().unwrap();
        let i = ids(&m, row, "1").unwrap();
        let e = message(
            &RunContext {
                source: "s",
                now: Utc::now(),
            },
            &m,
            Change::Added,
            &i,
            Some(row),
            "1",
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`updated_at`") && e.contains("not a date-time"),
            "{e}"
        );
        for ok in [
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.123+02:00",
            "2024-05-01 10:00:00+00",
            "2024-05-01",
        ] {
            assert!(as_time(&json!(ok)).is_some(), "{ok}");
        }
    }

    #[test]
    fn message_ids_change_with_the_version() {
        assert_eq!(message_id("s", "m", "1", 1), message_id("s", "m", "1", 1));
        assert_ne!(message_id("s", "m", "1", 1), message_id("s", "m", "1", 2));
        assert_ne!(message_id("s", "m", "1", 1), message_id("s", "n", "1", 1));
    }
}
