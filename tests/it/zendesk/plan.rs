//! A Zendesk account whose plan lacks an endpoint (ticket forms below Suite Growth): the
//! stream is skipped with Zendesk's own message, the run succeeds, and every other stream
//! lands. `check` is about the credentials and does not mind the plan.

use tributary_zendesk::sandbox::SandboxConfig;

use super::{FAST, ZendeskEnv};
use crate::common::{id_counts, read_table};

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_off_the_plan_is_skipped_and_the_others_land() {
    let env = ZendeskEnv::start_with(
        SandboxConfig {
            records: 30,
            unavailable: vec!["ticket_forms".into()],
            ..Default::default()
        },
        FAST,
        "",
    )
    .await;

    let out = env.run(&["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ok (13 streams)"), "{stdout}");

    let out = env.run(&["sync"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("zendesk.ticket_forms"))
        .unwrap_or_else(|| panic!("no ticket_forms line: {stdout}"));
    assert!(line.trim_end().ends_with("skipped"), "{line}");
    assert!(
        stdout.contains(
            "warning: skipped, not available on this account's plan: You do not have access \
             to this page. Please contact the account owner of this help desk for further help."
        ),
        "Zendesk's own message: {stdout}"
    );
    assert!(stdout.contains("GET /api/v2/ticket_forms.json"), "{stdout}");
    assert!(stdout.contains("Suite Growth"), "{stdout}");
    assert!(stdout.contains("13 streams"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert!(stdout.contains("1 streams skipped"), "{stdout}");
    assert!(
        !stdout.contains("credentials") && !stderr.contains("credentials"),
        "a plan is not a credentials problem: {stdout}\n{stderr}"
    );

    // Every other stream landed all its rows, once.
    for stream in [
        "tickets",
        "users",
        "organizations",
        "ticket_events",
        "groups",
        "group_memberships",
        "organization_memberships",
        "ticket_fields",
        "ticket_metrics",
        "satisfaction_ratings",
        "brands",
        "tags",
    ] {
        let counts = id_counts(&read_table(&env.table(stream)).await);
        let want = env.sandbox.ids(stream);
        assert!(!want.is_empty(), "{stream}: the sandbox seeds some");
        assert_eq!(counts.len(), want.len(), "{stream}: every row lands");
        assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
    }
    assert!(
        !env.table("ticket_forms").join("_delta_log").exists()
            || read_table(&env.table("ticket_forms")).await.is_empty(),
        "nothing landed for ticket_forms"
    );
}
