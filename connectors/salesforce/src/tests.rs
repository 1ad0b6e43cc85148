//! The connector against the Salesforce simulator: the three OAuth flows, discovery of
//! custom objects and fields, REST and Bulk reads that land every record once, cursors that
//! resume exactly, incremental reads after changes and deletes, an expiring session, the
//! API budget, objects too wide for one query URL, Bulk jobs Salesforce refuses, and the
//! SDK's conformance kit on both read paths.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};
use tributary_sdk::conformance::{self, Harness};
use tributary_sdk::connector::find_named;
use tributary_sdk::cursor::decode;
use tributary_sdk::{Connector, Error, Page, ReadRequest, Records, Secret, SourceContext};

use crate::sandbox::{
    self as sf, BadShape, BulkRefusal, Faults, SalesforceFaults, SalesforceSandbox, SandboxConfig,
};
use crate::streams::Cursor;
use crate::{Salesforce, SalesforceConfig};

async fn sandbox(records: usize) -> SalesforceSandbox {
    sandbox_with(SandboxConfig {
        records,
        ..Default::default()
    })
    .await
}

async fn sandbox_with(config: SandboxConfig) -> SalesforceSandbox {
    SalesforceSandbox::start(config, 0).await.unwrap()
}

/// A refresh-token config against `sandbox`, REST only unless `bulk_threshold` says.
fn config(sandbox: &SalesforceSandbox, objects: &[&str]) -> SalesforceConfig {
    let mut c = SalesforceConfig::refresh_token(
        sf::CLIENT_ID,
        Secret::new(sf::CLIENT_SECRET),
        Secret::new(sf::REFRESH_TOKEN),
    );
    c.login_url = sandbox.url();
    c.objects = Some(objects.iter().map(|s| (*s).to_owned()).collect());
    c.page_size = 200;
    c.bulk_page_size = 100;
    c.bulk_poll_ms = 10;
    c.requests_per_second = 2000.0;
    c.bulk_threshold = crate::config::MAX_BULK_THRESHOLD;
    // One page after another: these tests check the walk itself (its pages, its cursor
    // after each); the concurrent first read has its own tests (`concurrent`).
    c.max_concurrency = 1;
    c
}

/// `c` with first reads split into time ranges read at once.
fn concurrent(mut c: SalesforceConfig) -> SalesforceConfig {
    c.max_concurrency = 8;
    c
}

fn connector(config: SalesforceConfig) -> Salesforce {
    Salesforce::new(config, SourceContext::default()).unwrap()
}

async fn read(source: &Salesforce, stream: &str, cursor: Option<Value>) -> Vec<Page> {
    try_read(source, stream, cursor, false).await.unwrap()
}

/// The read of `stream` the runtime would ask for: its schema as discovered (the org is
/// described once per source, so this costs the read nothing), the committed cursor as
/// JSON (decoded by the SDK on its way to the connector).
async fn request(
    source: &Salesforce,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> Result<ReadRequest, Error> {
    let plans = source.plans().await?;
    Ok(ReadRequest {
        schema: find_named(plans, stream, |p| &p.schema.name)?
            .schema
            .clone(),
        cursor,
        full_refresh,
    })
}

async fn try_read(
    source: &Salesforce,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> Result<Vec<Page>, Error> {
    let request = request(source, stream, cursor, full_refresh).await?;
    let mut pages = tributary_sdk::Source::read(source, request).await?;
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page?;
        // Every cursor is one the next run can start from.
        decode::<Cursor>(stream, Some(page.cursor.clone())).unwrap();
        out.push(page);
    }
    Ok(out)
}

/// `(id, deleted)` of every record of the pages.
fn records(pages: &[Page]) -> Vec<(String, bool)> {
    pages
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(values) => values
                .iter()
                .map(|r| (r.value["id"].as_str().unwrap().to_owned(), r.is_deleted))
                .collect::<Vec<_>>(),
            Records::Json { .. } => panic!("Salesforce pages are values"),
        })
        .collect()
}

fn ids(pages: &[Page]) -> Vec<String> {
    records(pages).into_iter().map(|(id, _)| id).collect()
}

fn assert_exactly_once(got: &[String], expected: &[String]) {
    let mut seen = HashSet::new();
    for id in got {
        assert!(seen.insert(id), "{id} landed twice");
    }
    let expected: HashSet<_> = expected.iter().collect();
    let missing: Vec<_> = expected.difference(&seen).take(5).collect();
    let extra: Vec<_> = seen.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}

fn phase(page: &Page) -> &str {
    page.cursor["phase"].as_str().unwrap_or("none")
}

/// Waits until changes made so far are in a past second (reads stop before the current
/// second of Salesforce's clock).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn every_flow_logs_in_and_bad_credentials_say_what_to_check() {
    let sandbox = sandbox(5).await;
    connector(config(&sandbox, &["Account"]))
        .check()
        .await
        .unwrap();

    let jwt: SalesforceConfig = serde_json::from_value(json!({
        "login_url": sandbox.url(),
        "client_id": sf::CLIENT_ID,
        "username": sf::USERNAME,
        "private_key_path": sf::test_private_key_path(),
    }))
    .unwrap();
    connector(jwt).check().await.unwrap();

    let cc: SalesforceConfig = serde_json::from_value(json!({
        "login_url": sandbox.url(),
        "client_id": sf::CLIENT_ID,
        "client_secret": sf::CLIENT_SECRET,
    }))
    .unwrap();
    connector(cc).check().await.unwrap();
    assert_eq!(sandbox.stats().tokens_issued, 3);

    let mut wrong = config(&sandbox, &["Account"]);
    wrong.refresh_token = Some(Secret::new("revoked-token"));
    match connector(wrong).check().await.unwrap_err() {
        Error::Auth {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(message.contains("invalid_grant"), "{message}");
            assert!(message.contains("`refresh_token`"), "{message}");
            assert!(!message.contains("revoked-token"), "{message}");
        }
        other => panic!("expected an auth error, got {other}"),
    }
    let wrong_user: SalesforceConfig = serde_json::from_value(json!({
        "login_url": sandbox.url(),
        "client_id": sf::CLIENT_ID,
        "username": "someone@else.test",
        "private_key_path": sf::test_private_key_path(),
    }))
    .unwrap();
    let err = connector(wrong_user).check().await.unwrap_err().to_string();
    assert!(
        err.contains("user hasn't approved this consumer") && err.contains("`username`"),
        "{err}"
    );
}

