//! Stripe's HTTP API as the streams use it: authenticated, versioned GETs of list
//! endpoints through the SDK's rate-limited, retrying client, with every list body checked
//! for completeness before it is used.
//!
//! All sources configured with one API key share one limiter (the client is built with
//! [`HttpClient::shared`] under a hash of the key), so their streams together stay within
//! the account's rate. Each endpoint ([`endpoint`]) has a limiter of its own inside it
//! ([`HttpClient::shared_within`]): Stripe limits every endpoint to 25 requests a second
//! by default, counted against the account's 100 too (https://docs.stripe.com/rate-limits).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tributary_sdk::clock::ServerClock;
use tributary_sdk::http::{HeaderMap, HttpClient, HttpConfig, Response, Throttle};
use tributary_sdk::pagination::{Envelope, malformed_page};
use tributary_sdk::{Error, Result, Secret};

use crate::config::Settings;

/// The vendor name in errors and logs.
pub const VENDOR: &str = "Stripe";

/// One page of a Stripe list endpoint, checked complete.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The response body: the same JSON, without its insignificant whitespace.
    pub body: Bytes,
    /// What a scan of the body found: record count, first and last ids and `created`,
    /// `has_more`.
    pub envelope: Envelope,
    /// Stripe's clock when it answered (`Date` header).
    pub date: Option<DateTime<Utc>>,
}

impl Listing {
    /// The `created` of the page's first object (`None`: no objects, or no integer
    /// `created`), from the scan: no second parse of the page.
    pub fn first_created(&self) -> Option<i64> {
        created(self.envelope.first_mark.as_deref())
    }

    /// The `created` of the page's last object.
    pub fn last_created(&self) -> Option<i64> {
        created(self.envelope.last_mark.as_deref())
    }

    /// Whether Stripe says it has more objects past this page (checked to be a boolean by
    /// [`StripeClient::list`]). A walk must still check that it moves: see
    /// [`tributary_sdk::pagination::ProgressGuard`].
    pub fn has_more(&self) -> bool {
        self.envelope.flag("has_more")
    }
}

/// Which of Stripe's limits a 429 exceeded, from its `Stripe-Rate-Limited-Reason`:
/// "Requests that are rate limited return the Stripe-Rate-Limited-Reason header with values
/// that indicate which rate limit the request exceeded", and "If a request returns a 429
/// status code without these headers, it wasn't the result of a rate limiter (for example,
/// it may be a lock timeout)" (https://docs.stripe.com/rate-limits, "Rate limited
/// requests"). Stripe sends no `Retry-After`, so the client backs off on its own and pauses
/// the rate limit the 429 names: the account's (`global-rate`) holds every endpoint, an
/// endpoint's (`endpoint-rate`) holds that endpoint. A concurrency limit
/// (`global-concurrency`, `endpoint-concurrency`) pauses nothing: the answers in flight
/// free it, so the request backs off and the reader keeps fewer in flight. A
/// `resource-specific` limit (e.g. updates of one PaymentIntent) or a lock holds only the
/// request; a reason Stripe adds later is taken as the account's, an empty one as none.
pub fn throttle_scope(headers: &HeaderMap) -> Throttle {
    match headers
        .get("stripe-rate-limited-reason")
        .map(|reason| reason.to_str().unwrap_or_default().trim())
    {
        // No reason, or one that says nothing (empty, not text): not a limit to pace.
        None | Some("" | "resource-specific") => Throttle::Request,
        Some("endpoint-rate") => Throttle::Own,
        Some("global-concurrency" | "endpoint-concurrency") => Throttle::Concurrency,
        Some(_) => Throttle::Account,
    }
}

/// An authenticated Stripe API client.
#[derive(Debug)]
pub struct StripeClient {
    http: HttpClient,
    /// The account's limiter key, and each endpoint's client by [`endpoint`].
    account: String,
    per_endpoint: f64,
    endpoints: std::sync::Mutex<std::collections::HashMap<String, HttpClient>>,
    api_base: String,
    api_key: Secret,
    stripe_version: String,
    /// Stripe's clock (the `Date` of its answers), for retention decisions that must not
    /// depend on the local clock.
    clock: ServerClock,
}

/// A `created` as the scan found it (raw JSON text): Unix seconds, an integer.
fn created(raw: Option<&str>) -> Option<i64> {
    raw?.parse().ok()
}

