//! `history = true`: the latest-state table keeps one row per object while
//! `<stream>_history` keeps every version landed, append-only.

use std::time::Duration;

use crate::common::{Env, id_counts, latest_by_id, read_table, strings};

#[tokio::test(flavor = "multi_thread")]
async fn history_keeps_every_version_beside_the_latest_state() {
    let env = Env::stripe(50, "streams = [\"customers\", \"events\"]\nhistory = true").await;
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    for name in ["First", "Second"] {
        env.sandbox
            .update("customers", &ids[0], serde_json::json!({"name": name}))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        env.sync_ok(&[]).await;
    }
    env.sandbox.delete("customers", &ids[1]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;

    let latest = read_table(&env.table("customers")).await;
    assert_eq!(id_counts(&latest).len(), ids.len());
    assert!(id_counts(&latest).values().all(|&n| n == 1));
    assert_eq!(latest_by_id(&latest, "name")[&ids[0]], "Second");
    assert_eq!(latest_by_id(&latest, "is_deleted")[&ids[1]], "true");

    let history = read_table(&env.table("customers_history")).await;
    let counts = id_counts(&history);
    assert_eq!(counts[&ids[0]], 3, "created, renamed twice");
    assert_eq!(counts[&ids[1]], 2, "created, deleted");
    assert_eq!(counts.values().sum::<usize>(), ids.len() + 3);
    let names: Vec<String> = strings(&history, "id")
        .into_iter()
        .zip(strings(&history, "name"))
        .filter(|(id, _)| id == &ids[0])
        .map(|(_, n)| n)
        .collect();
    assert!(
        names.contains(&"First".to_owned()) && names.contains(&"Second".to_owned()),
        "{names:?}"
    );
    // Event streams are append-only already: no history table for them.
    assert!(!env.table("events_history").exists());
}
