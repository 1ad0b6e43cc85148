//! The spec format: one TOML file describing a vendor's API (base URL, auth, rate limit,
//! retries, and per stream its request, pagination, record selector, primary key,
//! incremental filter and deletions), and its validation.
//!
//! [`Spec::parse`] refuses a spec with a mistake with a [`SpecError`] that names the file,
//! the stream (when the mistake is inside one) and the key: an unknown key, a bad record
//! path, a template naming a config option the spec does not declare, an incremental
//! stream without a "changed since" filter, a pagination style missing what it needs.
//! Nothing in a spec is executed: templates are `{{ name }}` substitutions only.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::template::Template;

/// A spec mistake: the file, the stream (if inside one), the key and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The spec file, as given.
    pub file: String,
    /// The stream, when the mistake is inside `[[streams]]`.
    pub stream: Option<String>,
    /// The key, as a dotted path (`pagination.token_path`).
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(stream) = &self.stream {
            write!(f, "stream `{stream}`: ")?;
        }
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for SpecError {}

/// A vendor, as its spec file describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The vendor's display name, in errors and logs (`HubSpot`).
    pub vendor: String,
    /// The API's base URL; may use `{{ config.<option> }}` (e.g. a subdomain).
    pub base_url: String,
    /// A cheap GET (path under `base_url`) that proves the credentials; default: the first
    /// stream's first page.
    #[serde(default)]
    pub check: Option<String>,
    /// The directory of the stream schemas, relative to the spec file (default `schemas`
    /// next to it). Built-in vendors use the embedded `schemas/<vendor>/`.
    #[serde(default)]
    pub schemas: Option<String>,
    /// The options a source of this vendor takes, besides the runtime's own.
    #[serde(default)]
    pub config: BTreeMap<String, OptionSpec>,
    /// How requests authenticate.
    pub auth: Auth,
    /// Headers sent with every API request (templates over `config.<option>`), such as
    /// the API version a vendor wants named (`Intercom-Version`). The simulator refuses a
    /// request without them.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The vendor's rate limit and quota headers.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Which statuses are retried.
    #[serde(default)]
    pub retry: RetrySpec,
    /// The pagination of streams that do not declare their own.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Streams, in the order `discover` lists them.
    pub streams: Vec<StreamSpec>,
    /// Hints for the simulator served from this spec.
    #[serde(default)]
    pub sandbox: SandboxHints,
}

/// One option of a source's config section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSpec {
    /// What the option is, for docs and errors.
    #[serde(default)]
    pub description: Option<String>,
    /// A credential: never printed, and its digest keys the shared rate limiter.
    #[serde(default)]
    pub secret: bool,
    /// The value when the config leaves the option out; without one it is required.
    #[serde(default)]
    pub default: Option<String>,
    /// The value the simulator accepts (default `sandbox_<option>`).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// When the config leaves the option out, its value is taken from another option:
    /// Mailchimp's data center is the part of the API key after its last `-`.
    #[serde(default)]
    pub derive: Option<Derive>,
}

/// An option's value taken from another option's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derive {
    /// The option it is taken from.
    pub from: String,
    /// The text after the last occurrence of this separator.
    pub after_last: String,
}

impl Derive {
    /// The derived value of `from`'s value `text`, if the separator occurs.
    pub fn apply(&self, text: &str) -> Option<String> {
        text.rsplit_once(self.after_last.as_str())
            .map(|(_, after)| after.to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// How requests authenticate. Every text is a template over `config.<option>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// The password (empty for vendors that take the key as the user name).
        #[serde(default)]
        password: String,
    },
    /// An API key in a header or a query parameter (exactly one of the two).
    ApiKey {
        /// The header that carries the key.
        #[serde(default)]
        header: Option<String>,
        /// The query parameter that carries the key.
        #[serde(default)]
        query: Option<String>,
        /// The key (with any prefix the vendor wants, e.g. `apikey {{ config.key }}`).
        value: String,
    },
    /// OAuth 2: an access token from `token_url`, refreshed before it expires and when
    /// the vendor refuses it.
    Oauth2 {
        /// The token endpoint: an absolute URL, or a path under `base_url`.
        token_url: String,
        /// `refresh_token` or `client_credentials`.
        grant: Grant,
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: String,
        /// The refresh token (grant `refresh_token` only).
        #[serde(default)]
        refresh_token: Option<String>,
        /// Scopes to ask for, space-separated.
        #[serde(default)]
        scope: Option<String>,
    },
}

/// An OAuth 2 grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// `grant_type=refresh_token`.
    RefreshToken,
    /// `grant_type=client_credentials`.
    ClientCredentials,
}

/// The vendor's documented limit, and the headers that report the quota left.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests per second per account.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests per minute per account (instead of per second).
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    /// Header with the requests left in the current window.
    #[serde(default)]
    pub remaining_header: Option<String>,
    /// Header with the seconds (or Unix time) until the window resets.
    #[serde(default)]
    pub reset_header: Option<String>,
    /// Pause the account when this many requests (or fewer) are left (default 1).
    #[serde(default)]
    pub low_water: Option<u64>,
}

