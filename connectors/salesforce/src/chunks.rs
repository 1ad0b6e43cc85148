//! Objects too wide for one REST query URL.
//!
//! A REST query is a `GET …/queryAll?q=SELECT f1, f2, … FROM Object WHERE …`: every field is
//! in the URL, and Salesforce refuses a request whose URI and headers pass 16,384 bytes
//! ("In each REST call, the maximum length for the combined URI and headers is 16,384
//! bytes. A request exceeding this limit returns a 431 Request Header Fields Too Large
//! error. If the URI itself exceeds this limit, the request returns a 414 URI Too Long
//! error.", https://help.salesforce.com/s/articleView?id=000386264&type=1). An org with
//! hundreds of custom fields, or long custom field names, passes that on every read.
//!
//! So a read whose query does not fit [`URI_BUDGET`] splits its fields ([`ChunkPlan`]):
//!
//! - the **driving** query selects `Id`, the cursor field, `IsDeleted` and as many other
//!   fields as fit, with the read's `WHERE` and `ORDER BY`, and pages with `nextRecordsUrl`
//!   as any read does: its pages are the read's pages, and its order its cursor;
//! - for every page of it, each remaining chunk of fields is read with
//!   `SELECT Id, <cursor field>, <chunk> FROM Object WHERE Id IN ('…', …)` through
//!   `queryAll` (so records in the recycle bin come back too), the Ids split so each URL
//!   fits too ([`ChunkPlan::id_batches`]), following `nextRecordsUrl` when Salesforce pages
//!   a wide answer, and joined into the page's records by Id ([`fill`]) before they are
//!   converted. One page is still one commit point, and the cursor logic does not change.
//!
//! Bulk API 2.0 sends its SOQL in a POST body and needs none of this; `COUNT()` is short.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tributary_sdk::pagination::ProgressGuard;
use tributary_sdk::{Error, Result};

use crate::auth::VENDOR;
use crate::client::SalesforceClient;
use crate::describe::DELETED_FIELD;
use crate::streams::{canonical_stamp, soql_string};

/// The longest request target (path and query string) a REST query may have.
///
/// Salesforce's 16,384 bytes count the URI and the headers together (see the module docs);
/// Salesforce's own advice is to keep headers to about 8,000 bytes. Half the limit for the
/// URI leaves the other half for the headers (`Authorization` with the access token, `Host`,
/// `Sforce-Query-Options`, `User-Agent`, …), which are a few hundred bytes with an opaque
/// token and stay well within it with a longer one.
pub const URI_BUDGET: usize = 8_192;

/// Bytes `text` takes as a URL query value, as reqwest writes `q=` (form-urlencoded: a
/// space is `+`, ASCII letters, digits and `*-._` are kept, every other byte is `%XX`).
/// Exact, and additive: the length of a concatenation is the sum of the lengths.
pub fn encoded_len(text: &str) -> usize {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .map(str::len)
        .sum()
}

/// The separator of SOQL lists (fields, Ids).
/// The most characters of Ids one `WHERE Id IN (...)` lists (see `id_batches`).
const MAX_IN_LIST_CHARS: usize = 3_500;

const SEPARATOR: &str = ", ";

/// How one REST read splits its fields over queries whose URLs fit [`URI_BUDGET`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    object: String,
    /// What follows `FROM Object` in the driving query: ` WHERE … ORDER BY …`.
    tail: String,
    /// The bytes of the request target before the encoded SOQL (`/services/…/queryAll?q=`).
    prefix_len: usize,
    budget: usize,
    /// The driving query's fields, in the object's field order.
    pub driving: Vec<String>,
    /// The other fields, one chunk per by-Id query (without `keys`).
    pub chunks: Vec<Vec<String>>,
    /// `Id` and the cursor field, which every by-Id query selects too.
    pub keys: Vec<String>,
}

