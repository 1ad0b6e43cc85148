//! The HTTP side of the collector: Segment's Tracking API, the Pixel API and the settings
//! document analytics.js loads.
//!
//! - `POST /v1/identify|track|page|screen|group|alias` (one message), `/v1/batch` and
//!   `/v1/import` (`{"batch": [...]}`), and analytics.js's short paths `/v1/i|t|p|s|g|a`
//!   and `/v1/b`
//!   (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>).
//!   The write key is the Basic-auth user name or `writeKey` in the body; a body is JSON
//!   whatever its `Content-Type` (analytics.js sends `text/plain`, which spares the
//!   browser a CORS preflight when no other header needs one); bodies may be
//!   gzip-compressed (`Content-Encoding: gzip`), and are decompressed no further than the
//!   size limit, so a gzip bomb costs 500 KB, not the machine.
//! - `GET /v1/pixel/<call>?data=<base64 JSON>`: the Pixel API, answered with a 1×1 GIF
//!   (<https://segment.com/docs/connections/sources/catalog/libraries/server/pixel-tracking-api/>).
//! - `GET /v1/projects/<writeKey>/settings`: the settings analytics.js loads from its CDN,
//!   with the "Segment.io" integration's `apiHost` pointing back at this collector.
//!
//! Answers: 200 `{"success": true}` once the messages are fsynced in the spool; 400 with
//! the reason for what Segment refuses; 401 for a missing or unknown write key (Segment
//! accepts any key and drops the messages; we say so); 408 for a body slower than
//! `serve.body_timeout_seconds`; 413 for a request body over 1 MB; 503 with `Retry-After`
//! while the committer is `serve.max_pending` messages behind (after a 10 ms wait for it
//! to make room) or the spool writer's queue is full; 500 if the spool cannot be written.

// Handlers return a finished `Response` as their error: boxing it would only move the
// allocation.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures::StreamExt;

use super::message::{self, Accepted, Call, Invalid, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES};
use super::spool::{AppendError, Appender, Progress};

/// The largest request body read, compressed or not; a larger one gets 413 unread.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A transparent 1×1 GIF, the Pixel API's answer.
const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// What the handlers share.
pub struct Shared {
    /// Write key → source name.
    pub keys: HashMap<String, Arc<str>>,
    /// The spool.
    pub appender: Appender,
    /// The spool's positions (for backpressure).
    pub progress: Arc<Progress>,
    /// `serve.max_pending`.
    pub max_pending: u64,
    /// `serve.body_timeout_seconds`.
    pub body_timeout: Duration,
}

/// The collector's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/{call}", post(collect).options(preflight))
        .route("/v1/pixel/{call}", get(pixel).options(preflight))
        .route(
            "/v1/projects/{key}/settings",
            get(settings).options(preflight),
        )
        .with_state(shared)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    cors(r.headers_mut());
    r
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    answer(
        status,
        serde_json::json!({"success": false, "message": message.into()}),
    )
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    // analytics.js sends `Authorization` (Basic, its write key) and, on a retry,
    // `X-Retry-Count` (analytics-next src/plugins/segmentio/fetch-dispatcher.ts).
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, Content-Encoding, X-Retry-Count"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// The endpoint's kind: one call, or a batch.
fn endpoint(path: &str) -> Option<Option<Call>> {
    Some(match path {
        "batch" | "import" | "b" => None,
        "i" => Some(Call::Identify),
        "t" => Some(Call::Track),
        "p" => Some(Call::Page),
        "s" => Some(Call::Screen),
        "g" => Some(Call::Group),
        "a" => Some(Call::Alias),
        other => Some(Call::parse(other)?),
    })
}

/// The user name of a Basic `Authorization` header.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_owned())
}

/// Reads the whole body within the timeout and size limit, then decompresses it if gzip,
/// up to `limit` bytes (one more byte says it was larger).
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Response> {
    let mut stream = body.into_data_stream();
    let read = async {
        let mut raw = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })?;
            if raw.len() + chunk.len() > MAX_REQUEST_BYTES {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is over {MAX_REQUEST_BYTES} bytes; a batch may hold at most 500 KB"
                    ),
                ));
            }
            raw.extend_from_slice(&chunk);
        }
        Ok(raw)
    };
    let raw = match tokio::time::timeout(shared.body_timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} seconds",
                    shared.body_timeout.as_secs()
                ),
            ));
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid gzip: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body is over {limit} bytes after decompression; a message may hold at most 32 KB and a batch 500 KB"
                    ),
                ));
            }
            Ok(out)
        }
        Some(other) => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported; send gzip or no encoding"),
        )),
    }
}

/// The source of `key`, or the 401.
fn source_of(shared: &Shared, key: Option<&str>) -> Result<Arc<str>, Response> {
    match key {
        None => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no write key: send it as the Basic-auth user name or as `writeKey` in the body",
        )),
        Some(k) => shared.keys.get(k).cloned().ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "the write key is not one of this collector's sources' `write_keys`",
            )
        }),
    }
}

/// A 503; `reason` labels it in the metrics (`behind` or `spool_busy`).
fn busy(reason: &'static str, message: &str) -> Response {
    crate::metrics::collector_busy(reason);
    let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Spools what a request carried and answers.
async fn accept(shared: &Shared, source: Arc<str>, accepted: Accepted) -> Response {
    let records = accepted
        .messages
        .into_iter()
        .map(|m| (source.clone(), m))
        .collect::<Vec<_>>();
    if records.is_empty() {
        return answer(StatusCode::OK, serde_json::json!({"success": true}));
    }
    let n = records.len() as u64;
    match shared.appender.append(records).await {
        Ok(_) => {
            crate::metrics::collector_accepted(&source, n);
            answer(StatusCode::OK, serde_json::json!({"success": true}))
        }
        Err(AppendError::Busy) => {
            busy("spool_busy", "the collector's spool is busy; retry shortly")
        }
        Err(AppendError::Failed(e)) => {
            tracing::error!(error = %e, "A request's messages could not be spooled.");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the collector could not store the messages; retry",
            )
        }
    }
}

