//! Reusable pagination pieces: the fetch-ahead page task and a cheap scan of a list
//! envelope.
//!
//! Pagination is serial (the next request needs something from this page), so the fetcher
//! must learn that something without converting the page: [`scan_envelope`] walks the
//! body's bytes once (no allocation per value) to count the records and find the first
//! and last record ids plus the envelope's scalars (`has_more`, `meta.after_cursor`,
//! `end_of_stream`, …), and checks that the body is complete. The fetcher then sends the
//! next request while the runtime converts this page ([`spawn_pages`]).
//!
//! These are the pieces the declarative connector will be assembled from, so they know
//! nothing about any one vendor.

use std::future::Future;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::page::{Page, PageStream};

/// The sending side of a fetch-ahead page stream.
pub struct PageSender {
    tx: mpsc::Sender<Result<Page>>,
}

impl PageSender {
    /// Hands a page to the consumer, waiting while it is `capacity` pages behind. Returns
    /// `false` when the consumer has gone (the read was cancelled): stop fetching.
    pub async fn send(&self, page: Page) -> bool {
        self.tx.send(Ok(page)).await.is_ok()
    }
}

/// Runs `produce` on a task of its own, so fetching runs ahead of conversion by at most
/// `capacity` pages (bounded memory). An error `produce` returns ends the stream with
/// that error, after the pages sent before it.
pub fn spawn_pages<F, Fut>(capacity: usize, produce: F) -> PageStream
where
    F: FnOnce(PageSender) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let fut = produce(PageSender { tx: tx.clone() });
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream_from(rx).boxed()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Page>>,
) -> impl futures::Stream<Item = Result<Page>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What [`scan_envelope`] found in a list response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Records in the records array.
    pub count: usize,
    /// The id of the first record, if it has one.
    pub first_id: Option<String>,
    /// The id of the last record, if it has one.
    pub last_id: Option<String>,
    /// Scalars of the envelope at depth one and two, as raw JSON text, keyed `name` or
    /// `parent.name` (e.g. `has_more`, `meta.has_more`, `links.next`).
    pub fields: Vec<(String, String)>,
}

impl Envelope {
    /// The raw JSON text of envelope scalar `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Envelope scalar `key` as a boolean (`true` only for JSON `true`).
    pub fn flag(&self, key: &str) -> bool {
        self.field(key) == Some("true")
    }

    /// Envelope scalar `key` as a string (`None` for null or absent).
    pub fn string(&self, key: &str) -> Option<String> {
        let raw = self.field(key)?;
        serde_json::from_str::<Option<String>>(raw).ok().flatten()
    }
}

#[derive(Clone, Copy)]
struct Frame {
    is_object: bool,
    /// In an object: the current key's byte range in the body.
    key: (usize, usize),
    expecting_key: bool,
}

