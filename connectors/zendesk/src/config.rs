//! The options of a Zendesk source (`[sources.<name>]` with `type = "zendesk"`) and their
//! validation.
//!
//! [`ZendeskConfig`] is what the user writes; [`ZendeskConfig::validate`] turns it into the
//! [`Settings`] the client runs with, or an [`Error::Config`] naming the key to fix.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tributary_sdk::convert::parse_timestamp;
use tributary_sdk::endpoint;
use tributary_sdk::options::check_range;
use tributary_sdk::{Error, Result, Secret};

/// Requests per minute of the whole account by default: Zendesk's Team plan allows 200
/// (Growth and Professional 400, Enterprise 700, the High Volume API add-on 2,500).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 200;

/// Incremental export requests per minute by default: Zendesk allows 10 (30 with the High
/// Volume API add-on). They count against the account's limit too.
pub const DEFAULT_EXPORT_REQUESTS_PER_MINUTE: u32 = 10;

/// The most records an incremental export page holds, and the default.
pub const MAX_EXPORT_PAGE_SIZE: u32 = 1000;

/// The most records a cursor-paginated list page holds (`page[size]`), and the default.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The highest `requests_per_minute` / `export_requests_per_minute` accepted: far above any
/// Zendesk plan (2,500 with High Volume API), room for a proxy or the sandbox, and still a
/// bound on a typo.
pub const MAX_REQUESTS_PER_MINUTE: u32 = 1_000_000;

/// How far back the first sync starts when `start_date` is not set.
pub const DEFAULT_LOOKBACK_DAYS: i64 = 365;

/// The options of a Zendesk Support source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZendeskConfig {
    /// Your Zendesk subdomain: `acme`, `acme.zendesk.com` or `https://acme.zendesk.com`
    /// all mean the account at `https://acme.zendesk.com`.
    pub subdomain: String,

    /// Email of the Zendesk admin the API token belongs to (incremental exports need an
    /// admin). Goes with `api_token`.
    #[serde(default)]
    pub email: Option<String>,

    /// An API token (Admin Center → Apps and integrations → Zendesk API), used with
    /// `email`. Write it as `${ENV_VAR}` to keep it out of the config file.
    #[serde(default)]
    pub api_token: Option<Secret>,

    /// An OAuth access token with read scope, instead of `email` + `api_token`. Write it as
    /// `${ENV_VAR}`.
    #[serde(default)]
    pub oauth_access_token: Option<Secret>,

    /// Base URL of the API. Defaults to `https://<subdomain>.zendesk.com`; change it only
    /// to point at a proxy or the sandbox.
    #[serde(default)]
    pub api_base: Option<String>,

    /// Where the first sync of the incremental streams starts, in UTC: `2024-01-31` or
    /// `2024-01-31T08:00:00Z`. Defaults to one year before the first sync.
    #[serde(default)]
    pub start_date: Option<String>,

    /// Most requests per minute this source sends, shared by all its streams (incremental
    /// exports included), from 1 to 1000000. Default 200, Zendesk's Team plan limit; raise it to your plan's
    /// (400 Growth and Professional, 700 Enterprise, 2500 with High Volume API), lower it
    /// when other integrations use the same account.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,

    /// Most incremental export requests per minute (tickets, users, organizations, ticket
    /// events), within `requests_per_minute`, from 1 to 1000000. Default 10, Zendesk's
    /// limit; 30 with the High Volume API add-on.
    #[serde(default = "default_export_requests_per_minute")]
    pub export_requests_per_minute: u32,

    /// Records per incremental export page, from 1 to 1000.
    #[serde(default = "default_export_page_size")]
    pub export_page_size: u32,

    /// Records per list page (`page[size]`) of the other streams, from 1 to 100.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_requests_per_minute() -> u32 {
    DEFAULT_REQUESTS_PER_MINUTE
}

fn default_export_requests_per_minute() -> u32 {
    DEFAULT_EXPORT_REQUESTS_PER_MINUTE
}

fn default_export_page_size() -> u32 {
    MAX_EXPORT_PAGE_SIZE
}

fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP Basic with `<email>/token` and the API token.
    ApiToken {
        /// The admin's email.
        email: String,
        /// The API token.
        token: Secret,
    },
    /// `Authorization: Bearer <token>`.
    OAuth(Secret),
}

/// A validated configuration, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The normalised subdomain (`acme`).
    pub subdomain: String,
    /// The API base URL, without a trailing slash.
    pub api_base: String,
    /// The credentials.
    pub auth: Auth,
    /// Where the first sync starts (Unix seconds); `None` = one year before it runs.
    pub start_date: Option<i64>,
    /// The account's request rate.
    pub requests_per_minute: u32,
    /// The incremental exports' request rate.
    pub export_requests_per_minute: u32,
    /// `per_page` of incremental exports.
    pub export_page_size: u32,
    /// `page[size]` of lists.
    pub page_size: u32,
}

impl ZendeskConfig {
    /// A configuration for `subdomain` authenticated by `email` + `api_token`, every other
    /// option at its default.
    pub fn new(subdomain: impl Into<String>, email: impl Into<String>, api_token: Secret) -> Self {
        ZendeskConfig {
            subdomain: subdomain.into(),
            email: Some(email.into()),
            api_token: Some(api_token),
            oauth_access_token: None,
            api_base: None,
            start_date: None,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            export_requests_per_minute: DEFAULT_EXPORT_REQUESTS_PER_MINUTE,
            export_page_size: MAX_EXPORT_PAGE_SIZE,
            page_size: MAX_PAGE_SIZE,
        }
    }

    /// Checks every option; an error names the option to fix.
    pub fn validate(&self) -> Result<Settings> {
        let subdomain = normalize_subdomain(&self.subdomain)?;
        let auth = self.auth()?;
        let api_base = match &self.api_base {
            // https, or http to a loopback simulator: the credentials go wherever this
            // points.
            Some(base) => endpoint::base_url(
                "api_base",
                base,
                "`email` with `api_token`, or `oauth_access_token`",
            )?,
            None => format!("https://{subdomain}.zendesk.com"),
        };
        let start_date = match &self.start_date {
            None => None,
            Some(text) => Some(parse_start_date(text, Utc::now())?),
        };
        check_range(
            "requests_per_minute",
            self.requests_per_minute,
            1,
            MAX_REQUESTS_PER_MINUTE,
        )?;
        check_range(
            "export_requests_per_minute",
            self.export_requests_per_minute,
            1,
            MAX_REQUESTS_PER_MINUTE,
        )?;
        // Incremental exports take `per_page` up to 1000
        // (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/);
        // cursor-paginated lists take `page[size]` up to 100
        // (https://developer.zendesk.com/api-reference/introduction/pagination/).
        check_range(
            "export_page_size",
            self.export_page_size,
            1,
            MAX_EXPORT_PAGE_SIZE,
        )?;
        check_range("page_size", self.page_size, 1, MAX_PAGE_SIZE)?;
        Ok(Settings {
            subdomain,
            api_base,
            auth,
            start_date,
            requests_per_minute: self.requests_per_minute,
            export_requests_per_minute: self.export_requests_per_minute,
            export_page_size: self.export_page_size,
            page_size: self.page_size,
        })
    }

    fn auth(&self) -> Result<Auth> {
        let nonempty = |secret: &Option<Secret>| {
            secret
                .as_ref()
                .map(|s| Secret::new(s.expose().trim()))
                .filter(|s| !s.expose().is_empty())
        };
        let token = nonempty(&self.api_token);
        let oauth = nonempty(&self.oauth_access_token);
        let email = self
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        match (email, token, oauth) {
            (_, Some(_), Some(_)) => Err(Error::config(
                "oauth_access_token",
                "set either `email` + `api_token` or `oauth_access_token`, not both",
            )),
            (Some(_), None, Some(_)) => Err(Error::config(
                "email",
                "`email` goes with `api_token`; remove it when using `oauth_access_token`",
            )),
            (None, None, Some(token)) => Ok(Auth::OAuth(token)),
            (Some(email), Some(token), None) => {
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    // Not quoted: a misplaced `${ENV}` reference may have put a secret here.
                    return Err(Error::config(
                        "email",
                        "is not an email address (write the email of the admin the API token \
                         belongs to)",
                    ));
                }
                Ok(Auth::ApiToken {
                    email: email.to_owned(),
                    token,
                })
            }
            (None, Some(_), None) => Err(Error::config(
                "email",
                "is required with `api_token`: the email of the admin the token belongs to",
            )),
            (Some(_), None, None) => Err(Error::config(
                "api_token",
                "is required with `email` (or use `oauth_access_token` instead)",
            )),
            (None, None, None) => Err(Error::config(
                "api_token",
                "no credentials: set `email` + `api_token` (an API token) or `oauth_access_token`",
            )),
        }
    }
}

