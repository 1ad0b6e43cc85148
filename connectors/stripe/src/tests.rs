//! The connector against the Stripe simulator: backfills land every object once, the
//! changes phase lands exactly what changed, every cursor is a place to resume, and a
//! cursor past Stripe's 30-day event retention resyncs the stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tributary_sdk::connector::find_stream;
use tributary_sdk::cursor::decode;
use tributary_sdk::pagination::scan_envelope;
use tributary_sdk::{Connector, Error, Page, ReadRequest, Records, Secret, SourceContext};

use crate::sandbox::{BadShape, Faults, SandboxConfig, StripeFaults, StripeSandbox};
use crate::streams::Cursor;
use crate::{Stripe, StripeConfig};

async fn sandbox(records: usize) -> StripeSandbox {
    StripeSandbox::start(
        SandboxConfig {
            records,
            rate_limit: None,
            endpoint_rate_limit: None,
            concurrency_limit: None,
            seed: 42,
            gzip: false,
        },
        0,
    )
    .await
    .unwrap()
}

fn stripe(sandbox: &StripeSandbox, page_size: u32) -> Stripe {
    stripe_with(sandbox, page_size, crate::config::DEFAULT_MAX_CONCURRENCY)
}

/// A source whose backfills walk one page after another (`max_concurrency = 1`): the
/// tests of one walk's order, cursors and guards.
fn serial(sandbox: &StripeSandbox, page_size: u32) -> Stripe {
    stripe_with(sandbox, page_size, 1)
}

fn stripe_with(sandbox: &StripeSandbox, page_size: u32, max_concurrency: u32) -> Stripe {
    let mut config = StripeConfig::new(Secret::new(StripeSandbox::api_key()));
    config.api_base = sandbox.url();
    // All sandboxes share a key, hence a limiter: keep it out of the way.
    config.requests_per_second = Some(10_000.0);
    config.requests_per_second_per_endpoint = Some(10_000.0);
    config.page_size = page_size;
    config.max_concurrency = max_concurrency;
    Stripe::new(config, SourceContext::default()).unwrap()
}

/// The read of `stream` the runtime would ask for: its schema as discovered, the committed
/// cursor as JSON (decoded by the SDK on its way to the connector).
async fn request(
    stripe: &Stripe,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> ReadRequest {
    let schemas = stripe.discover().await.unwrap();
    ReadRequest {
        schema: find_stream(&schemas, stream).unwrap().clone(),
        cursor,
        full_refresh,
    }
}

async fn read(
    stripe: &Stripe,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> Vec<Page> {
    let request = request(stripe, stream, cursor, full_refresh).await;
    let mut pages = tributary_sdk::Source::read(stripe, request).await.unwrap();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        // Every cursor is one the next run can start from.
        decode::<Cursor>(stream, Some(page.cursor.clone()))
            .unwrap()
            .unwrap();
        out.push(page);
    }
    out
}

/// The records of a page as (id, deleted).
fn records(page: &Page) -> Vec<(String, bool)> {
    match &page.records {
        Records::Json { body, path } => {
            assert_eq!(path, &["data"]);
            let envelope = scan_envelope(body, "data", "id").unwrap();
            let list: Value = serde_json::from_slice(body).unwrap();
            let ids: Vec<_> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["id"].as_str().unwrap().to_owned(), false))
                .collect();
            assert_eq!(ids.len(), envelope.count);
            ids
        }
        Records::Values(values) => values
            .iter()
            .map(|r| (r.value["id"].as_str().unwrap().to_owned(), r.is_deleted))
            .collect(),
    }
}

fn all_records(pages: &[Page]) -> Vec<(String, bool)> {
    pages.iter().flat_map(records).collect()
}

fn ids(pages: &[Page]) -> Vec<String> {
    all_records(pages).into_iter().map(|(id, _)| id).collect()
}

fn phase(page: &Page) -> &str {
    page.cursor["phase"].as_str().unwrap()
}

/// Asserts every id of `expected` lands exactly once and nothing else does.
fn assert_exactly_once(stream: &str, got: &[String], expected: &[String]) {
    let mut seen = HashSet::new();
    for id in got {
        assert!(seen.insert(id), "{stream}: {id} landed twice");
    }
    let expected: HashSet<_> = expected.iter().collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    let extra: Vec<_> = seen.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{stream}: missing {missing:?}, unexpected {extra:?}"
    );
}

#[tokio::test]
async fn check_accepts_the_key_and_rejects_a_wrong_one() {
    let sandbox = sandbox(20).await;
    stripe(&sandbox, 100).check().await.unwrap();

    // The simulator, like Stripe's test mode, refuses live keys.
    let mut config = StripeConfig::new(Secret::new("sk_live_wrong"));
    config.api_base = sandbox.url();
    let wrong = Stripe::new(config, SourceContext::default()).unwrap();
    match wrong.check().await.unwrap_err() {
        Error::Auth {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            assert!(!message.is_empty());
        }
        other => panic!("expected an auth error, got {other}"),
    }
}

#[tokio::test]
async fn discover_lists_every_stream() {
    let sandbox = sandbox(5).await;
    let schemas = stripe(&sandbox, 100).discover().await.unwrap();
    assert_eq!(schemas.len(), crate::streams::STREAMS.len());
}

#[tokio::test]
async fn backfill_lands_every_object_once() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 7);
    for (stream, resource) in [
        ("customers", "customers"),
        ("charges", "charges"),
        ("invoice_items", "invoiceitems"),
        ("subscriptions", "subscriptions"),
        ("subscription_items", "subscription_items"),
        ("balance_transactions", "balance_transactions"),
        ("coupons", "coupons"),
    ] {
        let pages = read(&stripe, stream, None, false).await;
        assert!(!pages.is_empty(), "{stream}");
        assert!(
            pages.iter().all(|p| !p.reset),
            "{stream}: a first sync resets nothing"
        );
        let last = pages.last().unwrap();
        assert_eq!(phase(last), "changes", "{stream}");
        // Backfill pages, then the changes phase (a quiet feed's cursor may be re-based
        // at once, which is one more empty page).
        let first_change = pages.iter().position(|p| phase(p) == "changes").unwrap();
        assert!(
            pages[..first_change].iter().all(|p| phase(p) == "backfill")
                && pages[first_change..].iter().all(|p| phase(p) == "changes")
                && pages[first_change + 1..]
                    .iter()
                    .all(|p| records(p).is_empty()),
            "{stream}"
        );
        assert_exactly_once(stream, &ids(&pages), &sandbox.ids(resource));

        // Caught up: reading on from the last cursor lands nothing, except that balance
        // transactions still `pending` are listed again (they settle without an event).
        let again = read(&stripe, stream, Some(last.cursor.clone()), false).await;
        if stream == "balance_transactions" {
            let since = last.cursor["pending_since"]
                .as_i64()
                .expect("some are pending");
            for id in ids(&again) {
                let bt = sandbox.get(resource, &id).unwrap();
                assert!(bt["created"].as_i64().unwrap() >= since, "{id}");
            }
            assert!(!ids(&again).is_empty());
        } else {
            assert!(ids(&again).is_empty(), "{stream}: {:?}", ids(&again));
        }
    }
}

