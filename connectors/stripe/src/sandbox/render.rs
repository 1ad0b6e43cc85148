//! Pretty JSON the way Stripe prints it, and templates that make seeding 100k objects cheap.
//!
//! Stripe puts `id` and `object` first and the other keys in alphabetical order, indents by
//! two spaces and nests list items one level deeper. Objects are rendered once, at the depth
//! they have inside a list page, and cached as bytes; a page is then a concatenation.
//!
//! Seeding clones no `Value` trees: each type's fixture is rendered once with placeholder
//! "holes" at the fields that vary, and an object is the template's byte segments with the
//! hole values written in between.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// The depth objects are rendered at in the cache: inside `{"data": [ ... ]}`.
pub(crate) const LIST_DEPTH: usize = 2;

/// A value written into a template hole.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Any JSON, for holes whose value is a nested object in some objects and null in others.
    Json(Value),
}

impl From<i64> for Scalar {
    fn from(v: i64) -> Self {
        Scalar::Int(v)
    }
}

impl From<bool> for Scalar {
    fn from(v: bool) -> Self {
        Scalar::Bool(v)
    }
}

impl From<String> for Scalar {
    fn from(v: String) -> Self {
        Scalar::Str(v)
    }
}

impl From<&str> for Scalar {
    fn from(v: &str) -> Self {
        Scalar::Str(v.to_owned())
    }
}

impl<T: Into<Scalar>> From<Option<T>> for Scalar {
    fn from(v: Option<T>) -> Self {
        v.map_or(Scalar::Null, Into::into)
    }
}

impl From<Value> for Scalar {
    fn from(v: Value) -> Self {
        Scalar::Json(v)
    }
}

impl Scalar {
    pub(crate) fn into_value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::from(i),
            Scalar::Float(f) => Value::from(f),
            Scalar::Str(s) => Value::String(s),
            Scalar::Json(v) => v,
        }
    }

    fn write(&self, depth: usize, out: &mut Vec<u8>) {
        match self {
            Scalar::Null => out.extend_from_slice(b"null"),
            Scalar::Bool(true) => out.extend_from_slice(b"true"),
            Scalar::Bool(false) => out.extend_from_slice(b"false"),
            Scalar::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Scalar::Float(f) => render(&Value::from(*f), depth, out),
            Scalar::Str(s) => write_str(s, out),
            Scalar::Json(v) => render(v, depth, out),
        }
    }
}

/// Renders `value` pretty-printed as if it sat at nesting `depth`: the first line carries no
/// indentation (the caller places it), inner lines are indented `2 * (depth + 1)` spaces.
pub(crate) fn render(value: &Value, depth: usize, out: &mut Vec<u8>) {
    render_with(value, depth, out, &mut |_, _, _| false);
}

/// Renders an object at top level (a response body of its own).
pub(crate) fn render_top(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    render(value, 0, &mut out);
    out
}

/// Turns an object cached at [`LIST_DEPTH`] into a top-level body by removing the list
/// indentation. JSON strings never hold a raw newline, so every `\n` starts a line.
pub(crate) fn dedent_list_item(cached: &[u8]) -> Vec<u8> {
    let strip = 2 * LIST_DEPTH;
    let mut out = Vec::with_capacity(cached.len());
    let mut rest = cached;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        out.extend_from_slice(&rest[..=pos]);
        rest = &rest[pos + 1..];
        let spaces = rest.iter().take(strip).take_while(|&&b| b == b' ').count();
        rest = &rest[spaces..];
    }
    out.extend_from_slice(rest);
    out
}

/// `hole` is asked about every string before it is written; returning true means the hook
/// wrote (or recorded) it instead.
fn render_with(
    value: &Value,
    depth: usize,
    out: &mut Vec<u8>,
    hole: &mut dyn FnMut(&str, usize, &mut Vec<u8>) -> bool,
) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => {
            if !hole(s, depth, out) {
                write_str(s, out);
            }
        }
        Value::Array(items) if items.is_empty() => out.extend_from_slice(b"[]"),
        Value::Array(items) => {
            out.extend_from_slice(b"[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                indent(depth + 1, out);
                render_with(item, depth + 1, out, hole);
            }
            out.push(b'\n');
            indent(depth, out);
            out.push(b']');
        }
        Value::Object(map) if map.is_empty() => out.extend_from_slice(b"{}"),
        Value::Object(map) => {
            out.extend_from_slice(b"{\n");
            for (i, (key, item)) in stripe_key_order(map).into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                indent(depth + 1, out);
                write_str(key, out);
                out.extend_from_slice(b": ");
                render_with(item, depth + 1, out, hole);
            }
            out.push(b'\n');
            indent(depth, out);
            out.push(b'}');
        }
    }
}

/// `id`, `object`, then the rest alphabetically, whatever order the map iterates in (it
/// depends on serde_json's `preserve_order` feature, which another crate may switch on).
fn stripe_key_order(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|(a, _), (b, _)| {
        let rank = |k: &str| match k {
            "id" => 0,
            "object" => 1,
            _ => 2,
        };
        rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
    });
    entries
}

fn indent(depth: usize, out: &mut Vec<u8>) {
    out.resize(out.len() + 2 * depth, b' ');
}

/// Writes a JSON string literal with the escapes serde_json uses.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Sets `value` at a dotted path (`items.data.0.price.id`), creating objects on the way.
/// Numeric segments index arrays. Returns false when the path cannot be reached (an index
/// past the end of an array), leaving the object unchanged.
pub(crate) fn set_path(target: &mut Value, path: &str, value: Value) -> bool {
    let mut node = target;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if let Value::Array(items) = node {
            let Some(item) = segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
                return false;
            };
            if last {
                *item = value;
                return true;
            }
            node = item;
            continue;
        }
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            return false;
        };
        if last {
            map.insert(segment.to_owned(), value);
            return true;
        }
        node = map.entry(segment.to_owned()).or_insert(Value::Null);
    }
    false
}

