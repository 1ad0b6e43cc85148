//! Reverse-ETL sources end to end: models on a real PostgreSQL server and on Delta tables
//! a Stripe sync wrote, their changes delivered to the fake collector of the tracking tests
//! (which checks every request against the Tracking API's rules).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tributary::retl::mapping::message_id;

use crate::common::{Env, assert_success, read_table, run_binary, sigkill_until_done, strings};
use crate::postgres::Postgres;
use crate::stripe::tracking::{Collector, start};

const USERS: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text, plan text NOT NULL DEFAULT 'free');";

/// A config with one `postgres` source `app_db` whose model `users` is `model` (the lines
/// after `[sources.app_db.models.users]`, mapping included).
fn write_config(
    dir: &Path,
    pg: &Postgres,
    collector: &str,
    commit_every: u64,
    model: &str,
) -> PathBuf {
    let config = dir.join("tributary.toml");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nurl = {:?}\n\n[sync]\nlease_seconds = 1\n\n[sources.app_db]\ntype = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\ncommit_every = {commit_every}\n\n[sources.app_db.tracking]\nendpoint = \"{collector}\"\nwrite_key = \"wk\"\n\n[sources.app_db.models.users]\n{model}",
            dir.join("warehouse").display().to_string(),
            pg.url("app"),
        ),
    )
    .expect("write config");
    config
}

const IDENTIFY: &str = "query = \"SELECT id, email, name, plan FROM users\"\nid = \"id\"\n\n[sources.app_db.models.users.mapping]\ncall = \"identify\"\nuser_id = \"id\"\ntraits = [\"email\", \"name\", \"plan\"]\nsend = [\"added\", \"updated\", \"deleted\"]\n";

