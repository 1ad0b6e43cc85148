//! Contract tests: the connector against Stripe's own recorded responses, not our simulator.
//!
//! The bodies in `fixtures/contract/` are Stripe's official example objects (see the README
//! there for their source and licence) in the list envelope Stripe documents. A tiny replay
//! server on 127.0.0.1 answers each request with one of them, so these tests go through the
//! connector's real path: the HTTP client, the envelope scan, the cursor logic and the
//! conversion into Arrow. A parser that only accepts the simulator's shapes fails here.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use futures::StreamExt;
use tributary_sandbox_kit::replay::{Replay, Route};
use tributary_sdk::connector::find_stream;
use tributary_sdk::convert::BatchBuilder;
use tributary_sdk::cursor::{decode, encode};
use tributary_sdk::http::{Throttle, vendor_message};
use tributary_sdk::{Connector, Error, Page, ReadRequest, Records, Secret, SourceContext};

use crate::client::throttle_scope;
use crate::streams::Cursor;
use crate::{Stripe, StripeConfig};

const CHARGES_LIST: &str = include_str!("../fixtures/contract/charges_list.json");
const CHARGES_LIST_LAST: &str = include_str!("../fixtures/contract/charges_list_last.json");
const EVENTS_LIST: &str = include_str!("../fixtures/contract/events_list.json");
const EVENTS_LIST_EMPTY: &str = include_str!("../fixtures/contract/events_list_empty.json");
const ERROR_INVALID_API_KEY: &str = include_str!("../fixtures/contract/error_invalid_api_key.json");
const ERROR_RATE_LIMIT: &str = include_str!("../fixtures/contract/error_rate_limit.json");
const ERROR_RESOURCE_MISSING: &str =
    include_str!("../fixtures/contract/error_resource_missing.json");

/// The id of the charge in Stripe's example list page.
const CHARGE_ID: &str = "ch_1PgafuB7WZ01zgkWXYmPNZs8";
/// The id of the event in Stripe's example events page.
const EVENT_ID: &str = "evt_1Pgc76B7WZ01zgkWwyRHS12y";
/// The anchor named by the recorded `resource_missing` error.
const LOST_ANCHOR: &str = "evt_1OldAnchorB7WZ01zgkW0000";

fn stripe(replay: &Replay, key: &str) -> Stripe {
    let mut config = StripeConfig::new(Secret::new(key));
    config.api_base = replay.url().to_owned();
    config.requests_per_second = Some(10_000.0);
    config.requests_per_second_per_endpoint = Some(10_000.0);
    config.page_size = 100;
    // One page after another: the recorded pages answer any `created` range, so a
    // concurrent backfill would see the same charge in every range.
    config.max_concurrency = 1;
    Stripe::new(config, SourceContext::default()).unwrap()
}

async fn read(stripe: &Stripe, stream: &str, cursor: Option<serde_json::Value>) -> Vec<Page> {
    let schemas = stripe.discover().await.unwrap();
    let request = ReadRequest {
        schema: find_stream(&schemas, stream).unwrap().clone(),
        cursor,
        full_refresh: false,
    };
    let mut pages = tributary_sdk::Source::read(stripe, request).await.unwrap();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        out.push(page.unwrap());
    }
    out
}

fn charges_routes() -> Vec<Route> {
    vec![
        Route::new(
            "/v1/events",
            Some("ending_before=evt_1Pgc76B7WZ01zgkWwyRHS12y"),
            EVENTS_LIST_EMPTY,
        ),
        Route::new("/v1/events", None, EVENTS_LIST),
        Route::new(
            "/v1/charges",
            Some("starting_after=ch_1PgafuB7WZ01zgkWXYmPNZs8"),
            CHARGES_LIST_LAST,
        ),
        Route::new("/v1/charges", None, CHARGES_LIST),
    ]
}

#[tokio::test]
async fn contract_a_backfill_follows_stripes_list_pages_and_lands_the_documented_charge() {
    let replay = Replay::start(charges_routes()).await;
    let source = stripe(&replay, "sk_test_contract_a");
    let pages = read(&source, "charges", None).await;

    // The anchor is the newest event; the walk continues after the last id of the page
    // because Stripe said `has_more: true`, and stops when it says false.
    let requests = replay.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("GET /v1/charges?")
            && r.contains(&format!("starting_after={CHARGE_ID}"))),
        "{requests:#?}"
    );
    let first = &pages[0];
    assert_eq!(
        decode::<Cursor>("charges", Some(first.cursor.clone())).unwrap(),
        Some(Cursor::Backfill {
            starting_after: Some(CHARGE_ID.to_owned()),
            anchor: Some(EVENT_ID.to_owned()),
            since: first.cursor["since"].as_i64().unwrap(),
            pending_since: None,
            ranges: None,
        })
    );
    let Records::Json { body, path } = &first.records else {
        panic!("a list page lands as its body");
    };
    assert_eq!(path, &["data"]);
    // The body as Stripe sent it, without its indentation (the SDK drops insignificant
    // whitespace while scanning the page): the same JSON.
    let (_, compact) = tributary_sdk::pagination::scan_and_compact(
        CHARGES_LIST.as_bytes(),
        "data",
        "id",
        Some("created"),
    )
    .unwrap();
    assert_eq!(
        body.as_ref(),
        compact.as_deref().unwrap_or(CHARGES_LIST.as_bytes())
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        serde_json::from_str::<serde_json::Value>(CHARGES_LIST).unwrap()
    );
    let last = pages.last().unwrap();
    assert_eq!(last.cursor["phase"], "changes", "{}", last.cursor);

    // Stripe's documented charge converts into the declared columns with nothing rescued.
    let schema = crate::streams::schemas()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "charges")
        .unwrap();
    let mut builder = BatchBuilder::new(&schema, None);
    let rows: usize = pages.iter().map(|p| builder.append_page(p).unwrap()).sum();
    assert_eq!(rows, 1);
    let (batches, report) = builder.finish().unwrap();
    // One small page: one batch (the converter splits only past its byte budget).
    assert_eq!(batches.len(), 1);
    let batch = batches.into_iter().next().unwrap();
    assert_eq!(report.rescued_values, 0, "{report:?}");
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_string::<i32>()
            .value(0)
            .to_owned()
    };
    assert_eq!(text("id"), CHARGE_ID);
    assert_eq!(text("billing_details_name"), "Jenny Rosen");
    assert_eq!(text("payment_method_details_card_brand"), "visa");
    assert_eq!(text("balance_transaction"), "txn_1PgaxNB7WZ01zgkWEV3TLf40");
    let amount = batch.column_by_name("amount").unwrap();
    assert_eq!(amount.as_primitive::<Int64Type>().value(0), 100);
    let created = batch.column_by_name("created").unwrap();
    assert_eq!(
        created.as_primitive::<TimestampMicrosecondType>().value(0),
        1_234_567_890_000_000
    );
    assert!(batch.column_by_name("customer").unwrap().is_null(0));
}