const HOLE_MARK: &str = "\u{1}hole:";

/// A type's fixture rendered at [`LIST_DEPTH`] with its varying fields cut out.
#[derive(Debug)]
pub(crate) struct Template {
    /// The paths of the holes, in the order a generator sets them.
    paths: Vec<String>,
    /// `segments.len() == gaps.len() + 1`; object = seg0 gap0 seg1 gap1 ... segN.
    segments: Vec<Vec<u8>>,
    /// For each gap: which hole, and the depth to render a nested value at.
    gaps: Vec<(usize, usize)>,
    fixed_len: usize,
}

impl Template {
    /// Builds the template. `None` when a path cannot be placed (the generator and the
    /// fixture disagree); the caller then renders those objects the slow way.
    pub(crate) fn new(fixture: &Value, paths: Vec<String>) -> Option<Template> {
        let mut marked = fixture.clone();
        for (i, path) in paths.iter().enumerate() {
            if !set_path(&mut marked, path, Value::String(format!("{HOLE_MARK}{i}"))) {
                return None;
            }
        }
        let mut segments = vec![Vec::new()];
        let mut gaps = Vec::new();
        let mut out = Vec::new();
        render_with(&marked, LIST_DEPTH, &mut out, &mut |s, depth, out| {
            let Some(hole) = s
                .strip_prefix(HOLE_MARK)
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return false;
            };
            if let Some(current) = segments.last_mut() {
                current.append(out);
            }
            segments.push(Vec::new());
            gaps.push((hole, depth));
            true
        });
        if let Some(current) = segments.last_mut() {
            current.append(&mut out);
        }
        // Every hole must appear exactly once, or filling would drop or repeat a value.
        let mut seen = vec![false; paths.len()];
        for &(hole, _) in &gaps {
            if seen[hole] {
                return None;
            }
            seen[hole] = true;
        }
        if seen.contains(&false) {
            return None;
        }
        let fixed_len = segments.iter().map(Vec::len).sum();
        Some(Template {
            paths,
            segments,
            gaps,
            fixed_len,
        })
    }

    /// Fills the holes. `None` when `fields` were not set in the template's path order
    /// (a generator that set a field conditionally), so the caller can fall back.
    #[cfg(test)]
    pub(crate) fn fill(&self, fields: &[(Cow<'static, str>, Scalar)]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.fixed_len + 64 * fields.len());
        self.fill_into(fields, &mut out).then_some(out)
    }

    /// Fills the holes into `out` (cleared first). False when `fields` were not set in the
    /// template's path order (a generator that set a field conditionally), so the caller
    /// can fall back. Reusing `out` lets the caller allocate each object exactly once.
    pub(crate) fn fill_into(
        &self,
        fields: &[(Cow<'static, str>, Scalar)],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        if fields.len() != self.paths.len()
            || fields
                .iter()
                .zip(&self.paths)
                .any(|((p, _), q)| p.as_ref() != q.as_str())
        {
            return false;
        }
        out.reserve(self.fixed_len + 32 * fields.len());
        for (segment, &(hole, depth)) in self.segments.iter().zip(&self.gaps) {
            out.extend_from_slice(segment);
            fields[hole].1.write(depth, out);
        }
        if let Some(last) = self.segments.last() {
            out.extend_from_slice(last);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_stripe() {
        let v = json!({"b": [1, {"x": null}], "object": "thing", "id": "t_1", "a": {}, "c": []});
        let out = String::from_utf8(render_top(&v)).unwrap_or_default();
        let expected = "{\n  \"id\": \"t_1\",\n  \"object\": \"thing\",\n  \"a\": {},\n  \"b\": [\n    1,\n    {\n      \"x\": null\n    }\n  ],\n  \"c\": []\n}";
        assert_eq!(out, expected);
        let parsed: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed, v);
    }

    #[test]
    fn list_depth_dedents_to_top_level() {
        let v = json!({"id": "x", "nested": {"k": [1, 2]}, "s": "a\nb \"q\" \u{1}"});
        let mut cached = Vec::new();
        render(&v, LIST_DEPTH, &mut cached);
        assert_eq!(dedent_list_item(&cached), render_top(&v));
    }

    #[test]
    fn template_fill_equals_direct_render() {
        let fixture = json!({"id": "x", "created": 1, "nested": {"list": [{"v": 1}]}, "keep": "k"});
        let paths = vec![
            "id".to_owned(),
            "created".to_owned(),
            "nested.list.0.v".to_owned(),
        ];
        let template = Template::new(&fixture, paths.clone());
        assert!(template.is_some());
        let Some(template) = template else { return };
        let values = vec![
            Scalar::Str("ch_\"1".to_owned()),
            Scalar::Int(42),
            Scalar::Json(json!({"deep": [true]})),
        ];
        let fields: Vec<(Cow<'static, str>, Scalar)> =
            paths.into_iter().map(Cow::Owned).zip(values).collect();
        let filled = template.fill(&fields).unwrap_or_default();
        let mut direct = fixture.clone();
        for (p, v) in fields {
            set_path(&mut direct, &p, v.into_value());
        }
        let mut expected = Vec::new();
        render(&direct, LIST_DEPTH, &mut expected);
        assert_eq!(
            String::from_utf8_lossy(&filled),
            String::from_utf8_lossy(&expected)
        );
        assert!(template.fill(&[]).is_none());
    }
}
