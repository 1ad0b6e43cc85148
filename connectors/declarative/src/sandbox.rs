//! A simulator served from a spec, on the sandbox kit: any declarative vendor gets one
//! without code. The kit serves it ([`handle`]) with the control API, the rate limit
//! (429 with `Retry-After`), faults and gzip; this file turns the spec into routes.
//!
//! What it serves, per stream: the spec's method and path (under the base URL's path),
//! the spec's authentication (checked on every request; OAuth 2 with its token endpoint),
//! its page-size parameter (refused above the spec's page size), its pagination style
//! (opaque tokens that are valid only for the same filter, next URLs, `Link` headers,
//! offsets, page numbers), its "changed since" filter in the query or the JSON body
//! (inclusive or exclusive, in the spec's time format; records then ordered by change
//! time), and tombstones for deleted records (only with the spec's `deleted_only_with`
//! parameter, when set). Records are generated from the stream schemas with a seeded RNG,
//! so a seed gives the same account.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};
use tributary_sandbox_kit::api::{Answer, Api, ApiRequest, handle};
use tributary_sandbox_kit::{
    Kit, KitConfig, NoExtra, RateLimit, SandboxError, Server, StoreLock, Vendor as KitVendor,
    base64, to_json,
};
use tributary_sdk::ColumnType;
use tributary_sdk::schema::to_column_name;

use crate::extract::{get_path, set_path};
use crate::source::Vendor;
use crate::spec::{
    Auth, Granularity, Incremental, Pagination, Selector, StreamSpec, TimeFormat, dotted,
};
use crate::template;

mod export;
pub use export::ExportBehaviour;

/// How the simulated account is seeded and served.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Records per stream.
    pub records: usize,
    /// Requests per second above which it answers 429 (`None`: no limit). A vendor whose
    /// spec states its limit per minute is limited per minute (this rate × 60 in any 60
    /// seconds), as it counts.
    pub rate_limit: Option<f64>,
    /// Seed of the generated data and of fault injection.
    pub seed: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            records: 60,
            rate_limit: None,
            seed: 42,
        }
    }
}

/// One simulated record.
#[derive(Debug, Clone)]
struct Rec {
    updated_ms: i64,
    deleted: bool,
    /// A child stream's record: the key of its parent record.
    parent: Option<String>,
    value: Value,
}

#[derive(Debug, Default)]
struct Store {
    streams: BTreeMap<String, BTreeMap<String, Rec>>,
    next: u64,
    /// Bumped by every change, so a cached listing order knows it is stale.
    version: u64,
}

/// A listing's matching ids in order, and the store version they were computed at.
type Order = (u64, Arc<Vec<String>>);

/// State shared by the HTTP handler and the Rust API.
#[derive(Debug)]
pub struct Shared {
    vendor: Vendor,
    /// The sandbox's option values (credentials included).
    values: BTreeMap<String, String>,
    /// The path of the base URL (`/api/v2`), under which every stream path is served.
    base_path: String,
    store: StoreLock<Store>,
    kit: Kit<NoExtra>,
    tokens: StoreLock<Vec<String>>,
    token_count: AtomicU64,
    /// Export jobs started, and how they behave.
    exports: StoreLock<export::Exports>,
    /// The ids a listing matches, in order, per stream and filter, with the store version
    /// they were computed at: the pages of one walk share them instead of filtering and
    /// sorting the whole stream for every page.
    orders: std::sync::Mutex<BTreeMap<String, Order>>,
}

/// A deterministic stream of numbers (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: [&str; 8] = [
    "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor",
];

/// The value the simulator accepts for each option.
pub fn sandbox_values(vendor: &Vendor) -> BTreeMap<String, String> {
    let config = &vendor.spec.spec.config;
    let mut values: BTreeMap<String, String> = config
        .iter()
        .filter(|(_, o)| o.derive.is_none() || o.sandbox.is_some())
        .map(|(k, o)| {
            let v = o
                .sandbox
                .clone()
                .or_else(|| o.default.clone())
                .unwrap_or_else(|| format!("sandbox_{k}"));
            (k.clone(), v)
        })
        .collect();
    // A derived option is left to the source to derive, as a user's config would.
    let derived: Vec<(String, String)> = config
        .iter()
        .filter(|(k, _)| !values.contains_key(*k))
        .filter_map(|(k, o)| {
            let d = o.derive.as_ref()?;
            values
                .get(&d.from)
                .and_then(|v| d.apply(v))
                .map(|v| (k.clone(), v))
        })
        .collect();
    values.extend(derived);
    values
}

