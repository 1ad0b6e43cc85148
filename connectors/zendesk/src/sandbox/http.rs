//! The HTTP face of the simulator: authentication, the two rate limits, fault injection,
//! routing of `/api/v2/...` to the store with Zendesk's parameters and response shapes,
//! and the `/_sandbox/...` control endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tributary_sandbox_kit::base64;
use tributary_sandbox_kit::form::parse_pairs;
use tributary_sandbox_kit::{Kit, SandboxError, Vendor, control, response, to_json};

use super::error::ApiError;
use super::store::{Kind, Obj, Store};
use super::{Quota, RateLimits, Shared, ZendeskFaults, ZendeskSandbox};

/// Request bodies are small JSON objects; anything bigger is refused before parsing.
const MAX_BODY: usize = 1 << 20;

/// Zendesk leaves the most recent minute out of its exports.
const EXCLUSION_SECS: i64 = 60;

/// The largest export page, and the default.
const MAX_PER_PAGE: usize = 1000;

/// The largest cursor-paginated list page, and the default.
const MAX_PAGE_SIZE: usize = 100;

/// The single handler behind every path.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = shared.next_request_id();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let base = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"))
        .unwrap_or_default();

    if let Some(control) = path.strip_prefix("/_sandbox/") {
        let (status, body) = control::control(&*shared, &parts.method, control, &body);
        return respond(&shared, status, body, &request_id, Quota::default(), &[]);
    }

    let export = path.starts_with("/api/v2/incremental/");
    shared.count_request(export);
    if !authorized(&parts.headers) {
        let e = ApiError::unauthorized();
        return respond(
            &shared,
            e.status,
            e.body(),
            &request_id,
            Quota::default(),
            &[(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"Web Password\"".into(),
            )],
        );
    }
    let quota = match shared.admit(export, Instant::now()) {
        // Zendesk documents its export header on the cursor-based exports only.
        Ok(quota) if !path.contains("/cursor") => Quota {
            export: None,
            ..quota
        },
        Ok(quota) => quota,
        Err(e) => return refuse(&shared, &e, &request_id, Quota::default()),
    };

    if resource_of(&path).is_some_and(|resource| shared.is_unavailable(resource))
        || (shared.kit.faults().vendor.forbid_after_first_page
            && parse_pairs(&query).iter().any(|(k, _)| k == "page[after]"))
    {
        let e = ApiError::forbidden();
        return respond(&shared, e.status, e.body(), &request_id, quota, &[]);
    }
    let limit = if export { "export" } else { "account" };
    if let Some(e) = shared.kit.before_answer(limit).await {
        return refuse(&shared, &e, &request_id, quota);
    }

    let result = route(&shared, &parts.method, &path, &query, &body, &base);
    let (status, mut payload) = match result {
        Ok(answer) => answer,
        Err(e) => (e.status, e.body()),
    };
    if status == 200 && parts.method == Method::GET {
        let params = parse_pairs(&query);
        let cursor = params
            .iter()
            .find(|(k, _)| k == "cursor" || k == "page[after]")
            .map(|(_, v)| v.as_str());
        payload = shared.hostile_body(cursor, payload);
    }
    let after = if status == 200 {
        shared.kit.after()
    } else {
        Default::default()
    };
    if after.malformed {
        response::malform(&mut payload, b"\n<html>502 Bad Gateway</html>");
    }
    if after.truncate {
        let mut headers = HeaderMap::new();
        base_headers(&shared, &request_id, Quota::default(), &mut headers);
        return response::truncated(200, headers, payload);
    }
    respond(&shared, status, payload, &request_id, quota, &[])
}

/// Answers what the kit decided instead of the API, in Zendesk's error shape.
fn refuse(shared: &Shared, e: &SandboxError, request_id: &str, quota: Quota) -> Response {
    let retry_after = e
        .retry_after()
        .map(|s| (header::RETRY_AFTER, s.to_string()));
    let body = shared.error_body(e);
    respond(
        shared,
        e.status(),
        body,
        request_id,
        quota,
        retry_after.as_slice(),
    )
}

type Answer = Result<(u16, Vec<u8>), ApiError>;