impl StripeClient {
    /// A client for the validated settings. Makes no request.
    pub fn new(settings: &Settings) -> Result<Self> {
        let config = HttpConfig {
            throttle_scope: Some(throttle_scope),
            ..HttpConfig::new(VENDOR, settings.requests_per_second)
        };
        let account = account_key(&settings.api_key);
        let http = HttpClient::shared(&account, config)?;
        Ok(StripeClient {
            http,
            account,
            per_endpoint: settings.requests_per_second_per_endpoint,
            endpoints: std::sync::Mutex::default(),
            api_base: settings.api_base.clone(),
            api_key: settings.api_key.clone(),
            stripe_version: settings.stripe_version.clone(),
            clock: ServerClock::new(),
        })
    }

    /// The HTTP client of `GET path`'s endpoint (its limiter inside the account's, its 429
    /// count and answer time), for a reader that keeps several requests in flight.
    pub fn http_for(&self, path: &str) -> Result<HttpClient> {
        let endpoint = endpoint("GET", path);
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = endpoints.get(&endpoint) {
            return Ok(client.clone());
        }
        let client = HttpClient::shared_within(
            &self.http,
            &format!("{}:{endpoint}", self.account),
            HttpConfig {
                throttle_scope: Some(throttle_scope),
                ..HttpConfig::new(VENDOR, self.per_endpoint)
            },
        )?;
        endpoints.insert(endpoint, client.clone());
        Ok(client)
    }

    /// GETs one page of the list endpoint `path` (e.g. `/v1/charges`) with `query`, for
    /// `stream` (named in errors). A body that is not one complete JSON object (cut short,
    /// garbled) is retried like a transport failure; a complete one that is not Stripe's
    /// list object (`data` an array, `has_more` a boolean) fails at once with
    /// [`Error::Protocol`]: retrying the same request would get the same answer, and taking
    /// it for an empty last page would mark a backfill complete. A 401/403 is
    /// [`Error::Auth`] with Stripe's message.
    pub async fn list(
        &self,
        stream: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Listing> {
        let url = format!("{}{path}", self.api_base);
        let what = format!("GET {path}");
        let listing = self
            .http_for(path)?
            .list(&what, "data", "id", Some("created"), |c| {
                c.get(&url)
                    .bearer_auth(self.api_key.expose())
                    .header("Stripe-Version", &self.stripe_version)
                    .query(query)
            })
            .await?;
        let (response, envelope) = (listing.response, listing.envelope);
        self.clock.observe(response.date);
        check_list_shape(&envelope)
            .map_err(|problem| malformed_page(VENDOR, stream, &what, &problem))?;
        Ok(Listing {
            body: response.body,
            envelope,
            date: response.date,
        })
    }

    /// GETs one object (`/v1/customers/cus_…`) at the pinned API version, for `stream`;
    /// `None` when Stripe no longer has it (404 `resource_missing`).
    pub async fn retrieve(&self, stream: &str, path: &str) -> Result<Option<serde_json::Value>> {
        let url = format!("{}{path}", self.api_base);
        let what = format!("GET {path}");
        let sent = self
            .http_for(path)?
            .send_checked(
                &what,
                |c| {
                    c.get(&url)
                        .bearer_auth(self.api_key.expose())
                        .header("Stripe-Version", &self.stripe_version)
                },
                |r: &Response| {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&r.body)
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            )
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(Error::Http {
                status: 404,
                message,
                ..
            }) if message.contains("No such") || message.contains("resource_missing") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.clock.observe(response.date);
        let object: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| malformed_page(VENDOR, stream, &what, &e.to_string()))?;
        if object
            .get("id")
            .and_then(serde_json::Value::as_str)
            .is_none()
        {
            return Err(malformed_page(
                VENDOR,
                stream,
                &what,
                "the object has no `id`",
            ));
        }
        Ok(Some(object))
    }

    /// The API version every request is pinned to (`Stripe-Version`).
    pub fn stripe_version(&self) -> &str {
        &self.stripe_version
    }

    /// Stripe's clock as of the latest response (the local clock before any).
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }
}

/// Checks a list page is Stripe's list object. Stripe documents every list response as
/// `{"object": "list", "data": [...], "has_more": <boolean>, "url": ...}`, `data` an array
/// and `has_more` a boolean ("Whether or not there are more elements available after this
/// set. If false, this set comprises the end of the list."):
/// https://docs.stripe.com/api/pagination. So a `data` that is not an array, or a
/// `has_more` that is missing or not a boolean, is a broken answer, not an empty last page.
fn check_list_shape(envelope: &Envelope) -> Result<(), String> {
    envelope.require_records_array("data")?;
    envelope.require_boolean("has_more")?;
    Ok(())
}

