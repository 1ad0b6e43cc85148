//! The client of Segment's HTTP Tracking API (`POST {endpoint}/v1/batch`).
//!
//! Guarantees: every message either reaches the collector or is reported (counted and
//! logged with its `messageId`), never dropped silently. A message over 32 KB is cut down by
//! dropping its largest properties or traits, and says so in
//! `context.tributary.truncated_fields`; one that still does not fit is reported and left
//! out. Batches stay within 475,000 bytes (as Segment's own libraries keep them) and 2,500
//! messages. 429, 5xx and network failures are
//! retried with backoff honouring `Retry-After` (the SDK's [`HttpClient`]); a batch
//! answered 400 is split in halves until the message the collector refuses is found, which
//! is reported and left out while the rest is delivered.

use std::io::Write;

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Map, Value, json};
use tributary_sdk::Secret;
use tributary_sdk::http::{HttpClient, HttpConfig};
use url::Url;

/// The largest message Segment accepts, in bytes of JSON.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The largest batch body sent, in bytes of JSON before compression. Segment's limit is
/// 500 KB per batch request; its own libraries stop at 475,000 bytes to keep headroom
/// (analytics-python's `BATCH_SIZE_LIMIT`, analytics-go's `maxBatchBytes`), and so do we.
pub const MAX_BATCH_BYTES: usize = 475_000;
/// The most messages in one batch.
pub const MAX_BATCH_MESSAGES: usize = 2_500;
/// The collector used when the config names none.
pub const DEFAULT_ENDPOINT: &str = "https://api.segment.io";

/// Room kept in each batch for the envelope (`{"batch":[…],"sentAt":"…"}`).
const ENVELOPE_BYTES: usize = 64;

/// A message that cannot be delivered, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The message's `messageId` (empty if it had none).
    pub message_id: String,
    /// Why it was left out.
    pub reason: String,
}

/// What sending a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages the collector accepted.
    pub delivered: u64,
    /// Messages the collector refused with 400, found by bisection.
    pub rejected: Vec<Rejected>,
}

/// A client of one collector with one write key.
#[derive(Debug, Clone)]
pub struct TrackingClient {
    http: HttpClient,
    batch_url: Url,
    write_key: Secret,
}

/// Whether `endpoint` is one of Segment's own collectors, which answer 200 to any write
/// key and to messages they later drop (Segment's HTTP API docs: "Segment returns a 200
/// response for all API requests except errors caused by large payloads and JSON
/// errors"): there a 200 means "accepted by the collector", not "delivered".
pub fn is_segment(endpoint: &Url) -> bool {
    endpoint.host_str().is_some_and(|host| {
        let host = host.to_ascii_lowercase();
        host == "segment.io"
            || host.ends_with(".segment.io")
            || host == "segmentapis.com"
            || host.ends_with(".segmentapis.com")
    })
}

/// What `tributary check` learns about a source's collector ([`TrackingClient::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A Segment collector: it answers 200 to any write key, so asking proves nothing and
    /// nothing is sent.
    Unverifiable,
    /// The collector accepted the write key (a 2xx to an empty batch).
    Accepted,
    /// The collector answered, but not in a way that says whether the key is good (a 400
    /// to the empty batch); the first delivery will tell.
    Inconclusive(String),
    /// The collector refused the write key (401/403), has no Tracking API there or a
    /// disabled source (404), or could not be reached.
    Failed(String),
}

impl Probe {
    /// The line `check` prints for a collector at `host` (no write key in it).
    pub fn line(&self, host: &str) -> String {
        match self {
            // Segment answers 200 to every request but an oversized or malformed one
            // ("Segment returns a 200 response for all API requests except errors caused
            // by large payloads and JSON errors ... To debug events that return 200
            // responses but aren't accepted by Segment, use the Segment Debugger":
            // https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/#errors),
            // and the Debugger is a tab of each source in the Segment app
            // (https://segment.com/docs/connections/sources/debugger/).
            Probe::Unverifiable => format!(
                "tracking: {host} — Segment does not validate write keys (it answers 200 \
                 to any key and to messages it drops); confirm delivery in Segment's \
                 Debugger (Connections > Sources > the source of this write key > Debugger)"
            ),
            Probe::Accepted => {
                format!("tracking: {host} — ok (the collector accepted the write key)")
            }
            Probe::Inconclusive(why) => format!("tracking: {host} — reachable; {why}"),
            Probe::Failed(why) => format!("tracking: {host} — FAILED: {why}"),
        }
    }

