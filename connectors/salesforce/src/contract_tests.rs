//! Contract tests: the connector against Salesforce's own documented responses, not our
//! simulator.
//!
//! The bodies in `fixtures/contract/` are the examples of Salesforce's REST API, OAuth and
//! Bulk API 2.0 developer guides (see the README there for each source). A tiny replay
//! server on 127.0.0.1 answers each request with one of them, so these tests go through the
//! connector's real client: token exchange, describe, `queryAll` paging, Bulk job state and
//! CSV result pages with their locator, and each documented error body.

use tributary_sandbox_kit::replay::{Replay, Route};
use tributary_sdk::{ColumnType, Error, Secret};

use crate::SalesforceConfig;
use crate::client::SalesforceClient;
use crate::config::FieldSelection;
use crate::describe::plan;

const TOKEN_REFRESH: &str = include_str!("../fixtures/contract/token_refresh.json");
const DESCRIBE_ACCOUNT: &str = include_str!("../fixtures/contract/describe_account.json");
const QUERY_PAGE_1: &str = include_str!("../fixtures/contract/query_page_1.json");
const QUERY_PAGE_2: &str = include_str!("../fixtures/contract/query_page_2.json");
const BULK_QUERY_JOB_COMPLETE: &str =
    include_str!("../fixtures/contract/bulk_query_job_complete.json");
const BULK_RESULTS_PAGE_1: &str = include_str!("../fixtures/contract/bulk_results_page_1.csv");
const ERROR_INVALID_SESSION: &str = include_str!("../fixtures/contract/error_invalid_session.json");
const ERROR_REQUEST_LIMIT: &str = include_str!("../fixtures/contract/error_request_limit.json");
const ERROR_MALFORMED_ID: &str = include_str!("../fixtures/contract/error_malformed_id.json");

/// The instance URL the documented token answer names; the replay server puts its own
/// address there, since the client only sends the token to the instance it was given.
const DOCUMENTED_INSTANCE: &str = "https://yourInstance.salesforce.com";

fn route(path: &str, status: u16, body: &'static str) -> Route {
    Route::new(path, None, body).status(status)
}

/// A replay server that also serves the OAuth token endpoint, with the documented token
/// answer pointing at itself.
async fn start(mut routes: Vec<Route>) -> Replay {
    routes.push(route("/services/oauth2/token", 200, TOKEN_REFRESH));
    Replay::start_as(routes, Some(DOCUMENTED_INSTANCE)).await
}

/// A client signing in at `replay`.
fn client(replay: &Replay) -> SalesforceClient {
    let mut config = SalesforceConfig::refresh_token(
        "contract-client",
        Secret::new("contract-secret"),
        Secret::new("contract-refresh-token"),
    );
    config.login_url = replay.url().to_owned();
    config.requests_per_second = 2000.0;
    let settings = config.validate().unwrap();
    SalesforceClient::new(&settings).unwrap()
}

fn data_path(rest: &str) -> String {
    let settings = SalesforceConfig::refresh_token("c", Secret::new("s"), Secret::new("r"))
        .validate()
        .unwrap();
    format!("/services/data/v{}{rest}", settings.api_version)
}

