//! The simulated org: its objects' metadata (what describe returns), their records, the
//! changes tests make, and SOQL queries over them.
//!
//! Every object but `User` and `CaseStatus` has the audit fields (`CreatedDate`,
//! `LastModifiedDate`, `SystemModstamp`, `IsDeleted`, …); `OpportunityHistory` has only
//! `CreatedDate` and `SystemModstamp`, as in Salesforce. `CaseStatus` is simplified to have
//! no audit field at all, so it exercises full-snapshot reads. `Invoice__c` is a custom
//! object with a geolocation compound field, and `Account` has custom fields. On request,
//! `Wide_Object__c` has hundreds of custom fields with long names. Datetimes are
//! stored as Salesforce's REST API prints them (`2024-05-01T12:00:00.000+0000`), to the
//! second.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::soql::{self, Literal, Query, Selection};

/// One field's metadata.
#[derive(Debug, Clone)]
pub(crate) struct FieldMeta {
    pub(crate) name: String,
    pub(crate) ty: String,
    pub(crate) label: String,
    pub(crate) compound: Option<String>,
    pub(crate) reference_to: Option<String>,
    pub(crate) custom: bool,
}

/// One object's metadata.
#[derive(Debug, Clone)]
pub(crate) struct ObjectMeta {
    pub(crate) name: String,
    pub(crate) label: String,
    pub(crate) key_prefix: String,
    pub(crate) custom: bool,
    pub(crate) fields: Vec<FieldMeta>,
}

impl ObjectMeta {
    pub(crate) fn field(&self, name: &str) -> Option<&FieldMeta> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// An object and its records, by Id.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) meta: ObjectMeta,
    pub(crate) records: BTreeMap<String, Map<String, Value>>,
    next: u64,
}

/// The org.
#[derive(Debug)]
pub(crate) struct Org {
    pub(crate) tables: Vec<Table>,
    rng: StdRng,
}

/// The time format of stored datetimes.
pub(crate) fn format_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.000+0000").to_string()
}

fn label_of(name: &str) -> String {
    let base = name.trim_end_matches("__c").trim_end_matches("__s");
    let mut out = String::new();
    let mut prev_lower = false;
    for c in base.chars() {
        if c == '_' {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c);
    }
    out.trim().to_owned()
}

fn reference_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "AccountId" | "Account__c" | "WhatId" => "Account",
        "ContactId" | "WhoId" => "Contact",
        "OwnerId" | "CreatedById" | "LastModifiedById" => "User",
        "OpportunityId" => "Opportunity",
        "CampaignId" => "Campaign",
        "LeadId" => "Lead",
        _ => return None,
    })
}

fn field(name: &str, ty: &str) -> FieldMeta {
    FieldMeta {
        name: name.to_owned(),
        ty: ty.to_owned(),
        label: label_of(name),
        compound: None,
        reference_to: (ty == "reference")
            .then(|| reference_of(name).map(str::to_owned))
            .flatten(),
        custom: name.ends_with("__c") || name.ends_with("__s"),
    }
}

fn fields(list: &[(&str, &str)]) -> Vec<FieldMeta> {
    list.iter().map(|(n, t)| field(n, t)).collect()
}

/// The components of an address compound field `<prefix>Address`, then the compound.
fn address(prefix: &str) -> Vec<FieldMeta> {
    let compound = format!("{prefix}Address");
    let mut out: Vec<FieldMeta> = [
        ("Street", "textarea"),
        ("City", "string"),
        ("State", "string"),
        ("PostalCode", "string"),
        ("Country", "string"),
        ("Latitude", "double"),
        ("Longitude", "double"),
        ("GeocodeAccuracy", "picklist"),
    ]
    .iter()
    .map(|(part, ty)| FieldMeta {
        compound: Some(compound.clone()),
        ..field(&format!("{prefix}{part}"), ty)
    })
    .collect();
    out.push(field(&compound, "address"));
    out
}

