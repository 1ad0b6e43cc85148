//! Zendesk's HTTP API as the streams use it: authenticated GETs through the SDK's
//! rate-limited, retrying client, with every body checked for completeness before use.
//!
//! Two limits apply, as at Zendesk: every request counts against the account's requests
//! per minute, and incremental export requests also against the stricter export limit
//! (10 a minute, 30 with the High Volume API add-on). So there are two limiters, the
//! export one nested in the account one ([`HttpClient::shared_within`]); both are shared
//! by every source configured for the same account (keyed by its API base, which names the
//! account, never by a credential). Each watches the headers Zendesk documents for its
//! limit and pauses before that quota reaches zero (see [`ZendeskClient::new`]).
//!
//! A 403 is not always a credentials problem: Zendesk answers 403 to an endpoint the
//! account's plan does not include (ticket forms below Suite Growth, for one). A read whose
//! first request is refused that way becomes [`Error::Unavailable`] once `users/me` shows
//! the credentials are an admin's (see [`ZendeskClient::forbidden`]).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tributary_sdk::clock::ServerClock;
use tributary_sdk::http::{HttpClient, HttpConfig, QuotaHeaders};
use tributary_sdk::pagination::{Envelope, malformed_page};
use tributary_sdk::{Error, Result};

use crate::config::{Auth, Settings};

/// The vendor name in errors and logs.
pub const VENDOR: &str = "Zendesk";

/// The headers that report the incremental exports' own quota, as
/// `total=N; remaining=N; resets=N` (see [`ZendeskClient::new`]).
pub const EXPORT_QUOTA_HEADERS: [&str; 2] = [
    "zendesk-ratelimit-incremental-exports-cursor",
    "zendesk-ratelimit-incremental-exports",
];

/// Which limit a request counts against besides the account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Only the account's requests per minute.
    Api,
    /// Also the incremental exports' requests per minute.
    Export,
}

/// One response body of a list or export endpoint, checked complete.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The response body, untouched.
    pub body: Bytes,
    /// What a scan of the body found: record count and the envelope's scalars.
    pub envelope: Envelope,
    /// Zendesk's clock when it answered (`Date` header).
    pub date: Option<DateTime<Utc>>,
}

impl Listing {
    /// The records array at `key`, parsed.
    pub fn records(&self, key: &str) -> Result<Vec<Value>> {
        let mut root: serde_json::Map<String, Value> = serde_json::from_slice(&self.body)
            .map_err(|e| Error::decode(format!("Zendesk `{key}` response"), e))?;
        match root.remove(key) {
            Some(Value::Array(records)) => Ok(records),
            _ => Err(Error::decode(
                format!("Zendesk `{key}` response"),
                format!("no `{key}` array"),
            )),
        }
    }
}

/// An authenticated Zendesk API client.
#[derive(Debug)]
pub struct ZendeskClient {
    api: HttpClient,
    export: HttpClient,
    api_base: String,
    auth: Auth,
    /// Zendesk's clock (the `Date` of its answers), for the export start times that must
    /// be at least a minute in its past.
    clock: ServerClock,
}