/// The options a source's config names for the simulator: every value but the derived
/// ones.
fn config_values(vendor: &Vendor, values: &BTreeMap<String, String>) -> Vec<(String, String)> {
    values
        .iter()
        .filter(|(k, _)| {
            vendor
                .spec
                .spec
                .config
                .get(*k)
                .is_none_or(|o| o.derive.is_none() || o.sandbox.is_some())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The value at a body key path written as `body.a[0].b` (from [`crate::spec::collect_strings`]).
fn get_body_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = root;
    for part in path.split('.').skip(1) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        at = at.get(key)?;
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            at = at.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

impl Shared {
    fn stream_spec(&self, name: &str) -> Option<&StreamSpec> {
        self.vendor
            .spec
            .spec
            .streams
            .iter()
            .find(|s| s.name == name)
    }

    fn render(&self, text: &str) -> String {
        template::render(text, |n| {
            n.strip_prefix("config.")
                .and_then(|k| self.values.get(k))
                .cloned()
        })
    }

    fn field_format(inc: &Incremental) -> TimeFormat {
        inc.field_format.unwrap_or(inc.format)
    }

    /// A generated record of `stream` number `n`, created and updated at the given times.
    fn generate(
        &self,
        stream: &str,
        n: u64,
        rng: &mut Rng,
        created_ms: i64,
        updated_ms: i64,
    ) -> Value {
        let Some(schema) = self.vendor.schemas.iter().find(|s| s.name == stream) else {
            return json!({});
        };
        let Some(spec) = self.stream_spec(stream) else {
            return json!({});
        };
        let hints = &self.vendor.spec.spec.sandbox;
        let pk = spec.primary_key.clone().unwrap_or_else(|| "id".into());
        let cursor_path: Option<Vec<String>> = spec
            .incremental
            .as_ref()
            .and_then(|i| dotted(&i.cursor_field).ok());
        let mut special: Vec<String> = vec![to_column_name(&pk)];
        if let Some(c) = &cursor_path {
            special.push(to_column_name(&c.join("_")));
        }
        if let Some(d) = &spec.deleted {
            special.push(to_column_name(&d.field));
        }
        if let Some(d) = &spec.deletions {
            special.push(to_column_name(&d.deleted_at));
        }
        let mut record = json!({});
        let id = if hints.numeric_ids {
            (1000 + n).to_string()
        } else {
            format!("{stream}_{n:06}")
        };
        set_path(&mut record, &dotted(&pk).unwrap_or_default(), json!(id));
        for column in &schema.columns {
            if special.contains(&column.name) {
                continue;
            }
            let keys: Vec<String> = match hints.nested.iter().find_map(|p| {
                column
                    .name
                    .strip_prefix(&format!("{p}_"))
                    .map(|rest| (p, rest))
            }) {
                Some((p, rest)) => vec![p.clone(), rest.to_owned()],
                None => vec![column.name.clone()],
            };
            let word = WORDS[rng.below(WORDS.len() as u64) as usize];
            let value = match column.ty {
                ColumnType::String => json!(format!("{word} {}", rng.below(10_000))),
                ColumnType::Integer => json!(rng.below(100_000)),
                ColumnType::Number => json!(rng.below(1_000_000) as f64 / 100.0),
                ColumnType::Boolean => json!(rng.below(2) == 1),
                ColumnType::Timestamp => json!(TimeFormat::Rfc3339.render(created_ms)),
                ColumnType::Date => json!(TimeFormat::Date.render(created_ms)),
                ColumnType::Json => json!([word]),
            };
            set_path(&mut record, &keys, value);
        }
        for (key, values) in &hints.values {
            let Some(field) = key
                .strip_prefix(stream)
                .and_then(|rest| rest.strip_prefix('.'))
            else {
                continue;
            };
            let picked = &values[rng.below(values.len() as u64) as usize];
            let value = serde_json::to_value(picked).unwrap_or_default();
            set_path(&mut record, &dotted(field).unwrap_or_default(), value);
        }
        if let Some(d) = &spec.deleted {
            let alive = match &d.equals {
                toml::Value::Boolean(b) => json!(!b),
                _ => json!("active"),
            };
            set_path(&mut record, std::slice::from_ref(&d.field), alive);
        }
        self.stamp(&mut record, spec, updated_ms);
        record
    }

    fn stamp(&self, record: &mut Value, spec: &StreamSpec, updated_ms: i64) {
        if let Some(inc) = &spec.incremental {
            let text = Self::field_format(inc).render(updated_ms);
            let value = match Self::field_format(inc) {
                TimeFormat::Unix | TimeFormat::UnixMs => {
                    json!(text.parse::<i64>().unwrap_or_default())
                }
                _ => json!(text),
            };
            set_path(
                record,
                &dotted(&inc.cursor_field).unwrap_or_default(),
                value,
            );
        }
    }

    fn seed(&self, records: usize, seed: u64) {
        let now = self.kit.clock.now_ms();
        let mut rng = Rng(seed);
        let mut store = self.store.write();
        store.version += 1;
        // Parents first: a child record belongs to one of them.
        let mut order: Vec<&StreamSpec> = self.vendor.spec.spec.streams.iter().collect();
        order.sort_by_key(|s| s.parent.is_some());
        for spec in order {
            let mut recs = BTreeMap::new();
            let parents: Vec<String> = match &spec.parent {
                Some(p) => store
                    .streams
                    .get(&p.stream)
                    .map(|r| r.keys().cloned().collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            // A few parents (lists) with many children each, as accounts have.
            let count = if spec.parent.is_none()
                && self
                    .vendor
                    .spec
                    .spec
                    .streams
                    .iter()
                    .any(|c| c.parent.as_ref().is_some_and(|p| p.stream == spec.name))
            {
                records.clamp(1, 3)
            } else {
                records
            };
            for i in 0..count {
                store.next += 1;
                let n = store.next;
                // Created in the last 90 days, the last change over an hour ago.
                let created = now - 90 * 86_400_000 + rng.below(89 * 86_400_000) as i64;
                let updated = created + rng.below((now - 3_600_000 - created).max(1) as u64) as i64;
                // Whole seconds, as most vendors keep them.
                let updated = updated - updated.rem_euclid(1000);
                let mut value = self.generate(&spec.name, n, &mut rng, created, updated);
                let parent = (!parents.is_empty()).then(|| parents[i % parents.len()].clone());
                self.set_parent(spec, &mut value, parent.as_deref());
                let id = self.id_of(spec, &value);
                recs.insert(
                    id,
                    Rec {
                        updated_ms: updated,
                        deleted: false,
                        parent,
                        value,
                    },
                );
            }
            store.streams.insert(spec.name.clone(), recs);
        }
    }

    /// Writes the parent's key into a child record's `parent.field`.
    fn set_parent(&self, spec: &StreamSpec, value: &mut Value, parent: Option<&str>) {
        if let (Some(field), Some(key)) =
            (spec.parent.as_ref().and_then(|p| p.field.as_ref()), parent)
        {
            set_path(value, std::slice::from_ref(field), json!(key));
        }
    }

    /// The parent key in `path` if it is `template` (a path with `{{ parent.<key> }}`)
    /// with a parent key in place of the placeholder.
    fn match_child_path(&self, template: &str, path: &str) -> Option<String> {
        self.match_slot(template, path, |n| n.starts_with("parent."))
    }

    /// What stands in `path` where `template` has its one placeholder that `slot` picks
    /// (the others are config options): a single non-empty path segment.
    fn match_slot(
        &self,
        template: &str,
        path: &str,
        slot: impl Fn(&str) -> bool,
    ) -> Option<String> {
        const SLOT: &str = "\u{1}";
        let rendered = template::render(template, |n| {
            if slot(n) {
                Some(SLOT.to_owned())
            } else {
                n.strip_prefix("config.")
                    .and_then(|k| self.values.get(k))
                    .cloned()
            }
        });
        let (prefix, suffix) = rendered.split_once(SLOT)?;
        let found = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
        (!found.is_empty() && !found.contains('/')).then(|| found.to_owned())
    }

    fn id_of(&self, spec: &StreamSpec, value: &Value) -> String {
        let pk = spec.primary_key.clone().unwrap_or_else(|| "id".into());
        get_path(value, &dotted(&pk).unwrap_or_default())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// Checks the request's credentials as the spec says they are sent.
    fn authorized(&self, request: &ApiRequest) -> bool {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match &self.vendor.spec.spec.auth {
            Auth::None => true,
            Auth::Bearer { token } => {
                header("authorization") == Some(format!("Bearer {}", self.render(token)))
            }
            Auth::Basic { username, password } => {
                let pair = format!("{}:{}", self.render(username), self.render(password));
                header("authorization")
                    == Some(format!("Basic {}", base64::encode(pair.as_bytes())))
            }
            Auth::ApiKey {
                header: h,
                query,
                value,
            } => {
                let want = self.render(value);
                match (h, query) {
                    (Some(h), _) => header(&h.to_lowercase()) == Some(want),
                    (None, Some(q)) => request.param(q) == Some(want.as_str()),
                    (None, None) => false,
                }
            }
            Auth::Oauth2 { .. } => {
                let Some(got) = header("authorization") else {
                    return false;
                };
                let tokens = self.tokens.read();
                got.strip_prefix("Bearer ")
                    .is_some_and(|t| tokens.iter().any(|k| k == t))
            }
        }
    }

    /// `POST <token_url>`: an access token for the right client and grant.
    fn token(&self, request: &ApiRequest) -> Answer {
        let Auth::Oauth2 {
            client_id,
            client_secret,
            refresh_token,
            ..
        } = &self.vendor.spec.spec.auth
        else {
            return error(404, "Not found.");
        };
        let form =
            tributary_sandbox_kit::form::parse_pairs(&String::from_utf8_lossy(&request.body));
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let ok = get("client_id") == Some(self.render(client_id).as_str())
            && get("client_secret") == Some(self.render(client_secret).as_str())
            && match refresh_token {
                Some(r) => {
                    get("grant_type") == Some("refresh_token")
                        && get("refresh_token") == Some(self.render(r).as_str())
                }
                None => get("grant_type") == Some("client_credentials"),
            };
        if !ok {
            return (
                400,
                json!({"error": "invalid_grant", "error_description": "Bad client or grant."})
                    .to_string()
                    .into_bytes(),
            );
        }
        let n = self.token_count.fetch_add(1, Ordering::Relaxed);
        let token = format!("sandbox_access_{n}");
        self.tokens.write().push(token.clone());
        (
            200,
            json!({"access_token": token, "token_type": "bearer", "expires_in": 3600})
                .to_string()
                .into_bytes(),
        )
    }

    /// The "changed since" value of the request, in Unix ms, and whether it is exclusive.
    fn since(
        &self,
        spec: &StreamSpec,
        request: &ApiRequest,
        body: &Value,
    ) -> Result<Option<i64>, Answer> {
        let Some(inc) = &spec.incremental else {
            return Ok(None);
        };
        let mut raw: Option<String> = None;
        if let Some(p) = &inc.param {
            raw = request.param(p).map(str::to_owned);
        }
        for (k, v) in &spec.query {
            if v.contains("since") && v.contains("{{") {
                raw = raw.or_else(|| request.param(k).map(str::to_owned));
            }
        }
        if let Some(b) = &spec.body {
            let mut strings = Vec::new();
            crate::spec::collect_strings(b, "body", &mut strings);
            for (k, v) in strings {
                if v.contains("since") && v.contains("{{") {
                    raw = raw.or_else(|| {
                        get_body_path(body, &k).map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    });
                }
            }
        }
        match raw {
            None => Ok(None),
            Some(text) => inc.format.parse(&text).map(Some).ok_or_else(|| {
                error(
                    400,
                    &format!("The change filter `{text}` is not a valid time."),
                )
            }),
        }
    }

    /// A page of `spec`'s records: its changes (without tombstones when the stream has a
    /// deletions list), or with `only_deleted` that list.
    fn list(
        &self,
        spec: &StreamSpec,
        request: &ApiRequest,
        only_deleted: bool,
        parent: Option<&str>,
    ) -> (Answer, Vec<(String, String)>) {
        let none = Vec::new();
        let body: Value = if request.body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&request.body) {
                Ok(v) => v,
                Err(_) => return (error(400, "The body is not JSON."), none),
            }
        };
        let max = spec.page_size.unwrap_or(100) as usize;
        let size = match &spec.page_size_param {
            Some(p) => {
                let raw = request.param(p).map(str::to_owned).or_else(|| {
                    get_path(&body, &dotted(p).unwrap_or_default())
                        .map(|v| v.to_string().trim_matches('"').to_owned())
                });
                match raw.map(|r| r.parse::<usize>()) {
                    None => max,
                    Some(Ok(n)) if (1..=max).contains(&n) => n,
                    _ => {
                        return (
                            error(400, &format!("`{p}` must be between 1 and {max}.")),
                            none,
                        );
                    }
                }
            }
            None => max,
        };
        let since = match self.since(spec, request, &body) {
            Ok(s) => s,
            Err(a) => return (a, none),
        };
        let include_deleted = match &self.vendor.spec.spec.sandbox.deleted_only_with {
            _ if only_deleted => true,
            _ if self
                .stream_spec(&spec.name)
                .is_some_and(|s| s.deletions.is_some()) =>
            {
                false
            }
            Some(p) => request.param(p) == Some("true"),
            None => true,
        };
        let store = self.store.read();
        let empty = BTreeMap::new();
        if let Some(p) = parent
            && let Some(ps) = spec.parent.as_ref()
            && !store
                .streams
                .get(&ps.stream)
                .is_some_and(|r| r.contains_key(p))
        {
            return (
                error(404, "The requested resource could not be found."),
                none,
            );
        }
        let recs = store.streams.get(&spec.name).unwrap_or(&empty);
        let inc = spec.incremental.as_ref();
        let order_key = format!(
            "{}|{since:?}|{include_deleted}|{only_deleted}|{parent:?}",
            spec.name
        );
        let cached = {
            let orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
            orders
                .get(&order_key)
                .filter(|(v, _)| *v == store.version)
                .map(|(_, ids)| Arc::clone(ids))
        };
        let matching: Arc<Vec<String>> = match cached {
            Some(ids) => ids,
            None => {
                let ids = Arc::new(Self::matching(
                    recs,
                    inc,
                    since,
                    include_deleted,
                    only_deleted,
                    parent,
                ));
                let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
                if orders.len() >= 64 {
                    orders.clear();
                }
                orders.insert(order_key, (store.version, Arc::clone(&ids)));
                ids
            }
        };
        let filter_sig = format!("{since:?}|{include_deleted}");
        let pagination = self.vendor.spec.spec.pagination_of(spec);
        // Where this page starts.
        let start = match pagination {
            Pagination::None => 0,
            Pagination::Cursor { param, in_body, .. } => {
                let token = if *in_body {
                    get_path(&body, &dotted(param).unwrap_or_default())
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                } else {
                    request.param(param).map(str::to_owned)
                };
                match token {
                    None => 0,
                    Some(t) => match parse_token(&t, &filter_sig) {
                        Some(n) => n,
                        None => {
                            return (error(400, "Invalid pagination token for this query."), none);
                        }
                    },
                }
            }
            Pagination::NextUrl { .. } | Pagination::LinkHeader => {
                match request.param("page_token") {
                    None => 0,
                    Some(t) => match parse_token(t, &filter_sig) {
                        Some(n) => n,
                        None => return (error(400, "Invalid page token for this query."), none),
                    },
                }
            }
            Pagination::Offset { param } => match request.param(param).map(str::parse::<usize>) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return (error(400, &format!("`{param}` must be a number.")), none),
            },
            Pagination::PageNumber { param, start } => {
                match request.param(param).map(str::parse::<u64>) {
                    None => 0,
                    Some(Ok(n)) if n >= *start => ((n - start) as usize) * size,
                    _ => {
                        return (
                            error(400, &format!("`{param}` must be a page number.")),
                            none,
                        );
                    }
                }
            }
        };
        let take = if matches!(pagination, Pagination::None) {
            matching.len()
        } else {
            size
        };
        let page: Vec<&Rec> = matching
            .iter()
            .skip(start)
            .take(take)
            .filter_map(|id| recs.get(id))
            .collect();
        let more = start + page.len() < matching.len();
        let selector = Selector::parse(&spec.records).unwrap_or(Selector {
            to_array: vec!["data".into()],
            unwrap: Vec::new(),
        });
        let items: Vec<Value> = page
            .iter()
            .map(|r| {
                if selector.unwrap.is_empty() {
                    r.value.clone()
                } else {
                    let mut wrapped = json!({});
                    set_path(&mut wrapped, &selector.unwrap, r.value.clone());
                    wrapped
                }
            })
            .collect();
        let mut out = if selector.to_array.is_empty() {
            Value::Array(items)
        } else {
            let mut o = json!({});
            set_path(&mut o, &selector.to_array, Value::Array(items));
            o
        };
        // A scroll (`stop_on_empty`) hands out a token on every page, the empty last one too.
        let scroll = matches!(
            pagination,
            Pagination::Cursor {
                stop_on_empty: true,
                ..
            }
        );
        let next_token = (more || scroll).then(|| token(start + page.len(), &filter_sig));
        // A hostile vendor (the kit's cursor faults): a token leading to itself.
        let next_token = match (&next_token, self.current_token(pagination, request, &body)) {
            (Some(_), Some(current)) => match self.kit.cursor_fault(&current) {
                Some(fault) => {
                    self.kit.inject(1);
                    Some(fault)
                }
                None => next_token,
            },
            _ => next_token,
        };
        let mut headers = Vec::new();
        match pagination {
            Pagination::Cursor {
                token_path,
                has_more_path,
                ..
            } => {
                if let Some(h) = has_more_path {
                    set_path(
                        &mut out,
                        &dotted(h).unwrap_or_default(),
                        json!(next_token.is_some()),
                    );
                }
                if let Some(t) = &next_token {
                    set_path(&mut out, &dotted(token_path).unwrap_or_default(), json!(t));
                } else if has_more_path.is_none() && out.is_object() {
                    set_path(
                        &mut out,
                        &dotted(token_path).unwrap_or_default(),
                        Value::Null,
                    );
                }
            }
            Pagination::NextUrl { url_path } => {
                let url = next_token.as_ref().map(|t| self.next_url(request, t));
                set_path(&mut out, &dotted(url_path).unwrap_or_default(), json!(url));
            }
            Pagination::LinkHeader => {
                if let Some(t) = &next_token {
                    headers.push((
                        "link".to_owned(),
                        format!("<{}>; rel=\"next\"", self.next_url(request, t)),
                    ));
                }
            }
            _ => {}
        }
        ((200, out.to_string().into_bytes()), headers)
    }

    /// The ids of `recs` a listing matches (its parent, tombstones or not, changed since
    /// `since`), ordered by change time when the stream is incremental.
    fn matching(
        recs: &BTreeMap<String, Rec>,
        inc: Option<&Incremental>,
        since: Option<i64>,
        include_deleted: bool,
        only_deleted: bool,
        parent: Option<&str>,
    ) -> Vec<String> {
        let mut matching: Vec<(&String, &Rec)> = recs
            .iter()
            .filter(|(_, r)| parent.is_none() || r.parent.as_deref() == parent)
            .filter(|(_, r)| include_deleted || !r.deleted)
            .filter(|(_, r)| !only_deleted || r.deleted)
            .filter(|(_, r)| match (inc, since) {
                (Some(inc), Some(since)) => {
                    // A day-granular vendor (Intercom's search) truncates the filter to its
                    // day: `>` matches from the next day's start, `>=` from the day's.
                    let unit = match inc.granularity {
                        Granularity::Exact => inc.format.unit_ms(),
                        Granularity::Day => 86_400_000,
                    };
                    let (at, from) = (r.updated_ms.div_euclid(unit), since.div_euclid(unit));
                    if inc.exclusive { at > from } else { at >= from }
                }
                _ => true,
            })
            .collect();
        if inc.is_some() {
            matching.sort_by(|a, b| (a.1.updated_ms, a.0).cmp(&(b.1.updated_ms, b.0)));
        }
        matching.into_iter().map(|(id, _)| id.clone()).collect()
    }

    fn current_token(
        &self,
        pagination: &Pagination,
        request: &ApiRequest,
        body: &Value,
    ) -> Option<String> {
        match pagination {
            Pagination::Cursor {
                param,
                in_body: true,
                ..
            } => get_path(body, &dotted(param).unwrap_or_default())
                .and_then(Value::as_str)
                .map(str::to_owned),
            Pagination::Cursor { param, .. } => request.param(param).map(str::to_owned),
            Pagination::NextUrl { .. } | Pagination::LinkHeader => {
                request.param("page_token").map(str::to_owned)
            }
            _ => None,
        }
    }

    /// The request's own path and query with `page_token` set to `t`.
    fn next_url(&self, request: &ApiRequest, t: &str) -> String {
        let mut pairs: Vec<(String, String)> = request
            .query
            .iter()
            .filter(|(k, _)| k != "page_token")
            .cloned()
            .collect();
        pairs.push(("page_token".into(), t.to_owned()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("{}?{query}", request.path)
    }
}

fn token(position: usize, sig: &str) -> String {
    base64::encode(format!("{position}|{sig}").as_bytes())
}

fn parse_token(t: &str, sig: &str) -> Option<usize> {
    let text = String::from_utf8(base64::decode(t)?).ok()?;
    let (n, made_for) = text.split_once('|')?;
    (made_for == sig).then(|| n.parse().ok()).flatten()
}

fn error(status: u16, message: &str) -> Answer {
    (
        status,
        json!({"error": {"message": message}, "message": message})
            .to_string()
            .into_bytes(),
    )
}

impl KitVendor for Shared {
    type Faults = NoExtra;

    fn kit(&self) -> &Kit<NoExtra> {
        &self.kit
    }

    /// `{"requests_per_second": x}` is counted over the vendor's own window, as
    /// `--rate-limit` is ([`simulated_limit`]): 2.5 for a vendor documented per minute
    /// admits 150 in any 60 s. The kit's other forms (`requests` + `window_seconds`, off,
    /// or a wrong type, which it refuses) are left to it.
    fn rate_limit(&self, request: &Value) -> Option<Result<Value, SandboxError>> {
        let rps = request.get("requests_per_second").and_then(Value::as_f64)?;
        let limit = simulated_limit(&self.vendor.spec.spec.rate_limit, rps);
        self.kit.set_rate_limit(Some(limit));
        Some(Ok(json!({
            "requests_per_second": rps,
            "rate_limit": {
                "requests": limit.requests,
                "window_seconds": limit.window.as_secs_f64(),
            },
        })))
    }

    fn error_body(&self, e: &SandboxError) -> Vec<u8> {
        let message = match e {
            SandboxError::Injected { .. } => "Something went wrong.".to_owned(),
            SandboxError::Throttled { retry_after, .. } => {
                format!("Too many requests; retry after {retry_after} seconds.")
            }
            SandboxError::BadControl { message, .. } => message.clone(),
            SandboxError::UnknownControl { method, path } => {
                format!("Unrecognized request URL ({method} {path}).")
            }
        };
        error(e.status(), &message).1
    }

    fn stats(&self) -> Value {
        to_json(&self.kit.counters())
    }
}

impl Api for Shared {
    /// Credentials are checked in [`Api::route`]: an API key may sit in the query, and the
    /// OAuth token endpoint takes none.
    fn authenticate(&self, _headers: &HeaderMap) -> Result<(), Answer> {
        Ok(())
    }

    fn route(&self, request: &ApiRequest) -> Answer {
        self.route_with_headers(request).0
    }

    fn route_with_headers(&self, request: &ApiRequest) -> (Answer, Vec<(String, String)>) {
        let spec = &self.vendor.spec.spec;
        // An export's files: pre-signed links, which take no API credentials.
        if let Some(rest) = request.path.strip_prefix(export::FILES)
            && request.method == Method::GET
        {
            return self.export_file(request, rest);
        }
        let path = request.path.strip_prefix(&self.base_path).unwrap_or("");
        if let Auth::Oauth2 { token_url, .. } = &spec.auth
            && request.method == Method::POST
            && (self.render(token_url) == path || self.render(token_url).ends_with(&request.path))
        {
            return (self.token(request), Vec::new());
        }
        if !self.authorized(request) {
            return (error(401, "Authentication failed."), Vec::new());
        }
        for (name, value) in &spec.headers {
            let want = self.render(value);
            let got = request
                .headers
                .get(name.to_ascii_lowercase().as_str())
                .and_then(|v| v.to_str().ok());
            if got != Some(want.as_str()) {
                return (
                    error(400, &format!("The `{name}` header must be `{want}`.")),
                    Vec::new(),
                );
            }
        }
        for s in &spec.streams {
            if let Some(e) = &s.export {
                if let Some(answer) = self.export_route(s, e, request, path) {
                    return (answer, Vec::new());
                }
                continue;
            }
            let method = match s.method {
                crate::spec::Method::Get => Method::GET,
                crate::spec::Method::Post => Method::POST,
            };
            if request.method == method {
                if s.parent.is_some() {
                    if let Some(key) = self.match_child_path(&s.path, path) {
                        return self.list(s, request, false, Some(&key));
                    }
                } else if self.render(&s.path) == path {
                    return self.list(s, request, false, None);
                }
            }
            if let Some(d) = s.deletions_request(spec)
                && self.render(&d.path) == path
                && request.method == Method::GET
            {
                return self.list(&d, request, true, None);
            }
        }
        if let Some(check) = &spec.check
            && self.render(check).split('?').next() == Some(path)
        {
            return ((200, b"{\"ok\":true}".to_vec()), Vec::new());
        }
        (
            error(
                404,
                &format!(
                    "Unrecognized request URL ({} {}).",
                    request.method, request.path
                ),
            ),
            Vec::new(),
        )
    }

    fn headers(&self, quota: Option<(u32, u32, u64)>, headers: &mut HeaderMap) {
        let rl = &self.vendor.spec.spec.rate_limit;
        if let Some((_, remaining, reset)) = quota {
            if let Some(h) = &rl.remaining_header
                && let Ok(name) = axum::http::HeaderName::from_bytes(h.to_lowercase().as_bytes())
            {
                headers.insert(name, remaining.into());
            }
            if let Some(h) = &rl.reset_header
                && let Ok(name) = axum::http::HeaderName::from_bytes(h.to_lowercase().as_bytes())
            {
                headers.insert(name, reset.into());
            }
        }
    }
}

/// The simulator's limit for `rps` requests per second, counted over the vendor's own
/// window: a limit documented per minute (Chargebee's 150 a minute per site) admits 150 in
/// any 60 seconds, not 2 in every second (a fractional rate per second would round down,
/// and a client pacing the minute's rate would meet 429s the vendor never sends).
pub(crate) fn simulated_limit(spec: &crate::spec::RateLimitSpec, rps: f64) -> RateLimit {
    // Under one request a minute the per-second form's longer window is the exact one;
    // rounding down never admits more than the rate.
    if spec.requests_per_second.is_none()
        && spec.requests_per_minute.is_some()
        && rps.is_finite()
        && rps * 60.0 >= 1.0
    {
        RateLimit {
            requests: (rps * 60.0).floor().min(f64::from(u32::MAX)) as u32,
            window: std::time::Duration::from_secs(60),
        }
    } else {
        RateLimit::per_second(rps)
    }
}

/// A running simulator of a declarative vendor. Dropping it stops the server.
#[derive(Debug)]
pub struct DeclarativeSandbox {
    shared: Arc<Shared>,
    server: Server,
}

impl DeclarativeSandbox {
    /// Seeds an account of `vendor` and serves it on `127.0.0.1:port` (0: ephemeral).
    pub async fn start(
        vendor: Vendor,
        config: SandboxConfig,
        port: u16,
    ) -> std::io::Result<DeclarativeSandbox> {
        let values = sandbox_values(&vendor);
        let base = template::render(&vendor.spec.spec.base_url, |n| {
            n.strip_prefix("config.")
                .and_then(|k| values.get(k))
                .cloned()
        });
        let base_path = url::Url::parse(&base)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let kit = Kit::new(KitConfig {
            seed: config.seed,
            rate_limit: config
                .rate_limit
                .map(|rps| simulated_limit(&vendor.spec.spec.rate_limit, rps)),
            ..KitConfig::default()
        });
        let name = vendor.spec.spec.vendor.clone();
        let shared = Arc::new(Shared {
            vendor,
            values,
            base_path,
            store: StoreLock::new(Store::default()),
            kit,
            tokens: StoreLock::new(Vec::new()),
            token_count: AtomicU64::new(1),
            exports: StoreLock::new(export::Exports::default()),
            orders: std::sync::Mutex::new(BTreeMap::new()),
        });
        let seeding = Arc::clone(&shared);
        let (records, seed) = (config.records, config.seed);
        tokio::task::spawn_blocking(move || seeding.seed(records, seed))
            .await
            .map_err(std::io::Error::other)?;
        let router = axum::Router::new()
            .fallback(handle::<Shared>)
            .with_state(Arc::clone(&shared));
        let _ = name;
        let server = Server::start(port, router, "declarative simulator").await?;
        Ok(DeclarativeSandbox { shared, server })
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The `api_base` a source uses: the server's URL and the base URL's path.
    pub fn api_base(&self) -> String {
        format!("{}{}", self.server.url(), self.shared.base_path)
    }

    /// The kit: clock, faults, rate limit, counters.
    pub fn kit(&self) -> &Kit<NoExtra> {
        &self.shared.kit
    }

    /// The lines of a `[sources.<name>]` section (after `type`) that sync this simulator.
    pub fn source_lines(&self) -> String {
        let mut out = String::new();
        for (k, v) in config_values(&self.shared.vendor, &self.shared.values) {
            out.push_str(&format!("{k} = {v:?}\n"));
        }
        out.push_str(&format!("api_base = {:?}\n", self.api_base()));
        out
    }

    /// The ids of the live records of `stream`.
    pub fn ids(&self, stream: &str) -> Vec<String> {
        let store = self.shared.store.read();
        store
            .streams
            .get(stream)
            .map(|r| {
                r.iter()
                    .filter(|(_, r)| !r.deleted)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates a record in `stream` now (the simulator's clock); returns its id.
    pub fn create(&self, stream: &str) -> String {
        let now = self.shared.kit.clock.now_ms();
        let now = now - now.rem_euclid(1000);
        let n = {
            let mut store = self.shared.store.write();
            store.next += 1;
            store.next
        };
        let mut rng = Rng(n);
        let mut value = self.shared.generate(stream, n, &mut rng, now, now);
        let Some(spec) = self.shared.stream_spec(stream) else {
            return String::new();
        };
        let mut store = self.shared.store.write();
        store.version += 1;
        // A child record joins the first parent.
        let parent = spec.parent.as_ref().and_then(|p| {
            store
                .streams
                .get(&p.stream)
                .and_then(|r| r.keys().next().cloned())
        });
        self.shared.set_parent(spec, &mut value, parent.as_deref());
        let id = self.shared.id_of(spec, &value);
        store.streams.entry(stream.to_owned()).or_default().insert(
            id.clone(),
            Rec {
                updated_ms: now,
                deleted: false,
                parent,
                value,
            },
        );
        id
    }

    /// Sets top-level `field` of record `id` of `stream` to `value`, now; false if there
    /// is no such record.
    pub fn update(&self, stream: &str, id: &str, field: &str, value: Value) -> bool {
        self.change(stream, id, |rec| {
            set_path(&mut rec.value, &dotted(field).unwrap_or_default(), value);
        })
    }

    /// Deletes record `id` of `stream` now: a tombstone with the spec's deletion value.
    pub fn delete(&self, stream: &str, id: &str) -> bool {
        let spec = self.shared.stream_spec(stream);
        let deleted = spec.and_then(|s| s.deleted.clone());
        let deleted_at = spec.and_then(|s| s.deletions.clone());
        let now = self.shared.kit.clock.now_ms();
        self.change(stream, id, |rec| {
            rec.deleted = true;
            if let Some(d) = &deleted {
                let v = serde_json::to_value(&d.equals).unwrap_or(Value::Bool(true));
                set_path(&mut rec.value, std::slice::from_ref(&d.field), v);
            }
            if let Some(d) = &deleted_at {
                set_path(
                    &mut rec.value,
                    &dotted(&d.deleted_at).unwrap_or_default(),
                    json!(d.format.render(now)),
                );
            }
        })
    }

    fn change(&self, stream: &str, id: &str, edit: impl FnOnce(&mut Rec)) -> bool {
        let now = self.shared.kit.clock.now_ms();
        let now = now - now.rem_euclid(1000);
        let Some(spec) = self.shared.stream_spec(stream) else {
            return false;
        };
        let mut store = self.shared.store.write();
        store.version += 1;
        let Some(rec) = store.streams.get_mut(stream).and_then(|s| s.get_mut(id)) else {
            return false;
        };
        edit(rec);
        rec.updated_ms = now;
        self.shared.stamp(&mut rec.value, spec, now);
        true
    }

    /// How export jobs behave from now on (pending polls, failure, plain files).
    pub fn set_exports(&self, behaviour: ExportBehaviour) {
        self.shared.exports.write().behaviour = behaviour;
    }

    /// Forgets every export job, as a vendor does once they expire: their status and
    /// files answer 404.
    pub fn forget_exports(&self) {
        self.shared.exports.write().jobs.clear();
    }

    /// Expires the links of every export job started so far: the jobs stay listed as
    /// ready, their files answer 403 (S3's "Request has expired").
    pub fn expire_export_links(&self) {
        for job in &mut self.shared.exports.write().jobs {
            job.expired = true;
        }
    }

    /// Export jobs started so far.
    pub fn exports_started(&self) -> usize {
        self.shared.exports.read().started as usize
    }

    /// Stops serving, waiting (boundedly) for requests in flight.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
