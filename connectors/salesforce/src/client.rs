//! Salesforce's REST API as the connector uses it: describe calls, SOQL `queryAll` pages
//! (`nextRecordsUrl`), Bulk API 2.0 query jobs and their CSV results, all through the SDK's
//! rate-limited, retrying client.
//!
//! Every request carries the current access token; an `INVALID_SESSION_ID` answer gets a
//! new token and the request is sent once more, so an expiring session never fails a sync.
//! Every successful answer's `Sforce-Limit-Info` (`api-usage=25/15000`) updates the org's
//! [`ApiBudget`], which the streams consult before starting an object; an org that is out
//! of requests (`REQUEST_LIMIT_EXCEEDED`) defers the stream instead of failing it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tributary_sdk::clock::ServerClock;
use tributary_sdk::http::{HttpClient, HttpConfig, Response};
use tributary_sdk::pagination::malformed_page;
use tributary_sdk::{Error, Result};

use crate::auth::{Authenticator, Token, VENDOR};
use crate::config::Settings;

/// The org's daily API usage as Salesforce last reported it.
#[derive(Debug, Default)]
pub struct ApiBudget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl ApiBudget {
    /// [`Error::Deferred`] when the org's usage, as last reported, is past `percent` of
    /// its daily limit; `what` is what is left for a later run.
    pub fn check(&self, percent: f64, what: &str) -> Result<()> {
        let Some((used, limit)) = self.usage() else {
            return Ok(());
        };
        let share = used as f64 * 100.0 / limit as f64;
        if share > percent {
            return Err(Error::Deferred {
                reason: format!(
                    "the org has used {used} of its {limit} daily API requests ({share:.0}%), past \
                     `api_budget_percent` = {percent}; {what} is left for a later run"
                ),
            });
        }
        Ok(())
    }

    /// Records a `Sforce-Limit-Info` header value.
    pub fn observe(&self, header: &str) {
        if let Some((used, limit)) = parse_limit_info(header) {
            self.used.store(used, Ordering::Relaxed);
            self.limit.store(limit, Ordering::Relaxed);
        }
    }

    /// `(used, limit)` of the org's daily API requests, once a response has said.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let limit = self.limit.load(Ordering::Relaxed);
        (limit > 0).then(|| (self.used.load(Ordering::Relaxed), limit))
    }
}

/// Reads `api-usage=USED/LIMIT` out of a `Sforce-Limit-Info` value (which may carry other
/// parts, e.g. `per-app-api-usage=…`, separated by `;` or `,`).
pub fn parse_limit_info(header: &str) -> Option<(u64, u64)> {
    header
        .split([';', ','])
        .map(str::trim)
        .find_map(|part| part.strip_prefix("api-usage="))
        .and_then(|usage| {
            let (used, limit) = usage.split_once('/')?;
            Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
        })
}

/// One object in `describeGlobal`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalObject {
    /// The API name.
    pub name: String,
    /// Whether SOQL can read it.
    #[serde(default)]
    pub queryable: bool,
    /// Whether it is a custom object.
    #[serde(default)]
    pub custom: bool,
}

#[derive(Deserialize)]
struct DescribeGlobal {
    sobjects: Vec<GlobalObject>,
}

/// One field of an object's describe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldDescribe {
    /// The API name.
    pub name: String,
    /// The Salesforce type (`id`, `string`, `currency`, `datetime`, `address`, …).
    #[serde(rename = "type")]
    pub ty: String,
    /// The label, for `discover`.
    #[serde(default)]
    pub label: String,
    /// For a component of a compound field (`BillingCity`), the compound (`BillingAddress`).
    #[serde(default)]
    pub compound_field_name: Option<String>,
}

/// An object's describe: its fields.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ObjectDescribe {
    /// The API name.
    pub name: String,
    /// Its fields.
    pub fields: Vec<FieldDescribe>,
}

/// One page of a SOQL query, checked to be the documented shape ([`QueryPage::from_json`]).
#[derive(Debug)]
pub struct QueryPage {
    /// Records the whole query matches.
    pub total_size: u64,
    /// Whether this is the last page.
    pub done: bool,
    /// The path of the next page (always there when `done` is false).
    pub next_records_url: Option<String>,
    /// The records (each with an `attributes` object).
    pub records: Vec<Map<String, Value>>,
}

