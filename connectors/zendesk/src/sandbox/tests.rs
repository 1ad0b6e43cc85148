//! The simulator over HTTP, as a client sees it: export pagination and its one-minute
//! window, time-based pages that never split a second, list pagination, writes logged as
//! ticket events, authentication, both rate limits, faults and the control endpoints.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::http::encode;
use super::{Faults, RateLimits, SandboxConfig, ZendeskSandbox};

async fn sandbox(records: usize) -> ZendeskSandbox {
    ZendeskSandbox::start(
        SandboxConfig {
            records,
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap()
}

/// An authenticated GET: (status, headers, body).
async fn get(sandbox: &ZendeskSandbox, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", sandbox.url()))
        .basic_auth(
            format!("{}/token", ZendeskSandbox::EMAIL),
            Some(ZendeskSandbox::API_TOKEN),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].to_string())
        .collect()
}

fn long_ago(sandbox: &ZendeskSandbox) -> i64 {
    sandbox.now() - 400 * 24 * 3600
}

#[tokio::test]
async fn cursor_exports_page_to_the_end_of_the_stream() {
    let sandbox = sandbox(50).await;
    let mut path = format!(
        "/api/v2/incremental/tickets/cursor.json?per_page=7&support_type_scope=all&start_time={}",
        long_ago(&sandbox)
    );
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, _, body) = get(&sandbox, &path).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let tickets = body["tickets"].as_array().unwrap();
        assert!(tickets.len() <= 7);
        // Ordered by generated_timestamp.
        let times: Vec<i64> = tickets
            .iter()
            .map(|t| t["generated_timestamp"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        seen.extend(ids(&body["tickets"]));
        let cursor = body["after_cursor"].as_str().unwrap().to_owned();
        assert!(body["after_url"].as_str().unwrap().contains(&cursor));
        if body["end_of_stream"] == true {
            break;
        }
        path = format!(
            "/api/v2/incremental/tickets/cursor.json?per_page=7&support_type_scope=all&cursor={cursor}"
        );
    }
    assert_eq!(pages, 8, "50 tickets at 7 a page");
    let mut want = sandbox.ids("tickets");
    want.sort();
    seen.sort();
    assert_eq!(seen, want);

    // Zendesk's default `support_type_scope` is `agent`: the tickets an AI agent handled
    // (ids 7, 27 and 47 here) come only with `all` or `ai_agent`; so do their events.
    let start = long_ago(&sandbox);
    let scoped = async |scope: &str, what: &str| {
        let path = format!("/api/v2/incremental/{what}?start_time={start}{scope}");
        let (status, _, body) = get(&sandbox, &path).await;
        (status, body)
    };
    let (_, agent) = scoped("", "tickets/cursor.json").await;
    let (_, ai) = scoped("&support_type_scope=ai_agent", "tickets/cursor.json").await;
    let mut only_ai = ids(&ai["tickets"]);
    only_ai.sort();
    assert_eq!(only_ai, ["27", "47", "7"]);
    assert_eq!(ids(&agent["tickets"]).len(), 47);
    assert!(
        ids(&agent["tickets"])
            .iter()
            .all(|id| !ids(&ai["tickets"]).contains(id))
    );
    let ticket_of = |body: &Value| -> Vec<u64> {
        body["ticket_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ticket_id"].as_u64().unwrap())
            .collect()
    };
    let (_, events) = scoped("", "ticket_events.json").await;
    assert!(ticket_of(&events).iter().all(|t| t % 20 != 7));
    let (_, events) = scoped("&support_type_scope=all", "ticket_events.json").await;
    assert!(ticket_of(&events).contains(&7));
    let (status, body) = scoped("&support_type_scope=bots", "tickets/cursor.json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidValue"))
    );
}