#[tokio::test]
async fn discovery_finds_custom_objects_fields_and_types() {
    let sandbox = sandbox(5).await;
    let sf = connector(config(
        &sandbox,
        &["Account", "OpportunityHistory", "Invoice__c", "CaseStatus"],
    ));
    let schemas = sf.discover().await.unwrap();
    let names: Vec<&str> = schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "account",
            "opportunity_history",
            "invoice__c",
            "case_status"
        ]
    );
    let by_name: HashMap<&str, _> = schemas.iter().map(|s| (s.name.as_str(), s)).collect();
    use tributary_sdk::ColumnType as T;
    let ty = |table: &str, column: &str| by_name[table].column(column).map(|c| c.ty);
    assert_eq!(ty("account", "tier__c"), Some(T::String));
    assert_eq!(ty("account", "customer_since__c"), Some(T::Date));
    assert_eq!(ty("account", "health_score__c"), Some(T::Number));
    assert_eq!(ty("account", "annual_revenue"), Some(T::Number));
    assert_eq!(ty("account", "number_of_employees"), Some(T::Integer));
    assert_eq!(ty("account", "billing_city"), Some(T::String));
    assert_eq!(ty("account", "billing_latitude"), Some(T::Number));
    assert_eq!(ty("account", "billing_address"), None);
    assert_eq!(ty("account", "system_modstamp"), Some(T::Timestamp));
    assert_eq!(ty("account", "owner_id"), Some(T::String));
    assert_eq!(ty("invoice__c", "amount__c"), Some(T::Number));
    assert_eq!(
        ty("invoice__c", "store_location__latitude__s"),
        Some(T::Number)
    );
    assert_eq!(ty("invoice__c", "paid__c"), Some(T::Boolean));
    assert_eq!(ty("opportunity_history", "close_date"), Some(T::Date));
    assert_eq!(
        by_name["account"].cursor_field.as_deref(),
        Some("system_modstamp")
    );
    assert_eq!(by_name["case_status"].cursor_field, None);

    // Discovery describes the org once per source.
    let requests = sandbox.stats().api_requests;
    sf.discover().await.unwrap();
    assert_eq!(sandbox.stats().api_requests, requests);

    // A field added in the org later is a column of the next source built.
    sandbox
        .add_field("Account", "Segment__c", "string")
        .unwrap();
    let again = connector(config(&sandbox, &["Account"]));
    let schemas = again.discover().await.unwrap();
    assert!(schemas[0].column("segment__c").is_some());

    // An object the org lacks is an error naming `objects`.
    let missing = connector(config(&sandbox, &["Account", "Invoices__c"]));
    match missing.discover().await.unwrap_err() {
        Error::Config { key, message } => {
            assert_eq!(key, "objects[1]");
            assert!(!message.contains("Invoices__c"), "{message}");
        }
        other => panic!("{other}"),
    }
    // Field lists name what they read.
    let mut only = config(&sandbox, &["Account"]);
    only.fields.insert(
        "Account".into(),
        crate::config::FieldSelection {
            include: Some(vec!["Name".into(), "Tier__c".into()]),
            exclude: vec![],
        },
    );
    let schema = &connector(only).discover().await.unwrap()[0];
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["id", "system_modstamp", "name", "tier__c"]);
}

#[tokio::test]
async fn rest_reads_land_every_record_once_with_typed_values() {
    let sandbox = sandbox(450).await;
    let sf = connector(config(&sandbox, &["Account"]));
    let pages = read(&sf, "account", None).await;
    assert_eq!(pages.len(), 3, "450 records in pages of 200");
    assert!(pages.iter().all(|p| !p.reset));
    assert_eq!(
        pages
            .iter()
            .map(|p| p.cursor["complete"].clone())
            .collect::<Vec<_>>(),
        [json!(false), json!(false), json!(true)]
    );
    assert_exactly_once(&ids(&pages), &sandbox.ids("Account"));
    let Records::Values(values) = &pages[0].records else {
        panic!()
    };
    let first = &values[0].value;
    assert!(first.get("attributes").is_none() && first.get("attributes_type").is_none());
    assert!(first["system_modstamp"].is_string());
    assert!(first["annual_revenue"].is_number());
    assert!(
        first.get("is_deleted").is_none(),
        "IsDeleted is the record's flag"
    );
    assert_eq!(sandbox.stats().bulk_jobs, 0);

    // The last cursor is the newest (stamp, Id); nothing new, nothing read.
    let last = pages.last().unwrap().cursor.clone();
    let newest = sandbox
        .ids("Account")
        .into_iter()
        .map(|id| {
            let r = sandbox.record("Account", &id).unwrap();
            (
                crate::streams::canonical_stamp(r["SystemModstamp"].as_str().unwrap()).unwrap(),
                id,
            )
        })
        .max()
        .unwrap();
    assert_eq!(last["stamp"], json!(newest.0));
    assert_eq!(last["id"], json!(newest.1));
    assert!(ids(&read(&sf, "account", Some(last)).await).is_empty());
}