    /// Whether `check` must fail for it.
    pub fn failed(&self) -> bool {
        matches!(self, Probe::Failed(_))
    }
}

impl TrackingClient {
    /// Whether a 200 from this collector says nothing about the write key or the fate of
    /// the messages (Segment's collectors; see [`is_segment`]). Collectors that do check
    /// (RudderStack, Jitsu) answer 401 to a bad key, which fails delivery.
    pub fn accepts_any_write_key(&self) -> bool {
        is_segment(&self.batch_url)
    }

    /// The collector's host (and port), for messages: never the write key.
    pub fn host(&self) -> String {
        let host = self.batch_url.host_str().unwrap_or_default();
        match self.batch_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// Asks the collector whether it takes the write key, by posting an empty batch
    /// (no message, so nothing reaches the customer's data). Segment is not asked (see
    /// [`Probe::Unverifiable`]). A collector that checks keys refuses a bad one before
    /// reading the body: RudderStack answers 401 "Invalid Write Key", and 404 "Source is
    /// disabled" for a disabled source
    /// (https://github.com/rudderlabs/rudder-server/blob/master/gateway/response/response.go).
    pub async fn probe(&self) -> Probe {
        if self.accepts_any_write_key() {
            return Probe::Unverifiable;
        }
        match self.post(&[]).await {
            Ok(()) => Probe::Accepted,
            Err(tributary_sdk::Error::Auth {
                status, message, ..
            }) => Probe::Failed(format!(
                "the collector refused the write key (HTTP {status}: {message}); check \
                 `tracking.write_key`"
            )),
            Err(tributary_sdk::Error::Http {
                status: 404,
                message,
                url,
                ..
            }) => Probe::Failed(format!(
                "{url} answered HTTP 404 ({message}): no Tracking API there, or its source \
                 is disabled; check `tracking.endpoint` (messages go to <endpoint>/v1/batch)"
            )),
            Err(tributary_sdk::Error::Http {
                status: 400,
                message,
                ..
            }) => Probe::Inconclusive(format!(
                "it answered HTTP 400 to an empty batch ({message}), so the write key is \
                 checked by the first delivery"
            )),
            Err(other) => Probe::Failed(format!("the collector did not accept a request: {other}")),
        }
    }

    /// A client posting to `{endpoint}/v1/batch` with `write_key`. `http` sets rate, retries
    /// and timeouts.
    pub fn new(endpoint: &str, write_key: Secret, http: HttpConfig) -> Result<Self> {
        let base = Url::parse(endpoint).with_context(|| {
            format!(
                "the tracking endpoint `{endpoint}` is not a URL; write e.g. {DEFAULT_ENDPOINT}"
            )
        })?;
        let batch_url = base
            .join(&format!("{}/v1/batch", base.path().trim_end_matches('/')))
            .with_context(|| format!("building the batch URL of `{endpoint}`"))?;
        Ok(TrackingClient {
            http: HttpClient::new(http)?,
            batch_url,
            write_key,
        })
    }

    /// Sends `messages` (each already within [`MAX_MESSAGE_BYTES`], see [`fit`]; together
    /// within one batch, see [`batches`]). A 400 answer is bisected: the refused messages
    /// are returned in the report, everything else is delivered. Errors only when the
    /// collector stays unreachable or failing after retries; nothing in the batch counts as
    /// delivered then.
    pub async fn send(&self, messages: &[Value]) -> Result<BatchReport> {
        let mut report = BatchReport::default();
        // Depth-first over halves, so delivery keeps the messages' order.
        let mut todo = vec![messages];
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            match self.post(part).await {
                Ok(()) => report.delivered += part.len() as u64,
                Err(tributary_sdk::Error::Http {
                    status: 400,
                    message,
                    ..
                }) => {
                    if let [only] = part {
                        let message_id = message_id_of(only);
                        tracing::warn!(message_id = %message_id, reason = %message, "The collector refused a message; skipped it.");
                        report.rejected.push(Rejected {
                            message_id,
                            reason: format!("the collector answered 400: {message}"),
                        });
                    } else {
                        let (left, right) = part.split_at(part.len() / 2);
                        todo.push(right);
                        todo.push(left);
                    }
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "delivering {} messages to the Tracking API at {}",
                        part.len(),
                        self.batch_url
                    )));
                }
            }
        }
        Ok(report)
    }

    /// One `POST /v1/batch`, gzip-compressed, with Basic auth.
    async fn post(&self, messages: &[Value]) -> tributary_sdk::Result<()> {
        let body = json!({
            "batch": messages,
            "sentAt": tributary_sdk::tracking::iso8601(chrono::Utc::now()),
        });
        let json = serde_json::to_vec(&body).map_err(|e| tributary_sdk::Error::Transport {
            method: "POST".into(),
            url: self.batch_url.to_string(),
            attempts: 0,
            message: format!("serialising the batch: {e}"),
        })?;
        let gzipped = gzip(&json).map_err(|e| tributary_sdk::Error::Transport {
            method: "POST".into(),
            url: self.batch_url.to_string(),
            attempts: 0,
            message: format!("compressing the batch: {e}"),
        })?;
        let gzipped = bytes::Bytes::from(gzipped);
        self.http
            .send("send tracking batch", |client| {
                client
                    .post(self.batch_url.clone())
                    .basic_auth(self.write_key.expose(), Some(""))
                    .header("Content-Type", "application/json")
                    .header("Content-Encoding", "gzip")
                    .body(gzipped.clone())
            })
            .await
            .map(drop)
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data)?;
    encoder.finish()
}

