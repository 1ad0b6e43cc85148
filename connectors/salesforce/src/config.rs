//! The options of a Salesforce source (`[sources.<name>]` with `type = "salesforce"`) and
//! their validation.
//!
//! [`SalesforceConfig`] is what the user writes; [`SalesforceConfig::validate`] turns it into
//! the [`Settings`] the connector runs with, or an [`Error::Config`] naming the key to fix.
//! The OAuth flow follows from which credentials are given (see [`AuthFlow`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tributary_sdk::endpoint;
use tributary_sdk::options::check_range;
use tributary_sdk::{Error, Result, Secret};

use crate::auth::{AuthFlow, RsaKey, jwt_audience};

/// Where production orgs log in.
pub const DEFAULT_LOGIN_URL: &str = "https://login.salesforce.com";

/// The REST API version used unless `api_version` says otherwise (Bulk API 2.0 query jobs
/// need 47.0 or later).
pub const DEFAULT_API_VERSION: &str = "62.0";

/// The highest `bulk_threshold` accepted (a billion records: in effect, never Bulk).
pub const MAX_BULK_THRESHOLD: u64 = 1_000_000_000;

/// The highest `bulk_page_size` accepted.
pub const MAX_BULK_PAGE_SIZE: u32 = 1_000_000;

/// The highest `bulk_timeout_seconds` accepted: a day.
pub const MAX_BULK_TIMEOUT_SECONDS: u64 = 24 * 3600;

/// The lowest `requests_per_second` accepted.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.1;

/// The highest `requests_per_second` accepted: a bound on a typo, with room for the sandbox.
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;

/// The objects synced when `objects` is not set: Segment's core Salesforce collections.
pub const CORE_OBJECTS: [&str; 11] = [
    "Account",
    "Contact",
    "Lead",
    "Opportunity",
    "OpportunityHistory",
    "Case",
    "Campaign",
    "CampaignMember",
    "Task",
    "Event",
    "User",
];

/// The options of a Salesforce source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Where to log in: `https://login.salesforce.com` (production, the default),
    /// `https://test.salesforce.com` (sandboxes), or the org's My Domain URL
    /// (`https://acme.my.salesforce.com`, which the client-credentials flow requires).
    #[serde(default = "default_login_url")]
    pub login_url: String,

    /// The connected app's consumer key.
    pub client_id: String,

    /// The connected app's consumer secret. Needed by the client-credentials flow, and by
    /// the refresh-token flow unless the app does not require it. Write it as `${ENV_VAR}`.
    #[serde(default)]
    pub client_secret: Option<Secret>,

    /// A refresh token of the integration user. Setting it selects the OAuth 2.0
    /// refresh-token flow. Write it as `${ENV_VAR}`.
    #[serde(default)]
    pub refresh_token: Option<Secret>,

    /// The integration user's username. With `private_key_path`, selects the JWT bearer flow.
    #[serde(default)]
    pub username: Option<String>,

    /// A PEM file holding the RSA private key whose certificate is uploaded to the connected
    /// app (JWT bearer flow; assertions are signed RS256).
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,

    /// The REST API version, e.g. `"62.0"` (47.0 or later).
    #[serde(default = "default_api_version")]
    pub api_version: String,

    /// The objects to sync, by API name (custom objects end in `__c`). Each becomes one table
    /// named in snake_case (`OpportunityHistory` → `opportunity_history`). Default: Account,
    /// Contact, Lead, Opportunity, OpportunityHistory, Case, Campaign, CampaignMember, Task,
    /// Event and User (those the org lacks are skipped).
    #[serde(default)]
    pub objects: Option<Vec<String>>,

    /// Per-object field lists: `[sources.<name>.fields.Account]` with `include = [...]` (only
    /// these fields) or `exclude = [...]` (all but these). `Id`, the cursor field and
    /// `IsDeleted` are always read.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSelection>,

    /// An object with at least this many records to read (changed since the cursor) is read
    /// with a Bulk API 2.0 query job instead of REST `queryAll` pages. `0` always uses Bulk;
    /// at most 1000000000.
    #[serde(default = "default_bulk_threshold")]
    pub bulk_threshold: u64,

    /// Records per REST `queryAll` page, from 200 to 2000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,

    /// Records per Bulk API 2.0 results page (`maxRecords`), from 1 to 1000000; each page is
    /// one commit point.
    #[serde(default = "default_bulk_page_size")]
    pub bulk_page_size: u32,

    /// The first wait between polls of a Bulk job's state, in milliseconds (1 to 60000); it
    /// doubles up to 30 seconds.
    #[serde(default = "default_bulk_poll_ms")]
    pub bulk_poll_ms: u64,

    /// How long a Bulk job may take to complete, in seconds (1 to 86400); past it the job is
    /// aborted and the object is read with REST instead.
    #[serde(default = "default_bulk_timeout_seconds")]
    pub bulk_timeout_seconds: u64,

    /// Each incremental run also re-reads this many seconds (at most 604800, a week) before
    /// the committed cursor, to
    /// catch records whose transaction committed after a later one was read. Records already
    /// landed with the same modstamp are not landed again.
    #[serde(default = "default_lookback_seconds")]
    pub lookback_seconds: u64,

    /// When the org's daily API usage (`Sforce-Limit-Info`) passes this percent of its
    /// limit, no new object is started: what is done is committed and the run ends as
    /// deferred (exit code 3). From 1 to 100.
    #[serde(default = "default_api_budget_percent")]
    pub api_budget_percent: f64,

    /// Most requests per second this source sends, shared by all its objects, from 0.1 to
    /// 10000.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,

    /// Most REST queries one object's first read keeps in flight, from 1 to 128 (1 reads
    /// one page after another). A first read that stays on REST (under `bulk_threshold`,
    /// or an object Bulk cannot serve) is split by its cursor field (`SystemModstamp`, …)
    /// into time ranges queried at once, as many in flight as `requests_per_second` ×
    /// Salesforce's answer time needs, never more than this.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
}

