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
//! A vendor can also answer 200 forever without moving: the same page with `has_more`
//! again and again, or cursors that cycle (A → B → A). [`ProgressGuard`] remembers every
//! cursor one walk has followed and stops the walk with [`Error::Protocol`] the first time
//! one comes back, and [`Envelope::records_kind`] / [`Envelope::boolean`] let a connector
//! require the documented shape of a page instead of taking a malformed one for an empty
//! last page.
//!
//! They know nothing about any one vendor, so that any connector can be assembled from
//! them.

use std::collections::HashSet;
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

    /// Whether the consumer has gone (the read was cancelled).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the consumer goes: a producer that waits (for an export job, say)
    /// stops waiting at once when the read is cancelled.
    pub async fn closed(&self) {
        self.tx.closed().await
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
    /// The raw JSON text of the first record's mark field (see [`scan_and_compact`]), if
    /// one was asked for and the record has it.
    pub first_mark: Option<String>,
    /// The same of the last record (e.g. Stripe's `created`, where a range continues).
    pub last_mark: Option<String>,
    /// Scalars of the envelope at depth one and two, as raw JSON text, keyed `name` or
    /// `parent.name` (e.g. `has_more`, `meta.has_more`, `links.next`).
    pub fields: Vec<(String, String)>,
    /// What the top-level records field holds: `array`, `object`, `string`, `number`,
    /// `boolean` or `null`; `None` when the body has no such field.
    pub records_kind: Option<&'static str>,
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

    /// Envelope scalar `key` as a JSON boolean; `None` when it is absent or anything else
    /// (a string `"true"`, a number, null), so a caller can refuse what is not documented.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.field(key)? {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// Checks that the records field `records_key` is an array, as every list envelope
    /// documents it; the error says what was there instead.
    pub fn require_records_array(&self, records_key: &str) -> Result<(), String> {
        match self.records_kind {
            Some("array") => Ok(()),
            Some(kind) => Err(format!("`{records_key}` is {} not an array", a(kind))),
            None => Err(format!("the body has no `{records_key}` array")),
        }
    }

    /// Envelope scalar `key`, which must be a JSON boolean; the error says what was there.
    pub fn require_boolean(&self, key: &str) -> Result<bool, String> {
        match (self.boolean(key), self.field(key)) {
            (Some(b), _) => Ok(b),
            (None, Some(raw)) => Err(format!("`{key}` is `{}`, not a boolean", clip(raw))),
            (None, None) => Err(format!("`{key}` is missing (or not a boolean)")),
        }
    }
}

fn a(kind: &str) -> String {
    match kind {
        "array" | "object" => format!("an {kind},"),
        _ => format!("a {kind},"),
    }
}

