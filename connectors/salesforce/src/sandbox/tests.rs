//! The simulator over HTTP, as a client other than the connector sees it: OAuth refusals,
//! sessions, the daily limit, SOQL errors, `nextRecordsUrl` paging and the Bulk job
//! lifecycle.

use serde_json::{Value, json};

use super::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SalesforceSandbox, SandboxConfig};

async fn sandbox() -> SalesforceSandbox {
    SalesforceSandbox::start(
        SandboxConfig {
            records: 300,
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap()
}

async fn login(client: &reqwest::Client, url: &str) -> String {
    let answer: Value = client
        .post(format!("{url}/services/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", REFRESH_TOKEN),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["instance_url"], json!(url));
    answer["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn oauth_refusals_use_salesforce_shapes() {
    let sandbox = sandbox().await;
    let client = reqwest::Client::new();
    let url = sandbox.url();
    for (form, status, error) in [
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", "nope"),
                ("refresh_token", REFRESH_TOKEN),
            ],
            400,
            "invalid_client_id",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("refresh_token", "x"),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", "x"),
            ],
            400,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", "a.b.c"),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "password")],
            400,
            "unsupported_grant_type",
        ),
    ] {
        let response = client
            .post(format!("{url}/services/oauth2/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], json!(error), "{form:?}");
    }
    // A JWT signed with the right key but tampered with is refused.
    let key = crate::auth::RsaKey::from_pem(super::TEST_PRIVATE_KEY_PEM.as_bytes()).unwrap();
    let good = crate::auth::assertion(CLIENT_ID, super::USERNAME, &url, &key).unwrap();
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    for (assertion, ok) in [(good, true), (tampered, false)] {
        let response = client
            .post(format!("{url}/services/oauth2/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().is_success(), ok);
    }
}

#[tokio::test]
async fn sessions_limits_and_soql_errors() {
    let sandbox = sandbox().await;
    let client = reqwest::Client::new();
    let url = sandbox.url();
    let get = |path: &str, token: &str| {
        client
            .get(format!("{url}/services/data/v62.0{path}"))
            .bearer_auth(token)
            .send()
    };
    let response = get("/limits", "bogus").await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    let token = login(&client, &url).await;
    let response = get("/limits", &token).await.unwrap();
    assert_eq!(
        response.headers()["sforce-limit-info"].to_str().unwrap(),
        "api-usage=1/15000"
    );
    for (soql, code) in [
        ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
        ("SELECT Nope FROM Account", "INVALID_FIELD"),
        (
            "SELECT Id FROM Account WHERE SystemModstamp > '2024-01-01'",
            "INVALID_FIELD",
        ),
        ("SELECT Id FROM", "MALFORMED_QUERY"),
    ] {
        let response = client
            .get(format!("{url}/services/data/v62.0/queryAll"))
            .query(&[("q", soql)])
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{soql}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], json!(code), "{soql}");
    }

    sandbox.expire_sessions();
    assert_eq!(get("/limits", &token).await.unwrap().status().as_u16(), 401);
    let token = login(&client, &url).await;
    sandbox.set_daily_api_limit(sandbox.api_usage().0);
    let response = get("/limits", &token).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn query_paging_and_the_bulk_job_lifecycle() {
    let sandbox = sandbox().await;
    let client = reqwest::Client::new();
    let url = sandbox.url();
    let token = login(&client, &url).await;

    // queryAll pages by batchSize and includes deleted records.
    let ids = sandbox.ids("Contact");
    sandbox.delete("Contact", &ids[0]).unwrap();
    let mut next = Some(format!(
        "/services/data/v62.0/queryAll?q={}",
        url::form_urlencoded::byte_serialize(b"SELECT Id, IsDeleted FROM Contact ORDER BY Id")
            .collect::<String>()
    ));
    let mut seen = Vec::new();
    while let Some(path) = next {
        let page: Value = client
            .get(format!("{url}{path}"))
            .bearer_auth(&token)
            .header("Sforce-Query-Options", "batchSize=250")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["totalSize"], 600);
        assert_eq!(page["records"][0]["attributes"]["type"], "Contact");
        for r in page["records"].as_array().unwrap() {
            seen.push((r["Id"].as_str().unwrap().to_owned(), r["IsDeleted"] == true));
        }
        next = page["nextRecordsUrl"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 600);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ordered by Id");
    assert_eq!(seen[0], (ids[0].clone(), true));

    // Bulk refuses what Salesforce refuses.
    let create = |query: &str| {
        client
            .post(format!("{url}/services/data/v62.0/jobs/query"))
            .bearer_auth(&token)
            .json(&json!({"operation": "queryAll", "query": query}))
            .send()
    };
    for (query, code) in [
        ("SELECT Id FROM Account ORDER BY Id", "INVALIDJOB"),
        ("SELECT Id, BillingAddress FROM Account", "INVALIDJOB"),
        ("SELECT Id FROM CaseStatus", "INVALIDENTITY"),
    ] {
        let response = create(query).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], json!(code), "{query}");
    }
    let job: Value = create("SELECT Id, Name, SystemModstamp FROM Account")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "UploadComplete");
    let id = job["id"].as_str().unwrap();
    let results = format!("{url}/services/data/v62.0/jobs/query/{id}/results");
    let early = client
        .get(&results)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(early.status().as_u16(), 400);
    let mut states = Vec::new();
    for _ in 0..2 {
        let info: Value = client
            .get(format!("{url}/services/data/v62.0/jobs/query/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        states.push(info["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(states, ["InProgress", "JobComplete"]);
    let mut locator: Option<String> = None;
    let mut rows = 0;
    loop {
        let mut request = client
            .get(&results)
            .bearer_auth(&token)
            .query(&[("maxRecords", "120")]);
        if let Some(l) = &locator {
            request = request.query(&[("locator", l)]);
        }
        let response = request.send().await.unwrap();
        let n: usize = response.headers()["sforce-numberofrecords"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let next = response.headers()["sforce-locator"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        let mut lines = body.lines();
        assert_eq!(lines.next(), Some("\"Id\",\"Name\",\"SystemModstamp\""));
        let page: Vec<&str> = lines.collect();
        assert_eq!(page.len(), n);
        assert!(page[0].ends_with(".000Z\""), "{}", page[0]);
        rows += n;
        if next == "null" {
            break;
        }
        locator = Some(next);
    }
    assert_eq!(rows, 300);
}

#[tokio::test]
async fn over_long_requests_are_refused_like_salesforce_and_wide_queries_work_by_id() {
    let sandbox = SalesforceSandbox::start(
        SandboxConfig {
            records: 300,
            wide_fields: 800,
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = sandbox.url();
    let token = login(&client, &url).await;
    let query = |soql: String| {
        client
            .get(format!("{url}/services/data/v62.0/queryAll"))
            .query(&[("q", soql)])
            .bearer_auth(&token)
            .send()
    };
    let fields: Vec<String> = (1..=800).map(super::wide_field).collect();
    assert!(fields.iter().all(|f| f.len() == 40));

    // Every field in one URL is far over 16,384 bytes: 414, the front end's HTML page, and
    // no API request counted.
    let (used, _) = sandbox.api_usage();
    let response = query(format!(
        "SELECT Id, {} FROM {}",
        fields.join(", "),
        super::WIDE_OBJECT
    ))
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 414);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(response.text().await.unwrap().contains("URI Too Long"));
    assert_eq!(sandbox.api_usage().0, used);
    assert_eq!(sandbox.stats().too_long, 1);

    // A URL that fits, with headers that push the request past the limit: 431.
    let response = client
        .get(format!("{url}/services/data/v62.0/limits"))
        .bearer_auth(&token)
        .header("X-Padding", "x".repeat(16_384))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    // Just under the limit is served.
    let response = client
        .get(format!("{url}/services/data/v62.0/limits"))
        .bearer_auth(&token)
        .header("X-Padding", "x".repeat(15_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // `Id IN (…)` picks records, deleted ones included by queryAll; wide rows come in
    // pages smaller than batchSize.
    let ids = sandbox.ids(super::WIDE_OBJECT);
    sandbox.delete(super::WIDE_OBJECT, &ids[1]).unwrap();
    let chosen = [&ids[1], &ids[3], &ids[7]];
    let page: Value = query(format!(
        "SELECT Id, IsDeleted, {} FROM {} WHERE Id IN ('{}', '{}', '{}')",
        fields[700..760].join(", "),
        super::WIDE_OBJECT,
        chosen[0],
        chosen[1],
        chosen[2]
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(page["totalSize"], 3);
    let got: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [chosen[0].as_str(), chosen[1].as_str(), chosen[2].as_str()]
    );
    assert_eq!(page["records"][0]["IsDeleted"], true);
    let stored = sandbox.record(super::WIDE_OBJECT, chosen[1]).unwrap();
    assert_eq!(page["records"][1][&fields[759]], stored[&fields[759]]);

    let soql = format!(
        "SELECT Id, {} FROM {}",
        fields[..100].join(", "),
        super::WIDE_OBJECT
    );
    let wide: Value = client
        .get(format!("{url}/services/data/v62.0/queryAll"))
        .query(&[("q", soql)])
        .bearer_auth(&token)
        .header("Sforce-Query-Options", "batchSize=200")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wide["totalSize"], 300);
    let n = wide["records"].as_array().unwrap().len();
    assert!(n < 200, "{n}");
    assert!(wide["nextRecordsUrl"].is_string());
}

#[tokio::test]
async fn bulk_job_refusals_are_salesforce_shaped() {
    let sandbox = sandbox().await;
    let client = reqwest::Client::new();
    let url = sandbox.url();
    let token = login(&client, &url).await;
    for (refusal, status, code, text) in [
        (
            super::BulkRefusal::DailyJobLimit,
            400,
            "LIMIT_EXCEEDED",
            "Max bulk v2 query jobs (10000) per 24 hrs has been reached",
        ),
        (
            super::BulkRefusal::NoPermission,
            403,
            "InvalidUser",
            "permission",
        ),
    ] {
        sandbox.set_faults(
            super::SalesforceFaults {
                bulk_refusal: Some(refusal),
                ..Default::default()
            }
            .into(),
        );
        let response = client
            .post(format!("{url}/services/data/v62.0/jobs/query"))
            .bearer_auth(&token)
            .json(&json!({"operation": "queryAll", "query": "SELECT Id FROM Account"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], code);
        assert!(body[0]["message"].as_str().unwrap().contains(text));
    }
    assert_eq!(sandbox.stats().bulk_jobs, 0);
    // REST still answers.
    let response = client
        .get(format!("{url}/services/data/v62.0/queryAll"))
        .query(&[("q", "SELECT COUNT() FROM Account")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// What the sandbox kit gave Salesforce: an error rate, throttling with `Retry-After`,
/// malformed bodies, a rate limit and a clock, all over the one control API.
#[tokio::test]
async fn the_kits_faults_rate_limit_and_clock_work_for_salesforce() {
    let sandbox = sandbox().await;
    let client = reqwest::Client::new();
    let url = sandbox.url();
    let token = login(&client, &url).await;
    let query = format!("{url}/services/data/v62.0/query?q=SELECT+Id+FROM+Account+LIMIT+5");
    let get = || client.get(&query).bearer_auth(&token).send();
    let control = |path: &str, body: &str| {
        client
            .post(format!("{url}/_sandbox/{path}"))
            .body(body.to_owned())
            .send()
    };

    let set: Value = control("faults", r#"{"error_rate": 1.0}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["error_rate"], 1.0);
    for _ in 0..3 {
        let failed = get().await.unwrap();
        assert_eq!(failed.status(), 503);
        let body: Value = failed.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], "SERVER_UNAVAILABLE");
    }

    control("faults", r#"{"throttle_next": 1, "malformed_next": 1}"#)
        .await
        .unwrap();
    let throttled = get().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    let malformed = get().await.unwrap();
    assert_eq!(malformed.status(), 200);
    let text = malformed.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(sandbox.stats().faults_injected, 5);

    control("rate_limit", r#"{"requests": 1, "window_seconds": 30}"#)
        .await
        .unwrap();
    // The requests of the last moments count too: the second request at the latest is
    // refused, with the seconds until the oldest leaves the 30-second window.
    let first = get().await.unwrap().status();
    let refused = get().await.unwrap();
    assert!(first == 200 || first == 429, "{first}");
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert!(sandbox.stats().rate_limited >= 1);
    sandbox.set_rate_limit(None);
    assert_eq!(get().await.unwrap().status(), 200);

    let before = sandbox.now();
    let now: Value = control("clock", r#"{"advance_seconds": 86400}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(now["now"].as_i64().unwrap() >= before.timestamp() + 86_400);
    let id = sandbox
        .create("Account", json!({"Name": "Tomorrow"}))
        .unwrap();
    let stamp = sandbox.record("Account", &id).unwrap()["SystemModstamp"].clone();
    let stamp =
        chrono::DateTime::parse_from_str(stamp.as_str().unwrap(), "%Y-%m-%dT%H:%M:%S%.3f%z")
            .unwrap();
    assert!(stamp.timestamp() >= before.timestamp() + 86_400, "{stamp}");
    sandbox.shutdown().await;
}
