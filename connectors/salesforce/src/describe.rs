//! From the org's describe to streams: which fields an object's SOQL selects, the typed
//! columns they land in, the cursor field, and the table's name.
//!
//! Naming follows Segment: tables and columns are the snake_case of the API names
//! (`OpportunityHistory` → `opportunity_history`, `SystemModstamp` → `system_modstamp`,
//! `Customer_Since__c` → `customer_since__c`). Compound fields (`address`, `location`) are
//! read as their components, which describe lists as fields of their own (`BillingCity`,
//! `Store_Location__Latitude__s`): Bulk API cannot select compounds, and the components
//! are what the compound would flatten to. `base64` fields (file bodies) are not read.
//! `IsDeleted` lands in the `is_deleted` system column.

use std::collections::HashMap;

use tributary_sdk::schema::{DeletionRule, SYSTEM_COLUMNS, to_column_name};
use tributary_sdk::{Column, ColumnType, Error, Result, StreamKind, StreamSchema};

use crate::client::{FieldDescribe, ObjectDescribe};
use crate::config::FieldSelection;

/// The fields an incremental read can advance on, best first.
pub const CURSOR_FIELDS: [&str; 3] = ["SystemModstamp", "LastModifiedDate", "CreatedDate"];

/// The field that flags soft-deleted records in `queryAll` results.
pub const DELETED_FIELD: &str = "IsDeleted";

/// How one object is read and landed.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectPlan {
    /// The object's API name.
    pub object: String,
    /// The stream: table name, typed columns, cursor.
    pub schema: StreamSchema,
    /// The fields the SOQL selects, in describe order (with `Id`, the cursor field and
    /// `IsDeleted` when the object has them).
    pub select: Vec<String>,
    /// Selected field → column (all but `IsDeleted`).
    pub columns: HashMap<String, String>,
    /// The datetime field incremental reads filter and order on; `None` means every read is
    /// a full snapshot.
    pub cursor_field: Option<String>,
    /// Whether the object has `IsDeleted`.
    pub has_is_deleted: bool,
}

/// The column type of a Salesforce field type; `None` for fields that are not read.
pub fn column_type(salesforce_type: &str) -> Option<ColumnType> {
    Some(match salesforce_type {
        "address" | "location" | "base64" => return None,
        "double" | "currency" | "percent" => ColumnType::Number,
        "int" | "long" => ColumnType::Integer,
        "boolean" => ColumnType::Boolean,
        "date" => ColumnType::Date,
        "datetime" => ColumnType::Timestamp,
        "json" | "complexvalue" => ColumnType::Json,
        // id, reference, string, picklist, multipicklist, textarea, phone, url, email,
        // combobox, encryptedstring, time, anyType, and whatever comes next: text.
        _ => ColumnType::String,
    })
}

/// The table of an object: `OpportunityHistory` → `opportunity_history`.
pub fn table_name(object: &str) -> String {
    to_column_name(object)
}

