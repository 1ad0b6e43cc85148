//! Pages: what a connector hands the runtime, one vendor response (or one deduplicated
//! window of changes) at a time, each with the cursor to resume after it.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;

use crate::error::Result;

/// The records of one page.
#[derive(Debug, Clone)]
pub enum Records {
    /// A vendor response body, untouched, whose records are the JSON array found by
    /// following `path` (object keys) from the top, e.g. `["data"]` for a Stripe list.
    /// Converted straight into Arrow builders without building a JSON tree.
    Json {
        /// The response body.
        body: Bytes,
        /// Keys leading to the array of records; empty if the body is the array.
        path: &'static [&'static str],
    },
    /// Records assembled by the connector (e.g. the latest versions of objects from an
    /// events feed).
    Values(Vec<Record>),
}

impl Records {
    /// Whether the page carries no records at all (cheap for `Values`; `Json` pages are
    /// assumed non-empty).
    pub fn is_empty_values(&self) -> bool {
        matches!(self, Records::Values(v) if v.is_empty())
    }
}

/// One record assembled by a connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The vendor object.
    pub value: serde_json::Value,
    /// Whether the vendor deleted it (overrides the schema's deletion rule when true).
    pub is_deleted: bool,
}

/// A page of records and the position to resume from once it is committed.
#[derive(Debug, Clone)]
pub struct Page {
    /// The records.
    pub records: Records,
    /// The connector's cursor after this page, as JSON: committed atomically with the
    /// page's rows, and handed back (decoded) in [`crate::ReadRequest::cursor`] on the next
    /// run. Every page's cursor must be a valid place to resume.
    pub cursor: serde_json::Value,
    /// When the page was fetched; lands in `received_at`.
    pub received_at: DateTime<Utc>,
    /// Set on the first page of a snapshot (a full resync): this page starts a new
    /// snapshot, or starts an open one over. A snapshot replaces the table's rows only when
    /// it is complete: until then, the old rows stay and are updated in place; once a read
    /// ends normally (its pages exhausted, not on an error, cancellation or deferral) the
    /// table drops every row received before the snapshot's first page. A failed or
    /// interrupted snapshot never shrinks the table, and resumes from its committed page
    /// cursor. So every page after this one, in this run and the next, must carry on the
    /// same full read until it ends.
    pub reset: bool,
}

impl Page {
    /// A page fetched now.
    pub fn new(records: Records, cursor: serde_json::Value) -> Self {
        Page {
            records,
            cursor,
            received_at: Utc::now(),
            reset: false,
        }
    }

    /// A page fetched now that resumes at `cursor`, the connector's own
    /// [`crate::Connector::Cursor`] (or `None` of it, for "no position yet"), encoded the
    /// way the SDK decodes it for the next read (see [`crate::cursor`]).
    pub fn with_cursor<C: Serialize + ?Sized>(records: Records, cursor: &C) -> Self {
        Self::new(records, crate::cursor::encode(cursor))
    }

    /// Marks the page as the start of a snapshot (see [`Page::reset`]).
    pub fn resetting(mut self, reset: bool) -> Self {
        self.reset = reset;
        self
    }
}

/// The pages of one stream read, in order. Connectors usually fetch ahead on a task of
/// their own (see [`crate::pagination::spawn_pages`]), so the runtime converts page N
/// while page N+1 is in flight.
pub type PageStream = BoxStream<'static, Result<Page>>;

/// Fields a connector adds to one record: (key, the value as JSON text).
pub type AddedFields = Vec<(String, String)>;

