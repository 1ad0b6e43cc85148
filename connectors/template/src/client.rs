//! The Acme API client: bearer authentication, the account's rate limit shared by every
//! source of one key, retries, and list pages scanned without being parsed.

use tributary_sdk::clock::ServerClock;
use tributary_sdk::http::{self, HttpClient, HttpConfig, Listing, QuotaHeaders};
use tributary_sdk::{Result, Secret};

use crate::config::Settings;

/// The vendor's name in errors and logs.
pub const VENDOR: &str = "Acme";

/// An authenticated Acme API client. Cheap to share (`Arc`) between a source's streams.
#[derive(Debug)]
pub struct AcmeClient {
    http: HttpClient,
    api_base: String,
    api_key: Secret,
    /// Acme's clock (the `Date` of its answers): reads stop a second before it.
    pub clock: ServerClock,
}

impl AcmeClient {
    /// A client for the validated settings. Makes no request.
    pub fn new(settings: &Settings) -> Result<Self> {
        let config = HttpConfig {
            // Acme sends its remaining quota on every answer: slow down before a 429.
            quota: Some(QuotaHeaders {
                remaining: vec!["x-ratelimit-remaining".into()],
                reset: vec!["x-ratelimit-reset".into()],
                structured: Vec::new(),
                low_water: 1,
            }),
            ..HttpConfig::new(VENDOR, settings.requests_per_second)
        };
        let key = http::account_key("acme", settings.api_key.expose());
        Ok(AcmeClient {
            http: HttpClient::shared(&key, config)?,
            api_base: settings.api_base.clone(),
            api_key: settings.api_key.clone(),
            clock: ServerClock::new(),
        })
    }

    /// `GET /v1/me`: proves the key.
    pub async fn me(&self) -> Result<serde_json::Value> {
        let url = format!("{}/v1/me", self.api_base);
        let response = self
            .http
            .send("GET /v1/me", |c| {
                c.get(&url).bearer_auth(self.api_key.expose())
            })
            .await?;
        self.clock.observe(response.date);
        response.json()
    }

    /// GETs one page of the list endpoint `path` (e.g. `/v1/items`) with `query`. The
    /// records are the `data` array, identified by `id`.
    pub async fn list(&self, path: &str, query: &[(&str, String)]) -> Result<Listing> {
        let url = format!("{}{path}", self.api_base);
        let listing = self
            .http
            .list(&format!("GET {path}"), "data", "id", None, |c| {
                c.get(&url).bearer_auth(self.api_key.expose()).query(query)
            })
            .await?;
        self.clock.observe(listing.response.date);
        Ok(listing)
    }
}