async fn sync(config: &Path) -> String {
    let out = run_binary(config, &["sync"]).await;
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The messages accepted since `from`, by `userId`.
fn since(collector: &Collector, from: usize) -> HashMap<String, Value> {
    let accepted = collector.accepted.lock().unwrap();
    let mut out = HashMap::new();
    for m in &accepted[from..] {
        let user = m["userId"].as_str().unwrap_or_default().to_owned();
        assert!(
            out.insert(user.clone(), m.clone()).is_none(),
            "two calls for user {user} in one run"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_model_sends_added_updated_and_deleted_rows_once() {
    let pg = Postgres::start().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'free' FROM generate_series(1, 50) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, &url, 20, IDENTIFY);

    // First run: every row, as identify calls, in three commits of at most 20.
    let summary = sync(&config).await;
    assert!(
        summary.contains("reverse ETL: 50 rows: 50 added, 0 updated, 0 deleted; 50 calls"),
        "{summary}"
    );
    assert!(
        summary.contains("tracking app_db: 50 messages accepted by the collector, 0 pending"),
        "{summary}"
    );
    let first = since(&collector, 0);
    assert_eq!(first.len(), 50);
    for i in 1..=50 {
        let m = &first[&i.to_string()];
        assert_eq!(m["type"], "identify");
        assert_eq!(
            m["traits"],
            json!({"email": format!("u{i}@example.com"), "name": format!("User {i}"), "plan": "free"})
        );
        assert_eq!(m["context"]["tributary"]["change"], "added");
        assert_eq!(
            m["messageId"],
            message_id("app_db", "users", &i.to_string(), 1)
        );
    }
    assert!(collector.violations.lock().unwrap().is_empty());
    let state = run_binary(&config, &["state"]).await;
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(
        state.contains("app_db.users") && state.contains("\"parts\":3"),
        "{state}"
    );
    assert!(
        state.contains("tracking outbox: 0 messages pending"),
        "{state}"
    );

    // Inserts, updates and deletes: exactly those changes.
    pg.execute(
        "INSERT INTO users VALUES (51, 'n51@example.com', 'New', 'free'), (52, 'n52@example.com', NULL, 'pro');
         UPDATE users SET plan = 'pro' WHERE id <= 3;
         UPDATE users SET name = name WHERE id = 4; -- no change in content
         DELETE FROM users WHERE id IN (10, 11);",
    )
    .await;
    let mark = collector.accepted.lock().unwrap().len();
    let summary = sync(&config).await;
    assert!(
        summary.contains("reverse ETL: 50 rows: 2 added, 3 updated, 2 deleted; 7 calls"),
        "{summary}"
    );
    let second = since(&collector, mark);
    let mut changes: Vec<(String, String)> = second
        .iter()
        .map(|(u, m)| {
            (
                u.clone(),
                m["context"]["tributary"]["change"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            ("1", "updated"),
            ("10", "deleted"),
            ("11", "deleted"),
            ("2", "updated"),
            ("3", "updated"),
            ("51", "added"),
            ("52", "added")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(second["1"]["traits"]["plan"], "pro");
    assert_eq!(second["52"]["traits"]["name"], Value::Null);
    // A deleted row's call carries the ids it was sent with, and no traits.
    assert_eq!(second["10"]["traits"], json!({}));
    assert_eq!(
        second["1"]["messageId"],
        message_id("app_db", "users", "1", 2)
    );
    assert_eq!(
        second["10"]["messageId"],
        message_id("app_db", "users", "10", 2)
    );

    // Nothing changed: nothing sent.
    let mark = collector.accepted.lock().unwrap().len();
    let summary = sync(&config).await;
    assert!(
        summary.contains("reverse ETL: 50 rows: 0 added, 0 updated, 0 deleted; 0 calls"),
        "{summary}"
    );
    assert_eq!(collector.accepted.lock().unwrap().len(), mark);

    // A row changed back to an earlier content, and a deleted row that comes back, get
    // new message ids (a collector deduplicating by id would drop a repeated one).
    pg.execute(
        "UPDATE users SET plan = 'free' WHERE id = 1; INSERT INTO users VALUES (10, 'u10@example.com', 'User 10', 'free');",
    )
    .await;
    let summary = sync(&config).await;
    assert!(
        summary.contains("reverse ETL: 51 rows: 1 added, 1 updated, 0 deleted; 2 calls"),
        "{summary}"
    );
    let third = since(&collector, mark);
    assert_eq!(
        third["1"]["messageId"],
        message_id("app_db", "users", "1", 3)
    );
    assert_eq!(
        third["10"]["messageId"],
        message_id("app_db", "users", "10", 3)
    );
    assert_eq!(third["10"]["context"]["tributary"]["change"], "added");
    let all: Vec<String> = collector.ids();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "every call has its own messageId");

    // The state table: one live row per id ever seen, the deleted one marked.
    let state = read_table(&dir.path().join("warehouse/_tributary/retl/app_db/users")).await;
    let ids = strings(&state, "id");
    let deleted = strings(&state, "is_deleted");
    assert_eq!(ids.len(), 52);
    let gone: HashSet<&str> = ids
        .iter()
        .zip(&deleted)
        .filter(|(_, d)| d.as_str() == "true")
        .map(|(i, _)| i.as_str())
        .collect();
    assert_eq!(gone, HashSet::from(["11"]));

    // `compact` merges the state table's small files (one per part and run) and keeps
    // every id's state: the next run still finds nothing changed.
    let out = run_binary(&config, &["compact", "--source", "app_db"]).await;
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("_tributary.retl.app_db.users"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("-> 1"), "{text}");
    let state = read_table(&dir.path().join("warehouse/_tributary/retl/app_db/users")).await;
    assert_eq!(strings(&state, "id").len(), 52);
    let mark = collector.accepted.lock().unwrap().len();
    let summary = sync(&config).await;
    assert!(
        summary.contains("0 added, 0 updated, 0 deleted; 0 calls"),
        "{summary}"
    );
    assert_eq!(collector.accepted.lock().unwrap().len(), mark);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_model_sends_and_records_nothing() {
    let pg = Postgres::start().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', NULL, 'free' FROM generate_series(1, 30) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let mapping =
        "\n[sources.app_db.models.users.mapping]\ncall = \"identify\"\nuser_id = \"id\"\n";
    for (model, says) in [
        (
            format!("query = \"SELECT id, email FROM userz\"\nid = \"id\"\n{mapping}"),
            "model `users`: the query failed: relation \"userz\" does not exist (42P01)",
        ),
        (
            "query = \"SELECT id AS uid, email FROM users\"\nid = \"uid\"\n\n[sources.app_db.models.users.mapping]\ncall = \"identify\"\nuser_id = \"id\"\n".to_owned(),
            "model `users`: mapping.user_id names the column `id`, which the model does not have (its columns: uid, email)",
        ),
        (
            format!("query = \"SELECT id, email FROM users\"\nid = \"user_id\"\n{mapping}"),
            "model `users`: the id column `user_id` is not among the query's columns (id, email)",
        ),
        (
            // Row 1 twice, found only once the first rows were read and staged.
            format!(
                "query = \"SELECT id, email FROM users UNION ALL SELECT 1, 'again@example.com'\"\nid = \"id\"\n{mapping}"
            ),
            "model `users`: the id \"1\" appears twice in the id column `id`",
        ),
        (
            format!(
                "query = \"SELECT CASE WHEN id = 30 THEN NULL ELSE id END AS id, email FROM users\"\nid = \"id\"\n{mapping}"
            ),
            "model `users`: a row has no value in the id column `id`",
        ),
        (
            format!(
                "query = \"SELECT id, email FROM users\"\nid = \"id\"\n{mapping}traits = [\"email\", \"nickname\"]\n"
            ),
            "mapping.traits names the column `nickname`, which the model does not have",
        ),
        (
            "query = \"SELECT id, email, name FROM users\"\nid = \"id\"\n\n[sources.app_db.models.users.mapping]\ncall = \"identify\"\nuser_id = \"name\"\n".to_owned(),
            "has no value in `name` (mapped to userId/anonymousId)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Small parts: the later errors come after parts were staged.
        let config = write_config(dir.path(), &pg, &url, 5, &model);
        let out = run_binary(&config, &["sync"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{model}\n{stdout}");
        assert!(stdout.contains(says), "{says}\n{stdout}");
        assert!(
            stdout.contains("app_db.users") && stdout.contains("failed"),
            "{stdout}"
        );
        let state = run_binary(&config, &["state"]).await;
        let state = String::from_utf8_lossy(&state.stdout);
        assert!(state.contains("no commit yet"), "{state}");
        assert!(
            state.contains("tracking outbox: 0 messages pending"),
            "{state}"
        );
        // `check` finds the errors visible without reading rows.
        if !says.contains("twice") && !says.contains("no value") {
            let check = run_binary(&config, &["check"]).await;
            let text = String::from_utf8_lossy(&check.stdout);
            assert_eq!(check.status.code(), Some(1), "{text}");
            assert!(text.contains(says), "{says}\n{text}");
        }
    }
    assert!(collector.accepted.lock().unwrap().is_empty());

    // Config errors stop before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!("[sources.app_db]\ntype = \"postgres\"\nurl = \"{}\"\n\n[sources.app_db.models.users]\n{IDENTIFY}", pg.url("app")),
    )
    .unwrap();
    let out = run_binary(&config, &["sync"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("needs `[sources.app_db.tracking]`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_shows_the_next_run_and_changes_nothing() {
    let pg = Postgres::start().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'free' FROM generate_series(1, 12) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, &url, 100, IDENTIFY);
    for _ in 0..2 {
        let out = run_binary(
            &config,
            &[
                "retl", "preview", "--source", "app_db", "--model", "users", "--limit", "3",
            ],
        )
        .await;
        assert_success(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "app_db.users: 12 rows: 12 added, 0 updated, 0 deleted; 12 calls would be sent (preview: nothing sent, nothing recorded)"
            )
        );
        let calls: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0]["type"], "identify");
        assert_eq!(calls[0]["messageId"], message_id("app_db", "users", "1", 1));
    }
    assert!(collector.accepted.lock().unwrap().is_empty());
    assert!(!dir.path().join("warehouse/_tributary/retl").exists());
    let out = run_binary(
        &config,
        &["retl", "preview", "--source", "app_db", "--model", "nope"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("source `app_db` has no model `nope`; its models: users")
    );
    // The run after the previews sends everything.
    let summary = sync(&config).await;
    assert!(summary.contains("12 added"), "{summary}");
    assert_eq!(collector.ids().len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_sends_each_change_once() {
    let pg = Postgres::start().await;
    let rows = 20_000;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'free' FROM generate_series(1, {rows}) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    // Many small commits, so kills land between them as well as while reading and
    // delivering.
    let config = write_config(dir.path(), &pg, &url, 500, IDENTIFY);
    let state = dir.path().join("warehouse/_tributary/retl/app_db/users");
    let killed = sigkill_until_done(&config, 16, 0x5eed_0e71, (40, 900), async |_| {}).await;
    assert!(killed >= 1, "no run was killed");
    // The rerun (when every round was killed, nothing ran to the end yet).
    sync(&config).await;

    // Every row's call arrived, with its one id; resent only for a batch the collector
    // took but whose acknowledgement the kill cut off.
    let ids = collector.ids();
    let unique: HashSet<&String> = ids.iter().collect();
    let want: HashSet<String> = (1..=rows)
        .map(|i| message_id("app_db", "users", &i.to_string(), 1))
        .collect();
    assert_eq!(unique.len(), rows, "killed {killed} times");
    assert!(unique.iter().all(|id| want.contains(*id)));
    assert!(
        ids.len() - unique.len() <= killed as usize * 2_500,
        "{} resent after {killed} kills",
        ids.len() - unique.len()
    );
    assert!(collector.violations.lock().unwrap().is_empty());
    let recorded = read_table(&state).await;
    let recorded_ids = strings(&recorded, "id");
    assert_eq!(recorded_ids.len(), rows);
    assert_eq!(recorded_ids.iter().collect::<HashSet<_>>().len(), rows);

    // The next run finds nothing left to send.
    let mark = collector.ids().len();
    let summary = sync(&config).await;
    assert!(
        summary.contains("0 added, 0 updated, 0 deleted; 0 calls"),
        "{summary}"
    );
    assert_eq!(collector.ids().len(), mark);
    eprintln!(
        "reverse ETL: {killed} runs killed, {} calls resent",
        ids.len() - unique.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_model_over_synced_stripe_customers_sends_identify_calls() {
    let env = Env::stripe(40, "streams = [\"customers\"]\n").await;
    env.sync_ok(&[]).await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!(
            "{text}\n[sources.lake]\ntype = \"delta\"\n\n[sources.lake.tracking]\nendpoint = \"{url}\"\nwrite_key = \"wk\"\n\n[sources.lake.models.customers]\ntable = \"stripe/customers\"\ncolumns = [\"id\", \"email\", \"name\", \"is_deleted\"]\nfilter = \"email IS NOT NULL AND is_deleted = false\"\nid = \"id\"\n\n[sources.lake.models.customers.mapping]\ncall = \"identify\"\nuser_id = \"id\"\ntraits = [\"email\", \"name\"]\n"
        ),
    )
    .unwrap();
    let customers = read_table(&env.table("customers")).await;
    let want: HashMap<String, (String, String)> = strings(&customers, "id")
        .into_iter()
        .zip(strings(&customers, "email"))
        .zip(strings(&customers, "name"))
        .filter(|((_, email), _)| !email.is_empty())
        .map(|((id, email), name)| (id, (email, name)))
        .collect();
    assert!(want.len() >= 3, "{}", want.len());

    let summary = env.sync_ok(&["--source", "lake"]).await;
    let n = want.len();
    assert!(
        summary.contains(&format!("{n} added, 0 updated, 0 deleted; {n} calls")),
        "{summary}"
    );
    let got = since(&collector, 0);
    assert_eq!(got.len(), n);
    for (id, (email, name)) in &want {
        let m = &got[id];
        assert_eq!(m["traits"]["email"], email.as_str());
        assert_eq!(m["traits"]["name"], name.as_str());
    }

    // A customer renamed at Stripe: the next Stripe sync lands it, the next model run
    // sends one update.
    let (id, _) = want.iter().next().unwrap();
    env.sandbox
        .update("customers", id, json!({"name": "Renamed Customer"}))
        .expect("customer exists");
    env.sync_ok(&["--source", "stripe"]).await;
    let mark = collector.ids().len();
    let summary = env.sync_ok(&["--source", "lake"]).await;
    assert!(
        summary.contains("0 added, 1 updated, 0 deleted; 1 calls"),
        "{summary}"
    );
    let update = since(&collector, mark);
    assert_eq!(update[id]["traits"]["name"], "Renamed Customer");
    assert!(collector.violations.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_against_the_ca_given() {
    let pg = Postgres::start_with_tls().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'free' FROM generate_series(1, 3) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, &url, 100, IDENTIFY);
    let with_tls = |lines: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("tls = \"disable\"\n", lines);
        std::fs::write(dir.path().join("tls.toml"), text).unwrap();
        dir.path().join("tls.toml")
    };
    // The server's certificate is signed by a CA the system does not trust.
    let untrusted = with_tls("tls = \"require\"\n");
    let out = run_binary(&untrusted, &["sync"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("certificate") && stdout.contains("ca_file"),
        "{stdout}"
    );
    assert!(collector.ids().is_empty());
    // With `ca_file` naming that CA, the connection is verified and encrypted.
    let trusted = with_tls(&format!(
        "tls = \"require\"\nca_file = {:?}\n",
        pg.ca_file().display().to_string()
    ));
    let summary = sync(&trusted).await;
    assert!(summary.contains("3 rows: 3 added"), "{summary}");
    assert_eq!(collector.ids().len(), 3);
    // The server logged the sync's connection as encrypted.
    let log = pg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("application_name=tributary") && l.contains("SSL enabled")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_required_of_a_server_without_it_is_a_clear_error() {
    let pg = Postgres::start().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users VALUES (1, 'a@example.com', 'A', 'free');"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, &url, 100, IDENTIFY);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("tls = \"disable\"", "tls = \"require\""),
    )
    .unwrap();
    let out = run_binary(&config, &["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("app_db") && stdout.contains("FAILED") && stdout.contains("TLS"),
        "{stdout}"
    );
    // `prefer` falls back to plain TCP, as libpq's default does.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("tls = \"require\"", "tls = \"prefer\""),
    )
    .unwrap();
    let summary = sync(&config).await;
    assert!(summary.contains("1 rows: 1 added"), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_held_by_another_worker_is_leased_not_run() {
    let pg = Postgres::start().await;
    pg.execute(&format!(
        "{USERS} INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'free' FROM generate_series(1, 5) g;"
    ))
    .await;
    let collector = Arc::new(Collector::default());
    let url = start(Arc::clone(&collector)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, &url, 100, IDENTIFY);
    // Another worker's live lease on the model, as `tributary::lease` writes it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("lease_seconds = 1", "lease_seconds = 120"),
    )
    .unwrap();
    let warehouse = tributary::warehouse::Warehouse::new(&tributary::config::WarehouseConfig {
        url: dir.path().join("warehouse").display().to_string(),
        ..Default::default()
    })
    .unwrap();
    let leases = tributary::lease::for_warehouse(&warehouse, 120).unwrap();
    let tributary::lease::Acquired::Taken(held) = leases.acquire("app_db", "users").await.unwrap()
    else {
        panic!("the lease is free")
    };
    let summary = sync(&config).await;
    assert!(
        summary.contains("app_db.users") && summary.contains("leased"),
        "{summary}"
    );
    assert!(collector.ids().is_empty());
    held.release().await;
    let summary = sync(&config).await;
    assert!(summary.contains("5 rows: 5 added"), "{summary}");
    assert_eq!(collector.ids().len(), 5);
}
