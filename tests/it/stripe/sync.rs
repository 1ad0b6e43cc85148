//! Stripe, end to end: full sync, incremental sync after creates, updates and deletes, a
//! new field, the 30-day fallback, and `state`.

use std::time::Duration;

use crate::common::{Env, id_counts, latest_by_id, read_table, strings};

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incremental_sync_lands_every_change_once() {
    let env = Env::stripe(300, "streams = [\"customers\", \"charges\", \"events\"]").await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("stripe.charges"), "{summary}");

    for stream in ["customers", "charges"] {
        let batches = read_table(&env.table(stream)).await;
        let counts = id_counts(&batches);
        let mut want = env.sandbox.ids(stream);
        want.sort();
        let mut got: Vec<String> = counts.keys().cloned().collect();
        got.sort();
        assert_eq!(got, want, "{stream}: every object lands");
        assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
    }
    let charges = read_table(&env.table("charges")).await;
    let schema = charges[0].schema();
    use arrow::datatypes::{DataType, TimeUnit};
    assert_eq!(
        schema.field_with_name("amount").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(
        schema.field_with_name("created").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert!(
        schema
            .field_with_name("billing_details_address_city")
            .is_ok()
    );
    assert!(strings(&charges, "uuid_ts").iter().all(|s| !s.is_empty()));

    // Changes: one new customer, one renamed, one deleted.
    let ids = env.sandbox.ids("customers");
    let created = env.sandbox.create(
        "customers",
        serde_json::json!({"email": "new@example.com", "name": "New"}),
    );
    let created_id = created["id"].as_str().unwrap().to_owned();
    env.sandbox
        .update("customers", &ids[0], serde_json::json!({"name": "Renamed"}))
        .unwrap();
    assert!(env.sandbox.delete("customers", &ids[1]));
    // Event times have second resolution; make sure they are in the past.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let summary = env
        .sync_ok(&["--stream", "customers", "--source", "stripe"])
        .await;
    assert!(summary.contains("stripe.customers"), "{summary}");
    let batches = read_table(&env.table("customers")).await;
    let counts = id_counts(&batches);
    assert_eq!(counts.len(), ids.len() + 1, "the new customer landed");
    assert!(
        counts.values().all(|&n| n == 1),
        "one row per object, its latest version: {counts:?}"
    );
    let names = latest_by_id(&batches, "name");
    assert_eq!(names[&ids[0]], "Renamed");
    let deleted = latest_by_id(&batches, "is_deleted");
    assert_eq!(deleted[&ids[1]], "true");
    assert_eq!(deleted[&ids[0]], "false");
    assert_eq!(deleted[&created_id], "false");

    // Nothing changed: nothing lands.
    env.sync_ok(&["--stream", "customers", "--source", "stripe"])
        .await;
    assert_eq!(
        id_counts(&read_table(&env.table("customers")).await)
            .values()
            .sum::<usize>(),
        ids.len() + 1
    );

    // The events stream has the three events.
    env.sync_ok(&["--stream", "events", "--source", "stripe"])
        .await;
    let events = read_table(&env.table("events")).await;
    let types = strings(&events, "type");
    for t in ["customer.created", "customer.updated", "customer.deleted"] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }

    // `state` shows the cursors.
    let out = env.run(&["state"]).await;
    crate::common::assert_success(&out);
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(
        state.contains("stripe.customers") && state.contains("\"phase\":\"changes\""),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_vendor_field_becomes_a_column() {
    let env = Env::stripe(20, "streams = [\"customers\"]").await;
    env.sync_ok(&[]).await;
    let id = env.sandbox.ids("customers")[0].clone();
    env.sandbox
        .update(
            "customers",
            &id,
            serde_json::json!({"loyalty_tier": "gold", "loyalty": {"points": 1200}}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let summary = env.sync_ok(&[]).await;
    assert!(
        summary.contains("new columns:")
            && summary.contains("loyalty_tier")
            && summary.contains("loyalty_points"),
        "{summary}"
    );
    let batches = read_table(&env.table("customers")).await;
    let tiers = latest_by_id(&batches, "loyalty_tier");
    assert_eq!(tiers[&id], "gold");
    let points = latest_by_id(&batches, "loyalty_points");
    assert_eq!(points[&id], "1200");
    // Older rows read the new column as null.
    let other = env.sandbox.ids("customers")[1].clone();
    assert_eq!(tiers[&other], "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fraction_widens_a_column_and_text_is_rescued_without_failing() {
    let env = Env::stripe(50, "streams = [\"customers\"]").await;
    env.sync_ok(&[]).await;
    let ids = env.sandbox.ids("customers");
    env.sandbox
        .update("customers", &ids[0], serde_json::json!({"balance": 12.5}))
        .unwrap();
    env.sandbox
        .update(
            "customers",
            &ids[1],
            serde_json::json!({"created": "not a time"}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("widened to float: balance"), "{summary}");
    assert!(summary.contains("1 values did not fit"), "{summary}");

    let batches = read_table(&env.table("customers")).await;
    for b in &batches {
        let t = b
            .schema()
            .field_with_name("balance")
            .unwrap()
            .data_type()
            .clone();
        assert_eq!(
            t,
            arrow::datatypes::DataType::Float64,
            "every file in the wider type"
        );
    }
    assert!(id_counts(&batches).values().all(|&n| n == 1));
    let balances = latest_by_id(&batches, "balance");
    assert_eq!(balances[&ids[0]], "12.5");
    assert_eq!(balances[&ids[2]], "0.0", "older values kept, as floats");
    let rescued = latest_by_id(&batches, "_rescued_data");
    assert_eq!(rescued[&ids[1]], r#"{"created":"not a time"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_older_than_thirty_days_resyncs_the_stream() {
    let env = Env::stripe(30, "streams = [\"customers\"]").await;
    env.sync_ok(&[]).await;
    let before = read_table(&env.table("customers")).await;
    assert_eq!(id_counts(&before).len(), env.sandbox.ids("customers").len());

    env.sandbox
        .advance_clock(Duration::from_secs(31 * 24 * 3600));
    let out = env.run(&["sync"]).await;
    crate::common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("30-day"),
        "the fallback is logged: {stderr}"
    );
    let after = read_table(&env.table("customers")).await;
    let counts = id_counts(&after);
    assert_eq!(counts.len(), env.sandbox.ids("customers").len());
    assert!(
        counts.values().all(|&n| n == 1),
        "the resync replaced the table: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_refresh_replaces_the_table() {
    let env = Env::stripe(30, "streams = [\"products\"]").await;
    env.sync_ok(&[]).await;
    env.sync_ok(&["--full-refresh"]).await;
    let counts = id_counts(&read_table(&env.table("products")).await);
    assert_eq!(counts.len(), env.sandbox.ids("products").len());
    assert!(counts.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn vendor_faults_are_retried_and_nothing_is_lost() {
    use tributary_stripe::sandbox::Faults;
    let env = Env::stripe(600, "streams = [\"charges\"]\npage_size = 20").await;
    env.sandbox.set_faults(Faults {
        error_rate: 0.15,
        truncate_rate: 0.1,
        malformed_rate: 0.05,
        slow_ms: 20,
        slow_rate: 0.1,
        ..Default::default()
    });
    let out = env.run(&["sync", "--log-format", "json"]).await;
    crate::common::assert_success(&out);
    assert!(
        env.sandbox.stats().faults_injected > 0,
        "{:?}",
        env.sandbox.stats()
    );
    let counts = id_counts(&read_table(&env.table("charges")).await);
    assert_eq!(counts.len(), env.sandbox.ids("charges").len());
    assert!(counts.values().all(|&n| n == 1));
    // Machine logs: one JSON object per line, retries among them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut retries = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["message"] == "Retrying request." {
            retries += 1;
        }
    }
    assert!(retries > 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_syncs_on_schedule_and_stops_on_sigterm() {
    let env = Env::stripe(40, "streams = [\"customers\"]\nschedule = \"* * * * * *\"").await;
    let child = crate::common::spawn(&env, "run");
    // Every second: the first run lands the table, later ones find nothing new.
    let table = env.table("customers").join("_delta_log");
    for _ in 0..100 {
        if table.exists() && !read_table(&env.table("customers")).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = env
        .sandbox
        .create("customers", serde_json::json!({"name": "Scheduled"}));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let out = crate::common::terminate(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Scheduled run finished."), "{stderr}");
    let counts = id_counts(&read_table(&env.table("customers")).await);
    assert_eq!(counts.len(), env.sandbox.ids("customers").len());
    assert_eq!(
        counts[created["id"].as_str().unwrap()],
        1,
        "the change landed once"
    );
    assert!(counts.values().all(|&n| n == 1));
    // Every scheduled run is in the run log.
    let runs = read_table(&env.warehouse().join("_tributary").join("sync_runs")).await;
    let streams = strings(&runs, "stream");
    assert!(
        streams.iter().filter(|s| *s == "customers").count() >= 2,
        "{streams:?}"
    );
}

/// A Stripe that never stops (issue 10): its list cursors cycle A → B → A. The sync must
/// stop with exit 1 and a message naming the vendor, the stream and the repeated cursor,
/// land no page past the last good one, and a later sync against a healthy Stripe must
/// resume from what was committed and land every charge exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_vendor_whose_cursors_cycle_fails_the_stream_without_landing_repeats() {
    // One walk (the concurrent backfill's ranges are checked by the connector's tests).
    let env = Env::stripe(
        60,
        "streams = [\"charges\"]\npage_size = 10\nmax_concurrency = 1",
    )
    .await;
    env.sandbox.set_faults(tributary_stripe::sandbox::Faults {
        cycle_cursor: true,
        ..Default::default()
    });
    env.sandbox.reset_stats();
    let out = tokio::time::timeout(Duration::from_secs(120), env.run(&["sync"]))
        .await
        .expect("the sync stops instead of walking the cycle forever");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("Stripe"), "{stderr}");
    assert!(stderr.contains("charges"), "{stderr}");
    assert!(
        stderr.contains("repeated the pagination cursor `starting_after`"),
        "{stderr}"
    );
    // The anchor request, pages A and B, and the return to A: a handful, not an endless walk.
    let requests = env.sandbox.stats().requests;
    assert!((4..=6).contains(&requests), "{requests} requests");
    let landed = if env.table("charges").join("_delta_log").exists() {
        id_counts(&read_table(&env.table("charges")).await)
    } else {
        Default::default()
    };
    assert!(
        landed.len() <= 20 && landed.values().all(|&n| n == 1),
        "only pages A and B may land, once: {landed:?}"
    );

    env.sandbox.set_faults(Default::default());
    env.sync_ok(&[]).await;
    let counts = id_counts(&read_table(&env.table("charges")).await);
    let mut got: Vec<String> = counts.keys().cloned().collect();
    got.sort();
    let mut want = env.sandbox.ids("charges");
    want.sort();
    assert_eq!(got, want, "the next sync lands the rest");
    assert!(counts.values().all(|&n| n == 1), "exactly once");
}

/// The ids of a table, sorted, after checking each appears once.
async fn table_ids(env: &Env, stream: &str) -> Vec<String> {
    let counts = id_counts(&read_table(&env.table(stream)).await);
    assert!(counts.values().all(|&n| n == 1), "{stream}: {counts:?}");
    let mut ids: Vec<String> = counts.into_keys().collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_full_refresh_keeps_every_row_until_it_completes() {
    use tributary_stripe::sandbox::Faults;
    let env = Env::stripe(200, "streams = [\"customers\"]\npage_size = 5").await;
    env.sync_ok(&[]).await;
    let mut before = env.sandbox.ids("customers");
    before.sort();
    assert!(before.len() > 10, "several pages: {}", before.len());
    assert_eq!(table_ids(&env, "customers").await, before);

    // A customer is deleted at Stripe; then a full refresh fails after its first page.
    let gone = before[before.len() / 2].clone();
    assert!(env.sandbox.delete("customers", &gone));
    env.sandbox.set_faults(
        tributary_stripe::sandbox::StripeFaults {
            forbid_after_first_page: true,
            ..Default::default()
        }
        .into(),
    );
    let out = env.run(&["sync", "--full-refresh"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        table_ids(&env, "customers").await,
        before,
        "every landed row stays while the refresh is incomplete"
    );

    // The next sync resumes the refresh; once complete, the deleted customer is gone: the
    // snapshot drops its row, or (its deletion being newer than the line the refresh drew
    // between listing and events, 10 s before it began) the replayed deletion flags it.
    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    let mut now = env.sandbox.ids("customers");
    now.sort();
    assert!(!now.contains(&gone));
    assert_eq!(now.len(), before.len() - 1);
    let batches = read_table(&env.table("customers")).await;
    let deleted = latest_by_id(&batches, "is_deleted");
    let mut live: Vec<String> = table_ids(&env, "customers")
        .await
        .into_iter()
        .filter(|id| deleted[id] != "true")
        .collect();
    live.sort();
    assert_eq!(live, now);
    assert!(
        deleted.get(&gone).is_none_or(|d| d == "true"),
        "{deleted:?}"
    );
}

/// The column names of a table, sorted.
async fn column_names(env: &Env, stream: &str) -> Vec<String> {
    let batches = read_table(&env.table(stream)).await;
    let mut names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn events_in_an_older_api_version_do_not_change_the_tables_columns() {
    let env = Env::stripe(40, "streams = [\"customers\", \"payment_intents\"]").await;
    env.sync_ok(&[]).await;
    let customers_before = column_names(&env, "customers").await;
    let intents_before = column_names(&env, "payment_intents").await;

    // The account's default version is older than the pinned one: Stripe renders its new
    // events' payloads in that version (customers with `sources`, payment intents with
    // `charges` instead of `latest_charge`).
    env.sandbox.set_account_api_version("2020-03-02");
    let ids = env.sandbox.ids("customers");
    env.sandbox
        .update("customers", &ids[0], serde_json::json!({"name": "Renamed"}))
        .unwrap();
    assert!(env.sandbox.delete("customers", &ids[1]));
    let intent = env.sandbox.create("payment_intents", serde_json::json!({}));
    let intent = intent["id"].as_str().unwrap().to_owned();
    let legacy = env.sandbox.latest_events(1);
    assert_eq!(legacy[0]["api_version"], "2020-03-02");
    assert!(legacy[0]["data"]["object"].get("charges").is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let summary = env.sync_ok(&[]).await;
    assert!(!summary.contains("new columns:"), "{summary}");
    assert_eq!(column_names(&env, "customers").await, customers_before);
    assert_eq!(column_names(&env, "payment_intents").await, intents_before);
    let customers = read_table(&env.table("customers")).await;
    assert_eq!(latest_by_id(&customers, "name")[&ids[0]], "Renamed");
    assert_eq!(latest_by_id(&customers, "is_deleted")[&ids[1]], "true");
    let intents = read_table(&env.table("payment_intents")).await;
    assert_eq!(id_counts(&intents)[&intent], 1);
}