#[tokio::test]
async fn exports_leave_out_the_last_minute_and_refuse_a_recent_start() {
    let sandbox = sandbox(10).await;
    let start = long_ago(&sandbox);
    let (_, _, body) = get(
        &sandbox,
        &format!(
            "/api/v2/incremental/tickets/cursor.json?support_type_scope=all&start_time={start}"
        ),
    )
    .await;
    assert_eq!(body["tickets"].as_array().unwrap().len(), 10);
    let cursor = body["after_cursor"].as_str().unwrap().to_owned();
    let next =
        format!("/api/v2/incremental/tickets/cursor.json?support_type_scope=all&cursor={cursor}");

    let created = sandbox.create("tickets", json!({"subject": "Fresh"}));
    let (_, _, body) = get(&sandbox, &next).await;
    assert_eq!(body["tickets"], json!([]), "changed within the minute");
    assert_eq!(body["end_of_stream"], true);
    assert_eq!(
        body["after_cursor"],
        cursor.as_str(),
        "an empty page keeps the position"
    );

    sandbox.advance_clock(Duration::from_secs(61));
    let (_, _, body) = get(&sandbox, &next).await;
    assert_eq!(ids(&body["tickets"]), [created["id"].to_string()]);

    let recent = sandbox.now() - 30;
    for path in [
        format!("/api/v2/incremental/tickets/cursor.json?start_time={recent}"),
        format!("/api/v2/incremental/organizations.json?start_time={recent}"),
    ] {
        let (status, _, body) = get(&sandbox, &path).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "InvalidValue");
        assert!(body["description"].as_str().unwrap().contains("1 minute"));
    }
    let (status, _, _) = get(&sandbox, "/api/v2/incremental/users/cursor.json").await;
    assert_eq!(status, 400, "start_time or cursor is required");
    let (status, _, body) = get(
        &sandbox,
        &format!("/api/v2/incremental/users/cursor.json?start_time={start}&per_page=1001"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidValue"))
    );
    let (status, _, body) = get(
        &sandbox,
        "/api/v2/incremental/users/cursor.json?cursor=bm9uc2Vuc2U=",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidPaginationParameter"))
    );
}