impl RateLimitSpec {
    /// The rate in requests per second (default 10).
    pub fn per_second(&self) -> f64 {
        match (self.requests_per_second, self.requests_per_minute) {
            (Some(rps), _) => rps,
            (None, Some(rpm)) => rpm / 60.0,
            (None, None) => 10.0,
        }
    }
}

/// Retry rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Statuses retried with backoff besides 429, 500, 502, 503 and 504.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Retries of one request (default 8).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// How a stream's pages follow each other.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request.
    None,
    /// A token in the body (`token_path`) sent back as `param`; the last page has none
    /// (or `has_more_path` false).
    Cursor {
        /// Dotted path of the next token in the body (`paging.next.after`).
        token_path: String,
        /// The parameter that carries it (with `in_body`, a dotted path in the body:
        /// `pagination.starting_after`).
        param: String,
        /// Send it in the JSON body instead of the query.
        #[serde(default)]
        in_body: bool,
        /// Dotted path of a boolean that says whether there is a next page.
        #[serde(default)]
        has_more_path: Option<String>,
        /// The walk ends at a page without records, whatever token it carries (a scroll
        /// API such as Intercom's companies, whose last page is empty and still has one).
        #[serde(default)]
        stop_on_empty: bool,
    },
    /// The next page's URL (absolute, or a path) in the body at `url_path`.
    NextUrl {
        /// Dotted path of the URL in the body.
        url_path: String,
    },
    /// The next page's URL in the `Link` header (`rel="next"`).
    LinkHeader,
    /// `param` is the index of the first record; a page shorter than the page size is
    /// the last.
    Offset {
        /// The offset parameter.
        param: String,
    },
    /// `param` is the page number, from `start`; a page shorter than the page size is
    /// the last.
    PageNumber {
        /// The page parameter.
        param: String,
        /// The first page's number (default 1).
        #[serde(default = "one")]
        start: u64,
    },
}

fn one() -> u64 {
    1
}

/// One stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The stream's (and table's) name; its schema is `<schemas>/<name>.json`.
    pub name: String,
    /// The path under `base_url`; may use `{{ config.<option> }}`.
    pub path: String,
    /// `GET` (default) or `POST` (search endpoints).
    #[serde(default)]
    pub method: Method,
    /// Query parameters, each a template (may use `{{ since }}` and `{{ page_size }}`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// A JSON body (for `POST`), written as a TOML table; its strings are templates.
    #[serde(default)]
    pub body: Option<toml::Value>,
    /// Dotted path of the records array in the body (`results`, `data.items`; `$` for a
    /// body that is the array), optionally unwrapping each element (`list[*].customer`).
    pub records: String,
    /// The record field identifying it (default: the schema's primary key, `id`).
    #[serde(default)]
    pub primary_key: Option<String>,
    /// The parameter carrying the page size.
    #[serde(default)]
    pub page_size_param: Option<String>,
    /// Records per page (default 100), and the largest the vendor accepts.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// How pages follow each other (default: the spec's `pagination`).
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// How changes are read; without it each run reads a full snapshot.
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// The value of a record field that means the vendor deleted it.
    #[serde(default)]
    pub deleted: Option<Deleted>,
    /// A separate list of deleted records, read after each incremental window.
    #[serde(default)]
    pub deletions: Option<Deletions>,
    /// The stream is read once per record of another stream (the members of each list):
    /// `path` and `query` use `{{ parent.<key> }}`.
    #[serde(default)]
    pub parent: Option<Parent>,
    /// Each record also goes on as a Tracking-API `track` call (an event stream: its
    /// schema's `kind` is `"events"`).
    #[serde(default)]
    pub track: Option<Track>,
    /// The stream is read by an asynchronous export job: the request (`path`, `method`,
    /// `query`, `body`) starts it, its status is polled, and its files are downloaded.
    #[serde(default)]
    pub export: Option<Export>,
}

/// An asynchronous bulk export (SendGrid's contacts export): the stream's request starts a
/// job, `status_path` is polled until the job is ready, and the records are the lines of
/// the files it lists (JSON lines, gzip or plain). Each run is a full snapshot. The cursor
/// holds the job, the file and the line, so a killed read resumes in the same export while
/// its files are there, and starts a new export (over again) when they are not.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Dotted path of the job id in the answer that started it (default `id`).
    #[serde(default = "id_key")]
    pub id_path: String,
    /// The job's status (GET, under `base_url`): a template over `{{ export.id }}` and
    /// `{{ config.<option> }}`.
    pub status_path: String,
    /// Dotted path of the status in the status answer (default `status`).
    #[serde(default = "status_key")]
    pub status_field: String,
    /// Statuses meaning the job is still running.
    pub pending: Vec<String>,
    /// Statuses meaning the files are ready.
    pub ready: Vec<String>,
    /// Statuses meaning the job failed.
    pub failed: Vec<String>,
    /// Dotted path of the vendor's reason, shown when the job failed.
    #[serde(default)]
    pub message_field: Option<String>,
    /// Dotted path of the array of file URLs in a ready status answer. The files are
    /// downloaded without the API's credentials (they are pre-signed links to a file
    /// store, which refuses a second credential).
    pub urls: String,
    /// The longest wait between two polls, in seconds (default 5): polls start a second
    /// apart and double up to this.
    #[serde(default = "five")]
    pub poll_seconds: u64,
    /// How long the job may take before the read fails, in seconds (default 3600).
    #[serde(default = "hour")]
    pub timeout_seconds: u64,
}