/// The components of a geolocation custom field `<name>__c`, then the compound.
fn location(name: &str) -> Vec<FieldMeta> {
    let compound = format!("{name}__c");
    let mut out: Vec<FieldMeta> = ["Latitude", "Longitude"]
        .iter()
        .map(|part| FieldMeta {
            compound: Some(compound.clone()),
            ..field(&format!("{name}__{part}__s"), "double")
        })
        .collect();
    out.push(field(&compound, "location"));
    out
}

/// `Id`, `IsDeleted` and the audit fields every ordinary object has.
fn audit(with_deleted: bool, with_last_modified: bool) -> Vec<FieldMeta> {
    let mut out = vec![field("Id", "id")];
    if with_deleted {
        out.push(field("IsDeleted", "boolean"));
    }
    out.push(field("CreatedDate", "datetime"));
    out.push(field("CreatedById", "reference"));
    if with_last_modified {
        out.push(field("LastModifiedDate", "datetime"));
        out.push(field("LastModifiedById", "reference"));
    }
    out.push(field("SystemModstamp", "datetime"));
    out
}

fn object(
    name: &str,
    prefix: &str,
    mut fields: Vec<FieldMeta>,
    rest: Vec<FieldMeta>,
) -> ObjectMeta {
    fields.extend(rest);
    ObjectMeta {
        name: name.to_owned(),
        label: label_of(name),
        key_prefix: prefix.to_owned(),
        custom: name.ends_with("__c"),
        fields,
    }
}

/// The API name of the wide custom object ([`super::SandboxConfig::wide_fields`]).
pub const WIDE_OBJECT: &str = "Wide_Object__c";

/// The API name of the wide object's custom field number `i`: 40 characters, as long custom
/// field names in real orgs are (`Custom_Field_With_A_Long_Api_Name0001__c`).
pub fn wide_field(i: usize) -> String {
    format!("Custom_Field_With_A_Long_Api_Name{i:04}__c")
}

/// The wide object: the audit fields, a name, an owner and `n` custom fields of assorted
/// types with 40-character names.
fn wide_object(n: usize) -> ObjectMeta {
    const TYPES: [&str; 5] = ["string", "currency", "date", "boolean", "textarea"];
    let mut custom = fields(&[("Name", "string"), ("OwnerId", "reference")]);
    custom.extend((1..=n).map(|i| field(&wide_field(i), TYPES[i % TYPES.len()])));
    object(WIDE_OBJECT, "a02", audit(true, true), custom)
}