/// The default of `max_concurrency`: the default 20 requests a second at a typical 300 ms
/// query answer need 7 in flight; 16 leaves room for slower answers. Salesforce counts a
/// request that runs 20 s or longer against the org's concurrent long-running request
/// limit (25 in production orgs,
/// https://developer.salesforce.com/docs/atlas.en-us.salesforce_app_limits_cheatsheet.meta/salesforce_app_limits_cheatsheet/salesforce_app_limits_platform_api.htm),
/// so keep it well under 25 if queries are slow.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 16;

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

/// Which fields of one object are read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FieldSelection {
    /// Only these fields (API names; a compound field such as `BillingAddress` stands for
    /// its components).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Every field but these.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn default_login_url() -> String {
    DEFAULT_LOGIN_URL.to_owned()
}
fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_owned()
}
fn default_bulk_threshold() -> u64 {
    50_000
}
fn default_page_size() -> u32 {
    2000
}
fn default_bulk_page_size() -> u32 {
    10_000
}
fn default_bulk_poll_ms() -> u64 {
    1000
}
fn default_bulk_timeout_seconds() -> u64 {
    3600
}
fn default_lookback_seconds() -> u64 {
    300
}
fn default_api_budget_percent() -> f64 {
    80.0
}
fn default_requests_per_second() -> f64 {
    20.0
}

/// One object to sync, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChoice {
    /// The API name as written.
    pub name: String,
    /// The field selection, if any.
    pub fields: FieldSelection,
}

/// A validated configuration, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The login URL, without a trailing slash.
    pub login_url: String,
    /// How to get an access token.
    pub auth: AuthFlow,
    /// `62.0`.
    pub api_version: String,
    /// The objects, in order.
    pub objects: Vec<ObjectChoice>,
    /// Whether `objects` was written (missing objects are then errors, not skipped).
    pub objects_explicit: bool,
    /// See [`SalesforceConfig::bulk_threshold`].
    pub bulk_threshold: u64,
    /// See [`SalesforceConfig::page_size`].
    pub page_size: u32,
    /// See [`SalesforceConfig::bulk_page_size`].
    pub bulk_page_size: u32,
    /// See [`SalesforceConfig::bulk_poll_ms`].
    pub bulk_poll_ms: u64,
    /// See [`SalesforceConfig::bulk_timeout_seconds`].
    pub bulk_timeout_seconds: u64,
    /// See [`SalesforceConfig::lookback_seconds`].
    pub lookback_seconds: u64,
    /// See [`SalesforceConfig::api_budget_percent`].
    pub api_budget_percent: f64,
    /// See [`SalesforceConfig::requests_per_second`].
    pub requests_per_second: f64,
    /// See [`SalesforceConfig::max_concurrency`].
    pub max_concurrency: u32,
}

