//! The HTTP face of the simulator: the OAuth token endpoint, sessions, the daily API limit,
//! fault injection, the REST and Bulk API 2.0 routes, and the `/_sandbox/...` control
//! endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use serde_json::{Value, json};
use tributary_sandbox_kit::gzip::{self, accepts_gzip};
use tributary_sandbox_kit::{Kit, SandboxError, Vendor, control, response};

use super::error::{ApiError, OAuthError};
use super::org::QueryResult;
use super::soql::{self, Selection};
use super::{
    BadShape, BulkRefusal, CLIENT_ID, CLIENT_SECRET, JWT_PUBLIC_KEY, Job, REFRESH_TOKEN,
    SalesforceFaults, Shared, Stats, USERNAME, lock,
};
use crate::auth::{Claims, JWT_BEARER_GRANT};

/// Request bodies are small; anything bigger is refused before parsing.
const MAX_BODY: usize = 1 << 20;

/// `maxRecords` when a results request does not say.
const DEFAULT_MAX_RECORDS: usize = 10_000;

/// The longest request line and headers Salesforce accepts: "In each REST call, the maximum
/// length for the combined URI and headers is 16,384 bytes. A request exceeding this limit
/// returns a 431 Request Header Fields Too Large error. If the URI itself exceeds this limit,
/// the request returns a 414 URI Too Long error."
/// (https://help.salesforce.com/s/articleView?id=000386264&type=1)
pub(crate) const MAX_REQUEST_HEAD: usize = 16_384;

/// A response under construction.
struct Answer {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn json(value: &Value) -> Answer {
        Answer {
            status: 200,
            body: value.to_string().into_bytes(),
            content_type: "application/json;charset=UTF-8",
            headers: Vec::new(),
        }
    }

    fn error(e: &ApiError) -> Answer {
        Answer {
            status: e.status,
            body: e.body(),
            content_type: JSON,
            headers: Vec::new(),
        }
    }

    /// What the kit decided instead of the API, in Salesforce's error shape.
    fn kit(shared: &Shared, e: &SandboxError) -> Answer {
        Answer {
            status: e.status(),
            body: shared.error_body(e),
            content_type: JSON,
            headers: e
                .retry_after()
                .map(|s| ("Retry-After", s.to_string()))
                .into_iter()
                .collect(),
        }
    }
}

const JSON: &str = "application/json;charset=UTF-8";

/// The single handler behind every path.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(refusal) = too_long(&parts) {
        shared.stat(|s| s.too_long += 1);
        return refusal;
    }
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();

    if let Some(control) = path.strip_prefix("/_sandbox/") {
        let (status, body) = control::control(&*shared, &parts.method, control, &body);
        return respond(
            Answer {
                status,
                body,
                content_type: JSON,
                headers: Vec::new(),
            },
            false,
        );
    }
    if path == "/services/oauth2/token" {
        let answer = if parts.method == Method::POST {
            token(&shared, &body)
        } else {
            Answer::error(&ApiError::not_found())
        };
        return respond(answer, false);
    }
    let Some(rest) = path.strip_prefix("/services/data/v") else {
        return respond(Answer::error(&ApiError::not_found()), false);
    };
    let gzip = accepts_gzip(&parts.headers);
    let answer = api(&shared, &parts.method, &parts.headers, rest, &query, &body).await;
    let mut answer = answer;
    if answer.status == 200 && parts.method == Method::GET {
        hostile(&shared, rest, &query, &mut answer);
    }
    let used = shared.api_used.load(Ordering::Relaxed);
    let limit = shared.api_limit.load(Ordering::Relaxed);
    answer
        .headers
        .push(("Sforce-Limit-Info", format!("api-usage={used}/{limit}")));
    let after = if answer.status == 200 {
        shared.kit.after()
    } else {
        Default::default()
    };
    if after.malformed {
        response::malform(
            &mut answer.body,
            b"\n<html><body>503 Service Unavailable</body></html>",
        );
    }
    if after.truncate {
        let headers = headers_of(answer.content_type, &answer.headers, false);
        return response::truncated(answer.status, headers, answer.body);
    }
    respond(answer, gzip)
}

