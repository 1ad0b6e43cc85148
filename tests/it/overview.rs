//! The Source Overview: `tributary overview` counts what the syncs landed (from the volume
//! table, or from the run log for syncs made before it existed), `compact` merges the
//! volume table's files without changing a count, bad ranges are refused; `serve` counts
//! the events it lands, and its web page renders in a real headless Chromium: counts, the
//! range switched by its picker, the SVG chart, an event name holding `<script>` shown as
//! text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::common::{Env, assert_success, id_counts, read_table};
use tributary::overview::volume::{self, VolumeRow};

/// The streams of the Stripe sandbox a test syncs.
const STREAMS: [&str; 3] = ["customers", "charges", "invoices"];

/// `overview` output's records per collection of `source`: `{collection: (count, change)}`.
fn collections(stdout: &str, source: &str) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in stdout.lines() {
        if line.starts_with(&format!("{source}: ")) {
            inside = true;
            continue;
        }
        if !line.starts_with("  ") {
            inside = false;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if inside && fields.len() == 4 && fields[0] == "records" {
            out.insert(
                fields[1].to_owned(),
                (fields[2].parse().expect("a count"), fields[3].to_owned()),
            );
        }
    }
    out
}

async fn overview(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["overview"];
    all.extend_from_slice(args);
    let out = env.run(&all).await;
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows of each stream's table.
async fn landed(env: &Env) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for s in STREAMS {
        let rows = id_counts(&read_table(&env.table(s)).await).len() as u64;
        out.insert(s.to_owned(), (rows, "new".to_owned()));
    }
    out
}

