//! The options of a Stripe source (`[sources.<name>]` with `type = "stripe"`) and their
//! validation.
//!
//! [`StripeConfig`] is what the user writes; [`StripeConfig::validate`] turns it into the
//! [`Settings`] the client runs with, or an [`Error::Config`] naming the key to fix.

use serde::Deserialize;
use tributary_sdk::endpoint;
use tributary_sdk::options::check_range;
use tributary_sdk::{Error, Result, Secret};

/// The API version sent as `Stripe-Version` unless `stripe_version` says otherwise. Pinned
/// so that an account's default version changing on Stripe's side does not change the
/// shape of the objects we land.
///
/// It is the version of the objects the stream schemas and the simulator are built on:
/// Stripe's example objects, `fixtures/fixtures3.json` from stripe/openapi, the file of its
/// `2026-07-29.dahlia` release (commit 19be337d holds the same file as our copy's f0758b15).
/// A pin older than the schemas would land columns the schemas do not declare (before
/// `2025-03-31.basil` a subscription has `current_period_end`, its items do not) and leave
/// declared ones null.
pub const DEFAULT_STRIPE_VERSION: &str = "2026-07-29.dahlia";

/// Where Stripe's API lives.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// Requests per second with a test-mode key (Stripe allows 25 per second in test mode).
pub const TEST_MODE_REQUESTS_PER_SECOND: f64 = 25.0;

/// Requests per second with a live-mode key (Stripe allows 100 per second in live mode).
pub const LIVE_MODE_REQUESTS_PER_SECOND: f64 = 100.0;

/// Requests per second to one endpoint (a method and a path with its ids taken out, such as
/// `GET /v1/charges`), in either mode: "API endpoints have a default limit of 25 requests
/// per second", and they "also count against global limits"
/// (https://docs.stripe.com/rate-limits).
pub const ENDPOINT_REQUESTS_PER_SECOND: f64 = 25.0;

/// The largest `limit` Stripe's list endpoints accept.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The lowest `requests_per_second` accepted: slower would make a sync of any size take days.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.1;

/// The highest `requests_per_second` accepted: 100 times Stripe's live-mode limit, room for
/// a proxy or the sandbox, and still a bound on a typo.
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;

const KEY_PREFIXES: [&str; 4] = ["sk_test_", "sk_live_", "rk_test_", "rk_live_"];

/// The options of a Stripe source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Stripe secret key (`sk_live_…`, `sk_test_…`) or restricted key (`rk_live_…`,
    /// `rk_test_…`) with read access to the synced objects. Write it as `${ENV_VAR}` to
    /// keep it out of the config file.
    pub api_key: Secret,

    /// Base URL of the Stripe API. Change it only to point at a proxy or the sandbox.
    #[serde(default = "default_api_base")]
    pub api_base: String,

    /// Stripe API version sent as the `Stripe-Version` header on every request; it fixes
    /// the shape of the objects landed in the tables.
    #[serde(default = "default_stripe_version")]
    pub stripe_version: String,

    /// Most requests per second this source sends, shared by all its streams, from 0.1 to
    /// 10000. Defaults to Stripe's own limit: 25 with a test-mode key, 100 with a live-mode
    /// key. Lower it when other integrations use the same account.
    #[serde(default)]
    pub requests_per_second: Option<f64>,

    /// Most requests per second to any one endpoint (`GET /v1/charges`, `GET /v1/events`,
    /// `GET /v1/customers/{id}`, …), from 0.1 to 10000, within `requests_per_second`.
    /// Defaults to Stripe's 25. Raise it only when Stripe has raised it for the account.
    #[serde(default)]
    pub requests_per_second_per_endpoint: Option<f64>,

    /// Objects fetched per list request, from 1 to 100.
    #[serde(default = "default_page_size")]
    pub page_size: u32,

    /// Most list requests one stream's backfill keeps in flight, from 1 to 128 (1 reads
    /// one page after another). A first sync splits the stream by `created` into ranges
    /// read at once, as many in flight as `requests_per_second` × Stripe's answer time
    /// needs, never more than this; the rate limit still bounds the requests per second.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
}

