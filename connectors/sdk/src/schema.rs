//! Declared stream schemas: columns and their types, primary key, cursor field.
//!
//! A connector ships one JSON file per stream (`schemas/<vendor>/<stream>.json`, embedded
//! with `include_str!`) and loads them all with [`load`]. Column names are the Segment-style flattened names
//! (`billing_details_address_city`); nested objects not named as a column are flattened,
//! arrays and maps declared as `json` are kept as JSON text. A field the vendor adds later
//! becomes a new nullable column at sync time (see [`crate::convert`]).

use crate::error::{Error, Result};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// When the stream's record was fetched from the vendor.
pub const RECEIVED_AT: &str = "received_at";
/// When Tributary wrote the record into the table.
pub const UUID_TS: &str = "uuid_ts";
/// Whether the vendor deleted the object.
pub const IS_DELETED: &str = "is_deleted";
/// Values that did not fit their column's type, as a JSON object `{column: value}`.
pub const RESCUED: &str = "_rescued_data";

/// The columns every table has besides the vendor's, in this order, at the end.
pub const SYSTEM_COLUMNS: [&str; 4] = [RECEIVED_AT, UUID_TS, IS_DELETED, RESCUED];

/// The type of a column, as written in a schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text. An object with an `id` landing here keeps its id (an expanded
    /// reference); any other non-text value keeps its JSON text.
    String,
    /// 64-bit signed integer (amounts are integers in the currency's minor unit).
    Integer,
    /// 64-bit float.
    Number,
    /// Boolean.
    Boolean,
    /// UTC timestamp (microseconds), from Unix seconds or an RFC 3339 string.
    Timestamp,
    /// A calendar date without a time of day (Arrow `Date32`), from `YYYY-MM-DD` text (or
    /// the date part of an RFC 3339 timestamp).
    Date,
    /// Arrays and free-form maps, kept as compact JSON text.
    Json,
}

impl ColumnType {
    /// The Arrow type this column is stored as.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Json => DataType::Utf8,
            ColumnType::Integer => DataType::Int64,
            ColumnType::Number => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Date => DataType::Date32,
        }
    }

    /// The column type an existing table's Arrow type maps back to. JSON text columns read
    /// back as `String`, which behaves the same for every value but objects.
    pub fn from_arrow(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                ColumnType::Integer
            }
            DataType::Float32 | DataType::Float64 => ColumnType::Number,
            DataType::Boolean => ColumnType::Boolean,
            DataType::Timestamp(_, _) => ColumnType::Timestamp,
            DataType::Date32 => ColumnType::Date,
            _ => return None,
        })
    }
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The flattened snake_case name.
    pub name: String,
    /// The type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// What the column holds, for `discover` and generated docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What kind of records a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Objects with an identity that change over time (customers, charges).
    #[default]
    Objects,
    /// Immutable events, appended as they happen; also delivered as Tracking-API messages.
    Events,
}

/// The rule that marks a record deleted: `field` equals `equals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionRule {
    /// Top-level field of the record, e.g. `deleted` or `status`.
    pub field: String,
    /// The value that means deleted, e.g. `true` or `"deleted"`.
    pub equals: serde_json::Value,
}

/// A stream's schema, as declared in its schema file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSchema {
    /// The stream's name, which is also its table's name.
    pub name: String,
    /// Objects or events.
    #[serde(default)]
    pub kind: StreamKind,
    /// The column identifying a record (always `id` for Segment-style tables).
    #[serde(default = "default_primary_key")]
    pub primary_key: String,
    /// The vendor field incremental syncs advance on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_field: Option<String>,
    /// How a record says it was deleted, if the vendor can delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<DeletionRule>,
    /// The declared columns, without the system columns.
    pub columns: Vec<Column>,
}

fn default_primary_key() -> String {
    "id".to_owned()
}

impl StreamSchema {
    /// Parses and validates a schema file's text.
    pub fn from_json(text: &str) -> Result<Self> {
        let schema: StreamSchema = serde_json::from_str(text).map_err(|e| Error::Schema {
            stream: "?".into(),
            message: format!("invalid schema file: {e}"),
        })?;
        schema.validate()?;
        Ok(schema)
    }

    /// Checks names: non-empty, unique, snake_case, primary key declared, no clash with
    /// the system columns.
    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Schema {
            stream: self.name.clone(),
            message,
        };
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if !is_column_name(&c.name) {
                return Err(err(format!("column `{}` is not a snake_case name", c.name)));
            }
            if SYSTEM_COLUMNS.contains(&c.name.as_str()) {
                return Err(err(format!("column `{}` is a system column", c.name)));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(err(format!("column `{}` is declared twice", c.name)));
            }
        }
        if !seen.contains(self.primary_key.as_str()) {
            return Err(err(format!(
                "primary key `{}` is not a declared column",
                self.primary_key
            )));
        }
        Ok(())
    }

    /// The column of this name, if declared.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The full Arrow schema of the table: declared columns, then the system columns.
    pub fn arrow_schema(&self) -> Arc<Schema> {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.arrow_type(), true))
            .collect();
        fields.extend(system_fields());
        Arc::new(Schema::new(fields))
    }
}