/// The objects of the simulated org, in dependency order (referenced objects first), with
/// how many records each gets for `records` accounts, plus the wide object when
/// `wide_fields` is not zero (last, so the other objects are generated the same either way).
fn catalogue(records: usize, wide_fields: usize) -> Vec<(ObjectMeta, usize)> {
    let r = records.max(1);
    let mut objects = vec![
        (
            object(
                "User",
                "005",
                audit(false, true),
                fields(&[
                    ("Username", "string"),
                    ("FirstName", "string"),
                    ("LastName", "string"),
                    ("Name", "string"),
                    ("Email", "email"),
                    ("Title", "string"),
                    ("IsActive", "boolean"),
                ]),
            ),
            (r / 20).max(3),
        ),
        (
            object("Account", "001", audit(true, true), {
                let mut f = fields(&[
                    ("Name", "string"),
                    ("Type", "picklist"),
                    ("Industry", "picklist"),
                    ("AnnualRevenue", "currency"),
                    ("NumberOfEmployees", "int"),
                    ("Phone", "phone"),
                    ("Website", "url"),
                    ("Description", "textarea"),
                    ("OwnerId", "reference"),
                ]);
                f.extend(address("Billing"));
                f.extend(fields(&[
                    ("Tier__c", "picklist"),
                    ("Customer_Since__c", "date"),
                    ("Health_Score__c", "percent"),
                ]));
                f
            }),
            r,
        ),
        (
            object("Campaign", "701", audit(true, true), {
                fields(&[
                    ("Name", "string"),
                    ("Type", "picklist"),
                    ("Status", "picklist"),
                    ("StartDate", "date"),
                    ("EndDate", "date"),
                    ("BudgetedCost", "currency"),
                    ("ActualCost", "currency"),
                    ("IsActive", "boolean"),
                    ("NumberOfLeads", "int"),
                    ("OwnerId", "reference"),
                ])
            }),
            (r / 10).max(3),
        ),
        (
            object("Contact", "003", audit(true, true), {
                let mut f = fields(&[
                    ("AccountId", "reference"),
                    ("FirstName", "string"),
                    ("LastName", "string"),
                    ("Name", "string"),
                    ("Email", "email"),
                    ("Phone", "phone"),
                    ("Title", "string"),
                    ("Birthdate", "date"),
                    ("LeadSource", "picklist"),
                    ("HasOptedOutOfEmail", "boolean"),
                    ("OwnerId", "reference"),
                ]);
                f.extend(address("Mailing"));
                f
            }),
            2 * r,
        ),
        (
            object("Lead", "00Q", audit(true, true), {
                fields(&[
                    ("FirstName", "string"),
                    ("LastName", "string"),
                    ("Name", "string"),
                    ("Company", "string"),
                    ("Email", "email"),
                    ("Status", "picklist"),
                    ("LeadSource", "picklist"),
                    ("Rating", "picklist"),
                    ("IsConverted", "boolean"),
                    ("ConvertedDate", "date"),
                    ("AnnualRevenue", "currency"),
                    ("OwnerId", "reference"),
                ])
            }),
            r,
        ),
        (
            object("Opportunity", "006", audit(true, true), {
                fields(&[
                    ("AccountId", "reference"),
                    ("Name", "string"),
                    ("StageName", "picklist"),
                    ("Amount", "currency"),
                    ("Probability", "percent"),
                    ("CloseDate", "date"),
                    ("Type", "picklist"),
                    ("IsClosed", "boolean"),
                    ("IsWon", "boolean"),
                    ("ForecastCategory", "picklist"),
                    ("CampaignId", "reference"),
                    ("OwnerId", "reference"),
                ])
            }),
            r,
        ),
        (
            object(
                "OpportunityHistory",
                "008",
                {
                    let mut f = vec![field("Id", "id"), field("IsDeleted", "boolean")];
                    f.push(field("CreatedDate", "datetime"));
                    f.push(field("CreatedById", "reference"));
                    f.push(field("SystemModstamp", "datetime"));
                    f
                },
                {
                    fields(&[
                        ("OpportunityId", "reference"),
                        ("StageName", "picklist"),
                        ("Amount", "currency"),
                        ("ExpectedRevenue", "currency"),
                        ("CloseDate", "date"),
                        ("Probability", "percent"),
                        ("ForecastCategory", "picklist"),
                    ])
                },
            ),
            2 * r,
        ),
        (
            object("Case", "500", audit(true, true), {
                fields(&[
                    ("AccountId", "reference"),
                    ("ContactId", "reference"),
                    ("CaseNumber", "string"),
                    ("Subject", "string"),
                    ("Status", "picklist"),
                    ("Priority", "picklist"),
                    ("Origin", "picklist"),
                    ("IsClosed", "boolean"),
                    ("ClosedDate", "datetime"),
                    ("Description", "textarea"),
                    ("OwnerId", "reference"),
                ])
            }),
            r,
        ),
        (
            object("CampaignMember", "00v", audit(true, true), {
                fields(&[
                    ("CampaignId", "reference"),
                    ("LeadId", "reference"),
                    ("ContactId", "reference"),
                    ("Status", "picklist"),
                    ("HasResponded", "boolean"),
                    ("FirstRespondedDate", "date"),
                ])
            }),
            r,
        ),
        (
            object("Task", "00T", audit(true, true), {
                fields(&[
                    ("WhoId", "reference"),
                    ("WhatId", "reference"),
                    ("Subject", "string"),
                    ("Status", "picklist"),
                    ("Priority", "picklist"),
                    ("ActivityDate", "date"),
                    ("IsClosed", "boolean"),
                    ("TaskSubtype", "picklist"),
                    ("OwnerId", "reference"),
                ])
            }),
            2 * r,
        ),
        (
            object("Event", "00U", audit(true, true), {
                fields(&[
                    ("WhoId", "reference"),
                    ("WhatId", "reference"),
                    ("Subject", "string"),
                    ("StartDateTime", "datetime"),
                    ("EndDateTime", "datetime"),
                    ("ActivityDate", "date"),
                    ("DurationInMinutes", "int"),
                    ("Location", "string"),
                    ("IsAllDayEvent", "boolean"),
                    ("OwnerId", "reference"),
                ])
            }),
            r,
        ),
        (
            object("Invoice__c", "a01", audit(true, true), {
                let mut f = fields(&[
                    ("Name", "string"),
                    ("Account__c", "reference"),
                    ("Amount__c", "currency"),
                    ("Due_Date__c", "date"),
                    ("Paid__c", "boolean"),
                    ("Status__c", "picklist"),
                    ("OwnerId", "reference"),
                ]);
                f.extend(location("Store_Location"));
                f
            }),
            r,
        ),
        (
            object("CaseStatus", "01J", vec![field("Id", "id")], {
                fields(&[
                    ("MasterLabel", "string"),
                    ("SortOrder", "int"),
                    ("IsClosed", "boolean"),
                    ("IsDefault", "boolean"),
                ])
            }),
            5,
        ),
    ];
    if wide_fields > 0 {
        objects.push((wide_object(wide_fields), r));
    }
    objects
}

