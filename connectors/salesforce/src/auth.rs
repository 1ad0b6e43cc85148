//! OAuth 2.0 against Salesforce's token endpoint (`<login_url>/services/oauth2/token`): the
//! refresh-token, JWT bearer (RS256 assertion) and client-credentials flows, and the cache of
//! the current access token.
//!
//! The token answer names the org's `instance_url`, where every API call then goes. When the
//! API says a session is no longer valid (`INVALID_SESSION_ID`), the client asks
//! [`Authenticator::refresh`] for a new token: refreshes are single-flight, so streams that
//! hit the expiry together fetch one token, not one each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tributary_sdk::http::HttpClient;
use tributary_sdk::{Error, Result, Secret};

/// The vendor name in errors and logs.
pub const VENDOR: &str = "Salesforce";

/// The grant type of the JWT bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long a JWT assertion is valid (Salesforce accepts at most three minutes).
const ASSERTION_LIFETIME_SECS: i64 = 170;

/// An RSA private key for RS256 assertions. Never printed.
#[derive(Clone)]
pub struct RsaKey(jsonwebtoken::EncodingKey);

impl RsaKey {
    /// Parses a PEM RSA private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> std::result::Result<Self, String> {
        jsonwebtoken::EncodingKey::from_rsa_pem(pem)
            .map(RsaKey)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How the connector gets an access token.
#[derive(Debug, Clone)]
pub enum AuthFlow {
    /// OAuth 2.0 refresh-token flow.
    RefreshToken {
        /// The connected app's consumer key.
        client_id: String,
        /// The consumer secret, when the app requires it for refreshes.
        client_secret: Option<Secret>,
        /// The integration user's refresh token.
        refresh_token: Secret,
    },
    /// OAuth 2.0 JWT bearer flow: an assertion signed with the app's certificate key.
    JwtBearer {
        /// The consumer key (`iss`).
        client_id: String,
        /// The user (`sub`).
        username: String,
        /// The private key.
        key: RsaKey,
        /// The `aud` claim.
        audience: String,
    },
    /// OAuth 2.0 client-credentials flow (the app's Run As user).
    ClientCredentials {
        /// The consumer key.
        client_id: String,
        /// The consumer secret.
        client_secret: Secret,
    },
}

impl AuthFlow {
    /// The flow's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AuthFlow::RefreshToken { .. } => "refresh-token",
            AuthFlow::JwtBearer { .. } => "JWT bearer",
            AuthFlow::ClientCredentials { .. } => "client-credentials",
        }
    }

    /// The config keys a rejected grant points at.
    fn keys_to_check(&self) -> &'static str {
        match self {
            AuthFlow::RefreshToken { .. } => {
                "check `client_id`, `client_secret` and `refresh_token` (a refresh token is revoked \
                 when the user or an admin revokes the app's access)"
            }
            AuthFlow::JwtBearer { .. } => {
                "check `client_id`, `username`, `private_key_path` (the connected app must hold its \
                 certificate) and that the user is pre-authorized for the app"
            }
            AuthFlow::ClientCredentials { .. } => {
                "check `client_id`, `client_secret`, `login_url` (the My Domain URL) and that the \
                 connected app has a Run As user for the client-credentials flow"
            }
        }
    }

    /// A stable, non-reversible key for the account's shared rate limiter.
    pub fn account_key(&self, login_url: &str) -> String {
        let identity = match self {
            AuthFlow::RefreshToken { client_id, .. }
            | AuthFlow::ClientCredentials { client_id, .. } => client_id.clone(),
            AuthFlow::JwtBearer {
                client_id,
                username,
                ..
            } => format!("{client_id}/{username}"),
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in login_url.bytes().chain(identity.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("salesforce:{:012x}", hash >> 16)
    }
}

/// The `aud` of JWT assertions for a login URL: Salesforce wants its login server,
/// `https://test.salesforce.com` for sandboxes and `https://login.salesforce.com` otherwise
/// (My Domain URLs included); any other host (a proxy, the simulator) is its own audience.
pub fn jwt_audience(login_url: &str) -> String {
    let host = url::Url::parse(login_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    if host == "test.salesforce.com" || host.ends_with(".sandbox.my.salesforce.com") {
        "https://test.salesforce.com".to_owned()
    } else if host == "salesforce.com" || host.ends_with(".salesforce.com") {
        "https://login.salesforce.com".to_owned()
    } else {
        login_url.trim_end_matches('/').to_owned()
    }
}

/// The claims of a JWT bearer assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The consumer key.
    pub iss: String,
    /// The username.
    pub sub: String,
    /// The login server.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// Signs the assertion of the JWT bearer flow.
pub fn assertion(client_id: &str, username: &str, audience: &str, key: &RsaKey) -> Result<String> {
    let claims = Claims {
        iss: client_id.to_owned(),
        sub: username.to_owned(),
        aud: audience.to_owned(),
        exp: chrono::Utc::now().timestamp() + ASSERTION_LIFETIME_SECS,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key.0,
    )
    .map_err(|e| {
        Error::config(
            "private_key_path",
            format!("cannot sign the JWT assertion: {e}"),
        )
    })
}

/// An access token and where to use it.
#[derive(Debug)]
pub struct Token {
    /// The bearer token.
    pub access_token: Secret,
    /// The org's API host, e.g. `https://acme.my.salesforce.com`, without a trailing slash.
    pub instance_url: String,
    /// Increases with every token fetched, so a stale token is recognised.
    pub generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
}

/// Gets and caches access tokens for one source.
/// The domains an org's `instance_url` may be on: Salesforce's own (`*.my.salesforce.com`
/// My Domains and legacy `naNN.salesforce.com` instances, `*.force.com`,
/// `*.cloudforce.com`), Government Cloud Plus Defense (`*.my.salesforce.mil`) and
/// Salesforce on Alibaba Cloud (`*.my.sfcrmproducts.cn`), per Salesforce Help's "My Domain
/// URL Formats".
pub const SALESFORCE_DOMAINS: &[&str] = &[
    "salesforce.com",
    "force.com",
    "cloudforce.com",
    "salesforce.mil",
    "sfcrmproducts.cn",
];

#[derive(Debug)]
pub struct Authenticator {
    flow: AuthFlow,
    token_url: String,
    http: HttpClient,
    current: Mutex<Option<Arc<Token>>>,
    generation: AtomicU64,
    fetched: AtomicU64,
}

impl Authenticator {
    /// An authenticator for `flow` against `login_url`; makes no request.
    pub fn new(flow: AuthFlow, login_url: &str, http: HttpClient) -> Self {
        Authenticator {
            flow,
            token_url: format!("{login_url}/services/oauth2/token"),
            http,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        }
    }

    /// The current token, fetching one if there is none yet.
    pub async fn token(&self) -> Result<Arc<Token>> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            return Ok(Arc::clone(token));
        }
        let token = Arc::new(self.fetch().await?);
        *current = Some(Arc::clone(&token));
        Ok(token)
    }

    /// A token newer than the one of `stale_generation`: fetched now, unless another caller
    /// already replaced that one.
    pub async fn refresh(&self, stale_generation: u64) -> Result<Arc<Token>> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token.generation != stale_generation
        {
            return Ok(Arc::clone(token));
        }
        tracing::info!(
            flow = self.flow.name(),
            "Salesforce session expired; getting a new access token."
        );
        let token = Arc::new(self.fetch().await?);
        *current = Some(Arc::clone(&token));
        Ok(token)
    }

    /// How many tokens this authenticator has fetched.
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The token answer's `instance_url`, where every API call (with the bearer token) then
    /// goes, if it may receive the token: `https://` on one of [`SALESFORCE_DOMAINS`], or a
    /// loopback address when the login URL is one (the simulator). Anything else (another
    /// scheme, host or port a tampered or misdirected answer names) is refused.
    fn checked_instance_url(&self, raw: &str) -> Result<String> {
        let shown = tributary_sdk::endpoint::display(raw);
        let url = url::Url::parse(raw).map_err(|e| {
            Error::decode(
                "the token response's instance_url",
                format!("`{shown}`: {e}"),
            )
        })?;
        let origin = url::Url::parse(&self.token_url)
            .map_err(|e| Error::decode("the token URL", format!("`{}`: {e}", self.token_url)))?;
        if !tributary_sdk::endpoint::allowed_by_domains(&url, &origin, SALESFORCE_DOMAINS) {
            return Err(Error::protocol(
                VENDOR,
                "POST /services/oauth2/token",
                format!(
                    "the token answer names instance_url `{shown}`, which is not an https:// \
                     URL on a Salesforce domain ({}); refusing to send the access token there",
                    SALESFORCE_DOMAINS.join(", ")
                ),
            ));
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }

    async fn fetch(&self) -> Result<Token> {
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.flow {
            AuthFlow::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                form.push(("grant_type", "refresh_token".into()));
                form.push(("client_id", client_id.clone()));
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.expose().to_owned()));
                }
                form.push(("refresh_token", refresh_token.expose().to_owned()));
            }
            AuthFlow::JwtBearer {
                client_id,
                username,
                key,
                audience,
            } => {
                form.push(("grant_type", JWT_BEARER_GRANT.into()));
                let assertion = assertion(client_id, username, audience, key)?;
                // A signed assertion is a credential for its few minutes of life.
                tributary_sdk::secret::register(&assertion);
                form.push(("assertion", assertion));
            }
            AuthFlow::ClientCredentials {
                client_id,
                client_secret,
            } => {
                form.push(("grant_type", "client_credentials".into()));
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", client_secret.expose().to_owned()));
            }
        }
        let rejected = |status: u16, message: String| Error::Auth {
            vendor: VENDOR.to_owned(),
            status,
            message: format!(
                "{message}; the {} flow was refused: {}",
                self.flow.name(),
                self.flow.keys_to_check()
            ),
        };
        let response = self
            .http
            .send("POST /services/oauth2/token", |c| {
                c.post(&self.token_url).form(&form)
            })
            .await
            .map_err(|e| match e {
                // Salesforce refuses grants with 400 (`invalid_grant`, `invalid_client_id`).
                Error::Http {
                    status: 400,
                    message,
                    ..
                } => rejected(400, message),
                Error::Auth {
                    status, message, ..
                } => rejected(status, message),
                other => other,
            })?;
        let answer: TokenResponse = response.json()?;
        // Register the token before anything can print it (an error echoing it, a log).
        let access_token = Secret::new(answer.access_token);
        let instance_url = self.checked_instance_url(&answer.instance_url)?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(flow = self.flow.name(), instance_url = %instance_url, "Got a Salesforce access token.");
        Ok(Token {
            access_token,
            instance_url,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_follow_the_login_server() {
        assert_eq!(
            jwt_audience("https://login.salesforce.com"),
            "https://login.salesforce.com"
        );
        assert_eq!(
            jwt_audience("https://acme.my.salesforce.com"),
            "https://login.salesforce.com"
        );
        assert_eq!(
            jwt_audience("https://test.salesforce.com"),
            "https://test.salesforce.com"
        );
        assert_eq!(
            jwt_audience("https://acme--uat.sandbox.my.salesforce.com"),
            "https://test.salesforce.com"
        );
        assert_eq!(
            jwt_audience("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn assertions_are_rs256_with_the_salesforce_claims() {
        let pem = include_bytes!("../fixtures/test-only-jwt-private-key.pem");
        let public = include_bytes!("../fixtures/test-only-jwt-public-key.pem");
        let key = RsaKey::from_pem(pem).unwrap();
        let token = assertion(
            "client",
            "user@example.com",
            "https://login.salesforce.com",
            &key,
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["https://login.salesforce.com"]);
        validation.set_issuer(&["client"]);
        let decoded = jsonwebtoken::decode::<Claims>(
            &token,
            &jsonwebtoken::DecodingKey::from_rsa_pem(public).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims.sub, "user@example.com");
        let now = chrono::Utc::now().timestamp();
        assert!(decoded.claims.exp > now && decoded.claims.exp <= now + 180);
        assert_eq!(format!("{key:?}"), "***");
        assert!(RsaKey::from_pem(b"not a key").is_err());
    }

    #[test]
    fn account_keys_do_not_leak_credentials() {
        let flow = AuthFlow::ClientCredentials {
            client_id: "consumer-key".into(),
            client_secret: Secret::new("s"),
        };
        let key = flow.account_key("https://acme.my.salesforce.com");
        assert!(
            key.starts_with("salesforce:") && !key.contains("consumer"),
            "{key}"
        );
        assert_ne!(key, flow.account_key("https://other.my.salesforce.com"));
    }
}
