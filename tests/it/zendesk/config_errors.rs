//! A Zendesk source's mistakes: a subdomain that is not one, missing credentials, and
//! credentials Zendesk refuses. Each is an error that says what to fix, and nothing is
//! written.

use super::{FAST, ZendeskEnv};
use crate::common::{read_table, run_binary};

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_subdomain_or_missing_credentials_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("wh");
    let base = format!(
        "[warehouse]\nurl = {:?}\n[sources.zendesk]\ntype = \"zendesk\"\n",
        warehouse.display().to_string()
    );
    let cases: [(&str, &[&str]); 7] = [
        (
            "subdomain = \"acme.freshdesk.com\"\nemail = \"a@b.c\"\napi_token = \"t\"\n",
            &[
                "bad.toml",
                "sources.zendesk.subdomain",
                "not a zendesk.com address",
                "https://acme.zendesk.com",
            ],
        ),
        (
            "subdomain = \"https://acme.zendesk.com/agent/tickets\"\nemail = \"a@b.c\"\napi_token = \"t\"\n",
            &["sources.zendesk.subdomain", "has a path"],
        ),
        (
            "subdomain = \"acme\"\n",
            &["sources.zendesk.api_token", "oauth_access_token"],
        ),
        (
            "subdomain = \"acme\"\nemail = \"a@b.c\"\napi_token = \"t\"\nexport_requests_per_minute = 0\n",
            &[
                "sources.zendesk.export_requests_per_minute",
                "between 1 and 1000000",
            ],
        ),
        (
            "subdomain = \"acme\"\nemail = \"zd-secret-in-the-email-key\"\napi_token = \"t\"\n",
            &[
                "invalid option `sources.zendesk.email`",
                "not an email address",
            ],
        ),
        (
            "subdomain = \"acme\"\nemail = \"a@b.c\"\napi_token = \"t\"\npage_size = 250\n",
            &["sources.zendesk.page_size", "between 1 and 100"],
        ),
        (
            "subdomain = \"acme\"\nemail = \"a@b.c\"\napi_token = \"t\"\nexport_page_size = 5000\n",
            &["sources.zendesk.export_page_size", "between 1 and 1000"],
        ),
    ];
    for (source, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{base}{source}")).unwrap();
        for command in ["check", "sync"] {
            let out = run_binary(&path, &[command]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
            for e in expected {
                assert!(stderr.contains(e), "{command}: expected {e:?} in: {stderr}");
            }
            // Config errors name the key, never its value.
            for value in [
                "zd-secret",
                "acme.freshdesk.com",
                "/agent/tickets",
                "250",
                "5000",
            ] {
                assert!(
                    !stderr.contains(value),
                    "{command}: {value} leaked: {stderr}"
                );
            }
            assert!(
                !warehouse.join("zendesk").exists(),
                "nothing may be written: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_fail_check_and_sync_without_writing() {
    let env = ZendeskEnv::start(10, "").await;
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        tributary_zendesk::sandbox::ZendeskSandbox::API_TOKEN,
        "not-the-token",
    );
    std::fs::write(&env.config, text).unwrap();

    let out = env.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("zendesk")
            && stdout.contains("FAILED")
            && stdout.contains("401")
            && stdout.contains("Couldn't authenticate you"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-the-token"), "{stdout}");

    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("13 streams, 0 records, 13 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Zendesk rejected the credentials (HTTP 401): Couldn't authenticate you"),
        "{stdout}"
    );
    // Tables may exist (created empty) but hold no rows and no cursor.
    for stream in ["tickets", "users", "groups", "ticket_events"] {
        if env.table(stream).join("_delta_log").exists() {
            assert!(read_table(&env.table(stream)).await.is_empty(), "{stream}");
        }
    }
    let out = env.run(&["state"]).await;
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(
        !state.contains("\"mode\""),
        "no cursor was committed: {state}"
    );

    // With the right token again, the same warehouse syncs.
    env.write_config(FAST, "streams = [\"groups\"]");
    env.sync_ok(&[]).await;
    assert!(!read_table(&env.table("groups")).await.is_empty());
}
