//! End-to-end tests of the simulator over real HTTP on 127.0.0.1, with a minimal HTTP/1.1
//! client on a raw `TcpStream` so a truncated body can be observed exactly as it arrives.

use std::io::Read as _;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Faults, SandboxConfig, StripeSandbox};

const KEY: &str = "sk_test_tributary_sandbox";

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body reached the announced `Content-Length`.
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn ids(&self) -> Vec<String> {
        self.json()["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|o| o["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn request(
    sandbox: &StripeSandbox,
    method: &str,
    path: &str,
    key: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let url = sandbox.url();
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = form.unwrap_or_default();
    if form.is_some() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A truncated response ends in a reset: keep what arrived.
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    Reply {
        status,
        complete: length.is_none_or(|n| n == body.len()),
        headers,
        body,
    }
}

async fn get(sandbox: &StripeSandbox, path: &str) -> Reply {
    request(sandbox, "GET", path, Some(KEY), None, &[]).await
}

async fn start(records: usize) -> StripeSandbox {
    let config = SandboxConfig {
        records,
        ..SandboxConfig::default()
    };
    StripeSandbox::start(config, 0)
        .await
        .expect("sandbox starts")
}

#[tokio::test]
async fn pages_forwards_and_backwards_over_every_id_once() {
    let sandbox = start(47).await;
    let all = sandbox.ids("charges");
    assert_eq!(all.len(), 47);

    let mut forward = Vec::new();
    let mut path = "/v1/charges?limit=10".to_owned();
    loop {
        let reply = get(&sandbox, &path).await;
        assert_eq!(reply.status, 200);
        let page = reply.json();
        assert_eq!(page["object"], "list");
        assert_eq!(page["url"], "/v1/charges");
        let ids = reply.ids();
        forward.extend(ids.clone());
        if page["has_more"] != true {
            break;
        }
        path = format!("/v1/charges?limit=10&starting_after={}", ids[ids.len() - 1]);
    }
    assert_eq!(forward, all);

    // Backwards from the oldest: each page is the 10 just newer, still newest first.
    let oldest = all[all.len() - 1].clone();
    let mut backward = vec![oldest.clone()];
    let mut cursor = oldest;
    loop {
        let reply = get(
            &sandbox,
            &format!("/v1/charges?limit=10&ending_before={cursor}"),
        )
        .await;
        assert_eq!(reply.status, 200);
        let ids = reply.ids();
        let created: Vec<i64> = reply.json()["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|o| o["created"].as_i64()).collect())
            .unwrap_or_default();
        assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
        backward.extend(ids.iter().rev().cloned());
        if reply.json()["has_more"] != true {
            break;
        }
        cursor = ids[0].clone();
    }
    backward.reverse();
    assert_eq!(backward, all);

    let one = get(&sandbox, &format!("/v1/charges/{}", all[3])).await;
    assert_eq!(one.json()["id"], all[3].as_str());
    assert_eq!(one.json()["object"], "charge");
    let missing = get(&sandbox, "/v1/charges?starting_after=ch_nope").await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.json(),
        json!({"error": {"code": "resource_missing",
                         "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
                         "message": "No such charge: 'ch_nope'", "param": "starting_after",
                         "type": "invalid_request_error"}})
    );
    let bad_limit = get(&sandbox, "/v1/charges?limit=0").await;
    assert_eq!(bad_limit.status, 400);
    assert_eq!(
        bad_limit.json()["error"]["code"],
        "parameter_invalid_integer"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn created_filters_select_a_window() {
    let sandbox = start(30).await;
    let all: Vec<Value> = sandbox
        .ids("customers")
        .iter()
        .filter_map(|id| sandbox.get("customers", id))
        .collect();
    let created: Vec<i64> = all.iter().filter_map(|c| c["created"].as_i64()).collect();
    // Newest first, so created[1] > created[3].
    let (hi, lo) = (created[1], created[3]);
    let reply = get(
        &sandbox,
        &format!("/v1/customers?limit=100&created[gte]={lo}&created[lt]={hi}"),
    )
    .await;
    let expected: Vec<String> = all[2..=3]
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reply.ids(), expected);
    let reply = get(
        &sandbox,
        &format!("/v1/customers?created%5Bgt%5D={lo}&created%5Blte%5D={hi}"),
    )
    .await;
    assert_eq!(reply.ids().len(), 2);
    let reply = get(&sandbox, &format!("/v1/customers?created={lo}")).await;
    assert_eq!(reply.ids(), vec![expected[1].clone()]);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn mutations_emit_events_in_order() {
    let sandbox = start(20).await;
    let t0 = sandbox.now();
    let seeded = get(&sandbox, "/v1/events").await.ids();
    assert!(
        !seeded.is_empty(),
        "the account has the events of its last 30 days"
    );

    let created = request(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(KEY),
        Some("email=new%40example.com&name=New+Person&metadata[plan]=pro"),
        &[],
    )
    .await;
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let customer = created.json();
    let id = customer["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("cus_"));
    assert_eq!(customer["metadata"], json!({"plan": "pro"}));
    assert_eq!(sandbox.ids("customers")[0], id, "newest first");

    let updated = sandbox.update("customers", &id, json!({"name": "Renamed", "vip": true}));
    assert_eq!(
        updated.as_ref().map(|c| c["vip"].clone()),
        Some(json!(true))
    );
    let form = request(
        &sandbox,
        "POST",
        &format!("/v1/customers/{id}"),
        Some(KEY),
        Some("metadata[plan]=&balance=12"),
        &[],
    )
    .await;
    assert_eq!(form.json()["metadata"], json!({}));
    assert_eq!(form.json()["balance"], 12);
    let deleted = request(
        &sandbox,
        "DELETE",
        &format!("/v1/customers/{id}"),
        Some(KEY),
        None,
        &[],
    )
    .await;
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "customer", "deleted": true})
    );
    assert_eq!(
        get(&sandbox, &format!("/v1/customers/{id}")).await.json()["deleted"],
        true
    );
    assert!(!sandbox.ids("customers").contains(&id));

    let charge = sandbox.create("charges", json!({"amount": 1234}));
    assert_eq!(charge["amount"], 1234);

    let events = get(&sandbox, "/v1/events?limit=6").await.json();
    assert_eq!(events["data"][5]["id"].as_str(), Some(seeded[0].as_str()));
    let types: Vec<&str> = events["data"]
        .as_array()
        .map(|d| d[..5].iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        types,
        [
            "charge.succeeded",
            "customer.deleted",
            "customer.updated",
            "customer.updated",
            "customer.created"
        ]
    );
    let first_update = &events["data"][3];
    assert_eq!(first_update["object"], "event");
    assert_eq!(first_update["data"]["object"]["name"], "Renamed");
    assert_eq!(
        first_update["data"]["previous_attributes"],
        json!({"name": "New Person", "vip": null})
    );
    let second_update = &events["data"][2];
    assert_eq!(
        second_update["data"]["previous_attributes"]["metadata"],
        json!({"plan": "pro"})
    );
    assert!(
        second_update["request"]["id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
    assert_eq!(events["data"][1]["data"]["object"]["deleted"], true);
    let ids: Vec<String> = events["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "event ids increase with time"
    );

    let only = get(
        &sandbox,
        &format!("/v1/events?types[]=customer.created&types[]=customer.deleted&created[gte]={t0}"),
    )
    .await;
    assert_eq!(only.json()["data"].as_array().map(Vec::len), Some(2));
    let wildcard = get(
        &sandbox,
        &format!("/v1/events?type=customer.*&created[gte]={t0}"),
    )
    .await;
    assert_eq!(wildcard.json()["data"].as_array().map(Vec::len), Some(4));
    let page = get(
        &sandbox,
        &format!("/v1/events?limit=2&ending_before={}", ids[4]),
    )
    .await;
    assert_eq!(page.ids(), vec![ids[2].clone(), ids[3].clone()]);

    // Subscriptions cancel and stay listed.
    let sub = sandbox.ids("subscriptions")[0].clone();
    let canceled = request(
        &sandbox,
        "DELETE",
        &format!("/v1/subscriptions/{sub}"),
        Some(KEY),
        None,
        &[],
    )
    .await;
    assert_eq!(canceled.json()["status"], "canceled");
    assert!(sandbox.ids("subscriptions").contains(&sub));
    let newest = get(&sandbox, "/v1/events?limit=1").await.json();
    assert_eq!(newest["data"][0]["type"], "customer.subscription.deleted");
    let items = get(&sandbox, "/v1/subscription_items").await;
    assert_eq!(items.status, 400);
    assert_eq!(items.json()["error"]["code"], "parameter_missing");
    let items = get(
        &sandbox,
        &format!("/v1/subscription_items?subscription={sub}"),
    )
    .await;
    assert_eq!(items.ids().len(), 1);
    assert_eq!(items.json()["url"], "/v1/subscription_items");
    let charge_delete = request(
        &sandbox,
        "DELETE",
        &format!("/v1/charges/{}", charge["id"].as_str().unwrap_or_default()),
        Some(KEY),
        None,
        &[],
    )
    .await;
    assert_eq!(charge_delete.status, 404);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn refuses_missing_and_live_keys() {
    let sandbox = start(5).await;
    let none = request(&sandbox, "GET", "/v1/charges", None, None, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["type"], "invalid_request_error");
    let live = request(
        &sandbox,
        "GET",
        "/v1/charges",
        Some("sk_live_abc"),
        None,
        &[],
    )
    .await;
    assert_eq!(live.status, 401);
    assert_eq!(
        live.json(),
        json!({"error": {"message": "Invalid API Key provided: sk_live_***", "type": "invalid_request_error"}})
    );
    let restricted = request(
        &sandbox,
        "GET",
        "/v1/charges",
        Some("rk_test_123"),
        None,
        &[],
    )
    .await;
    assert_eq!(restricted.status, 200);
    assert!(
        restricted
            .header("request-id")
            .is_some_and(|r| r.starts_with("req_"))
    );
    sandbox.shutdown().await;
}

/// Stripe's API deletes only what its reference says it does: no price, no finalized or
/// subscription invoice, no item of a finalized invoice, no product that has prices.
#[tokio::test]
async fn deletes_are_refused_where_stripe_refuses_them() {
    let sandbox = start(2_000).await;
    let delete = |path: String| {
        let sandbox = &sandbox;
        async move { request(sandbox, "DELETE", &path, Some(KEY), None, &[]).await }
    };
    let price = sandbox.ids("prices")[0].clone();
    let refused = delete(format!("/v1/prices/{price}")).await;
    assert_eq!(refused.status, 404);
    assert!(sandbox.get("prices", &price).is_some());

    let invoices: Vec<Value> = sandbox
        .ids("invoices")
        .iter()
        .filter_map(|id| sandbox.get("invoices", id))
        .collect();
    let find = |f: &dyn Fn(&Value) -> bool| {
        invoices
            .iter()
            .find(|i| f(i))
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .expect("such an invoice")
    };
    let one_off = |i: &Value| i["parent"].is_null();
    let paid = find(&|i| i["status"] == "paid" && one_off(i));
    let by_subscription = find(&|i| i["status"] == "draft" && !one_off(i));
    let draft = find(&|i| i["status"] == "draft" && one_off(i));
    let refused = delete(format!("/v1/invoices/{paid}")).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("draft")
    );
    let refused = delete(format!("/v1/invoices/{by_subscription}")).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["error"]["message"],
        "You can't delete invoices created by subscriptions."
    );
    let deleted = delete(format!("/v1/invoices/{draft}")).await;
    assert_eq!(
        deleted.status,
        200,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    assert_eq!(deleted.json()["deleted"], true);

    let items: Vec<Value> = sandbox
        .ids("invoiceitems")
        .iter()
        .filter_map(|id| sandbox.get("invoiceitems", id))
        .collect();
    let invoiced = items
        .iter()
        .find(|item| {
            item["invoice"]
                .as_str()
                .and_then(|i| sandbox.get("invoices", i))
                .is_some_and(|i| i["status"] == "paid")
        })
        .expect("an item of a paid invoice");
    let pending = items
        .iter()
        .find(|item| item["invoice"].is_null())
        .expect("a pending item");
    let refused = delete(format!(
        "/v1/invoiceitems/{}",
        invoiced["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(refused.status, 400);
    let deleted = delete(format!(
        "/v1/invoiceitems/{}",
        pending["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(deleted.status, 200);

    let priced = sandbox.get("prices", &price).unwrap()["product"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = delete(format!("/v1/products/{priced}")).await;
    assert_eq!(refused.status, 400);
    assert!(sandbox.get("products", &priced).is_some());
    let bare = sandbox.create("products", json!({"name": "No prices"}));
    let deleted = delete(format!("/v1/products/{}", bare["id"].as_str().unwrap())).await;
    assert_eq!(deleted.status, 200);
    sandbox.shutdown().await;
}

/// Stripe's example objects fill some fields with placeholders named after the field
/// (`"subscription": "subscription"`, a Source's `"client_secret": "client_secret"`); the
/// objects served vary or clear every one of them, so no table holds a placeholder id.
#[tokio::test]
async fn no_served_object_keeps_a_fixture_placeholder() {
    fn placeholders(value: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    placeholders(v, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    placeholders(v, path, out);
                    path.pop();
                }
            }
            Value::String(s) => {
                let named = path
                    .iter()
                    .rev()
                    .find(|p| p.parse::<usize>().is_err())
                    .map(String::as_str);
                if named == Some(s.as_str()) && named != Some("object") {
                    out.push(format!("{}={s}", path.join(".")));
                }
            }
            _ => {}
        }
    }
    let sandbox = start(60).await;
    let subscription = sandbox.ids("subscriptions")[0].clone();
    let mut found = Vec::new();
    for resource in [
        "charges",
        "customers",
        "invoices",
        "invoiceitems",
        "subscriptions",
        "payment_intents",
        "refunds",
        "prices",
        "products",
        "plans",
        "payouts",
        "disputes",
        "coupons",
        "balance_transactions",
        "events",
    ] {
        let page = get(&sandbox, &format!("/v1/{resource}?limit=100")).await;
        assert_eq!(page.status, 200, "{resource}");
        assert!(!page.ids().is_empty(), "{resource}");
        placeholders(&page.json(), &mut vec![resource.to_owned()], &mut found);
    }
    let items = get(
        &sandbox,
        &format!("/v1/subscription_items?subscription={subscription}"),
    )
    .await;
    placeholders(
        &items.json(),
        &mut vec!["subscription_items".into()],
        &mut found,
    );
    found.sort();
    found.dedup();
    assert!(found.is_empty(), "{found:#?}");
    sandbox.shutdown().await;
}

/// A `Stripe-Version` Stripe would not know is refused as Stripe refuses it; a real one
/// other than the simulator's is refused too, saying which version it renders, so a client
/// pinned elsewhere never passes against shapes it would not get.
#[tokio::test]
async fn stripe_version_is_the_simulators_own_or_refused() {
    // The connector pins the version the simulator renders, so the two cannot drift apart.
    assert_eq!(
        super::store::API_VERSION,
        crate::config::DEFAULT_STRIPE_VERSION
    );
    let sandbox = start(5).await;
    let ask = |version: &'static str| {
        let sandbox = &sandbox;
        async move {
            request(
                sandbox,
                "GET",
                "/v1/charges",
                Some(KEY),
                None,
                &[("Stripe-Version", version)],
            )
            .await
        }
    };
    let own = ask("2026-07-29.dahlia").await;
    assert_eq!(own.status, 200);
    assert_eq!(own.header("stripe-version"), Some("2026-07-29.dahlia"));
    assert_eq!(own.ids().len(), 5);
    assert_eq!(get(&sandbox, "/v1/charges").await.status, 200, "no header");
    for unknown in [
        "2019-2-19",
        "2025-09-30.acacia",
        "2024-06-20.acacia",
        "2031-01-01.zinnia",
        "latest",
    ] {
        let refused = ask(unknown).await;
        assert_eq!(refused.status, 400, "{unknown}");
        assert_eq!(
            refused.json(),
            json!({"error": {"message": format!("Invalid Stripe API version: {unknown}"), "type": "invalid_request_error"}}),
        );
    }
    // The account's version over the control API: the same rule, and odd input is a 400.
    for odd in ["\u{3000}2024-06-20", " 2024-06-20", "2031-01-01.zinnia"] {
        let body = json!({ "api_version": odd }).to_string();
        let refused = request(
            &sandbox,
            "POST",
            "/_sandbox/account",
            None,
            Some(&body),
            &[],
        )
        .await;
        assert_eq!(refused.status, 400, "{odd:?}");
    }
    for other in ["2024-06-20", "2025-03-31.basil", "2026-06-24.dahlia"] {
        let refused = ask(other).await;
        assert_eq!(refused.status, 400, "{other}");
        let message = refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(other) && message.contains("Stripe-Version: 2026-07-29.dahlia"),
            "{message}"
        );
    }
    sandbox.shutdown().await;
}

/// Stripe limits each endpoint on its own, within the account's limit: over it, one list
/// is refused with Stripe's `rate_limit` error while another still answers, and objects
/// fetched by id count as one endpoint whatever the id.
#[tokio::test]
async fn each_endpoint_has_a_limit_of_its_own() {
    let config = SandboxConfig {
        records: 5,
        rate_limit: Some(100.0),
        endpoint_rate_limit: Some(3.0),
        ..SandboxConfig::default()
    };
    let sandbox = StripeSandbox::start(config, 0).await.expect("start");
    for _ in 0..3 {
        assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    }
    let refused = get(&sandbox, "/v1/charges?limit=2").await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("stripe-rate-limited-reason"),
        Some("endpoint-rate")
    );
    assert_eq!(refused.header("retry-after"), None, "Stripe sends none");
    assert_eq!(refused.json()["error"]["code"], "rate_limit");
    assert_eq!(get(&sandbox, "/v1/customers?limit=1").await.status, 200);
    let ids = sandbox.ids("customers");
    for id in ids.iter().take(3) {
        let path = format!("/v1/customers/{id}");
        assert_eq!(get(&sandbox, &path).await.status, 200, "{path}");
    }
    let path = format!("/v1/customers/{}", ids[3]);
    assert_eq!(
        get(&sandbox, &path).await.status,
        429,
        "a fourth id, same endpoint"
    );
    assert_eq!(sandbox.stats().rate_limited, 2);
    assert_eq!(sandbox.endpoint_rate_limit(), Some(3.0));
    sandbox.shutdown().await;
}

/// Over the account's limit: Stripe's `rate_limit` error, `Stripe-Rate-Limited-Reason:
/// global-rate`, no `Retry-After` and no `Stripe-Should-Retry` (Stripe documents neither
/// for a rate limit's 429).
#[tokio::test]
async fn rate_limits_name_the_global_limit_and_count() {
    let config = SandboxConfig {
        records: 5,
        rate_limit: Some(4.0),
        ..SandboxConfig::default()
    };
    let sandbox = StripeSandbox::start(config, 0).await.expect("start");
    let mut limited = 0;
    for _ in 0..12 {
        let reply = get(&sandbox, "/v1/customers?limit=1").await;
        if reply.status == 429 {
            limited += 1;
            assert_eq!(
                reply.header("stripe-rate-limited-reason"),
                Some("global-rate")
            );
            assert_eq!(reply.header("retry-after"), None);
            assert_eq!(reply.header("stripe-should-retry"), None);
            let error = &reply.json()["error"];
            assert_eq!(error["code"], "rate_limit");
            assert_eq!(error["type"], "invalid_request_error");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Testmode request rate limit exceeded"),
                "{error}"
            );
        }
    }
    assert!(limited >= 7, "only {limited} refused");
    let stats = sandbox.stats();
    assert_eq!(stats.requests, 12);
    assert_eq!(stats.rate_limited, limited);
    assert!(stats.max_admitted_per_second <= 4);
    let over_http = request(&sandbox, "GET", "/_sandbox/stats", None, None, &[])
        .await
        .json();
    assert_eq!(over_http["rate_limited"], limited);
    sandbox.set_rate_limit(None);
    assert_eq!(get(&sandbox, "/v1/customers?limit=1").await.status, 200);
    sandbox.reset_stats();
    assert_eq!(sandbox.stats().requests, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn events_expire_after_thirty_days_of_sim_time() {
    let sandbox = start(5).await;
    let customer = sandbox.create("customers", json!({}));
    let events = get(&sandbox, "/v1/events?limit=1").await.ids();
    assert_eq!(events.len(), 1);
    let before = sandbox.now();
    sandbox.advance_clock(Duration::from_secs(31 * 86_400));
    assert!(sandbox.now() >= before + 31 * 86_400);

    let reply = get(&sandbox, "/v1/events").await;
    assert!(reply.ids().is_empty());
    let date = reply.header("date").unwrap_or_default().to_owned();
    let parsed = chrono::DateTime::parse_from_rfc2822(&date)
        .map(|d| d.timestamp())
        .unwrap_or(0);
    assert!(
        (parsed - sandbox.now()).abs() <= 2,
        "Date {date} is the simulator clock"
    );

    let gone = get(&sandbox, &format!("/v1/events?ending_before={}", events[0])).await;
    assert_eq!(gone.status, 400);
    assert_eq!(gone.json()["error"]["code"], "resource_missing");
    assert_eq!(gone.json()["error"]["param"], "ending_before");
    assert_eq!(
        gone.json()["error"]["message"],
        format!("No such event: '{}'", events[0])
    );

    // New events are stamped with the advanced clock.
    let id = customer["id"].as_str().unwrap_or_default();
    assert!(
        sandbox
            .update("customers", id, json!({"name": "Later"}))
            .is_some()
    );
    let fresh = get(&sandbox, "/v1/events").await.json();
    assert!(fresh["data"][0]["created"].as_i64().unwrap_or(0) >= before + 31 * 86_400);

    let advanced = request(
        &sandbox,
        "POST",
        "/_sandbox/clock",
        None,
        Some("{\"advance_seconds\": 3600}"),
        &[],
    )
    .await;
    assert!(advanced.json()["now"].as_i64().unwrap_or(0) >= before + 31 * 86_400 + 3600);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn faults_truncate_malform_and_fail() {
    let sandbox = start(10).await;
    sandbox.set_faults(Faults {
        truncate_next: 1,
        ..Faults::default()
    });
    let cut = get(&sandbox, "/v1/charges?limit=5").await;
    assert_eq!(cut.status, 200);
    assert!(!cut.complete, "truncated body is incomplete");
    assert!(!cut.body.is_empty(), "the first half arrives");
    assert!(serde_json::from_slice::<Value>(&cut.body).is_err());
    let whole = get(&sandbox, "/v1/charges?limit=5").await;
    assert!(whole.complete);
    assert_eq!(whole.ids().len(), 5);

    let faults = request(
        &sandbox,
        "POST",
        "/_sandbox/faults",
        None,
        Some("{\"malformed_next\": 1, \"error_next\": 1}"),
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(faults.json()["malformed_next"], 1);
    let failed = get(&sandbox, "/v1/charges").await;
    assert!(matches!(failed.status, 500 | 503));
    assert_eq!(failed.json()["error"]["type"], "api_error");
    let malformed = get(&sandbox, "/v1/charges").await;
    assert_eq!(malformed.status, 200);
    assert!(malformed.complete);
    assert!(serde_json::from_slice::<Value>(&malformed.body).is_err());
    assert_eq!(get(&sandbox, "/v1/charges").await.ids().len(), 10);
    assert_eq!(sandbox.stats().faults_injected, 3);

    sandbox.set_faults(Faults {
        slow_ms: 150,
        slow_rate: 1.0,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn gzip_when_enabled_and_asked() {
    let config = SandboxConfig {
        records: 10,
        gzip: true,
        ..SandboxConfig::default()
    };
    let sandbox = StripeSandbox::start(config, 0).await.expect("start");
    let plain = get(&sandbox, "/v1/charges").await;
    assert!(plain.header("content-encoding").is_none());
    let zipped = request(
        &sandbox,
        "GET",
        "/v1/charges",
        Some(KEY),
        None,
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_end(&mut body)
        .expect("gzip");
    assert_eq!(body, plain.body);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn pagination_survives_a_concurrent_delete() {
    let sandbox = start(20).await;
    let all = sandbox.ids("customers");
    let first = get(&sandbox, "/v1/customers?limit=5").await.ids();
    // The page's last object is deleted before the client asks for the next page.
    assert!(sandbox.delete("customers", &first[4]));
    let next = get(
        &sandbox,
        &format!("/v1/customers?limit=100&starting_after={}", first[4]),
    )
    .await;
    assert_eq!(next.status, 200);
    assert_eq!(next.ids(), all[5..].to_vec());
    assert!(!sandbox.delete("customers", &first[4]), "already deleted");
    assert!(
        !sandbox.delete("charges", &sandbox.ids("charges")[0]),
        "charges cannot be deleted"
    );
    assert_eq!(
        sandbox.create("widgets", json!({}))["error"]["code"],
        "resource_missing"
    );
    sandbox.shutdown().await;
}

/// Seeding speed and page assembly at benchmark scale; run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "slow: seeds 100k charges"]
async fn hundred_thousand_charges() {
    let started = std::time::Instant::now();
    let sandbox = start(100_000).await;
    eprintln!("seeded 100k in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let mut cursor = String::new();
    let mut total = 0;
    let mut bytes = 0;
    loop {
        let path = if cursor.is_empty() {
            "/v1/charges?limit=100".to_owned()
        } else {
            format!("/v1/charges?limit=100&starting_after={cursor}")
        };
        let reply = get(&sandbox, &path).await;
        bytes += reply.body.len();
        // Find ids by their position in Stripe's layout: parsing 500 MB of JSON here would
        // measure the test client instead of the sandbox.
        let text = String::from_utf8_lossy(&reply.body);
        const ITEM: &str = "\n    {\n      \"id\": \"";
        total += text.matches(ITEM).count();
        let Some(at) = text.rfind(ITEM) else { break };
        let rest = &text[at + ITEM.len()..];
        cursor = rest[..rest.find('"').unwrap_or(0)].to_owned();
    }
    eprintln!(
        "paged {total} charges ({bytes} bytes) in {:?}",
        started.elapsed()
    );
    assert_eq!(total, 100_000);
    sandbox.shutdown().await;
}

/// Throttling came with the sandbox kit: injected 429s in Stripe's `rate_limit` shape, named
/// as a rate limit's (`global-rate`), set over the one control API like every other fault.
#[tokio::test]
async fn injected_throttling_answers_429_like_the_global_limit() {
    let sandbox = start(10).await;
    let set = request(
        &sandbox,
        "POST",
        "/_sandbox/faults",
        None,
        Some("{\"throttle_next\": 2}"),
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(set.json()["throttle_next"], 2);
    for _ in 0..2 {
        let throttled = get(&sandbox, "/v1/charges?limit=1").await;
        assert_eq!(throttled.status, 429);
        assert_eq!(
            throttled.header("stripe-rate-limited-reason"),
            Some("global-rate")
        );
        assert_eq!(throttled.header("retry-after"), None);
        assert_eq!(throttled.json()["error"]["code"], "rate_limit");
    }
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    let stats = sandbox.stats();
    assert_eq!((stats.faults_injected, stats.rate_limited), (2, 0));

    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 429);
    sandbox.set_faults(Faults::default());
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    sandbox.shutdown().await;
}

/// The kit's rate limit over the control API: one request a second, the second refused
/// with the seconds to wait.
#[tokio::test]
async fn the_rate_limit_is_set_over_the_control_api() {
    let sandbox = start(10).await;
    let set = request(
        &sandbox,
        "POST",
        "/_sandbox/rate_limit",
        None,
        Some("{\"requests_per_second\": 1}"),
        &[],
    )
    .await;
    assert_eq!(set.json()["requests_per_second"], 1.0);
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    let refused = get(&sandbox, "/v1/charges?limit=1").await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("stripe-rate-limited-reason"),
        Some("global-rate")
    );
    assert_eq!(sandbox.stats().rate_limited, 1);
    request(
        &sandbox,
        "POST",
        "/_sandbox/rate_limit",
        None,
        Some("{}"),
        &[],
    )
    .await;
    assert_eq!(get(&sandbox, "/v1/charges?limit=1").await.status, 200);
    sandbox.shutdown().await;
}

/// Stripe's subscription list leaves out canceled subscriptions unless `status` asks for
/// them ("If no value is supplied, all subscriptions that have not been canceled are
/// returned"; `all` lists every status, `ended` the canceled and incomplete_expired), and
/// the simulator refuses what Stripe refuses: `type` with `types[]` on events, `created`
/// on subscription items, and an unknown status.
#[tokio::test]
async fn lists_filter_and_refuse_as_stripe_does() {
    let sandbox = start(200).await;
    let all = get(&sandbox, "/v1/subscriptions?limit=100&status=all")
        .await
        .ids();
    let status_of = |id: &String| {
        sandbox.get("subscriptions", id).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let canceled: Vec<&String> = all
        .iter()
        .filter(|id| status_of(id) == "canceled")
        .collect();
    assert!(!canceled.is_empty(), "the seed has canceled subscriptions");
    let default = get(&sandbox, "/v1/subscriptions?limit=100").await.ids();
    assert_eq!(default.len(), all.len() - canceled.len());
    assert!(canceled.iter().all(|id| !default.contains(id)));
    let ended = get(&sandbox, "/v1/subscriptions?limit=100&status=ended")
        .await
        .ids();
    assert!(canceled.iter().all(|id| ended.contains(id)));
    assert!(
        ended
            .iter()
            .all(|id| ["canceled", "incomplete_expired"].contains(&status_of(id).as_str()))
    );
    let active = get(&sandbox, "/v1/subscriptions?limit=100&status=active")
        .await
        .ids();
    assert!(active.iter().all(|id| status_of(id) == "active"));

    for (path, message) in [
        ("/v1/subscriptions?status=gone", "Invalid status"),
        (
            "/v1/events?type=charge.succeeded&types[]=charge.failed",
            "You may only specify one of these parameters: type, types.",
        ),
        (
            "/v1/subscription_items?subscription=sub_1&created[gte]=1",
            "Received unknown parameter: created[gte]",
        ),
    ] {
        let reply = get(&sandbox, path).await;
        assert_eq!(reply.status, 400, "{path}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{path}");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{path}: {error}"
        );
    }
}