#[tokio::test]
async fn subscription_items_carry_their_subscription() {
    let sandbox = sandbox(200).await;
    let pages = read(&stripe(&sandbox, 10), "subscription_items", None, false).await;
    let mut n = 0;
    for page in &pages {
        let Records::Values(values) = &page.records else {
            panic!("subscription items are assembled values");
        };
        for record in values {
            let subscription = record.value["subscription"].as_str().unwrap();
            assert!(subscription.starts_with("sub_"), "{subscription}");
            n += 1;
        }
    }
    assert!(n > 0);
}

#[tokio::test]
async fn changes_land_exactly_what_changed() {
    let sandbox = sandbox(100).await;
    let stripe = stripe(&sandbox, 25);
    let pages = read(&stripe, "customers", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();

    sandbox.advance_clock(Duration::from_secs(60));
    let existing = sandbox.ids("customers");
    let created = sandbox.create("customers", json!({"email": "new@example.com"}));
    let created = created["id"].as_str().unwrap().to_owned();
    sandbox
        .update("customers", &existing[3], json!({"name": "First change"}))
        .unwrap();
    sandbox
        .update("customers", &existing[3], json!({"name": "Second change"}))
        .unwrap();
    assert!(sandbox.delete("customers", &existing[5]));

    let changes = read(&stripe, "customers", Some(cursor), false).await;
    assert!(changes.iter().all(|p| phase(p) == "changes" && !p.reset));
    let got: HashMap<String, bool> = all_records(&changes).into_iter().collect();
    assert_eq!(
        all_records(&changes).len(),
        3,
        "{:?}",
        all_records(&changes)
    );
    assert_eq!(
        got,
        HashMap::from([
            (created, false),
            (existing[3].clone(), false),
            (existing[5].clone(), true),
        ])
    );
    // The updated customer lands in its latest version.
    let latest = changes
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(v) => v.clone(),
            Records::Json { .. } => Vec::new(),
        })
        .find(|r| r.value["id"] == json!(existing[3]))
        .unwrap();
    assert_eq!(latest.value["name"], "Second change");

    // And once landed, nothing more.
    let cursor = changes.last().unwrap().cursor.clone();
    assert!(ids(&read(&stripe, "customers", Some(cursor), false).await).is_empty());
}

#[tokio::test]
async fn changes_span_several_pages_in_order() {
    let sandbox = sandbox(50).await;
    let stripe = stripe(&sandbox, 4);
    let pages = read(&stripe, "products", None, false).await;
    let mut cursor = pages.last().unwrap().cursor.clone();
    let mut made = Vec::new();
    for i in 0..10 {
        sandbox.advance_clock(Duration::from_secs(1));
        let product = sandbox.create("products", json!({"name": format!("Product {i}")}));
        made.push(product["id"].as_str().unwrap().to_owned());
    }
    let changes = read(&stripe, "products", Some(cursor.clone()), false).await;
    assert!(changes.len() >= 3, "10 events at 4 per page");
    assert_eq!(ids(&changes), made, "oldest change first");
    // Resuming from any page's cursor lands exactly the rest.
    for (k, page) in changes.iter().enumerate() {
        cursor = page.cursor.clone();
        let rest = read(&stripe, "products", Some(cursor.clone()), false).await;
        assert_eq!(ids(&rest), ids(&changes[k + 1..]));
    }
}

#[tokio::test]
async fn resuming_mid_backfill_lands_exactly_the_rest() {
    let sandbox = sandbox(100).await;
    let stripe = serial(&sandbox, 9);
    let pages = read(&stripe, "charges", None, false).await;
    assert!(pages.len() > 4);
    let all = ids(&pages);
    for k in [0, 2, pages.len() - 2] {
        let cursor = pages[k].cursor.clone();
        assert_eq!(cursor["phase"], "backfill");
        let rest = read(&stripe, "charges", Some(cursor), false).await;
        let landed: usize = pages[..=k].iter().map(|p| records(p).len()).sum();
        assert_eq!(
            ids(&rest),
            all[landed..].to_vec(),
            "resuming after page {k}"
        );
        assert_eq!(phase(rest.last().unwrap()), "changes");
    }
}

#[tokio::test]
async fn a_cursor_past_retention_resyncs_in_full() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 20);
    let pages = read(&stripe, "customers", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();

    sandbox.advance_clock(Duration::from_secs(31 * 24 * 3600));
    let resync = read(&stripe, "customers", Some(cursor), false).await;
    assert!(
        resync[0].reset,
        "the first page of the resync replaces the table"
    );
    assert!(resync[1..].iter().all(|p| !p.reset));
    assert_exactly_once("customers", &ids(&resync), &sandbox.ids("customers"));
    assert_eq!(phase(resync.last().unwrap()), "changes");
}

#[tokio::test]
async fn full_refresh_resets_and_ignores_the_cursor() {
    let sandbox = sandbox(40).await;
    let stripe = stripe(&sandbox, 100);
    let pages = read(&stripe, "charges", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    let again = read(&stripe, "charges", Some(cursor), true).await;
    assert!(again[0].reset);
    assert_exactly_once("charges", &ids(&again), &sandbox.ids("charges"));
}

#[tokio::test]
async fn events_stream_lands_new_events_once() {
    let sandbox = sandbox(30).await;
    let stripe = stripe(&sandbox, 2);
    let mut made = Vec::new();
    for i in 0..5 {
        let customer = sandbox.create("customers", json!({"email": format!("{i}@example.com")}));
        made.push(customer["id"].as_str().unwrap().to_owned());
    }
    let pages = read(&stripe, "events", None, false).await;
    let backfilled = ids(&pages);
    // The account's 30 days of history, then one event per customer created.
    assert!(backfilled.len() > 5, "{}", backfilled.len());
    assert_exactly_once("events", &backfilled, &sandbox.ids("events"));
    let cursor = pages.last().unwrap().cursor.clone();

    sandbox.advance_clock(Duration::from_secs(5));
    sandbox.create("customers", json!({"email": "e@example.com"}));
    let changes = read(&stripe, "events", Some(cursor), false).await;
    let new = ids(&changes);
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].starts_with("evt_") && !backfilled.contains(&new[0]));
}

/// The records of pages as the table ends up with them: the last version of each id, in
/// the order of their last appearance, with its deletion flag.
fn values(pages: &[Page]) -> Vec<(Value, bool)> {
    let all: Vec<(Value, bool)> = pages
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(v) => v.iter().map(|r| (r.value.clone(), r.is_deleted)).collect(),
            Records::Json { body, .. } => {
                let list: Value = serde_json::from_slice(body).unwrap();
                list["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| (o.clone(), false))
                    .collect::<Vec<_>>()
            }
        })
        .collect();
    let mut last: Vec<(Value, bool)> = Vec::new();
    for (value, deleted) in all {
        last.retain(|(v, _)| v["id"] != value["id"]);
        last.push((value, deleted));
    }
    last
}