/// The resource a `/api/v2` path is about, as a plan includes or lacks it:
/// `/api/v2/ticket_forms.json` and `/api/v2/ticket_forms/1.json` → `ticket_forms`,
/// `/api/v2/incremental/tickets/cursor.json` → `tickets`.
fn resource_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v2/")?;
    let mut segments = rest
        .split('/')
        .map(|s| s.strip_suffix(".json").unwrap_or(s));
    match segments.next()? {
        "incremental" => segments.next(),
        resource => Some(resource),
    }
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    base: &str,
) -> Answer {
    let rest = path
        .strip_prefix("/api/v2/")
        .ok_or_else(ApiError::invalid_endpoint)?;
    let rest = rest.strip_suffix(".json").unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    let params = parse_pairs(query);
    let now = shared.now();
    let ok = |value: Value| Ok((200, to_vec(&value)));
    match (method, segments.as_slice()) {
        (&Method::GET, ["incremental", "tickets", "cursor"]) => {
            cursor_export(shared, Kind::Ticket, &params, now, base)
        }
        (&Method::GET, ["incremental", "users", "cursor"]) => {
            cursor_export(shared, Kind::User, &params, now, base)
        }
        (&Method::GET, ["incremental", "organizations"]) => {
            time_export(shared, Some(Kind::Organization), &params, now, base)
        }
        (&Method::GET, ["incremental", "ticket_events"]) => {
            time_export(shared, None, &params, now, base)
        }
        (&Method::GET, ["users", "me"]) => {
            let store = shared.store.read();
            let admin = store.admin_id;
            ok(json!({"user": store.get(Kind::User, admin).cloned().unwrap_or_default()}))
        }
        (&Method::GET, ["tickets", "show_many"]) => show_many(shared, &params),
        (&Method::GET, ["tags"]) => tags(shared, &params, base),
        (&Method::GET, ["ticket_forms"]) => ticket_forms(shared),
        (&Method::GET, [resource]) => {
            let kind = Kind::from_resource(resource).ok_or_else(ApiError::invalid_endpoint)?;
            list(shared, kind, &params, base)
        }
        (&Method::GET, [resource, id]) => {
            let kind = Kind::from_resource(resource).ok_or_else(ApiError::invalid_endpoint)?;
            let id: u64 = id.parse().map_err(|_| ApiError::not_found())?;
            let store = shared.store.read();
            let value = store
                .get(kind, id)
                .filter(|v| kind != Kind::Ticket || !Store::is_deleted(kind, v))
                .ok_or_else(ApiError::not_found)?;
            ok(json!({kind.singular(): value}))
        }
        (&Method::POST, [resource]) => {
            let kind = Kind::from_resource(resource).ok_or_else(ApiError::invalid_endpoint)?;
            let fields = object_body(kind, body)?;
            let created = shared.store.write().create(kind, fields, now)?;
            Ok((201, to_vec(&json!({kind.singular(): created}))))
        }
        (&Method::PUT, [resource, id]) => {
            let kind = Kind::from_resource(resource).ok_or_else(ApiError::invalid_endpoint)?;
            let id: u64 = id.parse().map_err(|_| ApiError::not_found())?;
            let fields = object_body(kind, body)?;
            let updated = shared.store.write().update(kind, id, fields, now)?;
            ok(json!({kind.singular(): updated}))
        }
        (&Method::DELETE, [resource, id]) => {
            let kind = Kind::from_resource(resource).ok_or_else(ApiError::invalid_endpoint)?;
            let id: u64 = id.parse().map_err(|_| ApiError::not_found())?;
            shared.store.write().delete(kind, id, now)?;
            Ok((204, Vec::new()))
        }
        _ => Err(ApiError::invalid_endpoint()),
    }
}

/// `{"ticket": {...}}` → the inner object.
fn object_body(kind: Kind, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "InvalidJSON", format!("The body is not JSON: {e}")))?;
    match value.get(kind.singular()) {
        Some(Value::Object(fields)) => Ok(fields.clone()),
        _ => Err(ApiError::record_invalid(format!(
            "The body must be {{\"{}\": {{...}}}}",
            kind.singular()
        ))),
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn integer(params: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    param(params, name)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid_value(format!("{name} must be an integer")))
        })
        .transpose()
}

