//! Contract tests: the connector against Salesforce's own documented responses, not our
//! simulator.
//!
//! The bodies in `fixtures/contract/` are the examples of Salesforce's REST API, OAuth and
//! Bulk API 2.0 developer guides (see the README there for each source). A tiny replay
//! server on 127.0.0.1 answers each request with one of them, so these tests go through the
//! connector's real client: token exchange, describe, `queryAll` paging, Bulk job state and
//! CSV result pages with their locator, and each documented error body.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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

/// One recorded answer: the first unused route whose path matches, and whose `query` (if
/// any) occurs in the decoded query string, answers. A `once` route answers one request.
struct Route {
    path: String,
    query: Option<&'static str>,
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    once: bool,
    used: AtomicBool,
}

fn route(path: &str, status: u16, body: &'static str) -> Route {
    Route {
        path: path.to_owned(),
        query: None,
        status,
        headers: Vec::new(),
        body,
        once: false,
        used: AtomicBool::new(false),
    }
}

/// A replay server that also serves the OAuth token endpoint, with the documented token
/// answer pointing at itself.
struct Replay {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Replay {
    async fn start(mut routes: Vec<Route>) -> Replay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        routes.push(route("/services/oauth2/token", 200, TOKEN_REFRESH));
        let routes = Arc::new(routes);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&log);
        let own = url.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let routes = Arc::clone(&routes);
            let seen = Arc::clone(&seen);
            let own = own.clone();
            async move {
                let path = req.uri().path().to_owned();
                let query: String =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("&");
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!("{} {path}?{query}", req.method()));
                let found = routes.iter().find(|r| {
                    r.path == path
                        && r.query.is_none_or(|q| query.contains(q))
                        && !(r.once && r.used.swap(true, Ordering::SeqCst))
                });
                let mut response = axum::http::Response::builder();
                let body = match found {
                    Some(r) => {
                        response = response.status(r.status);
                        for (name, value) in &r.headers {
                            response = response.header(*name, *value);
                        }
                        r.body.replace(DOCUMENTED_INSTANCE, &own)
                    }
                    None => {
                        response = response.status(500);
                        format!("no recorded response for {path}?{query}")
                    }
                };
                response
                    .body(axum::body::Body::from(body))
                    .unwrap_or_default()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Replay { url, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn client(&self) -> SalesforceClient {
        let mut config = SalesforceConfig::refresh_token(
            "contract-client",
            Secret::new("contract-secret"),
            Secret::new("contract-refresh-token"),
        );
        config.login_url = self.url.clone();
        config.requests_per_second = 2000.0;
        let settings = config.validate().unwrap();
        SalesforceClient::new(&settings).unwrap()
    }
}

fn data_path(rest: &str) -> String {
    let settings = SalesforceConfig::refresh_token("c", Secret::new("s"), Secret::new("r"))
        .validate()
        .unwrap();
    format!("/services/data/v{}{rest}", settings.api_version)
}

#[tokio::test]
async fn contract_a_describe_with_an_address_compound_plans_its_component_columns() {
    let replay = Replay::start(vec![route(
        &data_path("/sobjects/Account/describe"),
        200,
        DESCRIBE_ACCOUNT,
    )])
    .await;
    let describe = replay.client().describe("Account").await.unwrap();
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
    let replay = Replay::start(vec![
        route(&data_path("/queryAll"), 200, QUERY_PAGE_1),
        route(
            "/services/data/v62.0/query/01gD0000002HU6KIAW-2000",
            200,
            QUERY_PAGE_2,
        ),
    ])
    .await;
    let client = replay.client();
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
    let replay = Replay::start(vec![
        route(
            &data_path(&format!("/jobs/query/{job}")),
            200,
            BULK_QUERY_JOB_COMPLETE,
        ),
        Route {
            query: Some("locator=MTAwMDA"),
            headers: vec![
                ("content-type", "text/csv"),
                ("sforce-locator", "null"),
                ("sforce-numberofrecords", "3"),
            ],
            ..route(&results, 200, BULK_RESULTS_PAGE_1)
        },
        Route {
            headers: vec![
                ("content-type", "text/csv"),
                ("sforce-locator", "MTAwMDA"),
                ("sforce-numberofrecords", "3"),
            ],
            ..route(&results, 200, BULK_RESULTS_PAGE_1)
        },
    ])
    .await;
    let client = replay.client();
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
    let replay = Replay::start(vec![
        Route {
            once: true,
            ..route(&describe, 401, ERROR_INVALID_SESSION)
        },
        route(&describe, 200, DESCRIBE_ACCOUNT),
    ])
    .await;
    let client = replay.client();
    client.describe("Account").await.unwrap();
    assert_eq!(client.tokens_fetched(), 2, "{:?}", replay.requests());
}

#[tokio::test]
async fn contract_error_bodies_yield_salesforces_message_and_code() {
    let replay = Replay::start(vec![
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
    let client = replay.client();
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
