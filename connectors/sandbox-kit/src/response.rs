//! Responses every simulator builds the same way: a body with headers, a body cut short
//! mid-transfer, a malformed body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt as _;

/// A response with `status`, `headers` and `body`.
pub fn build(status: u16, headers: HeaderMap, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers;
    response
}

/// A response that announces the full length and delivers half before the connection
/// drops, the way a reset mid-transfer looks to the client.
pub fn truncated(status: u16, mut headers: HeaderMap, body: Vec<u8>) -> Response {
    let full = body.len();
    let half = Bytes::from(body).slice(..full / 2);
    let stream = futures::stream::iter([Ok::<Bytes, std::io::Error>(half)]).chain(
        futures::stream::once(async {
            // Give hyper time to flush the half before the error aborts the connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("sandbox fault: truncated body"))
        }),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    *response.headers_mut() = headers;
    response
}

/// Cuts `body` in half and appends `tail` (what a proxy in front of the vendor sends):
/// a valid-looking start, a broken end, which the client must reject rather than land
/// half a page.
pub fn malform(body: &mut Vec<u8>, tail: &[u8]) {
    body.truncate(body.len() / 2);
    body.extend_from_slice(tail);
}

/// Sets `name: value` when `value` is a valid header value.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(header::HeaderName::from_static(name), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_keep_their_start() {
        let mut body = br#"{"data":[1,2,3]}"#.to_vec();
        malform(&mut body, b"<html>502</html>");
        assert_eq!(body, br#"{"data":<html>502</html>"#);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
    }

    #[tokio::test]
    async fn truncated_bodies_promise_everything_and_fail() {
        let response = truncated(200, HeaderMap::new(), vec![b'x'; 10]);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "10");
        let read = axum::body::to_bytes(response.into_body(), 100).await;
        assert!(read.is_err(), "{read:?}");
    }
}