#[tokio::test]
async fn canceled_subscriptions_stay_and_removed_items_are_deleted() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 100);
    let subs = read(&stripe, "subscriptions", None, false).await;
    let items = read(&stripe, "subscription_items", None, false).await;
    let (subs_cursor, items_cursor) = (
        subs.last().unwrap().cursor.clone(),
        items.last().unwrap().cursor.clone(),
    );
    let mut live = sandbox
        .ids("subscriptions")
        .into_iter()
        .filter(|id| sandbox.get("subscriptions", id).unwrap()["status"] != "canceled");
    let (canceled, trimmed) = (live.next().unwrap(), live.next().unwrap());
    // A second item on `trimmed`, then the first one removed.
    let first_item = sandbox.get("subscriptions", &trimmed).unwrap()["items"]["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let price = sandbox.ids("prices")[0].clone();
    let added = sandbox.create(
        "subscription_items",
        json!({"subscription": trimmed, "price": price}),
    );
    let added = added["id"].as_str().expect("an item").to_owned();

    sandbox.advance_clock(Duration::from_secs(5));
    assert!(sandbox.delete("subscriptions", &canceled));
    assert!(sandbox.delete("subscription_items", &first_item));
    assert!(sandbox.get("subscription_items", &first_item).unwrap()["deleted"] == true);

    // `customer.subscription.deleted`: the subscription ended; it is not deleted.
    let changed = values(&read(&stripe, "subscriptions", Some(subs_cursor), false).await);
    let row = changed
        .iter()
        .find(|(v, _)| v["id"] == json!(canceled))
        .expect("the canceled subscription lands");
    assert_eq!(row.0["status"], "canceled");
    assert!(!row.1, "a canceled subscription is not deleted");

    let changed = values(&read(&stripe, "subscription_items", Some(items_cursor), false).await);
    let flag = |id: &str| {
        let found: Vec<bool> = changed
            .iter()
            .filter(|(v, _)| v["id"] == json!(id))
            .map(|(_, d)| *d)
            .collect();
        assert_eq!(found.len(), 1, "{id} lands once: {changed:?}");
        found[0]
    };
    assert!(flag(&first_item), "the removed item is deleted");
    assert!(!flag(&added), "the added item is live");
    let canceled_items: Vec<&(Value, bool)> = changed
        .iter()
        .filter(|(v, _)| v["subscription"] == json!(canceled))
        .collect();
    assert!(!canceled_items.is_empty());
    assert!(
        canceled_items.iter().all(|(_, d)| !d),
        "the items of a canceled subscription stay"
    );
    let removed = changed
        .iter()
        .find(|(v, _)| v["id"] == json!(first_item))
        .unwrap();
    assert_eq!(removed.0["subscription"], json!(trimmed));
}

#[tokio::test]
async fn events_in_another_api_version_land_in_the_pinned_shape() {
    let sandbox = sandbox(100).await;
    let stripe = stripe(&sandbox, 50);
    let customers = read(&stripe, "customers", None, false).await;
    let intents = read(&stripe, "payment_intents", None, false).await;
    let (customers_cursor, intents_cursor) = (
        customers.last().unwrap().cursor.clone(),
        intents.last().unwrap().cursor.clone(),
    );
    // The account's default version is older than the connector's pinned one.
    sandbox.set_account_api_version("2020-03-02");
    sandbox.reset_stats();
    let ids = sandbox.ids("customers");
    sandbox.advance_clock(Duration::from_secs(5));
    sandbox
        .update("customers", &ids[0], json!({"name": "Renamed"}))
        .unwrap();
    sandbox
        .update("customers", &ids[0], json!({"description": "twice"}))
        .unwrap();
    let gone = sandbox.get("customers", &ids[1]).unwrap();
    assert!(sandbox.delete("customers", &ids[1]));
    let intent = sandbox.create("payment_intents", json!({}));
    let intent = intent["id"].as_str().unwrap().to_owned();

    // Stripe's payloads really are in the older shape.
    let events = sandbox.latest_events(3);
    assert!(events.iter().all(|e| e["api_version"] == "2020-03-02"));
    assert!(
        events
            .iter()
            .any(|e| e["data"]["object"].get("sources").is_some())
    );

    let changed = values(&read(&stripe, "customers", Some(customers_cursor), false).await);
    assert_eq!(changed.len(), 2, "{changed:?}");
    let (renamed, deleted) = (&changed[0], &changed[1]);
    // Fetched again at the pinned version: the current object, in its shape.
    assert_eq!(renamed.0, sandbox.get("customers", &ids[0]).unwrap());
    assert_eq!(renamed.0["name"], "Renamed");
    assert!(renamed.0.get("sources").is_none() && !renamed.1);
    // Gone, so cut down to the fields that feed declared columns.
    assert!(deleted.1);
    assert_eq!(deleted.0["id"], json!(ids[1]));
    assert_eq!(deleted.0["email"], gone["email"]);
    let schema = crate::streams::schemas()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "customers")
        .unwrap();
    for key in deleted.0.as_object().unwrap().keys() {
        assert!(
            schema
                .columns
                .iter()
                .any(|c| c.name == *key || c.name.starts_with(&format!("{key}_"))),
            "{key} is no column of customers"
        );
    }
    // One GET per distinct object changed (the anchor request and the events page aside).
    // The quiet feed's cursor had been re-based, so the first change is found by `created`
    // and landed alone, then the rest follows it: two event pages, each fetching its
    // (one) customer once; the deleted one is not fetched.
    assert_eq!(sandbox.stats().requests, 4);

    let changed = values(&read(&stripe, "payment_intents", Some(intents_cursor), false).await);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0["id"], json!(intent));
    assert!(changed[0].0.get("charges").is_none());
    assert!(changed[0].0.get("latest_charge").is_some());
}