fn status_key() -> String {
    "status".to_owned()
}

fn five() -> u64 {
    5
}

fn hour() -> u64 {
    3600
}

/// How a record of an event stream becomes a Segment `track` call
/// (<https://segment.com/docs/connections/spec/track/>): `event` names it, `userId` (or an
/// `anonymousId` made from the record's key) says who, `timestamp` when, and the record's
/// fields are its `properties`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    /// The event name: a template over the record's fields, `{{ record.<dotted path> }}`
    /// (`"Message {{ record.status }}"`).
    pub event: String,
    /// Dotted path of the user id; a record without one is sent with an `anonymousId`
    /// derived from its primary key.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Dotted path of when the event happened.
    pub timestamp: String,
    /// How `timestamp` is written (default `rfc3339`; a JSON number is read as `unix`
    /// unless this says `unix_ms`).
    #[serde(default)]
    pub timestamp_format: Option<TimeFormat>,
    /// The top-level fields sent as `properties` (default: every field of the record).
    #[serde(default)]
    pub properties: Option<Vec<String>>,
    /// Write the event name in Title Case, words split at `_`, `.`, `-` and spaces
    /// (`customer_created` → `Customer Created`), the "Object Action" form Segment's
    /// tracking plan conventions ask for
    /// (<https://segment.com/docs/protocols/tracking-plan/best-practices/>).
    #[serde(default)]
    pub title_case: bool,
}

/// The stream whose records a child stream is read for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    /// The parent stream (declared in the same spec, without a parent of its own).
    pub stream: String,
    /// The parent record's field the child's requests use (default `id`).
    #[serde(default = "id_key")]
    pub key: String,
    /// The child records' field that holds the parent's key (`list_id`), if they have one;
    /// the simulator fills it.
    #[serde(default)]
    pub field: Option<String>,
}

fn id_key() -> String {
    "id".to_owned()
}

/// A list of deleted records (HubSpot's `?archived=true`), read after each window of
/// changes; records deleted before the window's `since` are skipped by their deletion time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deletions {
    /// The path (GET) under `base_url`.
    pub path: String,
    /// Query parameters (templates over `config.<option>`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Dotted path of the records array.
    pub records: String,
    /// The record field holding the deletion time.
    pub deleted_at: String,
    /// How `deleted_at` is written (default `rfc3339`).
    #[serde(default = "rfc3339")]
    pub format: TimeFormat,
    /// The pagination of this list (default: the stream's).
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Records per page of this list (default: the stream's).
    #[serde(default)]
    pub page_size: Option<u32>,
}

fn rfc3339() -> TimeFormat {
    TimeFormat::Rfc3339
}

impl StreamSpec {
    /// The stream as its deletions list is requested: its path, query, records and
    /// pagination, with the stream's page size; no body, no change filter.
    pub fn deletions_request(&self, spec: &Spec) -> Option<StreamSpec> {
        let d = self.deletions.as_ref()?;
        Some(StreamSpec {
            name: self.name.clone(),
            path: d.path.clone(),
            method: Method::Get,
            query: d.query.clone(),
            body: None,
            records: d.records.clone(),
            primary_key: self.primary_key.clone(),
            page_size_param: self.page_size_param.clone(),
            page_size: d.page_size.or(self.page_size),
            pagination: Some(
                d.pagination
                    .clone()
                    .unwrap_or_else(|| spec.pagination_of(self).clone()),
            ),
            incremental: None,
            deleted: self.deleted.clone(),
            deletions: None,
            parent: self.parent.clone(),
            track: None,
            export: None,
        })
    }
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET.
    #[default]
    Get,
    /// POST with a JSON body.
    Post,
}

/// Incremental reads: records changed since the last run, by `cursor_field`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The record field holding the change time (top level, or dotted).
    pub cursor_field: String,
    /// The query parameter meaning "changed since" (e.g. `updated_at[after]`); or leave it
    /// out and use `{{ since }}` in `query` or `body`.
    #[serde(default)]
    pub param: Option<String>,
    /// How `since` is written: `unix`, `unix_ms`, `rfc3339` or `date`.
    #[serde(default)]
    pub format: TimeFormat,
    /// How `cursor_field` is written in records (default: `format`).
    #[serde(default)]
    pub field_format: Option<TimeFormat>,
    /// The filter is strictly after `since` (the runtime then asks from one unit earlier).
    #[serde(default)]
    pub exclusive: bool,
    /// Seconds read again before the last run's end, for vendors whose change times lag.
    #[serde(default)]
    pub lookback_seconds: u64,
    /// How finely the vendor applies the filter: `exact` (default), or `day` when it
    /// matches times by calendar day in a time zone we cannot know (Intercom's search).
    /// With `day` the filter asks from two days before `since`, and the records changed
    /// before `since` are dropped here, by their `cursor_field`.
    #[serde(default)]
    pub granularity: Granularity,
}