impl ChunkPlan {
    /// Plans the read of `select` (the object's fields, in order): the driving query
    /// `SELECT <fields> FROM <object><tail>` takes every field of `always` and then as many
    /// of the others, in order, as fit; the rest go to by-Id queries of at most half the
    /// room a by-Id query has, the other half being for Ids. When everything fits, the
    /// driving query is the whole read, exactly as without chunking. `prefix_len` is the
    /// request target's length before the encoded SOQL. Fails (with why) only when not
    /// even the fixed parts fit.
    pub fn new(
        object: &str,
        select: &[String],
        always: &[String],
        keys: Vec<String>,
        tail: String,
        prefix_len: usize,
        budget: usize,
    ) -> std::result::Result<ChunkPlan, String> {
        let mut plan = ChunkPlan {
            object: object.to_owned(),
            tail,
            prefix_len,
            budget,
            driving: Vec::new(),
            chunks: Vec::new(),
            keys,
        };
        let is_always = |f: &String| always.iter().any(|a| a.eq_ignore_ascii_case(f));
        let field_len = |f: &str| encoded_len(SEPARATOR) + encoded_len(f);

        let mut driving_len = plan.uri_len(&plan.driving_soql_of(always));
        if driving_len > budget {
            return Err(format!(
                "the query of {object} takes {driving_len} bytes of URL before any field but \
                 Id, its cursor field and IsDeleted (at most {budget})"
            ));
        }
        let mut others = select.iter().filter(|f| !is_always(f)).peekable();
        let mut driving: Vec<&String> = Vec::new();
        while let Some(field) = others.next_if(|f| driving_len + field_len(f) <= budget) {
            driving_len += field_len(field);
            driving.push(field);
        }
        plan.driving = select
            .iter()
            .filter(|f| is_always(f) || driving.contains(f))
            .cloned()
            .collect();

        let rest: Vec<&String> = others.collect();
        if rest.is_empty() {
            return Ok(plan);
        }
        let base = plan.uri_len(&plan.by_ids_soql_of(&[], &[]));
        let room = budget.saturating_sub(base) / 2;
        // At least a few Ids per request, whatever the fields.
        if room < 8 * encoded_len("'000000000000000AAA', ") {
            return Err(format!(
                "a query of {object} by Id takes {base} bytes of URL before any field (at most \
                 {budget})"
            ));
        }
        let mut chunk: Vec<String> = Vec::new();
        let mut chunk_len = 0;
        for field in rest {
            let len = field_len(field);
            if len > room {
                return Err(format!(
                    "the field name {object}.{field} is too long for a query URL"
                ));
            }
            if chunk_len + len > room {
                plan.chunks.push(std::mem::take(&mut chunk));
                chunk_len = 0;
            }
            chunk.push(field.clone());
            chunk_len += len;
        }
        plan.chunks.push(chunk);
        Ok(plan)
    }

    /// Whether the read needs by-Id queries.
    pub fn is_chunked(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// The driving query.
    pub fn driving_soql(&self) -> String {
        self.driving_soql_of(&self.driving)
    }

    fn driving_soql_of(&self, fields: &[String]) -> String {
        format!(
            "SELECT {} FROM {}{}",
            fields.join(SEPARATOR),
            self.object,
            self.tail
        )
    }

    /// The query of chunk `chunk` for `ids`.
    pub fn by_ids_soql(&self, chunk: usize, ids: &[String]) -> String {
        self.by_ids_soql_of(
            self.chunks
                .get(chunk)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            ids,
        )
    }

    fn by_ids_soql_of(&self, fields: &[String], ids: &[String]) -> String {
        let fields: Vec<&str> = self.keys.iter().chain(fields).map(String::as_str).collect();
        let ids: Vec<String> = ids.iter().map(|id| soql_string(id)).collect();
        format!(
            "SELECT {} FROM {} WHERE Id IN ({})",
            fields.join(SEPARATOR),
            self.object,
            ids.join(SEPARATOR)
        )
    }

    /// The length of the request target of `soql`.
    fn uri_len(&self, soql: &str) -> usize {
        self.prefix_len + encoded_len(soql)
    }

    /// `ids` in runs whose query of chunk `chunk` fits the budget (the planner leaves room
    /// for many; a run always has at least one Id).
    pub fn id_batches<'a>(&self, chunk: usize, ids: &'a [String]) -> Vec<&'a [String]> {
        let base = self.uri_len(&self.by_ids_soql(chunk, &[]));
        let mut batches = Vec::new();
        let (mut start, mut len, mut chars) = (0, base, 0);
        for (i, id) in ids.iter().enumerate() {
            let quoted = soql_string(id);
            let mut add = encoded_len(&quoted);
            let mut text = quoted.len();
            if i > start {
                add += encoded_len(SEPARATOR);
                text += SEPARATOR.len();
            }
            // Salesforce limits a WHERE clause's text to 4,000 characters (its SOQL
            // limits, https://developer.salesforce.com/docs/atlas.en-us.salesforce_app_limits_cheatsheet.meta/salesforce_app_limits_cheatsheet/salesforce_app_limits_platform_soslsoql.htm),
            // so an `IN` list stays under it whatever the URL budget allows.
            if i > start && (len + add > self.budget || chars + text > MAX_IN_LIST_CHARS) {
                batches.push(&ids[start..i]);
                start = i;
                len = base;
                chars = 0;
                add = encoded_len(&quoted);
                text = quoted.len();
            }
            len += add;
            chars += text;
        }
        if start < ids.len() {
            batches.push(&ids[start..]);
        }
        batches
    }
}