impl ZendeskClient {
    /// A client for the validated settings. Makes no request.
    ///
    /// The account's limiter reads `X-Rate-Limit-Remaining` and `ratelimit-remaining` /
    /// `ratelimit-reset`, which Zendesk documents as the *account-wide* limit ("For each
    /// Ticketing API call you make, Zendesk includes the above account-wide rate limit
    /// information in the response headers":
    /// https://developer.zendesk.com/documentation/api-basics/best-practices/best-practices-for-avoiding-rate-limiting,
    /// https://developer.zendesk.com/api-reference/introduction/rate-limits/).
    ///
    /// The export limiter therefore must not read them: they say nothing about the
    /// exports' own allowance. It reads the exports' header instead,
    /// `Zendesk-RateLimit-incremental-exports-cursor: total=N; remaining=N; resets=N`,
    /// documented on the cursor-based user export
    /// (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-user-export-cursor-based)
    /// and read on every export answer, since the ticket export shares the mechanism,
    /// and `Zendesk-RateLimit-incremental-exports` in the same format, which live accounts
    /// are reported to send though the reference does not show it. Zendesk documents no
    /// export header on the time-based exports (organizations, ticket events): there the
    /// export limiter paces on `export_requests_per_minute` alone, and a 429 is waited out
    /// for its `Retry-After`, as the reference recommends ("We recommend using the
    /// Retry-After header value":
    /// https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#rate-limits).
    pub fn new(settings: &Settings) -> Result<Self> {
        let account = account_key(&settings.api_base);
        let api_config = HttpConfig {
            quota: Some(QuotaHeaders {
                remaining: vec![
                    "x-rate-limit-remaining".into(),
                    "ratelimit-remaining".into(),
                ],
                reset: vec!["ratelimit-reset".into()],
                // Stop with two left, so the account's other integrations (and a request
                // of ours already on its way) still get through.
                low_water: 2,
                structured: Vec::new(),
            }),
            ..HttpConfig::per_minute(VENDOR, f64::from(settings.requests_per_minute))
        };
        let api = HttpClient::shared(&account, api_config)?;
        let export_config = HttpConfig {
            quota: Some(QuotaHeaders {
                structured: EXPORT_QUOTA_HEADERS
                    .iter()
                    .map(|h| (*h).to_owned())
                    .collect(),
                // Exports also count against the account-wide limit: a spent account
                // quota pauses the exports too.
                remaining: vec![
                    "x-rate-limit-remaining".into(),
                    "ratelimit-remaining".into(),
                ],
                reset: vec!["ratelimit-reset".into()],
                // Stop with one left: the export allowance is the account's, shared with
                // its other integrations.
                low_water: 1,
            }),
            ..HttpConfig::per_minute(VENDOR, f64::from(settings.export_requests_per_minute))
        };
        let export = HttpClient::shared_within(&api, &format!("{account}:export"), export_config)
            .map_err(|e| match e {
            Error::Config { message, .. } => Error::config("export_requests_per_minute", message),
            other => other,
        })?;
        Ok(ZendeskClient {
            api,
            export,
            api_base: settings.api_base.clone(),
            auth: settings.auth.clone(),
            clock: ServerClock::new(),
        })
    }

    /// GETs `path` (e.g. `/api/v2/groups.json`) with `query`, for `stream` (named in
    /// errors). A body that is not one complete JSON object (cut short, garbled) is retried
    /// like a transport failure; a complete one without a `records_key` array fails at once
    /// with [`Error::Protocol`] (every list, export and `show_many` answer documents its
    /// records as an array, e.g. "tickets: array" in
    /// https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/),
    /// rather than being taken for an empty page. A 401/403 is [`Error::Auth`] with
    /// Zendesk's message; a stream's read turns a 403 on its first request into
    /// [`Error::Unavailable`] through [`ZendeskClient::forbidden`].
    pub async fn get(
        &self,
        stream: &str,
        limit: Limit,
        path: &str,
        query: &[(&str, String)],
        records_key: &str,
    ) -> Result<Listing> {
        let url = format!("{}{path}", self.api_base);
        let what = format!("GET {path}");
        let http = match limit {
            Limit::Api => &self.api,
            Limit::Export => &self.export,
        };
        let listing = http
            .list(&what, records_key, "id", None, |c| {
                self.authorize(c.get(&url).query(query))
            })
            .await?;
        let (response, envelope) = (listing.response, listing.envelope);
        self.clock.observe(response.date);
        envelope
            .require_records_array(records_key)
            .map_err(|problem| malformed_page(VENDOR, stream, &what, &problem))?;
        Ok(Listing {
            body: response.body,
            envelope,
            date: response.date,
        })
    }

