//! A hostile vendor on 127.0.0.1 against the real binary: redirects, credentials echoed
//! back, bodies that inflate past the cap, a token answer naming a foreign instance, and
//! configs that would send credentials in clear. Each test asserts the safe outcome: the
//! request stops, the error says why, and no secret reaches stdout, stderr or the run log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::common::{read_table, run_binary, strings};

/// A Stripe key a vendor echoes back in the tests below.
const ECHOED_KEY: &str = "sk_test_hostile_echo_4eC39HqLyjWDarjtT1zdp7dc";

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A server that answers everything with an empty Stripe list and counts what reached it.
async fn elsewhere() -> (String, Arc<AtomicU32>) {
    let count = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&count);
    let router = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { r#"{"object":"list","data":[],"has_more":false,"url":"/v1/charges"}"# }
    });
    (serve(router).await, count)
}

fn write_stripe_config(
    dir: &std::path::Path,
    api_base: &str,
    sync_extra: &str,
) -> std::path::PathBuf {
    let config = dir.join("tributary.toml");
    let text = format!(
        "[warehouse]\nurl = {:?}\n\n[sync]\n{sync_extra}\n\n[sources.stripe]\ntype = \"stripe\"\napi_key = \"${{HOSTILE_TEST_STRIPE_KEY}}\"\napi_base = \"{api_base}\"\nstreams = [\"customers\"]\n",
        dir.join("warehouse").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn run_with_key(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "debug")
        .env("HOSTILE_TEST_STRIPE_KEY", ECHOED_KEY)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the binary runs")
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirected_list_call_is_not_followed() {
    let (target, reached) = elsewhere().await;
    let location = format!("{target}/v1/customers?api_key=stolen");
    let router = Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::FOUND, [(header::LOCATION, location)]) }
    });
    let vendor = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_stripe_config(dir.path(), &vendor, "");

    let out = run_with_key(&config, &["sync"]).await;
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("HTTP 302"), "{text}");
    assert!(
        text.contains("redirected the request to http://127.0.0.1"),
        "{text}"
    );
    assert!(
        !text.contains("stolen"),
        "the Location's query was printed: {text}"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    // The empty answer elsewhere did not complete a backfill: nothing committed.
    let table = dir.path().join("warehouse/stripe/customers");
    let rows: usize = if table.join("_delta_log").exists() {
        read_table(&table).await.iter().map(|b| b.num_rows()).sum()
    } else {
        0
    };
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_a_vendor_echoes_never_reach_output_or_the_run_log() {
    // Answers 401 with the Authorization header it got, as a careless proxy would.
    let router = Router::new().fallback(|headers: HeaderMap| async move {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let key = auth.trim_start_matches("Bearer ").to_owned();
        let body = serde_json::json!({"error": {
            "type": "invalid_request_error",
            "message": format!("Invalid API Key provided: {key}. You sent `Authorization: {auth}`"),
        }});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    });
    let vendor = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_stripe_config(dir.path(), &vendor, "");

    for command in [&["check"][..], &["sync"][..]] {
        let out = run_with_key(&config, command).await;
        let text = text_of(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("Invalid API Key provided: ***"), "{text}");
        assert!(!text.contains("hostile_echo"), "the key leaked: {text}");
    }
    let runs = read_table(&dir.path().join("warehouse/_tributary/sync_runs")).await;
    let errors = strings(&runs, "error");
    assert!(!errors.is_empty());
    for error in errors {
        assert!(
            !error.contains("hostile_echo"),
            "the run log holds the key: {error}"
        );
        assert!(error.contains("***"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_inflating_past_the_cap_fails_the_stream_clearly() {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    // A list page of ~40 MiB of spaces gzips to ~40 KiB.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder
        .write_all(b"{\"object\":\"list\",\"data\":[")
        .unwrap();
    let spaces = vec![b' '; 1024 * 1024];
    for _ in 0..40 {
        encoder.write_all(&spaces).unwrap();
    }
    encoder.write_all(b"],\"has_more\":false}").unwrap();
    let bomb = bytes::Bytes::from(encoder.finish().unwrap());
    // The paths asked for: a concurrent backfill reads its anchor and its first range at
    // once, so two requests may go out, but neither may be asked again.
    let requests: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&requests);
    let router = Router::new().fallback(move |uri: axum::http::Uri| {
        seen.lock().unwrap().push(uri.to_string());
        let bomb = bomb.clone();
        async move { ([(header::CONTENT_ENCODING, "gzip")], bomb) }
    });
    let vendor = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_stripe_config(dir.path(), &vendor, "max_response_mb = 8");

    let out = run_with_key(&config, &["sync"]).await;
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("larger than 8 MiB"), "{text}");
    assert!(text.contains("max_response_mb"), "{text}");
    let asked = requests.lock().unwrap().clone();
    let distinct: std::collections::HashSet<&String> = asked.iter().collect();
    assert!(!asked.is_empty());
    assert_eq!(
        distinct.len(),
        asked.len(),
        "an oversize answer is not retried: {asked:?}"
    );

    // And the cap itself is checked.
    let config = write_stripe_config(dir.path(), &vendor, "max_response_mb = 0");
    let out = run_binary(&config, &["sync"]).await;
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("invalid option `sync.max_response_mb`: must be between 1 and 4096"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_never_sent_in_clear_to_a_remote_host() {
    let dir = tempfile::tempdir().unwrap();
    // Plain http to anything but loopback would send the key in clear.
    let config = write_stripe_config(dir.path(), "http://api.stripe.com", "");
    let out = run_with_key(&config, &["check"]).await;
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("sources.stripe.api_base"), "{text}");
    assert!(text.contains("must use https://"), "{text}");
    assert!(
        !dir.path().join("warehouse/stripe").exists(),
        "something was written"
    );

    // A tracking endpoint: https only, and no password inside the URL (never printed).
    for (endpoint, expected) in [
        ("ftp://collector.test", "not ftp://"),
        ("http://collector.test", "must use https://"),
        (
            "https://user:tracking-pass-0xdeadbeef@collector.test",
            "must not carry a user name or password",
        ),
    ] {
        let config = write_stripe_config(dir.path(), "https://api.stripe.com", "");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[sources.stripe.tracking]\nendpoint = \"{endpoint}\"\nwrite_key = \"wk_0123456789\"\n"
        ));
        std::fs::write(&config, text).unwrap();
        let out = run_with_key(&config, &["check"]).await;
        let text = text_of(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("sources.stripe.tracking.endpoint"), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(
            !text.contains("0xdeadbeef"),
            "the password was printed: {text}"
        );
    }
}

/// A Salesforce source whose login URL is the hostile server.
fn write_salesforce_config(dir: &std::path::Path, login_url: &str) -> std::path::PathBuf {
    let config = dir.join("tributary.toml");
    let text = format!(
        "[warehouse]\nurl = {:?}\n\n[sources.sf]\ntype = \"salesforce\"\nlogin_url = \"{login_url}\"\nclient_id = \"hostile-client\"\nclient_secret = \"sf-client-secret-0123456789\"\nrefresh_token = \"sf-refresh-token-0123456789\"\nobjects = [\"Account\"]\n",
        dir.join("warehouse").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_redirect_does_not_repost_the_client_secret() {
    let (target, reached) = elsewhere().await;
    let location = format!("{target}/services/oauth2/token");
    let router = Router::new().route(
        "/services/oauth2/token",
        post(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
            }
        }),
    );
    let login = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_salesforce_config(dir.path(), &login);

    let out = run_binary(&config, &["sync"]).await;
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("307"), "{text}");
    assert!(text.contains("redirected"), "{text}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the form was re-posted elsewhere"
    );
    assert!(!text.contains("0123456789"), "a secret was printed: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_answer_naming_a_foreign_instance_gets_no_token() {
    let (other, reached) = elsewhere().await;
    for instance in [
        "https://acme.my.salesforce.com.attacker.test".to_owned(),
        "ftp://127.0.0.1:21".to_owned(),
        // A loopback login may name a loopback instance (the simulator), but not one on
        // another host:
        "http://attacker.test:8080".to_owned(),
    ] {
        let body = serde_json::json!({
            "access_token": "00D-hostile-access-token-0123456789",
            "instance_url": instance,
            "token_type": "Bearer",
            "issued_at": "1700000000000",
            "signature": "x",
        });
        let router = Router::new()
            .route(
                "/services/oauth2/token",
                post(move || {
                    let body = body.clone();
                    async move { axum::Json(body) }
                }),
            )
            .fallback(get(|| async { StatusCode::NOT_FOUND }));
        let login = serve(router).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_salesforce_config(dir.path(), &login);
        let out = run_binary(&config, &["check"]).await;
        let text = text_of(&out);
        assert_eq!(out.status.code(), Some(1), "{instance}: {text}");
        assert!(
            text.contains("refusing to send the access token there"),
            "{instance}: {text}"
        );
        assert!(!text.contains("hostile-access-token"), "{text}");
    }
    let _ = other;
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}
