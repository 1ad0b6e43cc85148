//! The HTTP face of the simulator: authentication, rate limiting, fault injection, routing
//! of `/v1/...` to the store, Stripe's parameter parsing (query strings and form bodies
//! with `a[b]` nesting), and the `/_sandbox/...` control endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tributary_sandbox_kit::base64;
use tributary_sandbox_kit::form::{self, parse_pairs};
use tributary_sandbox_kit::gzip::{self, accepts_gzip};
use tributary_sandbox_kit::{Kit, SandboxError, Vendor, control, response, to_json};

use super::error::ApiError;
use super::kinds::{DeleteMode, Kind, known_event_type};
use super::render::render_top;
use super::store::{API_VERSION, Cursor, ListQuery, Origin, Page};
use super::{BadShape, Shared, StripeFaults};

/// Request bodies are small forms; anything bigger is refused before parsing.
const MAX_BODY: usize = 1 << 20;

/// Stripe's concurrency limiter, around everything (the simulated latency included): a
/// request arriving while `concurrency_limit` others are being answered is refused with
/// 429 and `Stripe-Rate-Limited-Reason: global-concurrency`. Stripe documents the limiter
/// ("The concurrency limiter restricts the number of concurrent active requests", and list
/// requests "generally use more resources and take longer to run") but not its number,
/// so the simulator has none unless given one ([`super::SandboxConfig::concurrency_limit`]).
pub(crate) async fn concurrency(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(limit) = shared.concurrency_limit else {
        return next.run(request).await;
    };
    if request.uri().path().starts_with("/_sandbox/") {
        return next.run(request).await;
    }
    struct Active<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Active<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    // A refused request never holds a slot, so it cannot crowd out one that arrives while
    // its 429 is being written.
    let admitted = shared.active.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |n| (n < limit).then_some(n + 1),
    );
    if admitted.is_err() {
        shared.kit.count_request();
        shared.kit.count_rate_limited();
        let gzip = shared.gzip && accepts_gzip(request.headers());
        let refused = SandboxError::Throttled {
            retry_after: 1,
            injected: false,
            limit: "concurrency",
        };
        return refuse(&shared, &refused, &shared.next_request_id(), gzip);
    }
    let active = Active(&shared.active);
    let response = next.run(request).await;
    drop(active);
    response
}

/// The single handler behind every path.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = shared.next_request_id();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let gzip = shared.gzip && accepts_gzip(&parts.headers);

    if let Some(control) = path.strip_prefix("/_sandbox/") {
        let (status, body) = control::control(&*shared, &parts.method, control, &body);
        return respond(&shared, status, body, &request_id, gzip, &[]);
    }

    shared.kit.count_request();
    if let Err(e) = authorize(&parts.headers) {
        return respond(
            &shared,
            e.status,
            e.body(),
            &request_id,
            gzip,
            &[(header::WWW_AUTHENTICATE, "Basic realm=\"Stripe\"".into())],
        );
    }
    if let Err(e) = requested_version(&parts.headers) {
        return respond(&shared, e.status, e.body(), &request_id, gzip, &[]);
    }
    let now = Instant::now();
    if let Err(e) = shared.kit.admit_request(now) {
        return refuse(&shared, &e, &request_id, gzip);
    }
    let endpoint = crate::client::endpoint(parts.method.as_str(), &path);
    if let Err(e) = shared.admit_endpoint(&endpoint, now) {
        return refuse(&shared, &e, &request_id, gzip);
    }

    if shared.kit.faults().vendor.forbid_after_first_page
        && parse_pairs(&query)
            .iter()
            .any(|(k, v)| k == "starting_after" && !v.is_empty())
    {
        let e = ApiError {
            status: 403,
            kind: "permission_error",
            code: None,
            message: "The provided key does not have the required permissions for this endpoint."
                .to_owned(),
            param: None,
        };
        return respond(&shared, 403, e.body(), &request_id, gzip, &[]);
    }
    if let Some(e) = shared.kit.before_answer("account").await {
        return refuse(&shared, &e, &request_id, gzip);
    }

    let origin = Origin {
        request_id: Some(request_id.clone()),
        idempotency_key: parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let query = if parts.method == Method::GET {
        shared.hostile_query(&query)
    } else {
        query
    };
    let result = route(&shared, &parts.method, &path, &query, &body, &origin);
    let (status, mut payload) = match result {
        Ok(body) => (200, body),
        Err(e) => (e.status, e.body()),
    };
    let after = if status == 200 {
        shared.kit.after()
    } else {
        Default::default()
    };
    if after.malformed {
        response::malform(&mut payload, b"\n<!-- upstream connect error -->");
    }
    let payload = if gzip {
        gzip::compress(&payload).unwrap_or_default()
    } else {
        payload
    };
    if after.truncate {
        return response::truncated(200, base_headers(&shared, &request_id, gzip), payload);
    }
    respond(&shared, status, payload, &request_id, gzip, &[])
}