/// Scans a JSON list envelope whose records sit in the top-level array `records_key`
/// (e.g. `data` for Stripe, `tickets` for Zendesk), reading each record's `id_field`.
/// Fails if the body is not one complete JSON object (a truncated body, say).
pub fn scan_envelope(body: &[u8], records_key: &str, id_field: &str) -> Result<Envelope, String> {
    let mut env = Envelope::default();
    let mut stack: Vec<Frame> = Vec::with_capacity(16);
    let mut records_array_depth: Option<usize> = None;
    let mut current_id: Option<(usize, usize)> = None;
    let mut done = false;
    let mut i = 0;
    let n = body.len();
    while i < n {
        let b = body[i];
        if b.is_ascii_whitespace() || b == b',' || b == b':' {
            if b == b','
                && let Some(top) = stack.last_mut()
                && top.is_object
            {
                top.expecting_key = true;
            }
            i += 1;
            continue;
        }
        if done {
            return Err(format!("trailing characters at byte {i}"));
        }
        match b {
            b'{' | b'[' => {
                let is_object = b == b'{';
                let depth = stack.len();
                if depth == 0 && !is_object {
                    return Err("the body is not a JSON object".into());
                }
                if is_object && records_array_depth == Some(depth.wrapping_sub(1)) {
                    env.count += 1;
                    current_id = None;
                }
                if !is_object && depth == 1 && key_is(body, &stack[0], records_key) {
                    records_array_depth = Some(1);
                }
                stack.push(Frame {
                    is_object,
                    key: (0, 0),
                    expecting_key: is_object,
                });
                i += 1;
            }
            b'}' | b']' => {
                let frame = stack
                    .pop()
                    .ok_or_else(|| format!("unbalanced `{}` at byte {i}", b as char))?;
                if frame.is_object != (b == b'}') {
                    return Err(format!("mismatched `{}` at byte {i}", b as char));
                }
                let depth = stack.len();
                if frame.is_object && records_array_depth.is_some_and(|d| d + 1 == depth) {
                    let id = current_id
                        .take()
                        .map(|(s, e)| String::from_utf8_lossy(&body[s..e]).into_owned());
                    if env.count == 1 {
                        env.first_id = id.clone();
                    }
                    env.last_id = id;
                }
                if !frame.is_object && records_array_depth == Some(depth) {
                    records_array_depth = None;
                }
                if depth == 0 {
                    done = true;
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let end = string_end(body, start).ok_or("unterminated string (truncated body?)")?;
                i = end + 1;
                let depth = stack.len();
                let Some(top) = stack.last_mut() else {
                    return Err("the body is not a JSON object".into());
                };
                if top.is_object && top.expecting_key {
                    top.key = (start, end);
                    top.expecting_key = false;
                    continue;
                }
                let top = *top;
                if top.is_object
                    && records_array_depth.is_some_and(|d| d + 2 == depth)
                    && &body[top.key.0..top.key.1] == id_field.as_bytes()
                {
                    current_id = Some((start, end));
                }
                record_scalar(
                    &mut env,
                    body,
                    &stack,
                    records_array_depth,
                    (start - 1, end + 1),
                );
            }
            _ => {
                let start = i;
                while i < n && !matches!(body[i], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                {
                    i += 1;
                }
                if stack.is_empty() {
                    return Err("the body is not a JSON object".into());
                }
                record_scalar(&mut env, body, &stack, records_array_depth, (start, i));
            }
        }
    }
    if !done {
        return Err("the body ends before the JSON does (truncated?)".into());
    }
    Ok(env)
}

fn key_is(body: &[u8], frame: &Frame, key: &str) -> bool {
    frame.is_object && &body[frame.key.0..frame.key.1] == key.as_bytes()
}

fn record_scalar(
    env: &mut Envelope,
    body: &[u8],
    stack: &[Frame],
    records_array_depth: Option<usize>,
    (s, e): (usize, usize),
) {
    if records_array_depth.is_some() {
        return;
    }
    let text = || String::from_utf8_lossy(&body[s..e]).into_owned();
    let name = |f: &Frame| String::from_utf8_lossy(&body[f.key.0..f.key.1]).into_owned();
    match stack {
        [top] if top.is_object => env.fields.push((name(top), text())),
        [parent, top] if parent.is_object && top.is_object => env
            .fields
            .push((format!("{}.{}", name(parent), name(top)), text())),
        _ => {}
    }
}

/// The index of the quote closing the string that starts at `start`.
fn string_end(body: &[u8], mut start: usize) -> Option<usize> {
    loop {
        let rel = memchr::memchr2(b'"', b'\\', &body[start..])?;
        let at = start + rel;
        if body[at] == b'"' {
            return Some(at);
        }
        start = at + 2;
        if start > body.len() {
            return None;
        }
    }
}

/// Scans `body` like [`scan_envelope`], mapping a failure to a decode error about `what`.
pub fn scan_or_decode_error(
    body: &[u8],
    records_key: &str,
    id_field: &str,
    what: &str,
) -> Result<Envelope> {
    scan_envelope(body, records_key, id_field).map_err(|e| Error::decode(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_stripe_list() {
        let body = br#"{
  "object": "list",
  "data": [
    {"id": "ch_3", "source": {"id": "card_1", "x": [1, {"id": "no"}]}, "note": "a \"quoted\" } ]"},
    {"id": "ch_2"},
    {"object": "charge", "id": "ch_1"}
  ],
  "has_more": true,
  "url": "/v1/charges",
  "meta": {"after_cursor": "abc", "n": null}
}"#;
        let env = scan_envelope(body, "data", "id").unwrap();
        assert_eq!(env.count, 3);
        assert_eq!(env.first_id.as_deref(), Some("ch_3"));
        assert_eq!(env.last_id.as_deref(), Some("ch_1"));
        assert!(env.flag("has_more"));
        assert_eq!(env.string("url").as_deref(), Some("/v1/charges"));
        assert_eq!(env.string("meta.after_cursor").as_deref(), Some("abc"));
        assert_eq!(env.string("meta.n"), None);
    }

    #[test]
    fn empty_lists_and_truncation() {
        let env = scan_envelope(br#"{"data":[],"has_more":false}"#, "data", "id").unwrap();
        assert_eq!(
            (env.count, env.last_id.as_deref(), env.flag("has_more")),
            (0, None, false)
        );
        let full = br#"{"data":[{"id":"a"},{"id":"b"}],"has_more":false}"#;
        for cut in 1..full.len() {
            assert!(
                scan_envelope(&full[..cut], "data", "id").is_err(),
                "cut at {cut}"
            );
        }
        assert!(scan_envelope(b"[1,2]", "data", "id").is_err());
    }

    #[tokio::test]
    async fn spawn_pages_delivers_in_order_then_the_error() {
        let mut s = spawn_pages(1, |tx| async move {
            for i in 0..3 {
                tx.send(Page::new(
                    crate::Records::Values(vec![]),
                    serde_json::json!(i),
                ))
                .await;
            }
            Err(Error::decode("x", "boom"))
        });
        for i in 0..3 {
            assert_eq!(
                s.next().await.unwrap().unwrap().cursor,
                serde_json::json!(i)
            );
        }
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
    }
}