#[tokio::test]
async fn bulk_reads_land_every_record_once_and_resume_by_locator() {
    let sandbox = sandbox(120).await;
    let mut c = config(&sandbox, &["Contact"]);
    c.bulk_threshold = 100;
    let sf = connector(c);
    let pages = read(&sf, "contact", None).await;
    assert_eq!(sandbox.stats().bulk_jobs, 1);
    assert_eq!(
        sandbox.stats().bulk_result_pages,
        3,
        "240 contacts, 100 a page"
    );
    assert_eq!(
        pages.iter().map(phase).collect::<Vec<_>>(),
        ["bulk", "bulk", "incremental"]
    );
    assert_exactly_once(&ids(&pages), &sandbox.ids("Contact"));

    // Resuming from the first page's cursor reads the job's remaining pages, nothing else.
    let before: Vec<String> = ids(&pages[..1]);
    let rest = read(&sf, "contact", Some(pages[0].cursor.clone())).await;
    assert_eq!(
        sandbox.stats().bulk_jobs,
        1,
        "the job is resumed, not run again"
    );
    let mut all = before.clone();
    all.extend(ids(&rest));
    assert_exactly_once(&all, &sandbox.ids("Contact"));
    assert_eq!(rest.last().unwrap().cursor, pages.last().unwrap().cursor);

    // A job Salesforce no longer has is run again from where it started.
    let mut gone = pages[0].cursor.clone();
    gone["job"] = json!("750000000000999AAA");
    let again = read(&sf, "contact", Some(gone)).await;
    assert_eq!(sandbox.stats().bulk_jobs, 2);
    assert_exactly_once(&ids(&again), &sandbox.ids("Contact"));
}

#[tokio::test]
async fn objects_bulk_cannot_serve_fall_back_to_rest_snapshots() {
    let sandbox = sandbox(5).await;
    let mut c = config(&sandbox, &["CaseStatus"]);
    c.bulk_threshold = 0;
    let sf = connector(c);
    let pages = read(&sf, "case_status", None).await;
    assert_eq!(sandbox.stats().bulk_jobs, 0, "the job was refused");
    assert_eq!(pages.len(), 1);
    assert!(pages[0].reset, "a snapshot replaces the table");
    assert_eq!(
        pages[0].cursor,
        json!({"phase": "snapshot", "after_id": null, "complete": true})
    );
    assert_exactly_once(&ids(&pages), &sandbox.ids("CaseStatus"));
    // The next run is a new snapshot.
    let next = read(&sf, "case_status", Some(pages[0].cursor.clone())).await;
    assert!(next[0].reset);
    assert_eq!(ids(&next).len(), 5);
}

/// Creates, updates and deletes, then checks an incremental read lands exactly those.
async fn changes_land_exactly(bulk: bool) {
    let sandbox = sandbox(30).await;
    let mut c = config(&sandbox, &["Opportunity"]);
    if bulk {
        c.bulk_threshold = 0;
    }
    let sf = connector(c);
    let pages = read(&sf, "opportunity", None).await;
    let end = pages.last().unwrap().cursor.clone();
    let existing = sandbox.ids("Opportunity");
    let created = sandbox
        .create(
            "Opportunity",
            json!({"Name": "Big deal", "Amount": 125000.5}),
        )
        .unwrap();
    sandbox
        .update(
            "Opportunity",
            &existing[0],
            json!({"StageName": "Closed Won"}),
        )
        .unwrap();
    sandbox.delete("Opportunity", &existing[1]).unwrap();
    settle().await;
    let changes = read(&sf, "opportunity", Some(end)).await;
    let got: BTreeSet<(String, bool)> = records(&changes).into_iter().collect();
    let want: BTreeSet<(String, bool)> = [
        (created.clone(), false),
        (existing[0].clone(), false),
        (existing[1].clone(), true),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "bulk: {bulk}");
    let updated = changes
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(values) => values.clone(),
            Records::Json { .. } => Vec::new(),
        })
        .find(|r| r.value["id"] == json!(existing[0]))
        .unwrap();
    assert_eq!(updated.value["stage_name"], "Closed Won");

    // The lookback window is read again, but what landed does not land twice.
    let idle = read(
        &sf,
        "opportunity",
        Some(changes.last().unwrap().cursor.clone()),
    )
    .await;
    assert!(ids(&idle).is_empty(), "bulk: {bulk}: {:?}", ids(&idle));
}

#[tokio::test]
async fn rest_changes_land_exactly_once() {
    changes_land_exactly(false).await;
}

#[tokio::test]
async fn bulk_changes_land_exactly_once() {
    changes_land_exactly(true).await;
}

#[tokio::test]
async fn the_lookback_window_catches_late_commits_without_landing_twice() {
    let sandbox = sandbox(20).await;
    let sf = connector(config(&sandbox, &["Account"]));
    let pages = read(&sf, "account", None).await;
    let end = pages.last().unwrap().cursor.clone();
    let newest = crate::streams::canonical_stamp(end["stamp"].as_str().unwrap()).unwrap();
    let newest = chrono::DateTime::parse_from_rfc3339(&newest)
        .unwrap()
        .with_timezone(&chrono::Utc);
    // Two transactions commit after the read, stamped before its cursor: one within the
    // default 300 s lookback, one before it.
    let late = sandbox
        .create_committed_late(
            "Account",
            json!({"Name": "Late"}),
            newest - chrono::Duration::seconds(60),
        )
        .unwrap();
    let too_late = sandbox
        .create_committed_late(
            "Account",
            json!({"Name": "Too late"}),
            newest - chrono::Duration::seconds(900),
        )
        .unwrap();
    let next = read(&sf, "account", Some(end.clone())).await;
    assert_eq!(
        ids(&next),
        vec![late.clone()],
        "only the late record inside the window lands"
    );
    assert!(!ids(&next).contains(&too_late));
    // A wider window catches the older one too; the record the cursor remembers from the
    // last window does not land again.
    let mut wide = config(&sandbox, &["Account"]);
    wide.lookback_seconds = 3600;
    let wide = connector(wide);
    let landed = ids(&read(&wide, "account", Some(next.last().unwrap().cursor.clone())).await);
    assert!(landed.contains(&too_late), "{landed:?}");
    assert!(!landed.contains(&late), "{landed:?}");
}