/// A vendor's text cut to a length that fits in an error message.
fn clip(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Guards one paginated walk against a vendor that never stops: it remembers every cursor
/// (next-page id, opaque cursor, next-page URL, locator) the walk has followed, so a
/// cursor that comes back — at once (the same page with "more" forever) or after a cycle
/// (A → B → A) — ends the walk with [`Error::Protocol`] instead of looping.
///
/// Guarantees: a walk guarded by one `ProgressGuard` makes at most one request per
/// distinct cursor, and the guard's memory is the cursors of that one walk (cursors are
/// short; a walk of 100,000 pages holds a few megabytes). Call [`ProgressGuard::follow`]
/// with the cursor of the next request *before* handing the page that produced it to the
/// runtime: a page whose next cursor was already followed repeats data already delivered,
/// so it does not land and the committed cursor stays at the last good page.
#[derive(Debug)]
pub struct ProgressGuard {
    vendor: String,
    stream: String,
    /// What the cursor is called, e.g. "pagination cursor `starting_after`".
    what: String,
    /// What the vendor kept saying, e.g. "has_more stayed true".
    still: String,
    seen: HashSet<String>,
}

impl ProgressGuard {
    /// A guard for one walk of `stream`. `what` names the cursor as the vendor documents it
    /// (e.g. "pagination cursor `starting_after`") and `still` the flag that kept promising
    /// more (e.g. "has_more stayed true"); both go into the error.
    pub fn new(
        vendor: impl Into<String>,
        stream: impl Into<String>,
        what: impl Into<String>,
        still: impl Into<String>,
    ) -> Self {
        ProgressGuard {
            vendor: vendor.into(),
            stream: stream.into(),
            what: what.into(),
            still: still.into(),
            seen: HashSet::new(),
        }
    }

    /// Notes the cursor the walk starts from (a resumed walk's committed cursor), so a
    /// vendor that leads back to it is caught too.
    pub fn start_at(&mut self, cursor: &str) {
        self.seen.insert(cursor.to_owned());
    }

    /// Notes that the walk is about to follow `cursor`; fails with [`Error::Protocol`] if
    /// this walk has followed (or started from) it before.
    pub fn follow(&mut self, cursor: &str) -> Result<()> {
        if self.seen.contains(cursor) {
            return Err(self.error(format!(
                "{} repeated the {} `{}` after {} distinct ones ({})",
                self.vendor,
                self.what,
                clip(cursor),
                self.seen.len(),
                self.still
            )));
        }
        self.seen.insert(cursor.to_owned());
        Ok(())
    }

    /// The error for a page that promises more but moves nothing (e.g. `has_more: true`
    /// with no records); `detail` says what the page held.
    pub fn no_progress(&self, detail: &str) -> Error {
        self.error(format!(
            "{} answered a page that adds nothing ({detail}) while {}",
            self.vendor, self.still
        ))
    }

    /// How many distinct cursors the walk has followed.
    pub fn followed(&self) -> usize {
        self.seen.len()
    }

    fn error(&self, what_happened: String) -> Error {
        Error::protocol(
            &self.vendor,
            &self.stream,
            format!(
                "{what_happened}; stopping so the walk cannot loop forever. Nothing past the \
                 last good page is committed."
            ),
        )
    }
}

/// The error for a 200 whose body is not the documented shape: `problem` says which field
/// is wrong. Nothing of that page lands and the committed cursor does not move.
pub fn malformed_page(vendor: &str, stream: &str, request: &str, problem: &str) -> Error {
    Error::protocol(
        vendor,
        stream,
        format!(
            "{vendor} answered {request} with a 200 whose body is not the documented shape: \
             {problem}. Nothing of that page is committed and the cursor stays where it was."
        ),
    )
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
    scan(body, records_key, id_field, None, None)
}

/// [`scan_envelope`], also returning the body without its insignificant whitespace when
/// it had any (`None`: it had none). The same JSON, a third shorter when pretty-printed
/// (Stripe's): the fetch task drops the indentation while it walks the bytes anyway, so
/// the converter, the slower side of the pipeline, does not skip it byte by byte.
/// Whitespace inside strings is kept; only JSON's own (space, tab, CR, LF) is dropped.
///
/// With a `mark_field`, the envelope also holds the raw text of that top-level field of
/// its first and last record ([`Envelope::first_mark`], [`Envelope::last_mark`]): what a
/// caller would otherwise parse the whole page again for.
pub fn scan_and_compact(
    body: &[u8],
    records_key: &str,
    id_field: &str,
    mark_field: Option<&str>,
) -> Result<(Envelope, Option<Vec<u8>>), String> {
    let mut compact = Compact {
        out: Vec::new(),
        from: 0,
    };
    let env = scan(body, records_key, id_field, mark_field, Some(&mut compact))?;
    if compact.from == 0 {
        return Ok((env, None));
    }
    compact.out.extend_from_slice(&body[compact.from..]);
    // Pages wait in the fetch-ahead queue: hold only what is left.
    compact.out.shrink_to_fit();
    Ok((env, Some(compact.out)))
}

/// The body as [`scan_and_compact`] builds it: `out` holds `body[..from]` without the
/// whitespace dropped so far.
struct Compact {
    out: Vec<u8>,
    from: usize,
}

impl Compact {
    /// Drops `body[start..end]`.
    #[inline]
    fn drop_range(&mut self, body: &[u8], start: usize, end: usize) {
        if self.from == 0 {
            self.out.reserve(body.len());
        }
        // Most kept runs between two dropped ones are short (`"amount":`, `14900,`): copy
        // a fixed 32 bytes, which compiles to two moves instead of a call to `memcpy`,
        // and cut back to the run. `out` never outgrows `body`, so the copy stays within
        // the capacity reserved above.
        let len = start - self.from;
        match body.get(self.from..self.from + 32) {
            Some(chunk) if len <= 32 => {
                let keep = self.out.len() + len;
                self.out.extend_from_slice(chunk);
                self.out.truncate(keep);
            }
            _ => self.out.extend_from_slice(&body[self.from..start]),
        }
        self.from = end;
    }
}

fn scan(
    body: &[u8],
    records_key: &str,
    id_field: &str,
    mark_field: Option<&str>,
    mut compact: Option<&mut Compact>,
) -> Result<Envelope, String> {
    let mut env = Envelope::default();
    let mut stack: Vec<Frame> = Vec::with_capacity(16);
    let mut records_array_depth: Option<usize> = None;
    let mut current_id: Option<(usize, usize)> = None;
    let mut current_mark: Option<(usize, usize)> = None;
    // The (id, mark) byte ranges of the first and the last record.
    type Ranges = (Option<(usize, usize)>, Option<(usize, usize)>);
    let mut first: Ranges = (None, None);
    let mut last: Ranges = (None, None);
    let mark_field = mark_field.map(str::as_bytes);
    // Whether the key of a scalar at `depth` is a record's own `mark_field`.
    let is_mark = |stack: &[Frame], records_array_depth: Option<usize>| {
        mark_field.is_some_and(|mark| {
            records_array_depth.is_some_and(|d| d + 2 == stack.len())
                && stack
                    .last()
                    .is_some_and(|top| top.is_object && &body[top.key.0..top.key.1] == mark)
        })
    };
    let mut done = false;
    let mut i = 0;
    let n = body.len();
    while i < n {
        let b = body[i];
        if b == b' ' || b == b'\n' {
            // Pretty-printed bodies are mostly indentation: skip a run of it at once.
            i = pass_spaces(body, i, compact.as_deref_mut());
            continue;
        }
        if b.is_ascii_whitespace() || b == b',' || b == b':' {
            // Form feed is not JSON whitespace: it stays, for the parser to refuse.
            if (b == b'\t' || b == b'\r')
                && let Some(c) = compact.as_deref_mut()
            {
                c.drop_range(body, i, i + 1);
            }
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
                    current_mark = None;
                }
                if depth == 1 && key_is(body, &stack[0], records_key) {
                    env.records_kind = Some(if is_object { "object" } else { "array" });
                    if !is_object {
                        records_array_depth = Some(1);
                    }
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
                    // Byte ranges until the end: only the first and last become text.
                    if env.count == 1 {
                        first = (current_id, current_mark);
                    }
                    last = (current_id.take(), current_mark.take());
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
                    // A key is followed by its colon, pretty-printed with a space: pass
                    // both here rather than one turn of the loop each (the loop treats a
                    // colon as a separator and nothing more).
                    if body.get(i) == Some(&b':') {
                        i += 1;
                        if body.get(i) == Some(&b' ') {
                            i = pass_spaces(body, i, compact.as_deref_mut());
                        }
                    }
                    continue;
                }
                let top = *top;
                if depth == 1 && key_is(body, &top, records_key) {
                    env.records_kind = Some("string");
                }
                if top.is_object
                    && records_array_depth.is_some_and(|d| d + 2 == depth)
                    && &body[top.key.0..top.key.1] == id_field.as_bytes()
                {
                    current_id = Some((start, end));
                }
                if is_mark(&stack, records_array_depth) {
                    current_mark = Some((start - 1, end + 1));
                }
                record_scalar(
                    &mut env,
                    body,
                    &stack,
                    records_array_depth,
                    (start - 1, end + 1),
                );
                i = after_value(body, i, &mut stack, compact.as_deref_mut());
            }
            _ => {
                let start = i;
                // `null` is the commonest scalar of a vendor object (most of a Stripe
                // charge's fields): pass it at once; the loop below still ends the token.
                if body[i..].starts_with(b"null") {
                    i += 4;
                }
                while i < n && !matches!(body[i], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                {
                    i += 1;
                }
                if stack.is_empty() {
                    return Err("the body is not a JSON object".into());
                }
                if stack.len() == 1 && key_is(body, &stack[0], records_key) {
                    env.records_kind = Some(match body[start] {
                        b'n' => "null",
                        b't' | b'f' => "boolean",
                        _ => "number",
                    });
                }
                if is_mark(&stack, records_array_depth) {
                    current_mark = Some((start, i));
                }
                record_scalar(&mut env, body, &stack, records_array_depth, (start, i));
                i = after_value(body, i, &mut stack, compact.as_deref_mut());
            }
        }
    }
    if !done {
        return Err("the body ends before the JSON does (truncated?)".into());
    }
    let text = |range: Option<(usize, usize)>| {
        range.map(|(s, e)| String::from_utf8_lossy(&body[s..e]).into_owned())
    };
    env.first_id = text(first.0);
    env.first_mark = text(first.1);
    env.last_id = text(last.0);
    env.last_mark = text(last.1);
    Ok(env)
}