fn per_page(params: &[(String, String)]) -> Result<usize, ApiError> {
    match integer(params, "per_page")? {
        None => Ok(MAX_PER_PAGE),
        Some(n) if (1..=MAX_PER_PAGE as i64).contains(&n) => Ok(n as usize),
        Some(_) => Err(ApiError::invalid_value(format!(
            "per_page must be between 1 and {MAX_PER_PAGE}"
        ))),
    }
}

/// `start_time` as an export takes it: required, and at least a minute in the past.
fn start_time(params: &[(String, String)], now: i64) -> Result<Option<i64>, ApiError> {
    let start = integer(params, "start_time")?;
    if let Some(start) = start
        && start > now - EXCLUSION_SECS
    {
        return Err(ApiError::invalid_value(
            "Too recent start_time. Use a start_time older than 1 minute",
        ));
    }
    Ok(start)
}

/// Which tickets an export of tickets or ticket events covers: `support_type_scope`
/// (`all`, `agent` or `ai_agent`; "Defaults to `agent`", so tickets handled by an AI agent
/// are left out unless asked for), per the incremental exports reference
/// (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/).
/// `None` keeps every ticket.
fn support_scope(params: &[(String, String)]) -> Result<Option<bool>, ApiError> {
    match param(params, "support_type_scope") {
        None | Some("agent") => Ok(Some(false)),
        Some("ai_agent") => Ok(Some(true)),
        Some("all") => Ok(None),
        Some(other) => Err(ApiError::invalid_value(format!(
            "support_type_scope must be one of all, agent, ai_agent, not {other}"
        ))),
    }
}

/// Whether an export scoped to `scope` (see [`support_scope`]) shows ticket `ticket`.
fn in_scope(scope: Option<bool>, ticket: Option<u64>) -> bool {
    match (scope, ticket) {
        (None, _) | (_, None) => true,
        (Some(ai), Some(ticket)) => Store::ai_agent_ticket(ticket) == ai,
    }
}

/// A cursor-based export page: `start_time` or `cursor` → objects after it.
fn cursor_export(
    shared: &Shared,
    kind: Kind,
    params: &[(String, String)],
    now: i64,
    base: &str,
) -> Answer {
    let per_page = per_page(params)?;
    let position = match param(params, "cursor") {
        Some(cursor) => decode_export_cursor(cursor)
            .ok_or_else(|| ApiError::invalid_pagination("Invalid cursor"))?,
        None => match start_time(params, now)? {
            Some(start) => (start, 0),
            None => {
                return Err(ApiError::invalid_value("start_time or cursor is required"));
            }
        },
    };
    let exclude_deleted = param(params, "exclude_deleted") == Some("true");
    let scope = match kind {
        Kind::Ticket => support_scope(params)?,
        _ => None,
    };
    let store = shared.store.read();
    let mut page = store.cursor_export(kind, position, per_page, now - EXCLUSION_SECS);
    if shared.kit.faults().vendor.empty_export_pages
        && let Some(first) = page.items.first()
    {
        let id = first.value.get("id").and_then(Value::as_u64).unwrap_or(0);
        let before = (first.ts, id.saturating_sub(1));
        if before != position {
            page.items.clear();
            page.after = before;
            page.end_of_stream = false;
        }
    }
    let cursor = encode_export_cursor(page.after);
    let items = page
        .items
        .iter()
        .copied()
        .filter(|o| !(exclude_deleted && Store::is_deleted(kind, &o.value)))
        .filter(|o| in_scope(scope, o.value.get("id").and_then(Value::as_u64)));
    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(format!("{{\"{}\":[", kind.resource()).as_bytes());
    push_rendered(&mut out, items);
    let after_url = format!(
        "{base}/api/v2/incremental/{}/cursor.json?cursor={cursor}&per_page={per_page}",
        kind.resource()
    );
    let tail = json!({
        "after_url": after_url, "after_cursor": cursor,
        "before_url": null, "before_cursor": null, "end_of_stream": page.end_of_stream,
    });
    close_with(&mut out, &tail);
    Ok((200, out))
}