/// A copy of a list response `body` with fields added to each record of its top-level
/// array `records_key`, each record's text otherwise untouched: for a connector that
/// derives a few fields per record (e.g. one column per custom field) and still wants the
/// page converted straight from the body ([`Records::Json`]) rather than rebuilt as
/// `serde_json::Value` trees, which costs several times the conversion itself.
///
/// `add` gets each record's JSON text and returns the fields to append to it (after its
/// last field, so the record's own fields are read first). Records that are not objects are
/// left as they are. Fails, saying why, when the body is not a JSON object with an array
/// at `records_key` (the last one when the key repeats, as a parsed map would keep).
pub fn append_fields<E>(
    body: &[u8],
    records_key: &str,
    add: impl FnMut(&str) -> std::result::Result<AddedFields, E>,
) -> std::result::Result<Vec<u8>, String>
where
    E: std::fmt::Display,
{
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    // One pass: each record's text and what to add to it, at the last `records_key`.
    let mut found: Option<Vec<(usize, AddedFields)>> = None;
    let mut failed: Option<String> = None;
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(
        &mut de,
        TopVisitor {
            records_key,
            base: text.as_ptr() as usize,
            add,
            found: &mut found,
            failed: &mut failed,
        },
    )
    .and_then(|()| de.end())
    .map_err(|e| failed.take().unwrap_or_else(|| e.to_string()))?;
    let Some(records) = found else {
        return Err(format!("no `{records_key}` array"));
    };
    let extra: usize = records
        .iter()
        .flat_map(|(_, f)| f.iter().map(|(k, v)| k.len() + v.len() + 4))
        .sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut copied = 0;
    for (close, fields) in records {
        out.extend_from_slice(&body[copied..close]);
        // Whether the object has a field already: the last non-blank byte before its
        // closing brace is its opening one when it has none.
        let mut empty = body[..close]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            == Some(&b'{');
        for (key, value) in fields {
            if !empty {
                out.push(b',');
            }
            empty = false;
            // A key is a JSON string; serializing a `str` cannot fail.
            out.extend_from_slice(serde_json::to_string(&key).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        copied = close;
    }
    out.extend_from_slice(&body[copied..]);
    Ok(out)
}

struct TopVisitor<'f, F> {
    records_key: &'f str,
    base: usize,
    add: F,
    found: &'f mut Option<Vec<(usize, AddedFields)>>,
    failed: &'f mut Option<String>,
}

impl<'de, E, F> serde::de::Visitor<'de> for TopVisitor<'_, F>
where
    F: FnMut(&str) -> std::result::Result<AddedFields, E>,
    E: std::fmt::Display,
{
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != self.records_key {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let records: Vec<&'de serde_json::value::RawValue> = map
                .next_value()
                .map_err(|_| A::Error::custom(format!("no `{}` array", self.records_key)))?;
            let mut out = Vec::with_capacity(records.len());
            for record in records {
                let raw = record.get();
                if !raw.starts_with('{') || !raw.ends_with('}') {
                    continue;
                }
                let fields = (self.add)(raw).map_err(|e| {
                    let e = e.to_string();
                    *self.failed = Some(e.clone());
                    A::Error::custom(e)
                })?;
                if !fields.is_empty() {
                    // The offset of the record's closing brace in the body.
                    out.push((raw.as_ptr() as usize - self.base + raw.len() - 1, fields));
                }
            }
            // The last one, as a parsed map keeps it.
            *self.found = Some(out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_fields_to_each_record_and_keeps_the_rest() {
        let body = br#"{"tickets": [ {"id": 1, "a": [1, {"b": "}"}]} , {} ,{"id":3}, 7 ],
            "after_cursor": "x", "tickets2": []}"#;
        let out = append_fields(body, "tickets", |raw| {
            let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
            Ok::<_, String>(match v.get("id") {
                Some(id) => vec![("twice".to_owned(), (id.as_i64().unwrap() * 2).to_string())],
                None => vec![("k\"ey".to_owned(), "null".to_owned())],
            })
        })
        .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"tickets": [{"id": 1, "a": [1, {"b": "}"}], "twice": 2},
                {"k\"ey": null}, {"id": 3, "twice": 6}, 7], "after_cursor": "x", "tickets2": []})
        );
        assert!(append_fields(b"{\"x\": []}", "tickets", |_| Ok::<_, String>(vec![])).is_err());
        assert!(
            append_fields(b"{\"tickets\": {}}", "tickets", |_| Ok::<_, String>(vec![])).is_err()
        );
        assert!(append_fields(b"{\"tickets\": [", "tickets", |_| Ok::<_, String>(vec![])).is_err());
    }
}
