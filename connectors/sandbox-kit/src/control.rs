//! The one control API of every simulator, for tests and for users driving the binary:
//!
//! - `GET /_sandbox/stats`, `POST /_sandbox/stats/reset`: what the simulator saw.
//! - `GET|POST /_sandbox/faults`: the [`Faults`](crate::Faults) JSON (the common fields and
//!   the vendor's own; missing fields default to off).
//! - `POST /_sandbox/clock` `{"advance_seconds": N}`: moves the simulated clock forward.
//! - `POST /_sandbox/rate_limit`: `{"requests_per_second": x}` or `{"requests": n,
//!   "window_seconds": s}`; `{}` or `{"requests_per_second": null}` turns limiting off. A
//!   vendor with more than one limit reads its own fields ([`Vendor::rate_limit`]).
//! - `GET|POST /_sandbox/latency`: `{"latency_ms": L, "jitter_ms": J}`, how long every
//!   vendor request takes to answer, ±J (20% of L when `jitter_ms` is absent); `{}` turns
//!   it off. Requests wait their latencies in parallel.
//!
//! Any other `/_sandbox/...` path is the vendor's ([`Vendor::control`]).

use std::time::Duration;

use axum::http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::kit::Kit;
use crate::latency::Latency;
use crate::limiter::RateLimit;
use crate::to_json;

/// Something the kit answers instead of the vendor's API; the vendor gives it its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxError {
    /// An injected server error (500, 503, …).
    Injected {
        /// The status to answer.
        status: u16,
    },
    /// 429, by the rate limit or injected.
    Throttled {
        /// Seconds the client should wait (`Retry-After`).
        retry_after: u64,
        /// Injected (else a rate limit refused it).
        injected: bool,
        /// The limit that refused it: `"account"` for the kit's own, or the name of a
        /// vendor's own limit (e.g. Zendesk's `"export"`); an injected 429 carries the
        /// limit the request would count against.
        limit: &'static str,
    },
    /// A control request the kit cannot read: 400.
    BadControl {
        /// What is wrong, for the person driving the simulator.
        message: String,
        /// The offending field, if one.
        param: Option<&'static str>,
    },
    /// No such control endpoint: 404.
    UnknownControl {
        /// The request's method.
        method: String,
        /// The full path, `/_sandbox/...`.
        path: String,
    },
}

impl SandboxError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            SandboxError::Injected { status } => *status,
            SandboxError::Throttled { .. } => 429,
            SandboxError::BadControl { .. } => 400,
            SandboxError::UnknownControl { .. } => 404,
        }
    }

    /// The seconds of a `Retry-After` header, for a 429.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            SandboxError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A 400 about `param`.
    pub fn bad(message: impl Into<String>, param: Option<&'static str>) -> SandboxError {
        SandboxError::BadControl {
            message: message.into(),
            param,
        }
    }
}

/// What a simulator tells the kit: its faults, its error shape, its statistics and its own
/// control endpoints.
pub trait Vendor: Send + Sync + 'static {
    /// The vendor's own faults, flattened into the faults JSON next to the common ones.
    type Faults: Default + Clone + Serialize + DeserializeOwned + Send + 'static;

    /// The simulator's kit.
    fn kit(&self) -> &Kit<Self::Faults>;

    /// The body of `error` in the vendor's own error shape (its status is
    /// [`SandboxError::status`]).
    fn error_body(&self, error: &SandboxError) -> Vec<u8>;

    /// `GET /_sandbox/stats`: the kit's counters and the vendor's own, in the vendor's
    /// statistics shape.
    fn stats(&self) -> Value;

    /// Zeroes the vendor's own statistics (the kit's are zeroed already).
    fn reset_stats(&self) {}

    /// The clock moved forward; `now` is the new simulator time (Unix seconds).
    fn clock_advanced(&self, _now: i64) {}

    /// Reads `POST /_sandbox/rate_limit` for a vendor with more than the kit's one limit;
    /// `None` leaves it to the kit.
    fn rate_limit(&self, _request: &Value) -> Option<Result<Value, SandboxError>> {
        None
    }

    /// The vendor's own `/_sandbox/<path>` endpoints; `None` when `path` is not one.
    fn control(
        &self,
        _method: &Method,
        _path: &str,
        _body: &[u8],
    ) -> Option<Result<Value, SandboxError>> {
        None
    }

    /// A control answer's body.
    fn render(&self, value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }
}