/// Answers what the kit decided instead of the API, in Stripe's error shape.
///
/// A 429 of a rate limit says which limit in `Stripe-Rate-Limited-Reason` (`global-rate`
/// for the account's, `endpoint-rate` for one endpoint's): "Requests that are rate limited
/// return the Stripe-Rate-Limited-Reason header with values that indicate which rate
/// limit the request exceeded" (https://docs.stripe.com/rate-limits, "Rate limited
/// requests"). It has no `Retry-After`: Stripe has never sent one to API users (Stripe's
/// own note in stripe-python PR #1843, which took the SDKs' reading of it out), so a
/// client must back off on its own.
fn refuse(shared: &Shared, e: &SandboxError, request_id: &str, gzip: bool) -> Response {
    let reason = match e {
        SandboxError::Throttled { limit, .. } => Some((
            header::HeaderName::from_static("stripe-rate-limited-reason"),
            match *limit {
                "endpoint" => "endpoint-rate",
                "concurrency" => "global-concurrency",
                _ => "global-rate",
            }
            .to_owned(),
        )),
        _ => None,
    };
    let body = shared.error_body(e);
    respond(
        shared,
        e.status(),
        body,
        request_id,
        gzip,
        reason.as_slice(),
    )
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    origin: &Origin,
) -> Result<Vec<u8>, ApiError> {
    let unrecognized = || ApiError::unrecognized_url(method.as_str(), path);
    let rest = path.strip_prefix("/v1/").ok_or_else(unrecognized)?;
    let mut segments = rest.split('/');
    let kind = segments
        .next()
        .and_then(Kind::from_resource)
        .ok_or_else(unrecognized)?;
    let id = segments.next().map(form::percent_decode);
    if segments.next().is_some() || id.as_deref() == Some("") {
        return Err(unrecognized());
    }
    let now = shared.now();
    if kind == Kind::BalanceTransaction && method == Method::GET {
        shared.store.write().settle(now);
    }
    match (method, id) {
        (&Method::GET, None) => {
            let q = list_query(kind, &parse_pairs(query))?;
            let page = shared.store.read().list(kind, &q, now)?;
            let body = list_body(kind, &page);
            Ok(match shared.bad_shape() {
                Some(shape) => misshapen(&body, shape),
                None => body,
            })
        }
        (&Method::GET, Some(id)) => shared.store.read().get_body(kind, &id, now),
        (&Method::POST, None) if kind.http_writable() => {
            let params = parse_pairs(&String::from_utf8_lossy(body));
            let mut store = shared.store.write();
            let fields = form_changes(kind, &params, store.fixture(kind), true)?;
            let object = store.create(kind, fields, now, origin)?;
            Ok(with_newline(render_top(&object)))
        }
        (&Method::POST, Some(id)) if kind.http_writable() => {
            let params = parse_pairs(&String::from_utf8_lossy(body));
            let object = shared.store.write().update(
                kind,
                &id,
                |current| form_changes(kind, &params, current, false),
                now,
                origin,
            )?;
            Ok(with_newline(render_top(&object)))
        }
        (&Method::DELETE, Some(id)) if kind.delete_mode() != DeleteMode::Unsupported => {
            let mut store = shared.store.write();
            api_deletable(&store, kind, &id, now).map_err(|e| {
                e.unwrap_or_else(|| ApiError::unrecognized_url(method.as_str(), path))
            })?;
            let object = store.delete(kind, &id, now, origin)?;
            Ok(with_newline(render_top(&object)))
        }
        _ => Err(unrecognized()),
    }
}