#[tokio::test]
async fn time_exports_never_split_a_second() {
    let sandbox = sandbox(20).await;
    let before = sandbox.ids("organizations");
    // Five organizations changed in one second, paged two at a time.
    let mut made = Vec::new();
    for i in 0..5 {
        let org = sandbox.create("organizations", json!({"name": format!("Same second {i}")}));
        made.push(org["id"].to_string());
    }
    sandbox.advance_clock(Duration::from_secs(61));
    let mut start = long_ago(&sandbox);
    let mut all = Vec::new();
    let mut pages = Vec::new();
    loop {
        let (status, _, body) = get(
            &sandbox,
            &format!("/api/v2/incremental/organizations.json?per_page=2&start_time={start}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let page = ids(&body["organizations"]);
        assert_eq!(body["count"], page.len());
        assert!(body["next_page"].as_str().unwrap().contains("start_time="));
        pages.push(page.clone());
        all.extend(page);
        if body["end_of_stream"] == true {
            break;
        }
        let end = body["end_time"].as_i64().unwrap();
        assert!(end >= start);
        start = end;
    }
    // A page holding one of a second's organizations holds all of them (past per_page:
    // five made at once share one or, at a tick, two seconds).
    let second = |id: &String| sandbox.get("organizations", id).unwrap()["updated_at"].clone();
    for id in &made {
        let peers: Vec<&String> = made.iter().filter(|o| second(o) == second(id)).collect();
        assert!(
            pages.iter().any(|p| peers.iter().all(|o| p.contains(o))),
            "{pages:?}"
        );
    }
    assert!(pages.iter().any(|p| p.len() > 2), "{pages:?}");
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        before.len() + 5,
        "every organization appears"
    );
}

#[tokio::test]
async fn ticket_changes_are_logged_as_ticket_events() {
    let sandbox = sandbox(5).await;
    let fields = sandbox.ids("ticket_fields");
    let ticket = sandbox.create(
        "tickets",
        json!({"subject": "Help", "priority": "high", "comment": {"body": "It broke", "public": true}}),
    );
    let id = ticket["id"].to_string();
    assert_eq!(ticket["description"], "It broke");
    let custom = fields.last().unwrap().parse::<i64>().unwrap();
    sandbox
        .update(
            "tickets",
            &id,
            json!({"status": "solved", "tags": ["vip"], "custom_fields": [{"id": custom, "value": "x"}]}),
        )
        .unwrap();
    assert!(sandbox.delete("tickets", &id));
    assert!(!sandbox.delete("tickets", &id), "already deleted");
    assert_eq!(sandbox.get("tickets", &id).unwrap()["status"], "deleted");

    let events = sandbox.ticket_events(&id);
    assert_eq!(events.len(), 3);
    let kinds = |e: &Value| -> Vec<String> {
        e["child_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["event_type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(kinds(&events[0]).contains(&"Create".to_owned()));
    assert!(kinds(&events[0]).contains(&"Comment".to_owned()));
    let created = events[0]["child_events"].as_array().unwrap();
    assert!(created.iter().any(|c| c["subject"] == "Help"));
    assert!(created.iter().any(|c| c["requester_id"].is_number()));
    let changes = events[1]["child_events"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["status"] == "solved" && c["previous_value"] == "new")
    );
    assert!(changes.iter().any(|c| c["added_tags"] == json!(["vip"])));
    assert!(
        changes
            .iter()
            .any(|c| c["field_name"] == custom.to_string().as_str() && c["value"] == "x")
    );
    assert_eq!(events[2]["child_events"][0]["status"], "deleted");
    for e in &events {
        assert_eq!(e["event_type"], "Audit");
        assert_eq!(e["ticket_id"].to_string(), id);
    }

    // Unknown or read-only fields are refused.
    let refused = sandbox.create("tickets", json!({"colour": "red"}));
    assert_eq!(refused["error"], "RecordInvalid");
    assert!(sandbox.update("users", "1", json!({"name": "x"})).is_none());
}

#[tokio::test]
async fn lists_page_with_cursors_and_refuse_big_pages() {
    let sandbox = sandbox(250).await;
    let mut path = "/api/v2/ticket_metrics.json?page%5Bsize%5D=100".to_owned();
    let mut all = Vec::new();
    loop {
        let (status, _, body) = get(&sandbox, &path).await;
        assert_eq!(status, 200);
        all.extend(ids(&body["ticket_metrics"]));
        if body["meta"]["has_more"] == false {
            assert_eq!(body["links"]["next"], Value::Null);
            break;
        }
        let after = body["meta"]["after_cursor"].as_str().unwrap();
        assert!(body["links"]["next"].as_str().unwrap().contains(after));
        path = format!("/api/v2/ticket_metrics.json?page%5Bsize%5D=100&page%5Bafter%5D={after}");
    }
    // One metric per ticket, none of an archived one (closed for 120 days).
    assert_eq!(all, sandbox.ids("ticket_metrics"));
    assert!((200..250).contains(&all.len()), "{}", all.len());
    // Ticket forms are one list, whatever paging is asked for, with no envelope.
    let (status, _, body) = get(&sandbox, "/api/v2/ticket_forms.json?page%5Bsize%5D=1").await;
    assert_eq!(status, 200);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ticket_forms"]);
    assert_eq!(
        ids(&body["ticket_forms"]),
        sandbox.ids("ticket_forms"),
        "every form at once"
    );
    let (status, _, body) = get(&sandbox, "/api/v2/groups.json?page%5Bsize%5D=101").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidPaginationParameter"))
    );
    let (status, _, _) = get(
        &sandbox,
        &format!("/api/v2/groups.json?page%5Bafter%5D={}", encode("x")),
    )
    .await;
    assert_eq!(status, 400);
    // Offset pagination without page[size].
    let (_, _, body) = get(&sandbox, "/api/v2/users.json?per_page=10&page=2").await;
    assert_eq!(body["users"].as_array().unwrap().len(), 10);
    assert!(body["next_page"].as_str().unwrap().contains("page=3"));
    // Tags are counted from what carries them.
    let (_, _, body) = get(&sandbox, "/api/v2/tags.json?page%5Bsize%5D=3").await;
    let tags = body["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 3);
    assert!(tags.iter().all(|t| t["count"].as_u64().unwrap() > 0));
    // show_many skips unknown ids.
    let (_, _, body) = get(&sandbox, "/api/v2/tickets/show_many.json?ids=1,2,999999").await;
    assert_eq!(ids(&body["tickets"]), ["1", "2"]);
}

#[tokio::test]
async fn credentials_are_required_in_zendesks_form() {
    let sandbox = sandbox(5).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v2/users/me.json", sandbox.url());
    let wrong = client
        .get(&url)
        .basic_auth("admin@x.test/token", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"error": "Couldn't authenticate you"})
    );
    let oauth = client
        .get(&url)
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .send()
        .await
        .unwrap();
    let me: Value = oauth.json().await.unwrap();
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["user"]["email"], ZendeskSandbox::EMAIL);
}