impl QueryPage {
    /// Reads a query response, requiring the shape Salesforce documents for it: "the total
    /// number of records (`totalSize`), a boolean indicating whether there are no more
    /// results (`done`), the URI of the next set of records (`nextRecordsUrl`), and an array
    /// of query result records (`records`)", with `done` false and a locator when more
    /// remain (https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query.html,
    /// https://developer.salesforce.com/docs/platform/api-rest/guide/dome-query.html).
    /// A missing `done` or `records` is a broken answer, never an empty last page.
    pub fn from_json(value: Value) -> std::result::Result<QueryPage, String> {
        let Value::Object(mut page) = value else {
            return Err("the body is not a JSON object".to_owned());
        };
        let done = match page.get("done") {
            Some(Value::Bool(done)) => *done,
            Some(other) => return Err(format!("`done` is `{other}`, not a boolean")),
            None => return Err("`done` is missing".to_owned()),
        };
        let records = match page.remove("records") {
            Some(Value::Array(records)) => records
                .into_iter()
                .map(|record| match record {
                    Value::Object(record) => Ok(record),
                    other => Err(format!("a record is `{other}`, not an object")),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            Some(other) => return Err(format!("`records` is {}, not an array", kind(&other))),
            None => return Err("`records` is missing".to_owned()),
        };
        let next_records_url = match page.get("nextRecordsUrl") {
            None | Some(Value::Null) => None,
            Some(Value::String(url)) => Some(url.clone()),
            Some(other) => return Err(format!("`nextRecordsUrl` is `{other}`, not a string")),
        };
        if !done && next_records_url.is_none() {
            return Err("`done` is false but there is no `nextRecordsUrl`".to_owned());
        }
        Ok(QueryPage {
            total_size: page.get("totalSize").and_then(Value::as_u64).unwrap_or(0),
            done,
            next_records_url,
            records,
        })
    }
}

/// "an object", "a string", … for a JSON value.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A Bulk API 2.0 query job's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// `UploadComplete`, `InProgress`, `JobComplete`, `Failed` or `Aborted`.
    pub state: String,
    /// Why a job failed.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Records processed so far.
    #[serde(default)]
    pub number_records_processed: Option<u64>,
}

/// One page of a Bulk job's CSV results.
#[derive(Debug)]
pub struct ResultsPage {
    /// The rows, as field name → text (empty cells, i.e. nulls, left out).
    pub rows: Vec<Map<String, Value>>,
    /// The locator of the next page; `None` after the last.
    pub next_locator: Option<String>,
}

/// An authenticated client of one org.
#[derive(Debug)]
pub struct SalesforceClient {
    http: HttpClient,
    auth: Authenticator,
    api_version: String,
    page_size: u32,
    budget: ApiBudget,
    /// Salesforce's clock (the `Date` of its answers), for the upper bound of each read:
    /// records stamped up to it, by the org's clock, are all visible.
    clock: ServerClock,
}

impl SalesforceClient {
    /// A client for the validated settings. Makes no request.
    pub fn new(settings: &Settings) -> Result<Self> {
        let mut config = HttpConfig::new(VENDOR, settings.requests_per_second);
        // Bulk results pages can be large.
        config.timeout = Duration::from_secs(300);
        let http = HttpClient::shared(&settings.auth.account_key(&settings.login_url), config)?;
        Ok(SalesforceClient {
            auth: Authenticator::new(settings.auth.clone(), &settings.login_url, http.clone()),
            http,
            api_version: settings.api_version.clone(),
            page_size: settings.page_size,
            budget: ApiBudget::default(),
            clock: ServerClock::new(),
        })
    }

    /// The org's HTTP client (its limiter, 429 count and answer time), for a reader that
    /// keeps several queries in flight.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The org's API usage as last reported.
    pub fn budget(&self) -> &ApiBudget {
        &self.budget
    }

    /// Access tokens fetched so far (the first one and every refresh).
    pub fn tokens_fetched(&self) -> u64 {
        self.auth.tokens_fetched()
    }