/// What Stripe's API refuses to delete, which the simulator's own `delete` (a Dashboard
/// or Stripe itself) may still remove. `Err(None)`: no such endpoint.
///
/// - Prices have no delete endpoint; they are archived (`active=false`)
///   (https://docs.stripe.com/api/prices: create, update, retrieve, list, search).
/// - "Permanently deletes a one-off invoice draft ... Attempts to delete invoices that are
///   no longer in a draft state will fail; once an invoice has been finalized or if an
///   invoice is for a subscription, it must be voided" (https://docs.stripe.com/api/invoices/delete).
/// - "Deleting invoice items is only possible when they're not attached to invoices, or if
///   it's attached to a draft invoice" (https://docs.stripe.com/api/invoiceitems/delete).
/// - "Deleting a product is only possible if it has no prices associated with it"
///   (https://docs.stripe.com/api/products/delete).
///
/// The messages say what Stripe's docs say; Stripe's exact wording is not documented.
fn api_deletable(
    store: &super::store::Store,
    kind: Kind,
    id: &str,
    now: i64,
) -> Result<(), Option<ApiError>> {
    let refuse = |message: String| Some(ApiError::invalid_without_code(message));
    let get = |kind: Kind, id: &str| store.get_value(kind, id, now);
    match kind {
        Kind::Price => Err(None),
        Kind::Invoice => match get(kind, id) {
            Some(invoice) if !invoice["parent"]["subscription_details"].is_null() => Err(refuse(
                "You can't delete invoices created by subscriptions.".to_owned(),
            )),
            Some(invoice) if invoice["status"] != "draft" => Err(refuse(format!(
                "You can only delete draft invoices; invoice {id} is {}. Void it instead.",
                invoice["status"].as_str().unwrap_or("finalized")
            ))),
            _ => Ok(()),
        },
        Kind::InvoiceItem => {
            let invoice = get(kind, id)
                .and_then(|item| item["invoice"].as_str().map(str::to_owned))
                .and_then(|invoice| get(Kind::Invoice, &invoice));
            match invoice {
                Some(invoice) if invoice["status"] != "draft" => Err(refuse(format!(
                    "Invoice item {id} is on invoice {}, which is no longer a draft: only items \
                     of draft invoices or pending items can be deleted.",
                    invoice["id"].as_str().unwrap_or_default()
                ))),
                _ => Ok(()),
            }
        }
        Kind::Product => {
            let priced = store
                .ids(Kind::Price)
                .iter()
                .filter_map(|price| get(Kind::Price, price))
                .any(|price| price["product"] == id);
            if priced {
                Err(refuse(format!(
                    "Product {id} has prices: a product can only be deleted while it has none \
                     (archive it with active=false instead)."
                )))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Assembles a list page from cached object bytes, laid out as Stripe prints it.
fn list_body(kind: Kind, page: &Page) -> Vec<u8> {
    let size: usize = page.items.iter().map(|b| b.len() + 8).sum();
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(b"{\n  \"object\": \"list\",\n  \"data\": [");
    for (i, item) in page.items.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
        out.extend_from_slice(item);
    }
    if page.items.is_empty() {
        out.extend_from_slice(b"],\n");
    } else {
        out.extend_from_slice(b"\n  ],\n");
    }
    out.extend_from_slice(if page.has_more {
        b"  \"has_more\": true,\n"
    } else {
        b"  \"has_more\": false,\n"
    });
    out.extend_from_slice(b"  \"url\": \"/v1/");
    out.extend_from_slice(kind.resource().as_bytes());
    out.extend_from_slice(b"\"\n}\n");
    out
}

/// A list body broken the way `shape` says (a hostile or buggy server).
fn misshapen(body: &[u8], shape: BadShape) -> Vec<u8> {
    let Ok(Value::Object(mut list)) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    match shape {
        BadShape::DataObject => {
            let first = list["data"].get(0).cloned().unwrap_or(Value::Null);
            list.insert("data".into(), first);
        }
        BadShape::DataString => {
            list.insert("data".into(), Value::String("oops".into()));
        }
        BadShape::HasMoreMissing => {
            list.remove("has_more");
        }
        BadShape::HasMoreString => {
            list.insert("has_more".into(), Value::String("true".into()));
        }
        BadShape::EmptyHasMore => {
            list.insert("data".into(), Value::Array(Vec::new()));
            list.insert("has_more".into(), Value::Bool(true));
        }
    }
    with_newline(render_top(&Value::Object(list)))
}

fn with_newline(mut body: Vec<u8>) -> Vec<u8> {
    body.push(b'\n');
    body
}

fn render_json(value: &Value) -> Vec<u8> {
    with_newline(render_top(value))
}

/// The statuses `GET /v1/subscriptions` filters on, besides `all` and `ended`.
const SUBSCRIPTION_STATUSES: &[&str] = &[
    "active",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
];

/// Parses the list parameters Stripe accepts for `kind`; anything else is refused the way
/// Stripe refuses it, so a connector sending a typo finds out here.
pub(crate) fn list_query(kind: Kind, params: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    let mut subscription_status: Option<Vec<&'static str>> = None;
    let integer = |name: &str, value: &str| -> Result<i64, ApiError> {
        value.trim().parse::<i64>().map_err(|_| {
            ApiError::invalid(
                "parameter_invalid_integer",
                format!("Invalid integer: {value}"),
                name.to_owned(),
            )
        })
    };
    let mut starting_after = None;
    let mut ending_before = None;
    for (name, value) in params {
        match name.as_str() {
            "limit" => {
                let limit = integer(name, value)?;
                if !(1..=100).contains(&limit) {
                    let bound = if limit < 1 {
                        "greater than or equal to 1"
                    } else {
                        "less than or equal to 100"
                    };
                    return Err(ApiError::invalid(
                        "parameter_invalid_integer",
                        format!("This value must be {bound}."),
                        "limit".to_owned(),
                    ));
                }
                q.limit = limit as usize;
            }
            "starting_after" if !value.is_empty() => starting_after = Some(value.clone()),
            "ending_before" if !value.is_empty() => ending_before = Some(value.clone()),
            "starting_after" | "ending_before" => {}
            // The subscription items list takes no `created` filter (its parameters are
            // `subscription`, the paging ones and `expand`).
            n if kind == Kind::SubscriptionItem && n.starts_with("created") => {
                return Err(ApiError::unknown_parameter(n));
            }
            "created" => {
                let t = integer(name, value)?;
                q.created_min = q.created_min.max(t);
                q.created_max = q.created_max.min(t);
            }
            "created[gt]" => {
                q.created_min = q.created_min.max(integer(name, value)?.saturating_add(1))
            }
            "created[gte]" => q.created_min = q.created_min.max(integer(name, value)?),
            "created[lt]" => {
                q.created_max = q.created_max.min(integer(name, value)?.saturating_sub(1))
            }
            "created[lte]" => q.created_max = q.created_max.min(integer(name, value)?),
            "expand" => {}
            n if n.starts_with("expand[") => {}
            "type" if kind == Kind::Event => {
                // `type` takes one name or a `*` pattern (https://docs.stripe.com/api/events/list).
                if !value.contains('*') {
                    known_type(name, value)?;
                }
                q.types.push(value.clone())
            }
            n if kind == Kind::Event && n.starts_with("types[") && n.ends_with(']') => {
                // `types` takes specific event names only.
                known_type(name, value)?;
                q.types.push(value.clone());
                if q.types.len() > 20 {
                    return Err(ApiError::invalid(
                        "parameter_invalid_array",
                        "types may contain at most 20 elements.",
                        "types".to_owned(),
                    ));
                }
            }
            "subscription" if kind == Kind::SubscriptionItem => q.parent = Some(value.clone()),
            // "If no value is supplied, all subscriptions that have not been canceled are
            // returned"; `all` lists every status, `ended` the canceled and the
            // incomplete_expired (https://docs.stripe.com/api/subscriptions/list).
            "status" if kind == Kind::Subscription => {
                subscription_status = Some(match value.as_str() {
                    "all" => Vec::new(),
                    "ended" => vec!["canceled", "incomplete_expired"],
                    other => match SUBSCRIPTION_STATUSES.iter().find(|s| **s == other) {
                        Some(status) => vec![*status],
                        None => {
                            return Err(ApiError::invalid(
                                "parameter_invalid_string",
                                format!(
                                    "Invalid status: must be one of {}",
                                    SUBSCRIPTION_STATUSES.join(", ")
                                ),
                                "status".to_owned(),
                            ));
                        }
                    },
                })
            }
            n if kind.list_filters().contains(&n) => q.fields.push((name.clone(), value.clone())),
            _ => return Err(ApiError::unknown_parameter(name)),
        }
    }
    if kind == Kind::Subscription {
        match subscription_status {
            Some(statuses) => q.status_in = statuses,
            None => q.status_not = Some("canceled"),
        }
    }
    if kind == Kind::Event
        && params.iter().any(|(k, _)| k == "type")
        && params.iter().any(|(k, _)| k.starts_with("types["))
    {
        // "You may pass either type or types, but not both"
        // (https://docs.stripe.com/api/events/list).
        return Err(ApiError::invalid(
            "parameters_exclusive",
            "You may only specify one of these parameters: type, types.",
            None,
        ));
    }
    q.cursor = match (starting_after, ending_before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "parameters_exclusive",
                "You may only specify one of these parameters: ending_before, starting_after.",
                None,
            ));
        }
        (Some(id), None) => Cursor::StartingAfter(id),
        (None, Some(id)) => Cursor::EndingBefore(id),
        (None, None) => Cursor::None,
    };
    if kind == Kind::SubscriptionItem && q.parent.is_none() {
        return Err(ApiError::invalid(
            "parameter_missing",
            "Missing required param: subscription.",
            "subscription".to_owned(),
        ));
    }
    Ok(q)
}