/// The default of `max_concurrency`: 100 requests a second (a live key's limit) need 30 in
/// flight at a 300 ms list answer and 60 at 600 ms, the slow end of Stripe's answers. The
/// reader asks for no more than rate × answer time (and starts at 12, growing per page),
/// so a higher cap costs nothing at fast answers: measured 8,130 records/s at 300 ms (32:
/// 7,930) and 4,365 at 1,000 ms (32: 2,671), BENCHMARKS.md.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

/// Whether `v` is written as a Stripe API version: `YYYY-MM-DD`, and from `2024-09-30` on a
/// `.name` of the release it belongs to (https://docs.stripe.com/api/versioning: "Each
/// monthly release ... uses the same name as the last major release") or `.preview`,
/// optionally followed by beta flags (`; name=v1`). Stripe answers a version it does not
/// know with `Invalid Stripe API version: …`; this catches a typo before a request goes out.
pub fn well_formed_api_version(v: &str) -> bool {
    let mut parts = v.split(';');
    let version = parts.next().unwrap_or_default().trim();
    let betas = parts.all(|beta| {
        beta.trim().split_once('=').is_some_and(|(name, value)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && value.len() > 1
                && value.starts_with('v')
                && value[1..].bytes().all(|b| b.is_ascii_digit())
        })
    });
    let (date, name) = match version.split_once('.') {
        Some((date, name)) => (date, Some(name)),
        None => (version, None),
    };
    // Digits where Stripe writes them: chrono alone would take `+2024-6-20` or `2024- 6-20`.
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let lowercase = |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase());
    betas
        && shaped
        && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
        && match (release_of(date), name) {
            (None, None) => true,
            (Some(_), Some("preview")) => true,
            // A version newer than the one we pin may belong to a release this list does
            // not know yet: a name no earlier release had is let through to Stripe.
            (Some(release), Some(name)) => {
                name == release
                    || (date > &DEFAULT_STRIPE_VERSION[..10]
                        && lowercase(name)
                        && !RELEASES.iter().any(|(_, known)| *known == name))
            }
            _ => false,
        }
}

/// Stripe's named major releases and the date each began
/// (https://docs.stripe.com/changelog): a version dated from then on carries that name.
const RELEASES: [(&str, &str); 4] = [
    ("2024-09-30", "acacia"),
    ("2025-03-31", "basil"),
    ("2025-09-30", "clover"),
    ("2026-03-25", "dahlia"),
];

/// The release a version dated `date` (`YYYY-MM-DD`) belongs to; `None` before the first.
fn release_of(date: &str) -> Option<&'static str> {
    RELEASES
        .iter()
        .rev()
        .find(|(start, _)| date >= *start)
        .map(|(_, name)| *name)
}

fn default_stripe_version() -> String {
    DEFAULT_STRIPE_VERSION.to_owned()
}

fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}

/// A validated configuration, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API key.
    pub api_key: Secret,
    /// The API base URL, without a trailing slash.
    pub api_base: String,
    /// The `Stripe-Version` header.
    pub stripe_version: String,
    /// The request rate, shared by all streams of the account.
    pub requests_per_second: f64,
    /// The request rate of each endpoint, within the account's.
    pub requests_per_second_per_endpoint: f64,
    /// `limit` of list requests.
    pub page_size: u32,
    /// Most list requests in flight for one stream's backfill.
    pub max_concurrency: u32,
    /// Whether the key is a live-mode key.
    pub live_mode: bool,
}

impl StripeConfig {
    /// A configuration with `api_key` and every other option at its default.
    pub fn new(api_key: Secret) -> Self {
        StripeConfig {
            api_key,
            api_base: default_api_base(),
            stripe_version: default_stripe_version(),
            requests_per_second: None,
            requests_per_second_per_endpoint: None,
            page_size: default_page_size(),
            max_concurrency: default_max_concurrency(),
        }
    }