#[tokio::test]
async fn both_rate_limits_answer_429_with_retry_after_and_quota_headers() {
    let sandbox = ZendeskSandbox::start(
        SandboxConfig {
            records: 5,
            rate_limits: Some(RateLimits {
                window: Duration::from_secs(60),
                requests: 5,
                export_requests: 2,
            }),
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    let export = format!(
        "/api/v2/incremental/users/cursor.json?start_time={}",
        long_ago(&sandbox)
    );
    let (status, headers, _) = get(&sandbox, &export).await;
    assert_eq!(status, 200);
    let header = |h: &reqwest::header::HeaderMap, n: &str| {
        h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    // The `ratelimit-*` trio is the account's, as Zendesk documents it; the exports' own
    // quota is in their structured header.
    assert_eq!(header(&headers, "x-rate-limit").as_deref(), Some("5"));
    assert_eq!(
        header(&headers, "x-rate-limit-remaining").as_deref(),
        Some("4")
    );
    assert_eq!(header(&headers, "ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(
        header(&headers, "ratelimit-remaining").as_deref(),
        Some("4")
    );
    assert!(header(&headers, "ratelimit-reset").is_some());
    let quota = header(&headers, "zendesk-ratelimit-incremental-exports-cursor").unwrap();
    let parsed = tributary_sdk::http::StructuredQuota::parse(&quota).unwrap();
    assert_eq!(
        (parsed.total, parsed.remaining),
        (Some(2.0), 1.0),
        "{quota}"
    );
    assert!(
        parsed.resets.is_some_and(|r| (1.0..=60.0).contains(&r)),
        "{quota}"
    );
    // Not on the time-based exports: Zendesk documents none there. (This one takes the
    // second export slot.)
    let (status, headers, _) = get(
        &sandbox,
        &format!(
            "/api/v2/incremental/organizations.json?start_time={}",
            long_ago(&sandbox)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(header(&headers, "zendesk-ratelimit-incremental-exports-cursor").is_none());
    let (status, headers, body) = get(&sandbox, &export).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "APIRateLimitExceeded");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("incremental export")
    );
    let wait: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    // The account still has room for other endpoints: 3 of 5 left.
    for _ in 0..3 {
        let (status, _, _) = get(&sandbox, "/api/v2/groups.json").await;
        assert_eq!(status, 200);
    }
    let (status, _, body) = get(&sandbox, "/api/v2/groups.json").await;
    assert_eq!(status, 429);
    assert!(!body["description"].as_str().unwrap().contains("export"));
    let stats = sandbox.stats();
    assert_eq!(stats.rate_limited, 2);
    assert_eq!(stats.max_admitted_per_window, 5);
    assert_eq!(stats.max_export_admitted_per_window, 2);

    sandbox.set_rate_limits(None);
    let (status, headers, _) = get(&sandbox, "/api/v2/groups.json").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "x-rate-limit").is_none());
}

#[tokio::test]
async fn resources_off_the_plan_answer_403_like_zendesk() {
    let sandbox = ZendeskSandbox::start(
        SandboxConfig {
            records: 5,
            unavailable: vec!["ticket_forms".into()],
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    let (status, _, body) = get(&sandbox, "/api/v2/ticket_forms.json").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["title"], "Forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You do not have access to this page.")
    );
    let form = sandbox.ids("ticket_forms")[0].clone();
    let (status, _, _) = get(&sandbox, &format!("/api/v2/ticket_forms/{form}.json")).await;
    assert_eq!(status, 403);
    // Everything else, and the credentials, still answer.
    for path in ["/api/v2/users/me.json", "/api/v2/groups.json"] {
        assert_eq!(get(&sandbox, path).await.0, 200, "{path}");
    }

    // Switched at runtime, through the control endpoint as well.
    let client = reqwest::Client::new();
    let plan = format!("{}/_sandbox/plan", sandbox.url());
    let set: Value = client
        .post(&plan)
        .body(r#"{"unavailable": ["tickets", "brands"]}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["unavailable"], json!(["tickets", "brands"]));
    assert_eq!(get(&sandbox, "/api/v2/ticket_forms.json").await.0, 200);
    assert_eq!(get(&sandbox, "/api/v2/brands.json").await.0, 403);
    let export = format!(
        "/api/v2/incremental/tickets/cursor.json?start_time={}",
        long_ago(&sandbox)
    );
    assert_eq!(get(&sandbox, &export).await.0, 403);
    let bad = client
        .post(&plan)
        .body(r#"{"unavailable": "tickets"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    sandbox.set_unavailable(&[]);
    assert_eq!(get(&sandbox, "/api/v2/brands.json").await.0, 200);
    let now: Value = client
        .get(&plan)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["unavailable"], json!([]));
}

#[tokio::test]
async fn faults_and_control_endpoints() {
    let sandbox = sandbox(5).await;
    let client = reqwest::Client::new();
    let control = |path: &str| format!("{}/_sandbox/{path}", sandbox.url());
    let faults: Value = client
        .post(control("faults"))
        .body(r#"{"malformed_next": 1, "throttle_next": 1}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["malformed_next"], 1);
    let (status, headers, _) = get(&sandbox, "/api/v2/groups.json").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    let response = client
        .get(format!("{}/api/v2/groups.json", sandbox.url()))
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "malformed");

    sandbox.set_faults(Faults {
        truncate_next: 1,
        ..Faults::default()
    });
    let cut = client
        .get(format!("{}/api/v2/groups.json", sandbox.url()))
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    assert!(cut.is_err(), "the body is cut short");

    let before = sandbox.now();
    let now: Value = client
        .post(control("clock"))
        .body(r#"{"advance_seconds": 3600}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(now["now"].as_i64().unwrap() >= before + 3600);
    let limits: Value = client
        .post(control("rate_limit"))
        .body(r#"{"window_seconds": 2, "requests": 30, "export_requests": 3}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits["rate_limits"]["export_requests"], 3);
    let stats: Value = client
        .get(control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["faults_injected"], 3);
    assert_eq!(stats["requests"], 3);
}

#[tokio::test]
async fn writes_over_http() {
    let sandbox = sandbox(5).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}/api/v2/{path}", sandbox.url());
    let created: Value = client
        .post(url("tickets.json"))
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .body(r#"{"ticket": {"subject": "Over HTTP", "comment": {"body": "hi"}}}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["ticket"]["id"].to_string();
    let updated = client
        .put(url(&format!("tickets/{id}.json")))
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .body(r#"{"ticket": {"status": "open"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let deleted = client
        .delete(url(&format!("tickets/{id}.json")))
        .bearer_auth(ZendeskSandbox::OAUTH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _, body) = get(&sandbox, &format!("/api/v2/tickets/{id}.json")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
    assert_eq!(sandbox.ticket_events(&id).len(), 3);
}

/// The kit gave Zendesk a throttle probability next to its `throttle_next`; an injected
/// 429 on an export names the exports' limit, as Zendesk's own refusal does.
#[tokio::test]
async fn throttle_rate_answers_429_in_zendesks_shape() {
    let sandbox = sandbox(5).await;
    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        ..Faults::default()
    });
    let (status, headers, body) = get(&sandbox, "/api/v2/groups.json").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"], "APIRateLimitExceeded");
    assert!(
        !body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("export"),
        "{body}"
    );
    let start = long_ago(&sandbox);
    let (status, _, body) = get(
        &sandbox,
        &format!("/api/v2/incremental/organizations.json?start_time={start}"),
    )
    .await;
    assert_eq!(status, 429);
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("export"),
        "{body}"
    );
    let stats = sandbox.stats();
    assert_eq!((stats.faults_injected, stats.rate_limited), (2, 0));
    sandbox.set_faults(Faults::default());
    assert_eq!(get(&sandbox, "/api/v2/groups.json").await.0, 200);
    sandbox.shutdown().await;
}

/// Zendesk's two limits on the kit: the exports' own window is checked first and counts
/// only export requests; the account's counts every request.
mod limits {
    use std::time::{Duration, Instant};

    use super::super::{Quota, RateLimits, SandboxConfig, Shared, generate};

    fn shared(limits: Option<RateLimits>) -> Shared {
        let config = SandboxConfig {
            records: 1,
            rate_limits: limits,
            ..SandboxConfig::default()
        };
        Shared::new(generate::seed(1, 1_700_000_000, 1), config)
    }

    fn limits(requests: u32, export_requests: u32) -> Option<RateLimits> {
        Some(RateLimits {
            window: Duration::from_secs(1),
            requests,
            export_requests,
        })
    }

    fn refused_by(e: tributary_sandbox_kit::SandboxError) -> (&'static str, u64) {
        match e {
            tributary_sandbox_kit::SandboxError::Throttled {
                limit, retry_after, ..
            } => (limit, retry_after),
            other => panic!("not a throttle: {other:?}"),
        }
    }

    #[test]
    fn exports_have_their_own_stricter_window() {
        let shared = shared(limits(5, 2));
        let t0 = Instant::now() + Duration::from_secs(10);
        let q = shared.admit(true, t0).unwrap();
        assert_eq!(q.export, Some((2, 1, 1)));
        assert_eq!(q.account, Some((5, 4, 1)));
        let q = shared.admit(false, t0 + Duration::from_millis(5)).unwrap();
        assert_eq!(q.export, None, "only exports report the export limit");
        assert_eq!(q.account, Some((5, 3, 1)));
        shared.admit(true, t0 + Duration::from_millis(10)).unwrap();
        let refused = shared
            .admit(true, t0 + Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(refused_by(refused), ("export", 1));
        // Other endpoints still have the account's room.
        for i in 0..2 {
            shared
                .admit(false, t0 + Duration::from_millis(30 + i))
                .unwrap();
        }
        let refused = shared
            .admit(false, t0 + Duration::from_millis(40))
            .unwrap_err();
        assert_eq!(refused_by(refused).0, "account");
        // A window later, both have room again.
        assert!(shared.admit(true, t0 + Duration::from_millis(1100)).is_ok());
        let stats = shared.stats();
        assert_eq!(
            (
                stats.max_admitted_per_window,
                stats.max_export_admitted_per_window,
                stats.rate_limited
            ),
            (5, 2, 2)
        );
    }

    #[test]
    fn a_refused_request_is_not_counted() {
        let shared = shared(limits(1, 1));
        let t0 = Instant::now() + Duration::from_secs(10);
        shared.admit(false, t0).unwrap();
        for i in 1..5 {
            assert!(shared.admit(true, t0 + Duration::from_millis(i)).is_err());
        }
        let stats = shared.stats();
        assert_eq!(
            (
                stats.max_admitted_per_window,
                stats.max_export_admitted_per_window
            ),
            (1, 0)
        );
    }

    #[test]
    fn unlimited_still_measures() {
        let shared = shared(None);
        let t0 = Instant::now() + Duration::from_secs(10);
        for i in 0..30 {
            let q = shared
                .admit(i % 3 == 0, t0 + Duration::from_millis(i))
                .unwrap();
            assert_eq!(q, Quota::default());
        }
        let stats = shared.stats();
        assert_eq!(
            (
                stats.max_admitted_per_window,
                stats.max_export_admitted_per_window
            ),
            (30, 10)
        );
        shared.kit.reset_stats();
        shared.reset_own_stats();
        let stats = shared.stats();
        assert_eq!(
            (
                stats.max_admitted_per_window,
                stats.max_export_admitted_per_window
            ),
            (0, 0)
        );
    }
}
