//! The fleet test (issue 17): four `tributary run` daemons on one S3 bucket (moto, versioned)
//! with the same config — Stripe (`customers` with `history = true`, `events` tracked to a
//! fake collector) and Zendesk (`tickets`, `users`), every source on a 1-second cron — while
//! customers are created and renamed in the Stripe simulator. One daemon is SIGKILLed while
//! it holds a lease, and restarted. Then, from the records the daemons left (tables, Delta
//! logs, the run log, the leases, the collector), not from timing guesses:
//! - every stream's table holds exactly the simulator's objects, each once; the history
//!   holds every version landed once;
//! - every table's log is gap-free with the stream's `txn` 1, 2, 3, … (no commit written
//!   twice: the bucket is versioned), each commit made by a run whose run-log interval for
//!   that stream contains it, and no two runs' commits interleave;
//! - the run log's intervals of the runs that held a stream's lease never overlap;
//! - the killed daemon's orphaned leases blocked their streams until they expired, and
//!   another daemon synced those streams after that;
//! - every Stripe event reached the collector, under its own messageId, and a messageId
//!   came twice only if it had first been accepted before the kill (its ack died with the
//!   daemon).
//!
//! With `--nocapture` it prints the figures quoted in README ("Running at scale").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde_json::json;
use tributary::config::WarehouseConfig;
use tributary::warehouse::Warehouse;
use tributary_stripe::sandbox::{SandboxConfig as StripeConfig, StripeSandbox};
use tributary_zendesk::sandbox::{SandboxConfig as ZendeskConfig, ZendeskSandbox};

use crate::common::{Vendor, signal, strings, terminate};
use crate::moto::Moto;
use crate::stores::{Bucket, DeltaLog, Kind};
use crate::stripe::tracking::{Collector, start as start_collector};
use crate::zendesk::Zendesk;

/// How many `run` daemons share the bucket.
const DAEMONS: usize = 4;
/// How long the simulators get new objects while the daemons run.
const LOAD: Duration = Duration::from_secs(12);
/// When (into the load) one daemon is killed.
const KILL_AFTER: Duration = Duration::from_secs(4);
/// `sync.lease_seconds`: short, so the killed daemon's leases expire within the test.
const LEASE_SECONDS: u64 = 3;

/// One daemon: its process, its log file and its pid.
struct Daemon {
    child: tokio::process::Child,
    log: PathBuf,
    pid: u32,
}

fn start_daemon(config: &Path, dir: &Path, name: &str) -> Daemon {
    let log = dir.join(format!("{name}.log"));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).expect("output file"))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let pid = child.id().expect("running");
    Daemon { child, log, pid }
}

/// The pid in a lease owner id (`host:pid:random`).
fn pid_of(owner: &str) -> Option<u32> {
    owner.split(':').nth(1).and_then(|p| p.parse().ok())
}

/// The newest lease record of every stream, read from the bucket.
async fn leases(bucket: &Bucket) -> BTreeMap<String, serde_json::Value> {
    let store = bucket.store();
    let prefix = object_store::path::Path::from("raw/_tributary/leases");
    let listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .expect("the leases list");
    let mut newest: BTreeMap<String, object_store::path::Path> = BTreeMap::new();
    for meta in listed {
        let key = meta.location.as_ref().to_owned();
        let Some((dir, _)) = key.rsplit_once('/') else {
            continue;
        };
        let stream = dir.trim_start_matches("raw/_tributary/leases/").to_owned();
        if newest
            .get(&stream)
            .is_none_or(|p| p.as_ref() < key.as_str())
        {
            newest.insert(stream, meta.location);
        }
    }
    let mut out = BTreeMap::new();
    for (stream, path) in newest {
        // Its holder may have replaced it meanwhile: then it is not needed here.
        if let Ok(got) = store.get(&path).await
            && let Ok(bytes) = got.bytes().await
            && let Ok(record) = serde_json::from_slice(&bytes)
        {
            out.insert(stream, record);
        }
    }
    out
}

/// Every live row of the Delta table at `parts` of the warehouse (deletion vectors
/// applied), read through deltalake and object_store; empty when there is no table yet.
async fn read(warehouse: &Warehouse, parts: &[&str]) -> Vec<RecordBatch> {
    match warehouse.open(parts).await.expect("the table opens") {
        Some(table) => crate::common::live_batches(&table).await,
        None => Vec::new(),
    }
}

