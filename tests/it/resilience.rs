//! One source's trouble stays that source's: a source whose discovery fails is one FAILED
//! line while the others sync, and SIGTERM reaches every phase (discovery and check
//! included), so a vendor that never answers cannot pin the process.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use tributary_salesforce::sandbox::{self as sf, SalesforceSandbox};
use tributary_zendesk::sandbox::ZendeskSandbox;

use crate::common::{Env, read_table, run_binary};

/// A Stripe simulator source plus a Salesforce source whose refresh token the simulator
/// refuses.
async fn stripe_and_refused_salesforce() -> (Env, SalesforceSandbox) {
    let env = Env::stripe(30, "streams = [\"charges\"]").await;
    let salesforce = SalesforceSandbox::start(Default::default(), 0)
        .await
        .expect("sandbox starts");
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[sources.salesforce]\ntype = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nrefresh_token = \"revoked-refresh-token\"\nobjects = [\"Account\"]\n",
        salesforce.url(),
        sf::CLIENT_ID,
        sf::CLIENT_SECRET
    ));
    std::fs::write(&env.config, text).unwrap();
    (env, salesforce)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_cannot_be_discovered_does_not_stop_the_others() {
    let (env, _salesforce) = stripe_and_refused_salesforce().await;

    let out = env.run(&["sync"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(
        failed[0].starts_with("salesforce") && failed[0].contains("rejected the credentials"),
        "{text}"
    );
    assert!(!text.contains("revoked-refresh-token"), "{text}");
    assert!(text.contains("stripe.charges"), "{text}");
    let rows: usize = read_table(&env.table("charges"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 30, "{text}");
    assert!(
        !env.warehouse().join("salesforce").exists(),
        "nothing of the failed source is written"
    );

    let out = env.run(&["check"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stripe") && l.contains(" ok (")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("salesforce") && l.contains("FAILED")),
        "{text}"
    );

    let out = env.run(&["discover"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stripe.charges"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("salesforce") && l.contains("FAILED")),
        "{text}"
    );
}

/// A TCP server that accepts connections and never answers; reports each accept.
async fn silent_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = tx.send(());
        }
    });
    (url, rx)
}

fn spawn(config: &Path, command: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([command, "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_vendor_never_answers_stops_at_once() {
    let (url, mut accepted) = silent_server().await;
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    let config = dir.path().join("tributary.toml");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nurl = {:?}\n[sources.zendesk]\ntype = \"zendesk\"\nsubdomain = \"{}\"\nemail = \"{}\"\napi_token = \"{}\"\napi_base = \"{url}\"\n",
            warehouse.display().to_string(),
            ZendeskSandbox::SUBDOMAIN,
            ZendeskSandbox::EMAIL,
            ZendeskSandbox::API_TOKEN,
        ),
    )
    .unwrap();
    for command in ["sync", "check", "discover"] {
        let child = spawn(&config, command);
        // The request is in flight (discovery's ticket_fields, or check's call).
        tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .expect("the binary connects to the vendor");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.id().expect("still running").to_string();
        let sent = Instant::now();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{command}: still running 20 s after SIGTERM"))
            .unwrap();
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{command}: took {:?} to stop: {text}",
            sent.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "{command}: {text}");
        assert!(
            stdout(&out)
                .lines()
                .any(|l| l.starts_with("zendesk") && l.contains("cancelled")),
            "{command}: {text}"
        );
        assert!(
            !warehouse.join("zendesk").exists(),
            "{command}: nothing committed: {text}"
        );
        while accepted.try_recv().is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_mistake_still_stops_everything_before_anything_runs() {
    // Unlike a vendor being down, an invalid option is the user's to fix now: no source
    // syncs, and the error names the key.
    let env = Env::stripe(5, "page_size = 4321").await;
    let out = run_binary(&env.config, &["sync"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`sources.stripe.page_size`") && stderr.contains("between 1 and 100"),
        "{stderr}"
    );
    assert!(!stderr.contains("4321"), "{stderr}");
    assert!(!env.warehouse().join("stripe").exists(), "{stderr}");
}