#[tokio::test]
async fn contract_an_anchor_stripe_no_longer_knows_resyncs_the_stream() {
    let mut routes = vec![
        Route::new(
            "/v1/events",
            Some("ending_before=evt_1OldAnchorB7WZ01zgkW0000"),
            ERROR_RESOURCE_MISSING,
        )
        .status(400),
    ];
    routes.extend(charges_routes());
    let replay = Replay::start(routes).await;
    let source = stripe(&replay, "sk_test_contract_b");
    let now = chrono::Utc::now().timestamp();
    let cursor = Cursor::Changes {
        anchor: Some(LOST_ANCHOR.to_owned()),
        anchor_created: now - 3600,
        since: now - 3600,
        pending_since: None,
    };
    let pages = read(&source, "charges", Some(encode(&cursor))).await;
    // Stripe's `No such event` answer is recognised as a lost anchor: the stream is read
    // again in full and its first page replaces the table.
    assert!(pages[0].reset, "{:?}", pages[0].cursor);
    assert_eq!(pages[0].cursor["starting_after"], CHARGE_ID);
    assert_eq!(
        vendor_message(ERROR_RESOURCE_MISSING.as_bytes()),
        format!("No such event: '{LOST_ANCHOR}'")
    );
}

#[tokio::test]
async fn contract_a_bad_key_fails_check_with_stripes_message() {
    let replay = Replay::start(vec![
        Route::new("/v1/events", None, ERROR_INVALID_API_KEY).status(401),
    ])
    .await;
    let err = stripe(&replay, "sk_test_contract_c")
        .check()
        .await
        .unwrap_err();
    match err {
        Error::Auth {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            // Other tests in this process register short test keys (e.g. a bare
            // `sk_test_`) for scrubbing, which may mask part of Stripe's own redaction.
            assert!(
                message.starts_with("Invalid API Key provided: ") && message.ends_with("1234"),
                "{message}"
            );
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
}

/// A rate limit's 429 as Stripe sends it: `Stripe-Rate-Limited-Reason` names the limit and
/// no `Retry-After` says how long (https://docs.stripe.com/rate-limits, "Rate limited
/// requests"). The client backs off on its own, holding the whole account for
/// `global-rate`, and asks again.
#[tokio::test]
async fn contract_a_rate_limit_answer_is_waited_out_and_retried() {
    let replay = Replay::start(vec![
        Route::new("/v1/events", None, ERROR_RATE_LIMIT)
            .status(429)
            .header("stripe-rate-limited-reason", "global-rate")
            .once(),
        Route::new("/v1/events", None, EVENTS_LIST),
    ])
    .await;
    stripe(&replay, "sk_test_contract_d")
        .check()
        .await
        .expect("the retry after the 429 succeeds");
    assert_eq!(replay.requests().len(), 2, "{:?}", replay.requests());
    assert_eq!(
        vendor_message(ERROR_RATE_LIMIT.as_bytes()),
        "Request rate limit exceeded. Learn more about rate limits here \
         https://stripe.com/docs/rate-limits."
    );
    let mut headers = tributary_sdk::http::HeaderMap::new();
    for (reason, scope) in [
        ("global-rate", Throttle::Account),
        ("global-concurrency", Throttle::Concurrency),
        ("endpoint-rate", Throttle::Own),
        ("endpoint-concurrency", Throttle::Concurrency),
        ("resource-specific", Throttle::Request),
    ] {
        headers.insert("stripe-rate-limited-reason", reason.parse().unwrap());
        assert_eq!(throttle_scope(&headers), scope, "{reason}");
    }
    // "A 429 status code without these headers ... wasn't the result of a rate limiter
    // (for example, it may be a lock timeout)": only that request waits.
    assert_eq!(
        throttle_scope(&tributary_sdk::http::HeaderMap::new()),
        Throttle::Request
    );
}