#[tokio::test]
async fn a_session_expiring_mid_read_is_renewed_without_failing() {
    let sandbox = sandbox(450).await;
    let sf = connector(config(&sandbox, &["Account", "Contact"]));
    sf.discover().await.unwrap();
    // Tokens from now on are good for two requests; the Contact read needs five.
    sandbox.set_session_ttl(Some(2));
    sandbox.expire_sessions();
    let pages = read(&sf, "contact", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Contact"));
    assert!(
        sandbox.stats().invalid_sessions >= 2,
        "{:?}",
        sandbox.stats()
    );
    assert!(sf.tokens_fetched() >= 3, "{}", sf.tokens_fetched());
}

#[tokio::test]
async fn the_api_budget_defers_new_objects() {
    let sandbox = sandbox(10).await;
    let mut c = config(&sandbox, &["Account", "Lead"]);
    c.api_budget_percent = 50.0;
    let sf = connector(c);
    sf.discover().await.unwrap();
    let (used, _) = sandbox.api_usage();
    // Under half of the limit before Account, past it after (a count and one page).
    sandbox.set_daily_api_limit(2 * used + 3);
    read(&sf, "account", None).await;
    let (used, limit) = sf.api_usage().unwrap();
    assert!(used * 2 > limit, "{used}/{limit}");
    match try_read(&sf, "lead", None, false).await.unwrap_err() {
        Error::Deferred { reason } => {
            assert!(
                reason.contains("api_budget_percent") && reason.contains("Lead"),
                "{reason}"
            );
        }
        other => panic!("expected a deferral, got {other}"),
    }
    // Out of requests mid-read: the stream ends as deferred too, not failed.
    let sf = connector(config(&sandbox, &["Lead"]));
    sandbox.reset_api_usage();
    sandbox.set_daily_api_limit(3);
    match try_read(&sf, "lead", None, false).await.unwrap_err() {
        Error::Deferred { reason } => {
            assert!(reason.contains("REQUEST_LIMIT_EXCEEDED"), "{reason}")
        }
        other => panic!("expected a deferral, got {other}"),
    }
}

#[tokio::test]
async fn a_long_rest_read_stops_at_the_budget_and_resumes_from_its_cursor() {
    let sandbox = sandbox(400).await;
    let mut c = config(&sandbox, &["Contact"]);
    c.api_budget_percent = 50.0;
    let sf = connector(c);
    sf.discover().await.unwrap();
    let (used, _) = sandbox.api_usage();
    // Under half of the limit when the read starts; past it after its count and first
    // page, so the budget stops it before the second page.
    sandbox.set_daily_api_limit(2 * used + 2);
    let (pages, err) = read_until_error(&sf, "contact").await;
    match err {
        Error::Deferred { reason } => assert!(
            reason.contains("api_budget_percent") && reason.contains("the rest of Contact"),
            "{reason}"
        ),
        other => panic!("expected a deferral, got {other}"),
    }
    let first = ids(&pages);
    assert_eq!(first.len(), 200, "the first page landed");
    // The next run (a new process), with requests to spare, resumes from the committed
    // cursor.
    sandbox.reset_api_usage();
    sandbox.set_daily_api_limit(1_000_000);
    let sf = connector(config(&sandbox, &["Contact"]));
    let rest = read(&sf, "contact", Some(pages.last().unwrap().cursor.clone())).await;
    let mut all: Vec<String> = first.into_iter().chain(ids(&rest)).collect();
    all.sort();
    let mut want = sandbox.all_ids("Contact");
    want.sort();
    assert_eq!(all, want, "every contact once");
}

/// Reads `stream` until it fails, within a deadline (today's code would walk a hostile org
/// forever): the pages delivered and the error.
async fn read_until_error(source: &Salesforce, stream: &str) -> (Vec<Page>, Error) {
    let request = request(source, stream, None, false).await.unwrap();
    tributary_sdk::conformance::read_until_error(source, request).await
}

/// Asserts `err` is a protocol error of Salesforce about `stream` whose message has `needle`.
fn assert_protocol(err: &Error, stream: &str, needle: &str) {
    tributary_sdk::conformance::assert_protocol(err, "Salesforce", stream, needle);
}

#[tokio::test]
async fn a_next_records_url_that_repeats_or_cycles_stops_the_read() {
    let sandbox = sandbox(400).await;
    let sf = connector(config(&sandbox, &["Contact"]));
    let clean = read(&sf, "contact", None).await;
    assert!(clean.len() >= 3, "{} pages", clean.len());
    for (faults, good) in [
        (
            Faults {
                repeat_cursor: true,
                ..Faults::default()
            },
            1,
        ),
        (
            Faults {
                cycle_cursor: true,
                ..Faults::default()
            },
            2,
        ),
    ] {
        sandbox.set_faults(faults);
        let before = sandbox.stats().query_more;
        let (pages, err) = read_until_error(&sf, "contact").await;
        assert_eq!(ids(&pages), ids(&clean[..good]), "only the good pages land");
        assert!(pages.iter().all(|p| p.cursor["complete"] == json!(false)));
        assert_protocol(
            &err,
            "contact",
            "repeated the `nextRecordsUrl` `/services/data/",
        );
        assert!(err.to_string().contains("done stayed false"), "{err}");
        assert_eq!(sandbox.stats().query_more - before, good as u64);
    }
}

#[tokio::test]
async fn a_bulk_locator_that_repeats_or_cycles_stops_the_read() {
    let sandbox = sandbox(120).await;
    let mut c = config(&sandbox, &["Contact"]);
    c.bulk_threshold = 0;
    let sf = connector(c);
    let clean = read(&sf, "contact", None).await;
    assert_eq!(clean.len(), 3);
    for (faults, good) in [
        (
            Faults {
                repeat_cursor: true,
                ..Faults::default()
            },
            1,
        ),
        (
            Faults {
                cycle_cursor: true,
                ..Faults::default()
            },
            2,
        ),
    ] {
        sandbox.set_faults(faults);
        let before = sandbox.stats().bulk_result_pages;
        let (pages, err) = read_until_error(&sf, "contact").await;
        assert_eq!(ids(&pages).len(), 100 * good, "only the good pages land");
        assert!(pages.iter().all(|p| phase(p) == "bulk"));
        assert_protocol(&err, "contact", "repeated the `Sforce-Locator` of Bulk job");
        assert_eq!(sandbox.stats().bulk_result_pages - before, good as u64 + 1);
    }
}

#[tokio::test]
async fn query_pages_of_the_wrong_shape_fail_the_read_and_land_nothing() {
    let sandbox = sandbox(400).await;
    let sf = connector(config(&sandbox, &["Contact"]));
    let clean = read(&sf, "contact", None).await;
    for (shape, needle) in [
        (
            BadShape::RecordsObject,
            "`records` is an object, not an array",
        ),
        (BadShape::DoneMissing, "`done` is missing"),
    ] {
        // The `COUNT()` query and the first page are intact; the second page is not.
        sandbox.set_faults(Faults {
            bad_shape_after: 2,
            vendor: SalesforceFaults {
                bad_shape: Some(shape),
                ..SalesforceFaults::default()
            },
            ..Faults::default()
        });
        let before = sandbox.stats().query_more;
        let (pages, err) = read_until_error(&sf, "contact").await;
        assert_eq!(
            ids(&pages),
            ids(&clean[..1]),
            "{shape:?}: only the good page"
        );
        assert_protocol(&err, "contact", needle);
        assert_eq!(
            sandbox.stats().query_more - before,
            1,
            "{shape:?}: not retried"
        );
    }
}

#[test]
fn query_responses_must_be_the_documented_shape() {
    use crate::client::QueryPage;
    // The shape of the REST API guide's "Execute a SOQL Query" example.
    let page = QueryPage::from_json(json!({
        "totalSize": 3222,
        "done": false,
        "nextRecordsUrl": "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
        "records": [{"attributes": {"type": "Contact"}, "Id": "003"}]
    }))
    .unwrap();
    assert_eq!(page.records.len(), 1);
    assert!(QueryPage::from_json(json!({"totalSize": 0, "done": true, "records": []})).is_ok());
    for (body, problem) in [
        (json!({"totalSize": 1, "records": []}), "`done` is missing"),
        (
            json!({"done": "true", "records": []}),
            "`done` is `\"true\"`",
        ),
        (json!({"done": true}), "`records` is missing"),
        (
            json!({"done": true, "records": "x"}),
            "`records` is a string",
        ),
        (json!({"done": true, "records": [1]}), "a record is `1`"),
        (json!({"done": false, "records": []}), "no `nextRecordsUrl`"),
    ] {
        let err = QueryPage::from_json(body).unwrap_err();
        assert!(err.contains(problem), "{err}");
    }
}

#[tokio::test]
async fn server_errors_and_cut_bodies_are_retried() {
    let sandbox = sandbox(450).await;
    let sf = connector(config(&sandbox, &["Account"]));
    sf.discover().await.unwrap();
    sandbox.set_faults(Faults {
        error_next: 1,
        truncate_next: 2,
        slow_ms: 0,
        ..Faults::default()
    });
    let mut c = config(&sandbox, &["Account"]);
    c.bulk_threshold = 0;
    let bulk = connector(c);
    let pages = read(&sf, "account", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Account"));
    sandbox.set_faults(Faults {
        truncate_next: 2,
        ..Faults::default()
    });
    let pages = read(&bulk, "account", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Account"));
    assert_eq!(sandbox.stats().faults_injected, 5);
}

/// Faults the sandbox kit gave Salesforce: a seeded error rate, throttling with
/// `Retry-After` and malformed bodies; the connector retries through all of them.
#[tokio::test]
async fn error_rates_throttling_and_malformed_bodies_are_retried() {
    let sandbox = sandbox(450).await;
    let sf = connector(config(&sandbox, &["Account"]));
    sf.discover().await.unwrap();
    sandbox.reset_stats();
    sandbox.set_faults(Faults {
        error_rate: 0.3,
        throttle_next: 2,
        malformed_next: 1,
        ..Faults::default()
    });
    let pages = read(&sf, "account", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Account"));
    let stats = sandbox.stats();
    assert!(stats.faults_injected >= 3, "{stats:?}");
}

/// The conformance kit's view of the simulator.
struct Kit {
    sandbox: SalesforceSandbox,
    bulk: bool,
    concurrent: bool,
}

#[async_trait]
impl Harness for Kit {
    fn source(&self) -> Arc<dyn tributary_sdk::Source> {
        let mut c = config(&self.sandbox, &["Account", "Lead"]);
        if self.bulk {
            c.bulk_threshold = 0;
        }
        if self.concurrent {
            c = concurrent(c);
        }
        Arc::new(connector(c))
    }

    async fn ids(&self, stream: &str) -> Vec<String> {
        self.sandbox.ids(object(stream))
    }

    async fn create(&self, stream: &str) -> String {
        self.sandbox
            .create(object(stream), json!({"Name": "Conformance"}))
            .unwrap()
    }

    async fn update(&self, stream: &str, id: &str) {
        self.sandbox
            .update(object(stream), id, json!({"Phone": "+1 555 0100"}))
            .unwrap();
    }

    async fn delete(&self, stream: &str, id: &str) {
        self.sandbox.delete(object(stream), id).unwrap();
    }

    async fn settle(&self) {
        settle().await;
    }
}

fn object(stream: &str) -> &'static str {
    match stream {
        "account" => "Account",
        _ => "Lead",
    }
}

#[tokio::test]
async fn conformance_rest() {
    let kit = Kit {
        sandbox: sandbox(450).await,
        bulk: false,
        concurrent: false,
    };
    conformance::run(&kit, "account").await.unwrap();
}

#[tokio::test]
async fn conformance_bulk() {
    let kit = Kit {
        sandbox: sandbox(250).await,
        bulk: true,
        concurrent: false,
    };
    conformance::run(&kit, "account").await.unwrap();
}

/// The log lines of this thread while installed (`tracing::subscriber::set_default`): the
/// level, then `field=value` pairs, the message among them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Line<'a>(&'a mut String);

impl tracing::field::Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The landed records by Id.
fn by_id(pages: &[Page]) -> HashMap<String, tributary_sdk::Record> {
    pages
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(values) => values.clone(),
            Records::Json { .. } => panic!("Salesforce pages are values"),
        })
        .map(|r| (r.value["id"].as_str().unwrap().to_owned(), r))
        .collect()
}

/// Asserts every wide field of `landed` is the simulator's stored value.
fn assert_wide_record(sandbox: &SalesforceSandbox, id: &str, landed: &tributary_sdk::Record) {
    let stored = sandbox.record(sf::WIDE_OBJECT, id).unwrap();
    for i in 1..=800 {
        let field = sf::wide_field(i);
        let column = tributary_sdk::schema::to_column_name(&field);
        assert_eq!(
            landed.value.get(&column),
            Some(&stored[&field]),
            "{id}.{field}"
        );
    }
    assert_eq!(landed.value["name"], stored["Name"], "{id}.Name");
    assert_eq!(
        landed.value["system_modstamp"], stored["SystemModstamp"],
        "{id}.SystemModstamp"
    );
}

#[tokio::test]
async fn wide_objects_are_read_with_rest_in_chunks_of_fields_exactly_once() {
    let sandbox = sandbox_with(SandboxConfig {
        records: 300,
        wide_fields: 800,
        ..Default::default()
    })
    .await;
    // REST: the default test config's Bulk threshold is above any count.
    let sf = connector(config(&sandbox, &[sf::WIDE_OBJECT]));
    let stream = "wide_object__c";
    let pages = read(&sf, stream, None).await;
    let stats = sandbox.stats();
    assert_eq!(stats.too_long, 0, "no URL over Salesforce's limit");
    assert_eq!(stats.bulk_jobs, 0);
    assert!(
        stats.queries > 2 * (1 + pages.len() as u64),
        "by-Id queries for every page: {stats:?}"
    );
    assert!(stats.query_more > 0, "wide pages are paged: {stats:?}");
    let all = sandbox.ids(sf::WIDE_OBJECT);
    assert_exactly_once(&ids(&pages), &all);
    assert!(pages.iter().all(|p| phase(p) == "incremental"));
    let landed = by_id(&pages);
    for id in &all {
        assert_wide_record(&sandbox, id, &landed[id]);
    }

    // Edits land exactly: a field of the last chunk, one of the driving query, a new record
    // and a deleted one.
    let end = pages.last().unwrap().cursor.clone();
    let last_field = sf::wide_field(800);
    sandbox
        .update(
            sf::WIDE_OBJECT,
            &all[10],
            fields(&[(&last_field, "changed late")]),
        )
        .unwrap();
    sandbox
        .update(sf::WIDE_OBJECT, &all[20], json!({"Name": "Renamed"}))
        .unwrap();
    let created = sandbox
        .create(
            sf::WIDE_OBJECT,
            fields(&[(&sf::wide_field(401), "brand new")]),
        )
        .unwrap();
    sandbox.delete(sf::WIDE_OBJECT, &all[30]).unwrap();
    settle().await;
    let changes = read(&sf, stream, Some(end)).await;
    let got: BTreeSet<(String, bool)> = records(&changes).into_iter().collect();
    let want: BTreeSet<(String, bool)> = [
        (all[10].clone(), false),
        (all[20].clone(), false),
        (created.clone(), false),
        (all[30].clone(), true),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let landed = by_id(&changes);
    assert_eq!(
        landed[&all[10]].value[to_column(&last_field)],
        "changed late"
    );
    assert_eq!(landed[&all[20]].value["name"], "Renamed");
    assert_eq!(
        landed[&created].value[to_column(&sf::wide_field(401))],
        "brand new"
    );
    for id in [&all[10], &all[20], &created, &all[30]] {
        assert_wide_record(&sandbox, id, &landed[id]);
    }
    // The lookback window re-reads the edited records; unchanged, they are skipped without
    // reading their other fields: the count and the driving query only.
    let queries = sandbox.stats().queries;
    let idle = read(&sf, stream, Some(changes.last().unwrap().cursor.clone())).await;
    assert!(ids(&idle).is_empty(), "{:?}", ids(&idle));
    assert_eq!(sandbox.stats().queries - queries, 2);
    assert_eq!(sandbox.stats().too_long, 0);
}

fn to_column(field: &str) -> String {
    tributary_sdk::schema::to_column_name(field)
}

/// A JSON object of `(field, text)` pairs.
fn fields(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

#[tokio::test]
async fn chunks_join_by_id_across_pages_and_survive_records_changed_or_purged_meanwhile() {
    use crate::chunks::{ChunkPlan, URI_BUDGET, fill};
    let sandbox = sandbox_with(SandboxConfig {
        records: 300,
        wide_fields: 800,
        ..Default::default()
    })
    .await;
    let source = connector(config(&sandbox, &[sf::WIDE_OBJECT]));
    let client = source.client();
    let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let mut select = owned(&["Id", "IsDeleted", "SystemModstamp"]);
    select.extend((1..=800).map(sf::wide_field));
    let plan = ChunkPlan::new(
        sf::WIDE_OBJECT,
        &select,
        &owned(&["Id", "SystemModstamp", "IsDeleted"]),
        owned(&["Id", "SystemModstamp"]),
        " ORDER BY Id ASC".to_owned(),
        client.query_all_prefix_len(),
        URI_BUDGET,
    )
    .unwrap();
    assert!(plan.chunks.len() > 2);
    // A driving page of 200 narrow rows: more Ids than one by-Id query takes, and by-Id
    // answers of wide rows come in pages smaller than that.
    let mut records = client
        .query_all(
            "wide_object__c",
            &format!(
                "SELECT Id, IsDeleted, SystemModstamp FROM {} ORDER BY Id ASC",
                sf::WIDE_OBJECT
            ),
        )
        .await
        .unwrap()
        .records;
    assert_eq!(records.len(), 200);
    let id = |i: usize| records[i]["Id"].as_str().unwrap().to_owned();
    let (purged, changed, first_chunk, last_chunk) = (
        id(5),
        id(6),
        plan.chunks[0][0].clone(),
        plan.chunks.last().unwrap().last().unwrap().clone(),
    );
    let old_stamp = records[6]["SystemModstamp"].clone();
    sandbox.purge(sf::WIDE_OBJECT, &purged).unwrap();
    sandbox
        .update(
            sf::WIDE_OBJECT,
            &changed,
            fields(&[(&first_chunk, "new first"), (&last_chunk, "new last")]),
        )
        .unwrap();
    let before = sandbox.stats();
    fill(
        &plan,
        client,
        "wide_object__c",
        Some("SystemModstamp"),
        true,
        &mut records,
        |_| true,
    )
    .await
    .unwrap();
    let stats = sandbox.stats();
    assert!(
        stats.query_more > before.query_more,
        "by-Id answers were paged"
    );
    assert_eq!(stats.too_long, 0);

    assert_eq!(records.len(), 200);
    for record in &records {
        let id = record["Id"].as_str().unwrap();
        if id == purged {
            // Gone for good: flagged deleted, with what the driving query read.
            assert_eq!(record["IsDeleted"], true);
            assert!(record.get(&last_chunk).is_none());
            continue;
        }
        let stored = sandbox.record(sf::WIDE_OBJECT, id).unwrap();
        for field in plan.chunks.iter().flatten() {
            assert_eq!(record.get(field), Some(&stored[field]), "{id}.{field}");
        }
        assert_eq!(record["IsDeleted"], false);
    }
    // Changed in between: the values as read, the driving query's stamp (the next run
    // reads it again: its new stamp is past this read).
    let changed = records.iter().find(|r| r["Id"] == json!(changed)).unwrap();
    assert_eq!(changed[&first_chunk], "new first");
    assert_eq!(changed[&last_chunk], "new last");
    assert_eq!(changed["SystemModstamp"], old_stamp);
}

/// A Bulk job Salesforce refuses to create: the object is read with REST, all of it, and
/// the warning quotes Salesforce without blaming the credentials.
async fn a_refused_bulk_job_falls_back_to_rest(refusal: BulkRefusal, needle: &str) {
    let sandbox = sandbox(30).await;
    let mut c = config(&sandbox, &["Opportunity"]);
    c.bulk_threshold = 0;
    let sf = connector(c);
    sandbox.set_faults(
        SalesforceFaults {
            bulk_refusal: Some(refusal),
            ..SalesforceFaults::default()
        }
        .into(),
    );
    let logs = Logs::default();
    let pages = {
        let _capture = tracing::subscriber::set_default(logs.clone());
        try_read(&sf, "opportunity", None, false).await
    };
    let pages = pages.unwrap_or_else(|e| panic!("{refusal:?}: {e}"));
    assert_eq!(sandbox.stats().bulk_jobs, 0, "{refusal:?}");
    assert_eq!(sandbox.stats().faults_injected, 1, "one job asked for");
    assert!(pages.iter().all(|p| phase(p) == "incremental"));
    assert_exactly_once(&ids(&pages), &sandbox.all_ids("Opportunity"));
    let lines = logs.lines();
    let warning = lines
        .iter()
        .find(|l| l.contains("refused to start a Bulk API 2.0 query job"))
        .unwrap_or_else(|| panic!("{refusal:?}: no fallback warning in {lines:#?}"));
    assert!(warning.starts_with("WARN"), "{warning}");
    assert!(warning.contains(needle), "{warning}");
    assert!(
        !lines.iter().any(|l| l.contains("credentials")),
        "{refusal:?}: {lines:#?}"
    );
}

#[tokio::test]
async fn past_the_daily_bulk_job_limit_objects_are_read_with_rest() {
    a_refused_bulk_job_falls_back_to_rest(
        BulkRefusal::DailyJobLimit,
        "Max bulk v2 query jobs (10000) per 24 hrs has been reached",
    )
    .await;
}

#[tokio::test]
async fn a_user_without_bulk_permission_is_read_with_rest_not_told_its_credentials_are_bad() {
    a_refused_bulk_job_falls_back_to_rest(BulkRefusal::NoPermission, "InvalidUser").await;
}

#[tokio::test]
async fn conformance_rest_concurrent() {
    let kit = Kit {
        sandbox: sandbox(1_200).await,
        bulk: false,
        concurrent: true,
    };
    conformance::run(&kit, "account").await.unwrap();
}

/// The first `k` pages of a read from `cursor`; the read is then dropped, as a killed
/// sync's is.
async fn first_pages(
    source: &Salesforce,
    stream: &str,
    cursor: Option<Value>,
    k: usize,
) -> Vec<Page> {
    let request = request(source, stream, cursor, false).await.unwrap();
    let mut pages = tributary_sdk::Source::read(source, request).await.unwrap();
    let mut out = Vec::new();
    while out.len() < k {
        match pages.next().await {
            Some(page) => out.push(page.unwrap()),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn a_first_read_splits_by_time_and_lands_every_record_once() {
    let sandbox = sandbox(3_000).await;
    let sf = connector(concurrent(config(&sandbox, &["Contact"])));
    let pages = read(&sf, "contact", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Contact"));
    // Every page but the last carries the open ranges; the last is the usual position.
    let (last, rest) = pages.split_last().unwrap();
    assert!(
        rest.iter().all(|p| phase(p) == "ranges"),
        "{:?}",
        rest.iter().map(phase).collect::<Vec<_>>()
    );
    assert_eq!(phase(last), "incremental");
    assert_eq!(last.cursor["complete"], json!(true));
    // The position is the greatest (stamp, Id) landed.
    let greatest = records_of(&pages)
        .into_iter()
        .map(|r| {
            (
                r.value["system_modstamp"].as_str().unwrap().to_owned(),
                r.value["id"].as_str().unwrap().to_owned(),
            )
        })
        .max()
        .unwrap();
    assert_eq!(
        (
            last.cursor["stamp"].as_str().unwrap(),
            last.cursor["id"].as_str().unwrap()
        ),
        (canonical(&greatest.0).as_str(), greatest.1.as_str())
    );
    // Pages of at most 200, and no nextRecordsUrl: every page is a query of its own.
    assert!(
        rest.iter()
            .all(|p| ids(std::slice::from_ref(p)).len() <= 200)
    );
    assert_eq!(sandbox.stats().query_more, 0, "{:?}", sandbox.stats());
    // The next run reads only the lookback window, and lands nothing again.
    settle().await;
    let idle = read(&sf, "contact", Some(last.cursor.clone())).await;
    assert!(ids(&idle).is_empty(), "{:?}", ids(&idle));
}

fn records_of(pages: &[Page]) -> Vec<tributary_sdk::Record> {
    pages
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(values) => values.clone(),
            Records::Json { .. } => Vec::new(),
        })
        .collect()
}

fn canonical(stamp: &str) -> String {
    crate::streams::canonical_stamp(stamp).unwrap()
}

#[tokio::test]
async fn resuming_a_concurrent_first_read_from_any_page_lands_exactly_the_rest() {
    let sandbox = sandbox(3_000).await;
    let sf = connector(concurrent(config(&sandbox, &["Contact"])));
    let all = sandbox.ids("Contact");
    for k in [1, 4, 11] {
        let first = first_pages(&sf, "contact", None, k).await;
        assert_eq!(first.len(), k);
        assert_eq!(phase(&first[k - 1]), "ranges");
        // A new process resumes from the committed cursor.
        let sf = connector(concurrent(config(&sandbox, &["Contact"])));
        let rest = read(&sf, "contact", Some(first[k - 1].cursor.clone())).await;
        assert!(rest.iter().all(|p| !p.reset));
        let landed: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
        assert_exactly_once(&landed, &all);
        assert_eq!(phase(rest.last().unwrap()), "incremental");
    }
}

#[tokio::test]
async fn changes_during_a_concurrent_first_read_land_with_the_next_run() {
    let sandbox = sandbox(2_000).await;
    let sf = connector(concurrent(config(&sandbox, &["Contact"])));
    let first = first_pages(&sf, "contact", None, 3).await;
    // While the read is interrupted (or still running): one new, one changed, one deleted.
    let existing = sandbox.ids("Contact");
    let landed: HashSet<String> = ids(&first).into_iter().collect();
    let unread = existing
        .iter()
        .find(|id| !landed.contains(*id))
        .unwrap()
        .clone();
    let read_already = ids(&first)[0].clone();
    let created = sandbox
        .create("Contact", json!({"LastName": "Newcomer"}))
        .unwrap();
    sandbox
        .update(
            "Contact",
            &unread,
            json!({"LastName": "Changed while unread"}),
        )
        .unwrap();
    sandbox
        .update(
            "Contact",
            &read_already,
            json!({"LastName": "Changed after landing"}),
        )
        .unwrap();
    let deleted = existing
        .iter()
        .find(|id| **id != unread && **id != read_already)
        .unwrap()
        .clone();
    sandbox.delete("Contact", &deleted).unwrap();
    let rest = read(&sf, "contact", Some(first.last().unwrap().cursor.clone())).await;
    settle().await;
    let next = read(&sf, "contact", Some(rest.last().unwrap().cursor.clone())).await;
    // Replaying every page in order gives the org's state.
    let mut table: HashMap<String, tributary_sdk::Record> = HashMap::new();
    for record in records_of(&first)
        .into_iter()
        .chain(records_of(&rest))
        .chain(records_of(&next))
    {
        table.insert(record.value["id"].as_str().unwrap().to_owned(), record);
    }
    let live: Vec<String> = table
        .iter()
        .filter(|(_, r)| !r.is_deleted)
        .map(|(id, _)| id.clone())
        .collect();
    assert_exactly_once(&live, &sandbox.ids("Contact"));
    assert!(table[&deleted].is_deleted);
    assert!(table.contains_key(&created));
    assert_eq!(table[&unread].value["last_name"], "Changed while unread");
    assert_eq!(
        table[&read_already].value["last_name"],
        "Changed after landing"
    );
}

#[tokio::test]
async fn a_concurrent_first_read_renews_expired_sessions() {
    let sandbox = sandbox(3_000).await;
    let sf = connector(concurrent(config(&sandbox, &["Contact"])));
    sf.discover().await.unwrap();
    // Sessions good for 40 requests: several queries in flight see one expire at once.
    sandbox.set_session_ttl(Some(40));
    sandbox.expire_sessions();
    let pages = read(&sf, "contact", None).await;
    assert_exactly_once(&ids(&pages), &sandbox.ids("Contact"));
    assert!(
        sandbox.stats().invalid_sessions >= 1,
        "{:?}",
        sandbox.stats()
    );
}

#[tokio::test]
async fn wide_objects_are_read_concurrently_in_chunks_of_fields() {
    let sandbox = sandbox_with(SandboxConfig {
        records: 600,
        wide_fields: 800,
        ..Default::default()
    })
    .await;
    let sf = connector(concurrent(config(&sandbox, &[sf::WIDE_OBJECT])));
    let pages = read(&sf, "wide_object__c", None).await;
    assert_eq!(
        sandbox.stats().too_long,
        0,
        "no URL over Salesforce's limit"
    );
    assert!(pages.iter().any(|p| phase(p) == "ranges"));
    let all = sandbox.ids(sf::WIDE_OBJECT);
    assert_exactly_once(&ids(&pages), &all);
    let landed = by_id(&pages);
    for id in &all {
        assert_wide_record(&sandbox, id, &landed[id]);
    }
}