/// The `messageId` of a wire-format message, or `""`.
pub fn message_id_of(message: &Value) -> String {
    message
        .get("messageId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn json_len(value: &Value) -> usize {
    // Serialising a Value cannot fail (its keys are strings).
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// `message` within [`MAX_MESSAGE_BYTES`]: as is when it fits; otherwise with its largest
/// `properties`/`traits` dropped, one at a time, until it fits, and their names listed in
/// `context.tributary.truncated_fields`. When dropping all of them is not enough, the
/// message is returned as [`Rejected`].
pub fn fit(mut message: Value) -> Result<Value, Rejected> {
    if json_len(&message) <= MAX_MESSAGE_BYTES {
        return Ok(message);
    }
    let message_id = message_id_of(&message);
    let key = if message.get("properties").is_some_and(Value::is_object) {
        "properties"
    } else {
        "traits"
    };
    let mut payload = match message.get_mut(key).map(Value::take) {
        Some(Value::Object(payload)) => payload,
        _ => Map::new(),
    };
    let mut fields: Vec<(String, usize)> = payload
        .iter()
        .map(|(name, value)| (name.clone(), json_len(value)))
        .collect();
    // Largest first; by name among equals, so the cut is the same on every retry.
    fields.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut dropped = Vec::new();
    for (name, _) in fields {
        payload.remove(&name);
        dropped.push(Value::String(name));
        let mut candidate = message.clone();
        candidate[key] = Value::Object(payload.clone());
        let context = match candidate.get_mut("context") {
            Some(Value::Object(context)) => context,
            _ => {
                candidate["context"] = json!({});
                match candidate.get_mut("context") {
                    Some(Value::Object(context)) => context,
                    _ => break,
                }
            }
        };
        context.insert(
            "tributary".into(),
            json!({"truncated_fields": dropped.clone()}),
        );
        if json_len(&candidate) <= MAX_MESSAGE_BYTES {
            return Ok(candidate);
        }
    }
    Err(Rejected {
        message_id,
        reason: format!("the message is over {MAX_MESSAGE_BYTES} bytes even without its {key}"),
    })
}

/// Splits `messages` into consecutive batches of at most [`MAX_BATCH_MESSAGES`] messages and
/// [`MAX_BATCH_BYTES`] bytes, in order. Each message must already be within
/// [`MAX_MESSAGE_BYTES`].
pub fn batches(messages: &[Value]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE_BYTES;
    for (i, message) in messages.iter().enumerate() {
        // One comma between messages.
        let len = json_len(message).saturating_add(1);
        if i > start && (i - start >= MAX_BATCH_MESSAGES || bytes + len > MAX_BATCH_BYTES) {
            out.push(start..i);
            start = i;
            bytes = ENVELOPE_BYTES;
        }
        bytes += len;
    }
    if start < messages.len() {
        out.push(start..messages.len());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_segment_hosts_accept_any_write_key() {
        for segment in [
            "https://api.segment.io/v1/batch",
            "https://eu1.api.segmentapis.com/v1/batch",
        ] {
            assert!(is_segment(&Url::parse(segment).unwrap()), "{segment}");
        }
        for other in [
            "http://127.0.0.1:8080/v1/batch",
            "https://hosted.rudderlabs.com/v1/batch",
            "https://segment.io.attacker.test/v1/batch",
        ] {
            assert!(!is_segment(&Url::parse(other).unwrap()), "{other}");
        }
    }

    use super::*;

    fn message(id: &str, properties: Value) -> Value {
        json!({"type": "track", "messageId": id, "userId": "u", "event": "E",
               "timestamp": "2020-01-01T00:00:00.000Z", "properties": properties,
               "context": {"library": {"name": "tributary", "version": "0"}}})
    }

    #[test]
    fn small_messages_fit_as_they_are() {
        let m = message("m", json!({"a": 1}));
        assert_eq!(fit(m.clone()), Ok(m));
    }

    #[test]
    fn oversize_messages_lose_their_largest_fields_and_say_so() {
        let huge = "x".repeat(40_000);
        let m = message("m", json!({"description": huge, "amount": 20.0}));
        let fitted = fit(m).unwrap();
        assert!(json_len(&fitted) <= MAX_MESSAGE_BYTES);
        assert!(fitted["properties"].get("description").is_none());
        assert_eq!(fitted["properties"]["amount"], 20.0);
        assert_eq!(
            fitted["context"]["tributary"]["truncated_fields"],
            json!(["description"])
        );
        assert_eq!(fitted["context"]["library"]["name"], "tributary");
    }

    #[test]
    fn messages_too_big_without_payload_are_rejected() {
        let mut m = message("m", json!({"a": 1}));
        m["context"]["page"] = json!("y".repeat(40_000));
        let rejected = fit(m).unwrap_err();
        assert_eq!(rejected.message_id, "m");
    }

    #[test]
    fn batches_respect_count_and_size() {
        let small: Vec<Value> = (0..6000)
            .map(|i| message(&i.to_string(), json!({})))
            .collect();
        let ranges = batches(&small);
        assert_eq!(ranges.len(), 3);
        assert!(ranges.iter().all(|r| r.len() <= MAX_BATCH_MESSAGES));
        assert_eq!(ranges.last().map(|r| r.end), Some(6000));

        let big: Vec<Value> = (0..40)
            .map(|i| message(&i.to_string(), json!({"d": "z".repeat(30_000)})))
            .collect();
        for range in batches(&big) {
            let body = json!({"batch": &big[range], "sentAt": "2020-01-01T00:00:00.000Z"});
            assert!(json_len(&body) <= MAX_BATCH_BYTES);
            assert!(json_len(&body) <= 475_000);
        }
    }

    /// A collector that checks auth, encoding and limits, refuses batches holding `poison`
    /// with 400 and records the messageIds it accepted.
    async fn collector(
        poison: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap, StatusCode};
        use std::io::Read;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = std::sync::Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/v1/batch",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = std::sync::Arc::clone(&state);
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    // "key:" in base64.
                    if header("authorization") != "Basic a2V5Og==" {
                        return StatusCode::UNAUTHORIZED;
                    }
                    if header("content-type") != "application/json"
                        || header("content-encoding") != "gzip"
                    {
                        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
                    }
                    let mut json = Vec::new();
                    if flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut json)
                        .is_err()
                        || json.len() > MAX_BATCH_BYTES
                    {
                        return StatusCode::BAD_REQUEST;
                    }
                    let Ok(body) = serde_json::from_slice::<Value>(&json) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let Some(batch) = body["batch"].as_array() else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let ids: Vec<String> = batch.iter().map(message_id_of).collect();
                    if batch.len() > MAX_BATCH_MESSAGES
                        || ids.iter().any(|id| id == poison)
                        || body["sentAt"].as_str().is_none()
                    {
                        return StatusCode::BAD_REQUEST;
                    }
                    if let Ok(mut seen) = seen.lock() {
                        seen.extend(ids);
                    }
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_refused_message_is_found_by_bisection_and_the_rest_delivered() {
        let (endpoint, seen) = collector("m7").await;
        let client = TrackingClient::new(
            &endpoint,
            Secret::new("key"),
            HttpConfig::new("collector", 1000.0),
        )
        .unwrap();
        let messages: Vec<Value> = (0..20)
            .map(|i| message(&format!("m{i}"), json!({})))
            .collect();
        let report = client.send(&messages).await.unwrap();
        assert_eq!(report.delivered, 19);
        assert_eq!(report.rejected.len(), 1);
        assert_eq!(report.rejected[0].message_id, "m7");
        let seen = seen.lock().unwrap().clone();
        let expected: Vec<String> = (0..20)
            .filter(|i| *i != 7)
            .map(|i| format!("m{i}"))
            .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn check_probes_a_collector_with_an_empty_batch() {
        let (endpoint, seen) = collector("none").await;
        let http = || HttpConfig {
            max_retries: 0,
            ..HttpConfig::new("collector", 1000.0)
        };
        let good = TrackingClient::new(&endpoint, Secret::new("key"), http()).unwrap();
        assert_eq!(good.probe().await, Probe::Accepted);
        assert!(seen.lock().unwrap().is_empty(), "no message was sent");
        let host = good.host();
        assert!(host.starts_with("127.0.0.1:"), "{host}");
        assert_eq!(
            Probe::Accepted.line(&host),
            format!("tracking: {host} — ok (the collector accepted the write key)")
        );

        let key = "probe-key-that-must-not-be-printed";
        let bad = TrackingClient::new(&endpoint, Secret::new(key), http()).unwrap();
        let probe = bad.probe().await;
        assert!(probe.failed(), "{probe:?}");
        let line = probe.line(&bad.host());
        assert!(
            line.contains("FAILED: the collector refused the write key (HTTP 401"),
            "{line}"
        );
        assert!(line.contains("tracking.write_key"), "{line}");
        assert!(!line.contains(key), "{line}");

        // No Tracking API under that path: 404.
        let wrong =
            TrackingClient::new(&format!("{endpoint}/nope"), Secret::new("key"), http()).unwrap();
        let probe = wrong.probe().await;
        assert!(probe.failed(), "{probe:?}");
        assert!(probe.line("h").contains("HTTP 404"), "{probe:?}");
    }

    #[tokio::test]
    async fn segment_is_not_asked_and_the_line_says_where_to_look() {
        // Nothing listens there in tests: a request would fail, so none must be made.
        let segment = TrackingClient::new(
            "https://api.segment.io",
            Secret::new("key"),
            HttpConfig::new("collector", 1000.0),
        )
        .unwrap();
        let probe = segment.probe().await;
        assert_eq!(probe, Probe::Unverifiable);
        assert!(!probe.failed());
        let line = probe.line(&segment.host());
        assert!(
            line.starts_with("tracking: api.segment.io — Segment does not validate write keys"),
            "{line}"
        );
        assert!(
            line.contains("confirm delivery in Segment's Debugger (Connections > Sources >"),
            "{line}"
        );
        assert_eq!(
            Probe::Inconclusive("why".into()).line("h"),
            "tracking: h — reachable; why"
        );
    }

    #[tokio::test]
    async fn a_wrong_write_key_is_an_error() {
        let (endpoint, seen) = collector("none").await;
        let client = TrackingClient::new(
            &endpoint,
            Secret::new("bad"),
            HttpConfig::new("collector", 1000.0),
        )
        .unwrap();
        let error = client.send(&[message("m", json!({}))]).await.unwrap_err();
        assert!(format!("{error:#}").contains("401"), "{error:#}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
