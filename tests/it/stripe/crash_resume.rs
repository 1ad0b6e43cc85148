//! Exactly-once under crashes: SIGKILL the sync at pseudo-random moments many times,
//! resume each time, and find every object in the table exactly once at the end. The
//! source keeps full history too: the append-only `charges_history` table would show a
//! page landed twice (the latest-state table would hide it by replacing the row), and the
//! kills also fall between its commit and the latest-state table's.

use std::time::Duration;

use crate::common::{Env, id_counts, read_table, sigkill_until_done, spawn, terminate};
use tributary_stripe::sandbox::{Faults, SandboxConfig};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_lands_everything_exactly_once() {
    let env = Env::stripe_with(
        SandboxConfig {
            records: 6000,
            ..Default::default()
        },
        "streams = [\"charges\"]\npage_size = 25\nhistory = true",
    )
    .await;
    // Small batches and commits, so kills land between, during and after commits.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "batch_size = 500",
        "batch_size = 40\ncommit_every = 100\nlease_seconds = 1",
    );
    std::fs::write(&env.config, text).unwrap();
    // Answers take as long as a real vendor's, so the concurrent backfill (32 ranges in
    // flight) takes a few seconds and the kills fall inside it.
    env.sandbox.set_faults(Faults {
        slow_ms: 300,
        slow_rate: 1.0,
        ..Default::default()
    });

    let env = &env;
    let saw_ranges = std::sync::atomic::AtomicUsize::new(0);
    let saw_ranges = &saw_ranges;
    let killed_mid_run = sigkill_until_done(
        &env.config,
        12,
        0x5eed_1234_abcd_9876,
        (400, 2000),
        async |round| {
            // After every kill the tables are readable and have no duplicate.
            for table in ["charges", "charges_history"] {
                if env.table(table).join("_delta_log").exists() {
                    let counts = id_counts(&read_table(&env.table(table)).await);
                    assert!(
                        counts.values().all(|&n| n == 1),
                        "round {round}: a record landed twice in {table} after a kill"
                    );
                }
            }
            // The committed cursor of a kill inside the backfill holds its open ranges.
            let state = env.run(&["state"]).await;
            if String::from_utf8_lossy(&state.stdout).contains("\"ranges\"") {
                saw_ranges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    )
    .await;
    assert!(
        killed_mid_run >= 3,
        "the kills must interrupt running syncs ({killed_mid_run})"
    );
    assert!(
        saw_ranges.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "a kill must fall inside the concurrent backfill"
    );

    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    let counts = id_counts(&read_table(&env.table("charges")).await);
    let mut want = env.sandbox.ids("charges");
    want.sort();
    let mut got: Vec<String> = counts.keys().cloned().collect();
    got.sort();
    assert_eq!(got.len(), want.len(), "no record lost");
    assert_eq!(got, want, "no record lost");
    let history = id_counts(&read_table(&env.table("charges_history")).await);
    assert_eq!(history.len(), want.len(), "the history has every record");
    assert!(
        history.values().all(|&n| n == 1),
        "the history has every record once"
    );
    assert!(counts.values().all(|&n| n == 1), "no record appended twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_what_is_complete_and_stops() {
    let env = Env::stripe_with(
        SandboxConfig {
            records: 2000,
            ..Default::default()
        },
        // One page at a time, so the sync is still running when SIGTERM comes.
        "streams = [\"charges\"]\npage_size = 20\nmax_concurrency = 1",
    )
    .await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("batch_size = 500", "batch_size = 40\ncommit_every = 100000");
    std::fs::write(&env.config, text).unwrap();
    env.sandbox.set_faults(Faults {
        slow_ms: 30,
        slow_rate: 1.0,
        ..Default::default()
    });
    let child = spawn(&env, "sync");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cancelled"), "{stdout}");
    // One commit of everything fetched so far (commit_every is far away).
    let counts = id_counts(&read_table(&env.table("charges")).await);
    assert!(
        !counts.is_empty(),
        "what was fetched before SIGTERM was committed"
    );
    assert!(
        counts.len() < env.sandbox.ids("charges").len(),
        "it stopped early"
    );
    assert!(counts.values().all(|&n| n == 1));

    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    let counts = id_counts(&read_table(&env.table("charges")).await);
    assert_eq!(counts.len(), env.sandbox.ids("charges").len());
    assert!(counts.values().all(|&n| n == 1));
}