fn picklist(field: &str) -> &'static [&'static str] {
    match field {
        "Type" => &[
            "Customer - Direct",
            "Customer - Channel",
            "Prospect",
            "Partner",
        ],
        "Industry" => &["Technology", "Finance", "Healthcare", "Retail", "Energy"],
        "Status" => &["New", "Working", "Closed", "Planned"],
        "StageName" => &[
            "Prospecting",
            "Qualification",
            "Proposal",
            "Closed Won",
            "Closed Lost",
        ],
        "Priority" => &["High", "Medium", "Low"],
        "LeadSource" => &["Web", "Phone Inquiry", "Partner Referral", "Trade Show"],
        "Tier__c" => &["Gold", "Silver", "Bronze"],
        "Status__c" => &["Draft", "Sent", "Paid", "Overdue"],
        _ => &["Alpha", "Beta", "Gamma"],
    }
}

const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];
const COMPANIES: [&str; 6] = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark"];

impl Org {
    /// Seeds an org with `records` accounts (other objects scale from it; see the module
    /// docs of the sandbox) and, if `wide_fields` is not zero, as many records of the wide
    /// object with that many custom fields; every change made between 30 days and 2 hours
    /// before `now`.
    pub(crate) fn generate(
        seed: u64,
        records: usize,
        wide_fields: usize,
        now: DateTime<Utc>,
    ) -> Org {
        let mut org = Org {
            tables: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        };
        for (meta, count) in catalogue(records, wide_fields) {
            org.tables.push(Table {
                meta,
                records: BTreeMap::new(),
                next: 1,
            });
            let index = org.tables.len() - 1;
            for _ in 0..count {
                let created =
                    now - Duration::seconds(org.rng.random_range(2 * 86_400..30 * 86_400));
                let modified = created
                    + Duration::seconds(
                        org.rng
                            .random_range(0..((now - created).num_seconds() - 7200).max(1)),
                    );
                org.insert_generated(index, created, modified, Map::new());
            }
        }
        org
    }