/// A control request's JSON body; an empty body is `{}`.
pub fn parse_body(body: &[u8]) -> Result<Value, SandboxError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| SandboxError::bad(format!("Invalid JSON body: {e}"), None))
}

/// Answers `/_sandbox/<path>` (`path` without the prefix): the status and the body.
pub fn control<V: Vendor>(vendor: &V, method: &Method, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    match answer(vendor, method, path, body) {
        Ok(value) => (200, vendor.render(&value)),
        Err(e) => (e.status(), vendor.error_body(&e)),
    }
}

fn answer<V: Vendor>(
    vendor: &V,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Value, SandboxError> {
    let kit = vendor.kit();
    match (method, path) {
        (&Method::GET, "stats") => Ok(vendor.stats()),
        (&Method::POST, "stats/reset") => {
            kit.reset_stats();
            vendor.reset_stats();
            Ok(vendor.stats())
        }
        (&Method::GET, "faults") => Ok(to_json(&kit.faults())),
        (&Method::POST, "faults") => {
            let faults = serde_json::from_value(parse_body(body)?)
                .map_err(|e| SandboxError::bad(format!("Invalid faults: {e}"), None))?;
            kit.set_faults(faults);
            Ok(to_json(&kit.faults()))
        }
        (&Method::POST, "clock") => {
            let seconds = parse_body(body)?
                .get("advance_seconds")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    SandboxError::bad(
                        "advance_seconds must be a non-negative integer.",
                        Some("advance_seconds"),
                    )
                })?;
            kit.clock.advance(Duration::from_secs(seconds));
            let now = kit.now();
            vendor.clock_advanced(now);
            Ok(json!({"now": now}))
        }
        (&Method::POST, "rate_limit") => {
            let request = parse_body(body)?;
            if let Some(answer) = vendor.rate_limit(&request) {
                return answer;
            }
            let limit = rate_limit_of(&request)?;
            kit.set_rate_limit(limit);
            Ok(rate_limit_json(&request, limit))
        }
        (&Method::GET, "latency") => Ok(to_json(&kit.latency())),
        (&Method::POST, "latency") => {
            kit.set_latency(latency_of(&parse_body(body)?)?);
            Ok(to_json(&kit.latency()))
        }
        _ => vendor.control(method, path, body).unwrap_or_else(|| {
            Err(SandboxError::UnknownControl {
                method: method.to_string(),
                path: format!("/_sandbox/{path}"),
            })
        }),
    }
}

/// The kit's rate limit fields: `requests_per_second`, or `requests` (+ `window_seconds`,
/// 1 by default); none of them turns limiting off.
pub fn rate_limit_of(request: &Value) -> Result<Option<RateLimit>, SandboxError> {
    if let Some(rps) = request.get("requests_per_second").filter(|v| !v.is_null()) {
        let rps = rps.as_f64().ok_or_else(|| {
            SandboxError::bad(
                "requests_per_second must be a number or null.",
                Some("requests_per_second"),
            )
        })?;
        return Ok(Some(RateLimit::per_second(rps)));
    }
    let Some(requests) = request.get("requests").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let requests = requests.as_u64().ok_or_else(|| {
        SandboxError::bad("requests must be a non-negative integer.", Some("requests"))
    })?;
    Ok(Some(RateLimit {
        requests: u32::try_from(requests).unwrap_or(u32::MAX),
        window: window_of(request, 1.0),
    }))
}