/// Reads the chunks of `plan` for the records of one driving page and joins them in by Id,
/// so each record has every field before it is converted. `cursor_field` is the read's
/// (`None` for snapshots); `has_is_deleted` whether the object has `IsDeleted`. Records
/// `wanted` says no to (those the read will skip as already landed) are left as they are,
/// and cost no request.
///
/// A record changed between the driving query and a chunk's query comes back with a newer
/// stamp: it lands joined as read (its values from both moments) with the driving query's
/// stamp, which is what orders the read and its cursor. Its new stamp is at or past this
/// read's upper bound (Salesforce's clock when the read started, and the change came
/// later), so the next incremental run reads it again in full and lands it whole; the
/// cursor's `recent` pairs hold the old stamp, so it is not mistaken for one already
/// landed.
///
/// A record a chunk's query does not return at all was deleted for good in between
/// (emptied from the recycle bin: `queryAll` returns deleted records, not purged ones) or
/// hidden from the integration user. No later read returns it either, so it lands now
/// flagged deleted, with the fields read so far; an object without `IsDeleted` cannot say
/// so, and the record is left out of the page.
pub async fn fill(
    plan: &ChunkPlan,
    client: &SalesforceClient,
    stream: &str,
    cursor_field: Option<&str>,
    has_is_deleted: bool,
    records: &mut Vec<Map<String, Value>>,
    wanted: impl Fn(&Map<String, Value>) -> bool,
) -> Result<()> {
    let mut ids = Vec::with_capacity(records.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        // A record without an Id fails its conversion later, with that error.
        if let Some(id) = record.get("Id").and_then(Value::as_str)
            && wanted(record)
        {
            index.insert(id.to_owned(), i);
            ids.push(id.to_owned());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let mut gone = vec![false; records.len()];
    let mut changed = 0usize;
    for (chunk, fields) in plan.chunks.iter().enumerate() {
        let mut seen = vec![false; records.len()];
        for batch in plan.id_batches(chunk, &ids) {
            let soql = plan.by_ids_soql(chunk, batch);
            let mut page = client.query_all(stream, &soql).await?;
            // Each `nextRecordsUrl` is followed once, as in the driving read.
            let mut guard = ProgressGuard::new(
                VENDOR,
                stream,
                "`nextRecordsUrl` of a by-Id query",
                "done stayed false",
            );
            loop {
                if !page.done {
                    if page.records.is_empty() {
                        return Err(guard.no_progress("no `records`"));
                    }
                    if let Some(next) = &page.next_records_url {
                        guard.follow(next)?;
                    }
                }
                for mut row in std::mem::take(&mut page.records) {
                    let Some(&i) = row
                        .get("Id")
                        .and_then(Value::as_str)
                        .and_then(|id| index.get(id))
                    else {
                        continue;
                    };
                    seen[i] = true;
                    let record = &mut records[i];
                    if let Some(field) = cursor_field {
                        let stamp = |r: &Map<String, Value>| {
                            r.get(field)
                                .and_then(Value::as_str)
                                .and_then(canonical_stamp)
                        };
                        if stamp(&row) > stamp(record) {
                            changed += 1;
                        }
                    }
                    for field in fields {
                        record.insert(field.clone(), row.remove(field).unwrap_or(Value::Null));
                    }
                }
                match (page.done, page.next_records_url.take()) {
                    (false, Some(next)) => page = client.query_more(stream, &next).await?,
                    _ => break,
                }
            }
        }
        for &i in index.values() {
            gone[i] |= !seen[i];
        }
    }
    if changed > 0 {
        tracing::debug!(
            stream,
            records = changed,
            "Records changed while their fields were read in chunks; they land as read, and the next run reads them again."
        );
    }
    let purged = gone.iter().filter(|g| **g).count();
    if purged > 0 {
        tracing::warn!(
            stream,
            records = purged,
            "Records were deleted for good while their fields were read in chunks; they land flagged deleted with the fields read."
        );
        if has_is_deleted {
            for (record, _) in records.iter_mut().zip(&gone).filter(|(_, g)| **g) {
                record.insert(DELETED_FIELD.to_owned(), Value::Bool(true));
            }
        } else {
            let mut gone = gone.into_iter();
            records.retain(|_| !gone.next().unwrap_or(false));
        }
    }
    Ok(())
}

/// Turns a planning failure into the error of `stream`.
pub fn plan_error(stream: &str, message: String) -> Error {
    Error::Schema {
        stream: stream.to_owned(),
        message: format!("cannot read it with REST queryAll: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/services/data/v62.0/queryAll";

    /// The request target reqwest really sends for `soql`, measured on the built URL.
    fn real_uri_len(soql: &str) -> usize {
        let request = reqwest::Client::new()
            .get(format!("https://example.my.salesforce.com{PREFIX}"))
            .query(&[("q", soql)])
            .build()
            .unwrap();
        let url = request.url();
        url.path().len() + url.query().map_or(0, |q| 1 + q.len())
    }

    fn wide(n: usize) -> Vec<String> {
        let mut select: Vec<String> = ["Id", "IsDeleted", "Name", "SystemModstamp"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        select.extend((1..=n).map(|i| format!("Custom_Field_With_A_Long_Api_Name{i:04}__c")));
        select
    }

    fn plan(select: &[String]) -> ChunkPlan {
        let always: Vec<String> = vec!["Id".into(), "SystemModstamp".into(), "IsDeleted".into()];
        ChunkPlan::new(
            "Wide_Object__c",
            select,
            &always,
            vec!["Id".into(), "SystemModstamp".into()],
            " WHERE (SystemModstamp > 2024-05-01T12:00:00Z OR (SystemModstamp = \
             2024-05-01T12:00:00Z AND Id > 'a02000000000123AAA')) AND SystemModstamp < \
             2024-06-01T00:00:00Z ORDER BY SystemModstamp ASC, Id ASC"
                .to_owned(),
            PREFIX.len() + "?q=".len(),
            URI_BUDGET,
        )
        .unwrap()
    }

    #[test]
    fn encoded_lengths_are_what_reqwest_sends() {
        for soql in [
            "SELECT Id, Name FROM Account",
            "SELECT Id FROM Account WHERE Name = 'O\\'Brien & Co' AND Id IN ('001A', '001B')",
            "SELECT Id FROM Account WHERE Name = 'Zoë ☃'",
        ] {
            assert_eq!(
                PREFIX.len() + "?q=".len() + encoded_len(soql),
                real_uri_len(soql),
                "{soql}"
            );
        }
    }

    #[test]
    fn a_narrow_object_is_one_query_as_before() {
        let select = wide(20);
        let p = plan(&select);
        assert!(!p.is_chunked());
        assert_eq!(p.driving, select);
        assert!(p.driving_soql().starts_with(&format!(
            "SELECT {} FROM Wide_Object__c WHERE",
            select.join(", ")
        )));
    }

    #[test]
    fn wide_objects_are_split_into_queries_that_fit() {
        let select = wide(800);
        // Unsplit, the query would not fit even Salesforce's own limit.
        let whole = format!("SELECT {} FROM Wide_Object__c", select.join(", "));
        assert!(real_uri_len(&whole) > 16_384);

        let p = plan(&select);
        assert!(p.is_chunked());
        assert!(real_uri_len(&p.driving_soql()) <= URI_BUDGET);
        for key in ["Id", "SystemModstamp", "IsDeleted"] {
            assert!(p.driving.iter().any(|f| f == key), "{key}");
        }
        // Every field in exactly one place: the driving query or one chunk.
        let mut count: HashMap<&str, usize> = HashMap::new();
        for f in p.driving.iter().chain(p.chunks.iter().flatten()) {
            *count.entry(f.as_str()).or_default() += 1;
        }
        assert_eq!(count.len(), select.len());
        assert!(count.values().all(|n| *n == 1), "{count:?}");
        // Driving fields keep the object's order.
        let order: Vec<&String> = select.iter().filter(|f| p.driving.contains(f)).collect();
        assert_eq!(p.driving.iter().collect::<Vec<_>>(), order);

        // By-Id queries carry Id and the cursor field, and fit with their Ids: the longest
        // Ids, and more of them than one query can take.
        let ids: Vec<String> = (0..2000).map(|i| format!("a02{i:012}AAA")).collect();
        for (chunk, fields) in p.chunks.iter().enumerate() {
            assert!(!fields.is_empty());
            assert!(!fields.iter().any(|f| f == "Id" || f == "SystemModstamp"));
            let batches = p.id_batches(chunk, &ids);
            assert!(batches.len() > 1);
            assert!(
                batches.len() <= 20,
                "{} queries for 2000 Ids",
                batches.len()
            );
            assert_eq!(batches.concat(), ids, "every Id once, in order");
            let last = batches.len() - 1;
            for (n, batch) in batches.into_iter().enumerate() {
                let soql = p.by_ids_soql(chunk, batch);
                assert!(
                    soql.starts_with("SELECT Id, SystemModstamp, Custom_Field"),
                    "{soql}"
                );
                let len = real_uri_len(&soql);
                assert!(len <= URI_BUDGET, "{len}");
                // The `IN` list's text stays under Salesforce's WHERE-clause limit.
                let chars: usize =
                    batch.iter().map(|id| id.len() + 2).sum::<usize>() + 2 * (batch.len() - 1);
                assert!(chars <= MAX_IN_LIST_CHARS, "{chars}");
                // Full: one more Id (`%2C+%27…%27`, 28 bytes; `, '…'`, 22 characters)
                // would not have fitted.
                if n < last {
                    assert!(
                        len + 28 > URI_BUDGET || chars + 22 > MAX_IN_LIST_CHARS,
                        "{len} {chars}"
                    );
                }
            }
        }
    }

    #[test]
    fn snapshot_objects_and_odd_ids_fit_too() {
        let select = wide(600);
        let p = ChunkPlan::new(
            "Wide_Object__c",
            &select,
            &["Id".to_owned()],
            vec!["Id".into()],
            " ORDER BY Id ASC".to_owned(),
            PREFIX.len() + 3,
            URI_BUDGET,
        )
        .unwrap();
        assert!(p.is_chunked());
        let ids: Vec<String> = (0..500).map(|i| format!("it's {i} %")).collect();
        for chunk in 0..p.chunks.len() {
            assert!(
                p.by_ids_soql(chunk, &[])
                    .starts_with("SELECT Id, Custom_Field")
            );
            for batch in p.id_batches(chunk, &ids) {
                assert!(real_uri_len(&p.by_ids_soql(chunk, batch)) <= URI_BUDGET);
            }
        }
        assert!(
            ChunkPlan::new(
                "X",
                &select,
                &["Id".to_owned()],
                vec![],
                "x".repeat(9000),
                0,
                URI_BUDGET
            )
            .is_err()
        );
    }
}