/// Stripe refuses an event type it does not have with an `invalid_request_error` naming
/// the parameter, rather than answering an empty list.
fn known_type(param: &str, value: &str) -> Result<(), ApiError> {
    if known_event_type(value) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "parameter_invalid_string",
        format!("Invalid {param}: `{value}` is not a valid event type."),
        param.to_owned(),
    ))
}

/// Fields that clients may not set.
const READ_ONLY: &[&str] = &["object", "created", "livemode", "deleted"];

/// Turns form parameters into new top-level values, typed like the fields of `reference`
/// (the current object on update, the fixture on create). `metadata[k]=v` merges into the
/// existing hash and `metadata[k]=` removes `k`, as in Stripe.
pub(crate) fn form_changes(
    kind: Kind,
    params: &[(String, String)],
    reference: &Value,
    creating: bool,
) -> Result<Map<String, Value>, ApiError> {
    let mut changes = Map::new();
    for (name, raw) in params {
        let path = form::split_key(name);
        let Some((top, rest)) = path.split_first() else {
            continue;
        };
        let top = top.as_str();
        if top == "expand" {
            continue;
        }
        let custom_id = top == "id" && creating && kind.custom_id();
        // Subscriptions take their items as `items[0][price]` on create, not as the list.
        let item_params = top == "items" && creating && kind == Kind::Subscription;
        if READ_ONLY.contains(&top)
            || (top == "id" && !custom_id)
            || (reference.get(top).is_none() && !item_params)
        {
            return Err(ApiError::unknown_parameter(name));
        }
        if rest.is_empty() {
            // Prices and plans are given by id; the store expands them.
            let value = if custom_id || matches!(top, "price" | "plan") {
                Value::String(raw.clone())
            } else {
                convert(name, raw, reference.get(top))?
            };
            changes.insert(top.to_owned(), value);
            continue;
        }
        let base = match changes.get(top) {
            Some(v) => v.clone(),
            None if item_params => Value::Object(Map::new()),
            None => reference.get(top).cloned().unwrap_or(Value::Null),
        };
        let updated = set_nested(name, base, rest, raw, top == "metadata" || item_params)?;
        changes.insert(top.to_owned(), updated);
    }
    Ok(changes)
}