/// Salesforce's front end refusing a request line and headers over [`MAX_REQUEST_HEAD`]
/// bytes, before any API (no session check, no API request counted). The body is the front
/// end's HTML page, not an API error.
fn too_long(parts: &axum::http::request::Parts) -> Option<Response> {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path().len(), |pq| pq.as_str().len());
    // `GET <target> HTTP/1.1\r\n`, then `name: value\r\n` per header, then `\r\n`.
    let line = parts.method.as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len();
    let headers: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    let (status, title) = if target > MAX_REQUEST_HEAD {
        (414, "URI Too Long")
    } else if line + headers + 2 > MAX_REQUEST_HEAD {
        (431, "Request Header Fields Too Large")
    } else {
        return None;
    };
    let page = format!(
        "<html><head><title>{status} {title}</title></head><body><h1>{status} {title}</h1></body></html>"
    );
    Some(build(
        status,
        "text/html;charset=UTF-8",
        &[],
        false,
        page.into_bytes(),
    ))
}

/// Breaks a 200 query page or Bulk results page the way the hostile faults say. `rest` is
/// the path below `/services/data/v`.
fn hostile(shared: &Shared, rest: &str, query: &str, answer: &mut Answer) {
    let faults = shared.kit.faults();
    if !faults.repeat_cursor && !faults.cycle_cursor && faults.vendor.bad_shape.is_none() {
        return;
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let (cursor, is_query) = match segments.as_slice() {
        ["query" | "queryAll"] => (None, true),
        ["query" | "queryAll", _] => (Some(format!("/services/data/v{rest}")), true),
        ["jobs", "query", _, "results"] => (
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "locator")
                .map(|(_, v)| v.into_owned()),
            false,
        ),
        _ => return,
    };
    let next = cursor.and_then(|c| shared.kit.cursor_fault(&c));
    let mut injected = next.is_some();
    if is_query {
        let Ok(Value::Object(mut page)) = serde_json::from_slice::<Value>(&answer.body) else {
            return;
        };
        if let Some(next) = next {
            page.insert("nextRecordsUrl".into(), Value::String(next));
            page.insert("done".into(), Value::Bool(false));
        }
        if let Some(shape) = shared.kit.shape_fault(|f| f.bad_shape) {
            injected = true;
            match shape {
                BadShape::RecordsObject => {
                    page.insert("records".into(), json!({"size": 1}));
                }
                BadShape::DoneMissing => {
                    page.remove("done");
                }
            }
        }
        answer.body = Value::Object(page).to_string().into_bytes();
    } else if let Some(next) = next {
        for (name, value) in &mut answer.headers {
            if *name == "Sforce-Locator" {
                *value = next.clone();
            }
        }
    }
    if injected {
        shared.kit.inject(1);
    }
}