fn volume_files(env: &Env) -> usize {
    std::fs::read_dir(env.warehouse().join("_tributary/volume"))
        .expect("the volume table")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_counts_the_records_syncs_landed_and_compact_keeps_them() {
    let env = Env::stripe(300, &format!("streams = {STREAMS:?}")).await;
    env.sync_ok(&[]).await;
    let expected = landed(&env).await;
    assert!(expected.values().all(|(n, _)| *n > 0), "{expected:?}");
    let out = overview(&env, &["--range", "1h"]).await;
    assert_eq!(collections(&out, "stripe"), expected, "{out}");
    let total: u64 = expected.values().map(|(n, _)| n).sum();
    assert!(
        out.contains(&format!("stripe: {total} records (new against")),
        "{out}"
    );

    // Changed objects: the second sync lands them again, and they count again.
    let ids = env.sandbox.ids("customers");
    for id in ids.iter().take(4) {
        env.sandbox
            .update(
                "customers",
                id,
                serde_json::json!({"name": format!("N-{id}")}),
            )
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;
    let out = overview(&env, &["--source", "stripe", "--range", "10m"]).await;
    let mut want = expected.clone();
    want.get_mut("customers").unwrap().0 += 4;
    assert_eq!(collections(&out, "stripe"), want, "{out}");

    // One small file per stream run that landed something; compact merges them.
    let before = volume_files(&env);
    assert_eq!(before, STREAMS.len() + 1, "one per stream run with records");
    let out = env
        .run(&["compact", "--retention-hours", "0", "--target-file-mb", "1"])
        .await;
    assert_success(&out);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains(&format!(
            "{:<40} {:>12}",
            "_tributary.volume",
            format!("{before} -> 1")
        )),
        "{report}"
    );
    assert_eq!(volume_files(&env), 1);
    let out = overview(&env, &["--range", "10m"]).await;
    assert_eq!(collections(&out, "stripe"), want, "{out}");

    // `overview --listen` serves the same counts as a page, without a collector.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["overview", "--listen", "127.0.0.1:0", "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("it prints its address within 30 s")
        .unwrap()
        .expect("a first line");
    let base = first
        .strip_prefix("Source Overview at ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let page = reqwest::get(format!("{base}?source=stripe&range=10m"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let total: u64 = want.values().map(|(n, _)| n).sum();
    assert!(
        page.contains(&format!("id=\"total\" data-total=\"{total}\"")),
        "{page}"
    );
    drop(child);

    // Ranges the overview refuses, with what to give instead.
    for (range, says) in [
        ("3w", "use 10m, 1h, 24h, 7d, 2w"),
        (
            "2020-01-01T00:00:00Z..2020-01-02T00:00:00Z",
            "last two weeks",
        ),
        (
            &format!(
                "{}..{}",
                chrono::Utc::now().to_rfc3339(),
                (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()
            ),
            "not before the end",
        ),
    ] {
        let out = env.run(&["overview", "--range", range]).await;
        assert_eq!(out.status.code(), Some(1), "{range}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{range}: {err}");
    }
    let out = env.run(&["overview", "--source", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there is no source `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn syncs_made_before_the_volume_table_are_counted_from_the_run_log() {
    let env = Env::stripe(200, &format!("streams = {STREAMS:?}")).await;
    env.sync_ok(&[]).await;
    let expected = landed(&env).await;
    // As a warehouse synced by a release without the volume table.
    std::fs::remove_dir_all(env.warehouse().join("_tributary/volume")).unwrap();
    let out = overview(&env, &["--range", "1h"]).await;
    assert_eq!(collections(&out, "stripe"), expected, "{out}");

    // The next sync creates the table before its streams start: its records are counted
    // there, the first run's still from the run log, none twice.
    let ids = env.sandbox.ids("customers");
    for id in ids.iter().take(3) {
        env.sandbox
            .update("customers", id, serde_json::json!({"name": "again"}))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;
    let out = overview(&env, &["--range", "1h"]).await;
    let mut want = expected.clone();
    want.get_mut("customers").unwrap().0 += 3;
    assert_eq!(collections(&out, "stripe"), want, "{out}");
}

/// The Chromium binary: `$TRIBUTARY_CHROMIUM` (scripts/test.sh installs Debian's
/// chromium and sets it), else `chromium` on the PATH; `None` when neither is there.
fn chromium() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("TRIBUTARY_CHROMIUM") {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`) and a new
/// empty profile; its stdout. Bounded: killed after 60 s.
async fn chromium_run(bin: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile dir");
    let run = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // This machine's network is closed: no background connections at all.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("Chromium answers within 60 s")
        .expect("Chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr` in the first element of `dom` that holds `marker`.
fn attr_after(dom: &str, marker: &str, attr: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in\n{dom}"));
    let tag_start = dom[..at].rfind('<').unwrap_or(0);
    let tag = &dom[tag_start..];
    let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
    let key = format!("{attr}=\"");
    let v = tag.find(&key).unwrap_or_else(|| panic!("{attr} in {tag}"));
    let rest = &tag[v + key.len()..];
    rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
}

/// The `(data-kind, number of points, data-total)` of each chart series in `dom`.
fn series(dom: &str) -> Vec<(String, usize, u64)> {
    dom.split("<polyline")
        .skip(1)
        .map(|p| {
            let tag = &p[..p.find('>').unwrap_or(p.len())];
            let get = |k: &str| {
                let key = format!("{k}=\"");
                let v = &tag[tag.find(&key).expect(k) + key.len()..];
                v[..v.find('"').unwrap()].to_owned()
            };
            (
                get("data-kind"),
                get("points").split_whitespace().count(),
                get("data-total").parse().unwrap(),
            )
        })
        .collect()
}

const KEY: &str = "overview-write-key-0123456789abcdef";

/// A running `serve`: its collector URL and its Source Overview page's URL.
struct Serve {
    child: tokio::process::Child,
    url: String,
    page: String,
}

impl Serve {
    async fn start(env: &Env) -> Serve {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve", "--listen", "127.0.0.1:0", "--spool"])
            .arg(env.dir.path().join("spool"))
            .arg("--config")
            .arg(&env.config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut page) = (String::new(), String::new());
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(u) = line.strip_prefix("Collector listening on ") {
                    url = u.to_owned();
                }
                if let Some(u) = line.strip_prefix("Source Overview at ") {
                    page = u.to_owned();
                    return;
                }
            }
            panic!("serve exited before listening");
        })
        .await
        .expect("serve listens within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        assert!(
            page.starts_with(&url) && page.ends_with("/overview"),
            "{url} {page}"
        );
        Serve { child, url, page }
    }

    /// SIGTERM; it lands its spool and appends the last volume counts before it exits.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve stops within 60 s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "serve exit {status:?}");
    }
}

/// `overview` output's events of `source`: `{(type, name): (count, change)}`.
fn events(stdout: &str, source: &str) -> BTreeMap<(String, String), (u64, String)> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in stdout.lines() {
        if line.starts_with(&format!("{source}: ")) {
            inside = true;
            continue;
        }
        if !line.starts_with("  ") {
            inside = false;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if inside && fields.len() >= 4 && fields[0] != "event" {
            let n = fields.len();
            out.insert(
                (fields[0].to_owned(), fields[1..n - 2].join(" ")),
                (
                    fields[n - 2].parse().expect("a count"),
                    fields[n - 1].to_owned(),
                ),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_counts_what_it_lands_and_its_overview_page_renders_in_headless_chromium() {
    let env = Env::stripe(100, "streams = [\"customers\"]").await;
    // An event-stream source beside the Stripe source, collected by `serve`.
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "\n[sources.web]\ntype = \"http\"\nwrite_keys = [\"{KEY}\"]\n\n[serve]\ncommit_interval_ms = 100\n"
    ));
    std::fs::write(&env.config, config).unwrap();
    env.sync_ok(&[]).await;
    let customers = id_counts(&read_table(&env.table("customers")).await).len() as u64;
    assert!(customers > 0);

    // Earlier volume of the source, as a collector appended it then (the collector counts
    // at the minute it receives a message, so a test cannot send into the past).
    let warehouse = tributary::warehouse::Warehouse::new(
        &tributary::config::load(&env.config).unwrap().warehouse,
    )
    .unwrap();
    let now = chrono::Utc::now();
    let earlier = |ago: i64, kind: &str, name: Option<&str>, count| VolumeRow {
        minute: now - chrono::Duration::minutes(ago),
        source: "web".into(),
        kind: kind.into(),
        name: name.map(str::to_owned),
        count,
    };
    volume::append(
        &warehouse,
        &[
            // The hour before the last one.
            earlier(90, "track", Some("Order Completed"), 2),
            // Three hours ago: in the last 24 hours, not the last hour.
            earlier(180, "page", None, 7),
        ],
    )
    .await
    .unwrap();

    // Events sent now, over HTTP: one batch, one single call, one repeated messageId.
    let serve = Serve::start(&env).await;
    let evil = "<script>document.title='pwned'</script>";
    let mut batch = Vec::new();
    for i in 0..3 {
        batch.push(serde_json::json!({"type": "track", "event": "Order Completed", "userId": "u1", "messageId": format!("oc-{i}")}));
    }
    for i in 0..2 {
        batch.push(serde_json::json!({"type": "track", "event": evil, "anonymousId": "a1", "messageId": format!("evil-{i}")}));
    }
    for i in 0..3 {
        batch.push(serde_json::json!({"type": "identify", "userId": format!("u{i}"), "messageId": format!("id-{i}")}));
    }
    // A duplicate: landed (and counted) once.
    batch.push(serde_json::json!({"type": "identify", "userId": "u0", "messageId": "id-0"}));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answer = http
        .post(format!("{}/v1/batch", serve.url))
        .basic_auth(KEY, Some(""))
        .json(&serde_json::json!({ "batch": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer = http
        .post(format!("{}/v1/identify", serve.url))
        .basic_auth(KEY, Some(""))
        .json(&serde_json::json!({"userId": "u9", "messageId": "id-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // The collector appends its counts a second or so after landing them: wait (bounded)
    // until the page counts the 9 events of the last hour.
    let url = format!("{}?source=web&range=1h", serve.page);
    let mut page = String::new();
    for _ in 0..120 {
        page = http.get(&url).send().await.unwrap().text().await.unwrap();
        if page.contains("data-total=\"9\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(page.contains("id=\"total\" data-total=\"9\""), "{page}");

    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED the headless-Chromium part: no `chromium` on the PATH and TRIBUTARY_CHROMIUM unset (scripts/test.sh installs Debian's chromium and sets it)"
        );
        serve.stop().await;
        return;
    };
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("test-output");
    std::fs::create_dir_all(&out_dir).unwrap();

    // The list of sources.
    let dom = chromium_run(&bin, &format!("{}?range=1h", serve.page), &["--dump-dom"]).await;
    assert_eq!(
        attr_after(&dom, "data-source=\"web\"", "data-source"),
        "web"
    );
    assert!(
        dom.contains(&format!(">{customers}</td>")),
        "{customers} customers in\n{dom}"
    );
    assert!(dom.contains(">9</td>"), "9 web events in\n{dom}");

    // One event-stream source over the last hour.
    let dom = chromium_run(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("<title>web · Source Overview</title>"),
        "the event name ran as a script:\n{dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the event name is shown as text:\n{dom}"
    );
    assert_eq!(
        attr_after(&dom, "data-name=\"Order Completed\"", "data-count"),
        "3"
    );
    assert!(dom.contains(">+50%<"), "3 against 2: {dom}");
    assert_eq!(
        attr_after(&dom, "data-kind=\"identify\" data-name", "data-count"),
        "4"
    );
    assert_eq!(attr_after(&dom, "id=\"total\"", "data-total"), "9");
    assert!(!dom.contains("data-kind=\"page\" data-name"), "{dom}");
    assert_eq!(
        series(&dom),
        [("track".to_owned(), 60, 5), ("identify".to_owned(), 60, 4)]
    );
    chromium_run(
        &bin,
        &url,
        &[&format!(
            "--screenshot={}",
            out_dir.join("overview-1h.png").display()
        )],
    )
    .await;

    // Switched to the last 24 hours by the picker's link.
    let href = attr_after(&dom, "data-range=\"24h\"", "href").replace("&amp;", "&");
    assert_eq!(href, "?source=web&range=24h");
    let url = format!("{}{href}", serve.page);
    let dom = chromium_run(&bin, &url, &["--dump-dom"]).await;
    assert_eq!(attr_after(&dom, "id=\"total\"", "data-total"), "18");
    assert_eq!(attr_after(&dom, "id=\"chart\"", "data-buckets"), "96");
    assert_eq!(
        attr_after(&dom, "data-kind=\"page\" data-name", "data-count"),
        "7"
    );
    let drawn = series(&dom);
    assert_eq!(drawn.len(), 3, "{drawn:?}");
    assert_eq!(
        drawn.iter().map(|(_, _, t)| t).sum::<u64>(),
        18,
        "{drawn:?}"
    );
    assert!(
        drawn.iter().all(|(_, points, _)| *points == 96),
        "{drawn:?}"
    );
    let png = out_dir.join("overview.png");
    chromium_run(&bin, &url, &[&format!("--screenshot={}", png.display())]).await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "a screenshot at {}", png.display());
    eprintln!("screenshot kept at {}", png.display());

    // A custom range within two weeks, as the picker's form sends it.
    let from =
        (now - chrono::Duration::hours(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let custom = format!(
        "{}?source=web&from={}&to={}",
        serve.page,
        url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
    );
    let dom = chromium_run(&bin, &custom, &["--dump-dom"]).await;
    assert_eq!(
        attr_after(&dom, "id=\"total\"", "data-total"),
        "18",
        "{dom}"
    );

    // A range the page refuses: an error on the page, still with its picker.
    let dom = chromium_run(
        &bin,
        &format!(
            "{}?source=web&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
            serve.page
        ),
        &["--dump-dom"],
    )
    .await;
    assert!(dom.contains("last two weeks"), "{dom}");
    assert!(dom.contains("id=\"picker\""), "{dom}");

    // The same counts on the command line, after the collector stopped.
    serve.stop().await;
    let out = overview(&env, &["--source", "web", "--range", "1h"]).await;
    let got = events(&out, "web");
    assert_eq!(
        got.get(&("track".to_owned(), "Order Completed".to_owned())),
        Some(&(3, "+50%".to_owned())),
        "{out}"
    );
    assert_eq!(
        got.get(&("identify".to_owned(), "-".to_owned())),
        Some(&(4, "new".to_owned())),
        "{out}"
    );
    assert!(out.contains("web: 9 events (+350% against"), "{out}");
}
