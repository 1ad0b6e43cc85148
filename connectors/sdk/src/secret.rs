//! Secrets (API keys, tokens): never printed, never serialized back out, and scrubbed from
//! any text a vendor sends back.
//!
//! Every [`Secret`] registers its value in a process-wide set when it is made (from the
//! config, or from a vendor's token answer). [`scrub`] replaces each registered value, in
//! the forms a vendor may echo it (as is, form- or URL-encoded, JSON-escaped), and any
//! `Bearer …` / `Basic …` credential, with `***`. Error texts that may hold a vendor's words
//! pass through it before they are logged, printed or stored.

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::{OnceLock, PoisonError, RwLock};

/// Values shorter than this are not registered for scrubbing: replacing every `abc` in an
/// error text would mangle it, and a real credential is never that short.
const MIN_SCRUBBED_LEN: usize = 6;

/// What a scrubbed secret becomes.
const MASK: &str = "***";

/// A secret string. `Debug` and `Display` print `***`; the value is only reachable through
/// [`Secret::expose`], so it cannot end up in logs, state or tables by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value, and registers it so [`scrub`] masks it wherever it appears.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers `value` (and the encodings a vendor may echo it in) for [`scrub`]. Values of
/// fewer than six characters are ignored. Registering is idempotent.
pub fn register(value: &str) {
    let value = value.trim();
    if value.chars().count() < MIN_SCRUBBED_LEN {
        return;
    }
    let mut forms = vec![value.to_owned()];
    // As an application/x-www-form-urlencoded body or a query string carries it.
    forms.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
    // As a JSON string carries it (a vendor echoing our JSON body).
    if let Ok(json) = serde_json::to_string(value) {
        forms.push(json[1..json.len() - 1].to_owned());
    }
    let mut secrets = registry().write().unwrap_or_else(PoisonError::into_inner);
    for form in forms {
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first, so a secret that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret, and every `Bearer`/`Basic`/`OAuth` credential
/// that follows those words, replaced by `***`. Cheap when there is nothing to replace.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let secrets = registry().read().unwrap_or_else(PoisonError::into_inner);
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    drop(secrets);
    match scrub_schemes(&out) {
        Some(masked) => Cow::Owned(masked),
        None => out,
    }
}

/// Masks the credential after `Bearer `, `Basic ` and `OAuth ` (any case), as an
/// `Authorization` header echoed in an error body carries it. `None` when there is none.
fn scrub_schemes(text: &str) -> Option<String> {
    const SCHEMES: [&str; 3] = ["bearer", "basic", "oauth"];
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hit = SCHEMES.iter().find(|scheme| {
            lower[i..].starts_with(*scheme)
                // A word of its own: not the end of `thebearer`.
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
        });
        let Some(scheme) = hit else {
            i += 1;
            continue;
        };
        let mut j = i + scheme.len();
        let spaces = bytes[j..].iter().take_while(|b| **b == b' ').count();
        if spaces == 0 {
            i = j;
            continue;
        }
        j += spaces;
        let token = bytes[j..].iter().take_while(|b| is_token_byte(**b)).count();
        // A credential, not prose ("basic auth", "Bearer token required").
        let candidate = &text[j..j + token];
        if token >= 8 && candidate != MASK && looks_like_credential(candidate) {
            out.push_str(&text[copied..j]);
            out.push_str(MASK);
            copied = j + token;
        }
        i = j + token.max(1);
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Bytes of a token68 credential (RFC 7235) and of the JWTs and opaque tokens vendors use.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'!')
}

/// Whether a word after `Bearer` looks like a credential rather than English: it has a
/// digit or a symbol, or mixes cases inside the word.
fn looks_like_credential(word: &str) -> bool {
    let digits_or_symbols = word.bytes().any(|b| !b.is_ascii_alphabetic());
    let inner_upper = word.bytes().skip(1).any(|b| b.is_ascii_uppercase());
    let inner_lower = word.bytes().any(|b| b.is_ascii_lowercase());
    digits_or_symbols || (inner_upper && inner_lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("sk_test_123");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "sk_test_123");
    }

    #[test]
    fn scrubs_registered_values_in_their_echoed_forms() {
        let _key = Secret::new("sk_live_scrub/me+now");
        let text = "bad key sk_live_scrub/me+now; form client_secret=sk_live_scrub%2Fme%2Bnow; \
                    json \"sk_live_scrub\\/me+now\"";
        let scrubbed = scrub(text);
        assert!(!scrubbed.contains("scrub"), "{scrubbed}");
        assert_eq!(scrubbed.matches("***").count(), 3, "{scrubbed}");
    }

    #[test]
    fn scrubs_deserialized_secrets() {
        let s: Secret = serde_json::from_str("\"zd-token-from-config-1\"").unwrap();
        assert_eq!(scrub("echo: zd-token-from-config-1!"), "echo: ***!");
        assert_eq!(s.expose(), "zd-token-from-config-1");
    }

    #[test]
    fn scrubs_authorization_credentials_it_never_saw() {
        let text = "401: got header Authorization: Bearer 00Dxx0000001gPL!AR8AQJXg.q_z and \
                    authorization: basic YWRtaW5AYWNtZS50ZXN0L3Rva2VuOnNlY3JldA==";
        let scrubbed = scrub(text);
        assert_eq!(
            scrubbed,
            "401: got header Authorization: Bearer *** and authorization: basic ***"
        );
    }

    #[test]
    fn leaves_prose_alone() {
        for text in [
            "Bearer token required",
            "basic authentication is disabled",
            "theBearer 12345678x",
            "short abc",
        ] {
            assert_eq!(scrub(text), text);
        }
        // Too short to register: never masks ordinary words.
        let _short = Secret::new("abc");
        assert_eq!(scrub("abc abc"), "abc abc");
    }
}