/// The authenticated API below `/services/data/v`.
async fn api(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
    body: &[u8],
) -> Answer {
    let Some((version, rest)) = rest.split_once('/') else {
        return Answer::error(&ApiError::not_found());
    };
    if !version.parse::<f64>().is_ok_and(|v| v >= 20.0) {
        return Answer::error(&ApiError::not_found());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    {
        let mut sessions = lock(&shared.sessions);
        let ttl = sessions.ttl;
        let valid = match sessions.tokens.get_mut(token) {
            Some(used) if ttl.is_none_or(|ttl| *used < ttl) => {
                *used += 1;
                true
            }
            _ => false,
        };
        if !valid {
            sessions.tokens.remove(token);
            drop(sessions);
            shared.stat(|s| s.invalid_sessions += 1);
            return Answer::error(&ApiError::invalid_session());
        }
    }
    let limit = shared.api_limit.load(Ordering::Relaxed);
    let admitted = shared
        .api_used
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used < limit).then_some(used + 1)
        })
        .is_ok();
    if !admitted {
        shared.stat(|s| s.limit_exceeded += 1);
        return Answer::error(&ApiError::limit_exceeded());
    }
    shared.stat(|s| s.api_requests += 1);

    if let Err(e) = shared.kit.admit_request(Instant::now()) {
        return Answer::kit(shared, &e);
    }
    if let Some(e) = shared.kit.before_answer("account").await {
        return Answer::kit(shared, &e);
    }

    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result = match (method, segments.as_slice()) {
        (&Method::GET, ["sobjects"]) => Ok(describe_global(shared)),
        (&Method::GET, ["sobjects", object, "describe"]) => describe(shared, object),
        (&Method::GET, ["limits"]) => Ok(limits(shared)),
        (&Method::GET, [kind @ ("query" | "queryAll")]) => {
            start_query(shared, version, kind, query, headers)
        }
        (&Method::GET, [kind @ ("query" | "queryAll"), locator]) => {
            more_query(shared, version, kind, locator, headers)
        }
        (&Method::POST, ["jobs", "query"]) => create_job(shared, body),
        (&Method::GET, ["jobs", "query", id]) => job_info(shared, id, true),
        (&Method::PATCH, ["jobs", "query", id]) => abort_job(shared, id, body),
        (&Method::DELETE, ["jobs", "query", id]) => match lock(&shared.jobs).remove(*id) {
            Some(_) => Ok(Answer {
                status: 204,
                body: Vec::new(),
                content_type: "application/json;charset=UTF-8",
                headers: Vec::new(),
            }),
            None => Err(ApiError::not_found()),
        },
        (&Method::GET, ["jobs", "query", id, "results"]) => results(shared, id, query),
        _ => Err(ApiError::not_found()),
    };
    result.unwrap_or_else(|e| Answer::error(&e))
}

fn describe_global(shared: &Shared) -> Answer {
    let org = shared.org.read();
    let sobjects: Vec<Value> = org
        .tables
        .iter()
        .map(|t| {
            json!({
                "name": t.meta.name,
                "label": t.meta.label,
                "keyPrefix": t.meta.key_prefix,
                "custom": t.meta.custom,
                "queryable": true,
                "retrieveable": true,
                "replicateable": t.meta.fields.iter().any(|f| f.name == "SystemModstamp"),
                "urls": {"sobject": format!("/services/data/v62.0/sobjects/{}", t.meta.name)},
            })
        })
        .collect();
    Answer::json(&json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects}))
}

fn describe(shared: &Shared, object: &str) -> Result<Answer, ApiError> {
    let org = shared.org.read();
    let table = org
        .table(object)
        .ok_or_else(|| ApiError::not_found_object(object))?;
    let fields: Vec<Value> = table
        .meta
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "label": f.label,
                "type": f.ty,
                "custom": f.custom,
                "nillable": f.name != "Id",
                "compoundFieldName": f.compound,
                "referenceTo": f.reference_to.iter().collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Answer::json(&json!({
        "name": table.meta.name,
        "label": table.meta.label,
        "custom": table.meta.custom,
        "keyPrefix": table.meta.key_prefix,
        "queryable": true,
        "fields": fields,
    })))
}

fn limits(shared: &Shared) -> Answer {
    let used = shared.api_used.load(Ordering::Relaxed);
    let limit = shared.api_limit.load(Ordering::Relaxed);
    Answer::json(&json!({
        "DailyApiRequests": {"Max": limit, "Remaining": limit.saturating_sub(used)},
        "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
    }))
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|part| part.trim().strip_prefix("batchSize="))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .unwrap_or(2000)
        .clamp(200, 2000)
}

fn run_query(shared: &Shared, soql_text: &str, all: bool) -> Result<QueryResult, ApiError> {
    let q = soql::parse(soql_text).map_err(ApiError::malformed)?;
    shared.org.read().query(&q, all)
}

fn start_query(
    shared: &Shared,
    version: &str,
    kind: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Answer, ApiError> {
    let soql_text = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ApiError::malformed("the q parameter is missing"))?;
    shared.stat(|s| s.queries += 1);
    let result = run_query(shared, &soql_text, kind == "queryAll")?;
    if result.select.is_empty() {
        return Ok(Answer::json(
            &json!({"totalSize": result.count, "done": true, "records": []}),
        ));
    }
    let records: Vec<String> = result
        .rows
        .iter()
        .map(|row| render_record(version, &result, row))
        .collect();
    let locator = shared.next_id("01g");
    let records = Arc::new(records);
    let fields = result.select.len();
    lock(&shared.cursors).insert(locator.clone(), (Arc::clone(&records), fields));
    Ok(query_page(
        version,
        kind,
        &locator,
        &records,
        0,
        page_size(batch_size(headers), fields),
    ))
}

