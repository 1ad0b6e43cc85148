//! The runtime connector assembled from a spec: a [`Source`] whose streams are read with
//! the SDK's pieces (the shared rate-limited [`HttpClient`], [`spawn_pages`] fetch-ahead,
//! [`ProgressGuard`] against cursors that never end, [`Page::with_cursor`] so every page
//! commits the place to resume from) and converted on the SDK's fast path (each page is
//! [`Records::Json`], never a JSON tree per record).
//!
//! How a stream is read:
//!
//! - **Incremental** (`[streams.incremental]`): a read is a window of changes since the
//!   cursor's `since` (none on the first run: everything). The window's mark is the
//!   vendor's clock (the `Date` of its first answer) when the window opened; once its last
//!   page lands, the cursor moves `since` to the mark, less the spec's lookback. While a
//!   window is read, every page's cursor holds the mark and the next page's token, URL,
//!   offset or number, so a killed run resumes at the page after the last committed one.
//!   A change made while a window is read has a change time at or after its mark, so the
//!   next window reads it: nothing is skipped.
//! - **Snapshot** (no `incremental`): every run reads everything again; its first page
//!   resets the table, which keeps the old rows until the snapshot is complete.
//! - **Export** (`[streams.export]`): a snapshot read from an asynchronous export job's
//!   files; see the `export` module.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_sdk::http::{self, HttpClient, HttpConfig, QuotaHeaders, Response};
use tributary_sdk::pagination::{ProgressGuard, malformed_page, spawn_pages};
use tributary_sdk::{
    Error, Message, Page, PageStream, ReadRequest, Records, Result, Secret, Source, StreamSchema,
};

use crate::extract::{Extracted, Keep, extract, link_next, set_path};
use crate::spec::{
    Auth, Checked, Grant, Granularity, Incremental, Method, Pagination, Parent, Selector,
    StreamSpec, dotted,
};
use crate::template;

mod export;

/// A spec with its schemas: everything but a source's own options.
#[derive(Debug, Clone)]
pub struct Vendor {
    /// The validated spec.
    pub spec: Arc<Checked>,
    /// The stream schemas, in the spec's order, with the spec's primary key, cursor field
    /// and deletion rule.
    pub schemas: Vec<StreamSchema>,
}

impl Vendor {
    /// The spec of stream `name`.
    pub fn stream(&self, name: &str) -> Result<&StreamSpec> {
        tributary_sdk::connector::find_named(&self.spec.spec.streams, name, |s| &s.name)
    }
}

/// A source's validated options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every declared option's value (secrets included, as [`Secret`]s).
    pub values: BTreeMap<String, Secret>,
    /// The base URL, rendered (or the `api_base` override), without a trailing slash.
    pub base_url: String,
    /// The request rate of the account.
    pub requests_per_second: f64,
    /// `page_size` override.
    pub page_size: Option<u32>,
}