/// Sets `raw` at `path` inside `node`. `free_form` hashes (metadata) take any key as a
/// string and drop a key given an empty value.
fn set_nested(
    name: &str,
    node: Value,
    path: &[String],
    raw: &str,
    free_form: bool,
) -> Result<Value, ApiError> {
    let Some((key, rest)) = path.split_first() else {
        return convert(name, raw, Some(&node));
    };
    if key.is_empty() {
        // `a[]=x` appends.
        let mut list = match node {
            Value::Array(list) => list,
            _ => Vec::new(),
        };
        list.push(set_nested(name, Value::Null, rest, raw, free_form)?);
        return Ok(Value::Array(list));
    }
    let mut map = match node {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return Err(invalid_object(name)),
    };
    if rest.is_empty() && free_form {
        if raw.is_empty() {
            map.remove(key);
        } else {
            map.insert(key.clone(), Value::String(raw.to_owned()));
        }
        return Ok(Value::Object(map));
    }
    if !free_form && !map.contains_key(key) {
        return Err(ApiError::unknown_parameter(name));
    }
    let child = map.remove(key).unwrap_or(Value::Null);
    map.insert(key.clone(), set_nested(name, child, rest, raw, free_form)?);
    Ok(Value::Object(map))
}

fn invalid_object(name: &str) -> ApiError {
    ApiError {
        status: 400,
        kind: "invalid_request_error",
        code: None,
        message: "Invalid object".to_owned(),
        param: Some(name.to_owned()),
    }
}