/// An account still on a version before `2025-03-31.basil` (the default of many) sends
/// subscription events with the period on the subscription; what lands is the object in
/// the pinned version, the period on its items, as the schema declares it.
#[tokio::test]
async fn subscription_events_from_before_basil_land_in_the_pinned_shape() {
    let sandbox = sandbox(100).await;
    let stripe = stripe(&sandbox, 50);
    let pages = read(&stripe, "subscriptions", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    sandbox.set_account_api_version("2024-06-20");
    let id = sandbox.ids("subscriptions")[0].clone();
    sandbox.advance_clock(Duration::from_secs(5));
    sandbox
        .update("subscriptions", &id, json!({"metadata": {"plan": "gold"}}))
        .unwrap();
    let event = sandbox.latest_events(1).remove(0);
    assert_eq!(event["api_version"], "2024-06-20");
    let sent = &event["data"]["object"];
    assert!(sent["current_period_end"].is_i64(), "{sent}");
    assert!(sent["items"]["data"][0].get("current_period_end").is_none());

    let changed = values(&read(&stripe, "subscriptions", Some(cursor), false).await);
    assert_eq!(changed.len(), 1, "{changed:?}");
    let landed = &changed[0].0;
    assert_eq!(landed, &sandbox.get("subscriptions", &id).unwrap());
    assert_eq!(landed["metadata"]["plan"], "gold");
    assert!(landed.get("current_period_end").is_none(), "{landed}");
    assert!(landed["items"]["data"][0]["current_period_end"].is_i64());
}

/// A source pinned to a version the simulator does not render is told so, with the
/// version to pin; Stripe's own refusal of a version it does not know reaches the user too.
#[tokio::test]
async fn a_source_pinned_to_another_version_hears_which_one_to_pin() {
    let sandbox = sandbox(5).await;
    let mut config = StripeConfig::new(Secret::new(StripeSandbox::api_key()));
    config.api_base = sandbox.url();
    config.stripe_version = "2024-06-20".into();
    let pinned = Stripe::new(config, SourceContext::default()).unwrap();
    let err = pinned.check().await.unwrap_err().to_string();
    assert!(
        err.contains("2024-06-20") && err.contains("Stripe-Version: 2026-07-29.dahlia"),
        "{err}"
    );
    let mut config = StripeConfig::new(Secret::new(StripeSandbox::api_key()));
    config.api_base = sandbox.url();
    config.stripe_version = "2031-01-01.zinnia".into();
    let future = Stripe::new(config, SourceContext::default()).unwrap();
    let err = future.check().await.unwrap_err().to_string();
    assert!(
        err.contains("Invalid Stripe API version: 2031-01-01.zinnia"),
        "{err}"
    );
}

#[tokio::test]
async fn an_object_deleted_after_its_older_version_event_lands_deleted_not_blank() {
    let sandbox = sandbox(40).await;
    // One event per page: the update's page is read before the deletion's.
    let stripe = stripe(&sandbox, 1);
    let pages = read(&stripe, "customers", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    sandbox.set_account_api_version("2020-03-02");
    let id = sandbox.ids("customers")[0].clone();
    sandbox.advance_clock(Duration::from_secs(5));
    sandbox
        .update("customers", &id, json!({"name": "Before deletion"}))
        .unwrap();
    assert!(sandbox.delete("customers", &id));
    let pages = read(&stripe, "customers", Some(cursor), false).await;
    let landed: Vec<(Value, bool)> = pages
        .iter()
        .flat_map(|p| values(std::slice::from_ref(p)))
        .filter(|(v, _)| v["id"] == json!(id))
        .collect();
    assert_eq!(landed.len(), 2, "{landed:?}");
    // The update's fetch finds Stripe's deletion stub: it lands deleted, with what the
    // event knew, never as a blank live row.
    for (value, deleted) in &landed {
        assert!(deleted, "{value}");
        assert!(value["email"].is_string(), "{value}");
    }
}

#[tokio::test]
async fn invoice_item_edits_land_through_their_invoice() {
    let sandbox = sandbox(100).await;
    let stripe = stripe(&sandbox, 50);
    let pages = read(&stripe, "invoice_items", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    let draft = sandbox
        .ids("invoices")
        .into_iter()
        .find(|id| sandbox.get("invoices", id).unwrap()["status"] == "draft")
        .expect("a draft invoice");
    let item = sandbox.create("invoiceitems", json!({"invoice": draft, "amount": 700}));
    let item = item["id"].as_str().unwrap().to_owned();
    let finalized = sandbox
        .ids("invoiceitems")
        .into_iter()
        .find(|id| {
            let invoice = sandbox.get("invoiceitems", id).unwrap()["invoice"].clone();
            invoice
                .as_str()
                .is_some_and(|inv| sandbox.get("invoices", inv).unwrap()["status"] == "paid")
        })
        .expect("an item on a paid invoice");
    sandbox.advance_clock(Duration::from_secs(5));
    // Stripe refuses to edit an item of a finalized invoice, and has no
    // `invoiceitem.updated`: the draft's edit shows as `invoice.updated`.
    assert!(
        sandbox
            .update("invoiceitems", &finalized, json!({"amount": 1}))
            .is_none()
    );
    sandbox
        .update(
            "invoiceitems",
            &item,
            json!({"amount": 900, "description": "edited"}),
        )
        .unwrap();
    let types: Vec<String> = sandbox
        .latest_events(3)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.iter().all(|t| t != "invoiceitem.updated"),
        "{types:?}"
    );
    assert_eq!(types[0], "invoice.updated");

    let changed = values(&read(&stripe, "invoice_items", Some(cursor), false).await);
    let landed: Vec<&(Value, bool)> = changed
        .iter()
        .filter(|(v, _)| v["id"] == json!(item))
        .collect();
    assert_eq!(landed.len(), 1, "{changed:?}");
    assert_eq!(landed[0].0["amount"], 900);
    assert_eq!(landed[0].0["description"], "edited");
    // Every item of the draft lands in its current version, each once.
    let mut seen = HashSet::new();
    for (v, _) in &changed {
        assert!(seen.insert(v["id"].as_str().unwrap().to_owned()));
        assert_eq!(v["invoice"], json!(draft));
    }
}

#[tokio::test]
async fn pending_balance_transactions_are_read_again_until_they_settle() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 100);
    let pages = read(&stripe, "balance_transactions", None, false).await;
    let landed = values(&pages);
    let pending: Vec<String> = landed
        .iter()
        .filter(|(v, _)| v["status"] == "pending")
        .map(|(v, _)| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!pending.is_empty(), "the last two days are pending");
    let cursor = pages.last().unwrap().cursor.clone();
    let oldest = landed
        .iter()
        .filter(|(v, _)| v["status"] == "pending")
        .filter_map(|(v, _)| v["created"].as_i64())
        .min();
    assert_eq!(cursor["pending_since"].as_i64(), oldest);

    // Three days on, every one of them is available, and the re-read lands that.
    sandbox.advance_clock(Duration::from_secs(3 * 86_400));
    let pages = read(&stripe, "balance_transactions", Some(cursor), false).await;
    let again = values(&pages);
    for id in &pending {
        let row = again
            .iter()
            .find(|(v, _)| v["id"] == json!(id))
            .expect("re-read");
        assert_eq!(row.0["status"], "available", "{id}");
    }
    let cursor = pages.last().unwrap().cursor.clone();
    assert_eq!(cursor["pending_since"], Value::Null, "{cursor}");
    assert!(cursor.get("pending_since").is_none());
    // Nothing pending: caught up lands nothing.
    assert!(values(&read(&stripe, "balance_transactions", Some(cursor), false).await).is_empty());
}