/// A time-based export page (organizations, or ticket events when `kind` is `None`).
fn time_export(
    shared: &Shared,
    kind: Option<Kind>,
    params: &[(String, String)],
    now: i64,
    base: &str,
) -> Answer {
    let per_page = per_page(params)?;
    let start = start_time(params, now)?
        .ok_or_else(|| ApiError::invalid_value("start_time is required"))?;
    let scope = match kind {
        None => support_scope(params)?,
        Some(_) => None,
    };
    let store = shared.store.read();
    let horizon = now - EXCLUSION_SECS;
    let (key, page) = match kind {
        Some(kind) => (
            kind.resource(),
            store.time_export(kind, start, per_page, horizon),
        ),
        None => (
            "ticket_events",
            store.event_export(start, per_page, horizon),
        ),
    };
    let items: Vec<_> = page
        .items
        .iter()
        .copied()
        .filter(|o| in_scope(scope, o.get("ticket_id").and_then(Value::as_u64)))
        .collect();
    let mut out = Vec::with_capacity(items.len() * 1024 + 256);
    out.extend_from_slice(format!("{{\"{key}\":[").as_bytes());
    push_items(&mut out, items.iter().copied());
    let tail = json!({
        "next_page": format!("{base}/api/v2/incremental/{key}.json?per_page={per_page}&start_time={}", page.end_time),
        "count": items.len(),
        "end_time": page.end_time,
        "end_of_stream": page.end_of_stream,
    });
    close_with(&mut out, &tail);
    Ok((200, out))
}

/// A list: cursor pagination with `page[size]`/`page[after]`, else offset pagination
/// (`page`, `per_page`).
fn list(shared: &Shared, kind: Kind, params: &[(String, String)], base: &str) -> Answer {
    let store = shared.store.read();
    let resource = kind.resource();
    let cursor_mode =
        param(params, "page[size]").is_some() || param(params, "page[after]").is_some();
    if !cursor_mode {
        let per_page = match integer(params, "per_page")? {
            None => MAX_PAGE_SIZE,
            Some(n) if (1..=MAX_PAGE_SIZE as i64).contains(&n) => n as usize,
            Some(_) => {
                return Err(ApiError::invalid_value(
                    "per_page must be between 1 and 100",
                ));
            }
        };
        let page = integer(params, "page")?.unwrap_or(1).max(1) as usize;
        let now = shared.now();
        let all: Vec<_> = store
            .table(kind)
            .objects
            .values()
            .filter(|o| store.listed(kind, &o.value, now))
            .collect();
        let count = all.len();
        let items = all.into_iter().skip((page - 1) * per_page).take(per_page);
        let mut out = format!("{{\"{resource}\":[").into_bytes();
        push_rendered(&mut out, items);
        let next = (page * per_page < count).then(|| {
            format!(
                "{base}/api/v2/{resource}.json?page={}&per_page={per_page}",
                page + 1
            )
        });
        let previous = (page > 1).then(|| {
            format!(
                "{base}/api/v2/{resource}.json?page={}&per_page={per_page}",
                page - 1
            )
        });
        close_with(
            &mut out,
            &json!({"next_page": next, "previous_page": previous, "count": count}),
        );
        return Ok((200, out));
    }
    let size = page_size(params)?;
    let after = match param(params, "page[after]") {
        None => None,
        Some(cursor) => Some(
            decode_list_cursor(cursor)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid_pagination("page[after] is not a valid cursor"))?,
        ),
    };
    let (items, has_more) = store.list(kind, after, size, shared.now());
    let first = items
        .first()
        .and_then(|v| v.get("id"))
        .map(Value::to_string);
    let last = items.last().and_then(|v| v.get("id")).map(Value::to_string);
    let mut out = format!("{{\"{resource}\":[").into_bytes();
    push_items(&mut out, items.iter().copied());
    close_with(
        &mut out,
        &cursor_envelope(
            &format!("{base}/api/v2/{resource}.json"),
            size,
            first,
            last,
            has_more,
        ),
    );
    Ok((200, out))
}

/// Every ticket form, unpaged: "List Ticket Forms" documents no pagination (paging
/// parameters are ignored, as Zendesk ignores parameters it does not take) and its answer
/// holds only the `ticket_forms` array; an account has at most 300 forms
/// (https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_forms/).
fn ticket_forms(shared: &Shared) -> Answer {
    let store = shared.store.read();
    let mut out = b"{\"ticket_forms\":[".to_vec();
    push_rendered(&mut out, store.table(Kind::TicketForm).objects.values());
    out.extend_from_slice(b"]}");
    Ok((200, out))
}