#[tokio::test]
async fn contract_a_describe_with_an_address_compound_plans_its_component_columns() {
    let replay = start(vec![route(
        &data_path("/sobjects/Account/describe"),
        200,
        DESCRIBE_ACCOUNT,
    )])
    .await;
    let describe = client(&replay).describe("Account").await.unwrap();
    assert_eq!(describe.name, "Account");
    assert_eq!(describe.fields.len(), 19);
    let city = describe
        .fields
        .iter()
        .find(|f| f.name == "BillingCity")
        .unwrap();
    assert_eq!(city.compound_field_name.as_deref(), Some("BillingAddress"));

    let p = plan(&describe, &FieldSelection::default()).unwrap();
    assert_eq!(p.schema.name, "account");
    assert_eq!(p.cursor_field.as_deref(), Some("SystemModstamp"));
    assert!(p.has_is_deleted);
    // The compound is read as its components, which land flattened and typed.
    assert!(!p.select.iter().any(|f| f == "BillingAddress"));
    let ty = |c: &str| p.schema.column(c).map(|c| c.ty);
    for (column, expected) in [
        ("billing_street", ColumnType::String),
        ("billing_city", ColumnType::String),
        ("billing_state", ColumnType::String),
        ("billing_postal_code", ColumnType::String),
        ("billing_country", ColumnType::String),
        ("billing_latitude", ColumnType::Number),
        ("billing_longitude", ColumnType::Number),
        ("billing_geocode_accuracy", ColumnType::String),
        ("annual_revenue", ColumnType::Number),
        ("number_of_employees", ColumnType::Integer),
        ("owner_id", ColumnType::String),
        ("created_date", ColumnType::Timestamp),
        ("system_modstamp", ColumnType::Timestamp),
        ("last_activity_date", ColumnType::Date),
    ] {
        assert_eq!(ty(column), Some(expected), "{column}");
    }
    assert_eq!(ty("billing_address"), None);
    assert_eq!(
        ty("is_deleted"),
        None,
        "IsDeleted lands in the system column"
    );
    let requests = replay.requests();
    assert!(
        requests[0].starts_with("POST /services/oauth2/token"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn contract_query_pages_follow_next_records_url_until_done() {
    let replay = start(vec![
        route(&data_path("/queryAll"), 200, QUERY_PAGE_1),
        route(
            "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
            200,
            QUERY_PAGE_2,
        ),
    ])
    .await;
    let client = client(&replay);
    let first = client
        .query_all("contact", "SELECT Name FROM Contact")
        .await
        .unwrap();
    assert!(!first.done);
    assert_eq!(first.total_size, 2014);
    assert_eq!(
        first.next_records_url.as_deref(),
        Some("/services/data/v62.0/query/01gD0000002HU6KIAW-2000")
    );
    assert_eq!(first.records.len(), 2);
    assert_eq!(first.records[0]["attributes"]["type"], "Contact");
    assert_eq!(first.records[0]["Name"], "Jane Doe");
    let next = first.next_records_url.unwrap();
    let second = client.query_more("contact", &next).await.unwrap();
    assert!(second.done);
    assert_eq!(second.next_records_url, None);
    assert_eq!(second.records.len(), 1);
    let requests = replay.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("q=SELECT Name FROM Contact")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn contract_bulk_job_state_and_csv_pages_with_their_locator() {
    let job = "750R0000000zlh9IAA";
    let results = data_path(&format!("/jobs/query/{job}/results"));
    let replay = start(vec![
        route(
            &data_path(&format!("/jobs/query/{job}")),
            200,
            BULK_QUERY_JOB_COMPLETE,
        ),
        Route::new(
            results.clone(),
            Some("locator=MTAwMDA"),
            BULK_RESULTS_PAGE_1,
        )
        .header("content-type", "text/csv")
        .header("sforce-locator", "null")
        .header("sforce-numberofrecords", "3"),
        route(&results, 200, BULK_RESULTS_PAGE_1)
            .header("content-type", "text/csv")
            .header("sforce-locator", "MTAwMDA")
            .header("sforce-numberofrecords", "3"),
    ])
    .await;
    let client = client(&replay);
    let info = client.bulk_job(job).await.unwrap();
    assert_eq!(info.id, job);
    assert_eq!(info.state, "JobComplete");
    assert_eq!(info.number_records_processed, Some(500));
    assert_eq!(info.error_message, None);

    let page = client.bulk_results(job, None, 3).await.unwrap();
    assert_eq!(page.next_locator.as_deref(), Some("MTAwMDA"));
    assert_eq!(page.rows.len(), 3);
    assert_eq!(page.rows[0]["Id"], "005R0000000UyrWIAS");
    assert_eq!(page.rows[2]["Name"], "Pat Kemp");
    // The last page says `Sforce-Locator: null`.
    let last = client.bulk_results(job, Some("MTAwMDA"), 3).await.unwrap();
    assert_eq!(last.next_locator, None);
    let requests = replay.requests();
    assert!(
        requests.iter().any(|r| r.contains("locator=MTAwMDA")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn contract_an_expired_session_gets_a_new_token_once() {
    let describe = data_path("/sobjects/Account/describe");
    let replay = start(vec![
        route(&describe, 401, ERROR_INVALID_SESSION).once(),
        route(&describe, 200, DESCRIBE_ACCOUNT),
    ])
    .await;
    let client = client(&replay);
    client.describe("Account").await.unwrap();
    assert_eq!(client.tokens_fetched(), 2, "{:?}", replay.requests());
}

#[tokio::test]
async fn contract_error_bodies_yield_salesforces_message_and_code() {
    let replay = start(vec![
        route(
            &data_path("/sobjects/Account/describe"),
            403,
            ERROR_REQUEST_LIMIT,
        ),
        route(
            &data_path("/sobjects/Contact/describe"),
            400,
            ERROR_MALFORMED_ID,
        ),
    ])
    .await;
    let client = client(&replay);
    // An org out of requests defers the stream rather than failing it.
    let err = client.describe("Account").await.unwrap_err();
    match &err {
        Error::Deferred { reason } => assert!(
            reason.contains("TotalRequests Limit exceeded. (REQUEST_LIMIT_EXCEEDED)"),
            "{reason}"
        ),
        other => panic!("expected a deferral, got {other:?}"),
    }
    match client.describe("Contact").await.unwrap_err() {
        Error::Http {
            status, message, ..
        } => assert_eq!(
            (status, message.as_str()),
            (
                400,
                "Account ID: id value of incorrect type: 001900K0001pPuOAAU (MALFORMED_ID)"
            )
        ),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}