/// A form string typed like the field it replaces: an empty string unsets (null), numbers
/// and booleans are parsed, anything else stays a string.
fn convert(name: &str, raw: &str, existing: Option<&Value>) -> Result<Value, ApiError> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    let invalid = |code: &'static str, what: &str| {
        ApiError::invalid(code, format!("Invalid {what}: {raw}"), name.to_owned())
    };
    match existing {
        Some(Value::Number(n)) if n.is_f64() => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| invalid("parameter_invalid_decimal", "decimal")),
        Some(Value::Number(_)) => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| invalid("parameter_invalid_integer", "integer")),
        Some(Value::Bool(_)) => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(invalid("parameter_invalid_boolean", "boolean")),
        },
        Some(Value::Object(_)) | Some(Value::Array(_)) => Err(invalid_object(name)),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Accepts `Bearer <key>` or Basic with the key as user name, for test-mode keys only.
fn authorize(headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |message: String| ApiError {
        status: 401,
        kind: "invalid_request_error",
        code: None,
        message,
        param: None,
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or \
             we can help at https://support.stripe.com/."
                .to_owned(),
        ));
    };
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
    let key = if scheme.eq_ignore_ascii_case("bearer") {
        credential.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::decode(credential).unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        decoded.split(':').next().unwrap_or_default().to_owned()
    } else {
        value.to_owned()
    };
    let valid = ["sk_test_", "rk_test_"]
        .iter()
        .any(|p| key.len() > p.len() && key.starts_with(p));
    if valid {
        Ok(())
    } else {
        Err(unauthorized(format!(
            "Invalid API Key provided: {}",
            mask_key(&key)
        )))
    }
}

/// Stripe's masking: the `xx_mode_` prefix, stars, and the last four characters when the
/// key is long enough to keep them secret.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix_len = key
        .match_indices('_')
        .nth(1)
        .map_or(0, |(at, _)| key[..=at].chars().count());
    let rest = chars.len() - prefix_len;
    let prefix: String = chars[..prefix_len].iter().collect();
    if rest > 8 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{prefix}{}{tail}", "*".repeat(rest - 4))
    } else {
        format!("{prefix}{}", "*".repeat(rest.max(3)))
    }
}