/// The tags in use, by name, cursor-paginated.
fn tags(shared: &Shared, params: &[(String, String)], base: &str) -> Answer {
    let size = page_size(params)?;
    let after = param(params, "page[after]")
        .map(|c| {
            decode_list_cursor(c)
                .ok_or_else(|| ApiError::invalid_pagination("page[after] is not a valid cursor"))
        })
        .transpose()?;
    let all = shared.store.read().tags();
    let mut rest = all
        .iter()
        .filter(|(name, _)| after.as_ref().is_none_or(|a| name.as_str() > a.as_str()));
    let page: Vec<Map<String, Value>> = rest
        .by_ref()
        .take(size)
        .map(|(name, count)| {
            let mut tag = Map::new();
            tag.insert("name".into(), json!(name));
            tag.insert("count".into(), json!(count));
            tag
        })
        .collect();
    let has_more = rest.next().is_some();
    let name = |t: Option<&Map<String, Value>>| {
        t.and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (first, last) = (name(page.first()), name(page.last()));
    let mut out = b"{\"tags\":[".to_vec();
    push_items(&mut out, page.iter());
    close_with(
        &mut out,
        &cursor_envelope(
            &format!("{base}/api/v2/tags.json"),
            size,
            first,
            last,
            has_more,
        ),
    );
    Ok((200, out))
}

fn page_size(params: &[(String, String)]) -> Result<usize, ApiError> {
    match param(params, "page[size]") {
        None => Ok(MAX_PAGE_SIZE),
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE_SIZE as i64).contains(&n) => Ok(n as usize),
            Ok(n) if n > MAX_PAGE_SIZE as i64 => Err(ApiError::invalid_pagination(format!(
                "page[size] must be less than or equal to {MAX_PAGE_SIZE}"
            ))),
            _ => Err(ApiError::invalid_pagination(
                "page[size] must be a positive integer",
            )),
        },
    }
}

/// `meta` and `links` of a cursor-paginated page whose items run from key `first` to
/// `last`.
fn cursor_envelope(
    url: &str,
    size: usize,
    first: Option<String>,
    last: Option<String>,
    has_more: bool,
) -> Value {
    let after = last.map(|l| encode(&l));
    let before = first.map(|f| encode(&f));
    let next = after
        .as_ref()
        .filter(|_| has_more)
        .map(|a| format!("{url}?page%5Bafter%5D={a}&page%5Bsize%5D={size}"));
    let prev = before
        .as_ref()
        .map(|b| format!("{url}?page%5Bbefore%5D={b}&page%5Bsize%5D={size}"));
    json!({
        "meta": {"has_more": has_more, "after_cursor": after, "before_cursor": before},
        "links": {"prev": prev, "next": next},
    })
}

/// `tickets/show_many.json?ids=1,2,3`: the live ones among up to 100 tickets.
fn show_many(shared: &Shared, params: &[(String, String)]) -> Answer {
    let ids: Vec<u64> = param(params, "ids")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::invalid_value(format!("`{s}` is not a ticket id")))
        })
        .collect::<Result<_, _>>()?;
    if ids.len() > 100 {
        return Err(ApiError::invalid_value("ids takes at most 100 ids"));
    }
    let store = shared.store.read();
    let tickets = ids
        .iter()
        .filter_map(|id| store.get(Kind::Ticket, *id))
        .filter(|t| !Store::is_deleted(Kind::Ticket, t));
    let mut out = b"{\"tickets\":[".to_vec();
    push_items(&mut out, tickets);
    close_with(&mut out, &json!({"next_page": null, "previous_page": null}));
    Ok((200, out))
}

/// Writes stored objects' pre-rendered JSON separated by commas.
fn push_rendered<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a Obj>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.json);
    }
}

/// Writes objects separated by commas.
fn push_items<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a Map<String, Value>>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a map of JSON values cannot fail.
        let _ = serde_json::to_writer(&mut *out, item);
    }
}

/// Closes the records array and appends the envelope's fields and the final brace.
fn close_with(out: &mut Vec<u8>, tail: &Value) {
    out.extend_from_slice(b"],");
    let tail = to_vec(tail);
    // `{"a":1}` → `"a":1}`
    out.extend_from_slice(tail.get(1..).unwrap_or(b"}"));
}

