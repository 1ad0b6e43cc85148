//! Salesforce, end to end: the real binary against the Salesforce simulator. Discovery of
//! custom objects and fields, REST and Bulk reads, incremental syncs after updates and
//! deletes, a session expiring mid-sync, the API budget deferring objects, SIGKILL and
//! resume, and bad credentials.

use std::time::Duration;

use arrow::datatypes::{DataType, TimeUnit};
use tributary_salesforce::sandbox::{self as sf, Faults, SalesforceSandbox, SandboxConfig};

use crate::common::{
    Env, Vendor, assert_success, id_counts, latest_by_id, read_table, sigkill_until_done,
};

/// Salesforce; each test gives its own credentials (the OAuth flows differ).
pub struct Salesforce;

impl Vendor for Salesforce {
    type Sandbox = SalesforceSandbox;
    const NAME: &'static str = "salesforce";
    /// The login URL is the test's (some point elsewhere on purpose).
    fn source_lines(_: &SalesforceSandbox) -> String {
        "requests_per_second = 500\npage_size = 200\nbulk_poll_ms = 20\n".to_owned()
    }
}

/// A Salesforce simulator, a temp warehouse and a config file pointing at both.
type SfEnv = Env<Salesforce>;

impl Env<Salesforce> {
    /// Starts a simulator and writes a config with `[sync]` lines `sync` and the source's
    /// lines `source` (credentials, objects, ...).
    async fn new(sandbox: SandboxConfig, sync: &str, source: &str) -> SfEnv {
        let sandbox = SalesforceSandbox::start(sandbox, 0)
            .await
            .expect("sandbox starts");
        let login = format!("login_url = \"{}\"\n{source}", sandbox.url());
        Env::with_sandbox(sandbox, sync, &login)
    }

    /// Rewrites the config: `[sync]` lines, and the source's lines after its own.
    fn write_config(&self, sync: &str, source: &str) {
        self.write_sections(sync, source);
    }

    /// Asserts the table of `object` holds each of the org's records (deleted ones
    /// included) exactly once.
    async fn assert_exactly_once(&self, object: &str, stream: &str) {
        let counts = id_counts(&read_table(&self.table(stream)).await);
        let mut want = self.sandbox.all_ids(object);
        want.sort();
        let mut got: Vec<String> = counts.keys().cloned().collect();
        got.sort();
        assert_eq!(got, want, "{stream}: every record lands");
        assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
    }
}