fn base_headers(shared: &Shared, request_id: &str, gzip: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    response::set_header(&mut headers, "date", &shared.kit.clock.http_date());
    response::set_header(&mut headers, "request-id", request_id);
    headers.insert(
        header::HeaderName::from_static("stripe-version"),
        HeaderValue::from_static(API_VERSION),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    headers
}

fn respond(
    shared: &Shared,
    status: u16,
    body: Vec<u8>,
    request_id: &str,
    gzip: bool,
    extra: &[(header::HeaderName, String)],
) -> Response {
    // Control responses and errors are compressed too when the client asked for it.
    let body = if gzip && !gzip::is_gzip(&body) {
        gzip::compress(&body).unwrap_or_default()
    } else {
        body
    };
    let mut headers = base_headers(shared, request_id, gzip);
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    // What Stripe sends with a rate limit's 429 is not documented: the SDKs retry a 429
    // only when told to, and Stripe says they do not retry rate limits, so none is sent.
    if status >= 500 {
        headers.insert(
            header::HeaderName::from_static("stripe-should-retry"),
            HeaderValue::from_static("true"),
        );
    }
    response::build(status, headers, body)
}

/// The kit's control API answers in Stripe's shapes; `/_sandbox/account` is Stripe's own.
impl Vendor for Shared {
    type Faults = StripeFaults;

    fn kit(&self) -> &Kit<StripeFaults> {
        &self.kit
    }

    fn error_body(&self, error: &SandboxError) -> Vec<u8> {
        let e = match error {
            SandboxError::Injected { status } => ApiError {
                status: *status,
                kind: "api_error",
                code: None,
                message: if *status == 503 {
                    "The server is temporarily unavailable. Please try again later.".to_owned()
                } else {
                    "An unknown error occurred".to_owned()
                },
                param: None,
            },
            SandboxError::Throttled { .. } => ApiError {
                status: 429,
                kind: "invalid_request_error",
                code: Some("rate_limit"),
                // Stripe's test-mode text (the simulator takes only `sk_test_` keys).
                message: "Testmode request rate limit exceeded, the rate limits in testmode \
                          are lower than livemode. You can learn more about rate limits here \
                          https://stripe.com/docs/rate-limits."
                    .to_owned(),
                param: None,
            },
            SandboxError::BadControl { message, param } => {
                let code = if *param == Some("advance_seconds") {
                    "parameter_invalid_integer"
                } else {
                    "parameter_invalid"
                };
                ApiError::invalid(code, message.clone(), param.map(str::to_owned))
            }
            SandboxError::UnknownControl { method, path } => {
                ApiError::unrecognized_url(method, path)
            }
        };
        e.body()
    }

    fn stats(&self) -> Value {
        to_json(&Shared::stats(self))
    }

    fn clock_advanced(&self, now: i64) {
        self.clock_moved(now);
    }

    fn control(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Option<Result<Value, SandboxError>> {
        (method == Method::POST && path == "account").then(|| {
            let request = control::parse_body(body)?;
            let version = request
                .get("api_version")
                .and_then(Value::as_str)
                .filter(|v| valid_api_version(v))
                .ok_or_else(|| {
                    SandboxError::bad(
                        "api_version must be a Stripe API version no newer than the \
                         simulator's own, such as 2024-06-20 or 2025-03-31.basil.",
                        Some("api_version"),
                    )
                })?;
            self.store.write().set_account_version(version);
            Ok(json!({"api_version": version}))
        })
    }

    fn render(&self, value: &Value) -> Vec<u8> {
        render_json(value)
    }
}

/// A Stripe API version that existed by the simulator's own: written as Stripe writes them
/// (a date, and the release's name from `2024-09-30.acacia` on) and no newer than
/// [`API_VERSION`]. Stripe refuses any other (`Invalid Stripe API version: 2019-2-19`).
pub(crate) fn valid_api_version(v: &str) -> bool {
    // Untrimmed input is refused before the slice: a leading multi-byte space would put
    // byte 10 inside a character.
    v.trim() == v && crate::config::well_formed_api_version(v) && v[..10] <= API_VERSION[..10]
}

/// Checks a request's `Stripe-Version` header. Stripe answers a version it does not know
/// with a 400 `invalid_request_error`, `Invalid Stripe API version: <v>`. A version it knows
/// but the simulator does not render is refused too, saying so: the simulator shapes
/// objects in its own version only, and answering another version's request with them
/// would let a client pinned to that version pass against shapes it will never get.
fn requested_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get("stripe-version") else {
        return Ok(());
    };
    let version = value.to_str().unwrap_or_default().trim();
    let refuse = ApiError::invalid_without_code;
    if !valid_api_version(version) {
        return Err(refuse(format!(
            "Invalid Stripe API version: {}",
            version.escape_debug()
        )));
    }
    if version != API_VERSION {
        return Err(refuse(format!(
            "This Stripe simulator renders objects in API version {API_VERSION} only, and the \
             request asked for {version}: send Stripe-Version: {API_VERSION} (the Stripe \
             source's default stripe_version)."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse_pairs(s)
    }

    #[test]
    fn decodes_forms() {
        assert_eq!(
            pairs("a=1&metadata%5Bk%5D=x+y%21&types[]=charge.*&empty"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("metadata[k]".to_owned(), "x y!".to_owned()),
                ("types[]".to_owned(), "charge.*".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(form::percent_decode("100%"), "100%");
        assert_eq!(form::percent_decode("%zz"), "%zz");
        assert_eq!(form::split_key("a[b][c]"), vec!["a", "b", "c"]);
        assert_eq!(form::split_key("types[]"), vec!["types", ""]);
    }

    #[test]
    fn list_parameters_like_stripe() {
        let q = list_query(
            Kind::Event,
            &pairs("limit=3&types[]=charge.succeeded&types[]=invoice.paid&created[gt]=5&created[lte]=9"),
        )
        .expect("valid");
        assert_eq!((q.limit, q.created_min, q.created_max), (3, 6, 9));
        assert_eq!(q.types, vec!["charge.succeeded", "invoice.paid"]);
        // Stripe has no `invoiceitem.updated`; a pattern is only for `type`.
        let e =
            list_query(Kind::Event, &pairs("types[]=invoiceitem.updated")).expect_err("unknown");
        assert_eq!((e.status, e.kind), (400, "invalid_request_error"));
        assert!(e.message.contains("invoiceitem.updated"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("types[]"));
        assert!(list_query(Kind::Event, &pairs("types[]=charge.*")).is_err());
        assert!(list_query(Kind::Event, &pairs("type=charge.*")).is_ok());
        assert!(list_query(Kind::Event, &pairs("type=charge.nope")).is_err());
        let e = list_query(Kind::Charge, &pairs("limit=101")).expect_err("too big");
        assert_eq!(e.code, Some("parameter_invalid_integer"));
        let e = list_query(Kind::Charge, &pairs("limit=x")).expect_err("not a number");
        assert_eq!(e.code, Some("parameter_invalid_integer"));
        let e = list_query(Kind::Charge, &pairs("colour=red")).expect_err("unknown");
        assert_eq!(e.code, Some("parameter_unknown"));
        let e = list_query(Kind::SubscriptionItem, &[]).expect_err("missing");
        assert_eq!(e.code, Some("parameter_missing"));
        assert_eq!(e.param.as_deref(), Some("subscription"));
        let e =
            list_query(Kind::Charge, &pairs("starting_after=a&ending_before=b")).expect_err("both");
        assert_eq!(e.code, Some("parameters_exclusive"));
        let many: String = (0..21).map(|_| "types[]=charge.succeeded&").collect();
        let e = list_query(Kind::Event, &pairs(&many)).expect_err("more than 20");
        assert_eq!(e.code, Some("parameter_invalid_array"));
    }

    #[test]
    fn form_values_take_the_field_type() {
        let current = json!({"id": "cus_1", "balance": 0, "delinquent": false, "name": "A",
                             "metadata": {"keep": "1", "drop": "2"}, "address": {"city": null}});
        let changes = form_changes(
            Kind::Customer,
            &pairs("balance=-5&delinquent=true&name=&metadata[new]=3&metadata[drop]=&address[city]=Paris"),
            &current,
            false,
        )
        .expect("valid");
        assert_eq!(changes["balance"], -5);
        assert_eq!(changes["delinquent"], true);
        assert_eq!(changes["name"], Value::Null);
        assert_eq!(changes["metadata"], json!({"keep": "1", "new": "3"}));
        assert_eq!(changes["address"], json!({"city": "Paris"}));
        for bad in [
            "balance=x",
            "nope=1",
            "id=cus_2",
            "address=x",
            "address[zip]=1",
        ] {
            assert!(
                form_changes(Kind::Customer, &pairs(bad), &current, false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_checked_and_masked() {
        let mut headers = HeaderMap::new();
        assert!(authorize(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk_test_abc"),
        );
        assert!(authorize(&headers).is_ok());
        // "rk_test_abc:" in base64.
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cmtfdGVzdF9hYmM6"),
        );
        assert!(authorize(&headers).is_ok());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk_live_abc"),
        );
        let e = authorize(&headers).expect_err("live keys are refused");
        assert_eq!(e.message, "Invalid API Key provided: sk_live_***");
        assert_eq!(
            mask_key("sk_live_0123456789abcdef"),
            "sk_live_************cdef"
        );
    }
}