fn to_vec(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// An export cursor as Zendesk's look: base64 of `<time>.0||<id>|`.
pub(crate) fn encode_export_cursor((ts, id): (i64, u64)) -> String {
    encode(&format!("{ts}.0||{id}|"))
}

pub(crate) fn decode_export_cursor(cursor: &str) -> Option<(i64, u64)> {
    let text = decode(cursor)?;
    let (ts, rest) = text.split_once("||")?;
    let ts = ts.split('.').next()?.parse().ok()?;
    let id = rest.trim_end_matches('|').parse().ok()?;
    Some((ts, id))
}

fn decode_list_cursor(cursor: &str) -> Option<String> {
    decode(cursor)
}

/// Standard base64 with padding.
pub(crate) fn encode(text: &str) -> String {
    base64::encode(text.as_bytes())
}

/// Decodes standard or URL-safe base64 into UTF-8 text.
pub(crate) fn decode(input: &str) -> Option<String> {
    String::from_utf8(base64::decode(input)?).ok()
}

/// Basic `<email>/token:<API_TOKEN>` or `Bearer <OAUTH_TOKEN>`.
fn authorized(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return credential.trim() == ZendeskSandbox::OAUTH_TOKEN;
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = decode(credential) else {
        return false;
    };
    let Some((user, token)) = decoded.split_once(':') else {
        return false;
    };
    match user.strip_suffix("/token") {
        Some(email) => email.contains('@') && token == ZendeskSandbox::API_TOKEN,
        None => false,
    }
}

fn respond(
    shared: &Shared,
    status: u16,
    body: Vec<u8>,
    request_id: &str,
    quota: Quota,
    extra: &[(HeaderName, String)],
) -> Response {
    let mut headers = HeaderMap::new();
    base_headers(shared, request_id, quota, &mut headers);
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    response::build(status, headers, body)
}

fn base_headers(shared: &Shared, request_id: &str, quota: Quota, headers: &mut HeaderMap) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("content-type", "application/json; charset=utf-8".into());
    set("date", shared.kit.clock.http_date());
    set("x-request-id", request_id.to_owned());
    set("x-zendesk-api-version", "v2".into());
    // The account-wide limit, under both of Zendesk's names:
    // https://developer.zendesk.com/api-reference/introduction/rate-limits/
    if let Some((limit, remaining, reset)) = quota.account {
        set("x-rate-limit", limit.to_string());
        set("x-rate-limit-remaining", remaining.to_string());
        set("ratelimit-limit", limit.to_string());
        set("ratelimit-remaining", remaining.to_string());
        set("ratelimit-reset", reset.to_string());
    }
    // The exports' own limit, in the format Zendesk documents for it:
    // https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-user-export-cursor-based
    if let Some((total, remaining, resets)) = quota.export {
        set(
            "zendesk-ratelimit-incremental-exports-cursor",
            format!("total={total}; remaining={remaining}; resets={resets}"),
        );
    }
}

/// The kit's control API answers in Zendesk's shapes; `/_sandbox/plan` and the export
/// limit of `/_sandbox/rate_limit` are Zendesk's own.
impl Vendor for Shared {
    type Faults = ZendeskFaults;

    fn kit(&self) -> &Kit<ZendeskFaults> {
        &self.kit
    }

    fn error_body(&self, error: &SandboxError) -> Vec<u8> {
        let e = match error {
            SandboxError::Injected { status } => ApiError::internal(*status),
            SandboxError::Throttled { limit, .. } => ApiError::rate_limited(*limit == "export"),
            SandboxError::BadControl { message, .. } => ApiError::invalid_value(message.clone()),
            SandboxError::UnknownControl { .. } => ApiError::invalid_endpoint(),
        };
        e.body()
    }

    fn stats(&self) -> Value {
        to_json(&Shared::stats(self))
    }

    fn reset_stats(&self) {
        self.reset_own_stats();
    }