/// Records per query page: the requested batch size, but fewer for wide rows, as
/// Salesforce does ("The maximum result size is 2000, but this can be smaller if you have
/// selected several fields", https://help.salesforce.com/s/articleView?id=000386264&type=1).
/// Salesforce does not say by how much; here, rows of more than [`WIDE_ROW_FIELDS`] fields
/// shrink the page in proportion, so readers must follow `nextRecordsUrl` even when they
/// asked for fewer records than `batchSize`.
fn page_size(batch: usize, fields: usize) -> usize {
    if fields <= WIDE_ROW_FIELDS {
        batch
    } else {
        (batch * WIDE_ROW_FIELDS / fields).max(1)
    }
}

/// Rows with more fields than this get smaller pages ([`page_size`]).
const WIDE_ROW_FIELDS: usize = 50;

fn more_query(
    shared: &Shared,
    version: &str,
    kind: &str,
    locator: &str,
    headers: &HeaderMap,
) -> Result<Answer, ApiError> {
    let invalid = || ApiError::new(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
    let (id, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let (records, fields) = lock(&shared.cursors).get(id).cloned().ok_or_else(invalid)?;
    shared.stat(|s| s.query_more += 1);
    Ok(query_page(
        version,
        kind,
        id,
        &records,
        offset,
        page_size(batch_size(headers), fields),
    ))
}

fn query_page(
    version: &str,
    kind: &str,
    locator: &str,
    records: &[String],
    offset: usize,
    size: usize,
) -> Answer {
    let end = (offset + size).min(records.len());
    let done = end >= records.len();
    let mut body = format!("{{\"totalSize\":{},\"done\":{done},", records.len());
    if !done {
        body.push_str(&format!(
            "\"nextRecordsUrl\":\"/services/data/v{version}/{kind}/{locator}-{end}\","
        ));
    }
    body.push_str("\"records\":[");
    for (i, r) in records[offset.min(end)..end].iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r);
    }
    body.push_str("]}");
    Answer {
        status: 200,
        body: body.into_bytes(),
        content_type: "application/json;charset=UTF-8",
        headers: Vec::new(),
    }
}

