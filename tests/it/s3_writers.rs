//! Two `tributary sync` processes writing one S3 warehouse at the same time (moto, commits
//! as create-if-absent puts). On one stream, every commit version is won by exactly one of
//! them and the other stops without landing anything; on two streams, both land everything.
//! Traffic goes through the test proxy (no faults armed) to see every commit put, and the
//! bucket is versioned so that an overwritten commit file would show.

use std::process::Output;
use std::time::Duration;

use crate::common::{Env, assert_success, py};
use crate::moto::{DeltaLog, Moto, assert_backfilled_exactly_once, s3_warehouse};
use crate::proxy::{FaultProxy, is_commit_file};
use tributary_stripe::sandbox::{Faults, SandboxConfig};

const LOST_RACE: &str = "another writer committed to `tributary/stripe/charges` while this run was writing; nothing of this commit landed";

/// A sandbox slowed down so a full sync of `records` charges takes a couple of seconds in
/// many small commits, and a config pointing at `s3://lake/<prefix>` through `proxy`.
async fn racing_env(records: usize, proxy: &FaultProxy, prefix: &str) -> Env {
    let env = Env::stripe_with(
        SandboxConfig {
            records,
            ..Default::default()
        },
        "streams = [\"charges\"]\npage_size = 25",
    )
    .await;
    env.use_s3(&s3_warehouse(
        &proxy.endpoint,
        &format!("s3://lake/{prefix}"),
        "",
    ));
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("batch_size = 500", "batch_size = 50\ncommit_every = 100");
    std::fs::write(&env.config, text).unwrap();
    env.sandbox.set_faults(Faults {
        slow_ms: 15,
        slow_rate: 1.0,
        ..Default::default()
    });
    env
}

/// Runs two commands of `env`'s binary at once; their outputs.
async fn race(env: &Env, a: &[&str], b: &[&str]) -> (Output, Output) {
    let start = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts")
    };
    let (a, b) = (start(a), start(b));
    let both = async { tokio::join!(a.wait_with_output(), b.wait_with_output()) };
    let (a, b) = tokio::time::timeout(Duration::from_secs(120), both)
        .await
        .expect("both syncs end within 120 s");
    (a.expect("output"), b.expect("output"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks what the proxy saw of the commits: every commit file was put as a
/// create-if-absent, and each was created at most once. Returns how many commit puts the
/// store refused because the version already existed (so far, in every table).
fn commit_puts_were_conditional(proxy: &FaultProxy) -> usize {
    let puts: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == hyper::Method::PUT && is_commit_file(&s.path))
        .collect();
    assert!(!puts.is_empty(), "the commits went through the proxy");
    let mut created = std::collections::HashMap::new();
    for p in &puts {
        assert!(p.create, "{} was not put as create-if-absent", p.path);
        if p.upstream.is_some_and(|s| (200..300).contains(&s)) {
            *created.entry(p.path.clone()).or_insert(0) += 1;
        }
    }
    for (path, n) in created {
        assert_eq!(n, 1, "{path} was created {n} times");
    }
    puts.iter().filter(|p| p.upstream == Some(412)).count()
}

/// Races run until one is decided by S3 (seen to need more than 3 on a loaded machine).
const ROUNDS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_one_stream_never_land_a_page_twice() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", true).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // Each round races two fresh syncs on a fresh table. One round almost always makes
    // them collide; a few more make it certain without looping forever (the loop stops as
    // soon as a race was decided by S3 refusing a commit put).
    let mut collided = false;
    // Commit puts S3 refused because that version existed (all rounds): races decided by S3.
    let mut refused = 0;
    for round in 0..ROUNDS {
        let prefix = format!("round{round}");
        let env = racing_env(1500, &proxy, &prefix).await;
        let (a, b) = race(&env, &["sync"], &["sync"]).await;
        let (ta, tb) = (text(&a), text(&b));
        assert!(
            a.status.success() || b.status.success(),
            "one of them lands the stream:\n{ta}\n{tb}"
        );
        for (out, t) in [(&a, &ta), (&b, &tb)] {
            if !out.status.success() {
                assert_eq!(out.status.code(), Some(1), "{t}");
                assert!(t.contains(LOST_RACE), "the loser says why:\n{t}");
                assert!(!t.contains("panicked"), "{t}");
                collided = true;
            }
        }
        // A third sync afterwards succeeds, with nothing left to land.
        let third = env.sync_ok(&[]).await;
        assert!(third.contains("1 streams, 0 records, 0 failed"), "{third}");

        let want = env.sandbox.ids("charges");
        let cursor = assert_backfilled_exactly_once(
            &moto.endpoint,
            "lake",
            &format!("{prefix}/stripe/charges"),
            "tributary/stripe/charges",
            &want,
        )
        .await;
        assert_eq!(
            cursor["phase"], "changes",
            "the backfill finished: {cursor}"
        );
        let log = DeltaLog::read(&moto.endpoint, "lake", &format!("{prefix}/stripe/charges")).await;
        assert!(
            log.others.iter().all(|k| !k.contains("tmp")),
            "no temporary commit left: {:?}",
            log.others
        );
        refused = commit_puts_were_conditional(&proxy);
        if collided && refused > 0 {
            break;
        }
    }
    assert!(
        collided,
        "the two writers never overlapped in {ROUNDS} rounds"
    );
    assert!(
        refused > 0,
        "in {ROUNDS} rounds S3 never refused a commit put, so the races were not decided by it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_on_two_streams_both_land_everything() {
    let moto = Moto::start().await;
    moto.create_bucket("lake", true).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // Charges and balance transactions have as many objects each, so the two runs end
    // together and also race to create and append to the run log.
    let env = racing_env(1000, &proxy, "raw").await;
    let (a, b) = race(
        &env,
        &["sync", "--source", "stripe", "--stream", "charges"],
        &[
            "sync",
            "--source",
            "stripe",
            "--stream",
            "balance_transactions",
        ],
    )
    .await;
    assert_success(&a);
    assert_success(&b);
    for stream in ["charges", "balance_transactions"] {
        let want = env.sandbox.ids(stream);
        let cursor = assert_backfilled_exactly_once(
            &moto.endpoint,
            "lake",
            &format!("raw/stripe/{stream}"),
            &format!("tributary/stripe/{stream}"),
            &want,
        )
        .await;
        assert_eq!(cursor["phase"], "changes", "{stream}: {cursor}");
    }
    commit_puts_were_conditional(&proxy);

    // Both runs are in the run log.
    let runs = py(
        r#"
import json, os, sys, deltalake
import pyarrow as pa
opts = {"AWS_ENDPOINT_URL": sys.argv[1], "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_ALLOW_HTTP": "true"}
dt = deltalake.DeltaTable("s3://lake/raw/_tributary/sync_runs", storage_options=opts)
rows = pa.table(dt.to_pyarrow_table()).select(["stream", "status", "records"]).to_pylist()
print(json.dumps(sorted([r["stream"], r["status"], r["records"]] for r in rows)))
sys.stdout.flush()
os._exit(0)
"#,
        &[&moto.endpoint],
    )
    .await;
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("json");
    let charges = env.sandbox.ids("charges").len();
    let balance = env.sandbox.ids("balance_transactions").len();
    assert_eq!(
        runs,
        serde_json::json!([
            ["balance_transactions", "ok", balance],
            ["charges", "ok", charges]
        ])
    );
}