    /// `{"window_seconds": s, "requests": n, "export_requests": m}`; `{}` turns both
    /// limits off.
    fn rate_limit(&self, request: &Value) -> Option<Result<Value, SandboxError>> {
        let number = |key: &str| request.get(key).and_then(Value::as_u64);
        let limits = match (number("requests"), number("export_requests")) {
            (Some(requests), Some(export_requests)) => Some(RateLimits {
                window: control::window_of(request, 60.0),
                requests: u32::try_from(requests).unwrap_or(u32::MAX),
                export_requests: u32::try_from(export_requests).unwrap_or(u32::MAX),
            }),
            (None, None) => None,
            _ => {
                return Some(Err(SandboxError::bad(
                    "give both requests and export_requests, or neither to turn limits off",
                    None,
                )));
            }
        };
        self.set_rate_limits(limits);
        Some(Ok(json!({"rate_limits": limits.map(|l| json!({
            "window_seconds": l.window.as_secs_f64(),
            "requests": l.requests,
            "export_requests": l.export_requests,
        }))})))
    }

    fn control(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Option<Result<Value, SandboxError>> {
        match (method, path) {
            (&Method::GET, "plan") => Some(Ok(json!({"unavailable": self.unavailable()}))),
            (&Method::POST, "plan") => Some(self.set_plan(body)),
            _ => None,
        }
    }
}

impl Shared {
    /// `POST /_sandbox/plan` `{"unavailable": [...]}`.
    fn set_plan(&self, body: &[u8]) -> Result<Value, SandboxError> {
        let request = control::parse_body(body)?;
        let invalid = || SandboxError::bad("unavailable must be a list of resource names", None);
        let unavailable = match request.get("unavailable") {
            None => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)?,
            Some(_) => return Err(invalid()),
        };
        self.set_unavailable(unavailable);
        Ok(json!({"unavailable": self.unavailable()}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_export_cursors_look_like_zendesks() {
        for text in ["", "a", "ab", "abc", "abcd", "1576613539.0||467|"] {
            assert_eq!(decode(&encode(text)).as_deref(), Some(text));
        }
        assert_eq!(encode("1576613539.0||467|"), "MTU3NjYxMzUzOS4wfHw0Njd8");
        assert_eq!(
            decode_export_cursor("MTU3NjYxMzUzOS4wfHw0Njd8"),
            Some((1_576_613_539, 467))
        );
        assert_eq!(decode_export_cursor("not base64!"), None);
        assert_eq!(decode_export_cursor(&encode("nonsense")), None);
    }

    #[test]
    fn credentials_are_checked_like_zendesk() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers));
        let basic = |user: &str, pass: &str| {
            HeaderValue::from_str(&format!("Basic {}", encode(&format!("{user}:{pass}")))).unwrap()
        };
        headers.insert(
            header::AUTHORIZATION,
            basic("admin@x.test/token", ZendeskSandbox::API_TOKEN),
        );
        assert!(authorized(&headers));
        headers.insert(header::AUTHORIZATION, basic("admin@x.test/token", "wrong"));
        assert!(!authorized(&headers));
        headers.insert(
            header::AUTHORIZATION,
            basic("admin@x.test", ZendeskSandbox::API_TOKEN),
        );
        assert!(
            !authorized(&headers),
            "a password login is not a token login"
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", ZendeskSandbox::OAUTH_TOKEN)).unwrap(),
        );
        assert!(authorized(&headers));
    }

    #[test]
    fn paths_name_their_resource() {
        assert_eq!(
            resource_of("/api/v2/ticket_forms.json"),
            Some("ticket_forms")
        );
        assert_eq!(
            resource_of("/api/v2/ticket_forms/7.json"),
            Some("ticket_forms")
        );
        assert_eq!(
            resource_of("/api/v2/incremental/tickets/cursor.json"),
            Some("tickets")
        );
        assert_eq!(
            resource_of("/api/v2/incremental/organizations.json"),
            Some("organizations")
        );
        assert_eq!(resource_of("/_sandbox/stats"), None);
    }

    #[test]
    fn pairs_decode() {
        assert_eq!(
            parse_pairs("page%5Bsize%5D=2&ids=1,2&x=a+b"),
            vec![
                ("page[size]".to_owned(), "2".to_owned()),
                ("ids".to_owned(), "1,2".to_owned()),
                ("x".to_owned(), "a b".to_owned()),
            ]
        );
    }
}
