//! `tributary compact`: small files and deletion vectors merged away without changing what
//! readers see or where syncs resume; unreferenced files past the retention removed; safe
//! while a sync runs.

use std::time::{Duration, SystemTime};

use crate::common::{Env, assert_success, id_counts, latest_by_id, read_table, strings};
use crate::stores::compact_while_a_sync_runs;

fn data_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("table dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

/// Live files and whether any carries a deletion vector, from the table's snapshot.
async fn live_files(dir: &std::path::Path) -> (usize, bool) {
    let url = url::Url::from_directory_path(dir).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let snap = table.snapshot().unwrap();
    let files: Vec<_> = snap.log_data().iter().collect();
    let dvs = files
        .iter()
        .any(|f| f.deletion_vector_descriptor().is_some());
    (files.len(), dvs)
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_merges_small_files_and_keeps_rows_and_cursor() {
    // 300 customers; pages are 100 objects; a commit per page.
    let env = Env::stripe(3000, "streams = [\"customers\"]").await;
    env.add_sync_option("commit_every = 20");
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    // Spread over the table, so each updated row shares its file with rows that stay (the
    // newest few may sit alone in the small file of a backfill range's last page).
    for id in ids.iter().step_by(97).take(5) {
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
    let table = env.table("customers");
    let (before_files, before_dvs) = live_files(&table).await;
    assert!(before_files >= 4, "one file per commit: {before_files}");
    assert!(
        before_dvs,
        "the updates replaced rows with deletion vectors"
    );
    let rows_before = read_table(&table).await;
    let state_before = String::from_utf8_lossy(&env.run(&["state"]).await.stdout).into_owned();

    let out = env
        .run(&["compact", "--source", "stripe", "--stream", "customers"])
        .await;
    assert_success(&out);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("stripe.customers") && report.contains(&format!("{before_files} -> 1")),
        "{report}"
    );
    let (after_files, after_dvs) = live_files(&table).await;
    assert_eq!(after_files, 1);
    assert!(
        !after_dvs,
        "deleted rows are purged, no deletion vector left"
    );

    // Readers see the same rows.
    let rows_after = read_table(&table).await;
    let counts = id_counts(&rows_after);
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(
        latest_by_id(&rows_after, "name"),
        latest_by_id(&rows_before, "name")
    );
    assert_eq!(
        latest_by_id(&rows_after, "name")[&ids[0]],
        format!("N-{}", ids[0])
    );

    // Syncs resume from the same cursor and keep replacing rows in the merged file.
    let state_after = String::from_utf8_lossy(&env.run(&["state"]).await.stdout).into_owned();
    let cursor = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("stripe.customers"))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
    };
    assert_eq!(cursor(&state_after), cursor(&state_before));
    env.sandbox
        .update(
            "customers",
            &ids[7],
            serde_json::json!({"name": "After compaction"}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;
    let rows = read_table(&table).await;
    assert!(id_counts(&rows).values().all(|&n| n == 1));
    assert_eq!(latest_by_id(&rows, "name")[&ids[7]], "After compaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_removes_only_unreferenced_files_past_the_retention() {
    let env = Env::stripe(300, "streams = [\"customers\"]").await;
    env.add_sync_option("commit_every = 10");
    env.sync_ok(&[]).await;
    let table = env.table("customers");
    let live = data_files(&table);
    // Files a crashed run left behind: one long ago, one just now.
    let old = table.join("part-00000000-0000-0000-0000-000000000001-c000.zstd.parquet");
    let fresh = table.join("part-00000000-0000-0000-0000-000000000002-c000.zstd.parquet");
    std::fs::copy(table.join(&live[0]), &old).unwrap();
    std::fs::copy(table.join(&live[0]), &fresh).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();

    let out = env.run(&["compact", "--retention-hours", "24"]).await;
    assert_success(&out);
    assert!(
        !old.exists(),
        "an unreferenced file past the retention is removed"
    );
    assert!(
        fresh.exists(),
        "a recent unreferenced file may belong to a running sync"
    );
    // The files compaction merged stay until their removal is older than the retention.
    for f in &live {
        assert!(
            table.join(f).exists(),
            "{f} kept for time travel within the retention"
        );
    }
    let rows = read_table(&table).await;
    assert_eq!(id_counts(&rows).len(), env.sandbox.ids("customers").len());

    let out = env.run(&["compact", "--retention-hours=-1"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--retention-hours"));
    let out = env
        .run(&["compact", "--source", "stripe", "--stream", "nope"])
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no table for stream `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_while_a_sync_runs_loses_and_duplicates_nothing() {
    let env = Env::stripe(3000, "streams = [\"customers\"]").await;
    let table = env.table("customers");
    compact_while_a_sync_runs(&env, async || {
        let rows = read_table(&table).await;
        strings(&rows, "id")
            .into_iter()
            .zip(strings(&rows, "name"))
            .collect()
    })
    .await;
}