fn overloaded(shared: &Shared) -> bool {
    shared.progress.pending() >= shared.max_pending
}

/// How long a request waits for the committer to make room before it is answered 503.
const ROOM_WAIT: Duration = Duration::from_millis(10);

/// Whether the collector is still behind after giving the committer [`ROOM_WAIT`] to land
/// a round. A client that resends a refused request at once (a load tool; Segment's
/// libraries wait `Retry-After`) then costs a 503 every 10 ms per connection rather than
/// as fast as the socket allows, which took a third of the collector's CPU from landing.
async fn still_behind(shared: &Shared) -> bool {
    if !overloaded(shared) {
        return false;
    }
    tokio::time::sleep(ROOM_WAIT).await;
    overloaded(shared)
}

/// Counts an answer in `tributary_collector_requests_total`.
fn counted(source: Option<Arc<str>>, r: Response) -> Response {
    crate::metrics::collector_request(source.as_deref().unwrap_or(""), r.status().as_u16());
    r
}

async fn collect(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut source = None;
    let r = collect_into(&shared, &call, &headers, body, &mut source).await;
    counted(source, r)
}

/// [`collect`], setting `source` once the write key names one.
async fn collect_into(
    shared: &Shared,
    call: &str,
    headers: &HeaderMap,
    body: Body,
    known: &mut Option<Arc<str>>,
) -> Response {
    let Some(kind) = endpoint(call) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint /v1/{call}; use identify, track, page, screen, group, alias, batch or import"
            ),
        );
    };
    let header_key = basic_user(headers);
    *known = header_key
        .as_deref()
        .and_then(|k| shared.keys.get(k).cloned());
    if still_behind(shared).await {
        return busy(
            "behind",
            "the collector is behind landing messages; retry shortly",
        );
    }
    // A key in the header is checked before the body is read.
    let header_source = match header_key.as_deref() {
        Some(k) => match source_of(shared, Some(k)) {
            Ok(s) => Some(s),
            Err(r) => return r,
        },
        None => None,
    };
    let limit = match kind {
        Some(_) => MAX_MESSAGE_BYTES,
        None => MAX_BATCH_BYTES,
    };
    let body = match read_body(shared, headers, body, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = chrono::Utc::now();
    let parsed = match kind {
        Some(call) => message::read_single(&body, call, now),
        None => message::read_batch(&body, now),
    };
    let accepted = match parsed {
        Ok(a) => a,
        Err(Invalid(reason)) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let source = match header_source {
        Some(s) => s,
        None => match source_of(shared, accepted.write_key.as_deref()) {
            Ok(s) => s,
            Err(r) => return r,
        },
    };
    *known = Some(source.clone());
    accept(shared, source, accepted).await
}

async fn pixel(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut source = None;
    let r = pixel_into(&shared, &call, &query, &mut source).await;
    counted(source, r)
}

/// [`pixel`], setting `source` once the write key names one.
async fn pixel_into(
    shared: &Shared,
    call: &str,
    query: &HashMap<String, String>,
    known: &mut Option<Arc<str>>,
) -> Response {
    let Some(call) = Call::parse(call) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no pixel endpoint /v1/pixel/{call}; use identify, track, page, screen, group or alias"
            ),
        );
    };
    if still_behind(shared).await {
        return busy(
            "behind",
            "the collector is behind landing messages; retry shortly",
        );
    }
    let Some(data) = query.get("data") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the pixel needs `data`, the message as base64-encoded JSON",
        );
    };
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    // A `+` of standard base64 sent unescaped in a query string arrives as a space.
    let data = data.trim().replace(' ', "+");
    let Some(json) = engines.iter().find_map(|e| e.decode(&data).ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "`data` is not base64");
    };
    let accepted = match message::read_single(&json, call, chrono::Utc::now()) {
        Ok(a) => a,
        Err(Invalid(reason)) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let source = match source_of(shared, accepted.write_key.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    *known = Some(source.clone());
    let r = accept(shared, source, accepted).await;
    if r.status() != StatusCode::OK {
        return r;
    }
    let mut r = (StatusCode::OK, PIXEL_GIF).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    cors(h);
    r
}

/// The settings document of analytics.js (the shape of its CDN's
/// `/v1/projects/<writeKey>/settings`): only the "Segment.io" integration, sending to
/// this collector.
async fn settings(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !shared.keys.contains_key(&key) {
        return refuse(StatusCode::NOT_FOUND, "no source has this write key");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8088");
    answer(
        StatusCode::OK,
        serde_json::json!({
            "integrations": {
                "Segment.io": {
                    "apiKey": key,
                    "apiHost": format!("{host}/v1"),
                    "protocol": "http",
                    "unbundledIntegrations": [],
                    "addBundledMetadata": true,
                    "maybeBundledConfigIds": {}
                }
            },
            "plan": {
                "track": {"__default": {"enabled": true, "integrations": {}}},
                "identify": {"__default": {"enabled": true}},
                "group": {"__default": {"enabled": true}}
            },
            "edgeFunction": {},
            "analyticsNextEnabled": true,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
            "legacyVideoPluginsEnabled": false,
            "remotePlugins": []
        }),
    )
}