impl Settings {
    /// Validates `options` (a `[sources.<name>]` table less `type` and `spec`) against the
    /// spec's `[config]`. Errors name the key, never its value.
    pub fn from_options(vendor: &Vendor, options: &Value) -> Result<Settings> {
        let spec = &vendor.spec.spec;
        let empty = serde_json::Map::new();
        let map = match options {
            Value::Object(m) => m,
            Value::Null => &empty,
            _ => return Err(Error::config("", "the source's options must be a table")),
        };
        let mut values = BTreeMap::new();
        for (key, value) in map {
            if matches!(key.as_str(), "type" | "spec") {
                continue;
            }
            if !spec.config.contains_key(key)
                && !matches!(
                    key.as_str(),
                    "api_base" | "requests_per_second" | "page_size"
                )
            {
                let mut known: Vec<&str> = spec.config.keys().map(String::as_str).collect();
                known.extend(["api_base", "requests_per_second", "page_size"]);
                return Err(Error::config(
                    key,
                    format!(
                        "is not an option of {} sources; the options are: {}",
                        spec.vendor,
                        known.join(", ")
                    ),
                ));
            }
            if spec.config.contains_key(key) {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(Error::config(key, "must be text")),
                };
                values.insert(key.clone(), Secret::new(text));
            }
        }
        for (key, option) in &spec.config {
            if !values.contains_key(key)
                && let Some(d) = &option.derive
                && let Some(v) = map
                    .get(&d.from)
                    .and_then(Value::as_str)
                    .and_then(|from| d.apply(from))
            {
                values.insert(key.clone(), Secret::new(v));
            }
        }
        for (key, option) in &spec.config {
            if !values.contains_key(key) {
                match &option.default {
                    Some(d) => {
                        values.insert(key.clone(), Secret::new(d.clone()));
                    }
                    None => {
                        return Err(Error::config(
                            key,
                            match &option.derive {
                                Some(d) => format!(
                                    "is required: `{}` has no `{}` to take it from ({})",
                                    d.from,
                                    d.after_last,
                                    option.description.as_deref().unwrap_or("see the spec")
                                ),
                                None => format!(
                                    "is required ({})",
                                    option.description.as_deref().unwrap_or("see the spec")
                                ),
                            },
                        ));
                    }
                }
            }
            if option.secret
                && values
                    .get(key)
                    .is_some_and(|v| v.expose().trim().is_empty())
            {
                return Err(Error::config(key, "must not be empty"));
            }
        }
        let base = match map.get("api_base") {
            Some(Value::String(b)) => b.clone(),
            Some(_) => return Err(Error::config("api_base", "must be a URL")),
            None => template::render(&spec.base_url, |n| config_value(&values, n)),
        };
        let secrets: Vec<&str> = spec
            .config
            .iter()
            .filter(|(_, o)| o.secret)
            .map(|(k, _)| k.as_str())
            .collect();
        let base_url = tributary_sdk::endpoint::base_url(
            "api_base",
            &base,
            &format!("`{}`", secrets.join("`, `")),
        )?;
        let requests_per_second = match map.get("requests_per_second") {
            Some(v) => tributary_sdk::options::check_range(
                "requests_per_second",
                v.as_f64()
                    .ok_or_else(|| Error::config("requests_per_second", "must be a number"))?,
                0.01,
                10_000.0,
            )?,
            None => spec.rate_limit.per_second(),
        };
        let page_size = match map.get("page_size") {
            Some(v) => Some(tributary_sdk::options::check_range(
                "page_size",
                v.as_u64()
                    .ok_or_else(|| Error::config("page_size", "must be a whole number"))?
                    as u32,
                1,
                10_000,
            )?),
            None => None,
        };
        Ok(Settings {
            values,
            base_url,
            requests_per_second,
            page_size,
        })
    }
}

fn config_value(values: &BTreeMap<String, Secret>, name: &str) -> Option<String> {
    name.strip_prefix("config.")
        .and_then(|k| values.get(k))
        .map(|s| s.expose().to_owned())
}

/// An OAuth 2 access token and when to stop using it.
#[derive(Debug)]
struct Token {
    value: Secret,
    until: Instant,
}

/// A source of a declarative vendor.
#[derive(Debug)]
pub struct DeclarativeSource {
    kind: &'static str,
    vendor: Vendor,
    settings: Settings,
    http: HttpClient,
    token: tokio::sync::Mutex<Option<Token>>,
}

/// Where a read resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Changes from this time (Unix ms, the vendor's clock) on are still to read; `None`:
    /// everything (the first run of an incremental stream; always for snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// The window being read, if a read stopped inside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// A window read part-way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The vendor's clock when the window opened (Unix ms): the next window's `since`.
    pub mark_ms: i64,
    /// The next page.
    pub next: Next,
    /// The window's changes are read; its deletions list is being read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletions: bool,
    /// A child stream: the key of the parent record being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The next page of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// The first page (of a window's deletions list).
    Start,
    /// A token sent back as the pagination parameter.
    Token(String),
    /// The next page's URL.
    Url(String),
    /// The index of the next page's first record.
    Offset(u64),
    /// The next page's number.
    Page(u64),
    /// The next line of an export job's files: file `file` (from 0), after `line` lines.
    Export {
        /// The job's id.
        job: String,
        /// The file's index in the job's list.
        file: u64,
        /// Lines of that file already read.
        line: u64,
        /// The file's URL without its query: the file is found by it when the job is
        /// resumed, whatever order the vendor lists the files in then.
        #[serde(default)]
        name: String,
        /// The files already read whole, by name: a resumed job reads the others, in
        /// whatever order the vendor lists them then (`None` in a cursor from before this
        /// was kept: the files listed before `file` count as read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        done: Option<Vec<String>>,
        /// How many files the job listed: a resumed job that lists another number is
        /// read again from a new export (`None` in a cursor from before this was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files: Option<u64>,
    },
}

impl Next {
    fn key(&self) -> String {
        match self {
            Next::Start => String::new(),
            Next::Token(t) | Next::Url(t) => t.clone(),
            Next::Offset(n) => format!("offset {n}"),
            Next::Page(n) => format!("page {n}"),
            Next::Export {
                job, file, line, ..
            } => format!("export {job} file {file} line {line}"),
        }
    }
}

/// One request of a walk.
struct PageRequest {
    url: String,
    query: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    method: Method,
}

