//! Finding a page's records and its pagination values without building a JSON tree per
//! record: the envelope is read as maps of raw values ([`RawValue`]), the records array as
//! a list of raw values, and the page handed on is those records' text joined into one
//! array, which the SDK's converter turns into Arrow straight from the bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::spec::Selector;

/// What one page holds.
#[derive(Debug, Default)]
pub struct Extracted {
    /// The records as one JSON array (`[{...},{...}]`).
    pub records: Vec<u8>,
    /// How many records were kept.
    pub count: usize,
    /// How many records the page held (kept or not).
    pub total: usize,
    /// The scalar at each asked path: strings decoded, numbers and booleans as their text,
    /// `None` for null or absent.
    pub values: Vec<Option<String>>,
}

type RawMap<'a> = HashMap<Cow<'a, str>, &'a RawValue>;

fn object(raw: &str) -> Option<RawMap<'_>> {
    serde_json::from_str(raw).ok()
}

fn follow<'a>(mut raw: &'a RawValue, keys: &[String]) -> Option<&'a RawValue> {
    for key in keys {
        let map: RawMap<'a> = object(raw.get())?;
        raw = map.get(key.as_str()).copied()?;
    }
    Some(raw)
}

fn scalar(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).ok(),
        Some(b'n') | None => None,
        Some(b'{') | Some(b'[') => None,
        _ => Some(text.to_owned()),
    }
}

/// Extracts the records at `selector` and the scalars at `paths` (each a list of keys).
/// Fails, saying what is wrong, when the body is not JSON or has no array at the
/// selector (an empty or missing array is an error only if `require_array`).
pub fn extract(
    body: &[u8],
    selector: &Selector,
    paths: &[&[String]],
    keep: Option<&Keep>,
) -> Result<Extracted, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    let root: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON: {e}"))?;
    let values = paths
        .iter()
        .map(|p| follow(root, p).and_then(scalar))
        .collect();
    let array = follow(root, &selector.to_array).ok_or_else(|| {
        format!(
            "the body has no `{}` array",
            if selector.to_array.is_empty() {
                "$".to_owned()
            } else {
                selector.to_array.join(".")
            }
        )
    })?;
    let items: Vec<&RawValue> = serde_json::from_str(array.get()).map_err(|_| {
        format!(
            "`{}` is not an array",
            if selector.to_array.is_empty() {
                "$".to_owned()
            } else {
                selector.to_array.join(".")
            }
        )
    })?;
    let mut records = Vec::with_capacity(array.get().len() + 2);
    records.push(b'[');
    let mut count = 0;
    let total = items.len();
    for item in items {
        let record = if selector.unwrap.is_empty() {
            item
        } else {
            match follow(item, &selector.unwrap) {
                Some(r) => r,
                None => continue,
            }
        };
        if let Some(keep) = keep
            && !keep.keeps(record)
        {
            continue;
        }
        if count > 0 {
            records.push(b',');
        }
        records.extend_from_slice(record.get().as_bytes());
        count += 1;
    }
    records.push(b']');
    Ok(Extracted {
        records,
        count,
        total,
        values,
    })
}

/// Keeps the records whose time at `path` is at or after `from_ms` (a record without one
/// is kept): the deletions a list reports since a window's start.
#[derive(Debug, Clone)]
pub struct Keep {
    /// Keys to the time in each record.
    pub path: Vec<String>,
    /// How the time is written.
    pub format: crate::spec::TimeFormat,
    /// The earliest time kept, Unix ms.
    pub from_ms: i64,
}

impl Keep {
    fn keeps(&self, record: &RawValue) -> bool {
        match follow(record, &self.path).and_then(scalar) {
            Some(text) => self.format.parse(&text).is_none_or(|ms| ms >= self.from_ms),
            None => true,
        }
    }
}

/// The `rel="next"` URL of a `Link` header (RFC 8288), if any.
pub fn link_next(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| url.to_owned())
    })
}

/// The value at `keys` (a dotted path's keys) in a JSON tree.
pub fn get_path<'a>(root: &'a serde_json::Value, keys: &[String]) -> Option<&'a serde_json::Value> {
    keys.iter().try_fold(root, |at, k| at.get(k))
}

/// Sets the value at `keys` in `root`, making the objects on the way.
pub fn set_path(root: &mut serde_json::Value, keys: &[String], value: serde_json::Value) {
    use serde_json::{Map, Value};
    let mut at = root;
    for (i, key) in keys.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else { return };
        if i + 1 == keys.len() {
            map.insert(key.clone(), value);
            return;
        }
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap()
    }

    #[test]
    fn finds_records_and_values() {
        let body = br#"{"results": [{"id": "1"}, {"id": "2"}], "paging": {"next": {"after": "2"}}, "n": 5}"#;
        let after = vec!["paging".to_owned(), "next".to_owned(), "after".to_owned()];
        let n = vec!["n".to_owned()];
        let missing = vec!["x".to_owned()];
        let e = extract(body, &sel("results"), &[&after, &n, &missing], None).unwrap();
        assert_eq!(e.count, 2);
        assert_eq!(e.records, br#"[{"id": "1"},{"id": "2"}]"#);
        assert_eq!(e.values, vec![Some("2".into()), Some("5".into()), None]);

        let body = br#"{"list": [{"customer": {"id": "a"}}, {"customer": {"id": "b"}}], "next_offset": null}"#;
        let e = extract(body, &sel("list[*].customer"), &[], None).unwrap();
        assert_eq!(e.records, br#"[{"id": "a"},{"id": "b"}]"#);
        let e = extract(br#"[{"id":1}]"#, &sel("$"), &[], None).unwrap();
        assert_eq!(e.count, 1);
        assert!(extract(br#"{"results": {}}"#, &sel("results"), &[], None).is_err());
        assert!(extract(br#"{"results": [1,"#, &sel("results"), &[], None).is_err());
        let keep = Keep {
            path: vec!["archivedAt".into()],
            format: crate::spec::TimeFormat::Rfc3339,
            from_ms: 1_700_000_000_000,
        };
        let body = br#"{"results": [{"id": "a", "archivedAt": "2020-01-01T00:00:00Z"}, {"id": "b", "archivedAt": "2030-01-01T00:00:00Z"}]}"#;
        let e = extract(body, &sel("results"), &[], Some(&keep)).unwrap();
        assert_eq!((e.count, e.total), (1, 2));
        assert_eq!(
            e.records,
            br#"[{"id": "b", "archivedAt": "2030-01-01T00:00:00Z"}]"#
        );
    }

    #[test]
    fn link_headers() {
        let h =
            r#"<https://a.example/x?page=2>; rel="next", <https://a.example/x?page=9>; rel="last""#;
        assert_eq!(link_next(h).as_deref(), Some("https://a.example/x?page=2"));
        assert_eq!(link_next(r#"<https://a.example/x>; rel="prev""#), None);
    }
}