#[tokio::test]
async fn an_anchor_past_retention_resyncs_in_full() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 20);
    let pages = read(&stripe, "customers", None, false).await;
    sandbox.advance_clock(Duration::from_secs(10));
    sandbox.create("customers", json!({"email": "a@example.com"}));
    let changes = read(
        &stripe,
        "customers",
        Some(pages.last().unwrap().cursor.clone()),
        false,
    )
    .await;
    let cursor = changes.last().unwrap().cursor.clone();
    assert!(
        cursor["anchor"].as_str().unwrap().starts_with("evt_"),
        "{cursor}"
    );

    sandbox.advance_clock(Duration::from_secs(31 * 24 * 3600));
    let resync = read(&stripe, "customers", Some(cursor), false).await;
    assert!(resync[0].reset);
    assert_exactly_once("customers", &ids(&resync), &sandbox.ids("customers"));
}

#[tokio::test]
async fn a_quiet_stream_is_rebased_instead_of_expiring() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 20);
    let pages = read(&stripe, "coupons", None, false).await;
    let mut cursor = pages.last().unwrap().cursor.clone();

    // A day and more of nothing: one empty page moves the cursor to Stripe's clock.
    for _ in 0..31 {
        sandbox.advance_clock(Duration::from_secs(24 * 3600 + 60));
        let quiet = read(&stripe, "coupons", Some(cursor.clone()), false).await;
        assert_eq!(
            quiet.len(),
            1,
            "{:?}",
            quiet.iter().map(|p| &p.cursor).collect::<Vec<_>>()
        );
        assert!(!quiet[0].reset && quiet[0].records.is_empty_values());
        assert_eq!(quiet[0].cursor["since"], json!(sandbox.now()));
        cursor = quiet[0].cursor.clone();
    }
    // Within the day: nothing at all.
    assert!(
        read(&stripe, "coupons", Some(cursor.clone()), false)
            .await
            .is_empty()
    );

    // 31 days after the backfill, changes still land incrementally.
    sandbox.advance_clock(Duration::from_secs(5));
    let coupon = sandbox.create("coupons", json!({"percent_off": 10}));
    let changes = read(&stripe, "coupons", Some(cursor), false).await;
    assert!(changes.iter().all(|p| !p.reset));
    assert_eq!(ids(&changes), [coupon["id"].as_str().unwrap().to_owned()]);
}

#[tokio::test]
async fn cut_and_garbled_bodies_are_fetched_again() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 10);
    sandbox.set_faults(Faults {
        malformed_next: 1,
        truncate_next: 1,
        ..Faults::default()
    });
    let pages = read(&stripe, "charges", None, false).await;
    assert_exactly_once("charges", &ids(&pages), &sandbox.ids("charges"));
    assert!(sandbox.stats().faults_injected >= 2);
}

/// Reads `stream` from `cursor` until it fails, within a deadline (today's code would walk
/// a hostile vendor forever): the pages delivered and the error.
async fn read_until_error(
    stripe: &Stripe,
    stream: &str,
    cursor: Option<Value>,
) -> (Vec<Page>, Error) {
    let request = request(stripe, stream, cursor, false).await;
    tributary_sdk::conformance::read_until_error(stripe, request).await
}

/// Asserts `err` is a protocol error of Stripe about `stream` whose message has `needle`.
fn assert_protocol(err: &Error, stream: &str, needle: &str) {
    tributary_sdk::conformance::assert_protocol(err, "Stripe", stream, needle);
}

#[tokio::test]
async fn a_list_that_repeats_its_cursor_stops_after_the_good_page() {
    let sandbox = sandbox(60).await;
    let stripe = serial(&sandbox, 10);
    sandbox.set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&stripe, "charges", None).await;
    let last = match &pages[..] {
        [page] => ids(std::slice::from_ref(page)),
        _ => panic!("one good page, then the stop: got {}", pages.len()),
    };
    assert_eq!(last.len(), 10);
    assert_protocol(
        &err,
        "charges",
        &format!(
            "repeated the pagination cursor `starting_after` `{}`",
            last[9]
        ),
    );
    assert!(err.to_string().contains("has_more stayed true"), "{err}");
    assert_eq!(phase(&pages[0]), "backfill");
    // The anchor request, the good page, the repeated one: nothing more.
    assert_eq!(sandbox.stats().requests, 3);
}

#[tokio::test]
async fn a_list_whose_cursors_cycle_stops_at_the_cycle() {
    let sandbox = sandbox(60).await;
    let stripe = serial(&sandbox, 10);
    sandbox.set_faults(Faults {
        cycle_cursor: true,
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&stripe, "charges", None).await;
    assert_eq!(pages.len(), 2, "A and B land, the return to A does not");
    let landed = ids(&pages);
    let mut unique = landed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "no object twice");
    assert_protocol(
        &err,
        "charges",
        &format!("`starting_after` `{}` after 2 distinct ones", landed[9]),
    );
    assert_eq!(sandbox.stats().requests, 4);
    // The committed cursor is the last good page's: B's last id.
    assert_eq!(
        pages[1].cursor["starting_after"],
        json!(landed[19]),
        "{}",
        pages[1].cursor
    );
}

#[tokio::test]
async fn an_events_walk_that_repeats_its_cursor_stops() {
    let sandbox = sandbox(30).await;
    let stripe = stripe(&sandbox, 5);
    let pages = read(&stripe, "customers", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    assert_eq!(phase(pages.last().unwrap()), "changes");
    sandbox.advance_clock(Duration::from_secs(60));
    for i in 0..12 {
        sandbox.create("customers", json!({"email": format!("c{i}@example.com")}));
    }
    sandbox.set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&stripe, "customers", Some(cursor)).await;
    assert!(pages.len() <= 1, "{} pages", pages.len());
    assert!(pages.iter().all(|p| phase(p) == "changes"));
    assert_protocol(
        &err,
        "customers",
        // With an anchor the walk follows `ending_before`; with none it looks for the
        // oldest event since the backfill with `starting_after`. Either way: an event id.
        "Stripe repeated the",
    );
    assert!(err.to_string().contains("`evt_"), "{err}");
    assert!(sandbox.stats().requests <= 2, "{:?}", sandbox.stats());
}

#[tokio::test]
async fn an_events_walk_with_empty_pages_that_say_more_stops() {
    let sandbox = sandbox(30).await;
    let stripe = stripe(&sandbox, 5);
    let pages = read(&stripe, "events", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    sandbox.set_faults(
        StripeFaults {
            bad_shape: Some(BadShape::EmptyHasMore),
            ..StripeFaults::default()
        }
        .into(),
    );
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&stripe, "events", Some(cursor)).await;
    assert!(pages.is_empty());
    assert_protocol(&err, "events", "adds nothing (an empty `data` array)");
    assert_eq!(sandbox.stats().requests, 1);
}

