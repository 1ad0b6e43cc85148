//! Reading options (a connector's `[sources.<name>]`, the runtime's own sections) into typed
//! configs, with errors a user can act on and that are safe to print.
//!
//! Guarantees: an error names the option by its full path (`fields.Account.include`,
//! `objects[2]`), and never carries the option's value. Serde's own messages embed it
//! (`invalid type: string "sk_live_…", expected u32`), and a `${ENV}` reference may have
//! put a secret in any option, so those messages are rewritten to say what was expected
//! and what *kind* of value was found ("expected an integer, found text").

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::{Path, Segment};

use crate::error::{Error, Result};

/// Deserializes `value` into `T`. An error is an [`Error::Config`] whose `key` is the
/// offending option's full path and whose message holds no value.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    // Kept to tell the kind of the offending value; options are a few keys, cheap to copy.
    let original = value.clone();
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().clone();
        describe(&original, &path, &e.into_inner().to_string())
    })
}

/// Checks that `value` of option `key` is within `min..=max`; the error states the range.
/// NaN is never within range.
pub fn check_range<T: PartialOrd + Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::config(
            key,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// Turns a deserializer message at `path` into an [`Error::Config`] without the value.
fn describe(original: &Value, path: &Path, message: &str) -> Error {
    let mut key = render(path);
    let found = lookup(original, path);
    let join = |key: &str, field: &str| {
        if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        }
    };
    let text = if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        let expected = rest
            .rfind(", expected ")
            .map(|i| &rest[i + ", expected ".len()..])
            .unwrap_or("another value");
        let (expected, integer) = humanize(expected);
        let found = match found {
            Some(Value::Number(n)) if integer && (n.is_i64() || n.is_u64()) => {
                "an integer out of that range"
            }
            Some(v) => kind(v),
            None => "another kind of value",
        };
        format!("expected {expected}, found {found}")
    } else if let Some(rest) = message.strip_prefix("invalid length ") {
        let expected = rest
            .find(", expected ")
            .map(|i| &rest[i + ", expected ".len()..])
            .unwrap_or("another length");
        format!("expected {expected}, found a list of another length")
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        // The variant is the value as written; the choices are not.
        match rest.find(", expected ") {
            Some(i) => format!("expected {}", &rest[i + ", expected ".len()..]),
            None => "is not one of the accepted values".to_owned(),
        }
    } else if let Some(field) = backticked(message, "missing field ") {
        // The path ends at the table that lacks the key: serde reports the key itself only
        // in its message (`de::Error::missing_field` has no structured form).
        key = join(&key, field);
        "is missing".to_owned()
    } else if let Some(field) = backticked(message, "unknown field ") {
        // The path ends with the unknown key (serde_path_to_error records a map key before
        // it is matched against the fields), except inside content serde buffers first
        // (internally tagged enums, flattened structs), where the path stops at the table
        // and only the message names the key. The message names only keys: the unknown
        // one and the accepted ones.
        let last = matches!(path.iter().next_back(), Some(Segment::Map { key }) if key == field);
        if !last {
            key = join(&key, field);
        }
        message.to_owned()
    } else if message.starts_with("duplicate field ") {
        message.to_owned()
    } else {
        // A type's own message (a date that does not parse, …): mask the value if it is in.
        let mut text = message.to_owned();
        if let Some(Value::String(s)) = found
            && !s.is_empty()
        {
            text = text.replace(s.as_str(), "…");
        }
        crate::secret::scrub(&text).into_owned()
    };
    let key = if key.is_empty() {
        "options".to_owned()
    } else {
        key
    };
    Error::Config { key, message: text }
}

/// `field`, when `message` is `<prefix>` followed by `` `field` `` and maybe more.
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.find('`').map(|end| &rest[..end])
}