impl SalesforceConfig {
    /// A configuration for the refresh-token flow with every other option at its default.
    pub fn refresh_token(client_id: &str, client_secret: Secret, refresh_token: Secret) -> Self {
        SalesforceConfig {
            login_url: default_login_url(),
            client_id: client_id.to_owned(),
            client_secret: Some(client_secret),
            refresh_token: Some(refresh_token),
            username: None,
            private_key_path: None,
            api_version: default_api_version(),
            objects: None,
            fields: BTreeMap::new(),
            bulk_threshold: default_bulk_threshold(),
            page_size: default_page_size(),
            bulk_page_size: default_bulk_page_size(),
            bulk_poll_ms: default_bulk_poll_ms(),
            bulk_timeout_seconds: default_bulk_timeout_seconds(),
            lookback_seconds: default_lookback_seconds(),
            api_budget_percent: default_api_budget_percent(),
            requests_per_second: default_requests_per_second(),
            max_concurrency: default_max_concurrency(),
        }
    }

    /// Checks every option (and reads the private key file); an error names the option.
    pub fn validate(&self) -> Result<Settings> {
        // https, or http to a loopback simulator: the token request posts the client
        // secret and refresh token there.
        let login_url = endpoint::base_url(
            "login_url",
            &self.login_url,
            "`client_id`, `client_secret` and the flow's own keys",
        )?;
        let client_id = self.client_id.trim();
        if client_id.is_empty() {
            return Err(Error::config(
                "client_id",
                "must be the connected app's consumer key",
            ));
        }
        let auth = self.auth_flow(&login_url, client_id)?;

        let api_version = self.api_version.trim().trim_start_matches('v');
        let parsed = api_version.split_once('.').and_then(|(major, minor)| {
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        });
        match parsed {
            Some((major, _)) if major >= 47 => {}
            _ => {
                return Err(Error::config(
                    "api_version",
                    format!(
                        "is not an API version of 47.0 or later, such as `{DEFAULT_API_VERSION}`"
                    ),
                ));
            }
        }

        let objects_explicit = self.objects.is_some();
        let names: Vec<String> = match &self.objects {
            Some(list) => list.iter().map(|s| s.trim().to_owned()).collect(),
            None => CORE_OBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        };
        if names.is_empty() {
            return Err(Error::config(
                "objects",
                "is empty; list at least one object, or leave it out for the core set",
            ));
        }
        let mut objects: Vec<ObjectChoice> = Vec::new();
        // Entries are named by position, not quoted: a `${ENV}` reference may hold a secret.
        for (i, name) in names.iter().enumerate() {
            if !is_api_name(name) {
                return Err(Error::config(
                    format!("objects[{i}]"),
                    "is not an object API name (letters, digits and `_`)",
                ));
            }
            if let Some(first) = objects
                .iter()
                .position(|o| o.name.eq_ignore_ascii_case(name))
            {
                return Err(Error::config(
                    format!("objects[{i}]"),
                    format!("repeats `objects[{first}]`"),
                ));
            }
            objects.push(ObjectChoice {
                name: name.clone(),
                fields: FieldSelection::default(),
            });
        }
        for (object, selection) in &self.fields {
            let key = format!("fields.{object}");
            let Some(choice) = objects
                .iter_mut()
                .find(|o| o.name.eq_ignore_ascii_case(object))
            else {
                return Err(Error::config(
                    key,
                    "names an object that is not among the synced ones (see `objects`)",
                ));
            };
            if selection.include.is_some() && !selection.exclude.is_empty() {
                return Err(Error::config(key, "set `include` or `exclude`, not both"));
            }
            if selection.include.as_ref().is_some_and(Vec::is_empty) {
                return Err(Error::config(
                    format!("{key}.include"),
                    "is empty; list the fields to read, or remove it to read them all",
                ));
            }
            choice.fields = selection.clone();
        }

        check_range("bulk_threshold", self.bulk_threshold, 0, MAX_BULK_THRESHOLD)?;
        // The REST query batch size (`Sforce-Query-Options: batchSize`) is 200 to 2000
        // (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_queryoptions.htm).
        check_range("page_size", self.page_size, 200, 2000)?;
        // Bulk API 2.0 documents no maximum for `maxRecords`; a page is one commit point, so
        // a bound keeps a commit's worth of work (and a typo) in check.
        check_range("bulk_page_size", self.bulk_page_size, 1, MAX_BULK_PAGE_SIZE)?;
        check_range("bulk_poll_ms", self.bulk_poll_ms, 1, 60_000)?;
        check_range(
            "bulk_timeout_seconds",
            self.bulk_timeout_seconds,
            1,
            MAX_BULK_TIMEOUT_SECONDS,
        )?;
        check_range("lookback_seconds", self.lookback_seconds, 0, 7 * 24 * 3600)?;
        let pct = check_range("api_budget_percent", self.api_budget_percent, 1.0, 100.0)?;
        check_range("max_concurrency", self.max_concurrency, 1, 128)?;
        let rps = check_range(
            "requests_per_second",
            self.requests_per_second,
            MIN_REQUESTS_PER_SECOND,
            MAX_REQUESTS_PER_SECOND,
        )?;
        Ok(Settings {
            login_url,
            auth,
            api_version: api_version.to_owned(),
            objects,
            objects_explicit,
            bulk_threshold: self.bulk_threshold,
            page_size: self.page_size,
            bulk_page_size: self.bulk_page_size,
            bulk_poll_ms: self.bulk_poll_ms,
            bulk_timeout_seconds: self.bulk_timeout_seconds,
            lookback_seconds: self.lookback_seconds,
            api_budget_percent: pct,
            requests_per_second: rps,
            max_concurrency: self.max_concurrency,
        })
    }

