//! Stream leases between workers: two `sync`s of one stream at once (one reports
//! `leased`, naming the holder, and both exit 0; every record lands once), a SIGKILLed
//! sync whose lease blocks the stream until it expires and a later sync then finishes
//! from the committed cursor, `state` listing a live lease, `lease release` refused
//! while live and forced; and two syncs on S3 (moto), whose puts are conditional.

use std::path::Path;
use std::time::Duration;

use crate::common::{Env, id_counts, read_table, spawn};

/// Stripe charges only, `records` of them, answered after `latency_ms` each request.
async fn slow_stripe(records: usize, latency_ms: u64, sync: &str) -> Env {
    let env = Env::stripe(records, "streams = [\"charges\"]").await;
    env.add_sync_option(sync);
    let answer = reqwest::Client::new()
        .post(format!("{}/_sandbox/latency", env.sandbox.url()))
        .json(&serde_json::json!({ "latency_ms": latency_ms }))
        .send()
        .await
        .expect("the simulator answers");
    assert!(answer.status().is_success(), "{}", answer.status());
    env
}

fn lease_dir(env: &Env) -> std::path::PathBuf {
    env.warehouse().join("_tributary/leases/stripe/charges")
}

/// The newest lease record of stripe.charges, if any.
fn lease_record(env: &Env) -> Option<serde_json::Value> {
    let mut names: Vec<_> = std::fs::read_dir(lease_dir(env))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let text = std::fs::read_to_string(names.last()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Waits (at most 30 s) until `ready` holds.
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn committed_versions(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Starts a sync, waits for its lease and a commit with rows (versions 0 and 1 create the
/// table), and SIGKILLs it. Returns the owner id it held the lease as.
async fn kill_after_a_commit(env: &Env) -> String {
    let mut child = spawn(env, "sync");
    let table = env.table("charges");
    wait_for("a commit of the first sync", || {
        committed_versions(&table) >= 3
    })
    .await;
    let owner = lease_record(env).expect("the sync holds a lease")["owner"]
        .as_str()
        .expect("owner")
        .to_owned();
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the sync ended before it could be killed: make it slower"
    );
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    owner
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn summary_line<'a>(text: &'a str, stream: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(stream))
        .unwrap_or_else(|| panic!("no summary line for {stream}:\n{text}"))
}

async fn assert_every_charge_once(env: &Env, records: usize) {
    let counts = id_counts(&read_table(&env.table("charges")).await);
    assert_eq!(counts.len(), records, "every charge landed");
    assert!(
        counts.values().all(|n| *n == 1),
        "a charge landed twice: {:?}",
        counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_syncs_of_one_stream_at_once_one_is_leased_and_every_record_lands_once() {
    let records = 1500;
    let env = slow_stripe(records, 150, "commit_every = 200").await;
    let first = spawn(&env, "sync");
    // The second starts once the first holds the lease, so it meets a live one.
    wait_for("the first sync's lease", || lease_record(&env).is_some()).await;
    let holder = lease_record(&env).expect("lease")["owner"]
        .as_str()
        .expect("owner")
        .to_owned();
    let second = env.run(&["sync"]).await;
    let first = tokio::time::timeout(Duration::from_secs(120), first.wait_with_output())
        .await
        .expect("the first sync ends")
        .expect("output");

    let (text1, text2) = (stdout(&first), stdout(&second));
    assert_eq!(first.status.code(), Some(0), "{text1}");
    assert_eq!(
        second.status.code(),
        Some(0),
        "a leased stream is not a failure:\n{text2}"
    );
    assert!(
        summary_line(&text1, "stripe.charges").ends_with(" ok"),
        "{text1}"
    );
    let line = summary_line(&text2, "stripe.charges");
    assert!(line.ends_with(" leased") && line.contains(" 0 "), "{text2}");
    assert!(
        text2.contains(&format!("held by {holder} until ")),
        "the skipped run names the holder and its expiry:\n{text2}"
    );
    assert!(text2.contains("1 streams leased"), "{text2}");
    assert_every_charge_once(&env, records).await;
    // Released at the end of the sync.
    assert_eq!(lease_record(&env).expect("lease")["released"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_syncs_lease_blocks_until_expiry_then_a_sync_resumes_from_its_cursor() {
    let records = 1500;
    let env = slow_stripe(records, 200, "commit_every = 200\nlease_seconds = 4").await;
    let owner = kill_after_a_commit(&env).await;
    let pid = owner.split(':').nth(1).expect("host:pid:random").to_owned();

    // Right after the kill the dead worker's lease is still live.
    let blocked = env.run(&["sync"]).await;
    let text = stdout(&blocked);
    assert_eq!(blocked.status.code(), Some(0), "{text}");
    let line = summary_line(&text, "stripe.charges");
    assert!(line.ends_with(" leased"), "{text}");
    assert!(
        text.contains(&format!(":{pid}:")),
        "names the killed worker:\n{text}"
    );

    // After the expiry a sync takes over and lands the rest, from the committed cursor.
    let expires: chrono::DateTime<chrono::Utc> = lease_record(&env).expect("lease")["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("a time");
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let state = stdout(&env.run(&["state"]).await);
    assert!(
        state.contains("lease: expired at") && state.contains(&owner),
        "{state}"
    );
    let resumed = env.run(&["sync"]).await;
    let text = stdout(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{text}");
    let line = summary_line(&text, "stripe.charges");
    assert!(line.ends_with(" ok"), "{text}");
    let landed: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("records column");
    assert!(
        landed < records,
        "the takeover resumed from the committed cursor, not from the start ({landed} landed):\n{text}\nstate before it:\n{state}"
    );
    assert_every_charge_once(&env, records).await;
    let record = lease_record(&env).expect("lease");
    assert_eq!(record["released"], true);
    assert_ne!(record["owner"].as_str(), Some(owner.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn state_lists_a_live_lease_and_release_is_refused_until_forced() {
    let records = 1500;
    let env = slow_stripe(records, 200, "commit_every = 200\nlease_seconds = 600").await;
    let owner = kill_after_a_commit(&env).await;

    let state = env.run(&["state"]).await;
    let text = stdout(&state);
    assert!(state.status.success(), "{text}");
    assert!(
        text.contains(&format!("lease: live, held by {owner} until ")),
        "{text}"
    );

    let args = [
        "lease", "release", "--source", "stripe", "--stream", "charges",
    ];
    let refused = env.run(&args).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is live") && err.contains(&owner) && err.contains("--force"),
        "{err}"
    );
    assert!(lease_record(&env).expect("lease")["released"] == false);

    let unknown = env
        .run(&[
            "lease", "release", "--source", "nope", "--stream", "charges",
        ])
        .await;
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(1), "{err}");
    assert!(err.contains("no source `nope`"), "{err}");

    let forced = env.run(&[&args[..], &["--force"]].concat()).await;
    let text = stdout(&forced);
    assert!(forced.status.success(), "{text}");
    assert!(
        text.contains("released a live lease by force") && text.contains(&owner),
        "{text}"
    );
    let state = stdout(&env.run(&["state"]).await);
    assert!(!state.contains("lease:"), "{state}");

    // Freed: the next sync takes the stream at once and finishes it.
    let synced = env.run(&["sync"]).await;
    let text = stdout(&synced);
    assert!(synced.status.success(), "{text}");
    assert!(
        summary_line(&text, "stripe.charges").ends_with(" ok"),
        "{text}"
    );
    assert_every_charge_once(&env, records).await;
    let again = stdout(&env.run(&args).await);
    assert!(again.contains("free already"), "{again}");
}

/// Waits (at most 30 s) until `tributary state` shows a live lease; returns its line.
async fn live_lease_in_state(env: &Env) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = stdout(&env.run(&["state"]).await);
        if let Some(line) = state.lines().find(|l| l.contains("lease: live")) {
            return line.trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live lease in `state`:\n{state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_s3_a_second_sync_meets_the_first_ones_lease() {
    let moto = crate::moto::Moto::start().await;
    moto.create_bucket("lake", false).await;
    let bucket = crate::stores::Bucket::new(crate::stores::Kind::S3, &moto.endpoint);
    let records = 1500;
    let env = slow_stripe(records, 200, "commit_every = 200").await;
    env.use_bucket(&bucket.warehouse_section("raw", ""));
    let first = spawn(&env, "sync");
    let line = live_lease_in_state(&env).await;
    let second = env.run(&["sync"]).await;
    let first = tokio::time::timeout(Duration::from_secs(120), first.wait_with_output())
        .await
        .expect("the first sync ends")
        .expect("output");
    let (text1, text2) = (stdout(&first), stdout(&second));
    assert_eq!(first.status.code(), Some(0), "{text1}");
    assert_eq!(second.status.code(), Some(0), "{text2}");
    assert!(
        summary_line(&text1, "stripe.charges").ends_with(" ok"),
        "{text1}"
    );
    assert!(
        summary_line(&text2, "stripe.charges").ends_with(" leased"),
        "{text2}"
    );
    // `state` named the same holder the skipped sync did.
    let holder = line
        .split("held by ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a holder");
    assert!(
        text2.contains(&format!("held by {holder} until ")),
        "{line}\n{text2}"
    );
    let ids: Vec<String> = bucket
        .rows("raw/stripe/charges", "id")
        .await
        .iter()
        .map(|row| row["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut unique: Vec<&String> = ids.iter().collect();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (records, records));
    let state = stdout(&env.run(&["state"]).await);
    assert!(!state.contains("lease:"), "released at the end:\n{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_whose_lease_is_freed_by_force_stops_before_its_next_commit() {
    let records = 3000;
    let env = slow_stripe(records, 300, "commit_every = 100\nlease_seconds = 3").await;
    let child = spawn(&env, "sync");
    let table = env.table("charges");
    wait_for("a commit of the sync", || committed_versions(&table) >= 3).await;
    let args = [
        "lease", "release", "--source", "stripe", "--stream", "charges", "--force",
    ];
    let forced = env.run(&args).await;
    assert!(forced.status.success(), "{}", stdout(&forced));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the sync ends")
        .expect("output");
    let text = stdout(&out);
    // It ran past its next renewal (a second) after the release; had it finished first,
    // make the simulator slower.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        summary_line(&text, "stripe.charges").ends_with(" failed")
            && text.contains("lost the lease on stripe.charges")
            && text.contains("stopped before the next commit"),
        "{text}"
    );
    let versions = committed_versions(&table);
    // The next sync lands the rest, every charge once.
    let synced = env.run(&["sync"]).await;
    assert!(synced.status.success(), "{}", stdout(&synced));
    assert!(committed_versions(&table) > versions);
    assert_every_charge_once(&env, records).await;
}