/// One REST record: `attributes` first, then the selected fields in order.
fn render_record(version: &str, result: &QueryResult, row: &[Value]) -> String {
    let id = result
        .select
        .iter()
        .position(|f| f == "Id")
        .and_then(|i| row[i].as_str())
        .unwrap_or_default();
    let mut out = format!(
        "{{\"attributes\":{}",
        json!({"type": result.object, "url": format!("/services/data/v{version}/sobjects/{}/{id}", result.object)})
    );
    for (field, value) in result.select.iter().zip(row) {
        out.push(',');
        out.push_str(&Value::String(field.clone()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

fn create_job(shared: &Shared, body: &[u8]) -> Result<Answer, ApiError> {
    let refusal = shared.kit.faults().vendor.bulk_refusal;
    if let Some(refusal) = refusal {
        shared.kit.inject(1);
        return Err(match refusal {
            BulkRefusal::DailyJobLimit => ApiError::new(
                400,
                "LIMIT_EXCEEDED",
                "Max bulk v2 query jobs (10000) per 24 hrs has been reached (10001)",
            ),
            BulkRefusal::NoPermission => ApiError::new(
                403,
                "InvalidUser",
                "The user doesn't have the permission to run Bulk API 2.0 query jobs",
            ),
        });
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "JSON_PARSER_ERROR", e.to_string()))?;
    let operation = request["operation"].as_str().unwrap_or_default().to_owned();
    if operation != "query" && operation != "queryAll" {
        return Err(ApiError::new(
            400,
            "INVALIDJOB",
            format!("Invalid operation: '{operation}'; query jobs take query or queryAll"),
        ));
    }
    let text = request["query"]
        .as_str()
        .ok_or_else(|| ApiError::new(400, "INVALIDJOB", "the query is missing"))?;
    if let Some(ct) = request["contentType"].as_str()
        && ct != "CSV"
    {
        return Err(ApiError::new(
            400,
            "INVALIDJOB",
            format!("contentType {ct} is not CSV"),
        ));
    }
    let q = soql::parse(text).map_err(ApiError::malformed)?;
    if !q.order.is_empty() || q.limit.is_some() || q.selection == Selection::Count {
        return Err(ApiError::new(
            400,
            "INVALIDJOB",
            "Bulk API 2.0 query jobs cannot use ORDER BY, LIMIT or COUNT()",
        ));
    }
    if shared
        .bulk_unsupported
        .iter()
        .any(|o| o.eq_ignore_ascii_case(&q.object))
    {
        return Err(ApiError::new(
            400,
            "INVALIDENTITY",
            format!("Entity '{}' is not supported by the Bulk API.", q.object),
        ));
    }
    let result = shared.org.read().query(&q, operation == "queryAll")?;
    if result.compound_selected {
        return Err(ApiError::new(
            400,
            "INVALIDJOB",
            "Selecting compound data not supported in Bulk Query",
        ));
    }
    let types: Vec<String> = {
        let org = shared.org.read();
        let meta = org.table(&result.object).map(|t| t.meta.clone());
        result
            .select
            .iter()
            .map(|f| {
                meta.as_ref()
                    .and_then(|m| m.field(f))
                    .map(|m| m.ty.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    let rows: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(&types)
                .map(|(value, ty)| csv_cell(value, ty))
                .collect()
        })
        .collect();
    let job = Job {
        id: shared.next_id("750"),
        object: result.object.clone(),
        operation,
        state: "UploadComplete".into(),
        polls_left: shared.bulk_polls,
        created: super::org::format_datetime(shared.now()),
        header: result.select.clone(),
        rows,
    };
    let info = job_json(&job);
    lock(&shared.jobs).insert(job.id.clone(), job);
    shared.stat(|s| s.bulk_jobs += 1);
    Ok(Answer::json(&info))
}

/// A value as Bulk CSV writes it: datetimes in `Z` form, nulls empty.
fn csv_cell(value: &Value, ty: &str) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if ty == "datetime" => soql::parse_datetime(s)
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| s.clone()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "operation": job.operation,
        "object": job.object,
        "createdById": "005000000000001AAA",
        "createdDate": job.created,
        "systemModstamp": job.created,
        "state": job.state,
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "apiVersion": 62.0,
        "jobType": "V2Query",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
        "numberRecordsProcessed": if job.state == "JobComplete" { job.rows.len() } else { 0 },
        "retries": 0,
        "totalProcessingTime": 0,
    })
}

fn job_info(shared: &Shared, id: &str, poll: bool) -> Result<Answer, ApiError> {
    let mut jobs = lock(&shared.jobs);
    let job = jobs.get_mut(id).ok_or_else(ApiError::not_found)?;
    if poll && (job.state == "UploadComplete" || job.state == "InProgress") {
        if job.polls_left > 0 {
            job.polls_left -= 1;
            job.state = "InProgress".into();
        } else {
            job.state = "JobComplete".into();
        }
    }
    Ok(Answer::json(&job_json(job)))
}

fn abort_job(shared: &Shared, id: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "JSON_PARSER_ERROR", e.to_string()))?;
    if request["state"] != "Aborted" {
        return Err(ApiError::new(
            400,
            "INVALIDJOBSTATE",
            "only Aborted can be set",
        ));
    }
    {
        let mut jobs = lock(&shared.jobs);
        let job = jobs.get_mut(id).ok_or_else(ApiError::not_found)?;
        if job.state == "JobComplete" {
            return Err(ApiError::new(
                400,
                "INVALIDJOBSTATE",
                "a completed job cannot be aborted",
            ));
        }
        job.state = "Aborted".into();
    }
    job_info(shared, id, false)
}