    /// The OAuth flow the given credentials select, or why they do not select one.
    fn auth_flow(&self, login_url: &str, client_id: &str) -> Result<AuthFlow> {
        let secret = self
            .client_secret
            .as_ref()
            .filter(|s| !s.expose().trim().is_empty())
            .map(|s| Secret::new(s.expose().trim()));
        let username = self
            .username
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let refresh = self
            .refresh_token
            .as_ref()
            .filter(|s| !s.expose().trim().is_empty());
        match (refresh, &self.private_key_path) {
            (Some(_), Some(_)) => Err(Error::config(
                "refresh_token",
                "and `private_key_path` are both set; keep `refresh_token` (refresh-token flow) \
                 or `username` + `private_key_path` (JWT bearer flow)",
            )),
            (Some(token), None) => {
                if username.is_some() {
                    return Err(Error::config(
                        "username",
                        "is only used by the JWT bearer flow (with `private_key_path`); remove it \
                         or remove `refresh_token`",
                    ));
                }
                Ok(AuthFlow::RefreshToken {
                    client_id: client_id.to_owned(),
                    client_secret: secret,
                    refresh_token: Secret::new(token.expose().trim()),
                })
            }
            (None, Some(path)) => {
                let Some(username) = username else {
                    return Err(Error::config(
                        "username",
                        "is required by the JWT bearer flow (`private_key_path` is set)",
                    ));
                };
                if secret.is_some() {
                    return Err(Error::config(
                        "client_secret",
                        "is not used by the JWT bearer flow (`private_key_path` is set); remove it",
                    ));
                }
                let pem = std::fs::read(path).map_err(|e| {
                    Error::config("private_key_path", format!("cannot read the file: {e}"))
                })?;
                let key = RsaKey::from_pem(&pem).map_err(|e| {
                    Error::config(
                        "private_key_path",
                        format!("the file is not an RSA private key in PEM format: {e}"),
                    )
                })?;
                Ok(AuthFlow::JwtBearer {
                    client_id: client_id.to_owned(),
                    username: username.to_owned(),
                    key,
                    audience: jwt_audience(login_url),
                })
            }
            (None, None) => {
                if username.is_some() {
                    return Err(Error::config(
                        "private_key_path",
                        "is required by the JWT bearer flow (`username` is set)",
                    ));
                }
                let Some(secret) = secret else {
                    return Err(Error::config(
                        "client_secret",
                        "no credentials: set `refresh_token` (refresh-token flow), `username` and \
                         `private_key_path` (JWT bearer flow), or `client_secret` alone \
                         (client-credentials flow)",
                    ));
                };
                let host = url::Url::parse(login_url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                if host == "login.salesforce.com" || host == "test.salesforce.com" {
                    return Err(Error::config(
                        "login_url",
                        "the client-credentials flow needs the org's My Domain URL \
                         (https://<domain>.my.salesforce.com), not the generic login host",
                    ));
                }
                Ok(AuthFlow::ClientCredentials {
                    client_id: client_id.to_owned(),
                    client_secret: secret,
                })
            }
        }
    }
}

/// Whether `name` can be a Salesforce API name.
pub fn is_api_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh() -> SalesforceConfig {
        SalesforceConfig::refresh_token(
            "client",
            Secret::new("shh-secret"),
            Secret::new("rt-secret"),
        )
    }