    pub(crate) fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.meta.name.eq_ignore_ascii_case(name))
    }

    fn table_index(&self, name: &str) -> Result<usize, ApiError> {
        self.tables
            .iter()
            .position(|t| t.meta.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| ApiError::not_found_object(name))
    }

    fn random_id(&mut self, object: &str) -> Value {
        let Some((prefix, next)) = self
            .table(object)
            .filter(|t| !t.records.is_empty())
            .map(|t| (t.meta.key_prefix.clone(), t.next))
        else {
            return Value::Null;
        };
        // Every Id is the key prefix and a sequence number from 1 to below `next`
        // (`insert_generated`): the first Id at or after a random one is found in
        // O(log n). Walking the map to its i-th key instead made seeding quadratic
        // (20,000 accounts and their contacts took 22 s, 100,000 over 14 minutes). (A
        // record referring to its own object while being generated may draw its own,
        // not yet stored, number and get the first record instead.)
        let probe = format!("{prefix}{:012}AAA", self.rng.random_range(1..next));
        self.table(object)
            .and_then(|t| {
                t.records
                    .range(probe..)
                    .next()
                    .or_else(|| t.records.iter().next())
            })
            .map(|(k, _)| Value::String(k.clone()))
            .unwrap_or(Value::Null)
    }

    /// A generated value for `f` of record number `n`.
    fn value(&mut self, f: &FieldMeta, n: u64, object: &str) -> Value {
        let rng = &mut self.rng;
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        match f.ty.as_str() {
            "reference" => match &f.reference_to {
                Some(target) => {
                    let target = target.clone();
                    self.random_id(&target)
                }
                None => Value::Null,
            },
            "boolean" => Value::Bool(rng.random_bool(0.5)),
            "int" => Value::from(rng.random_range(1..10_000)),
            "percent" => Value::from(rng.random_range(0..100)),
            "currency" | "double" => {
                if f.name.ends_with("Latitude") || f.name.contains("Latitude__s") {
                    Value::from(f64::from(rng.random_range(-8_000..8_000)) / 100.0)
                } else if f.name.ends_with("Longitude") || f.name.contains("Longitude__s") {
                    Value::from(f64::from(rng.random_range(-17_000..17_000)) / 100.0)
                } else {
                    Value::from(f64::from(rng.random_range(100..5_000_000)) / 100.0)
                }
            }
            "date" => {
                let days = rng.random_range(0..730);
                Value::String(
                    (Utc::now() - Duration::days(days))
                        .format("%Y-%m-%d")
                        .to_string(),
                )
            }
            "datetime" => {
                let secs = rng.random_range(0..60 * 86_400);
                Value::String(format_datetime(Utc::now() - Duration::seconds(secs)))
            }
            "picklist" => {
                let list = picklist(&f.name);
                Value::String(list[rng.random_range(0..list.len())].to_owned())
            }
            "email" => Value::String(format!(
                "{}.{}{n}@example.com",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase()
            )),
            "phone" => Value::String(format!("+1 415 555 {:04}", n % 10_000)),
            "url" => Value::String(format!("https://example{n}.com")),
            "textarea" => Value::String(format!("{} notes #{n}\nsecond line", f.label)),
            _ => Value::String(match f.name.as_str() {
                "FirstName" => first.to_owned(),
                "LastName" => last.to_owned(),
                "Name" if object == "Account" || object == "Lead" => {
                    format!("{} {n}", COMPANIES[n as usize % COMPANIES.len()])
                }
                "Name" => format!("{first} {last}"),
                "Company" => format!("{} Corp", COMPANIES[n as usize % COMPANIES.len()]),
                "Username" => format!("user{n}@sandbox.tributary.test"),
                "CaseNumber" => format!("{n:08}"),
                "MasterLabel" => ["New", "Working", "Escalated", "On Hold", "Closed"]
                    [(n as usize).saturating_sub(1) % 5]
                    .to_owned(),
                _ => format!("{} {n}", f.label),
            }),
        }
    }

    /// Adds a generated record with the given times, `overrides` on top; returns its Id.
    fn insert_generated(
        &mut self,
        index: usize,
        created: DateTime<Utc>,
        modified: DateTime<Utc>,
        overrides: Map<String, Value>,
    ) -> String {
        let n = self.tables[index].next;
        self.tables[index].next += 1;
        let meta = self.tables[index].meta.clone();
        let id = format!("{}{:012}AAA", meta.key_prefix, n);
        let mut record = Map::new();
        for f in &meta.fields {
            let value = match f.name.as_str() {
                "Id" => Value::String(id.clone()),
                "IsDeleted" => Value::Bool(false),
                "CreatedDate" => Value::String(format_datetime(created)),
                "LastModifiedDate" | "SystemModstamp" => Value::String(format_datetime(modified)),
                _ if f.ty == "address" || f.ty == "location" => continue,
                _ => self.value(f, n, &meta.name),
            };
            record.insert(f.name.clone(), value);
        }
        for (k, v) in overrides {
            record.insert(k, v);
        }
        self.tables[index].records.insert(id.clone(), record);
        id
    }

    /// Checks `fields` names writable fields of `meta`; returns them with canonical names.
    fn writable(
        meta: &ObjectMeta,
        fields: Map<String, Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut out = Map::new();
        for (k, v) in fields {
            let f = meta
                .field(&k)
                .filter(|f| {
                    !matches!(
                        f.name.as_str(),
                        "Id" | "IsDeleted" | "CreatedDate" | "LastModifiedDate" | "SystemModstamp"
                    ) && f.ty != "address"
                        && f.ty != "location"
                })
                .ok_or_else(|| ApiError::invalid_field(&meta.name, &k))?;
            out.insert(f.name.clone(), v);
        }
        Ok(out)
    }

    /// Creates a record of `object` now; returns its Id.
    pub(crate) fn create(
        &mut self,
        object: &str,
        fields: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<String, ApiError> {
        let index = self.table_index(object)?;
        let fields = Self::writable(&self.tables[index].meta, fields)?;
        Ok(self.insert_generated(index, now, now, fields))
    }

    /// Changes fields of a live record now.
    pub(crate) fn update(
        &mut self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let index = self.table_index(object)?;
        let fields = Self::writable(&self.tables[index].meta, fields)?;
        let table = &mut self.tables[index];
        let has_last_modified = table.meta.field("LastModifiedDate").is_some();
        let has_modstamp = table.meta.field("SystemModstamp").is_some();
        let record = table
            .records
            .get_mut(id)
            .filter(|r| r.get("IsDeleted") != Some(&Value::Bool(true)))
            .ok_or_else(|| ApiError::entity_deleted(id))?;
        for (k, v) in fields {
            record.insert(k, v);
        }
        let stamp = Value::String(format_datetime(now));
        if has_last_modified {
            record.insert("LastModifiedDate".into(), stamp.clone());
        }
        if has_modstamp {
            record.insert("SystemModstamp".into(), stamp);
        }
        Ok(())
    }

    /// Moves a record to the recycle bin now (`IsDeleted = true`, still seen by `queryAll`).
    pub(crate) fn delete(
        &mut self,
        object: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let index = self.table_index(object)?;
        let table = &mut self.tables[index];
        if table.meta.field("IsDeleted").is_none() {
            return Err(ApiError::new(
                400,
                "INVALID_OPERATION",
                format!("{} records cannot be deleted here", table.meta.name),
            ));
        }
        let has_last_modified = table.meta.field("LastModifiedDate").is_some();
        let record = table
            .records
            .get_mut(id)
            .filter(|r| r.get("IsDeleted") != Some(&Value::Bool(true)))
            .ok_or_else(|| ApiError::entity_deleted(id))?;
        record.insert("IsDeleted".into(), Value::Bool(true));
        let stamp = Value::String(format_datetime(now));
        if has_last_modified {
            record.insert("LastModifiedDate".into(), stamp.clone());
        }
        record.insert("SystemModstamp".into(), stamp);
        Ok(())
    }

    /// Deletes a record for good (emptied from the recycle bin): no query returns it again.
    pub(crate) fn purge(&mut self, object: &str, id: &str) -> Result<(), ApiError> {
        let index = self.table_index(object)?;
        self.tables[index]
            .records
            .remove(id)
            .map(drop)
            .ok_or_else(|| ApiError::entity_deleted(id))
    }

    /// Adds a custom field (`Name__c`) to an object; existing records have it null.
    pub(crate) fn add_field(&mut self, object: &str, name: &str, ty: &str) -> Result<(), ApiError> {
        let index = self.table_index(object)?;
        let meta = &mut self.tables[index].meta;
        if !name.ends_with("__c") || meta.field(name).is_some() {
            return Err(ApiError::new(
                400,
                "DUPLICATE_DEVELOPER_NAME",
                format!("cannot add the custom field {name} to {object}"),
            ));
        }
        meta.fields.push(field(name, ty));
        Ok(())
    }

    /// Runs a query: the selected fields (canonical names) and the matching rows, or the
    /// count for `COUNT()`. `all` includes deleted records (`queryAll`).
    pub(crate) fn query(&self, q: &Query, all: bool) -> Result<QueryResult, ApiError> {
        let table = self
            .table(&q.object)
            .ok_or_else(|| ApiError::invalid_type(&q.object))?;
        let meta = &table.meta;
        let canonical = |name: &str| -> Result<&FieldMeta, ApiError> {
            meta.field(name)
                .ok_or_else(|| ApiError::invalid_field(&meta.name, name))
        };
        let select: Vec<String> = match &q.selection {
            Selection::Count => Vec::new(),
            Selection::Fields(fields) => fields
                .iter()
                .map(|f| canonical(f).map(|m| m.name.clone()))
                .collect::<Result<_, _>>()?,
        };
        // The filter's field names, each with its canonical name: resolved once here, not
        // once per record.
        let mut resolved: Vec<(&str, &str)> = Vec::new();
        if let Some(filter) = &q.filter {
            let mut comparisons = Vec::new();
            filter.comparisons(&mut comparisons);
            for (name, literal) in comparisons {
                let f = canonical(name)?;
                resolved.push((name, f.name.as_str()));
                let fits = match (f.ty.as_str(), literal) {
                    (_, Literal::Null) => true,
                    ("datetime", Literal::DateTime(_)) => true,
                    ("datetime", _) | (_, Literal::DateTime(_)) => false,
                    ("date", Literal::Date(_)) => true,
                    ("date", _) | (_, Literal::Date(_)) => false,
                    ("boolean", l) => matches!(l, Literal::Bool(_)),
                    ("int" | "double" | "currency" | "percent", l) => {
                        matches!(l, Literal::Number(_))
                    }
                    (_, l) => matches!(l, Literal::Text(_)),
                };
                if !fits {
                    return Err(ApiError::new(
                        400,
                        "INVALID_FIELD",
                        format!(
                            "value of filter criterion for field '{}' must be of type {} and should not be enclosed in quotes",
                            f.name,
                            if f.ty == "datetime" {
                                "dateTime"
                            } else {
                                &f.ty
                            }
                        ),
                    ));
                }
            }
        }
        let order: Vec<(String, bool)> = q
            .order
            .iter()
            .map(|(f, asc)| canonical(f).map(|m| (m.name.clone(), *asc)))
            .collect::<Result<_, _>>()?;
        let mut rows: Vec<&Map<String, Value>> = table
            .records
            .values()
            .filter(|r| all || r.get("IsDeleted") != Some(&Value::Bool(true)))
            .filter(|r| {
                q.filter.as_ref().is_none_or(|filter| {
                    filter.matches(&|name: &str| {
                        let field = resolved
                            .iter()
                            .find(|(asked, _)| *asked == name)
                            .map(|&(_, canonical)| canonical);
                        field.and_then(|f| r.get(f))
                    })
                })
            })
            .collect();
        if !order.is_empty() {
            // The rows come in Id order, so Ids break ties as the stable sort this replaces
            // did; with the order total, a LIMIT only needs its first rows selected (in
            // linear time) and those sorted, not every match of a range sorted per page.
            let by_order = |a: &&Map<String, Value>, b: &&Map<String, Value>| {
                for (f, asc) in &order {
                    let ord = soql::order_values(a.get(f), b.get(f));
                    let ord = if *asc { ord } else { ord.reverse() };
                    if ord != std::cmp::Ordering::Equal {
                        return ord;
                    }
                }
                soql::order_values(a.get("Id"), b.get("Id"))
            };
            if let Some(limit) = q.limit.filter(|&limit| limit < rows.len()) {
                if limit > 0 {
                    rows.select_nth_unstable_by(limit - 1, by_order);
                }
                rows.truncate(limit);
            }
            rows.sort_unstable_by(by_order);
        }
        if let Some(limit) = q.limit {
            rows.truncate(limit);
        }
        let count = rows.len();
        let compound_parts = |compound: &str| -> Vec<&FieldMeta> {
            meta.fields
                .iter()
                .filter(|f| f.compound.as_deref() == Some(compound))
                .collect()
        };
        // Looked up once, not per row: wide objects select hundreds of fields.
        let types: Vec<Option<&str>> = select
            .iter()
            .map(|f| meta.field(f).map(|m| m.ty.as_str()))
            .collect();
        let rows = rows
            .into_iter()
            .map(|r| {
                select
                    .iter()
                    .zip(&types)
                    .map(|(f, ty)| match ty {
                        Some("address") | Some("location") => {
                            // A compound reads as an object of its components.
                            let mut obj = Map::new();
                            for part in compound_parts(f) {
                                obj.insert(
                                    compound_key(f, &part.name),
                                    r.get(&part.name).cloned().unwrap_or(Value::Null),
                                );
                            }
                            Value::Object(obj)
                        }
                        _ => r.get(f).cloned().unwrap_or(Value::Null),
                    })
                    .collect()
            })
            .collect();
        let compound_selected = select.iter().any(|f| {
            meta.field(f)
                .is_some_and(|m| m.ty == "address" || m.ty == "location")
        });
        Ok(QueryResult {
            object: meta.name.clone(),
            select,
            rows,
            count,
            compound_selected,
        })
    }
}

