//! The options of an Acme source (`[sources.<name>]` with `type = "acme"`) and their
//! validation.
//!
//! [`AcmeConfig`] is what the user writes (every field documented, unknown keys refused);
//! [`AcmeConfig::validate`] turns it into the [`Settings`] the client runs with, or an
//! [`tributary_sdk::Error::Config`] naming the key to fix, never quoting its value.

use serde::Deserialize;
use tributary_sdk::options::check_range;
use tributary_sdk::{Result, Secret, endpoint};

/// Where Acme's API lives.
pub const DEFAULT_API_BASE: &str = "https://api.acme.example";

/// Acme's documented rate limit, in requests per second per account.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 10.0;

/// The largest `limit` Acme's list endpoints accept; larger ones are refused with 400.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The options of an Acme source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Acme API key, sent as a bearer token. Write it as `${ENV_VAR}` to keep it out of
    /// the config file.
    pub api_key: Secret,

    /// Base URL of the Acme API. Change it only to point at a proxy or the sandbox.
    #[serde(default = "default_api_base")]
    pub api_base: String,

    /// Most requests per second this source sends, shared by all its streams, from 0.1 to
    /// 10000 (Acme allows 10).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,

    /// Objects fetched per list request, from 1 to 100.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_requests_per_second() -> f64 {
    DEFAULT_REQUESTS_PER_SECOND
}

fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API key.
    pub api_key: Secret,
    /// The API base URL, without a trailing slash.
    pub api_base: String,
    /// The request rate, shared by all streams of the account.
    pub requests_per_second: f64,
    /// `limit` of list requests.
    pub page_size: u32,
}

impl AcmeConfig {
    /// Checks every option; an error names the option to fix.
    pub fn validate(&self) -> Result<Settings> {
        if self.api_key.expose().trim().is_empty() {
            return Err(tributary_sdk::Error::config("api_key", "must not be empty"));
        }
        Ok(Settings {
            api_key: self.api_key.clone(),
            // https, or http to a loopback simulator: the key goes wherever this points.
            api_base: endpoint::base_url("api_base", &self.api_base, "`api_key`")?,
            requests_per_second: check_range(
                "requests_per_second",
                self.requests_per_second,
                0.1,
                10_000.0,
            )?,
            page_size: check_range("page_size", self.page_size, 1, MAX_PAGE_SIZE)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(options: serde_json::Value) -> Result<Settings> {
        tributary_sdk::options::from_value::<AcmeConfig>(options)?.validate()
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let settings = config(serde_json::json!({"api_key": "acme_key_1"})).unwrap();
        assert_eq!(settings.api_base, DEFAULT_API_BASE);
        assert_eq!(settings.page_size, MAX_PAGE_SIZE);
        for (options, key) in [
            (
                serde_json::json!({"api_key": "k", "page_size": 500}),
                "page_size",
            ),
            (
                serde_json::json!({"api_key": "k", "api_base": "http://acme.example"}),
                "api_base",
            ),
            (
                serde_json::json!({"api_key": "k", "requests_per_second": 0}),
                "requests_per_second",
            ),
            (
                serde_json::json!({"api_key": "k", "pagesize": 5}),
                "pagesize",
            ),
        ] {
            let err = config(options).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
