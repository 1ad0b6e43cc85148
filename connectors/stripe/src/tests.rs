//! The connector against the Stripe simulator: backfills land every object once, the
//! changes phase lands exactly what changed, every cursor is a place to resume, and a
//! cursor past Stripe's 30-day event retention resyncs the stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tributary_sdk::pagination::scan_envelope;
use tributary_sdk::{Connector, Error, Page, ReadRequest, Records, Secret, SourceContext};

use crate::sandbox::{BadShape, Faults, SandboxConfig, StripeSandbox};
use crate::streams::Cursor;
use crate::{Stripe, StripeConfig};

async fn sandbox(records: usize) -> StripeSandbox {
    StripeSandbox::start(
        SandboxConfig {
            records,
            rate_limit: None,
            seed: 42,
            gzip: false,
        },
        0,
    )
    .await
    .unwrap()
}

fn stripe(sandbox: &StripeSandbox, page_size: u32) -> Stripe {
    let mut config = StripeConfig::new(Secret::new(StripeSandbox::api_key()));
    config.api_base = sandbox.url();
    // All sandboxes share a key, hence a limiter: keep it out of the way.
    config.requests_per_second = Some(10_000.0);
    config.page_size = page_size;
    Stripe::new(config, SourceContext::default()).unwrap()
}

async fn read(
    stripe: &Stripe,
    stream: &str,
    cursor: Option<Value>,
    full_refresh: bool,
) -> Vec<Page> {
    let mut pages = stripe
        .read(ReadRequest {
            stream: stream.to_owned(),
            cursor,
            full_refresh,
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        // Every cursor is one the next run can start from.
        Cursor::from_json(stream, page.cursor.clone())
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
        assert!(
            pages[..pages.len() - 1]
                .iter()
                .all(|p| phase(p) == "backfill"),
            "{stream}"
        );
        assert_exactly_once(stream, &ids(&pages), &sandbox.ids(resource));

        // Caught up: reading on from the last cursor lands nothing.
        let again = read(&stripe, stream, Some(last.cursor.clone()), false).await;
        assert!(ids(&again).is_empty(), "{stream}: {:?}", ids(&again));
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
    let stripe = stripe(&sandbox, 9);
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
    assert_eq!(backfilled.len(), 5, "one event per customer created");
    assert_exactly_once("events", &backfilled, &backfilled);
    let cursor = pages.last().unwrap().cursor.clone();

    sandbox.advance_clock(Duration::from_secs(5));
    sandbox.create("customers", json!({"email": "e@example.com"}));
    let changes = read(&stripe, "events", Some(cursor), false).await;
    let new = ids(&changes);
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].starts_with("evt_") && !backfilled.contains(&new[0]));
}

#[tokio::test]
async fn canceled_subscriptions_flag_their_items_deleted() {
    let sandbox = sandbox(200).await;
    let stripe = stripe(&sandbox, 100);
    let pages = read(&stripe, "subscription_items", None, false).await;
    let cursor = pages.last().unwrap().cursor.clone();
    let subscription = sandbox
        .ids("subscriptions")
        .into_iter()
        .find(|id| sandbox.get("subscriptions", id).unwrap()["status"] != "canceled")
        .unwrap();

    sandbox.advance_clock(Duration::from_secs(5));
    assert!(sandbox.delete("subscriptions", &subscription));
    let changes = read(&stripe, "subscription_items", Some(cursor), false).await;
    let items: Vec<Value> = changes
        .iter()
        .flat_map(|p| match &p.records {
            Records::Values(v) => v.clone(),
            Records::Json { .. } => Vec::new(),
        })
        .map(|r| {
            assert!(r.is_deleted);
            r.value
        })
        .collect();
    assert!(!items.is_empty());
    assert!(
        items
            .iter()
            .all(|i| i["subscription"] == json!(subscription))
    );
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
    let walk = async {
        let mut pages = stripe
            .read(ReadRequest {
                stream: stream.to_owned(),
                cursor,
                full_refresh: false,
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => out.push(page),
                Err(e) => return (out, e),
            }
        }
        panic!(
            "{stream}: the read ended without an error after {} pages",
            out.len()
        );
    };
    tokio::time::timeout(Duration::from_secs(30), walk)
        .await
        .unwrap_or_else(|_| panic!("{stream}: the read did not stop within 30 s"))
}

/// Asserts `err` is a protocol error of Stripe about `stream` whose message has `needle`.
fn assert_protocol(err: &Error, stream: &str, needle: &str) {
    match err {
        Error::Protocol {
            vendor,
            stream: s,
            message,
        } => {
            assert_eq!((vendor.as_str(), s.as_str()), ("Stripe", stream), "{err}");
            assert!(message.contains(needle), "wanted `{needle}` in: {message}");
        }
        other => panic!("expected a protocol error, got: {other}"),
    }
}

#[tokio::test]
async fn a_list_that_repeats_its_cursor_stops_after_the_good_page() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 10);
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
    let stripe = stripe(&sandbox, 10);
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
    sandbox.set_faults(Faults {
        bad_shape: Some(BadShape::EmptyHasMore),
        ..Faults::default()
    });
    sandbox.reset_stats();
    let (pages, err) = read_until_error(&stripe, "events", Some(cursor)).await;
    assert!(pages.is_empty());
    assert_protocol(&err, "events", "adds nothing (an empty `data` array)");
    assert_eq!(sandbox.stats().requests, 1);
}

#[tokio::test]
async fn list_pages_of_the_wrong_shape_fail_the_stream_and_land_nothing() {
    let sandbox = sandbox(60).await;
    let stripe = stripe(&sandbox, 10);
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
            bad_shape: Some(shape),
            bad_shape_after: 2,
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