#[tokio::test]
async fn list_pages_of_the_wrong_shape_fail_the_stream_and_land_nothing() {
    let sandbox = sandbox(60).await;
    let stripe = serial(&sandbox, 10);
    let want = ids(&read(&stripe, "charges", None, false).await[..1]);
    for (shape, needle) in [
        (BadShape::DataObject, "`data` is an object, not an array"),
        (BadShape::DataString, "`data` is a string, not an array"),
        (BadShape::HasMoreMissing, "`has_more` is missing"),
        (
            BadShape::HasMoreString,
            "`has_more` is `\"true\"`, not a boolean",
        ),
        (
            BadShape::EmptyHasMore,
            "adds nothing (an empty `data` array)",
        ),
    ] {
        // The anchor request and the first page are intact; the second page is not.
        sandbox.set_faults(Faults {
            bad_shape_after: 2,
            vendor: StripeFaults {
                bad_shape: Some(shape),
                ..StripeFaults::default()
            },
            ..Faults::default()
        });
        sandbox.reset_stats();
        let (pages, err) = read_until_error(&stripe, "charges", None).await;
        assert_eq!(ids(&pages), want, "{shape:?}: only the good page lands");
        assert_eq!(
            phase(&pages[0]),
            "backfill",
            "{shape:?}: not marked complete"
        );
        assert_protocol(&err, "charges", needle);
        // Not retried: the same request would get the same answer.
        assert_eq!(sandbox.stats().requests, 3, "{shape:?}");
    }
}

/// The SDK's conformance kit, run on the streams the simulator can change.
struct Harness {
    sandbox: StripeSandbox,
    source: std::sync::Arc<dyn tributary_sdk::Source>,
}

fn resource(stream: &str) -> &str {
    match stream {
        "invoice_items" => "invoiceitems",
        other => other,
    }
}

#[async_trait::async_trait]
impl tributary_sdk::conformance::Harness for Harness {
    fn source(&self) -> std::sync::Arc<dyn tributary_sdk::Source> {
        self.source.clone()
    }
    async fn ids(&self, stream: &str) -> Vec<String> {
        self.sandbox.ids(resource(stream))
    }
    async fn create(&self, stream: &str) -> String {
        let created = self.sandbox.create(
            resource(stream),
            json!({"metadata": {"made_by": "conformance"}}),
        );
        created["id"].as_str().unwrap_or_default().to_owned()
    }
    async fn update(&self, stream: &str, id: &str) {
        if stream == "invoice_items" {
            // Stripe lets only items of draft invoices change (or pending ones, silently):
            // put the item's invoice back to draft first (a shortcut Stripe does not have).
            let item = self.sandbox.get("invoiceitems", id).unwrap();
            if let Some(invoice) = item["invoice"].as_str() {
                self.sandbox
                    .update("invoices", invoice, json!({"status": "draft"}))
                    .unwrap();
            }
        }
        self.sandbox
            .update(
                resource(stream),
                id,
                json!({"metadata": {"touched": "yes"}}),
            )
            .unwrap();
    }
    async fn delete(&self, stream: &str, id: &str) {
        assert!(self.sandbox.delete(resource(stream), id));
    }
    async fn settle(&self) {
        // Event times have second resolution.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_kit_passes() {
    for stream in ["customers", "products", "coupons", "invoice_items"] {
        let sandbox = sandbox(40).await;
        let source =
            std::sync::Arc::new(stripe(&sandbox, 7)) as std::sync::Arc<dyn tributary_sdk::Source>;
        let harness = Harness { sandbox, source };
        if let Err(e) = tributary_sdk::conformance::run(&harness, stream).await {
            panic!("conformance of `{stream}`: {e}");
        }
    }
}

#[tokio::test]
async fn a_concurrent_backfill_splits_by_created_and_lands_every_object_once() {
    let sandbox = sandbox(300).await;
    let stripe = stripe(&sandbox, 10);
    let pages = read(&stripe, "charges", None, false).await;
    assert_exactly_once("charges", &ids(&pages), &sandbox.ids("charges"));
    // The ranges were read at once: many were open, and every request was of a range.
    let most = pages
        .iter()
        .filter_map(|p| p.cursor["ranges"].as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    assert!(most >= 8, "at most {most} ranges open");
    assert_eq!(phase(pages.last().unwrap()), "changes");
    let changes = read(
        &stripe,
        "charges",
        Some(pages.last().unwrap().cursor.clone()),
        false,
    )
    .await;
    assert!(
        ids(&changes).is_empty(),
        "nothing changed: {:?}",
        ids(&changes)
    );
}

#[tokio::test]
async fn resuming_a_concurrent_backfill_from_any_page_lands_exactly_the_rest() {
    let sandbox = sandbox(150).await;
    let stripe = stripe(&sandbox, 10);
    let pages = read(&stripe, "charges", None, false).await;
    let everything = sandbox.ids("charges");
    for k in [0, 3, pages.len() / 2, pages.len() - 2] {
        let cursor = pages[k].cursor.clone();
        assert_eq!(cursor["phase"], "backfill", "page {k}");
        assert!(cursor["ranges"].is_array(), "page {k}: {cursor}");
        let rest = read(&stripe, "charges", Some(cursor), false).await;
        let mut landed = ids(&pages[..=k]);
        landed.extend(ids(&rest));
        assert_exactly_once("charges", &landed, &everything);
        assert_eq!(phase(rest.last().unwrap()), "changes");
    }
}

#[tokio::test]
async fn a_concurrent_backfill_stops_on_a_repeated_cursor_without_landing_twice() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 10);
    sandbox.set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    let (pages, err) = read_until_error(&stripe, "charges", None).await;
    assert_protocol(
        &err,
        "charges",
        "repeated the pagination cursor `starting_after`",
    );
    let landed = ids(&pages);
    let unique: HashSet<_> = landed.iter().collect();
    assert_eq!(unique.len(), landed.len(), "no object twice");
    assert!(pages.iter().all(|p| phase(p) == "backfill"));
}

/// Customers created, renamed and deleted while a concurrent backfill runs: the backfill
/// and the next incremental run together bring the table to Stripe's state.
#[tokio::test]
async fn changes_during_a_concurrent_backfill_land_with_the_next_run() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 5);
    let request = request(&stripe, "customers", None, false).await;
    let mut stream = tributary_sdk::Source::read(&stripe, request).await.unwrap();
    let mut table: HashMap<String, bool> = HashMap::new();
    let mut last = None;
    let mut n = 0;
    while let Some(page) = stream.next().await {
        let page = page.unwrap();
        for (id, deleted) in records(&page) {
            table.insert(id, deleted);
        }
        last = Some(page.cursor.clone());
        n += 1;
        if n == 3 {
            sandbox.advance_clock(Duration::from_secs(1));
            let all = sandbox.ids("customers");
            sandbox.create("customers", json!({"name": "Made mid-backfill"}));
            for id in all.iter().step_by(17) {
                sandbox.update("customers", id, json!({"name": "Renamed mid-backfill"}));
            }
            for id in all.iter().skip(5).step_by(23) {
                assert!(sandbox.delete("customers", id));
            }
        }
    }
    assert!(n > 3, "the backfill took {n} pages");
    let changes = read(&stripe, "customers", last, false).await;
    for page in &changes {
        for (id, deleted) in records(page) {
            table.insert(id, deleted);
        }
    }
    let mut live: Vec<String> = table
        .into_iter()
        .filter(|(_, deleted)| !deleted)
        .map(|(id, _)| id)
        .collect();
    live.sort();
    let mut want = sandbox.ids("customers");
    want.sort();
    assert_eq!(live, want);
}