    /// Salesforce's clock as of the latest answer (its `Date` header), or ours before any.
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    /// `/services/data/vXX.X` + `rest`.
    fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.api_version)
    }

    /// Sends a request built by `build` (given the token), renewing the session once if
    /// Salesforce says it expired, and validating the 2xx body with `check`.
    async fn send<F, C>(&self, what: &str, build: F, check: C) -> Result<Response>
    where
        F: Fn(&reqwest::Client, &Token) -> reqwest::RequestBuilder,
        C: Fn(&Response) -> std::result::Result<(), String>,
    {
        let mut token = self.auth.token().await?;
        let mut renewed = false;
        loop {
            let sent = self
                .http
                .send_checked(
                    what,
                    |c| build(c, &token).bearer_auth(token.access_token.expose()),
                    |r: &Response| {
                        // Seen even when the check fails: the request counted all the same.
                        if let Some(info) = r.header("sforce-limit-info") {
                            self.budget.observe(info);
                        }
                        check(r)
                    },
                )
                .await;
            match sent {
                Ok(response) => {
                    self.clock.observe(response.date);
                    return Ok(response);
                }
                Err(Error::Auth {
                    status: 401,
                    message,
                    ..
                }) if !renewed && message.contains("INVALID_SESSION_ID") => {
                    renewed = true;
                    token = self.auth.refresh(token.generation).await?;
                }
                Err(Error::Auth {
                    status: 403,
                    message,
                    ..
                }) if message.contains("REQUEST_LIMIT_EXCEEDED") => {
                    return Err(Error::Deferred {
                        reason: format!(
                            "the org is out of API requests for today ({message}); the next run \
                             resumes from what was committed"
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GETs `path` (below the instance URL) and parses the JSON answer as `T`; a body that
    /// does not parse is retried like a truncated one.
    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> Result<T> {
        let parsed: Mutex<Option<T>> = Mutex::new(None);
        self.send(
            what,
            |c, token| {
                let mut request = c.get(format!("{}{path}", token.instance_url)).query(query);
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
                request
            },
            |r| {
                let value: T = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                *parsed.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
                Ok(())
            },
        )
        .await?;
        parsed
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| Error::decode(format!("{what} response"), "the body was not parsed"))
    }

    /// `GET /limits`: one cheap authenticated call, for `check`.
    pub async fn limits(&self) -> Result<Value> {
        self.get_json("GET /limits", &self.data_path("/limits"), &[], &[])
            .await
    }

    /// `describeGlobal`: every object of the org.
    pub async fn describe_global(&self) -> Result<Vec<GlobalObject>> {
        let global: DescribeGlobal = self
            .get_json("describeGlobal", &self.data_path("/sobjects"), &[], &[])
            .await?;
        Ok(global.sobjects)
    }

    /// The describe of `object`.
    pub async fn describe(&self, object: &str) -> Result<ObjectDescribe> {
        self.get_json(
            &format!("describe {object}"),
            &self.data_path(&format!("/sobjects/{object}/describe")),
            &[],
            &[],
        )
        .await
    }

    /// The bytes of a `queryAll` request target before its encoded SOQL
    /// (`/services/data/vXX.X/queryAll?q=`), for sizing queries to fit the URL limit (see
    /// [`crate::chunks`]).
    pub fn query_all_prefix_len(&self) -> usize {
        self.data_path("/queryAll").len() + "?q=".len()
    }

    /// The first page of `queryAll` (deleted and archived records included) for `soql`, read
    /// for `stream` (named in errors).
    pub async fn query_all(&self, stream: &str, soql: &str) -> Result<QueryPage> {
        self.query_page(
            stream,
            "queryAll",
            &self.data_path("/queryAll"),
            &[("q", soql)],
        )
        .await
    }

    /// The page at a `nextRecordsUrl`, read for `stream`.
    pub async fn query_more(&self, stream: &str, next_records_url: &str) -> Result<QueryPage> {
        if !next_records_url.starts_with("/services/data/") {
            return Err(Error::decode(
                "queryAll response",
                format!("unexpected nextRecordsUrl `{next_records_url}`"),
            ));
        }
        self.query_page(stream, "queryAll (next page)", next_records_url, &[])
            .await
    }

    /// A query page at `path`. A body that is not complete JSON is retried like a cut one; a
    /// complete one that is not a query response fails at once with [`Error::Protocol`]:
    /// the same request would get the same answer.
    async fn query_page(
        &self,
        stream: &str,
        what: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<QueryPage> {
        let options = [(
            "Sforce-Query-Options",
            format!("batchSize={}", self.page_size),
        )];
        let value: Value = self.get_json(what, path, query, &options).await?;
        QueryPage::from_json(value)
            .map_err(|problem| malformed_page(VENDOR, stream, &format!("GET {what}"), &problem))
    }

    /// Creates a Bulk API 2.0 `queryAll` job for `soql`.
    ///
    /// A 403 here is Salesforce refusing the job, not the credentials, which the `COUNT()`
    /// query before it has just used: Salesforce's 403 means the request was refused for
    /// the user's permissions, or, with `REQUEST_LIMIT_EXCEEDED`, for the org's API request
    /// limit (https://developer.salesforce.com/docs/platform/api-rest/guide/errorcodes.html).
    /// So it is an [`Error::Http`] (see [`bulk_refused`]); `REQUEST_LIMIT_EXCEEDED` still
    /// defers, as for every request.
    pub async fn create_bulk_job(&self, soql: &str) -> Result<JobInfo> {
        let path = self.data_path("/jobs/query");
        let body = serde_json::json!({
            "operation": "queryAll",
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        let response = self
            .send(
                "create Bulk query job",
                |c, token| c.post(format!("{}{path}", token.instance_url)).json(&body),
                |r| {
                    serde_json::from_slice::<JobInfo>(&r.body)
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )
            .await
            .map_err(|e| match e {
                Error::Auth {
                    status: 403,
                    message,
                    ..
                } => Error::Http {
                    method: "POST".to_owned(),
                    url: path.clone(),
                    status: 403,
                    message,
                },
                other => other,
            })?;
        response.json()
    }

    /// A Bulk query job's state.
    pub async fn bulk_job(&self, id: &str) -> Result<JobInfo> {
        self.get_json(
            "get Bulk query job",
            &self.data_path(&format!("/jobs/query/{id}")),
            &[],
            &[],
        )
        .await
    }

    /// Asks Salesforce to stop a Bulk query job (best effort, for a job we give up on).
    pub async fn abort_bulk_job(&self, id: &str) -> Result<()> {
        let path = self.data_path(&format!("/jobs/query/{id}"));
        let body = serde_json::json!({"state": "Aborted"});
        self.send(
            "abort Bulk query job",
            |c, token| c.patch(format!("{}{path}", token.instance_url)).json(&body),
            |_| Ok(()),
        )
        .await
        .map(drop)
    }

    /// One page of a completed job's CSV results, from `locator` (`None`: the first page).
    /// The page's row count must match `Sforce-NumberOfRecords`, or it is fetched again.
    pub async fn bulk_results(
        &self,
        id: &str,
        locator: Option<&str>,
        max_records: u32,
    ) -> Result<ResultsPage> {
        let path = self.data_path(&format!("/jobs/query/{id}/results"));
        let max = max_records.to_string();
        let parsed: Mutex<Option<Vec<Map<String, Value>>>> = Mutex::new(None);
        let response = self
            .send(
                "get Bulk query results",
                |c, token| {
                    let mut query: Vec<(&str, &str)> = vec![("maxRecords", max.as_str())];
                    if let Some(locator) = locator {
                        query.push(("locator", locator));
                    }
                    c.get(format!("{}{path}", token.instance_url))
                        .query(&query)
                        .header("Accept", "text/csv")
                },
                |r| {
                    let rows = parse_csv(&r.body)?;
                    if let Some(n) = r
                        .header("sforce-numberofrecords")
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        && n != rows.len()
                    {
                        return Err(format!(
                            "Sforce-NumberOfRecords says {n} rows, the body has {}",
                            rows.len()
                        ));
                    }
                    *parsed.lock().unwrap_or_else(PoisonError::into_inner) = Some(rows);
                    Ok(())
                },
            )
            .await?;
        let next_locator = response
            .header("sforce-locator")
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "null")
            .map(str::to_owned);
        let rows = parsed
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_default();
        Ok(ResultsPage { rows, next_locator })
    }
}

/// Parses Bulk CSV results: a header of field names, then one row per record. Empty cells
/// are nulls in Bulk CSV and are left out of the row.
pub fn parse_csv(body: &Bytes) -> std::result::Result<Vec<Map<String, Value>>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body.as_ref());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let mut row = Map::with_capacity(headers.len());
        for (name, value) in headers.iter().zip(record.iter()) {
            if !value.is_empty() {
                row.insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Whether `err` is Salesforce saying Bulk API cannot serve this object or query, so the
/// object should be read through REST instead.
pub fn bulk_unsupported(err: &Error) -> bool {
    match err {
        Error::Http {
            status: 400 | 404,
            message,
            ..
        } => bulk_unsupported_message(message),
        _ => false,
    }
}

/// Why Salesforce refused to create a Bulk API 2.0 query job for now, when `err` (from
/// [`SalesforceClient::create_bulk_job`]) is such a refusal: the org's daily query jobs (or
/// result storage) are used up, `400 LIMIT_EXCEEDED` "Max bulk v2 query jobs (10000) per 24
/// hrs has been reached" (DailyBulkV2QueryJobs,
/// https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/bulk_api_2_limits.htm),
/// or the user may not run Bulk jobs (any other 403, e.g. `InvalidUser`, "the user …
/// doesn't have the correct permission",
/// https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/bulk_api_2_0_errors.htm).
/// REST `queryAll` can still read the object.
pub fn bulk_refused(err: &Error) -> Option<String> {
    match err {
        Error::Http {
            status: 400,
            message,
            ..
        } if message.contains("LIMIT_EXCEEDED") => Some(format!(
            "the org's daily Bulk API 2.0 query jobs are used up (HTTP 400: {message})"
        )),
        Error::Http {
            status: 403,
            message,
            ..
        } if !message.contains("REQUEST_LIMIT_EXCEEDED") => Some(format!(
            "Salesforce does not let this user run Bulk API 2.0 query jobs (HTTP 403: \
             {message})"
        )),
        _ => None,
    }
}

/// Whether a Bulk error message (a job's `errorMessage` too) says the object or query is
/// not supported by Bulk API.
pub fn bulk_unsupported_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not supported")
        || m.contains("invalidentity")
        || m.contains("featurenotenabled")
        || m.contains("feature_not_enabled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_is_read() {
        assert_eq!(parse_limit_info("api-usage=25/15000"), Some((25, 15000)));
        assert_eq!(
            parse_limit_info("api-usage=18/5000; per-app-api-usage=17/250(appName=x)"),
            Some((18, 5000))
        );
        assert_eq!(
            parse_limit_info("per-app-api-usage=17/250(appName=x), api-usage=3/10"),
            Some((3, 10))
        );
        assert_eq!(parse_limit_info("api-usage=lots"), None);
        let budget = ApiBudget::default();
        assert_eq!(budget.usage(), None);
        budget.observe("api-usage=7/100");
        assert_eq!(budget.usage(), Some((7, 100)));
    }

    #[test]
    fn csv_rows_leave_nulls_out() {
        let body = Bytes::from_static(
            b"\"Id\",\"Name\",\"Amount\"\n\"006A\",\"Big, \"\"Deal\"\"\",\"12.5\"\n\"006B\",\"\",\"\"\n",
        );
        let rows = parse_csv(&body).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["Name"], "Big, \"Deal\"");
        assert_eq!(rows[0]["Amount"], "12.5");
        assert_eq!(rows[1].len(), 1);
        assert!(parse_csv(&Bytes::from_static(b"\"Id\",\"Name\"\n\"006A\"\n")).is_err());
        assert!(parse_csv(&Bytes::from_static(b"")).unwrap().is_empty());
    }

    #[test]
    fn bulk_refusals_are_recognised() {
        let err = |status, message: &str| Error::Http {
            method: "POST".into(),
            url: "x".into(),
            status,
            message: message.into(),
        };
        assert!(bulk_unsupported(&err(
            400,
            "Entity 'CaseStatus' is not supported by the Bulk API. (INVALIDENTITY)"
        )));
        assert!(!bulk_unsupported(&err(
            400,
            "unexpected token: FROM (MALFORMED_QUERY)"
        )));
        assert!(!bulk_unsupported(&err(500, "not supported")));

        // Airbyte's source-salesforce records this answer to a job past the daily quota.
        let quota = err(
            400,
            "Max bulk v2 query jobs (10000) per 24 hrs has been reached (10021) (LIMIT_EXCEEDED)",
        );
        assert!(
            bulk_refused(&quota)
                .unwrap()
                .contains("Max bulk v2 query jobs")
        );
        assert!(!bulk_unsupported(&quota));
        let denied = err(403, "insufficient access (InvalidUser)");
        assert!(bulk_refused(&denied).unwrap().contains("InvalidUser"));
        assert_eq!(
            bulk_refused(&err(
                403,
                "TotalRequests Limit exceeded. (REQUEST_LIMIT_EXCEEDED)"
            )),
            None
        );
        assert_eq!(
            bulk_refused(&err(400, "unexpected token (MALFORMED_QUERY)")),
            None
        );
    }
}
