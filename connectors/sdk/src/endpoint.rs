//! Where a connector may send credentials: the checks every configured base URL (a
//! vendor's API base, a login URL, a collector endpoint) and every URL a vendor hands back
//! (Salesforce's `instance_url`) pass before a request goes out.
//!
//! The rules, the same for every vendor: `https://`, or plain `http://` only to a loopback
//! address (a local simulator or a test server), since anything else would send the
//! credentials in clear; no user name or password inside the URL (credentials have their
//! own keys); no query or fragment. Errors name the config key and never quote the value:
//! a `${ENV}` reference may have put a secret there by mistake.

use std::net::IpAddr;

use url::{Host, Url};

use crate::error::{Error, Result};

/// Whether `url` points at this machine: `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost"
                || domain
                    .parse::<IpAddr>()
                    .is_ok_and(|ip: IpAddr| ip.is_loopback())
        }
        None => false,
    }
}

/// `url` without user info, query or fragment: what an error may print of a URL a user
/// wrote, since a password in it must not reach the terminal.
pub fn display(raw: &str) -> String {
    match Url::parse(raw.trim()) {
        Ok(url) => crate::http::redact_url(&url),
        // Not a URL: print it only if it cannot hold credentials.
        Err(_) if !raw.contains('@') => raw.trim().to_owned(),
        Err(_) => "(the URL given, not shown as it may hold a password)".to_owned(),
    }
}

/// Checks a configured base URL under config key `key` and returns it without trailing
/// slashes: `https://`, or `http://` to a loopback address; a host; no user info, query or
/// fragment. `credential_keys` names the keys that carry the credentials instead (for the
/// error when the URL holds some).
pub fn base_url(key: &str, raw: &str, credential_keys: &str) -> Result<String> {
    let bad = |why: String| Error::config(key, why);
    let url = Url::parse(raw.trim()).map_err(|e| bad(format!("is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(format!(
            "must not carry a user name or password; set {credential_keys} instead"
        )));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(bad(format!(
                "must use https:// (the host is {}): plain http:// would send the credentials \
                 in clear, and is only allowed to a loopback address (127.0.0.1, ::1, \
                 localhost)",
                url.host_str().unwrap_or_default()
            )));
        }
        other => return Err(bad(format!("must be an https:// URL, not {other}://"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or a fragment".to_owned()));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Whether `url` may receive the credentials of a session opened at `origin` (the host the
/// credentials were first sent to): `https://` on one of `domains` (a host equal to a
/// domain or below it), or, when `origin` itself is a loopback address, any URL on a
/// loopback address (a local simulator hands back its own address).
pub fn allowed_by_domains(url: &Url, origin: &Url, domains: &[&str]) -> bool {
    if url.username() != "" || url.password().is_some() {
        return false;
    }
    if is_loopback(origin) {
        return matches!(url.scheme(), "http" | "https") && is_loopback(url);
    }
    if url.scheme() != "https" {
        return false;
    }
    let Some(Host::Domain(host)) = url.host() else {
        return false;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    domains.iter().any(|domain| {
        host == *domain
            || host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_and_message(err: Error) -> (String, String) {
        match err {
            Error::Config { key, message } => (key, message),
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn https_anywhere_http_only_to_loopback() {
        assert_eq!(
            base_url("api_base", "https://api.stripe.com/", "`api_key`").unwrap(),
            "https://api.stripe.com"
        );
        for local in [
            "http://127.0.0.1:8080/",
            "http://127.9.9.9",
            "http://[::1]:9000",
            "http://localhost:7000",
        ] {
            base_url("api_base", local, "`api_key`").unwrap();
        }
        for remote in [
            "http://api.stripe.com",
            "http://10.0.0.5:8080",
            "http://localhost.evil.test",
        ] {
            let (key, message) = key_and_message(base_url("api_base", remote, "k").unwrap_err());
            assert_eq!(key, "api_base");
            assert!(message.contains("must use https://"), "{message}");
        }
        let (_, message) = key_and_message(base_url("endpoint", "ftp://x.test", "k").unwrap_err());
        assert!(message.contains("not ftp://"), "{message}");
    }

    #[test]
    fn refuses_user_info_without_printing_it() {
        let err = base_url(
            "endpoint",
            "https://user:hunter2-password@collector.test/",
            "`write_key`",
        )
        .unwrap_err();
        let (key, message) = key_and_message(err);
        assert_eq!(key, "endpoint");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("set `write_key` instead"), "{message}");
    }

    #[test]
    fn domains_and_loopback_origins() {
        let login = Url::parse("https://login.salesforce.com").unwrap();
        let domains = ["salesforce.com", "force.com"];
        let ok = |u: &str| allowed_by_domains(&Url::parse(u).unwrap(), &login, &domains);
        assert!(ok("https://acme.my.salesforce.com"));
        assert!(ok("https://na1.force.com/"));
        assert!(!ok("http://acme.my.salesforce.com"));
        assert!(!ok("https://evilsalesforce.com"));
        assert!(!ok("https://salesforce.com.evil.test"));
        assert!(!ok("https://127.0.0.1:8443"));
        let local = Url::parse("http://127.0.0.1:4000").unwrap();
        let from_local = |u: &str| allowed_by_domains(&Url::parse(u).unwrap(), &local, &domains);
        assert!(from_local("http://127.0.0.1:4001"));
        assert!(!from_local("http://attacker.test"));
    }
}