/// Stripe's events list may answer later than the first range pages (here 600 ms later).
/// The ranges are read on meanwhile, not left waiting a round trip for the anchor; the
/// pages read before it came are handed on after it, each with the cursor of the ranges as
/// they stood when that page came, so a run stopped after any of them resumes with nothing
/// skipped and nothing twice.
#[tokio::test]
async fn the_ranges_are_read_on_while_the_anchor_is_out() {
    let sandbox = sandbox(1_000).await;
    sandbox.set_latency(tributary_sandbox_kit::Latency::of(20, Some(0)));
    sandbox.slow_down("/v1/events", Duration::from_millis(600));
    let stripe = stripe(&sandbox, 10);
    let before = sandbox.stats().requests;
    let request = request(&stripe, "charges", None, false).await;
    let mut stream = tributary_sdk::Source::read(&stripe, request).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    // By the anchor's answer the ranges have gone on: waiting for it, they would have
    // sent their first requests only (13 at most) and the anchor. Not the whole backfill
    // either (over 100 requests by then): the pages held for the anchor are capped (at
    // 256 KiB in tests, about ten of these pages), and the reader then waits with them.
    let sent = sandbox.stats().requests - before;
    assert!(
        (25..=80).contains(&sent),
        "{sent} requests before the first page was handed on"
    );
    let mut pages = vec![first];
    while let Some(page) = stream.next().await {
        pages.push(page.unwrap());
    }
    let want = sandbox.ids("charges");
    assert_exactly_once("charges", &ids(&pages), &want);
    let backfill = pages.iter().filter(|p| phase(p) == "backfill").count();
    assert!(backfill >= 50, "{backfill} backfill pages");
    for stop in [1, 2, 7, backfill / 2, backfill - 1] {
        let resumed = read(
            &stripe,
            "charges",
            Some(pages[stop - 1].cursor.clone()),
            false,
        )
        .await;
        let mut got = ids(&pages[..stop]);
        got.extend(ids(&resumed));
        assert_exactly_once("charges", &got, &want);
    }
}

/// The changes' first request goes out while the last pages of a concurrent backfill are
/// in flight, not after them, so the catch-up costs no round trip of its own. A change
/// made once the last backfill page has arrived is then left to the next run, which
/// brings it; everything else lands once.
#[tokio::test]
async fn the_catch_up_goes_out_with_the_backfills_last_pages() {
    let sandbox = sandbox(1_500).await;
    sandbox.set_latency(tributary_sandbox_kit::Latency::of(20, Some(5)));
    let stripe = stripe(&sandbox, 10);
    let before = sandbox.stats().requests;
    let request = request(&stripe, "customers", None, false).await;
    let mut stream = tributary_sdk::Source::read(&stripe, request).await.unwrap();
    let (mut pages, mut late) = (Vec::new(), None);
    while let Some(page) = stream.next().await {
        let page = page.unwrap();
        // The first page whose cursor is past the backfill is its last.
        if late.is_none() && phase(&page) == "changes" {
            let made = sandbox.create("customers", json!({"name": "Made after the last page"}));
            late = Some(made["id"].as_str().unwrap().to_owned());
        }
        pages.push(page);
    }
    let late = late.unwrap();
    let got = ids(&pages);
    assert!(
        !got.contains(&late),
        "{late} landed with this run's catch-up"
    );
    let mut want = sandbox.ids("customers");
    want.retain(|id| *id != late);
    assert_exactly_once("customers", &got, &want);
    // The catch-up was one request, not a wasted one and another after it: a request per
    // backfill page (the last one's cursor is already past the backfill), the anchor, and
    // the catch-up.
    let requests = sandbox.stats().requests - before;
    let backfill: u64 = pages.iter().filter(|p| phase(p) == "backfill").count() as u64;
    assert_eq!(requests, backfill + 1 + 2, "{requests} requests");

    let next = read(
        &stripe,
        "customers",
        Some(pages.last().unwrap().cursor.clone()),
        false,
    )
    .await;
    assert_eq!(ids(&next), vec![late]);
}