/// The latency a `POST /_sandbox/latency` asks for: `latency_ms` (absent or null: none) and
/// `jitter_ms` (absent or null: 20% of `latency_ms`).
pub fn latency_of(request: &Value) -> Result<Latency, SandboxError> {
    let field = |name: &'static str| match request.get(name).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            SandboxError::bad(
                format!("{name} must be a non-negative integer (milliseconds) or null."),
                Some(name),
            )
        }),
    };
    let latency_ms = field("latency_ms")?.unwrap_or(0);
    Ok(match field("jitter_ms")? {
        Some(jitter_ms) => Latency {
            latency_ms,
            jitter_ms,
        },
        None => Latency::with_default_jitter(latency_ms),
    })
}

/// `window_seconds` of a rate limit request (positive and finite), else `default` seconds.
pub fn window_of(request: &Value, default: f64) -> Duration {
    let seconds = request
        .get("window_seconds")
        .and_then(Value::as_f64)
        .filter(|w| *w > 0.0 && w.is_finite())
        .unwrap_or(default);
    Duration::from_secs_f64(seconds)
}

fn rate_limit_json(request: &Value, limit: Option<RateLimit>) -> Value {
    match request.get("requests_per_second").and_then(Value::as_f64) {
        Some(rps) => json!({"requests_per_second": rps}),
        None => json!({
            "requests_per_second": Value::Null,
            "rate_limit": limit.map(|l| json!({
                "requests": l.requests,
                "window_seconds": l.window.as_secs_f64(),
            })),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::kit::KitConfig;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Extra {
        bulk_refusal: Option<String>,
    }

    struct Fake {
        kit: Kit<Extra>,
    }

    impl Vendor for Fake {
        type Faults = Extra;
        fn kit(&self) -> &Kit<Extra> {
            &self.kit
        }
        fn error_body(&self, error: &SandboxError) -> Vec<u8> {
            format!("{{\"fake_error\": {}}}", error.status()).into_bytes()
        }
        fn stats(&self) -> Value {
            to_json(&self.kit.counters())
        }
        fn control(
            &self,
            method: &Method,
            path: &str,
            _body: &[u8],
        ) -> Option<Result<Value, SandboxError>> {
            (method == Method::GET && path == "plan").then(|| Ok(json!({"plan": "team"})))
        }
    }

    fn call(fake: &Fake, method: Method, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = control(fake, &method, path, body.as_bytes());
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn one_api_for_common_and_vendor_endpoints() {
        let fake = Fake {
            kit: Kit::new(KitConfig::default()),
        };
        let (status, faults) = call(
            &fake,
            Method::POST,
            "faults",
            r#"{"throttle_next": 2, "bulk_refusal": "no_permission"}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(faults["throttle_next"], 2);
        assert_eq!(
            fake.kit.faults(),
            Faults {
                throttle_next: 2,
                vendor: Extra {
                    bulk_refusal: Some("no_permission".into())
                },
                ..Faults::default()
            }
        );
        let before = fake.kit.now();
        let (_, now) = call(&fake, Method::POST, "clock", r#"{"advance_seconds": 3600}"#);
        assert!(now["now"].as_i64().unwrap() >= before + 3600);
        let (status, body) = call(&fake, Method::POST, "clock", r#"{"advance_seconds": -1}"#);
        assert_eq!((status, body), (400, json!({"fake_error": 400})));

        call(
            &fake,
            Method::POST,
            "rate_limit",
            r#"{"requests_per_second": 3}"#,
        );
        assert_eq!(fake.kit.rate_limit(), Some(RateLimit::per_second(3.0)));
        call(
            &fake,
            Method::POST,
            "rate_limit",
            r#"{"requests": 10, "window_seconds": 60}"#,
        );
        assert_eq!(
            fake.kit.rate_limit(),
            Some(RateLimit {
                requests: 10,
                window: Duration::from_secs(60)
            })
        );
        call(&fake, Method::POST, "rate_limit", "");
        assert_eq!(fake.kit.rate_limit(), None);

        fake.kit.count_request();
        assert_eq!(call(&fake, Method::GET, "stats", "").1["requests"], 1);
        assert_eq!(
            call(&fake, Method::POST, "stats/reset", "").1["requests"],
            0
        );
        assert_eq!(call(&fake, Method::GET, "plan", "").1["plan"], "team");
        assert_eq!(call(&fake, Method::GET, "nope", "").0, 404);
    }
}