    /// Checks every option; an error names the option to fix.
    pub fn validate(&self) -> Result<Settings> {
        let key = self.api_key.expose().trim();
        let Some(prefix) = KEY_PREFIXES.iter().find(|p| key.starts_with(*p)) else {
            return Err(Error::config(
                "api_key",
                "not a Stripe API key: it must start with `sk_live_`, `sk_test_`, `rk_live_` \
                 or `rk_test_` (a publishable `pk_` key cannot read objects)",
            ));
        };
        if key.len() == prefix.len() {
            return Err(Error::config(
                "api_key",
                format!("the key is only its prefix `{prefix}`"),
            ));
        }
        let live_mode = prefix.ends_with("_live_");

        // https, or http to a loopback simulator: the key goes wherever this points.
        let api_base = endpoint::base_url("api_base", &self.api_base, "`api_key`")?;

        let stripe_version = self.stripe_version.trim();
        if !well_formed_api_version(stripe_version) {
            return Err(Error::config(
                "stripe_version",
                format!(
                    "{} is no Stripe API version: write a date with its release name, such as `{DEFAULT_STRIPE_VERSION}` (releases before 2024-09-30 have no name, such as `2024-06-20`)",
                    // Echoed only when it cannot be a key pasted in the wrong place.
                    if stripe_version.len() <= 32 && !stripe_version.contains('_') {
                        format!("`{}`", stripe_version.escape_debug())
                    } else {
                        "the value".to_owned()
                    }
                ),
            ));
        }

        let requests_per_second = match self.requests_per_second {
            None if live_mode => LIVE_MODE_REQUESTS_PER_SECOND,
            None => TEST_MODE_REQUESTS_PER_SECOND,
            Some(r) => check_range(
                "requests_per_second",
                r,
                MIN_REQUESTS_PER_SECOND,
                MAX_REQUESTS_PER_SECOND,
            )?,
        };

        let requests_per_second_per_endpoint = match self.requests_per_second_per_endpoint {
            None => ENDPOINT_REQUESTS_PER_SECOND,
            Some(r) => check_range(
                "requests_per_second_per_endpoint",
                r,
                MIN_REQUESTS_PER_SECOND,
                MAX_REQUESTS_PER_SECOND,
            )?,
        }
        .min(requests_per_second);

        // Stripe's list endpoints take `limit` from 1 to 100
        // (https://docs.stripe.com/api/pagination).
        check_range("page_size", self.page_size, 1, MAX_PAGE_SIZE)?;
        check_range("max_concurrency", self.max_concurrency, 1, 128)?;

        Ok(Settings {
            api_key: Secret::new(key),
            api_base,
            stripe_version: stripe_version.to_owned(),
            requests_per_second,
            requests_per_second_per_endpoint,
            page_size: self.page_size,
            max_concurrency: self.max_concurrency,
            live_mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: &str) -> StripeConfig {
        StripeConfig::new(Secret::new(key))
    }

    fn key_of(err: Error) -> String {
        match err {
            Error::Config { key, .. } => key,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn defaults_follow_the_key_mode() {
        let test = config("sk_test_abc").validate().unwrap();
        assert_eq!(test.requests_per_second, TEST_MODE_REQUESTS_PER_SECOND);
        assert!(!test.live_mode);
        assert_eq!(test.api_base, DEFAULT_API_BASE);
        assert_eq!(test.stripe_version, DEFAULT_STRIPE_VERSION);
        assert_eq!(test.page_size, 100);
        let live = config("rk_live_abc").validate().unwrap();
        assert_eq!(live.requests_per_second, LIVE_MODE_REQUESTS_PER_SECOND);
        assert!(live.live_mode);
    }

    #[test]
    fn stripe_version_is_a_version_stripe_would_know() {
        for good in [
            DEFAULT_STRIPE_VERSION,
            "2024-06-20",
            "2020-03-02",
            "2024-09-30.acacia",
            "2025-08-27.basil",
            "2026-02-25.clover",
            "2026-03-25.dahlia",
            // A release after the one pinned, whose name this build cannot know.
            "2026-10-28.elderberry",
            "2026-05-27.preview",
            "2026-07-29.dahlia; checkout_server_update_beta=v1",
        ] {
            let mut c = config("sk_test_abc");
            c.stripe_version = format!(" {good} ");
            assert_eq!(c.validate().unwrap().stripe_version, good);
        }
        for bad in [
            "",
            "2019-2-19",
            "2024-06-20.acacia",
            "2025-09-30.acacia",
            "2026-04-22",
            "2026-04-22.clover",
            "2026-04-22.Dahlia",
            "2024-13-01",
            "latest",
            "+2024-6-20",
            "2024- 6-20",
            "2024-06- 1",
            "2026-10-28.acacia",
            "2026-07-29.dahlia; beta",
            "2026-07-29.dahlia;",
        ] {
            let mut c = config("sk_test_abc");
            c.stripe_version = bad.into();
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(DEFAULT_STRIPE_VERSION), "{err}");
            assert_eq!(key_of(err), "stripe_version", "{bad}");
        }
        let mut c = config("sk_test_abc");
        c.stripe_version = "sk_live_pasted_here_by_mistake".into();
        let err = c.validate().unwrap_err();
        assert!(!err.to_string().contains("pasted"), "{err}");
    }

    #[test]
    fn bad_key_prefix_names_api_key() {
        for key in ["pk_test_abc", "abc", "", "sk_test_", "sk_tes_abc"] {
            let err = config(key).validate().unwrap_err();
            assert!(!err.to_string().contains("abc"), "the key leaked: {err}");
            assert_eq!(key_of(err), "api_key", "{key}");
        }
    }

    #[test]
    fn bad_api_base_names_api_base_and_not_its_value() {
        for base in [
            "not a url",
            "ftp://api.stripe.com",
            "/v1",
            "http://127.0.0.1/?a=b",
            "http://user:sk_live_pw@127.0.0.1",
            // The API key would travel in clear.
            "http://api.stripe.com",
        ] {
            let mut c = config("sk_test_abc");
            c.api_base = base.into();
            let err = c.validate().unwrap_err();
            assert!(!err.to_string().contains(base), "{err}");
            assert_eq!(key_of(err), "api_base", "{base}");
        }
        let mut c = config("sk_test_abc");
        c.api_base = "http://127.0.0.1:8080/".into();
        assert_eq!(c.validate().unwrap().api_base, "http://127.0.0.1:8080");
    }

    #[test]
    fn zero_or_negative_rate_names_requests_per_second() {
        for rate in [0.0, -1.0, 0.01, 10_001.0, f64::NAN, f64::INFINITY] {
            let mut c = config("sk_live_abc");
            c.requests_per_second = Some(rate);
            assert_eq!(
                key_of(c.validate().unwrap_err()),
                "requests_per_second",
                "{rate}"
            );
        }
        let mut c = config("sk_live_abc");
        c.requests_per_second = Some(2.5);
        assert_eq!(c.validate().unwrap().requests_per_second, 2.5);
    }

    #[test]
    fn each_endpoint_defaults_to_stripes_25_within_the_account_rate() {
        for key in ["sk_live_abc", "sk_test_abc"] {
            let settings = config(key).validate().unwrap();
            assert_eq!(settings.requests_per_second_per_endpoint, 25.0, "{key}");
        }
        let mut c = config("sk_live_abc");
        c.requests_per_second = Some(10.0);
        assert_eq!(c.validate().unwrap().requests_per_second_per_endpoint, 10.0);
        c.requests_per_second_per_endpoint = Some(8.0);
        assert_eq!(c.validate().unwrap().requests_per_second_per_endpoint, 8.0);
        for rate in [0.0, -1.0, 10_001.0, f64::NAN] {
            c.requests_per_second_per_endpoint = Some(rate);
            assert_eq!(
                key_of(c.validate().unwrap_err()),
                "requests_per_second_per_endpoint",
                "{rate}"
            );
        }
    }

    #[test]
    fn page_size_is_bounded() {
        for size in [0, 101] {
            let mut c = config("sk_test_abc");
            c.page_size = size;
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains("between 1 and 100"), "{err}");
            assert_eq!(key_of(err), "page_size");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_and_the_key_is_never_printed() {
        let err = serde_json::from_value::<StripeConfig>(
            serde_json::json!({"api_key": "sk_test_secret", "windows_days": 3}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("windows_days"), "{err}");
        let c: StripeConfig =
            serde_json::from_value(serde_json::json!({"api_key": "sk_test_secret"})).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!format!("{:?}", c.validate().unwrap()).contains("secret"));
    }
}