/// Stripe limits each endpoint (25 requests a second by default) within the account's
/// limit. A concurrent backfill paces its list endpoint to the endpoint's limit, not the
/// account's: every charge lands once and the simulator, limiting both, refuses nothing.
#[tokio::test]
async fn a_concurrent_backfill_keeps_to_the_endpoints_own_limit() {
    let sandbox = StripeSandbox::start(
        SandboxConfig {
            records: 400,
            rate_limit: Some(1_000.0),
            endpoint_rate_limit: Some(20.0),
            ..SandboxConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    // A key of its own: limiters are shared per key (and endpoint) across the process, and
    // the first config of a key sets their rates.
    let mut config = StripeConfig::new(Secret::new("sk_test_endpoint_limit"));
    config.api_base = sandbox.url();
    config.requests_per_second = Some(1_000.0);
    config.requests_per_second_per_endpoint = Some(15.0);
    config.page_size = 10;
    let stripe = Stripe::new(config, SourceContext::default()).unwrap();
    let pages = read(&stripe, "charges", None, false).await;
    assert!(pages.len() >= 40, "{} pages", pages.len());
    assert_exactly_once("charges", &ids(&pages), &sandbox.ids("charges"));
    let stats = sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
}

/// Stripe also sheds requests over a concurrency limit (`global-concurrency`; Stripe does
/// not say its number, and list requests are the heavy ones). A backfill that wants more
/// requests in flight than the simulator takes at once halves what it keeps in flight
/// (once per round trip), then grows by one per round trip, not per page: it settles under
/// the limit and lands every charge once.
#[tokio::test]
async fn a_concurrent_backfill_settles_under_the_concurrency_limiter() {
    let sandbox = StripeSandbox::start(
        SandboxConfig {
            records: 1_000,
            concurrency_limit: Some(8),
            ..SandboxConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    sandbox.set_latency(tributary_sandbox_kit::Latency::of(100, Some(10)));
    let mut config = StripeConfig::new(Secret::new("sk_test_concurrency_limit"));
    config.api_base = sandbox.url();
    config.requests_per_second = Some(1_000.0);
    config.requests_per_second_per_endpoint = Some(1_000.0);
    config.page_size = 10;
    let stripe = Stripe::new(config, SourceContext::default()).unwrap();
    let pages = read(&stripe, "charges", None, false).await;
    assert_exactly_once("charges", &ids(&pages), &sandbox.ids("charges"));
    let stats = sandbox.stats();
    // At 1,000 requests a second and 100 ms the reader wants 64 in flight (its cap) and
    // starts with 12: the limiter must shed some. Here 8 refusals in about 125 requests;
    // a reader that grew by one per page after a 429, halving on every refused page, made
    // 18-19.
    assert!(stats.rate_limited > 0, "{stats:?}");
    assert!(
        stats.rate_limited <= 12,
        "the reader settles under the limit: {stats:?}"
    );
}

/// A concurrent backfill draws the line between its listing and the events by the local
/// clock, 10 s back, and reads the anchor alongside its first pages: objects created just
/// before the sync (after the line) come from the events, the older ones from the ranges,
/// each once.
#[tokio::test]
async fn a_concurrent_backfill_lines_up_listing_and_events_by_the_clock() {
    let sandbox = sandbox(120).await;
    let stripe = stripe(&sandbox, 10);
    let fresh: Vec<String> = (0..3)
        .map(|i| {
            let made = sandbox.create("customers", json!({ "name": format!("Just made {i}") }));
            made["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let local = chrono::Utc::now().timestamp();
    let pages = read(&stripe, "customers", None, false).await;
    let backfill: Vec<&Page> = pages.iter().filter(|p| phase(p) == "backfill").collect();
    assert!(backfill.len() > 3, "{} backfill pages", backfill.len());
    // No range reaches past the line, and every cursor carries the anchor found before it.
    let line = local - 10;
    for page in &backfill {
        assert!(
            page.cursor["since"].as_i64().unwrap() <= line,
            "{}",
            page.cursor
        );
        assert!(page.cursor["anchor"].is_string(), "{}", page.cursor);
        for range in page.cursor["ranges"].as_array().unwrap() {
            assert!(range["lt"].as_i64().unwrap() <= line + 1, "{range}");
        }
    }
    let listed = ids(&pages[..backfill.len()]);
    for id in &fresh {
        assert!(
            !listed.contains(id),
            "{id}, made after the line, was listed"
        );
    }
    assert_exactly_once("customers", &ids(&pages), &sandbox.ids("customers"));
    assert_eq!(phase(pages.last().unwrap()), "changes");

    // With answers taking 5–55 ms, range pages often come back before the anchor: none is
    // handed on without it (three reads, as the anchor is now and then first of all).
    sandbox.set_latency(tributary_sandbox_kit::Latency {
        latency_ms: 30,
        jitter_ms: 25,
    });
    for _ in 0..3 {
        let pages = read(&stripe, "customers", None, false).await;
        for page in pages.iter().filter(|p| phase(p) == "backfill") {
            assert!(page.cursor["anchor"].is_string(), "{}", page.cursor);
        }
        assert_exactly_once("customers", &ids(&pages), &sandbox.ids("customers"));
    }
}

/// Where Stripe's clock (its `Date`) is more than 10 s off the local one, the line cannot
/// be drawn by the local clock: the backfill starts over from Stripe's clock, the anchor
/// read first, and still lands everything once.
#[tokio::test]
async fn a_concurrent_backfill_starts_from_stripes_clock_when_the_clocks_differ() {
    let sandbox = sandbox(120).await;
    let stripe = stripe(&sandbox, 10);
    sandbox.advance_clock(Duration::from_secs(3600));
    let made = sandbox.create("customers", json!({"name": "Made an hour ahead"}));
    let pages = read(&stripe, "customers", None, false).await;
    let since = pages[0].cursor["since"].as_i64().unwrap();
    assert!(
        (since - sandbox.now()).abs() <= 5,
        "since {since} is not Stripe's clock {}",
        sandbox.now()
    );
    let all = ids(&pages);
    assert!(all.contains(&made["id"].as_str().unwrap().to_owned()));
    assert_exactly_once("customers", &all, &sandbox.ids("customers"));
}

/// The line is drawn 10 s before the local clock's start; the anchor's `Date` (whole
/// seconds) minus the answer's time says where Stripe's clock stood then.
#[test]
fn the_clock_check_holds_the_line_to_what_the_date_proves() {
    use chrono::TimeZone;
    use std::time::Duration;
    let secs = |s: f64| {
        chrono::Utc
            .timestamp_millis_opt((s * 1000.0).round() as i64)
            .unwrap()
    };
    // Local start at `start` (line `floor(start) - 10`), Stripe's clock `lead` s ahead of
    // the local one, the answer `took` s: in step or not.
    let check = |start: f64, lead: f64, took: f64| {
        let cutoff = start.floor() as i64 - 10;
        let date = secs((start + lead + took * 0.7).floor());
        crate::streams::clocks_in_step(
            cutoff,
            date,
            Duration::from_secs_f64(took),
            secs(start + took),
        )
    };
    // Clocks in step, at any fraction of a second and answer time.
    for start in [1_000.0, 1_000.3, 1_000.99] {
        for took in [0.01, 0.3, 1.0, 3.0] {
            assert!(check(start, 0.0, took), "{start} {took}");
            assert!(check(start, -8.0, took), "local 8 s ahead, {start} {took}");
        }
    }
    // The local clock 10.6 s ahead: Stripe at the start 989.4, after the line at 990; an
    // object created then would be neither listed nor replayed. Whole seconds of arrival
    // and `Date` (1,000 and 990) read only 10 apart, which an earlier check let through.
    assert!(!crate::streams::clocks_in_step(
        990,
        secs(990.0),
        Duration::from_secs_f64(0.65),
        secs(1_000.65)
    ));
    assert!(!check(1_000.0, -10.6, 0.65));
    assert!(!check(1_000.0, -11.0, 0.3));
    // Stripe's clock ahead: up to the margin, not past it (retention).
    assert!(check(1_000.0, 10.0, 0.3));
    assert!(!check(1_000.0, 11.5, 0.3));
    // However far the local clock's wall time stepped, the monotonic answer time decides.
    assert!(!crate::streams::clocks_in_step(
        990,
        secs(990.0),
        Duration::from_secs_f64(0.5),
        secs(995.0)
    ));
}

#[tokio::test]
async fn a_concurrent_backfill_stops_when_cursors_cycle_across_ranges() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 10);
    sandbox.set_faults(Faults {
        cycle_cursor: true,
        ..Faults::default()
    });
    let (pages, err) = read_until_error(&stripe, "charges", None).await;
    // The first range to follow a cursor gets it answered; any other that is led back to
    // it (its own range or another's) stops the backfill.
    assert_protocol(
        &err,
        "charges",
        "repeated the pagination cursor `starting_after`",
    );
    let landed = ids(&pages);
    let unique: HashSet<_> = landed.iter().collect();
    assert_eq!(unique.len(), landed.len(), "no object twice");
}
