//! Exactly-once under crashes, for Zendesk's export cursors and snapshots: SIGKILL the
//! sync at pseudo-random moments, resume each time, and find every ticket once, and the
//! snapshot table holding each ticket metric once. With `history = true`, the append-only
//! `tickets_history` shows any page landed twice (the latest-state table would hide it).

use tributary_zendesk::sandbox::Faults;

use super::ZendeskEnv;
use crate::common::{id_counts, read_table, sigkill_until_done};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_lands_everything_exactly_once() {
    let env = ZendeskEnv::start(
        1200,
        "streams = [\"tickets\", \"ticket_metrics\"]\nexport_page_size = 12\npage_size = 12\nhistory = true",
    )
    .await;
    // Small batches and commits, so kills land between, during and after commits.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "batch_size = 500",
        "batch_size = 30\ncommit_every = 60\nlease_seconds = 1",
    );
    std::fs::write(&env.config, text).unwrap();
    // Slow the simulator down: 100 pages of each stream take four seconds or more.
    env.sandbox.set_faults(Faults {
        slow_ms: 40,
        slow_rate: 1.0,
        ..Default::default()
    });

    let env = &env;
    let killed_mid_run = sigkill_until_done(
        &env.config,
        10,
        0x2e4d_e5c0_ffee_1234,
        (200, 900),
        async |round| {
            // After every kill the tables are readable and hold no duplicate.
            for stream in ["tickets", "tickets_history", "ticket_metrics"] {
                if env.table(stream).join("_delta_log").exists() {
                    let counts = id_counts(&read_table(&env.table(stream)).await);
                    assert!(
                        counts.values().all(|&n| n == 1),
                        "round {round}: a {stream} row landed twice after a kill"
                    );
                }
            }
        },
    )
    .await;
    assert!(
        killed_mid_run >= 3,
        "the kills must interrupt running syncs ({killed_mid_run})"
    );

    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    for stream in ["tickets", "ticket_metrics"] {
        let counts = id_counts(&read_table(&env.table(stream)).await);
        let mut want = env.sandbox.ids(stream);
        want.sort();
        let mut got: Vec<String> = counts.keys().cloned().collect();
        got.sort();
        assert_eq!(got, want, "{stream}: no record lost");
        assert!(
            counts.values().all(|&n| n == 1),
            "{stream}: no record appended twice"
        );
    }
    let history = id_counts(&read_table(&env.table("tickets_history")).await);
    assert_eq!(history.len(), env.sandbox.ids("tickets").len());
    assert!(
        history.values().all(|&n| n == 1),
        "tickets_history: each version once"
    );
}
