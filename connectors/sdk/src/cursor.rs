//! Cursors as committed: a connector's typed [`crate::Connector::Cursor`] travels as JSON
//! from a page (committed with the page's rows) to the next run's read. These two
//! functions are the one place it is encoded and decoded, so a connector never handles
//! the JSON form.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// Decodes the committed cursor of `stream`: `None` when there is none or it is `null`
/// (a connector may commit `null` for "no position yet"), [`Error::Cursor`] naming the
/// stream when it does not fit `C`.
pub fn decode<C: DeserializeOwned>(stream: &str, committed: Option<Value>) -> Result<Option<C>> {
    match committed {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::Cursor {
                stream: stream.to_owned(),
                message: e.to_string(),
            }),
    }
}

/// Encodes `cursor` as it is committed. A cursor is plain data (structs, enums, strings,
/// numbers, lists, maps keyed by text), which always encodes; anything else would fail
/// serde's encoding and is committed as `null`, i.e. no position.
pub fn encode<C: Serialize + ?Sized>(cursor: &C) -> Value {
    serde_json::to_value(cursor).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "phase", rename_all = "snake_case")]
    enum Cursor {
        Walking { after: String },
        Done { at: i64 },
    }

    #[test]
    fn round_trips_and_null_is_none() {
        for cursor in [
            Cursor::Walking { after: "a".into() },
            Cursor::Done { at: 9 },
        ] {
            let json = encode(&cursor);
            assert_eq!(decode::<Cursor>("s", Some(json)).unwrap(), Some(cursor));
        }
        assert_eq!(encode(&None::<Cursor>), Value::Null);
        assert_eq!(decode::<Cursor>("s", Some(Value::Null)).unwrap(), None);
        assert_eq!(decode::<Cursor>("s", None).unwrap(), None);
    }

    #[test]
    fn an_undecodable_cursor_names_its_stream() {
        let err = decode::<Cursor>("charges", Some(json!({"phase": "later"}))).unwrap_err();
        assert!(
            matches!(err, Error::Cursor { ref stream, ref message } if stream == "charges" && message.contains("later")),
            "{err}"
        );
    }
}