    fn key_of(err: Error) -> String {
        match err {
            Error::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    fn from_json(value: serde_json::Value) -> SalesforceConfig {
        serde_json::from_value(value).unwrap()
    }

    fn key_path() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/test-only-jwt-private-key.pem"
        )
        .to_owned()
    }

    #[test]
    fn defaults_and_the_refresh_token_flow() {
        let s = refresh().validate().unwrap();
        assert!(matches!(s.auth, AuthFlow::RefreshToken { .. }));
        assert_eq!(s.login_url, DEFAULT_LOGIN_URL);
        assert_eq!(s.api_version, DEFAULT_API_VERSION);
        assert_eq!(s.objects.len(), 11);
        assert!(!s.objects_explicit);
        assert_eq!(s.api_budget_percent, 80.0);
        assert_eq!(s.lookback_seconds, 300);
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("shh-secret") && !printed.contains("rt-secret"),
            "{printed}"
        );
    }

    #[test]
    fn the_credentials_choose_the_flow() {
        let jwt = from_json(serde_json::json!({
            "client_id": "c", "username": "u@example.com", "private_key_path": key_path(),
            "login_url": "https://test.salesforce.com/",
        }))
        .validate()
        .unwrap();
        match &jwt.auth {
            AuthFlow::JwtBearer {
                audience, username, ..
            } => {
                assert_eq!(audience, "https://test.salesforce.com");
                assert_eq!(username, "u@example.com");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{jwt:?}").contains("PRIVATE"), "{jwt:?}");

        let cc = from_json(serde_json::json!({
            "client_id": "c", "client_secret": "s", "login_url": "https://acme.my.salesforce.com",
        }))
        .validate()
        .unwrap();
        assert!(matches!(cc.auth, AuthFlow::ClientCredentials { .. }));
    }

    #[test]
    fn contradictory_or_missing_credentials_name_the_key() {
        let cases = [
            (serde_json::json!({"client_id": "c"}), "client_secret"),
            (
                serde_json::json!({"client_id": "c", "client_secret": "s"}),
                "login_url",
            ),
            (
                serde_json::json!({"client_id": "c", "username": "u"}),
                "private_key_path",
            ),
            (
                serde_json::json!({"client_id": "c", "private_key_path": key_path()}),
                "username",
            ),
            (
                serde_json::json!({"client_id": "c", "refresh_token": "r", "private_key_path": key_path(), "username": "u"}),
                "refresh_token",
            ),
            (
                serde_json::json!({"client_id": "c", "refresh_token": "r", "username": "u"}),
                "username",
            ),
            (
                serde_json::json!({"client_id": "c", "username": "u", "private_key_path": "/nonexistent/key.pem"}),
                "private_key_path",
            ),
            (
                serde_json::json!({"client_id": "c", "username": "u", "private_key_path": concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")}),
                "private_key_path",
            ),
            (
                serde_json::json!({"client_id": " ", "refresh_token": "r"}),
                "client_id",
            ),
        ];
        for (json, key) in cases {
            let err = from_json(json.clone()).validate().unwrap_err();
            assert_eq!(key_of(err), key, "{json}");
        }
    }

    #[test]
    fn objects_and_field_lists_are_checked() {
        let mut c = refresh();
        c.objects = Some(vec!["Account".into(), "Invoice__c".into()]);
        c.fields.insert(
            "account".into(),
            FieldSelection {
                include: Some(vec!["Name".into()]),
                exclude: vec![],
            },
        );
        let s = c.validate().unwrap();
        assert!(s.objects_explicit);
        assert_eq!(s.objects[0].fields.include, Some(vec!["Name".to_owned()]));

        let mut c = refresh();
        c.objects = Some(vec!["Account".into(), "ACCOUNT".into()]);
        assert_eq!(key_of(c.validate().unwrap_err()), "objects[1]");
        let mut c = refresh();
        c.objects = Some(vec!["Account; DROP".into()]);
        let err = c.validate().unwrap_err();
        assert!(!err.to_string().contains("DROP"), "{err}");
        assert_eq!(key_of(err), "objects[0]");
        let mut c = refresh();
        c.fields
            .insert("Invoice__c".into(), FieldSelection::default());
        assert_eq!(key_of(c.validate().unwrap_err()), "fields.Invoice__c");
        let mut c = refresh();
        c.fields.insert(
            "Account".into(),
            FieldSelection {
                include: Some(vec!["Name".into()]),
                exclude: vec!["Phone".into()],
            },
        );
        assert_eq!(key_of(c.validate().unwrap_err()), "fields.Account");
    }

    #[test]
    fn numbers_are_bounded() {
        type Change = fn(&mut SalesforceConfig);
        let cases: [(Change, &str, &str); 15] = [
            (|c| c.page_size = 100, "page_size", "between 200 and 2000"),
            (|c| c.page_size = 2001, "page_size", "between 200 and 2000"),
            (|c| c.bulk_page_size = 0, "bulk_page_size", "between 1 and"),
            (
                |c| c.bulk_threshold = u64::MAX,
                "bulk_threshold",
                "between 0 and",
            ),
            (
                |c| c.bulk_poll_ms = 0,
                "bulk_poll_ms",
                "between 1 and 60000",
            ),
            (
                |c| c.bulk_timeout_seconds = 0,
                "bulk_timeout_seconds",
                "between 1 and",
            ),
            (
                |c| c.bulk_timeout_seconds = 90_000,
                "bulk_timeout_seconds",
                "between 1 and",
            ),
            (
                |c| c.lookback_seconds = 700_000,
                "lookback_seconds",
                "between 0 and 604800",
            ),
            (
                |c| c.api_budget_percent = 120.0,
                "api_budget_percent",
                "between 1 and 100",
            ),
            (
                |c| c.max_concurrency = 0,
                "max_concurrency",
                "between 1 and 128",
            ),
            (
                |c| c.api_budget_percent = 0.5,
                "api_budget_percent",
                "between 1 and 100",
            ),
            (
                |c| c.api_budget_percent = f64::NAN,
                "api_budget_percent",
                "between 1 and 100",
            ),
            (
                |c| c.requests_per_second = 0.0,
                "requests_per_second",
                "between 0.1 and 10000",
            ),
            (
                |c| c.requests_per_second = 20_000.0,
                "requests_per_second",
                "between 0.1 and 10000",
            ),
            (
                |c| c.requests_per_second = f64::INFINITY,
                "requests_per_second",
                "between",
            ),
        ];
        for (change, key, range) in cases {
            let mut c = refresh();
            change(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(range), "{key}: {err}");
            assert_eq!(key_of(err), key);
        }
        let mut c = refresh();
        c.api_version = "46.0".into();
        assert_eq!(key_of(c.validate().unwrap_err()), "api_version");
        let mut c = refresh();
        c.requests_per_second = 0.0;
        assert_eq!(key_of(c.validate().unwrap_err()), "requests_per_second");
        let mut c = refresh();
        c.login_url = "ftp://login.salesforce.com".into();
        assert_eq!(key_of(c.validate().unwrap_err()), "login_url");
        // The token request would post the client secret in clear.
        c.login_url = "http://login.salesforce.com".into();
        assert_eq!(key_of(c.validate().unwrap_err()), "login_url");
        c.login_url = "http://127.0.0.1:4000".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected_and_secrets_never_printed() {
        let err = serde_json::from_value::<SalesforceConfig>(
            serde_json::json!({"client_id": "c", "refresh_token": "rt-secret", "bulk_treshold": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bulk_treshold"), "{err}");
        let c = from_json(serde_json::json!({
            "client_id": "c", "client_secret": "cs-secret", "refresh_token": "rt-secret"
        }));
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("cs-secret") && !printed.contains("rt-secret"),
            "{printed}"
        );
    }
}
