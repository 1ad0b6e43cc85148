//! `demo`, and where a newcomer goes next: the config it leaves and the `sandbox all`
//! command it prints serve `state` and `sync` with no config written by hand.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{assert_success, id_counts, read_table};

fn tributary(dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"));
    command.current_dir(dir).kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_lands_every_vendor_and_leaves_a_config_to_go_on_with() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tributary(dir.path())
        .args(["demo", "--records", "40"])
        .output()
        .await
        .expect("demo runs");
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for table in [
        "stripe.customers",
        "stripe.events",
        "zendesk.tickets",
        "salesforce.account",
    ] {
        assert!(stdout.contains(table), "{table} in\n{stdout}");
    }
    assert!(stdout.contains("syncing again, incrementally"), "{stdout}");
    // The reverse-ETL preview over the synced customers: one identify call per customer
    // with an email that is not deleted, none sent, nothing recorded.
    let customers = read_table(&dir.path().join("warehouse/stripe/customers")).await;
    let deleted = crate::common::strings(&customers, "is_deleted");
    let with_email = crate::common::strings(&customers, "email")
        .iter()
        .zip(&deleted)
        .filter(|(e, d)| !e.is_empty() && d.as_str() == "false")
        .count();
    assert!(
        stdout.contains(&format!(
            "would send {with_email} rows: {with_email} added, 0 updated, 0 deleted; {with_email} calls (preview"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\"type\":\"identify\""), "{stdout}");
    assert!(!dir.path().join("warehouse/_tributary/retl").exists());
    for table in ["stripe/charges", "zendesk/tickets", "salesforce/account"] {
        let rows = read_table(&dir.path().join("warehouse").join(table)).await;
        assert!(!id_counts(&rows).is_empty(), "{table}");
    }
    // Every vendor the registry knows (a newly registered one included) has
    // its section in the config and tables with rows, and every one of its tables is in
    // the summary.
    let config = std::fs::read_to_string(dir.path().join("tributary.demo.toml"))
        .expect("demo leaves its config");
    for vendor in tributary::registry::vendors() {
        let kind = vendor.source.kind;
        let section = format!("[sources.{kind}]");
        assert!(config.contains(&section), "{section} in\n{config}");
        let root = dir.path().join("warehouse").join(kind);
        let mut rows = 0;
        for table in std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.join("_delta_log").is_dir())
        {
            let name = format!("{kind}.{}", table.file_name().unwrap().to_string_lossy());
            if !name.ends_with("_history") {
                assert!(
                    stdout.contains(&name),
                    "{name} not in the summary\n{stdout}"
                );
            }
            rows += id_counts(&read_table(&table).await).len();
        }
        assert!(rows > 0, "no rows landed for {kind}");
    }
    // The collector part: every message sent through `serve` landed once, and the
    // overview it printed counts them per call type and event name.
    let rounds = tributary::demo::DEMO_ROUNDS;
    let sent: usize = tributary::demo::DEMO_BATCH
        .iter()
        .map(|(_, _, n)| n)
        .sum::<usize>()
        * rounds;
    assert!(
        stdout.contains(&format!("Sent {sent} messages to source `web`")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("web: {sent} events (new against")),
        "{stdout}"
    );
    for (call, event, n) in tributary::demo::DEMO_BATCH {
        let table = match call {
            "identify" => "identifies".to_owned(),
            "alias" => "aliases".to_owned(),
            other => format!("{other}s"),
        };
        let landed = id_counts(&read_table(&dir.path().join("warehouse/web").join(&table)).await);
        assert!(landed.values().all(|c| *c == 1), "{table}: duplicates");
        let want = match call {
            // Every track is in `tracks`.
            "track" => {
                tributary::demo::DEMO_BATCH
                    .iter()
                    .filter(|(c, _, _)| *c == "track")
                    .map(|(_, _, n)| n)
                    .sum::<usize>()
                    * rounds
            }
            _ => n * rounds,
        };
        assert_eq!(landed.len(), want, "{table}");
        let line = stdout
            .lines()
            .skip_while(|l| !l.starts_with("web: "))
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&call) && f[1..f.len() - 2].join(" ") == event.unwrap_or("-")
            })
            .unwrap_or_else(|| panic!("{call} {event:?} in\n{stdout}"));
        assert!(
            line.split_whitespace().rev().nth(1) == Some(&(n * rounds).to_string()),
            "{line}"
        );
    }
    // The command that serves the simulators again, as printed.
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("tributary sandbox all"))
        .unwrap_or_else(|| panic!("no `sandbox all` line in\n{stdout}"));
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let port: u16 = args[args.iter().position(|a| *a == "--port").unwrap() + 1]
        .parse()
        .unwrap();

    let mut sandboxes = tributary(dir.path())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sandbox all starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let vendors = u16::try_from(tributary::registry::vendors().len()).unwrap();
    for p in port..port + vendors {
        while tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {p} never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let state = tributary(dir.path())
        .args(["--config", "tributary.demo.toml", "state"])
        .output()
        .await
        .unwrap();
    assert_success(&state);
    let text = String::from_utf8_lossy(&state.stdout);
    assert!(
        text.contains("stripe.customers") && text.contains("\"phase\""),
        "{text}"
    );
    let sync = tributary(dir.path())
        .args(["--config", "tributary.demo.toml", "sync"])
        .output()
        .await
        .unwrap();
    assert_success(&sync);
    let summary = String::from_utf8_lossy(&sync.stdout);
    assert!(summary.contains("0 failed"), "{summary}");
    sandboxes.kill().await.expect("stops");
}
