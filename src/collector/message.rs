//! Tracking-API messages as the collector takes them in: the calls, the checks Segment
//! documents, and what the collector fills in (`messageId`, `receivedAt`).
//!
//! Segment's HTTP Tracking API answers 400 for JSON it cannot read, a message without
//! `userId` or `anonymousId`, a `track` without `event`, a message over 32 KB and a batch
//! over 500 KB, and 200 for everything else
//! (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#errors>,
//! <https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#max-request-size>).
//! A batch with one bad message is refused whole here (the reason names its index), so a
//! 200 always means every message of the request was accepted.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The largest message, in bytes of JSON (Segment's 32 KB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The deepest a message may nest objects and arrays (the message itself is level 1).
/// Landing writes a message's rows into a page one level deeper, and the JSON reader stops
/// at 128 levels: a message accepted near that limit could never land, and would hold up
/// every message after it. Analytics payloads nest a few levels.
pub const MAX_DEPTH: usize = 64;
/// The largest batch request, in bytes of JSON after decompression (Segment's 500 KB).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// A Tracking-API call type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    /// `identify`: who the user is, with traits.
    Identify,
    /// `track`: an action the user took.
    Track,
    /// `page`: a web page view.
    Page,
    /// `screen`: a mobile screen view.
    Screen,
    /// `group`: the user belongs to a group (account, company).
    Group,
    /// `alias`: two ids are the same user.
    Alias,
}

impl Call {
    /// Every call type.
    pub const ALL: [Call; 6] = [
        Call::Identify,
        Call::Track,
        Call::Page,
        Call::Screen,
        Call::Group,
        Call::Alias,
    ];

    /// The call's name as messages write it (`track`).
    pub fn name(self) -> &'static str {
        match self {
            Call::Identify => "identify",
            Call::Track => "track",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Group => "group",
            Call::Alias => "alias",
        }
    }

    /// The table of every message of this type (Segment's warehouse schema: `tracks`,
    /// `identifies`, `pages`, `screens`, `groups`, `aliases`).
    pub fn table(self) -> &'static str {
        match self {
            Call::Identify => "identifies",
            Call::Track => "tracks",
            Call::Page => "pages",
            Call::Screen => "screens",
            Call::Group => "groups",
            Call::Alias => "aliases",
        }
    }

    /// The call named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A request the collector refuses with 400, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// A request body's messages, checked and filled in, each as JSON text ready to spool,
/// and the write key the body carried (`writeKey`), if any.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// `writeKey` from the body.
    pub write_key: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
    #[serde(rename = "sentAt")]
    sent_at: Option<Value>,
}

/// Reads a `/v1/batch` (or `/v1/import`) body: `{"batch": [message, …]}`.
pub fn read_batch(body: &[u8], received_at: DateTime<Utc>) -> Result<Accepted, Invalid> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(Invalid(format!(
            "the batch is {} bytes; a batch may hold at most {MAX_BATCH_BYTES} bytes (500 KB)",
            body.len()
        )));
    }
    let parsed: BatchBody<'_> = serde_json::from_slice(body)
        .map_err(|e| Invalid(format!("the body is not valid JSON: {e}")))?;
    let Some(batch) = parsed.batch else {
        return Err(Invalid(
            "the body has no `batch` array of messages".to_owned(),
        ));
    };
    let mut out = Accepted {
        messages: Vec::with_capacity(batch.len()),
        write_key: parsed.write_key,
    };
    for (i, raw) in batch.into_iter().enumerate() {
        let text = raw.get();
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Invalid(format!(
                "batch[{i}] is {} bytes; a message may hold at most {MAX_MESSAGE_BYTES} bytes (32 KB)",
                text.len()
            )));
        }
        let message: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| Invalid(format!("batch[{i}] is not a JSON object: {e}")))?;
        let (bytes, key) = fill(message, None, parsed.sent_at.as_ref(), received_at)
            .map_err(|Invalid(e)| Invalid(format!("batch[{i}]: {e}")))?;
        if out.write_key.is_none() {
            out.write_key = key;
        }
        out.messages.push(bytes);
    }
    Ok(out)
}

/// Reads the body of a single call's endpoint (`/v1/track`, …).
pub fn read_single(
    body: &[u8],
    call: Call,
    received_at: DateTime<Utc>,
) -> Result<Accepted, Invalid> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Invalid(format!(
            "the message is {} bytes; a message may hold at most {MAX_MESSAGE_BYTES} bytes (32 KB)",
            body.len()
        )));
    }
    let message: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| Invalid(format!("the body is not a valid JSON object: {e}")))?;
    let (bytes, write_key) = fill(message, Some(call), None, received_at)?;
    Ok(Accepted {
        messages: vec![bytes],
        write_key,
    })
}

/// Whether `v` is an id a message can carry (a non-empty string, or a number).
/// How many levels of objects and arrays `v` holds (0 for a scalar). The parser stops at
/// 128, so the recursion is bounded.
fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn is_id(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(_)) => true,
        _ => false,
    }
}

