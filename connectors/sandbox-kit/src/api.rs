//! The request pipeline a simulator can take whole, so that it writes only its routes:
//! the control API, counting, authentication, the rate limit (429 with `Retry-After`),
//! injected errors and delays, cut and malformed bodies, and gzip when the client asks
//! for it. The three original simulators predate it and run their own handlers for their
//! vendors' peculiarities (two rate limits, OAuth token endpoints, Bulk jobs); a new
//! simulator (see `tributary connector new`) implements [`Api`] and serves
//! [`handle::<TheVendor>`](handle) as its router's fallback.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;

use crate::control::{SandboxError, Vendor};
use crate::form::parse_pairs;
use crate::{control, gzip, response};

/// Request bodies of a simulator are small; anything bigger is refused before parsing.
pub const MAX_BODY: usize = 1 << 20;

/// One API request, as [`Api::route`] sees it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The method.
    pub method: Method,
    /// The path, e.g. `/v1/items`.
    pub path: String,
    /// The query's pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Bytes,
}

impl ApiRequest {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: a status and a JSON body.
pub type Answer = (u16, Vec<u8>);

/// A simulator's API, served by [`handle`].
pub trait Api: Vendor {
    /// Checks the request's credentials; `Err` is the answer to give instead (the
    /// vendor's 401).
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Answer>;

    /// Answers an authenticated, admitted request.
    fn route(&self, request: &ApiRequest) -> Answer;

    /// Answers like [`Api::route`], with headers that belong to this one answer (a
    /// `Link` to the next page, say). The default adds none.
    fn route_with_headers(&self, request: &ApiRequest) -> (Answer, Vec<(String, String)>) {
        (self.route(request), Vec::new())
    }

    /// Adds the vendor's headers to every API answer (request ids, quota headers from
    /// `quota`: the limit, the requests remaining and the seconds to a free slot). The
    /// kit has already set `Content-Type: application/json` and `Date` from the clock.
    fn headers(&self, quota: Option<(u32, u32, u64)>, headers: &mut HeaderMap) {
        let _ = (quota, headers);
    }
}

/// The handler of every path of a simulator built on [`Api`]: `/_sandbox/...` goes to the
/// control API, everything else through authentication, the rate limit and the faults to
/// [`Api::route`].
pub async fn handle<A: Api>(State(api): State<Arc<A>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let e = SandboxError::bad(
                format!("Request bodies are limited to {MAX_BODY} bytes."),
                None,
            );
            return answer(
                &*api,
                e.status(),
                api.error_body(&e),
                None,
                None,
                &parts.headers,
            );
        }
    };
    let path = parts.uri.path().to_owned();
    if let Some(control) = path.strip_prefix("/_sandbox/") {
        let (status, body) = control::control(&*api, &parts.method, control, &body);
        return answer(&*api, status, body, None, None, &parts.headers);
    }
    // Answered no sooner than the simulator's latency after the request arrived (see
    // `crate::latency`); the work of answering counts towards it.
    let arrived = tokio::time::Instant::now();
    let latency = api.kit().draw_latency_for(&path);
    let response = serve(&*api, parts, body, path).await;
    tokio::time::sleep_until(arrived + latency).await;
    response
}

async fn serve<A: Api>(
    api: &A,
    parts: axum::http::request::Parts,
    body: Bytes,
    path: String,
) -> Response {
    let kit = api.kit();
    kit.count_request();
    if let Err((status, body)) = api.authenticate(&parts.headers) {
        return answer(api, status, body, None, None, &parts.headers);
    }
    let quota = match kit.admit_request(Instant::now()) {
        Ok(quota) => quota,
        Err(e) => return refuse(api, &e, None, &parts.headers),
    };
    if let Some(e) = kit.before_answer("account").await {
        return refuse(api, &e, quota, &parts.headers);
    }
    let request = ApiRequest {
        method: parts.method,
        query: parse_pairs(parts.uri.query().unwrap_or_default()),
        path,
        headers: parts.headers,
        body,
    };
    let ((status, mut body), extra) = api.route_with_headers(&request);
    if !(200..300).contains(&status) {
        // The vendor's own headers go with an error or a redirect too (its `Location`).
        let mut response = answer(api, status, body, quota, None, &request.headers);
        add_headers(&mut response, extra);
        return response;
    }
    let after = kit.after();
    if after.malformed {
        response::malform(&mut body, b"\n<html>502 Bad Gateway</html>");
    }
    if after.truncate {
        let mut headers = HeaderMap::new();
        common_headers(api, quota, &mut headers);
        return response::truncated(status, headers, body);
    }
    let mut response = answer(api, status, body, quota, None, &request.headers);
    add_headers(&mut response, extra);
    response
}