/// The key of a component in its compound's JSON object: `BillingPostalCode` in
/// `BillingAddress` → `postalCode`, `Store_Location__Latitude__s` → `latitude`.
fn compound_key(compound: &str, part: &str) -> String {
    let prefix = match compound.strip_suffix("Address") {
        Some(p) => p.to_owned(),
        None => format!("{}__", compound.trim_end_matches("__c")),
    };
    let rest = part.strip_prefix(prefix.as_str()).unwrap_or(part);
    let rest = rest.trim_end_matches("__s");
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// What a query found.
#[derive(Debug)]
pub(crate) struct QueryResult {
    pub(crate) object: String,
    pub(crate) select: Vec<String>,
    /// One value per selected field, in order.
    pub(crate) rows: Vec<Vec<Value>>,
    pub(crate) count: usize,
    /// Whether a compound (address/location) field was selected (Bulk refuses those).
    pub(crate) compound_selected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_references_point_at_records_spread_over_the_target() {
        let org = Org::generate(7, 2_000, 0, Utc::now());
        let accounts = &org.table("Account").unwrap().records;
        let contacts = &org.table("Contact").unwrap().records;
        assert_eq!(accounts.len(), 2_000);
        assert!(contacts.len() >= 2_000, "{} contacts", contacts.len());
        let mut targets = std::collections::BTreeSet::new();
        for contact in contacts.values() {
            let id = contact["AccountId"]
                .as_str()
                .expect("every contact has an account");
            assert!(accounts.contains_key(id), "{id} is an account");
            targets.insert(id);
        }
        // Uniform picks over 2,000 accounts reach most of them, not a handful.
        assert!(targets.len() > 1_000, "{} distinct accounts", targets.len());
    }

    #[test]
    fn labels_read_like_salesforce() {
        assert_eq!(label_of("AnnualRevenue"), "Annual Revenue");
        assert_eq!(label_of("Customer_Since__c"), "Customer Since");
        assert_eq!(
            label_of("Store_Location__Latitude__s"),
            "Store Location Latitude"
        );
        assert_eq!(
            compound_key("BillingAddress", "BillingPostalCode"),
            "postalCode"
        );
        assert_eq!(
            compound_key("Store_Location__c", "Store_Location__Latitude__s"),
            "latitude"
        );
    }
}