impl DeclarativeSource {
    /// A source of `vendor` (its `type` is `kind`) with `options`. Makes no request.
    pub fn new(kind: &'static str, vendor: Vendor, options: &Value) -> Result<Self> {
        let settings = Settings::from_options(&vendor, options)?;
        let spec = &vendor.spec.spec;
        let quota = spec
            .rate_limit
            .remaining_header
            .as_ref()
            .map(|remaining| QuotaHeaders {
                remaining: vec![remaining.to_lowercase()],
                reset: spec
                    .rate_limit
                    .reset_header
                    .iter()
                    .map(|h| h.to_lowercase())
                    .collect(),
                structured: Vec::new(),
                low_water: spec.rate_limit.low_water.unwrap_or(1),
            });
        let mut config = HttpConfig {
            quota,
            retry_statuses: spec.retry.statuses.clone(),
            ..HttpConfig::new(spec.vendor.clone(), settings.requests_per_second)
        };
        if let Some(max) = spec.retry.max_retries {
            config.max_retries = max;
        }
        // The account is the vendor, its base URL and its credentials: sources of one
        // account share the limiter.
        let credential: String = spec
            .config
            .iter()
            .filter(|(_, o)| o.secret)
            .filter_map(|(k, _)| settings.values.get(k).map(|v| v.expose().to_owned()))
            .collect::<Vec<_>>()
            .join("\u{1f}");
        let key = http::account_key(
            &vendor.spec.name,
            &format!("{}\u{1f}{credential}", settings.base_url),
        );
        Ok(DeclarativeSource {
            kind,
            http: HttpClient::shared(&key, config)?,
            vendor,
            settings,
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn name(&self) -> &str {
        &self.vendor.spec.spec.vendor
    }

    fn lookup(&self, name: &str) -> Option<String> {
        config_value(&self.settings.values, name)
    }

    fn render(&self, text: &str) -> String {
        template::render(text, |n| self.lookup(n))
    }

    /// The URL of `path_or_url`: a path goes under the base URL; an absolute URL must be on
    /// the base URL's host (the credentials go with it).
    fn resolve(&self, path_or_url: &str, stream: &str) -> Result<String> {
        if path_or_url.starts_with('/') {
            let base = url::Url::parse(&self.settings.base_url)
                .map_err(|e| Error::config("api_base", e.to_string()))?;
            // A path that already holds the base's path (`/2010-04-01/...` under
            // `https://api.twilio.com/2010-04-01`) is joined at the host.
            let prefix = base.path().trim_end_matches('/');
            if !prefix.is_empty() && path_or_url.starts_with(prefix) {
                return base
                    .join(path_or_url)
                    .map(|u| u.to_string())
                    .map_err(|e| Error::config("api_base", e.to_string()));
            }
            return Ok(format!("{}{path_or_url}", self.settings.base_url));
        }
        let url = url::Url::parse(path_or_url).map_err(|e| {
            malformed_page(
                self.name(),
                stream,
                "next page",
                &format!("bad next URL: {e}"),
            )
        })?;
        let base = url::Url::parse(&self.settings.base_url)
            .map_err(|e| Error::config("api_base", e.to_string()))?;
        if url.origin() != base.origin() {
            return Err(Error::protocol(
                self.name(),
                stream,
                format!(
                    "the next page's URL points at {}, not at the API's host {}; refusing to \
                     send the credentials there",
                    url.origin().ascii_serialization(),
                    base.origin().ascii_serialization()
                ),
            ));
        }
        Ok(url.to_string())
    }

    /// The current OAuth access token, fetched (or refreshed) when missing or expiring.
    async fn access_token(&self, force: bool) -> Result<Option<Secret>> {
        let Auth::Oauth2 {
            token_url,
            grant,
            client_id,
            client_secret,
            refresh_token,
            scope,
        } = &self.vendor.spec.spec.auth
        else {
            return Ok(None);
        };
        let mut token = self.token.lock().await;
        if !force
            && let Some(t) = token.as_ref()
            && t.until > Instant::now()
        {
            return Ok(Some(t.value.clone()));
        }
        let url = self.resolve(&self.render(token_url), "oauth token")?;
        let mut form = vec![
            (
                "grant_type",
                match grant {
                    Grant::RefreshToken => "refresh_token",
                    Grant::ClientCredentials => "client_credentials",
                }
                .to_owned(),
            ),
            ("client_id", self.render(client_id)),
            ("client_secret", self.render(client_secret)),
        ];
        if let Some(r) = refresh_token {
            form.push(("refresh_token", self.render(r)));
        }
        if let Some(s) = scope {
            form.push(("scope", self.render(s)));
        }
        let response = self
            .http
            .send("POST oauth token", |c| c.post(&url).form(&form))
            .await?;
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = response.json()?;
        let value = Secret::new(answer.access_token);
        // Refreshed a minute before it expires, so a request never carries a stale token.
        let life = answer.expires_in.unwrap_or(3600).saturating_sub(60).max(1);
        *token = Some(Token {
            value: value.clone(),
            until: Instant::now() + Duration::from_secs(life),
        });
        Ok(Some(value))
    }

    fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
        token: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        match &self.vendor.spec.spec.auth {
            Auth::None => rb,
            Auth::Bearer { token } => rb.bearer_auth(self.render(token)),
            Auth::Basic { username, password } => {
                rb.basic_auth(self.render(username), Some(self.render(password)))
            }
            Auth::ApiKey {
                header,
                query,
                value,
            } => match (header, query) {
                (Some(h), _) => rb.header(h.as_str(), self.render(value)),
                (None, Some(q)) => rb.query(&[(q.as_str(), self.render(value))]),
                (None, None) => rb,
            },
            Auth::Oauth2 { .. } => match token {
                Some(t) => rb.bearer_auth(t.expose()),
                None => rb,
            },
        }
    }

    /// Sends `request`, checking the body with `check`; an OAuth token the vendor refuses
    /// is refreshed once.
    async fn send<T>(
        &self,
        what: &str,
        request: &PageRequest,
        check: impl Fn(&Response) -> std::result::Result<T, String>,
    ) -> Result<(Response, T)> {
        let mut forced = false;
        loop {
            let token = self.access_token(forced).await?;
            let found: Mutex<Option<T>> = Mutex::new(None);
            let sent = self
                .http
                .send_checked(
                    what,
                    |c| {
                        let rb = match request.method {
                            Method::Get => c.get(&request.url),
                            Method::Post => c.post(&request.url),
                        };
                        let mut rb = self.authorize(rb.query(&request.query), token.as_ref());
                        for (name, value) in &self.vendor.spec.spec.headers {
                            rb = rb.header(name.as_str(), self.render(value));
                        }
                        if let Some(body) = &request.body {
                            rb = rb
                                .header("content-type", "application/json")
                                .body(body.clone());
                        }
                        rb
                    },
                    |r| {
                        let value = check(r)?;
                        *found.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
                        Ok(())
                    },
                )
                .await;
            match sent {
                Err(Error::Auth { .. }) if token.is_some() && !forced => forced = true,
                Err(e) => return Err(e),
                Ok(response) => {
                    let value = found
                        .into_inner()
                        .unwrap_or_else(PoisonError::into_inner)
                        .ok_or_else(|| Error::decode(what, "the body was not checked"))?;
                    return Ok((response, value));
                }
            }
        }
    }

    fn page_size(&self, s: &StreamSpec) -> u32 {
        let max = s.page_size.unwrap_or(100);
        self.settings.page_size.map_or(max, |p| p.min(max))
    }

    fn page_request(
        &self,
        s: &StreamSpec,
        since: Option<i64>,
        next: Option<&Next>,
        parent: Option<&str>,
    ) -> Result<PageRequest> {
        let pagination = self.vendor.spec.spec.pagination_of(s);
        let page_size = self.page_size(s);
        let since_text = match (&s.incremental, since) {
            (Some(inc), Some(ms)) => Some(since_param(inc, ms)),
            _ => None,
        };
        let lookup = |name: &str| -> Option<String> {
            match name {
                "since" => since_text.clone(),
                "page_size" => Some(page_size.to_string()),
                other if other.starts_with("parent.") => parent.map(str::to_owned),
                other => self.lookup(other),
            }
        };
        if let Some(Next::Url(url)) = next {
            return Ok(PageRequest {
                url: self.resolve(url, &s.name)?,
                query: Vec::new(),
                body: None,
                method: Method::Get,
            });
        }
        let mut query: Vec<(String, String)> = Vec::new();
        for (k, v) in &s.query {
            let value = template::render(v, lookup);
            // A parameter whose template came out empty (no `since` on a first run) is left out.
            if !(value.is_empty() && v.contains("{{")) {
                query.push((k.clone(), value));
            }
        }
        // A body that carries the page size (`{{ page_size }}`) is where the vendor reads
        // it; otherwise it is a query parameter.
        let size_in_body = s.body.as_ref().is_some_and(|b| {
            let mut strings = Vec::new();
            crate::spec::collect_strings(b, "body", &mut strings);
            strings.iter().any(|(_, v)| v.contains("page_size"))
        });
        if let Some(p) = &s.page_size_param
            && !size_in_body
        {
            query.push((p.clone(), page_size.to_string()));
        }
        if let (Some(inc), Some(text)) = (&s.incremental, &since_text)
            && let Some(param) = &inc.param
        {
            query.push((param.clone(), text.clone()));
        }
        let mut body = s
            .body
            .as_ref()
            .map(|b| render_body(b, &lookup, since.is_some()));
        match (pagination, next) {
            (Pagination::Cursor { param, in_body, .. }, Some(Next::Token(t))) => {
                if *in_body {
                    if let Some(b) = body.as_mut() {
                        set_path(
                            b,
                            &dotted(param).unwrap_or_default(),
                            Value::String(t.clone()),
                        );
                    }
                } else {
                    query.push((param.clone(), t.clone()));
                }
            }
            (Pagination::Offset { param }, n) => {
                let n = match n {
                    Some(Next::Offset(n)) => *n,
                    _ => 0,
                };
                query.push((param.clone(), n.to_string()));
            }
            (Pagination::PageNumber { param, start }, n) => {
                let n = match n {
                    Some(Next::Page(n)) => *n,
                    _ => *start,
                };
                query.push((param.clone(), n.to_string()));
            }
            _ => {}
        }
        Ok(PageRequest {
            url: self.resolve(&template::render(&s.path, lookup), &s.name)?,
            query,
            body: body.map(|b| b.to_string().into_bytes()),
            method: s.method,
        })
    }

    /// The page after one whose body gave `values` (the pagination paths' scalars) and
    /// held `total` records, or `None` at the end of the walk.
    #[allow(clippy::too_many_arguments)]
    fn following(
        &self,
        stream: &str,
        what: &str,
        pagination: &Pagination,
        values: &[Option<String>],
        response: &Response,
        total: usize,
        page_size: usize,
        next: Option<&Next>,
    ) -> Result<Option<Next>> {
        Ok(match pagination {
            Pagination::None => None,
            Pagination::Cursor {
                has_more_path,
                stop_on_empty,
                ..
            } => {
                let more = match has_more_path {
                    Some(_) => match values.get(1).cloned().flatten().as_deref() {
                        Some("true") => true,
                        Some("false") | None => false,
                        Some(other) => {
                            return Err(malformed_page(
                                self.name(),
                                stream,
                                what,
                                &format!("the has-more flag is `{other}`, not a boolean"),
                            ));
                        }
                    },
                    None => true,
                };
                let more = more && !(*stop_on_empty && total == 0);
                values
                    .first()
                    .cloned()
                    .flatten()
                    .filter(|t| more && !t.is_empty())
                    .map(Next::Token)
            }
            Pagination::NextUrl { .. } => values
                .first()
                .cloned()
                .flatten()
                .filter(|u| !u.is_empty())
                .map(Next::Url),
            Pagination::LinkHeader => response.header("link").and_then(link_next).map(Next::Url),
            Pagination::Offset { .. } => (total >= page_size && total > 0).then(|| {
                let at = match next {
                    Some(Next::Offset(n)) => *n,
                    _ => 0,
                };
                Next::Offset(at + total as u64)
            }),
            Pagination::PageNumber { start, .. } => (total >= page_size && total > 0).then(|| {
                let at = match next {
                    Some(Next::Page(n)) => *n,
                    _ => *start,
                };
                Next::Page(at + 1)
            }),
        })
    }

    /// The dotted paths of the scalars `pagination` reads from a body.
    fn pagination_paths(pagination: &Pagination) -> Vec<Vec<String>> {
        match pagination {
            Pagination::Cursor {
                token_path,
                has_more_path,
                ..
            } => {
                let mut p = vec![dotted(token_path).unwrap_or_default()];
                if let Some(h) = has_more_path {
                    p.push(dotted(h).unwrap_or_default());
                }
                p
            }
            Pagination::NextUrl { url_path } => vec![dotted(url_path).unwrap_or_default()],
            _ => Vec::new(),
        }
    }

    /// The keys of every record of the parent stream (read whole, without a change
    /// filter), in the vendor's order, and the vendor's clock at the first answer.
    async fn parent_keys(&self, child: &str, parent: &Parent) -> Result<(Vec<String>, i64)> {
        let spec = &self.vendor.spec.spec;
        let p = self.vendor.stream(&parent.stream)?;
        let selector = Selector::parse(&p.records)
            .map_err(|m| Error::config(format!("streams.{}.records", p.name), m))?;
        let pagination = spec.pagination_of(p).clone();
        let paths = Self::pagination_paths(&pagination);
        let path_refs: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
        let page_size = self.page_size(p) as usize;
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut date = None;
        let mut next: Option<Next> = None;
        let mut guard = ProgressGuard::new(
            self.name(),
            child,
            "next page of the parent stream",
            "the vendor kept answering with more pages",
        );
        loop {
            let request = self.page_request(p, None, next.as_ref(), None)?;
            let what = format!("{} {}", method_name(request.method), p.path);
            let (response, found) = self
                .send(&what, &request, |r| {
                    extract(&r.body, &selector, &path_refs, None)
                })
                .await?;
            date.get_or_insert_with(|| {
                response
                    .date
                    .unwrap_or_else(chrono::Utc::now)
                    .timestamp_millis()
            });
            // Parents are few (lists, accounts): a tree per parent record is fine here.
            let records: Vec<serde_json::Map<String, Value>> =
                serde_json::from_slice(&found.records).map_err(|e| {
                    malformed_page(self.name(), child, &what, &format!("a parent record: {e}"))
                })?;
            for r in &records {
                let key = match r.get(&parent.key) {
                    Some(Value::String(k)) => k.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(malformed_page(
                            self.name(),
                            child,
                            &what,
                            &format!("a `{}` record without `{}`", p.name, parent.key),
                        ));
                    }
                };
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            let following = self.following(
                &p.name,
                &what,
                &pagination,
                &found.values,
                &response,
                found.total,
                page_size,
                next.as_ref(),
            )?;
            match following {
                Some(n) => {
                    guard.follow(&n.key())?;
                    next = Some(n);
                }
                None => break,
            }
        }
        Ok((
            keys,
            date.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        ))
    }

    /// Reads stream `s` from `cursor`: the window's changes (for a child stream, those of
    /// each parent record in turn), then (when the stream has one, and the window has a
    /// `since`) its deletions list.
    fn walk(
        self: &Arc<Self>,
        s: StreamSpec,
        cursor: Option<Cursor>,
        full_refresh: bool,
    ) -> PageStream {
        let this = Arc::clone(self);
        spawn_pages(4, move |pages| async move {
            let spec = &this.vendor.spec.spec;
            let incremental = s.incremental.clone();
            let deletions = s.deletions_request(spec);
            let cursor = cursor.unwrap_or(Cursor {
                since_ms: None,
                window: None,
            });
            let since = if incremental.is_some() {
                cursor.since_ms
            } else {
                None
            };
            let resuming = cursor.window.is_some();
            let resume_parent = cursor.window.as_ref().and_then(|w| w.parent.clone());
            let (mut mark, mut next, mut in_deletions) = match cursor.window {
                Some(w) => (Some(w.mark_ms), Some(w.next), w.deletions),
                None => (None, None, false),
            };
            // A child stream: its parents' keys, listed when the window opens or resumes,
            // and the one being read. A parent gone since the cursor was committed starts
            // the parents over: a record read again lands in place of itself.
            let mut parents: Option<(Vec<String>, usize)> = None;
            if let Some(p) = &s.parent {
                let (keys, date) = this.parent_keys(&s.name, p).await?;
                let at = match &resume_parent {
                    Some(k) => match keys.iter().position(|x| x == k) {
                        Some(i) => i,
                        None => {
                            next = None;
                            0
                        }
                    },
                    None => 0,
                };
                mark.get_or_insert(date);
                if keys.is_empty() {
                    // No parent, nothing to read: the window closes at once.
                    let done = Cursor {
                        since_ms: incremental.as_ref().map(|inc| {
                            let next_since = date - (inc.lookback_seconds as i64) * 1000;
                            since.map_or(next_since, |s| s.max(next_since))
                        }),
                        window: None,
                    };
                    let page = Page::with_cursor(
                        Records::Json {
                            body: Bytes::from_static(b"[]"),
                            path: &[],
                        },
                        &done,
                    )
                    .resetting(!resuming && (full_refresh || incremental.is_none()));
                    pages.send(page).await;
                    return Ok(());
                }
                parents = Some((keys, at));
            }
            // A snapshot (or a full refresh) starts the table over with its first page.
            let mut reset = !resuming && (full_refresh || incremental.is_none());
            let new_guard = || {
                ProgressGuard::new(
                    this.name(),
                    &s.name,
                    "next page",
                    "the vendor kept answering with more pages",
                )
            };
            let mut guard = new_guard();
            if let Some(n) = next.as_ref().filter(|n| **n != Next::Start) {
                guard.start_at(&n.key());
            }
            loop {
                let current: &StreamSpec = match (&deletions, in_deletions) {
                    (Some(d), true) => d,
                    _ => &s,
                };
                let parent = parents.as_ref().map(|(keys, at)| keys[*at].clone());
                let selector = Selector::parse(&current.records)
                    .map_err(|m| Error::config(format!("streams.{}.records", s.name), m))?;
                let pagination = spec.pagination_of(current).clone();
                let paths = Self::pagination_paths(&pagination);
                let path_refs: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
                let keep = match (&s.deletions, &incremental, in_deletions, since) {
                    // The deletions list has no filter: keep what was deleted since the
                    // window's `since` (less the lookback).
                    (Some(d), Some(inc), true, Some(since)) => Some(Keep {
                        path: dotted(&d.deleted_at).unwrap_or_default(),
                        format: d.format,
                        from_ms: since - (inc.lookback_seconds as i64) * 1000,
                    }),
                    // A day-granular filter answers with up to two days too many: keep
                    // what changed since `since` (less the lookback).
                    (_, Some(inc), false, Some(since)) if inc.granularity == Granularity::Day => {
                        Some(Keep {
                            path: dotted(&inc.cursor_field).unwrap_or_default(),
                            format: inc.field_format.unwrap_or(inc.format),
                            from_ms: since - (inc.lookback_seconds as i64) * 1000,
                        })
                    }
                    _ => None,
                };
                let page_size = this.page_size(current) as usize;
                let request = this.page_request(
                    current,
                    if in_deletions { None } else { since },
                    next.as_ref().filter(|n| **n != Next::Start),
                    parent.as_deref(),
                )?;
                let what = format!("{} {}", method_name(request.method), current.path);
                let (response, found) = this
                    .send(&what, &request, |r| {
                        extract(&r.body, &selector, &path_refs, keep.as_ref())
                    })
                    .await?;
                let Extracted {
                    records,
                    total,
                    values,
                    ..
                } = found;
                let mark_ms = *mark.get_or_insert_with(|| {
                    response
                        .date
                        .unwrap_or_else(chrono::Utc::now)
                        .timestamp_millis()
                });
                let following = this.following(
                    &s.name,
                    &what,
                    &pagination,
                    &values,
                    &response,
                    total,
                    page_size,
                    next.as_ref(),
                )?;
                if let Some(n) = &following {
                    // Before the page lands: a page leading back to a followed place
                    // repeats what was delivered, so it must not commit.
                    guard.follow(&n.key())?;
                }
                // The next parent, when this one's pages are done.
                let next_parent = match (&following, &parents) {
                    (None, Some((keys, at))) => keys.get(at + 1).cloned(),
                    _ => None,
                };
                let to_deletions = following.is_none()
                    && next_parent.is_none()
                    && !in_deletions
                    && deletions.is_some()
                    && since.is_some();
                let resume = match (&following, &next_parent, to_deletions) {
                    (Some(n), _, _) => Cursor {
                        since_ms: since,
                        window: Some(Window {
                            mark_ms,
                            next: n.clone(),
                            deletions: in_deletions,
                            parent: parent.clone(),
                        }),
                    },
                    (None, Some(p), _) => Cursor {
                        since_ms: since,
                        window: Some(Window {
                            mark_ms,
                            next: Next::Start,
                            deletions: false,
                            parent: Some(p.clone()),
                        }),
                    },
                    (None, None, true) => Cursor {
                        since_ms: since,
                        window: Some(Window {
                            mark_ms,
                            next: Next::Start,
                            deletions: true,
                            parent: None,
                        }),
                    },
                    (None, None, false) => Cursor {
                        since_ms: incremental.as_ref().map(|inc| {
                            let next_since = mark_ms - (inc.lookback_seconds as i64) * 1000;
                            since.map_or(next_since, |s| s.max(next_since))
                        }),
                        window: None,
                    },
                };
                let page = Page::with_cursor(
                    Records::Json {
                        body: Bytes::from(records),
                        path: &[],
                    },
                    &resume,
                )
                .resetting(reset);
                reset = false;
                if !pages.send(page).await {
                    return Ok(());
                }
                match (following, next_parent, to_deletions) {
                    (Some(n), _, _) => next = Some(n),
                    (None, Some(_), _) => {
                        if let Some((_, at)) = parents.as_mut() {
                            *at += 1;
                        }
                        next = None;
                        guard = new_guard();
                    }
                    (None, None, true) => {
                        in_deletions = true;
                        next = None;
                        guard = new_guard();
                    }
                    (None, None, false) => return Ok(()),
                }
            }
        })
    }
}

/// The value of the "changed since" filter for a window starting at `ms`: an exclusive
/// filter is asked from one unit earlier, so a change at `ms` itself is not skipped.
fn since_param(inc: &Incremental, ms: i64) -> String {
    let at = if inc.exclusive {
        ms - inc.format.unit_ms()
    } else {
        ms
    };
    // A vendor that matches by calendar day, in its own time zone, is asked from two days
    // earlier (one day, plus one for the zone and daylight saving), never before 1970;
    // the records before `ms` are dropped when the page is read.
    let at = match inc.granularity {
        Granularity::Exact => at,
        Granularity::Day => (at - 2 * 86_400_000).max(0),
    };
    inc.format.render(at)
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

/// The body template as JSON: strings rendered; a string that is one placeholder whose
/// value is a whole number becomes a JSON number (`limit = "{{ page_size }}"`). A table
/// whose strings all use `{{ since }}` is dropped when there is no `since` yet (the first
/// run's filter), and so is an array left empty by that.
fn render_body(
    value: &toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    has_since: bool,
) -> Value {
    fn go(
        v: &toml::Value,
        lookup: &dyn Fn(&str) -> Option<String>,
        has_since: bool,
    ) -> Option<Value> {
        Some(match v {
            toml::Value::String(s) => {
                if !has_since && s.contains("since") && s.contains("{{") {
                    return None;
                }
                let rendered = template::render(s, lookup);
                let single = s.trim().starts_with("{{")
                    && s.trim().ends_with("}}")
                    && s.matches("{{").count() == 1;
                match rendered.parse::<i64>() {
                    Ok(n) if single => Value::from(n),
                    _ => Value::String(rendered),
                }
            }
            toml::Value::Integer(i) => Value::from(*i),
            toml::Value::Float(f) => Value::from(*f),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(items) => {
                let out: Vec<Value> = items
                    .iter()
                    .filter_map(|i| go(i, lookup, has_since))
                    .collect();
                if out.is_empty() && !items.is_empty() {
                    return None;
                }
                Value::Array(out)
            }
            toml::Value::Table(t) => {
                let mut out = serde_json::Map::new();
                let mut dropped = false;
                for (k, v) in t {
                    match go(v, lookup, has_since) {
                        Some(v) => {
                            out.insert(k.clone(), v);
                        }
                        None => dropped = true,
                    }
                }
                if dropped && !has_since {
                    // A filter object missing its value makes no sense to the vendor.
                    return None;
                }
                Value::Object(out)
            }
        })
    }
    // The body itself stays, whatever its filters lost.
    match value {
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .filter_map(|(k, v)| go(v, lookup, has_since).map(|v| (k.clone(), v)))
                .collect(),
        ),
        other => go(other, lookup, has_since).unwrap_or(Value::Null),
    }
}

/// The source behind `Arc`, so its walks can hold it.
#[derive(Debug, Clone)]
pub struct Shared(pub Arc<DeclarativeSource>);

#[async_trait]
impl Source for Shared {
    fn kind(&self) -> &'static str {
        self.0.kind
    }

    /// The spec's `check` request, or the first stream's first page.
    async fn check(&self) -> Result<()> {
        let this = &self.0;
        let spec = &this.vendor.spec.spec;
        match &spec.check {
            Some(path) => {
                let request = PageRequest {
                    url: this.resolve(&this.render(path), "check")?,
                    query: Vec::new(),
                    body: None,
                    method: Method::Get,
                };
                this.send(&format!("GET {path}"), &request, |_| Ok(()))
                    .await
                    .map(drop)
            }
            None => {
                let s = &spec.streams[0];
                let request = this.page_request(s, None, None, None)?;
                this.send(&format!("check {}", s.name), &request, |_| Ok(()))
                    .await
                    .map(drop)
            }
        }
    }

    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        Ok(self.0.vendor.schemas.clone())
    }

    async fn read(&self, request: ReadRequest) -> Result<PageStream> {
        let request = request.decode::<Cursor>()?;
        let s = self.0.vendor.stream(request.stream())?.clone();
        if s.export.is_some() {
            return Ok(self.0.export_walk(s, request.cursor));
        }
        Ok(self.0.walk(s, request.cursor, request.full_refresh))
    }

    /// A record of a stream with a `track` mapping as a Segment `track` call.
    fn messages(&self, source: &str, stream: &str, record: &Value) -> Vec<Message> {
        let vendor = &self.0.vendor;
        let Ok(s) = vendor.stream(stream) else {
            return Vec::new();
        };
        let Some(track) = &s.track else {
            return Vec::new();
        };
        let key = s.primary_key.clone().or_else(|| {
            vendor
                .schemas
                .iter()
                .find(|x| x.name == stream)
                .map(|x| x.primary_key.clone())
        });
        let key = key.as_deref().unwrap_or("id");
        crate::track::message(track, source, stream, key, record)
            .into_iter()
            .collect()
    }
}