/// Adds a vendor's extra headers to an answer (names or values HTTP cannot carry are left
/// out).
fn add_headers(response: &mut Response, extra: Vec<(String, String)>) {
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// The answer to a refusal the kit decided (429 with `Retry-After`, an injected 5xx).
fn refuse<A: Api>(
    api: &A,
    e: &SandboxError,
    quota: Option<(u32, u32, u64)>,
    request: &HeaderMap,
) -> Response {
    answer(
        api,
        e.status(),
        api.error_body(e),
        quota,
        e.retry_after(),
        request,
    )
}

fn common_headers<A: Api>(api: &A, quota: Option<(u32, u32, u64)>, headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response::set_header(headers, "date", &api.kit().clock.http_date());
    api.headers(quota, headers);
}

fn answer<A: Api>(
    api: &A,
    status: u16,
    body: Vec<u8>,
    quota: Option<(u32, u32, u64)>,
    retry_after: Option<u64>,
    request: &HeaderMap,
) -> Response {
    let mut headers = HeaderMap::new();
    common_headers(api, quota, &mut headers);
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    let body = match gzip::accepts_gzip(request)
        .then(|| gzip::compress(&body))
        .flatten()
    {
        Some(compressed) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            compressed
        }
        None => body,
    };
    response::build(status, headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Faults, NoExtra};
    use crate::kit::{Kit, KitConfig};
    use crate::limiter::RateLimit;
    use crate::server::Server;
    use serde_json::{Value, json};

    struct Echo {
        kit: Kit<NoExtra>,
    }

    impl Vendor for Echo {
        type Faults = NoExtra;
        fn kit(&self) -> &Kit<NoExtra> {
            &self.kit
        }
        fn error_body(&self, error: &SandboxError) -> Vec<u8> {
            format!("{{\"error\": {}}}", error.status()).into_bytes()
        }
        fn stats(&self) -> Value {
            crate::to_json(&self.kit.counters())
        }
    }

    impl Api for Echo {
        fn authenticate(&self, headers: &HeaderMap) -> Result<(), Answer> {
            match headers.get(header::AUTHORIZATION) {
                Some(v) if v == "Bearer good" => Ok(()),
                _ => Err((401, b"{\"error\": \"who are you\"}".to_vec())),
            }
        }
        fn route(&self, request: &ApiRequest) -> Answer {
            let body = json!({"path": request.path, "q": request.param("q")});
            (200, serde_json::to_vec(&body).unwrap())
        }
        fn headers(&self, quota: Option<(u32, u32, u64)>, headers: &mut HeaderMap) {
            if let Some((_, remaining, _)) = quota {
                headers.insert("x-remaining", HeaderValue::from(remaining));
            }
        }
    }

    #[tokio::test]
    async fn authenticates_limits_injects_and_routes() {
        let echo = Arc::new(Echo {
            kit: Kit::new(KitConfig {
                rate_limit: Some(RateLimit {
                    requests: 2,
                    window: std::time::Duration::from_secs(60),
                }),
                ..KitConfig::default()
            }),
        });
        let router = axum::Router::new()
            .fallback(handle::<Echo>)
            .with_state(Arc::clone(&echo));
        let server = Server::start(0, router, "echo").await.unwrap();
        let client = reqwest::Client::new();
        let get = |path: &str, token: &str| {
            client
                .get(format!("{}{path}", server.url()))
                .bearer_auth(token)
                .send()
        };

        let refused = get("/v1/x", "bad").await.unwrap();
        assert_eq!(refused.status(), 401);
        let ok = get("/v1/items?q=a%20b", "good").await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-remaining"], "1");
        assert!(ok.headers().contains_key("date"));
        let body: Value = ok.json().await.unwrap();
        assert_eq!(body, json!({"path": "/v1/items", "q": "a b"}));

        echo.kit.set_faults(Faults {
            error_next: 1,
            ..Faults::default()
        });
        let injected = get("/v1/items", "good").await.unwrap();
        assert!(injected.status().is_server_error());
        // The limit (2 a minute) is spent: 429 with Retry-After, in the vendor's shape.
        let throttled = get("/v1/items", "good").await.unwrap();
        assert_eq!(throttled.status(), 429);
        assert!(throttled.headers().contains_key("retry-after"));
        assert_eq!(throttled.text().await.unwrap(), "{\"error\": 429}");
        // The control API needs no credentials and is not counted.
        let stats: Value = client
            .get(format!("{}/_sandbox/stats", server.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["requests"], 4);
        assert_eq!(stats["rate_limited"], 1);
        // The simulator's latency applies to API requests (a 429 too), not to control ones.
        echo.kit.set_latency(crate::Latency {
            latency_ms: 150,
            jitter_ms: 0,
        });
        let started = std::time::Instant::now();
        assert_eq!(get("/v1/items", "good").await.unwrap().status(), 429);
        assert!(started.elapsed() >= std::time::Duration::from_millis(140));
        let started = std::time::Instant::now();
        client
            .get(format!("{}/_sandbox/stats", server.url()))
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_millis(140));
        server.shutdown().await;
    }
}