/// Passes the comma after a value at `i`, and the line break and indentation after it, if
/// they are there (a pretty-printed body has them after most values): what the scan loop
/// would do a byte a turn. Returns where the loop goes on.
#[inline]
fn after_value(
    body: &[u8],
    mut i: usize,
    stack: &mut [Frame],
    compact: Option<&mut Compact>,
) -> usize {
    if body.get(i) != Some(&b',') {
        return i;
    }
    if let Some(top) = stack.last_mut()
        && top.is_object
    {
        top.expecting_key = true;
    }
    i += 1;
    if body.get(i) == Some(&b'\n') {
        i = pass_spaces(body, i, compact);
    }
    i
}

/// Passes the whitespace byte at `i` and the spaces after it, dropping them from the
/// compacted body; returns the index of the next byte.
#[inline]
fn pass_spaces(body: &[u8], i: usize, compact: Option<&mut Compact>) -> usize {
    let end = skip_spaces(body, i + 1);
    if let Some(c) = compact {
        c.drop_range(body, i, end);
    }
    end
}

/// The index of the first byte at or after `i` that is not a space: eight bytes at a time,
/// jumping straight to the first non-space of a word (indentation runs are long).
#[inline]
fn skip_spaces(body: &[u8], mut i: usize) -> usize {
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
    while let Some(word) = body.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let diff = u64::from_le_bytes(*word) ^ SPACES;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while body.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

fn key_is(body: &[u8], frame: &Frame, key: &str) -> bool {
    frame.is_object && &body[frame.key.0..frame.key.1] == key.as_bytes()
}

/// Notes a scalar of the envelope (outside the records array). Called for every scalar
/// of the body: the check that throws away the records' own is inlined at each call.
#[inline(always)]
fn record_scalar(
    env: &mut Envelope,
    body: &[u8],
    stack: &[Frame],
    records_array_depth: Option<usize>,
    range: (usize, usize),
) {
    if records_array_depth.is_none() {
        envelope_scalar(env, body, stack, range);
    }
}

#[inline(never)]
fn envelope_scalar(env: &mut Envelope, body: &[u8], stack: &[Frame], (s, e): (usize, usize)) {
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

/// The high bit of each byte of `word` that equals `byte`, eight bytes at once. The lowest
/// flagged byte is exact (the borrow of the subtraction only flags bytes above a match), so
/// `trailing_zeros() / 8` is the first match and `!= 0` whether there is one.
#[inline]
pub(crate) fn bytes_equal(word: u64, byte: u8) -> u64 {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let v = word ^ u64::from_le_bytes([byte; 8]);
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// The index of the quote closing the string that starts at `start`.
#[inline]
fn string_end(body: &[u8], mut start: usize) -> Option<usize> {
    // Keys and most values end within a word or two: look at them a word at a time
    // before paying for `memchr2`'s set-up.
    for _ in 0..2 {
        let Some(word) = body.get(start..).and_then(|rest| rest.first_chunk::<8>()) else {
            break;
        };
        let word = u64::from_le_bytes(*word);
        let hits = bytes_equal(word, b'"') | bytes_equal(word, b'\\');
        if hits == 0 {
            start += 8;
            continue;
        }
        let at = start + (hits.trailing_zeros() / 8) as usize;
        if body[at] == b'"' {
            return Some(at);
        }
        start = at + 2;
        if start > body.len() {
            return None;
        }
    }
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
    fn marks_are_the_records_own_field_as_raw_text() {
        let body = br#"{
  "data": [
    {"created": {"at": 1}, "id": "a", "sub": {"created": 2, "list": [{"created": 3}]}, "created": 4},
    {"id": "b", "created": "x\"y"},
    {"id": "c"},
    {"id": "d", "created": 5, "tail": [6]}
  ],
  "created": 7,
  "has_more": false
}"#;
        let (env, _) = scan_and_compact(body, "data", "id", Some("created")).unwrap();
        assert_eq!(env.count, 4);
        assert_eq!(env.first_mark.as_deref(), Some("4"));
        assert_eq!(env.last_mark.as_deref(), Some("5"));
        // Without a mark field the envelope holds none, and is otherwise the same.
        let plain = scan_envelope(body, "data", "id").unwrap();
        assert_eq!((plain.first_mark, plain.last_mark), (None, None));
        assert_eq!(
            (plain.count, plain.first_id, plain.last_id),
            (4, Some("a".into()), Some("d".into()))
        );
        // A string mark keeps its quotes; a record without one has none.
        let (env, _) = scan_and_compact(
            br#"{"data":[{"id":"a","m":"x\"y"},{"id":"b"}]}"#,
            "data",
            "id",
            Some("m"),
        )
        .unwrap();
        assert_eq!(env.first_mark.as_deref(), Some(r#""x\"y""#));
        assert_eq!(env.last_mark, None);
    }

    #[test]
    fn compaction_drops_whitespace_outside_strings_only() {
        let body = b"{\n  \"data\": [\n    {\"id\": \"a b\",\t\"x\": [1, 2]},\r\n    {\"id\": \"c\\\" \"}\n  ],\n  \"has_more\": false\n}\n";
        let (env, compact) = scan_and_compact(body, "data", "id", None).unwrap();
        assert_eq!(env, scan_envelope(body, "data", "id").unwrap());
        let compact = compact.unwrap();
        assert_eq!(
            std::str::from_utf8(&compact).unwrap(),
            r#"{"data":[{"id":"a b","x":[1,2]},{"id":"c\" "}],"has_more":false}"#
        );
        let a: serde_json::Value = serde_json::from_slice(body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        assert_eq!(a, b);
        let tight = br#"{"data":[{"id":"a"}],"has_more":false}"#;
        assert_eq!(scan_and_compact(tight, "data", "id", None).unwrap().1, None);
        // A form feed is not JSON whitespace: kept, so the parser still refuses it.
        let feed = b"{\"data\":[],\x0c\"has_more\":false}";
        assert_eq!(scan_and_compact(feed, "data", "id", None).unwrap().1, None);
    }

    /// Random records (strings of 0-40 pieces across the scan's word steps, with quotes,
    /// backslashes and non-ASCII text at random offsets; nested objects and arrays), listed
    /// pretty-printed and compact: the scan finds the same envelope in both, and compacts
    /// the pretty body to exactly serde_json's compact text of the same value.
    #[test]
    fn the_scan_agrees_with_serde_json_on_random_pages() {
        use serde_json::{Value, json};
        /// xorshift64: the same pages on every run.
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: u64) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 % n
            }
            fn text(&mut self) -> String {
                const PIECES: [&str; 12] = [
                    "a", "\"", "\\", "é", " ", "\n", "}", "]", ",", ":", "\u{1}", "€",
                ];
                (0..self.below(40))
                    .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                    .collect()
            }
            fn value(&mut self, depth: u32) -> Value {
                match self.below(if depth > 2 { 5 } else { 7 }) {
                    0 => Value::Null,
                    1 => json!(self.below(2) == 0),
                    2 => json!(self.below(1 << 40) as i64 - (1 << 39)),
                    3 | 4 => Value::String(self.text()),
                    5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
                    _ => Value::Object(
                        (0..self.below(5))
                            .map(|_| (self.text(), self.value(depth + 1)))
                            .collect(),
                    ),
                }
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let records: Vec<Value> = (0..rng.below(6))
                .map(|i| {
                    let mut record = serde_json::Map::new();
                    for _ in 0..rng.below(6) {
                        record.insert(rng.text(), rng.value(0));
                    }
                    record.insert("id".into(), json!(format!("{}{i}", rng.text())));
                    // A mark is a scalar (Stripe's `created`); a number or a string here.
                    let created = match rng.below(2) {
                        0 => json!(rng.below(1 << 40)),
                        _ => json!(rng.text()),
                    };
                    record.insert("created".into(), created);
                    Value::Object(record)
                })
                .collect();
            let page = json!({"object": "list", "data": records, "has_more": rng.below(2) == 0, "url": rng.text()});
            let pretty = serde_json::to_vec_pretty(&page).unwrap();
            let compact = serde_json::to_vec(&page).unwrap();
            let (env, squeezed) = scan_and_compact(&pretty, "data", "id", Some("created"))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(squeezed.as_deref(), Some(&compact[..]), "round {round}");
            let (tight, none) = scan_and_compact(&compact, "data", "id", Some("created")).unwrap();
            assert_eq!((&tight, none), (&env, None), "round {round}");
            assert_eq!(env.count, records.len(), "round {round}");
            let id = |r: Option<&Value>| r.map(|r| r["id"].as_str().unwrap().to_owned());
            // The scan reports an id as its raw text between the quotes.
            let raw_id = |r: Option<&Value>| {
                id(r).map(|s| {
                    let quoted = serde_json::to_string(&s).unwrap();
                    quoted[1..quoted.len() - 1].to_owned()
                })
            };
            assert_eq!(env.first_id, raw_id(records.first()), "round {round}");
            assert_eq!(env.last_id, raw_id(records.last()), "round {round}");
            let mark = |r: Option<&Value>| r.map(|r| serde_json::to_string(&r["created"]).unwrap());
            assert_eq!(env.first_mark, mark(records.first()), "round {round}");
            assert_eq!(env.last_mark, mark(records.last()), "round {round}");
            assert_eq!(env.flag("has_more"), page["has_more"] == json!(true));
        }
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

    #[test]
    fn the_records_field_kind_is_reported() {
        let kind = |body: &[u8]| scan_envelope(body, "data", "id").unwrap().records_kind;
        assert_eq!(kind(br#"{"data":[],"has_more":false}"#), Some("array"));
        assert_eq!(kind(br#"{"data":[{"id":"a"}]}"#), Some("array"));
        assert_eq!(
            kind(br#"{"data":{"id":"a"},"has_more":true}"#),
            Some("object")
        );
        assert_eq!(kind(br#"{"data":"ch_1","has_more":true}"#), Some("string"));
        assert_eq!(kind(br#"{"data":null}"#), Some("null"));
        assert_eq!(kind(br#"{"data":7}"#), Some("number"));
        assert_eq!(kind(br#"{"meta":{"data":[]}}"#), None);
        assert_eq!(kind(br#"{"x":[{"data":[]}]}"#), None);
        let env = scan_envelope(br#"{"data":{"a":1},"has_more":"true"}"#, "data", "id").unwrap();
        assert!(
            env.require_records_array("data")
                .unwrap_err()
                .contains("`data` is an object")
        );
        assert!(
            env.require_boolean("has_more")
                .unwrap_err()
                .contains("\"true\"")
        );
        assert!(env.require_boolean("nope").unwrap_err().contains("missing"));
        let env = scan_envelope(br#"{"data":[],"has_more":false}"#, "data", "id").unwrap();
        assert_eq!(env.require_boolean("has_more"), Ok(false));
        assert_eq!(env.require_records_array("data"), Ok(()));
    }

    #[test]
    fn the_guard_catches_repeats_and_cycles() {
        let mut guard = ProgressGuard::new("Acme", "widgets", "cursor `after`", "more stayed true");
        guard.follow("a").unwrap();
        guard.follow("b").unwrap();
        let err = guard.follow("a").unwrap_err();
        let Error::Protocol {
            vendor,
            stream,
            message,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((vendor.as_str(), stream.as_str()), ("Acme", "widgets"));
        assert!(
            message.contains("repeated the cursor `after` `a`"),
            "{message}"
        );
        assert!(message.contains("more stayed true"), "{message}");
        assert!(
            message.contains("Nothing past the last good page"),
            "{message}"
        );

        let mut resumed = ProgressGuard::new("Acme", "widgets", "cursor", "more");
        resumed.start_at("z");
        assert!(resumed.follow("z").is_err());
        assert_eq!(resumed.followed(), 1);
        assert!(
            resumed
                .no_progress("an empty page")
                .to_string()
                .contains("adds nothing (an empty page)")
        );
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