fn refresh_token_auth() -> String {
    format!(
        "client_id = \"{}\"\nclient_secret = \"{}\"\nrefresh_token = \"{}\"\n",
        sf::CLIENT_ID,
        sf::CLIENT_SECRET,
        sf::REFRESH_TOKEN
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_and_bulk_syncs_discover_custom_objects_and_land_every_change_once() {
    // JWT bearer flow, with the test-only key the simulator trusts.
    let source = format!(
        "client_id = \"{}\"\nusername = \"{}\"\nprivate_key_path = {:?}\nobjects = [\"Account\", \"Contact\", \"OpportunityHistory\", \"Invoice__c\", \"CaseStatus\"]\nbulk_threshold = 100\n",
        sf::CLIENT_ID,
        sf::USERNAME,
        sf::test_private_key_path().display().to_string()
    );
    let env = SfEnv::new(
        SandboxConfig {
            records: 60,
            ..Default::default()
        },
        "",
        &source,
    )
    .await;

    let out = env.run(&["discover"]).await;
    assert_success(&out);
    let discovered = String::from_utf8_lossy(&out.stdout);
    for line in [
        "salesforce.opportunity_history",
        "salesforce.invoice__c",
        "store_location__latitude__s",
        "customer_since__c",
        "cursor system_modstamp",
    ] {
        assert!(discovered.contains(line), "{line} in {discovered}");
    }

    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("salesforce.contact"), "{summary}");
    // 120 contacts and 120 opportunity histories over the threshold: Bulk; the rest REST.
    assert_eq!(env.sandbox.stats().bulk_jobs, 2);
    for (object, stream) in [
        ("Account", "account"),
        ("Contact", "contact"),
        ("OpportunityHistory", "opportunity_history"),
        ("Invoice__c", "invoice__c"),
        ("CaseStatus", "case_status"),
    ] {
        env.assert_exactly_once(object, stream).await;
    }
    let accounts = read_table(&env.table("account")).await;
    let schema = accounts[0].schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(ty("customer_since__c"), DataType::Date32);
    assert_eq!(
        ty("system_modstamp"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("annual_revenue"), DataType::Float64);
    assert_eq!(ty("number_of_employees"), DataType::Int64);
    assert_eq!(ty("tier__c"), DataType::Utf8);
    assert!(schema.field_with_name("billing_city").is_ok());
    assert!(schema.field_with_name("billing_address").is_err());
    let contacts = read_table(&env.table("contact")).await;
    assert_eq!(
        contacts[0]
            .schema()
            .field_with_name("birthdate")
            .unwrap()
            .data_type(),
        &DataType::Date32,
        "Bulk CSV dates land as dates too"
    );
    // Values read back from the Bulk CSV are the org's.
    let contact_id = env.sandbox.ids("Contact")[0].clone();
    let emails = latest_by_id(&contacts, "email");
    let record = env.sandbox.record("Contact", &contact_id).unwrap();
    assert_eq!(emails[&contact_id], record["Email"].as_str().unwrap());

    // Changes: a new account, a renamed contact, a deleted account.
    let accounts = env.sandbox.ids("Account");
    let created = env
        .sandbox
        .create(
            "Account",
            serde_json::json!({"Name": "New Co", "Tier__c": "Gold"}),
        )
        .unwrap();
    env.sandbox
        .update(
            "Contact",
            &contact_id,
            serde_json::json!({"LastName": "Renamed"}),
        )
        .unwrap();
    env.sandbox.delete("Account", &accounts[1]).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sync_ok(&[]).await;
    let batches = read_table(&env.table("account")).await;
    let counts = id_counts(&batches);
    assert_eq!(counts.len(), accounts.len() + 1, "the new account landed");
    assert!(
        counts.values().all(|&n| n == 1),
        "one row per account, its latest version: {counts:?}"
    );
    let deleted = latest_by_id(&batches, "is_deleted");
    assert_eq!(deleted[&accounts[1]], "true");
    assert_eq!(deleted[&created], "false");
    assert_eq!(latest_by_id(&batches, "tier__c")[&created], "Gold");
    let contacts = read_table(&env.table("contact")).await;
    assert_eq!(
        id_counts(&contacts)[&contact_id],
        1,
        "latest state: one row"
    );
    assert_eq!(latest_by_id(&contacts, "last_name")[&contact_id], "Renamed");
    // The snapshot object was replaced, not appended to.
    env.assert_exactly_once("CaseStatus", "case_status").await;

    // Nothing changed: the lookback window is read again, and nothing lands.
    env.sync_ok(&[]).await;
    let total: usize = id_counts(&read_table(&env.table("account")).await)
        .values()
        .sum();
    assert_eq!(
        total,
        accounts.len() + 1,
        "one row per account, nothing more"
    );

    let out = env.run(&["state"]).await;
    assert_success(&out);
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(
        state.contains("salesforce.account") && state.contains("\"phase\":\"incremental\""),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_expiring_mid_sync_is_renewed_and_the_sync_succeeds() {
    let env = SfEnv::new(
        SandboxConfig {
            records: 250,
            // Every token dies after three requests: several renewals per sync.
            session_ttl_requests: Some(3),
            ..Default::default()
        },
        "",
        // One query at a time: a token that dies after three requests is not a real
        // session (those expire by time, all queries in flight at once, and one renewal
        // serves them all), and would outlive no eight queries in flight.
        &format!(
            "{}objects = [\"Contact\"]\nbulk_threshold = 1000000\nmax_concurrency = 1\n",
            refresh_token_auth()
        ),
    )
    .await;
    env.sync_ok(&[]).await;
    env.assert_exactly_once("Contact", "contact").await;
    let stats = env.sandbox.stats();
    assert!(stats.invalid_sessions >= 1, "{stats:?}");
    assert!(stats.tokens_issued >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_budget_defers_objects_and_the_next_run_finishes_them() {
    let env = SfEnv::new(
        SandboxConfig {
            records: 10,
            // Discovery takes 5 requests and each object 2 (a count, one page): Account
            // leaves 7/16, Contact 9/16, past half of the limit.
            daily_api_limit: 16,
            ..Default::default()
        },
        // One object at a time, so the budget is checked between them.
        "concurrency = 1",
        &format!(
            "{}objects = [\"Account\", \"Contact\", \"Lead\", \"Opportunity\"]\napi_budget_percent = 50\n",
            refresh_token_auth()
        ),
    )
    .await;
    let out = env.run(&["sync"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "deferred, not failed: {stdout}");
    assert!(
        stdout.contains("2 streams deferred") && stdout.contains("0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("api_budget_percent"), "{stdout}");
    env.assert_exactly_once("Account", "account").await;
    env.assert_exactly_once("Contact", "contact").await;
    for stream in ["lead", "opportunity"] {
        assert!(
            read_table(&env.table(stream)).await.is_empty(),
            "{stream} was not started"
        );
    }

    // A new day: the deferred objects are synced, the others are not landed twice.
    env.sandbox.reset_api_usage();
    env.sandbox.set_daily_api_limit(15_000);
    let summary = env.sync_ok(&[]).await;
    assert!(!summary.contains("deferred"), "{summary}");
    for (object, stream) in [
        ("Account", "account"),
        ("Contact", "contact"),
        ("Lead", "lead"),
        ("Opportunity", "opportunity"),
    ] {
        env.assert_exactly_once(object, stream).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_out_of_requests_mid_object_commits_what_was_read_and_defers() {
    let env = SfEnv::new(
        SandboxConfig {
            records: 450,
            // Discovery takes 2 requests, the count 1, then two of the five pages fit.
            daily_api_limit: 5,
            ..Default::default()
        },
        "",
        // A budget of 100%: Salesforce's own refusal stops the read, not the budget check
        // before each page. One page after another, so exactly two pages fit.
        &format!(
            "{}objects = [\"Contact\"]\nbulk_threshold = 1000000\napi_budget_percent = 100\nmax_concurrency = 1\n",
            refresh_token_auth()
        ),
    )
    .await;
    let out = env.run(&["sync"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "deferred, not failed: {stdout}");
    assert!(
        stdout.contains("REQUEST_LIMIT_EXCEEDED") && stdout.contains("1 streams deferred"),
        "{stdout}"
    );
    let counts = id_counts(&read_table(&env.table("contact")).await);
    assert_eq!(counts.len(), 400, "the two pages read were committed");

    env.sandbox.reset_api_usage();
    env.sandbox.set_daily_api_limit(15_000);
    env.sync_ok(&[]).await;
    env.assert_exactly_once("Contact", "contact").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_resume_lands_everything_exactly_once() {
    let env = SfEnv::new(
        SandboxConfig {
            records: 400,
            bulk_unsupported: vec!["Task".into()],
            ..Default::default()
        },
        // Small commits, so kills land between, during and after them; a killed run's
        // leases expire in a second.
        "commit_every = 50\nlease_seconds = 1",
        // Contacts (800) over the threshold: Bulk, 50 rows a page; tasks (800) too, but
        // Bulk refuses them: REST, 200 a page.
        &format!(
            "{}objects = [\"Contact\", \"Task\"]\nbulk_threshold = 500\nbulk_page_size = 50\n",
            refresh_token_auth()
        ),
    )
    .await;
    // Slow answers, so a whole sync takes a few seconds and the kills land inside it.
    env.sandbox.set_faults(Faults {
        slow_ms: 100,
        slow_rate: 1.0,
        ..Faults::default()
    });
    let env = &env;
    let killed = sigkill_until_done(
        &env.config,
        10,
        0x5eed_5a1e_5f0c_e123,
        (300, 1200),
        async |round| {
            for stream in ["contact", "task"] {
                if env.table(stream).join("_delta_log").exists() {
                    let counts = id_counts(&read_table(&env.table(stream)).await);
                    assert!(
                        counts.values().all(|&n| n == 1),
                        "round {round}: a {stream} landed twice after a kill"
                    );
                }
            }
        },
    )
    .await;
    assert!(
        killed >= 3,
        "the kills must interrupt running syncs ({killed})"
    );
    env.sandbox.set_faults(Faults::default());
    env.sync_ok(&[]).await;
    env.assert_exactly_once("Contact", "contact").await;
    env.assert_exactly_once("Task", "task").await;
    assert!(env.sandbox.stats().bulk_jobs >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_config_mistakes_fail_clearly_and_write_nothing() {
    let env = SfEnv::new(
        SandboxConfig::default(),
        "",
        &format!(
            "client_id = \"{}\"\nclient_secret = \"{}\"\nrefresh_token = \"revoked-refresh-token\"\n",
            sf::CLIENT_ID,
            sf::CLIENT_SECRET
        ),
    )
    .await;
    for command in ["check", "sync"] {
        let out = env.run(&[command]).await;
        // `check` says it in its FAILED line, `sync` in its summary and its log.
        let stderr = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        for text in [
            "Salesforce rejected the credentials (HTTP 400)",
            "invalid_grant: expired access/refresh token",
            "`refresh_token`",
        ] {
            assert!(stderr.contains(text), "{command}: {text} in {stderr}");
        }
        assert!(!stderr.contains("revoked-refresh-token"), "{stderr}");
        assert!(!stderr.contains(sf::CLIENT_SECRET), "{stderr}");
    }
    assert!(
        !env.warehouse().join("salesforce").exists(),
        "nothing written"
    );

    let login = format!("login_url = \"{}\"\n", env.sandbox.url());
    for (source, expected) in [
        (
            format!(
                "login_url = \"https://login.salesforce.com\"\nclient_id = \"{}\"\nclient_secret = \"x\"\n",
                sf::CLIENT_ID
            ),
            vec![
                "tributary.toml",
                "sources.salesforce.login_url",
                "My Domain",
            ],
        ),
        (
            format!("{login}{}objects = [\"Acount\"]\n", refresh_token_auth()),
            vec![
                "`sources.salesforce.objects[0]`",
                "not an object of this org",
            ],
        ),
        (
            format!(
                "{login}{}[sources.salesforce.fields.Account]\ninclude = [\"Nmae\"]\n",
                refresh_token_auth()
            ),
            vec!["`sources.salesforce.fields.Account.include`", "Nmae"],
        ),
    ] {
        env.write_config("", &source);
        let out = env.run(&["sync"]).await;
        let stderr = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{text} in {stderr}");
        }
        let written = env.warehouse().join("salesforce");
        assert!(
            !written.exists(),
            "nothing written, but found {:?}",
            std::fs::read_dir(&written).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
    }
}