/// Plans the read of `describe`'s object with the configured field `selection`.
pub fn plan(describe: &ObjectDescribe, selection: &FieldSelection) -> Result<ObjectPlan> {
    let object = describe.name.clone();
    let fields = &describe.fields;
    let find = |name: &str| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name));
    let id = find("Id").ok_or_else(|| Error::Schema {
        stream: table_name(&object),
        message: format!("the describe of {object} has no Id field"),
    })?;
    let cursor_field = CURSOR_FIELDS
        .iter()
        .find_map(|name| find(name).filter(|f| f.ty == "datetime"))
        .map(|f| f.name.clone());
    let deleted = find(DELETED_FIELD).filter(|f| f.ty == "boolean");
    let readable = |f: &FieldDescribe| column_type(&f.ty).is_some();
    let components = |compound: &FieldDescribe| -> Vec<&FieldDescribe> {
        fields
            .iter()
            .filter(|f| {
                f.compound_field_name
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(&compound.name))
                    && readable(f)
            })
            .collect()
    };
    // A configured name → the fields it stands for.
    let resolve = |name: &str, key: &str| -> Result<Vec<String>> {
        let Some(field) = find(name) else {
            return Err(Error::config(
                key,
                format!(
                    "{object} has no field `{name}` (field names are API names, e.g. `Custom_Field__c`)"
                ),
            ));
        };
        if readable(field) {
            return Ok(vec![field.name.clone()]);
        }
        let parts = components(field);
        if parts.is_empty() {
            return Err(Error::config(
                key,
                format!(
                    "{object}.{} is a `{}` field, which is not read",
                    field.name, field.ty
                ),
            ));
        }
        Ok(parts.into_iter().map(|f| f.name.clone()).collect())
    };
    let key = |list: &str| format!("fields.{object}.{list}");

    let mut wanted: Vec<String> = match &selection.include {
        Some(include) => {
            let mut out = Vec::new();
            for name in include {
                out.extend(resolve(name, &key("include"))?);
            }
            out
        }
        None => fields
            .iter()
            .filter(|f| readable(f))
            .map(|f| f.name.clone())
            .collect(),
    };
    for name in &selection.exclude {
        let excluded = resolve(name, &key("exclude"))?;
        for field in &excluded {
            let required = field.eq_ignore_ascii_case(&id.name)
                || cursor_field
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(field));
            if required {
                return Err(Error::config(
                    key("exclude"),
                    format!("{object}.{field} is always read (the id or the cursor field)"),
                ));
            }
        }
        wanted.retain(|w| !excluded.iter().any(|e| e.eq_ignore_ascii_case(w)));
    }
    for always in [
        Some(id.name.clone()),
        cursor_field.clone(),
        deleted.map(|d| d.name.clone()),
    ]
    .into_iter()
    .flatten()
    {
        if !wanted.iter().any(|w| w.eq_ignore_ascii_case(&always)) {
            wanted.push(always);
        }
    }
    // Describe order, once each.
    let select: Vec<String> = fields
        .iter()
        .filter(|f| wanted.iter().any(|w| w.eq_ignore_ascii_case(&f.name)))
        .map(|f| f.name.clone())
        .collect();

    let table = table_name(&object);
    let mut columns = HashMap::new();
    let mut schema_columns: Vec<Column> = Vec::new();
    for name in &select {
        let Some(field) = find(name) else { continue };
        if deleted.is_some_and(|d| d.name == field.name) {
            continue;
        }
        let Some(ty) = column_type(&field.ty) else {
            continue;
        };
        let mut column = to_column_name(&field.name);
        if SYSTEM_COLUMNS.contains(&column.as_str()) {
            column = format!("vendor_{column}");
        }
        if schema_columns.iter().any(|c| c.name == column) {
            let base = column.clone();
            let mut n = 2;
            while schema_columns.iter().any(|c| c.name == column) {
                column = format!("{base}_{n}");
                n += 1;
            }
            tracing::warn!(object = %object, field = %field.name, column = %column, "Two fields share a column name; this one gets a suffix.");
        }
        columns.insert(field.name.clone(), column.clone());
        schema_columns.push(Column {
            name: column,
            ty,
            description: (!field.label.is_empty()).then(|| field.label.clone()),
        });
    }
    let schema = StreamSchema {
        name: table,
        kind: StreamKind::Objects,
        primary_key: columns
            .get(&id.name)
            .cloned()
            .unwrap_or_else(|| "id".to_owned()),
        cursor_field: cursor_field.as_ref().and_then(|c| columns.get(c).cloned()),
        deletion: deleted.map(|d| DeletionRule {
            field: d.name.clone(),
            equals: serde_json::Value::Bool(true),
        }),
        columns: schema_columns,
    };
    schema.validate()?;
    Ok(ObjectPlan {
        object,
        schema,
        select,
        columns,
        cursor_field,
        has_is_deleted: deleted.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: &str, compound: Option<&str>) -> FieldDescribe {
        FieldDescribe {
            name: name.into(),
            ty: ty.into(),
            label: format!("{name} label"),
            compound_field_name: compound.map(str::to_owned),
        }
    }

    fn account() -> ObjectDescribe {
        ObjectDescribe {
            name: "Account".into(),
            fields: vec![
                field("Id", "id", None),
                field("IsDeleted", "boolean", None),
                field("Name", "string", None),
                field("BillingStreet", "textarea", Some("BillingAddress")),
                field("BillingCity", "string", Some("BillingAddress")),
                field("BillingLatitude", "double", Some("BillingAddress")),
                field("BillingAddress", "address", None),
                field("AnnualRevenue", "currency", None),
                field("NumberOfEmployees", "int", None),
                field("Customer_Since__c", "date", None),
                field("Logo__c", "base64", None),
                field("CreatedDate", "datetime", None),
                field("LastModifiedDate", "datetime", None),
                field("SystemModstamp", "datetime", None),
                field("OwnerId", "reference", None),
            ],
        }
    }

    #[test]
    fn plans_typed_snake_case_columns() {
        let p = plan(&account(), &FieldSelection::default()).unwrap();
        assert_eq!(p.schema.name, "account");
        assert_eq!(p.cursor_field.as_deref(), Some("SystemModstamp"));
        assert_eq!(p.schema.cursor_field.as_deref(), Some("system_modstamp"));
        assert!(p.has_is_deleted);
        assert!(
            !p.select
                .iter()
                .any(|f| f == "BillingAddress" || f == "Logo__c")
        );
        assert!(p.select.iter().any(|f| f == "IsDeleted"));
        let ty = |c: &str| p.schema.column(c).map(|c| c.ty);
        assert_eq!(ty("id"), Some(ColumnType::String));
        assert_eq!(ty("billing_city"), Some(ColumnType::String));
        assert_eq!(ty("billing_latitude"), Some(ColumnType::Number));
        assert_eq!(ty("annual_revenue"), Some(ColumnType::Number));
        assert_eq!(ty("number_of_employees"), Some(ColumnType::Integer));
        assert_eq!(ty("customer_since__c"), Some(ColumnType::Date));
        assert_eq!(ty("system_modstamp"), Some(ColumnType::Timestamp));
        assert_eq!(ty("owner_id"), Some(ColumnType::String));
        assert_eq!(
            ty("is_deleted"),
            None,
            "IsDeleted lands in the system column"
        );
        assert_eq!(ty("billing_address"), None);
        assert_eq!(p.columns["OwnerId"], "owner_id");
        assert_eq!(table_name("OpportunityHistory"), "opportunity_history");
    }

    #[test]
    fn include_and_exclude_lists() {
        let include = FieldSelection {
            include: Some(vec!["name".into(), "BillingAddress".into()]),
            exclude: vec![],
        };
        let p = plan(&account(), &include).unwrap();
        assert_eq!(
            p.select,
            vec![
                "Id",
                "IsDeleted",
                "Name",
                "BillingStreet",
                "BillingCity",
                "BillingLatitude",
                "SystemModstamp"
            ]
        );
        let exclude = FieldSelection {
            include: None,
            exclude: vec!["AnnualRevenue".into()],
        };
        let p = plan(&account(), &exclude).unwrap();
        assert!(!p.select.iter().any(|f| f == "AnnualRevenue"));
        assert!(p.select.iter().any(|f| f == "Name"));

        for (selection, key, text) in [
            (
                FieldSelection {
                    include: Some(vec!["Nmae".into()]),
                    exclude: vec![],
                },
                "fields.Account.include",
                "no field `Nmae`",
            ),
            (
                FieldSelection {
                    include: Some(vec!["Logo__c".into()]),
                    exclude: vec![],
                },
                "fields.Account.include",
                "base64",
            ),
            (
                FieldSelection {
                    include: None,
                    exclude: vec!["SystemModstamp".into()],
                },
                "fields.Account.exclude",
                "always read",
            ),
        ] {
            match plan(&account(), &selection).unwrap_err() {
                Error::Config { key: k, message } => {
                    assert_eq!(k, key);
                    assert!(message.contains(text), "{message}");
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn cursor_falls_back_and_objects_without_one_are_snapshots() {
        let history = ObjectDescribe {
            name: "OpportunityHistory".into(),
            fields: vec![
                field("Id", "id", None),
                field("CreatedDate", "datetime", None),
                field("StageName", "picklist", None),
            ],
        };
        let p = plan(&history, &FieldSelection::default()).unwrap();
        assert_eq!(p.cursor_field.as_deref(), Some("CreatedDate"));
        assert!(!p.has_is_deleted);
        let status = ObjectDescribe {
            name: "CaseStatus".into(),
            fields: vec![
                field("Id", "id", None),
                field("MasterLabel", "string", None),
            ],
        };
        let p = plan(&status, &FieldSelection::default()).unwrap();
        assert_eq!(p.cursor_field, None);
        assert_eq!(p.schema.cursor_field, None);
    }

    #[test]
    fn clashing_names_get_distinct_columns() {
        let odd = ObjectDescribe {
            name: "Odd__c".into(),
            fields: vec![
                field("Id", "id", None),
                field("aB", "string", None),
                field("A_B", "string", None),
                field("Received_At", "datetime", None),
            ],
        };
        let p = plan(&odd, &FieldSelection::default()).unwrap();
        assert_eq!(p.columns["aB"], "a_b");
        assert_eq!(p.columns["A_B"], "a_b_2");
        assert_eq!(p.columns["Received_At"], "vendor_received_at");
    }
}