/// A timestamp column as microseconds.
fn micros(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(column).expect("column");
        let c = arrow::compute::cast(c, &DataType::Int64).expect("cast");
        let c = c.as_primitive::<Int64Type>();
        out.extend((0..c.len()).map(|i| c.value(i)));
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The ids in a table, each with how many rows it has.
fn counts(batches: &[RecordBatch]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in strings(batches, "id") {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// One row of the run log.
#[derive(Debug, Clone)]
struct Run {
    run_id: String,
    stream: String,
    started: i64,
    ended: i64,
    records: i64,
    status: String,
    worker: String,
}

async fn run_log(warehouse: &Warehouse) -> Vec<Run> {
    let b = read(warehouse, &["_tributary", "sync_runs"]).await;
    let (run_id, source, stream) = (
        strings(&b, "run_id"),
        strings(&b, "source"),
        strings(&b, "stream"),
    );
    let (status, worker) = (strings(&b, "status"), strings(&b, "worker"));
    let (started, ended) = (micros(&b, "started_at"), micros(&b, "ended_at"));
    let records: Vec<i64> = strings(&b, "records")
        .iter()
        .map(|r| r.parse().unwrap_or(0))
        .collect();
    (0..run_id.len())
        .map(|i| Run {
            run_id: run_id[i].clone(),
            stream: format!("{}/{}", source[i], stream[i]),
            started: started[i],
            ended: ended[i],
            records: records[i],
            status: status[i].clone(),
            worker: worker[i].clone(),
        })
        .collect()
}

/// Whether every stream's table holds what its simulator has.
struct Want {
    customers: Vec<String>,
    events: Vec<String>,
    tickets: Vec<String>,
    users: Vec<String>,
}

impl Want {
    fn of(stripe: &StripeSandbox, zendesk: &ZendeskSandbox) -> Want {
        Want {
            customers: sorted(stripe.ids("customers")),
            events: sorted(stripe.ids("events")),
            tickets: sorted(zendesk.ids("tickets")),
            users: sorted(zendesk.ids("users")),
        }
    }
}

/// Whether the tables and the collector have caught up with the simulators.
async fn caught_up(warehouse: &Warehouse, want: &Want, collector: &Collector) -> bool {
    let ids = |b: &[RecordBatch]| sorted(counts(b).into_keys().collect());
    let delivered: HashSet<String> = collector.ids().into_iter().collect();
    want.events
        .iter()
        .all(|e| delivered.contains(&tributary_sdk::tracking::message_id("stripe", e)))
        && ids(&read(warehouse, &["stripe", "customers"]).await) == want.customers
        && ids(&read(warehouse, &["stripe", "events"]).await) == want.events
        && ids(&read(warehouse, &["zendesk", "tickets"]).await) == want.tickets
        && ids(&read(warehouse, &["zendesk", "users"]).await) == want.users
}

fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn four_run_daemons_on_one_bucket_with_a_kill_sync_every_stream_once() {
    let wall = Instant::now();
    let moto = Moto::start().await;
    moto.create_bucket("lake", true).await;
    let bucket = Bucket::new(Kind::S3, &moto.endpoint);
    let warehouse = Warehouse::new(&WarehouseConfig {
        url: bucket.url("raw"),
        options: bucket
            .options()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ..Default::default()
    })
    .expect("the warehouse");

    let stripe = StripeSandbox::start(
        StripeConfig {
            records: 100,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("the Stripe simulator starts");
    let zendesk = ZendeskSandbox::start(
        ZendeskConfig {
            records: 60,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("the Zendesk simulator starts");
    let collector = Arc::new(Collector::default());
    let collector_url = start_collector(Arc::clone(&collector)).await;

    let dir = tempfile::Builder::new()
        .prefix("fleet-")
        .tempdir()
        .expect("temp dir");
    let config = dir.path().join("tributary.toml");
    let every_second = "schedule = \"* * * * * *\"";
    std::fs::write(
        &config,
        format!(
            "[warehouse]\n{warehouse}\n\n[sync]\nbatch_size = 500\nlease_seconds = {LEASE_SECONDS}\n\n\
             [sources.stripe]\ntype = \"stripe\"\n{stripe_lines}streams = [\"customers\", \"events\"]\nhistory = true\n{every_second}\n\n\
             [sources.stripe.tracking]\nendpoint = \"{collector_url}\"\nwrite_key = \"wk\"\n\n\
             [sources.zendesk]\ntype = \"zendesk\"\n{zendesk_lines}requests_per_minute = 600000\nexport_requests_per_minute = 600000\nstreams = [\"tickets\", \"users\"]\n{every_second}\n",
            warehouse = bucket.warehouse_section("raw", ""),
            stripe_lines = crate::common::Stripe::source_lines(&stripe),
            zendesk_lines = Zendesk::source_lines(&zendesk),
        ),
    )
    .expect("write config");

    let mut daemons: Vec<Daemon> = (0..DAEMONS)
        .map(|i| start_daemon(&config, dir.path(), &format!("daemon-{i}")))
        .collect();
    let started = Instant::now();

    // The load: a new customer every 150 ms, a rename of an older one every 8th step (each
    // name distinct, so every version of a customer is told apart in its history).
    let mut created = 0usize;
    let mut renamed = 0usize;
    let mut killed: Option<(u32, Instant, usize, BTreeMap<String, serde_json::Value>)> = None;
    while started.elapsed() < LOAD {
        stripe.create(
            "customers",
            json!({"email": format!("fleet{created}@example.com"), "name": format!("Fleet {created}")}),
        );
        created += 1;
        if created.is_multiple_of(8) {
            let ids = stripe.ids("customers");
            let id = &ids[(created / 8) % ids.len()];
            stripe
                .update(
                    "customers",
                    id,
                    json!({"name": format!("Renamed {renamed}")}),
                )
                .expect("the customer exists");
            renamed += 1;
        }
        if killed.is_none() && started.elapsed() >= KILL_AFTER {
            // SIGKILL daemon 0 while it holds a lease, so that lease is orphaned. Once it
            // is seen holding one, it is frozen (SIGSTOP) and the leases read again: frozen,
            // it cannot release the lease between that read and the kill (a request it sent
            // just before freezing gets 300 ms to land). Released meanwhile, it thaws and
            // the watch goes on.
            let victim = daemons[0].pid;
            let deadline = Instant::now() + Duration::from_secs(20);
            let holds = |leases: BTreeMap<String, serde_json::Value>| {
                leases.values().any(|r| {
                    r["released"] != true && r["owner"].as_str().and_then(pid_of) == Some(victim)
                })
            };
            loop {
                assert!(
                    Instant::now() < deadline,
                    "daemon 0 (pid {victim}) never held a lease within 20 s"
                );
                if !holds(leases(&bucket).await) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                signal(victim, "STOP");
                tokio::time::sleep(Duration::from_millis(300)).await;
                if holds(leases(&bucket).await) {
                    break;
                }
                signal(victim, "CONT");
            }
            daemons[0].child.start_kill().expect("SIGKILL");
            let _ = daemons[0].child.wait().await;
            let at = Instant::now();
            // A request the collector had fully received still finishes being accepted.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let accepted_before = collector.ids().len();
            // What it left behind: its leases as the bucket has them after its death. A
            // request it sent just before the kill (a release, say) may still land at the
            // store after a first read, so only a lease that reads the same twice, half a
            // second apart, is an orphan (its expiry is 2-3 s out: renewed every second).
            let first = leases(&bucket).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = leases(&bucket).await;
            let orphans: BTreeMap<String, serde_json::Value> = first
                .into_iter()
                .filter(|(stream, r)| {
                    r["released"] != true
                        && r["owner"].as_str().and_then(pid_of) == Some(victim)
                        && second.get(stream) == Some(r)
                })
                .collect();
            killed = Some((victim, at, accepted_before, orphans));
            let old = std::mem::replace(
                &mut daemons[0],
                start_daemon(&config, dir.path(), "daemon-0-restarted"),
            );
            drop(old);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (victim, killed_at, accepted_before_kill, orphans) = killed.expect("a daemon was killed");

    // Let the daemons catch up with the last changes (bounded), then stop them all.
    let want = Want::of(&stripe, &zendesk);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !caught_up(&warehouse, &want, &collector).await {
        assert!(
            Instant::now() < deadline,
            "the daemons did not catch up within 30 s of the last change; logs in {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Caught up is not taken over: a victim that synced its last changes before it died
    // leaves the warehouse caught up while its lease still blocks its stream. Another
    // daemon can take the stream only once the lease expired (at most LEASE_SECONDS after
    // the kill) and its next scheduled run comes (every second): keep the daemons running
    // until then.
    let takeover_by = killed_at + Duration::from_secs(LEASE_SECONDS + 5);
    if let Some(wait) = takeover_by.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    let run_time = started.elapsed();
    let logs: Vec<(u32, PathBuf)> = daemons.iter().map(|d| (d.pid, d.log.clone())).collect();
    let outputs = futures::future::join_all(daemons.into_iter().map(|d| terminate(d.child))).await;
    for (out, (pid, log)) in outputs.iter().zip(&logs) {
        assert!(
            out.status.success(),
            "daemon {pid} exited {:?}:\n{}",
            out.status,
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let mut all_logs = logs.clone();
    all_logs.push((victim, dir.path().join("daemon-0.log")));
    for (pid, log) in &all_logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // Tributary's own errors only: delta-rs logs an ERROR when two workers race to
        // create the run log table, which the loser handles by using the winner's.
        for bad in ["ERROR tributary", "panicked", "another writer committed"] {
            assert!(!text.contains(bad), "daemon {pid} logged {bad}:\n{text}");
        }
    }

    // 1. Every table holds the simulator's objects, each exactly once.
    for (parts, want) in [
        (["stripe", "customers"], &want.customers),
        (["stripe", "events"], &want.events),
        (["zendesk", "tickets"], &want.tickets),
        (["zendesk", "users"], &want.users),
    ] {
        let c = counts(&read(&warehouse, &parts).await);
        assert_eq!(&sorted(c.keys().cloned().collect()), want, "{parts:?}");
        let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(twice.is_empty(), "{parts:?}: landed twice: {twice:?}");
    }
    let latest = read(&warehouse, &["stripe", "customers"]).await;
    let names: HashMap<String, String> = strings(&latest, "id")
        .into_iter()
        .zip(strings(&latest, "name"))
        .collect();
    for id in &want.customers {
        let name = stripe.get("customers", id).expect("customer")["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(names[id], name, "the latest version of {id}");
    }
    // The history: every version once ((id, name) is unique per version here), and the
    // latest one of every customer among them.
    let history = read(&warehouse, &["stripe", "customers_history"]).await;
    let versions: Vec<(String, String)> = strings(&history, "id")
        .into_iter()
        .zip(strings(&history, "name"))
        .collect();
    // The first run lists the objects and then replays the events from an anchor taken
    // before the listing, so an object changed during the listing comes from both; the
    // history keeps that version once (it leaves out rows identical to the held version).
    let mut seen = HashSet::new();
    for v in &versions {
        assert!(
            seen.insert(v.clone()),
            "the version {v:?} is in the history twice"
        );
    }
    for (id, name) in &names {
        assert!(
            seen.contains(&(id.clone(), name.clone())),
            "{id}'s latest version {name:?} is in its history"
        );
    }

    // 2. The run log: for each stream, the runs that held its lease never overlap.
    let runs = run_log(&warehouse).await;
    let mut by_stream: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.worker.is_empty()) {
        by_stream.entry(r.stream.as_str()).or_default().push(r);
    }
    for (stream, list) in &mut by_stream {
        list.sort_by_key(|r| r.started);
        for w in list.windows(2) {
            assert!(
                w[1].started >= w[0].ended,
                "{stream}: two runs at once: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
    for stream in [
        "stripe/customers",
        "stripe/events",
        "zendesk/tickets",
        "zendesk/users",
    ] {
        assert!(
            by_stream
                .get(stream)
                .is_some_and(|l| l.iter().any(|r| r.status == "ok")),
            "{stream} never synced"
        );
    }

    // 3. The Delta logs: gap-free, one table creation, `txn` 1, 2, 3, … once each, no
    //    commit file written twice; every commit inside its run's interval for the stream,
    //    and no two runs' commits interleaved.
    let mut commits_total = 0;
    for (prefix, stream) in [
        ("raw/stripe/customers", "stripe/customers"),
        ("raw/stripe/customers_history", "stripe/customers"),
        ("raw/stripe/events", "stripe/events"),
        ("raw/zendesk/tickets", "zendesk/tickets"),
        ("raw/zendesk/users", "zendesk/users"),
    ] {
        let log = DeltaLog::read(&bucket, prefix).await;
        let app_id = log
            .commits
            .iter()
            .find_map(|c| c.txns.first().map(|(a, _)| a.clone()))
            .unwrap_or_else(|| panic!("{prefix}: no commit with a txn"));
        let commits = log.stream_commits(&app_id);
        commits_total += commits.len();
        let mut finished_runs: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for c in &commits {
            let meta = c.tributary.as_ref().expect("metadata");
            let run_id = meta["run_id"].as_str().expect("run_id").to_owned();
            if current.as_deref() != Some(run_id.as_str()) {
                assert!(
                    !finished_runs.contains(&run_id),
                    "{prefix}: the commits of run {run_id} interleave with another run's"
                );
                if let Some(done) = current.replace(run_id.clone()) {
                    finished_runs.push(done);
                }
            }
            let at = chrono::DateTime::parse_from_rfc3339(
                meta["committed_at"].as_str().expect("committed_at"),
            )
            .expect("a time")
            .timestamp_micros();
            // A run of the killed daemon that died mid-way is not in the run log.
            if let Some(r) = runs
                .iter()
                .find(|r| r.run_id == run_id && r.stream == stream)
            {
                assert!(
                    r.started <= at && at <= r.ended,
                    "{prefix}: commit {} at {at} outside its run {r:?}",
                    c.version
                );
            }
        }
    }

    // 4. The killed daemon's orphaned leases blocked their streams until expiry, then
    //    another daemon took each over.
    assert!(
        !orphans.is_empty(),
        "the killed daemon held a lease just before the kill, so it left one behind"
    );
    let killed_wall =
        chrono::Utc::now() - chrono::Duration::from_std(killed_at.elapsed()).expect("d");
    for (stream, record) in &orphans {
        let expires = chrono::DateTime::parse_from_rfc3339(
            record["expires_at"].as_str().expect("expires_at"),
        )
        .expect("a time")
        .timestamp_micros();
        let list = by_stream.get(stream.as_str()).cloned().unwrap_or_default();
        for r in &list {
            assert!(
                !(r.started > killed_wall.timestamp_micros() && r.started < expires),
                "{stream}: run {r:?} started while the dead daemon's lease was live (until {expires})"
            );
        }
        assert!(
            list.iter().any(|r| r.started >= expires
                && pid_of(&r.worker).is_some_and(|p| p != victim)
                && r.status == "ok"),
            "{stream}: no daemon took over the killed daemon's lease after it expired"
        );
    }

    // 5. Every Stripe event reached the collector; a messageId came twice only if it had
    //    been accepted before the kill (the daemon died before recording the ack).
    let got = collector.ids();
    let want_ids: HashSet<String> = want
        .events
        .iter()
        .map(|e| tributary_sdk::tracking::message_id("stripe", e))
        .collect();
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, want_ids, "one message per Stripe event");
    let before: HashSet<&String> = got[..accepted_before_kill].iter().collect();
    assert_eq!(
        before.len(),
        accepted_before_kill,
        "no resend before the kill"
    );
    let mut after = HashSet::new();
    for id in &got[accepted_before_kill..] {
        assert!(after.insert(id), "{id} was accepted twice after the kill");
    }
    let resends = got.len() - unique.len();
    assert!(collector.violations.lock().expect("lock").is_empty());

    // The figures (README, "Running at scale").
    println!("fleet: {DAEMONS} daemons, 1-second cron, lease_seconds = {LEASE_SECONDS}");
    println!(
        "fleet: customers_history {} rows, every version once",
        versions.len()
    );
    println!(
        "fleet: load {:?}: {created} customers created, {renamed} renamed; run until caught up {:.1} s; wall time {:.1} s",
        LOAD,
        run_time.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    for (pid, log) in &all_logs {
        let stream_runs = runs
            .iter()
            .filter(|r| pid_of(&r.worker) == Some(*pid))
            .count();
        let records: i64 = runs
            .iter()
            .filter(|r| pid_of(&r.worker) == Some(*pid))
            .map(|r| r.records)
            .sum();
        println!(
            "fleet: daemon {pid}{}: {} scheduled runs finished, {stream_runs} stream runs under a lease ({records} records), {} streams skipped as leased, {} slots skipped (previous run still going)",
            if *pid == victim { " (SIGKILLed)" } else { "" },
            count_lines(log, "Scheduled run finished."),
            count_lines(log, "Another worker holds the stream's lease"),
            count_lines(log, "skipping this slot"),
        );
    }
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &runs {
        *statuses.entry(r.status.as_str()).or_insert(0) += 1;
    }
    println!(
        "fleet: run log {} rows {statuses:?}, {commits_total} stream commits, {} records landed; orphaned leases {:?}",
        runs.len(),
        runs.iter().map(|r| r.records).sum::<i64>(),
        orphans.keys().collect::<Vec<_>>()
    );
    println!(
        "fleet: tracking {} messages accepted, {} distinct = {} events, {resends} resent after the kill",
        got.len(),
        unique.len(),
        want.events.len()
    );
}