/// `acme`, `acme.zendesk.com`, `https://acme.zendesk.com/` → `acme`; anything else is an
/// error saying what is accepted.
pub fn normalize_subdomain(raw: &str) -> Result<String> {
    // The messages never quote the value: a `${ENV}` reference may have put a secret here.
    let bad = |why: &str| {
        Error::config(
            "subdomain",
            format!(
                "{why}; write the account's subdomain as `acme`, `acme.zendesk.com` or \
                 `https://acme.zendesk.com`"
            ),
        )
    };
    let mut text = raw.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    for scheme in ["https://", "http://"] {
        if let Some(rest) = text.strip_prefix(scheme) {
            text = rest.to_owned();
            break;
        }
    }
    let text = text.strip_suffix('/').unwrap_or(&text);
    if text.contains(['/', '?', '#', '@', ':']) {
        return Err(bad(
            "is not a subdomain (it has a path, port or credentials)",
        ));
    }
    let label = match text.strip_suffix(".zendesk.com") {
        Some(label) => label,
        None if text.contains('.') => return Err(bad("is not a zendesk.com address")),
        None => text,
    };
    let valid = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(bad(
            "is not a valid subdomain (letters, digits and inner hyphens only)",
        ));
    }
    Ok(label.to_owned())
}

/// Parses `start_date` (RFC 3339 or a plain date, UTC) into Unix seconds; it must not be in
/// the future.
fn parse_start_date(text: &str, now: DateTime<Utc>) -> Result<i64> {
    let micros = parse_timestamp(text).ok_or_else(|| {
        Error::config(
            "start_date",
            "is not a date: write `2024-01-31` or `2024-01-31T08:00:00Z`",
        )
    })?;
    let seconds = micros.div_euclid(1_000_000);
    if seconds > now.timestamp() {
        return Err(Error::config("start_date", "is in the future"));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZendeskConfig {
        ZendeskConfig::new("acme", "admin@acme.test", Secret::new("tok_secret"))
    }

    fn key_of(err: Error) -> String {
        match err {
            Error::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn subdomains_are_normalised() {
        for raw in [
            "acme",
            "ACME",
            " acme.zendesk.com ",
            "https://acme.zendesk.com",
            "https://acme.zendesk.com/",
            "http://Acme.Zendesk.com",
        ] {
            assert_eq!(normalize_subdomain(raw).unwrap(), "acme", "{raw}");
        }
        assert_eq!(normalize_subdomain("my-team2").unwrap(), "my-team2");
    }

    #[test]
    fn other_subdomains_are_rejected_with_what_is_accepted() {
        for raw in [
            "",
            "acme.freshdesk.com",
            "https://acme.zendesk.com/agent",
            "acme.zendesk.com:443",
            "a.b.zendesk.com",
            "-acme",
            "ac_me",
            "zendesk.com",
            "ftp://acme.zendesk.com",
            "user@acme.zendesk.com",
        ] {
            let err = normalize_subdomain(raw).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("acme.zendesk.com") && text.contains("`subdomain`"),
                "{raw}: {text}"
            );
            assert_eq!(key_of(err), "subdomain");
        }
    }

    #[test]
    fn defaults_and_derived_api_base() {
        let s = config().validate().unwrap();
        assert_eq!(s.subdomain, "acme");
        assert_eq!(s.api_base, "https://acme.zendesk.com");
        assert_eq!(s.requests_per_minute, 200);
        assert_eq!(s.export_requests_per_minute, 10);
        assert_eq!((s.export_page_size, s.page_size), (1000, 100));
        assert_eq!(s.start_date, None);
        assert!(matches!(s.auth, Auth::ApiToken { ref email, .. } if email == "admin@acme.test"));

        let mut c = config();
        c.api_base = Some("http://127.0.0.1:9000/".into());
        assert_eq!(c.validate().unwrap().api_base, "http://127.0.0.1:9000");
        for base in [
            "not a url",
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=b",
            "http://acme.zendesk.com",
        ] {
            let mut c = config();
            c.api_base = Some(base.into());
            assert_eq!(key_of(c.validate().unwrap_err()), "api_base", "{base}");
        }
    }

    #[test]
    fn credentials_are_one_of_two_kinds() {
        let mut oauth = config();
        oauth.email = None;
        oauth.api_token = None;
        oauth.oauth_access_token = Some(Secret::new("oauth_tok"));
        assert!(matches!(oauth.validate().unwrap().auth, Auth::OAuth(_)));

        let mut both = config();
        both.oauth_access_token = Some(Secret::new("oauth_tok"));
        assert_eq!(key_of(both.validate().unwrap_err()), "oauth_access_token");

        let mut no_email = config();
        no_email.email = None;
        assert_eq!(key_of(no_email.validate().unwrap_err()), "email");

        let mut no_token = config();
        no_token.api_token = Some(Secret::new("  "));
        assert_eq!(key_of(no_token.validate().unwrap_err()), "api_token");

        let mut nothing = config();
        nothing.email = None;
        nothing.api_token = None;
        let err = nothing.validate().unwrap_err();
        assert!(err.to_string().contains("oauth_access_token"), "{err}");
        assert_eq!(key_of(err), "api_token");

        let mut bad_email = config();
        bad_email.email = Some("zd-secret-token-0000".into());
        let err = bad_email.validate().unwrap_err();
        assert!(!err.to_string().contains("zd-secret"), "{err}");
        assert_eq!(key_of(err), "email");
    }

    #[test]
    fn start_date_is_a_past_date() {
        let now = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_start_date("2025-01-01", now).unwrap(), 1_735_689_600);
        assert_eq!(
            parse_start_date("2025-01-01T00:00:10Z", now).unwrap(),
            1_735_689_610
        );
        for bad in ["yesterday", "2025-13-01", "2025-07-01"] {
            assert_eq!(
                key_of(parse_start_date(bad, now).unwrap_err()),
                "start_date"
            );
        }
    }

    #[test]
    fn bounds_name_their_key() {
        type Change = fn(&mut ZendeskConfig);
        let cases: [(Change, &str); 7] = [
            (|c| c.requests_per_minute = 0, "requests_per_minute"),
            (|c| c.requests_per_minute = 1_000_001, "requests_per_minute"),
            (
                |c| c.export_requests_per_minute = 1_000_001,
                "export_requests_per_minute",
            ),
            (
                |c| c.export_requests_per_minute = 0,
                "export_requests_per_minute",
            ),
            (|c| c.export_page_size = 1001, "export_page_size"),
            (|c| c.page_size = 0, "page_size"),
            (|c| c.page_size = 101, "page_size"),
        ];
        for (change, key) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains("between 1 and "), "{err}");
            assert_eq!(key_of(err), key);
        }
    }

    #[test]
    fn unknown_keys_are_rejected_and_secrets_never_printed() {
        let err = serde_json::from_value::<ZendeskConfig>(serde_json::json!({
            "subdomain": "acme", "email": "a@b.c", "api_token": "tok_secret", "api_tokn": "x"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("api_tokn"), "{err}");
        let c: ZendeskConfig = serde_json::from_value(serde_json::json!({
            "subdomain": "acme", "email": "a@b.c", "api_token": "tok_secret"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("tok_secret"));
        assert!(!format!("{:?}", c.validate().unwrap()).contains("tok_secret"));
    }
}
