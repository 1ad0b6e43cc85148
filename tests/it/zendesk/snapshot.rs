//! Snapshot streams never shrink on failure: a snapshot whose later pages keep failing
//! leaves every earlier row in the table (updated in place where its first pages reached),
//! and the next complete snapshot removes what the vendor no longer lists.

use tributary_zendesk::sandbox::{Faults, ZendeskFaults};

use super::ZendeskEnv;
use crate::common::{id_counts, latest_by_id, read_table};

/// The ids of the table of `stream`, sorted, after checking each appears once.
async fn table_ids(env: &ZendeskEnv, stream: &str) -> Vec<String> {
    let counts = id_counts(&read_table(&env.table(stream)).await);
    assert!(
        counts.values().all(|&n| n == 1),
        "{stream}: one row per id: {counts:?}"
    );
    let mut ids: Vec<String> = counts.into_keys().collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_snapshot_keeps_every_row_until_one_completes() {
    // One object a page, so every snapshot spans several pages.
    let env = ZendeskEnv::start(
        40,
        "streams = [\"groups\", \"group_memberships\"]\npage_size = 1",
    )
    .await;
    env.sync_ok(&[]).await;
    let groups = sorted(env.sandbox.ids("groups"));
    let memberships = sorted(env.sandbox.ids("group_memberships"));
    assert!(groups.len() >= 2, "{groups:?}");
    assert!(memberships.len() >= 2, "{memberships:?}");
    assert_eq!(table_ids(&env, "groups").await, groups);
    assert_eq!(table_ids(&env, "group_memberships").await, memberships);

    // At the vendor, a membership goes away and a group is deleted (Zendesk keeps listing
    // it, flagged `deleted`); then every list fails past its first page.
    let gone = memberships[memberships.len() - 1].clone();
    assert!(env.sandbox.delete("group_memberships", &gone));
    let deleted_group = env.sandbox.ids("groups")[0].clone();
    assert!(env.sandbox.delete("groups", &deleted_group));
    env.sandbox.set_faults(
        ZendeskFaults {
            forbid_after_first_page: true,
            ..Default::default()
        }
        .into(),
    );
    let out = env.run(&["sync"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the sync fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing is lost: every group and membership is still there, once; the first page
    // (the deleted group, lowest id) was updated in place.
    assert_eq!(table_ids(&env, "groups").await, groups);
    assert_eq!(table_ids(&env, "group_memberships").await, memberships);
    let flags = latest_by_id(&read_table(&env.table("groups")).await, "is_deleted");
    assert_eq!(flags[&deleted_group], "true");
    assert!(
        groups
            .iter()
            .filter(|g| **g != deleted_group)
            .all(|g| flags[g] == "false")
    );

    // Again with the fault still on: the open snapshot resumes from its page cursor and
    // fails again; the table still does not shrink.
    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(table_ids(&env, "group_memberships").await, memberships);

    // The fault clears: the snapshot completes and the table is the vendor's list.
    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    let now = sorted(env.sandbox.ids("group_memberships"));
    assert!(!now.contains(&gone));
    assert_eq!(table_ids(&env, "group_memberships").await, now);
    assert_eq!(
        table_ids(&env, "groups").await,
        groups,
        "every group Zendesk lists, the deleted one flagged"
    );
    let flags = latest_by_id(&read_table(&env.table("groups")).await, "is_deleted");
    assert_eq!(flags[&deleted_group], "true");

    // A later complete snapshot leaves the table as it is.
    env.sync_ok(&[]).await;
    assert_eq!(table_ids(&env, "group_memberships").await, now);
    assert_eq!(table_ids(&env, "groups").await, groups);
    let out = env.run(&["state"]).await;
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(state.contains("\"mode\":\"snapshot_done\""), "{state}");
}