/// How finely a vendor applies a "changed since" filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// To the unit of the filter's format.
    #[default]
    Exact,
    /// By calendar day.
    Day,
}

/// How a time is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Unix seconds.
    #[default]
    Unix,
    /// Unix milliseconds.
    UnixMs,
    /// RFC 3339 (`2024-05-01T12:00:00Z`).
    Rfc3339,
    /// A date (`2024-05-01`), for day-granular filters.
    Date,
    /// RFC 2822 (`Wed, 01 May 2024 12:00:00 +0000`), as Twilio writes times.
    Rfc2822,
}

impl TimeFormat {
    /// One unit of this format, in milliseconds.
    pub fn unit_ms(self) -> i64 {
        match self {
            TimeFormat::UnixMs => 1,
            TimeFormat::Date => 86_400_000,
            _ => 1000,
        }
    }

    /// `ms` (Unix milliseconds) written in this format.
    pub fn render(self, ms: i64) -> String {
        let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
        match self {
            TimeFormat::Unix => ms.div_euclid(1000).to_string(),
            TimeFormat::UnixMs => ms.to_string(),
            TimeFormat::Rfc3339 => at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            TimeFormat::Date => at.format("%Y-%m-%d").to_string(),
            TimeFormat::Rfc2822 => at.to_rfc2822(),
        }
    }

    /// A time written in this format (or as a JSON number for the Unix ones), in Unix
    /// milliseconds.
    pub fn parse(self, text: &str) -> Option<i64> {
        match self {
            TimeFormat::Unix => text.parse::<i64>().ok().map(|s| s * 1000),
            TimeFormat::UnixMs => text.parse().ok(),
            TimeFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp_millis()),
            TimeFormat::Date => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis()),
            TimeFormat::Rfc2822 => chrono::DateTime::parse_from_rfc2822(text)
                .ok()
                .map(|t| t.timestamp_millis()),
        }
    }
}

/// A record field value meaning deleted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deleted {
    /// The top-level field (`deleted`, `archived`, `status`).
    pub field: String,
    /// The value meaning deleted (`true`, `"deleted"`).
    pub equals: toml::Value,
}

/// How the simulator dresses its generated records.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxHints {
    /// Column prefixes that the vendor nests in an object: `properties` makes column
    /// `properties_email` the field `email` of object `properties`.
    #[serde(default)]
    pub nested: Vec<String>,
    /// Ids are numbers written as text (`"1001"`) rather than `<stream>_<n>`.
    #[serde(default)]
    pub numeric_ids: bool,
    /// A query parameter that must be `true` for deleted records to be listed (as
    /// Chargebee's `include_deleted`).
    #[serde(default)]
    pub deleted_only_with: Option<String>,
    /// The default port of `tributary sandbox <vendor>`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Realistic values for fields the schema's types alone would fill with words:
    /// `"<stream>.<dotted field>" = [value, ...]`, one picked per generated record (an
    /// event's type from the vendor's list, an object nested as the vendor nests it).
    #[serde(default)]
    pub values: BTreeMap<String, Vec<toml::Value>>,
}

/// The parsed record selector: keys to the array, then keys inside each element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Keys from the top of the body to the array (empty: the body is the array).
    pub to_array: Vec<String>,
    /// Keys inside each element to the record (empty: the element is the record).
    pub unwrap: Vec<String>,
}

impl Selector {
    /// Parses `records`: `a.b`, `a[*].b`, `$`, optionally starting with `$.`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let text = text.trim();
        let rest = if text == "$" {
            ""
        } else {
            text.strip_prefix("$.").unwrap_or(text)
        };
        let (array, unwrap) = match rest.split_once("[*]") {
            Some((a, u)) => {
                let u = u.strip_prefix('.').ok_or_else(|| {
                    format!("`{text}`: `[*]` must be followed by `.key` or end the path")
                })?;
                (a, u)
            }
            None => (rest, ""),
        };
        let keys = |part: &str| -> Result<Vec<String>, String> {
            if part.is_empty() {
                return Ok(Vec::new());
            }
            part.split('.')
                .map(|k| {
                    if k.is_empty()
                        || !k
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        Err(format!(
                            "`{text}` is not a record path: `{k}` is not a key (write keys \
                             joined by `.`, with at most one `[*]`, e.g. `data`, \
                             `list[*].customer`)"
                        ))
                    } else {
                        Ok(k.to_owned())
                    }
                })
                .collect()
        };
        Ok(Selector {
            to_array: keys(array)?,
            unwrap: if rest.contains("[*]") && unwrap.is_empty() {
                return Err(format!("`{text}`: nothing after `[*].`"));
            } else {
                keys(unwrap)?
            },
        })
    }
}

/// Checks a dotted body path (`paging.next.after`).
pub fn dotted(text: &str) -> Result<Vec<String>, String> {
    let s = Selector::parse(text)?;
    if !s.unwrap.is_empty() || s.to_array.is_empty() {
        return Err(format!("`{text}` is not a dotted path of keys (`a.b.c`)"));
    }
    Ok(s.to_array)
}