fn results(shared: &Shared, id: &str, query: &str) -> Result<Answer, ApiError> {
    let mut locator: Option<String> = None;
    let mut max = DEFAULT_MAX_RECORDS;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "locator" => locator = Some(v.into_owned()),
            "maxRecords" => {
                max = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::new(400, "INVALIDJOB", "maxRecords must be a positive number")
                })?;
            }
            _ => {}
        }
    }
    let jobs = lock(&shared.jobs);
    let job = jobs.get(id).ok_or_else(ApiError::not_found)?;
    if job.state != "JobComplete" {
        return Err(ApiError::new(
            400,
            "INVALIDJOBSTATE",
            format!("job {id} is {}, not JobComplete", job.state),
        ));
    }
    let offset = match &locator {
        None => 0,
        Some(l) => l
            .strip_prefix("L")
            .and_then(|n| usize::from_str_radix(n, 36).ok())
            .filter(|n| *n <= job.rows.len())
            .ok_or_else(|| ApiError::new(400, "INVALIDLOCATOR", format!("invalid locator: {l}")))?,
    };
    let end = (offset + max).min(job.rows.len());
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let written = writer
        .write_record(&job.header)
        .and_then(|()| {
            job.rows[offset..end]
                .iter()
                .try_for_each(|row| writer.write_record(row))
        })
        .map_err(|e| ApiError::new(500, "UNKNOWN_EXCEPTION", e.to_string()));
    written?;
    let body = writer
        .into_inner()
        .map_err(|e| ApiError::new(500, "UNKNOWN_EXCEPTION", e.to_string()))?;
    let next = if end < job.rows.len() {
        format!("L{}", to_base36(end))
    } else {
        "null".to_owned()
    };
    drop(jobs);
    shared.stat(|s| s.bulk_result_pages += 1);
    Ok(Answer {
        status: 200,
        body,
        content_type: "text/csv",
        headers: vec![
            ("Sforce-Locator", next),
            ("Sforce-NumberOfRecords", (end - offset).to_string()),
        ],
    })
}

fn to_base36(mut n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[n % 36]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `POST /services/oauth2/token`.
fn token(shared: &Shared, body: &[u8]) -> Answer {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body).into_owned().collect();
    let param = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let granted = match param("grant_type") {
        "refresh_token" => {
            if param("client_id") != CLIENT_ID {
                Err(OAuthError::new(
                    "invalid_client_id",
                    "client identifier invalid",
                ))
            } else if form.contains_key("client_secret") && param("client_secret") != CLIENT_SECRET
            {
                Err(OAuthError::new(
                    "invalid_client",
                    "invalid client credentials",
                ))
            } else if param("refresh_token") != REFRESH_TOKEN {
                Err(OAuthError::new(
                    "invalid_grant",
                    "expired access/refresh token",
                ))
            } else {
                Ok(())
            }
        }
        "client_credentials" => {
            if param("client_id") != CLIENT_ID {
                Err(OAuthError::new(
                    "invalid_client_id",
                    "client identifier invalid",
                ))
            } else if param("client_secret") != CLIENT_SECRET {
                Err(OAuthError::new(
                    "invalid_client",
                    "invalid client credentials",
                ))
            } else {
                Ok(())
            }
        }
        JWT_BEARER_GRANT => verify_assertion(shared, param("assertion")),
        other => Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant type not supported: {other}"),
        )),
    };
    match granted {
        Ok(()) => {
            let access_token = format!(
                "00DSANDBOX0000001!AQ{}",
                shared.counter.fetch_add(1, Ordering::Relaxed) + 1
            );
            lock(&shared.sessions)
                .tokens
                .insert(access_token.clone(), 0);
            shared.stat(|s| s.tokens_issued += 1);
            Answer::json(&json!({
                "access_token": access_token,
                "signature": "c2FuZGJveA==",
                "scope": "api",
                "instance_url": shared.url,
                "id": format!("{}/id/00DSANDBOX0000001AAA/005000000000001AAA", shared.url),
                "token_type": "Bearer",
                "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
            }))
        }
        Err(e) => {
            shared.stat(|s| s.tokens_refused += 1);
            Answer {
                status: e.status,
                body: e.body(),
                content_type: "application/json;charset=UTF-8",
                headers: Vec::new(),
            }
        }
    }
}