/// Checks one message and fills in what the collector adds. `call` is the endpoint's
/// (single calls), or `None` to take the message's own `type` (batches). Returns the
/// message as JSON and its `writeKey` (taken out: a key is never spooled or landed).
fn fill(
    mut m: Map<String, Value>,
    call: Option<Call>,
    batch_sent_at: Option<&Value>,
    received_at: DateTime<Utc>,
) -> Result<(Vec<u8>, Option<String>), Invalid> {
    let call = match call {
        Some(c) => c,
        None => match m.get("type").and_then(Value::as_str).and_then(Call::parse) {
            Some(c) => c,
            None => {
                return Err(Invalid(
                    "`type` must be one of identify, track, page, screen, group, alias".to_owned(),
                ));
            }
        },
    };
    m.insert("type".to_owned(), Value::String(call.name().to_owned()));
    let write_key = match m.remove("writeKey") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if !is_id(m.get("userId")) && !is_id(m.get("anonymousId")) {
        return Err(Invalid(
            "the message has neither `userId` nor `anonymousId`; every message needs one"
                .to_owned(),
        ));
    }
    if call == Call::Track
        && m.get("event")
            .and_then(Value::as_str)
            .is_none_or(|e| e.trim().is_empty())
    {
        return Err(Invalid(
            "a track message needs `event`, the name of the action".to_owned(),
        ));
    }
    if call == Call::Group && !is_id(m.get("groupId")) {
        return Err(Invalid("a group message needs `groupId`".to_owned()));
    }
    if call == Call::Alias && !is_id(m.get("previousId")) {
        return Err(Invalid(
            "an alias message needs `previousId`, the id it merges".to_owned(),
        ));
    }
    let depth = 1 + m.values().map(nesting).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(Invalid(format!(
            "the message nests objects and arrays {depth} levels deep; at most {MAX_DEPTH} are accepted"
        )));
    }
    if !m.get("messageId").is_some_and(|v| is_id(Some(v))) {
        m.insert(
            "messageId".to_owned(),
            Value::String(format!("tributary-{}", uuid::Uuid::new_v4())),
        );
    }
    if !m.contains_key("sentAt")
        && let Some(sent) = batch_sent_at
    {
        m.insert("sentAt".to_owned(), sent.clone());
    }
    m.insert(
        "receivedAt".to_owned(),
        Value::String(received_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
    );
    let bytes = serde_json::to_vec(&m).map_err(|e| Invalid(format!("the message: {e}")))?;
    Ok((bytes, write_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn a_track_needs_an_event_and_an_id() {
        let e = read_single(br#"{"userId":"u1"}"#, Call::Track, now()).unwrap_err();
        assert!(e.0.contains("event"), "{e:?}");
        let e = read_single(br#"{"event":"x"}"#, Call::Track, now()).unwrap_err();
        assert!(e.0.contains("anonymousId"), "{e:?}");
        let ok = read_single(
            br#"{"event":"x","anonymousId":"a","writeKey":"k"}"#,
            Call::Track,
            now(),
        )
        .unwrap();
        assert_eq!(ok.write_key.as_deref(), Some("k"));
        let m: Value = serde_json::from_slice(&ok.messages[0]).unwrap();
        assert!(m.get("writeKey").is_none(), "the key is never spooled");
        assert!(m["messageId"].as_str().unwrap().starts_with("tributary-"));
        assert_eq!(m["type"], "track");
        assert!(m["receivedAt"].is_string());
    }

    #[test]
    fn a_message_nested_past_the_limit_is_refused() {
        // The message is level 1 and `context` level 2: 62 arrays inside make 64 levels.
        let nested = |arrays: usize| {
            format!(
                r#"{{"userId":"u","event":"e","context":{{"k":{}1{}}}}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            )
        };
        assert!(read_single(nested(62).as_bytes(), Call::Track, now()).is_ok());
        let e = read_single(nested(63).as_bytes(), Call::Track, now()).unwrap_err();
        assert!(e.0.contains("65 levels deep; at most 64"), "{e:?}");
        let message = nested(100).replacen('{', r#"{"type":"track","#, 1);
        let batch = format!(r#"{{"batch":[{message}]}}"#);
        let e = read_batch(batch.as_bytes(), now()).unwrap_err();
        assert!(
            e.0.contains("batch[0]") && e.0.contains("102 levels deep"),
            "{e:?}"
        );
    }

    #[test]
    fn sizes_are_segments() {
        let big = format!(
            r#"{{"userId":"u","event":"e","properties":{{"p":"{}"}}}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert!(
            read_single(big.as_bytes(), Call::Track, now())
                .unwrap_err()
                .0
                .contains("32 KB")
        );
        let batch = format!(r#"{{"batch":[{big}]}}"#);
        let e = read_batch(batch.as_bytes(), now()).unwrap_err();
        assert!(e.0.contains("batch[0]") && e.0.contains("32 KB"), "{e:?}");
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert!(read_batch(&huge, now()).unwrap_err().0.contains("500 KB"));
    }

    #[test]
    fn a_batch_names_its_bad_message_and_passes_its_sent_at_down() {
        let e = read_batch(
            br#"{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"nope","userId":"u"}]}"#,
            now(),
        )
        .unwrap_err();
        assert!(e.0.starts_with("batch[1]"), "{e:?}");
        let ok = read_batch(
            br#"{"sentAt":"2024-01-01T00:00:00Z","batch":[{"type":"identify","userId":"u","messageId":"m1"}]}"#,
            now(),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&ok.messages[0]).unwrap();
        assert_eq!(m["sentAt"], "2024-01-01T00:00:00Z");
        assert_eq!(m["messageId"], "m1");
    }
}