/// What a parsed and validated spec holds besides the raw [`Spec`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// The spec.
    pub spec: Spec,
    /// Its machine name (the file stem: `hubspot`).
    pub name: String,
    /// The file, as given (for errors).
    pub file: String,
}

impl Spec {
    /// Parses and validates the text of spec file `file` (named `name`).
    pub fn parse(file: &str, name: &str, text: &str) -> Result<Checked, SpecError> {
        let spec: Spec = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        spec.validate(file)?;
        Ok(Checked {
            spec,
            name: name.to_owned(),
            file: file.to_owned(),
        })
    }

    /// The stream's pagination (its own, else the spec's, else none).
    pub fn pagination_of<'a>(&'a self, stream: &'a StreamSpec) -> &'a Pagination {
        stream
            .pagination
            .as_ref()
            .or(self.pagination.as_ref())
            .unwrap_or(&Pagination::None)
    }

    fn validate(&self, file: &str) -> Result<(), SpecError> {
        let top = |key: &str, message: String| SpecError {
            file: file.to_owned(),
            stream: None,
            key: key.to_owned(),
            message,
        };
        let options: Vec<&str> = self.config.keys().map(String::as_str).collect();
        let config_only = |key: &str, text: &str| -> Result<(), SpecError> {
            Template::parse(text)
                .and_then(|t| t.check(&options, false))
                .map_err(|m| top(key, m))
        };
        if self.vendor.trim().is_empty() {
            return Err(top("vendor", "must not be empty".into()));
        }
        config_only("base_url", &self.base_url)?;
        let rendered = self.base_url.replace("{{", "").replace("}}", "");
        if !(rendered.starts_with("https://") || rendered.starts_with("http://")) {
            return Err(top(
                "base_url",
                "must start with https:// (the credentials go there)".into(),
            ));
        }
        if self.check.is_none() && self.streams.first().is_some_and(|s| s.export.is_some()) {
            return Err(top(
                "check",
                "the first stream is an export, so `tributary check` would start a job: give a cheap GET path that proves the credentials".into(),
            ));
        }
        if let Some(check) = &self.check {
            config_only("check", check)?;
            if !check.starts_with('/') {
                return Err(top("check", "must be a path starting with `/`".into()));
            }
        }
        for (name, option) in &self.config {
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || RESERVED.contains(&name.as_str())
            {
                return Err(top(
                    &format!("config.{name}"),
                    format!(
                        "option names are snake_case and not one of the runtime's own ({})",
                        RESERVED.join(", ")
                    ),
                ));
            }
            if option.secret && option.default.is_some() {
                return Err(top(
                    &format!("config.{name}.default"),
                    "a secret option cannot have a default".into(),
                ));
            }
            if let Some(d) = &option.derive {
                let from = self.config.get(&d.from);
                if from.is_none() || d.from == *name || from.is_some_and(|o| o.derive.is_some()) {
                    return Err(top(
                        &format!("config.{name}.derive.from"),
                        format!(
                            "`{}` must be another option declared in `[config]`, not itself derived",
                            d.from
                        ),
                    ));
                }
                if d.after_last.is_empty() {
                    return Err(top(
                        &format!("config.{name}.derive.after_last"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        for (name, value) in &self.headers {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(top(
                    &format!("headers.{name}"),
                    "is not a header name (letters, digits, `-`)".into(),
                ));
            }
            if matches!(
                name.to_ascii_lowercase().as_str(),
                "authorization" | "host" | "content-length" | "content-type"
            ) {
                return Err(top(
                    &format!("headers.{name}"),
                    "is set by the runtime (credentials go in `[auth]`)".into(),
                ));
            }
            config_only(&format!("headers.{name}"), value)?;
        }
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { token } => config_only("auth.token", token)?,
            Auth::Basic { username, password } => {
                config_only("auth.username", username)?;
                config_only("auth.password", password)?;
            }
            Auth::ApiKey {
                header,
                query,
                value,
            } => {
                if header.is_some() == query.is_some() {
                    return Err(top(
                        "auth",
                        "an api_key auth takes exactly one of `header` and `query`".into(),
                    ));
                }
                config_only("auth.value", value)?;
            }
            Auth::Oauth2 {
                token_url,
                grant,
                client_id,
                client_secret,
                refresh_token,
                scope,
            } => {
                config_only("auth.token_url", token_url)?;
                config_only("auth.client_id", client_id)?;
                config_only("auth.client_secret", client_secret)?;
                if let Some(scope) = scope {
                    config_only("auth.scope", scope)?;
                }
                match (grant, refresh_token) {
                    (Grant::RefreshToken, None) => {
                        return Err(top(
                            "auth.refresh_token",
                            "grant `refresh_token` needs a `refresh_token`".into(),
                        ));
                    }
                    (Grant::RefreshToken, Some(t)) => config_only("auth.refresh_token", t)?,
                    (Grant::ClientCredentials, Some(_)) => {
                        return Err(top(
                            "auth.refresh_token",
                            "grant `client_credentials` takes no refresh token".into(),
                        ));
                    }
                    (Grant::ClientCredentials, None) => {}
                }
            }
        }
        let rate = self.rate_limit.per_second();
        if self.rate_limit.requests_per_second.is_some()
            && self.rate_limit.requests_per_minute.is_some()
        {
            return Err(top(
                "rate_limit",
                "give `requests_per_second` or `requests_per_minute`, not both".into(),
            ));
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err(top("rate_limit", "the rate must be positive".into()));
        }
        for status in &self.retry.statuses {
            if !(400..600).contains(status) || matches!(status, 401 | 403) {
                return Err(top(
                    "retry.statuses",
                    format!(
                        "{status} cannot be retried: give 4xx/5xx statuses other than 401 and 403"
                    ),
                ));
            }
        }
        if let Some(p) = &self.pagination {
            check_pagination(p).map_err(|(k, m)| top(&format!("pagination.{k}"), m))?;
        }
        if self.streams.is_empty() {
            return Err(top("streams", "a spec declares at least one stream".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for stream in &self.streams {
            if !seen.insert(stream.name.as_str()) {
                return Err(top(
                    "streams",
                    format!("stream `{}` is declared twice", stream.name),
                ));
            }
            self.validate_stream(stream, &options)
                .map_err(|(key, message)| SpecError {
                    file: file.to_owned(),
                    stream: Some(stream.name.clone()),
                    key,
                    message,
                })?;
        }
        for (key, values) in &self.sandbox.values {
            let bad = |m: String| top(&format!("sandbox.values.{key}"), m);
            let (stream, field) = key
                .split_once('.')
                .ok_or_else(|| bad("name a stream and a field: `<stream>.<field>`".into()))?;
            if !seen.contains(stream) {
                return Err(bad(format!("no stream `{stream}` in this spec")));
            }
            dotted(field).map_err(bad)?;
            let key_field = self
                .streams
                .iter()
                .find(|s| s.name == stream)
                .and_then(|s| s.primary_key.clone());
            if key_field.as_deref() == Some(field) || (key_field.is_none() && field == "id") {
                return Err(bad(
                    "the primary key is generated per record; values would make records share it"
                        .into(),
                ));
            }
            if values.is_empty() {
                return Err(bad("give at least one value".into()));
            }
        }
        Ok(())
    }

    /// An export stream: a snapshot of JSON lines, with a status path that names the job.
    fn validate_export(
        &self,
        s: &StreamSpec,
        e: &Export,
        options: &[&str],
    ) -> Result<(), (String, String)> {
        let at = |k: &str, m: String| (k.to_owned(), m);
        let t = Template::parse(&e.status_path).map_err(|m| at("export.status_path", m))?;
        for name in t.vars() {
            if name == "export.id" {
                continue;
            }
            match name.strip_prefix("config.") {
                Some(option) if options.contains(&option) => {}
                Some(option) => {
                    return Err(at(
                        "export.status_path",
                        format!(
                            "`{{{{ {name} }}}}` names option `{option}`, which `[config]` does not declare"
                        ),
                    ));
                }
                None => {
                    return Err(at(
                        "export.status_path",
                        format!(
                            "`{{{{ {name} }}}}` is not a template name here; use `export.id` or `config.<option>`"
                        ),
                    ));
                }
            }
        }
        if !t.uses("export.id") {
            return Err(at(
                "export.status_path",
                "must name the job: `{{ export.id }}`".into(),
            ));
        }
        if !e.status_path.starts_with('/') {
            return Err(at("export.status_path", "must start with `/`".into()));
        }
        dotted(&e.id_path).map_err(|m| at("export.id_path", m))?;
        dotted(&e.status_field).map_err(|m| at("export.status_field", m))?;
        dotted(&e.urls).map_err(|m| at("export.urls", m))?;
        if let Some(m) = &e.message_field {
            dotted(m).map_err(|m| at("export.message_field", m))?;
        }
        for (key, list) in [
            ("export.pending", &e.pending),
            ("export.ready", &e.ready),
            ("export.failed", &e.failed),
        ] {
            if list.is_empty() {
                return Err(at(key, "give at least one status".into()));
            }
        }
        if let Some(both) = e
            .ready
            .iter()
            .find(|r| e.pending.contains(r) || e.failed.contains(r))
        {
            return Err(at(
                "export.ready",
                format!("`{both}` is also listed as pending or failed"),
            ));
        }
        if let Some(both) = e.pending.iter().find(|p| e.failed.contains(p)) {
            return Err(at(
                "export.pending",
                format!("`{both}` is also listed as failed"),
            ));
        }
        if e.poll_seconds == 0 {
            return Err(at("export.poll_seconds", "must be at least 1".into()));
        }
        if e.timeout_seconds < e.poll_seconds {
            return Err(at(
                "export.timeout_seconds",
                "must be at least `poll_seconds`".into(),
            ));
        }
        if s.records.trim() != "$" {
            return Err(at(
                "records",
                "an export's records are the lines of its files: write `records = \"$\"`".into(),
            ));
        }
        for (key, set) in [
            ("incremental", s.incremental.is_some()),
            ("pagination", s.pagination.is_some()),
            ("parent", s.parent.is_some()),
            ("deletions", s.deletions.is_some()),
            ("track", s.track.is_some()),
            ("page_size_param", s.page_size_param.is_some()),
        ] {
            if set {
                return Err(at(
                    key,
                    "an export stream is a full snapshot of the job's files: it takes no `incremental`, `pagination`, `parent`, `deletions`, `track` or `page_size_param` (`page_size` sets the records per page)".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_stream(&self, s: &StreamSpec, options: &[&str]) -> Result<(), (String, String)> {
        let at = |k: &str, m: String| (k.to_owned(), m);
        if !tributary_sdk::schema::is_column_name(&s.name) {
            return Err(at("name", "stream names are snake_case".into()));
        }
        let incremental = s.incremental.is_some();
        let uses_since = std::cell::Cell::new(false);
        let uses_parent = std::cell::Cell::new(false);
        let parent_key = s.parent.as_ref().map(|p| p.key.as_str());
        let check = |key: &str, text: &str, request: bool| -> Result<(), (String, String)> {
            let t = Template::parse(text).map_err(|m| at(key, m))?;
            t.check_with(options, request, parent_key)
                .map_err(|m| at(key, m))?;
            uses_since.set(uses_since.get() || t.uses("since"));
            uses_parent.set(uses_parent.get() || t.vars().any(|v| v.starts_with("parent.")));
            Ok(())
        };
        check("path", &s.path, false)?;
        if !s.path.starts_with('/') {
            return Err(at("path", "must start with `/`".into()));
        }
        for (k, v) in &s.query {
            check(&format!("query.{k}"), v, true)?;
        }
        if let Some(body) = &s.body {
            if s.method != Method::Post {
                return Err(at("body", "only a POST request has a body".into()));
            }
            let mut strings = Vec::new();
            collect_strings(body, "body", &mut strings);
            for (k, v) in strings {
                check(&k, &v, true)?;
            }
        }
        Selector::parse(&s.records).map_err(|m| at("records", m))?;
        if let Some(e) = &s.export {
            self.validate_export(s, e, options)?;
        }
        if let Some(size) = s.page_size
            && size == 0
        {
            return Err(at("page_size", "must be at least 1".into()));
        }
        let pagination = self.pagination_of(s);
        if let Some(p) = &s.pagination {
            check_pagination(p).map_err(|(k, m)| at(&format!("pagination.{k}"), m))?;
        }
        // An export's one request is not paged (validate_export refuses pagination keys).
        let paged = s.export.is_none();
        if paged
            && matches!(
                pagination,
                Pagination::Offset { .. } | Pagination::PageNumber { .. }
            )
            && s.page_size_param.is_none()
        {
            return Err(at(
                "page_size_param",
                "offset and page-number pagination stop at a short page, so they need the \
                 parameter that sets the page size"
                    .into(),
            ));
        }
        if let Pagination::Cursor { in_body: true, .. } = pagination
            && paged
            && s.method != Method::Post
        {
            return Err(at(
                "pagination.in_body",
                "a token in the body needs `method = \"POST\"`".into(),
            ));
        }
        if let Some(inc) = &s.incremental {
            dotted(&inc.cursor_field).map_err(|m| at("incremental.cursor_field", m))?;
            if inc.param.is_none() && !uses_since.get() {
                return Err(at(
                    "incremental.param",
                    "an incremental stream needs a filter meaning \"changed since\": set \
                     `param`, or use `{{ since }}` in `query` or `body`"
                        .into(),
                ));
            }
        } else if uses_since.get() {
            return Err(at(
                "incremental",
                "`{{ since }}` is used but the stream has no `[streams.incremental]`".into(),
            ));
        }
        let _ = incremental;
        if let Some(parent) = &s.parent {
            match self.streams.iter().find(|p| p.name == parent.stream) {
                None => {
                    return Err(at(
                        "parent.stream",
                        format!("no stream `{}` in this spec", parent.stream),
                    ));
                }
                Some(p) if p.name == s.name || p.parent.is_some() => {
                    return Err(at(
                        "parent.stream",
                        "the parent is another stream, without a parent of its own".into(),
                    ));
                }
                Some(_) => {}
            }
            dotted(&parent.key).map_err(|m| at("parent.key", m))?;
            if parent.key.contains('.') {
                return Err(at(
                    "parent.key",
                    "the key is a top-level field of the parent's records".into(),
                ));
            }
            if !uses_parent.get() {
                return Err(at(
                    "parent",
                    format!(
                        "a child stream names its parent in `path` or `query`: \
                         `{{{{ parent.{} }}}}`",
                        parent.key
                    ),
                ));
            }
            if s.deletions.is_some() {
                return Err(at(
                    "deletions",
                    "a child stream cannot have a deletions list; mark deleted records with \
                     `deleted`"
                        .into(),
                ));
            }
        }
        if let Some(d) = &s.deletions {
            if s.incremental.is_none() {
                return Err(at(
                    "deletions",
                    "a deletions list is read after each incremental window; a snapshot \
                     stream drops deleted records by itself"
                        .into(),
                ));
            }
            if s.deleted.is_none() {
                return Err(at(
                    "deleted",
                    "a stream with a deletions list says which field marks its records \
                     deleted"
                        .into(),
                ));
            }
            check("deletions.path", &d.path, false)?;
            for (k, v) in &d.query {
                check(&format!("deletions.query.{k}"), v, false)?;
            }
            Selector::parse(&d.records).map_err(|m| at("deletions.records", m))?;
            dotted(&d.deleted_at).map_err(|m| at("deletions.deleted_at", m))?;
            if let Some(p) = &d.pagination {
                check_pagination(p)
                    .map_err(|(k, m)| at(&format!("deletions.pagination.{k}"), m))?;
                if let Pagination::Cursor { in_body: true, .. } = p {
                    return Err(at(
                        "deletions.pagination.in_body",
                        "the deletions list is a GET".into(),
                    ));
                }
            }
        }
        if let Some(d) = &s.deleted {
            dotted(&d.field).map_err(|m| at("deleted.field", m))?;
            if d.field.contains('.') {
                return Err(at(
                    "deleted.field",
                    "the deletion field is a top-level field of the record".into(),
                ));
            }
        }
        if let Some(t) = &s.track {
            let event = Template::parse(&t.event).map_err(|m| at("track.event", m))?;
            for name in event.vars() {
                let path = name.strip_prefix("record.").ok_or_else(|| {
                    at(
                        "track.event",
                        format!(
                            "`{{{{ {name} }}}}` is not a template name here; use `record.<field>`"
                        ),
                    )
                })?;
                dotted(path).map_err(|m| at("track.event", m))?;
            }
            if event.render(|_| Some(String::new())).trim().is_empty() && event.vars().count() == 0
            {
                return Err(at("track.event", "names no event".into()));
            }
            if let Some(u) = &t.user_id {
                dotted(u).map_err(|m| at("track.user_id", m))?;
            }
            dotted(&t.timestamp).map_err(|m| at("track.timestamp", m))?;
            if matches!(t.timestamp_format, Some(TimeFormat::Date)) {
                return Err(at(
                    "track.timestamp_format",
                    "an event's time needs more than a date".into(),
                ));
            }
            for p in t.properties.iter().flatten() {
                if p.is_empty() || p.contains('.') {
                    return Err(at(
                        "track.properties",
                        format!("`{p}` is not a top-level field name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Option names the runtime takes for itself in every declarative source.
pub const RESERVED: &[&str] = &[
    "type",
    "spec",
    "api_base",
    "requests_per_second",
    "page_size",
];

fn check_pagination(p: &Pagination) -> Result<(), (String, String)> {
    match p {
        Pagination::Cursor {
            token_path,
            param,
            has_more_path,
            in_body,
            ..
        } => {
            dotted(token_path).map_err(|m| ("token_path".to_owned(), m))?;
            if *in_body {
                dotted(param).map_err(|m| ("param".to_owned(), m))?;
            }
            if let Some(h) = has_more_path {
                dotted(h).map_err(|m| ("has_more_path".to_owned(), m))?;
            }
            if param.trim().is_empty() {
                return Err(("param".into(), "must not be empty".into()));
            }
        }
        Pagination::NextUrl { url_path } => {
            dotted(url_path).map_err(|m| ("url_path".to_owned(), m))?;
        }
        Pagination::Offset { param } | Pagination::PageNumber { param, .. } => {
            if param.trim().is_empty() {
                return Err(("param".into(), "must not be empty".into()));
            }
        }
        Pagination::None | Pagination::LinkHeader => {}
    }
    Ok(())
}

/// Every string in a TOML value, with its dotted key.
pub fn collect_strings(value: &toml::Value, key: &str, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::String(s) => out.push((key.to_owned(), s.clone())),
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_strings(v, &format!("{key}[{i}]"), out);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                collect_strings(v, &format!("{key}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// A TOML/serde error as a [`SpecError`]: the key and the stream found from the error's
/// place in the text.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().to_owned();
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text[..at];
    // The table the error is in: the last `[...]` header before it.
    let mut table = String::new();
    let mut stream = None;
    for line in before.lines() {
        let l = line.trim();
        if l.starts_with('[') && !l.starts_with("[\"") {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            if table == "streams" {
                stream = Some(String::from("?"));
            }
            if !table.starts_with("streams") {
                stream = None;
            }
        }
        if table.starts_with("streams")
            && let Some(name) = l
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
        {
            stream = Some(name.trim().trim_matches('"').to_owned());
        }
    }
    // The key: serde's "unknown field `x`" names it; otherwise the key on the error's line.
    let key = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .map(str::to_owned)
        .or_else(|| {
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = text[line_start..].lines().next().unwrap_or_default();
            line.split_once('=').map(|(k, _)| k.trim().to_owned())
        })
        .unwrap_or_default();
    let prefix = table
        .strip_prefix("streams")
        .map(|r| r.trim_start_matches('.').to_owned())
        .unwrap_or(table.clone());
    let key = match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => prefix,
        (false, false) => format!("{prefix}.{key}"),
    };
    let line = before.matches('\n').count() + 1;
    SpecError {
        file: file.to_owned(),
        stream,
        key,
        message: format!("{message} (line {line})"),
    }
}