/// Checks a JWT bearer assertion: RS256 with the test key, our client, our user, a login
/// server (or this simulator) as audience, not expired.
fn verify_assertion(shared: &Shared, assertion: &str) -> Result<(), OAuthError> {
    let invalid = || OAuthError::new("invalid_grant", "invalid assertion");
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(JWT_PUBLIC_KEY).map_err(|_| invalid())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[
        shared.url.as_str(),
        "https://login.salesforce.com",
        "https://test.salesforce.com",
    ]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(assertion, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidAudience => OAuthError::new("invalid_grant", "audience is invalid"),
            ErrorKind::ExpiredSignature => {
                OAuthError::new("invalid_grant", "expired authorization code")
            }
            _ => invalid(),
        }
    })?;
    if data.claims.iss != CLIENT_ID {
        return Err(OAuthError::new(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    if data.claims.sub != USERNAME {
        return Err(OAuthError::new(
            "invalid_grant",
            "user hasn't approved this consumer",
        ));
    }
    Ok(())
}

/// The kit's control API answers in Salesforce's shapes; `/_sandbox/limits` and
/// `/_sandbox/expire_sessions` are Salesforce's own.
impl Vendor for Shared {
    type Faults = SalesforceFaults;

    fn kit(&self) -> &Kit<SalesforceFaults> {
        &self.kit
    }

    fn error_body(&self, error: &SandboxError) -> Vec<u8> {
        let e = match error {
            SandboxError::Injected { status } => ApiError::new(
                *status,
                "SERVER_UNAVAILABLE",
                "The server is temporarily unavailable. Please try again later.",
            ),
            // Salesforce meters an org by its daily limit (403 REQUEST_LIMIT_EXCEEDED, which
            // the connector defers on); this is the kit's generic throttle, which a client
            // must wait out and retry, so it has its own code.
            SandboxError::Throttled { retry_after, .. } => ApiError::new(
                429,
                "TOO_MANY_REQUESTS",
                format!("Too many requests; retry after {retry_after} seconds."),
            ),
            SandboxError::BadControl { message, .. } => {
                ApiError::new(400, "JSON_PARSER_ERROR", message.clone())
            }
            SandboxError::UnknownControl { .. } => ApiError::not_found(),
        };
        e.body()
    }

    fn stats(&self) -> Value {
        json!(Shared::stats(self))
    }

    fn reset_stats(&self) {
        *lock(&self.stats) = Stats::default();
    }

    fn control(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Option<Result<Value, SandboxError>> {
        match (method, path) {
            (&Method::POST, "limits") => Some(control::parse_body(body).map(|request| {
                if let Some(limit) = request["daily_api_limit"].as_u64() {
                    self.api_limit.store(limit, Ordering::Relaxed);
                }
                if request["reset_usage"].as_bool() == Some(true) {
                    self.api_used.store(0, Ordering::Relaxed);
                }
                json!({
                    "used": self.api_used.load(Ordering::Relaxed),
                    "limit": self.api_limit.load(Ordering::Relaxed),
                })
            })),
            (&Method::POST, "expire_sessions") => {
                lock(&self.sessions).tokens.clear();
                Some(Ok(json!({"expired": true})))
            }
            _ => None,
        }
    }
}

/// Salesforce compresses Bulk results (and anything else) when the client accepts it.
fn respond(answer: Answer, gzip: bool) -> Response {
    let packed = (gzip && answer.body.len() > 256)
        .then(|| gzip::compress(&answer.body))
        .flatten();
    let compressed = packed.is_some();
    let headers = headers_of(answer.content_type, &answer.headers, compressed);
    response::build(answer.status, headers, packed.unwrap_or(answer.body))
}

fn headers_of(content_type: &str, extra: &[(&'static str, String)], gzip: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers
}

/// A response with a header set and a body, as the front end sends it.
fn build(
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    gzip: bool,
    body: Vec<u8>,
) -> Response {
    response::build(status, headers_of(content_type, headers, gzip), body)
}