/// Loads a vendor's declared schemas from `files`, `(stream, text)` pairs, the text being
/// that of `schemas/<vendor>/<stream>.json` (embedded with `include_str!`). Parses and
/// validates each file and checks that it declares the stream it is filed under (its
/// `name`) and that no stream comes twice. An error is an [`Error::Schema`] naming the
/// stream and the file.
pub fn load<'a>(
    vendor: &str,
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<StreamSchema>> {
    let mut schemas: Vec<StreamSchema> = Vec::new();
    for (stream, text) in files {
        let err = |message: String| Error::Schema {
            stream: stream.to_owned(),
            message: format!("schemas/{vendor}/{stream}.json: {message}"),
        };
        let schema = StreamSchema::from_json(text).map_err(|e| match e {
            Error::Schema { message, .. } => err(message),
            other => other,
        })?;
        if schema.name != stream {
            return Err(err(format!(
                "the schema file is named `{}`, not after its stream",
                schema.name
            )));
        }
        if schemas.iter().any(|s| s.name == stream) {
            return Err(err("the stream has two schema files".to_owned()));
        }
        schemas.push(schema);
    }
    Ok(schemas)
}

/// The Arrow fields of the system columns.
pub fn system_fields() -> Vec<Field> {
    vec![
        Field::new(RECEIVED_AT, ColumnType::Timestamp.arrow_type(), true),
        Field::new(UUID_TS, ColumnType::Timestamp.arrow_type(), true),
        Field::new(IS_DELETED, DataType::Boolean, true),
        Field::new(RESCUED, DataType::Utf8, true),
    ]
}

/// Whether `name` is a column name Segment would produce: lowercase ASCII letters, digits
/// and underscores, not starting with a digit.
pub fn is_column_name(name: &str) -> bool {
    // Bytes, not chars: every allowed character is ASCII, and this runs for every key of
    // every record the converter reads.
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Turns a vendor field name into a Segment-style column name: snake_case, ASCII, with
/// every other character replaced by `_` (`billingDetails` → `billing_details`,
/// `Account.Name` → `account_name`, `Custom__c` → `custom__c`).
pub fn to_column_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower_or_digit = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower_or_digit {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower_or_digit = false;
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            prev_lower_or_digit = true;
        } else {
            out.push('_');
            prev_lower_or_digit = false;
        }
    }
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_segment_style() {
        assert_eq!(to_column_name("billing_details"), "billing_details");
        assert_eq!(to_column_name("billingDetails"), "billing_details");
        assert_eq!(to_column_name("SystemModstamp"), "system_modstamp");
        assert_eq!(to_column_name("Custom__c"), "custom__c");
        assert_eq!(to_column_name("a-b c"), "a_b_c");
        assert_eq!(to_column_name("3ds"), "_3ds");
        assert!(is_column_name("billing_details_address_city"));
        assert!(!is_column_name("Billing"));
    }

    #[test]
    fn date_columns_are_arrow_date32_both_ways() {
        let schema = StreamSchema::from_json(
            r#"{"name":"x","columns":[{"name":"id","type":"string"},{"name":"close_date","type":"date"}]}"#,
        )
        .unwrap();
        let arrow = schema.arrow_schema();
        let field = arrow.field_with_name("close_date").unwrap();
        assert_eq!(field.data_type(), &DataType::Date32);
        assert_eq!(
            ColumnType::from_arrow(field.data_type()),
            Some(ColumnType::Date)
        );
    }

    #[test]
    fn load_names_the_stream_and_file_in_errors() {
        let good = r#"{"name":"charges","columns":[{"name":"id","type":"string"}]}"#;
        let loaded = load("stripe", [("charges", good)]).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name, "charges");
        let e = load("stripe", [("refunds", good)]).unwrap_err();
        assert!(
            matches!(&e, Error::Schema { stream, message } if stream == "refunds"
                && message.contains("schemas/stripe/refunds.json")
                && message.contains("`charges`")),
            "{e}"
        );
        let e = load("stripe", [("charges", "{")]).unwrap_err();
        assert!(
            matches!(&e, Error::Schema { stream, message } if stream == "charges"
                && message.contains("invalid schema file")),
            "{e}"
        );
        let twice = r#"{"name":"charges","columns":[{"name":"id","type":"string"},{"name":"id","type":"string"}]}"#;
        let e = load("stripe", [("charges", twice)]).unwrap_err();
        assert!(
            matches!(&e, Error::Schema { stream, .. } if stream == "charges"),
            "{e}"
        );
        let e = load("stripe", [("charges", good), ("charges", good)]).unwrap_err();
        assert!(e.to_string().contains("two schema files"), "{e}");
    }

    #[test]
    fn rejects_bad_schemas() {
        let e = StreamSchema::from_json(
            r#"{"name":"x","columns":[{"name":"id","type":"string"},{"name":"id","type":"integer"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("declared twice"), "{e}");
        let e = StreamSchema::from_json(r#"{"name":"x","columns":[{"name":"a","type":"string"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("primary key `id`"), "{e}");
        let e = StreamSchema::from_json(r#"{"name":"x","columns":[{"name":"id","type":"uuid"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }
}