    /// The signed-in user (`/api/v2/users/me.json`): one cheap call that proves the
    /// credentials. Zendesk answers a request it cannot attribute to anyone with an
    /// anonymous user (no id) rather than a 401, and the incremental exports need an admin,
    /// so both are credential errors here. So is a 403 here (kept as the SDK's
    /// [`Error::Auth`]): every plan has this endpoint, so a refusal is about who is asking
    /// (an OAuth token without the `read` scope, a suspended user), never about the plan.
    pub async fn me(&self) -> Result<Value> {
        let url = format!("{}/api/v2/users/me.json", self.api_base);
        let response = self
            .api
            .send("GET /api/v2/users/me.json", |c| self.authorize(c.get(&url)))
            .await?;
        self.clock.observe(response.date);
        let body: Value = response.json()?;
        let user = body.get("user").cloned().unwrap_or(Value::Null);
        if user.get("id").is_none_or(Value::is_null) {
            return Err(Error::Auth {
                vendor: VENDOR.to_owned(),
                status: response.status,
                message: "Zendesk did not recognise the credentials (anonymous user)".to_owned(),
            });
        }
        let role = user.get("role").and_then(Value::as_str).unwrap_or("?");
        if role != "admin" {
            return Err(Error::Auth {
                vendor: VENDOR.to_owned(),
                status: response.status,
                message: format!(
                    "the credentials belong to a user with role `{role}`; the incremental exports need an admin"
                ),
            });
        }
        Ok(user)
    }

    /// What a 403 to the first request of `stream`'s read (GET `path`) means, with
    /// Zendesk's own `message`.
    ///
    /// Zendesk answers 403 both to credentials that may not do something (an agent's, a
    /// token without the scope) and to an endpoint the account's plan does not include:
    /// "A 403 response means Zendesk authenticated the request, but the authenticated
    /// identity lacks permission" (https://support.zendesk.com/hc/en-us/articles/10306782115610),
    /// and its "You do not have access to this page" appears when "accessing a feature
    /// that isn't available on your current plan level"
    /// (https://support.zendesk.com/hc/en-us/articles/4408820790426). The status alone
    /// cannot tell them apart, so the credentials are asked about once more: when
    /// `users/me` refuses them or they are not an admin's, that error is returned (a
    /// credentials problem, which fails the stream); when they are an admin's, the
    /// endpoint is not on the account's plan: [`Error::Unavailable`], which skips the
    /// stream with a warning while the others sync.
    pub async fn forbidden(&self, stream: &str, path: &str, message: &str) -> Error {
        if let Err(credentials) = self.me().await {
            return credentials;
        }
        let hint = crate::streams::plan_note(stream)
            .map(|note| format!("; {note}"))
            .unwrap_or_default();
        Error::Unavailable {
            message: format!(
                "{message} (Zendesk answered HTTP 403 to an admin's GET {path}{hint})"
            ),
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::ApiToken { email, token } => {
                request.basic_auth(format!("{email}/token"), Some(token.expose()))
            }
            Auth::OAuth(token) => request.bearer_auth(token.expose()),
        }
    }

    /// Zendesk's clock as of the latest response (the local clock before any).
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }
}

/// The key under which all sources of one Zendesk account share their limiters: the
/// account's API base (which names the account, and holds no credential).
pub fn account_key(api_base: &str) -> String {
    format!("zendesk:{api_base}")
}

/// Whether `err` is Zendesk refusing a pagination cursor (400/404/422), so the read can
/// start over instead of failing for good.
pub fn is_bad_cursor(err: &Error) -> bool {
    matches!(err, Error::Http { status: 400 | 404 | 422, message, .. }
        if message.contains("Pagination") || message.contains("cursor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cursors_are_recognised() {
        let err = Error::Http {
            method: "GET".into(),
            url: "https://acme.zendesk.com/api/v2/groups.json".into(),
            status: 400,
            message: "InvalidPaginationParameter: invalid cursor".into(),
        };
        assert!(is_bad_cursor(&err));
        let other = Error::Http {
            method: "GET".into(),
            url: "https://acme.zendesk.com/api/v2/groups.json".into(),
            status: 400,
            message: "InvalidValue: Too recent start_time".into(),
        };
        assert!(!is_bad_cursor(&other));
    }

    #[test]
    fn account_keys_hold_no_credential() {
        assert_eq!(
            account_key("https://acme.zendesk.com"),
            "zendesk:https://acme.zendesk.com"
        );
    }
}