/// Whether `err` is Stripe saying that the object `id` (a pagination anchor) no longer
/// exists: HTTP 400/404 with code `resource_missing`, whose message reads
/// `No such <object>: '<id>'`.
///
/// The SDK's [`Error::Http`] carries Stripe's message but not its error code, so the
/// message is what we can match.
pub fn is_missing(err: &Error, id: &str) -> bool {
    matches!(
        err,
        Error::Http { status: 400 | 404, message, .. }
            if message.contains(id) || message.contains("resource_missing")
    )
}

/// The endpoint a request counts against in Stripe's per-endpoint limits: its method and
/// path with the object ids taken out ("Stripe considers each named API operation as a
/// separate endpoint", so `GET /v1/customers/cus_1` and `GET /v1/customers/cus_2` are
/// both `GET /v1/customers/{id}`; https://docs.stripe.com/rate-limits). Paths are
/// `/v1/<resource>[/<id>[/<resource>[/<id>…]]]`.
pub fn endpoint(method: &str, path: &str) -> String {
    let mut out = format!("{method} ");
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // "", "v1", resource, id, resource, id, …
        out.push_str(if i >= 3 && i % 2 == 1 && !segment.is_empty() {
            "{id}"
        } else {
            segment
        });
    }
    out
}

/// The key under which all sources of one Stripe account share a limiter: a short,
/// non-reversible digest of the API key (FNV-1a), never the key itself.
pub fn account_key(api_key: &Secret) -> String {
    tributary_sdk::http::account_key("stripe", api_key.expose())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::pagination::scan_envelope;

    #[test]
    fn endpoints_take_the_ids_out_of_paths() {
        assert_eq!(endpoint("GET", "/v1/charges"), "GET /v1/charges");
        assert_eq!(
            endpoint("GET", "/v1/customers/cus_123"),
            "GET /v1/customers/{id}"
        );
        assert_eq!(
            endpoint("GET", "/v1/invoices/in_1/lines"),
            "GET /v1/invoices/{id}/lines"
        );
        assert_eq!(
            endpoint("POST", "/v1/subscription_items/si_1"),
            "POST /v1/subscription_items/{id}"
        );
        assert_eq!(endpoint("GET", "/v1/events"), "GET /v1/events");
    }

    #[test]
    fn account_keys_are_stable_distinct_and_secret_free() {
        let a = account_key(&Secret::new("sk_test_aaaa"));
        assert_eq!(a, account_key(&Secret::new("sk_test_aaaa")));
        assert_ne!(a, account_key(&Secret::new("sk_test_aaab")));
        assert!(a.starts_with("stripe:") && !a.contains("aaaa"), "{a}");
    }

    #[test]
    fn list_pages_must_be_stripe_list_objects() {
        let shape = |body: &[u8]| check_list_shape(&scan_envelope(body, "data", "id").unwrap());
        // Stripe's own example (docs.stripe.com/api/pagination), shortened.
        assert_eq!(
            shape(br#"{"object":"list","url":"/v1/customers","has_more":false,"data":[{"id":"cus_1","object":"customer"}]}"#),
            Ok(())
        );
        assert_eq!(
            shape(br#"{"object":"list","data":[],"has_more":false}"#),
            Ok(())
        );
        for (body, field) in [
            (
                &br#"{"object":"list","data":{"id":"ch_1"},"has_more":false}"#[..],
                "`data` is an object",
            ),
            (
                br#"{"object":"list","data":"ch_1","has_more":false}"#,
                "`data` is a string",
            ),
            (br#"{"object":"list","has_more":false}"#, "no `data` array"),
            (
                br#"{"object":"list","data":[{"id":"ch_1"}]}"#,
                "`has_more` is missing",
            ),
            (
                br#"{"object":"list","data":[],"has_more":"true"}"#,
                "`has_more` is `\"true\"`",
            ),
            (
                br#"{"object":"list","data":[],"has_more":null}"#,
                "`has_more` is `null`",
            ),
        ] {
            let err = shape(body).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn missing_anchor_is_recognised() {
        let err = Error::Http {
            method: "GET".into(),
            url: "https://api.stripe.com/v1/events".into(),
            status: 400,
            message: "No such event: 'evt_123'".into(),
        };
        assert!(is_missing(&err, "evt_123"));
        assert!(!is_missing(&err, "evt_999"));
        let other = Error::Http {
            method: "GET".into(),
            url: "https://api.stripe.com/v1/events".into(),
            status: 400,
            message: "Received unknown parameter: limitt".into(),
        };
        assert!(!is_missing(&other, "evt_123"));
    }
}
