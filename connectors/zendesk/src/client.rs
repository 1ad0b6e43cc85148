//! Zendesk's HTTP API as the streams use it: authenticated GETs through the SDK's
//! rate-limited, retrying client, with every body checked for completeness before use.
//!
//! Two limits apply, as at Zendesk: every request counts against the account's requests
//! per minute, and incremental export requests also against the stricter export limit
//! (10 a minute). So there are two limiters, the export one nested in the account one
//! ([`HttpClient::shared_within`]); both are shared by every source configured for the same
//! account (keyed by its API base, which names the account, never by a credential). Both
//! watch Zendesk's remaining-quota headers and pause before the quota reaches zero.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tributary_sdk::http::{HttpClient, HttpConfig, QuotaHeaders, Response};
use tributary_sdk::pagination::{Envelope, malformed_page, scan_envelope};
use tributary_sdk::{Error, Result};

use crate::config::{Auth, Settings};

/// The vendor name in errors and logs.
pub const VENDOR: &str = "Zendesk";

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
    /// The `Date` of the latest response: Zendesk's clock, for the export start times that
    /// must be at least a minute in its past.
    server_date: Mutex<Option<DateTime<Utc>>>,
}

impl ZendeskClient {
    /// A client for the validated settings. Makes no request.
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
            }),
            ..HttpConfig::per_minute(VENDOR, f64::from(settings.requests_per_minute))
        };
        let api = HttpClient::shared(&account, api_config)?;
        let export_config = HttpConfig {
            quota: Some(QuotaHeaders {
                remaining: vec!["ratelimit-remaining".into()],
                reset: vec!["ratelimit-reset".into()],
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
            server_date: Mutex::new(None),
        })
    }

    /// GETs `path` (e.g. `/api/v2/groups.json`) with `query`, for `stream` (named in
    /// errors). A body that is not one complete JSON object (cut short, garbled) is retried
    /// like a transport failure; a complete one without a `records_key` array fails at once
    /// with [`Error::Protocol`] (every list, export and `show_many` answer documents its
    /// records as an array, e.g. "tickets: array" in
    /// https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/),
    /// rather than being taken for an empty page. A 401/403 is [`Error::Auth`] with
    /// Zendesk's message.
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
        let scanned: Mutex<Option<Envelope>> = Mutex::new(None);
        let http = match limit {
            Limit::Api => &self.api,
            Limit::Export => &self.export,
        };
        let response = http
            .send_checked(
                &what,
                |c| self.authorize(c.get(&url).query(query)),
                |r: &Response| {
                    let envelope = scan_envelope(&r.body, records_key, "id")?;
                    *scanned.lock().unwrap_or_else(PoisonError::into_inner) = Some(envelope);
                    Ok(())
                },
            )
            .await?;
        self.observe_date(response.date);
        let envelope = scanned
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| Error::decode(format!("{what} response"), "the body was not scanned"))?;
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
    /// so both are credential errors here.
    pub async fn me(&self) -> Result<Value> {
        let url = format!("{}/api/v2/users/me.json", self.api_base);
        let response = self
            .api
            .send("GET /api/v2/users/me.json", |c| self.authorize(c.get(&url)))
            .await?;
        self.observe_date(response.date);
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

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::ApiToken { email, token } => {
                request.basic_auth(format!("{email}/token"), Some(token.expose()))
            }
            Auth::OAuth(token) => request.bearer_auth(token.expose()),
        }
    }

    /// Zendesk's clock as of the latest response, or the local clock before any.
    pub fn server_now(&self) -> DateTime<Utc> {
        self.server_date
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Utc::now)
    }

    fn observe_date(&self, date: Option<DateTime<Utc>>) {
        if let Some(date) = date {
            let mut latest = self
                .server_date
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if latest.is_none_or(|latest| latest < date) {
                *latest = Some(date);
            }
        }
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