/// `a.b[2].c`; empty for the top level.
fn render(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The value at `path` in `value`, if the path leads to one.
fn lookup<'a>(value: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut here = value;
    for segment in path.iter() {
        here = match segment {
            Segment::Seq { index } => here.get(*index)?,
            Segment::Map { key } => here.get(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(here)
}

/// What kind of value `v` is, in the config file's words.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "true or false",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Serde's `expected …` (a type's description, never a value) in the config file's words,
/// and whether it is an integer type.
fn humanize(expected: &str) -> (String, bool) {
    let integer = |min: i128, max: i128| (format!("an integer from {min} to {max}"), true);
    match expected {
        "u8" => integer(0, u8::MAX.into()),
        "u16" => integer(0, u16::MAX.into()),
        "u32" => integer(0, u32::MAX.into()),
        "u64" | "usize" => integer(0, u64::MAX.into()),
        "i8" => integer(i8::MIN.into(), i8::MAX.into()),
        "i16" => integer(i16::MIN.into(), i16::MAX.into()),
        "i32" => integer(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => integer(i64::MIN.into(), i64::MAX.into()),
        "f32" | "f64" => ("a number".to_owned(), false),
        "a string" | "a borrowed string" | "a character" | "a char" => ("text".to_owned(), false),
        "a boolean" => ("true or false".to_owned(), false),
        "a sequence" => ("a list".to_owned(), false),
        "a map" | "map" => ("a table".to_owned(), false),
        other if other.starts_with("struct ") => ("a table".to_owned(), false),
        other => (other.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Options {
        api_key: crate::Secret,
        #[serde(default)]
        page_size: Option<u32>,
        #[serde(default)]
        rate: Option<f64>,
        #[serde(default)]
        fields: BTreeMap<String, Selection>,
        #[serde(default)]
        objects: Vec<String>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Selection {
        include: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        Fast,
        Slow,
    }

    fn err(value: Value) -> (String, String) {
        match from_value::<Options>(value).unwrap_err() {
            Error::Config { key, message } => (key, message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_wrong_type_names_the_path_and_not_the_value() {
        let (key, message) = err(serde_json::json!({
            "api_key": "k", "page_size": "sk_live_never_printed"
        }));
        assert_eq!(key, "page_size");
        assert_eq!(
            message,
            "expected an integer from 0 to 4294967295, found text"
        );
        let (key, message) = err(serde_json::json!({"api_key": "k", "page_size": -5}));
        assert_eq!(key, "page_size");
        assert!(message.contains("out of that range"), "{message}");
        let (key, message) = err(serde_json::json!({"api_key": 12345678}));
        assert_eq!(
            (key.as_str(), message.as_str()),
            ("api_key", "expected text, found an integer")
        );
        let (key, message) = err(serde_json::json!({"api_key": "k", "rate": "fast-secret"}));
        assert_eq!(
            (key.as_str(), message.as_str()),
            ("rate", "expected a number, found text")
        );
    }

    #[test]
    fn nested_paths_are_full() {
        let (key, message) = err(serde_json::json!({
            "api_key": "k", "fields": {"Account": {"include": "Name-secret"}}
        }));
        assert_eq!(key, "fields.Account.include");
        assert_eq!(message, "expected a list, found text");
        let (key, _) = err(serde_json::json!({"api_key": "k", "objects": ["A", 7]}));
        assert_eq!(key, "objects[1]");
    }

    #[test]
    fn missing_unknown_and_variants() {
        let (key, message) = err(serde_json::json!({}));
        assert_eq!((key.as_str(), message.as_str()), ("api_key", "is missing"));
        let (key, message) = err(serde_json::json!({"api_key": "k", "page_sise": 5}));
        assert_eq!(key, "page_sise");
        assert!(message.contains("unknown field `page_sise`") && message.contains("`page_size`"));
        let (key, message) = err(serde_json::json!({
            "api_key": "k", "fields": {"Account": {"includ": []}}
        }));
        assert_eq!(key, "fields.Account.includ", "{message}");
        let (key, message) = err(serde_json::json!({"api_key": "k", "mode": "sk_live_variant"}));
        assert_eq!(key, "mode");
        assert!(
            !message.contains("sk_live_variant") && message.contains("`fast`"),
            "{message}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "flow", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Flow {
        Password { user: String },
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        auth: Flow,
        #[serde(default)]
        pages: Vec<Selection>,
    }

    #[test]
    fn unknown_keys_are_named_by_their_path_at_any_depth() {
        for (value, want) in [
            (
                serde_json::json!({"auth": {"flow": "password", "user": "u"}, "extra": 1}),
                "extra",
            ),
            (
                serde_json::json!({"auth": {"flow": "password", "user": "u"}, "pages": [{}, {"includ": []}]}),
                "pages[1].includ",
            ),
            (
                serde_json::json!({"auth": {"flow": "password", "user": "u", "usr": "x"}}),
                "auth.usr",
            ),
        ] {
            let err = from_value::<Nested>(value).unwrap_err();
            let Error::Config { key, message } = err else {
                panic!("{err}")
            };
            assert_eq!(key, want, "{message}");
            assert!(message.starts_with("unknown field"), "{message}");
        }
    }

    #[test]
    fn ranges_are_stated() {
        assert_eq!(check_range("page_size", 5u32, 1, 100).unwrap(), 5);
        let e = check_range("page_size", 500u32, 1, 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid option `page_size`: must be between 1 and 100"
        );
        assert!(check_range("rate", f64::NAN, 0.1, 10.0).is_err());
    }
}
