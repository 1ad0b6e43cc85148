//! Declarative vendors against their simulators over HTTP: the SDK's conformance kit for
//! every built-in vendor that can delete, reads through the kit's faults, every
//! pagination style and auth kind of the format on a test spec, and the validation
//! errors a spec author meets.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tributary_sandbox_kit::Faults;
use tributary_sdk::conformance::{self, Harness, read_all, read_until_error};
use tributary_sdk::{Error, ReadRequest, Source, SourceContext};

use crate::sandbox::{DeclarativeSandbox, SandboxConfig};
use crate::{Spec, Vendor};

async fn start(vendor: Vendor, records: usize) -> DeclarativeSandbox {
    DeclarativeSandbox::start(
        vendor,
        SandboxConfig {
            records,
            ..SandboxConfig::default()
        },
        0,
    )
    .await
    .expect("the simulator starts")
}

/// The options of a source pointed at `sandbox`.
fn options(sandbox: &DeclarativeSandbox, extra: serde_json::Value) -> serde_json::Value {
    let mut options: serde_json::Value = toml::from_str::<toml::Value>(&sandbox.source_lines())
        .map(|t| serde_json::to_value(t).unwrap())
        .unwrap();
    options["requests_per_second"] = serde_json::json!(1000);
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            options[k] = v;
        }
    }
    options
}

fn source(
    name: &'static str,
    sandbox: &DeclarativeSandbox,
    extra: serde_json::Value,
) -> Arc<dyn Source> {
    crate::factory(name)
        .build(options(sandbox, extra), SourceContext::default())
        .expect("the source builds")
}

struct Kit {
    name: &'static str,
    sandbox: DeclarativeSandbox,
}

#[async_trait]
impl Harness for Kit {
    fn source(&self) -> Arc<dyn Source> {
        source(
            self.name,
            &self.sandbox,
            serde_json::json!({"page_size": 7}),
        )
    }
    async fn ids(&self, stream: &str) -> Vec<String> {
        self.sandbox.ids(stream)
    }
    async fn create(&self, stream: &str) -> String {
        self.sandbox.create(stream)
    }
    async fn update(&self, stream: &str, id: &str) {
        assert!(
            self.sandbox
                .update(stream, id, "note", serde_json::json!("changed by the kit"))
        );
    }
    async fn delete(&self, stream: &str, id: &str) {
        assert!(self.sandbox.delete(stream, id));
    }
    async fn settle(&self) {
        self.sandbox.kit().clock.advance(Duration::from_secs(2));
    }
}

async fn conformance(name: &'static str, stream: &str) {
    let vendor = crate::builtin(name).unwrap();
    let harness = Kit {
        name,
        sandbox: start(vendor, 40).await,
    };
    if let Err(e) = conformance::run(&harness, stream).await {
        panic!("{name} conformance on `{stream}`: {e}");
    }
}

/// The kit on a stream whose vendor keeps no tombstones.
async fn conformance_without_deletes(name: &'static str, stream: &str) {
    let vendor = crate::builtin(name).unwrap();
    let harness = Kit {
        name,
        sandbox: start(vendor, 40).await,
    };
    if let Err(e) = conformance::run_without_deletes(&harness, stream).await {
        panic!("{name} conformance on `{stream}`: {e}");
    }
}

#[tokio::test]
async fn intercom_passes_the_conformance_kit() {
    for stream in ["contacts", "conversations"] {
        conformance_without_deletes("intercom", stream).await;
    }
}

#[tokio::test]
async fn twilio_passes_the_conformance_kit() {
    for stream in ["messages", "calls"] {
        conformance_without_deletes("twilio", stream).await;
    }
}

#[tokio::test]
async fn sendgrid_passes_the_conformance_kit() {
    conformance_without_deletes("sendgrid", "unsubscribes").await;
}

/// List members, a child stream read list by list: the kit's resume from the middle
/// resumes inside one list's pages.
#[tokio::test]
async fn mailchimp_passes_the_conformance_kit() {
    conformance("mailchimp", "list_members").await;
}

/// Intercom's companies scroll ends at an empty page that still carries a scroll token;
/// admins are one page. Both are snapshots that reset the table.
#[tokio::test]
async fn intercom_snapshots_end_at_the_empty_scroll_page() {
    let vendor = crate::builtin("intercom").unwrap();
    let schemas = vendor.schemas.clone();
    let sandbox = start(vendor, 230).await;
    let src = source("intercom", &sandbox, serde_json::json!({}));
    for stream in ["companies", "admins"] {
        let schema = schemas.iter().find(|s| s.name == stream).unwrap();
        let log = read_all(src.as_ref(), schema, None, false).await.unwrap();
        assert!(log.first_page_resets, "{stream}");
        assert!(log.duplicates().is_empty(), "{stream}");
        assert_eq!(
            log.ids(),
            sandbox.ids(stream).into_iter().collect(),
            "{stream}"
        );
    }
    // Three pages of 100 and the empty one, then nothing more.
    let before = sandbox.kit().counters().requests;
    let schema = schemas.iter().find(|s| s.name == "companies").unwrap();
    read_all(src.as_ref(), schema, None, false).await.unwrap();
    assert_eq!(sandbox.kit().counters().requests - before, 4);
}

/// Intercom matches `updated_at` by calendar day: the request asks from two days before
/// the mark, and the records changed before it are not handed on.
#[tokio::test]
async fn a_day_granular_filter_hands_on_only_what_changed_since_the_mark() {
    let vendor = crate::builtin("intercom").unwrap();
    let schema = vendor.schemas[0].clone();
    let sandbox = start(vendor, 50).await;
    let src = source("intercom", &sandbox, serde_json::json!({"page_size": 10}));
    let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    assert_eq!(full.ids().len(), 50);
    let end = full.last_cursor().unwrap();
    let ids = sandbox.ids("contacts");
    // Changes within the same day as the mark, and one an hour later.
    sandbox.kit().clock.advance(Duration::from_secs(5));
    assert!(sandbox.update("contacts", &ids[3], "name", serde_json::json!("x")));
    sandbox.kit().clock.advance(Duration::from_secs(3600));
    assert!(sandbox.update("contacts", &ids[7], "name", serde_json::json!("y")));
    sandbox.kit().clock.advance(Duration::from_secs(2));
    let changes = read_all(src.as_ref(), &schema, Some(end), false)
        .await
        .unwrap();
    assert_eq!(
        changes.ids(),
        [ids[3].clone(), ids[7].clone()].into_iter().collect()
    );
}

/// Mailchimp's data center comes from the API key's suffix, and a key without one is an
/// error naming the option.
#[test]
fn the_data_center_is_taken_from_the_api_key() {
    let factory = crate::factory("mailchimp");
    let e = factory
        .build(
            serde_json::json!({"api_key": "0123456789abcdef"}),
            SourceContext::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("data_center") && e.contains("api_key"), "{e}");
    assert!(!e.contains("0123456789abcdef"), "{e}");
    factory
        .build(
            serde_json::json!({"api_key": "0123456789abcdef-us21"}),
            SourceContext::default(),
        )
        .unwrap();
    let vendor = crate::builtin("mailchimp").unwrap();
    let settings = crate::source::Settings::from_options(
        &vendor,
        &serde_json::json!({"api_key": "0123456789abcdef-us21"}),
    )
    .unwrap();
    assert_eq!(settings.base_url, "https://us21.api.mailchimp.com/3.0");
}

#[tokio::test]
async fn every_builtin_spec_is_valid() {
    assert!(crate::builtin_names().len() >= 2);
    for name in crate::builtin_names() {
        let vendor = crate::builtin(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vendor.schemas.len(), vendor.spec.spec.streams.len());
    }
}

#[tokio::test]
async fn chargebee_passes_the_conformance_kit() {
    for stream in ["customers", "subscriptions", "invoices"] {
        conformance("chargebee", stream).await;
    }
    // Events are never deleted.
    conformance_without_deletes("chargebee", "events").await;
}

#[tokio::test]
async fn hubspot_passes_the_conformance_kit() {
    for stream in ["contacts", "deals"] {
        conformance("hubspot", stream).await;
    }
}

#[tokio::test]
async fn reads_every_record_once_through_errors_throttling_and_broken_bodies() {
    for name in crate::builtin_names() {
        let vendor = crate::builtin(name).unwrap();
        // The first stream that is not a parent: the simulator seeds parents (Mailchimp's
        // lists) with three records, too few pages for faults to hit.
        let streams = &vendor.spec.spec.streams;
        let at = streams
            .iter()
            .position(|s| {
                !streams
                    .iter()
                    .any(|c| c.parent.as_ref().is_some_and(|p| p.stream == s.name))
            })
            .unwrap_or(0);
        let stream = streams[at].name.clone();
        let schema = vendor.schemas[at].clone();
        let sandbox = start(vendor, 150).await;
        sandbox.kit().set_faults(Faults {
            error_rate: 0.15,
            throttle_rate: 0.1,
            truncate_rate: 0.1,
            malformed_rate: 0.1,
            ..Faults::default()
        });
        let source = source(name, &sandbox, serde_json::json!({"page_size": 20}));
        let log = read_all(source.as_ref(), &schema, None, false)
            .await
            .unwrap();
        assert!(
            log.duplicates().is_empty(),
            "{name}: {:?}",
            log.duplicates()
        );
        assert_eq!(
            log.ids(),
            sandbox.ids(&stream).into_iter().collect(),
            "{name}"
        );
        assert!(sandbox.kit().counters().faults_injected > 0, "{name}");
    }
}

#[tokio::test]
async fn a_repeated_token_stops_the_walk_and_a_wrong_key_is_an_auth_error() {
    let vendor = crate::builtin("chargebee").unwrap();
    let schema = vendor.schemas[0].clone();
    let sandbox = start(vendor, 50).await;
    sandbox.kit().set_faults(Faults {
        repeat_cursor: true,
        ..Faults::default()
    });
    let src = source("chargebee", &sandbox, serde_json::json!({"page_size": 10}));
    let (pages, err) = read_until_error(
        src.as_ref(),
        ReadRequest {
            schema,
            cursor: None,
            full_refresh: false,
        },
    )
    .await;
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert_eq!(
        pages.len(),
        1,
        "the page leading back to itself does not land"
    );

    let src = source(
        "chargebee",
        &sandbox,
        serde_json::json!({"api_key": "cb_wrong_key_123"}),
    );
    let err = src.check().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("cb_wrong_key_123"), "{err}");
}

/// A spec of the test's own: OAuth 2 client credentials, and one stream per pagination
/// style; each stream reads every record once.
#[tokio::test]
async fn every_pagination_style_and_oauth_read_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let mut spec = String::from(
        r#"
vendor = "Styles"
base_url = "https://api.styles.example/v1"
[config]
client_id = {}
client_secret = { secret = true }
[auth]
type = "oauth2"
grant = "client_credentials"
token_url = "/oauth/token"
client_id = "{{ config.client_id }}"
client_secret = "{{ config.client_secret }}"
"#,
    );
    let styles = [
        (
            "by_token",
            r#"pagination = { type = "cursor", token_path = "meta.next", param = "cursor", has_more_path = "meta.has_more" }"#,
        ),
        (
            "by_url",
            r#"pagination = { type = "next_url", url_path = "links.next" }"#,
        ),
        ("by_link", r#"pagination = { type = "link_header" }"#),
        (
            "by_offset",
            r#"pagination = { type = "offset", param = "offset" }"#,
        ),
        (
            "by_page",
            r#"pagination = { type = "page_number", param = "page" }"#,
        ),
    ];
    for (name, pagination) in styles {
        spec.push_str(&format!(
            "[[streams]]\nname = \"{name}\"\npath = \"/{name}\"\nrecords = \"data.items\"\npage_size_param = \"per_page\"\npage_size = 50\n{pagination}\nincremental = {{ cursor_field = \"modified\", param = \"modified_since\", format = \"rfc3339\" }}\n"
        ));
        std::fs::write(
            schemas.join(format!("{name}.json")),
            format!(r#"{{"name": "{name}", "columns": [{{"name": "id", "type": "string"}}, {{"name": "modified", "type": "timestamp"}}, {{"name": "label", "type": "string"}}]}}"#),
        )
        .unwrap();
    }
    let file = dir.path().join("styles.toml");
    std::fs::write(&file, spec).unwrap();
    let vendor = crate::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
    let sandbox = start(vendor.clone(), 33).await;
    let mut options = options(&sandbox, serde_json::json!({"page_size": 5}));
    options["spec"] = serde_json::json!(file.display().to_string());
    let src = crate::user_factory()
        .build(options, SourceContext::default())
        .unwrap();
    src.check().await.unwrap();
    for schema in &vendor.schemas {
        let log = read_all(src.as_ref(), schema, None, false).await.unwrap();
        assert!(
            log.duplicates().is_empty(),
            "{}: {:?}",
            schema.name,
            log.duplicates()
        );
        assert_eq!(log.ids().len(), 33, "{}", schema.name);
        assert!(log.cursors.len() >= 7, "{}: pages of 5", schema.name);
        // Nothing changed: the next incremental read is empty.
        let idle = read_all(src.as_ref(), schema, log.last_cursor(), false)
            .await
            .unwrap();
        assert!(idle.records.is_empty(), "{}", schema.name);
    }
}

fn parse_error(text: &str) -> crate::SpecError {
    Spec::parse("bad.toml", "bad", text).unwrap_err()
}

const GOOD_HEAD: &str = r#"
vendor = "Bad"
base_url = "https://api.bad.example"
[config]
api_key = { secret = true }
[auth]
type = "bearer"
token = "{{ config.api_key }}"
"#;

#[test]
fn check_spec_names_the_file_the_stream_and_the_key() {
    // An unknown key inside a stream.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/users\"\nrecords = \"data\"\nrecrods_path = \"x\"\n"
    ));
    assert_eq!(e.file, "bad.toml");
    assert_eq!(e.stream.as_deref(), Some("users"), "{e}");
    assert!(e.key.contains("recrods_path"), "{e}");
    assert!(
        e.to_string()
            .contains("bad.toml: stream `users`: key `recrods_path`"),
        "{e}"
    );

    // A bad record path.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/users\"\nrecords = \"data..items\"\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("users"), "records"),
        "{e}"
    );

    // An incremental stream without a "changed since" filter.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/users\"\nrecords = \"data\"\nincremental = {{ cursor_field = \"updated_at\" }}\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("users"), "incremental.param"),
        "{e}"
    );
    assert!(e.message.contains("changed since"), "{e}");

    // A template naming an option the spec does not declare.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/{{{{ config.tenant }}}}/users\"\nrecords = \"data\"\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("users"), "path"),
        "{e}"
    );
    assert!(e.message.contains("tenant"), "{e}");

    // A track mapping whose event names a field without `record.`.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/users\"\nrecords = \"data\"\ntrack = {{ event = \"User {{{{ status }}}}\", timestamp = \"at\" }}\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("users"), "track.event"),
        "{e}"
    );
    assert!(e.message.contains("record.<field>"), "{e}");

    // An unknown key at the top, and an unknown auth type.
    let e = parse_error(&format!(
        "{GOOD_HEAD}base_ulr = \"x\"\n[[streams]]\nname = \"u\"\npath = \"/u\"\nrecords = \"data\"\n"
    ));
    assert!(e.key.contains("base_ulr") && e.stream.is_none(), "{e}");
    let e = parse_error(
        "vendor = \"Bad\"\nbase_url = \"https://a.example\"\n[auth]\ntype = \"kerberos\"\n[[streams]]\nname = \"u\"\npath = \"/u\"\nrecords = \"data\"\n",
    );
    assert!(e.to_string().contains("kerberos"), "{e}");

    // A child stream whose parent is not declared, and one that never names its parent.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"members\"\npath = \"/lists/{{{{ parent.id }}}}/members\"\nrecords = \"members\"\nparent = {{ stream = \"lists\" }}\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("members"), "parent.stream"),
        "{e}"
    );
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"lists\"\npath = \"/lists\"\nrecords = \"lists\"\n[[streams]]\nname = \"members\"\npath = \"/members\"\nrecords = \"members\"\nparent = {{ stream = \"lists\" }}\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("members"), "parent"),
        "{e}"
    );
    // `{{ parent.id }}` without a parent.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"members\"\npath = \"/lists/{{{{ parent.id }}}}/members\"\nrecords = \"members\"\n"
    ));
    assert_eq!(e.key, "path", "{e}");
    // A derived option taken from an option that does not exist.
    let head = GOOD_HEAD.replace(
        "[auth]",
        "dc = { derive = { from = \"key\", after_last = \"-\" } }\n[auth]",
    );
    let e = parse_error(&format!(
        "{head}[[streams]]\nname = \"u\"\npath = \"/u\"\nrecords = \"data\"\n"
    ));
    assert_eq!(e.key, "config.dc.derive.from", "{e}");
    // A header the runtime sets itself.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[headers]\nAuthorization = \"x\"\n[[streams]]\nname = \"u\"\npath = \"/u\"\nrecords = \"data\"\n"
    ));
    assert_eq!(e.key, "headers.Authorization", "{e}");

    // Offset pagination without a page-size parameter.
    let e = parse_error(&format!(
        "{GOOD_HEAD}[[streams]]\nname = \"users\"\npath = \"/users\"\nrecords = \"data\"\npagination = {{ type = \"offset\", param = \"offset\" }}\n"
    ));
    assert_eq!(e.key, "page_size_param", "{e}");
}

#[test]
fn source_options_are_checked_against_the_spec() {
    let factory = crate::factory("chargebee");
    let err = |options: serde_json::Value| {
        factory
            .build(options, SourceContext::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(serde_json::json!({"site": "acme"}));
    assert!(e.contains("`api_key`") && e.contains("required"), "{e}");
    let e = err(serde_json::json!({"site": "acme", "api_key": "k", "api_kye": "x"}));
    assert!(e.contains("`api_kye`") && e.contains("site"), "{e}");
    let e =
        err(serde_json::json!({"site": "acme", "api_key": "k", "api_base": "http://cb.example"}));
    assert!(e.contains("api_base"), "{e}");
}

/// README's complete example is a valid spec.
#[test]
fn the_readme_example_is_a_valid_spec() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("A complete spec")
        .and_then(|i| readme[i..].find("```toml\n").map(|j| i + j + 8))
        .expect("README has the example");
    let end = start + readme[start..].find("```").unwrap();
    let checked =
        Spec::parse("README.md", "billing", &readme[start..end]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.spec.streams[0].name, "customers");
}

/// A stream with a `track` mapping must be an event stream, and its records then go on as
/// `track` calls through the source.
#[test]
fn a_track_mapping_needs_an_event_stream_and_maps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("pings.toml");
    std::fs::write(
        &spec,
        "vendor = \"Pings\"\nbase_url = \"https://pings.example\"\n[config]\napi_key = { secret = true }\n[auth]\ntype = \"bearer\"\ntoken = \"{{ config.api_key }}\"\n[[streams]]\nname = \"pings\"\npath = \"/pings\"\nrecords = \"data\"\ntrack = { event = \"Ping {{ record.kind }}\", user_id = \"user\", timestamp = \"at\" }\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    let schema = |kind: &str| {
        format!(
            r#"{{"name": "pings", "kind": "{kind}", "primary_key": "id", "columns": [{{"name": "id", "type": "string"}}, {{"name": "kind", "type": "string"}}, {{"name": "at", "type": "timestamp"}}]}}"#
        )
    };
    std::fs::write(dir.path().join("schemas/pings.json"), schema("objects")).unwrap();
    let e = crate::load_file(&spec).err().unwrap();
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("pings"), "track"),
        "{e}"
    );
    assert!(e.message.contains("events"), "{e}");

    std::fs::write(dir.path().join("schemas/pings.json"), schema("events")).unwrap();
    crate::load_file(&spec).unwrap();
    let source = crate::user_factory()
        .build(
            serde_json::json!({"spec": spec.to_string_lossy(), "api_key": "k"}),
            SourceContext::default(),
        )
        .unwrap();
    let record = serde_json::json!({"id": "p1", "kind": "sent", "user": "u-9", "at": "2024-05-01T12:00:00Z"});
    let messages = source.messages("pings", "pings", &record);
    assert_eq!(messages.len(), 1);
    let wire = messages[0].to_json();
    assert_eq!(wire["type"], "track");
    assert_eq!(wire["event"], "Ping sent");
    assert_eq!(wire["userId"], "u-9");
    assert_eq!(wire["properties"]["kind"], "sent");
    assert!(
        wire["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2024-05-01T12:00:00")
    );
}

/// SendGrid's simulator with `records` per stream, and the schema of its `contacts`.
async fn sendgrid_contacts(records: usize) -> (DeclarativeSandbox, tributary_sdk::StreamSchema) {
    let vendor = crate::builtin("sendgrid").unwrap();
    let schema = vendor
        .schemas
        .iter()
        .find(|s| s.name == "contacts")
        .unwrap()
        .clone();
    (start(vendor, records).await, schema)
}

/// SendGrid's contacts, read by an export job: every contact once across the job's files,
/// no credentials sent with the downloads (the simulator refuses them, as S3 does), a read
/// resumed from the middle continues in the same job, and one whose job is gone starts a
/// new export that starts the snapshot over.
#[tokio::test]
async fn an_export_stream_reads_every_file_once_and_resumes_in_its_job() {
    // 250 contacts: three files of at most 100.
    let (sandbox, schema) = sendgrid_contacts(250).await;
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        pending_polls: Some(2),
        ..Default::default()
    });
    let src = source("sendgrid", &sandbox, serde_json::json!({"page_size": 40}));
    let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    let want: std::collections::BTreeSet<String> = sandbox.ids("contacts").into_iter().collect();
    assert_eq!(want.len(), 250);
    assert!(full.duplicates().is_empty(), "{:?}", full.duplicates());
    assert_eq!(full.ids(), want);
    assert!(full.first_page_resets, "an export is a snapshot");
    assert_eq!(sandbox.exports_started(), 1);
    let end = full.last_cursor().unwrap();
    assert!(
        end.get("window").is_none(),
        "done: the next run exports again: {end}"
    );

    // Resume after a page in the second file: the rest of the same job, nothing twice.
    let (done, cursor) = full
        .cursors
        .iter()
        .find(|(n, c)| *n > 100 && c["window"]["next"]["export"]["line"].as_u64() > Some(0))
        .cloned()
        .expect("a cursor inside the second file");
    assert_eq!(cursor["window"]["next"]["export"]["file"], 1, "{cursor}");
    let rest = read_all(src.as_ref(), &schema, Some(cursor.clone()), false)
        .await
        .unwrap();
    assert_eq!(sandbox.exports_started(), 1, "resumed in the same job");
    assert!(!rest.first_page_resets, "the snapshot goes on");
    let before: std::collections::BTreeSet<String> = full.records[..done]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert!(before.is_disjoint(&rest.ids()));
    assert_eq!(
        before
            .union(&rest.ids())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );

    // The vendor lists the job's files in another order now (last first): the rest of
    // the file being read and the file not read yet, nothing read before.
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        reversed: true,
        ..Default::default()
    });
    let reordered = read_all(src.as_ref(), &schema, Some(cursor.clone()), false)
        .await
        .unwrap();
    assert_eq!(sandbox.exports_started(), 1, "resumed in the same job");
    assert!(reordered.duplicates().is_empty());
    assert!(before.is_disjoint(&reordered.ids()), "nothing read twice");
    assert_eq!(
        before
            .union(&reordered.ids())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want,
        "nothing skipped"
    );
    // And from a cursor written before the files read were kept (no `done`): the files
    // listed before the one being read count as read, as they did then.
    let mut old = cursor.clone();
    let export = old["window"]["next"]["export"].as_object_mut().unwrap();
    assert!(export.remove("done").is_some(), "{cursor}");
    assert!(export.remove("files").is_some(), "{cursor}");
    sandbox.set_exports(crate::sandbox::ExportBehaviour::default());
    let from_old = read_all(src.as_ref(), &schema, Some(old), false)
        .await
        .unwrap();
    assert_eq!(from_old.ids(), rest.ids());

    // The job expired: a new export, whose first page starts the snapshot over.
    sandbox.forget_exports();
    let again = read_all(src.as_ref(), &schema, Some(cursor), false)
        .await
        .unwrap();
    assert_eq!(sandbox.exports_started(), 2);
    assert!(again.first_page_resets);
    assert_eq!(again.ids(), want);

    // Plain (not gzip) files read the same.
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        plain: true,
        ..Default::default()
    });
    let plain = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    assert_eq!(plain.ids(), want);

    // A failed job is an error naming the job and the vendor's reason.
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        fail: true,
        ..Default::default()
    });
    let (pages, err) = read_until_error(
        src.as_ref(),
        ReadRequest {
            schema: schema.clone(),
            cursor: None,
            full_refresh: false,
        },
    )
    .await;
    assert!(pages.is_empty());
    let text = err.to_string();
    assert!(
        text.contains("failed: status `failure`: The export could not be completed."),
        "{text}"
    );
}

/// Resumes `cursor` (written after `before` records were handed on) and checks the read
/// goes on in the same job: no reset, nothing of `before` again, nothing twice; returns it.
async fn resume_export(
    sandbox: &DeclarativeSandbox,
    src: &dyn Source,
    schema: &tributary_sdk::StreamSchema,
    cursor: &serde_json::Value,
    before: &std::collections::BTreeSet<String>,
) -> conformance::ReadLog {
    let started = sandbox.exports_started();
    let rest = read_all(src, schema, Some(cursor.clone()), false)
        .await
        .unwrap();
    assert_eq!(
        sandbox.exports_started(),
        started,
        "resumed in the same job: {cursor}"
    );
    assert!(!rest.first_page_resets, "the snapshot goes on: {cursor}");
    assert!(
        rest.duplicates().is_empty(),
        "{cursor}: {:?}",
        rest.duplicates()
    );
    assert!(
        before.is_disjoint(&rest.ids()),
        "nothing read twice: {cursor}"
    );
    rest
}

/// A killed export read resumes from any cursor it wrote (inside a file, at a file's end,
/// at the next one's start, and from a cursor a resumed read wrote), whatever order the
/// vendor lists the files in then: every contact once. A job whose list no longer holds
/// the files the cursor knows, or whose links tell no file apart, is exported anew: a new
/// snapshot, never a finished one with a file left out.
#[tokio::test]
async fn an_export_resumes_from_every_cursor_and_exports_anew_when_its_list_changed() {
    // 250 contacts: files of 100, 100 and 50. Pages of 50 end where files end; pages of
    // 40 run into the next file.
    let (sandbox, schema) = sendgrid_contacts(250).await;
    let want: std::collections::BTreeSet<String> = sandbox.ids("contacts").into_iter().collect();
    let set = |list: &[(String, bool)]| -> std::collections::BTreeSet<String> {
        list.iter().map(|(id, _)| id.clone()).collect()
    };
    for page_size in [50, 40] {
        sandbox.set_exports(crate::sandbox::ExportBehaviour::default());
        let src = source(
            "sendgrid",
            &sandbox,
            serde_json::json!({"page_size": page_size}),
        );
        let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
        assert_eq!(full.ids(), want);
        let kills: Vec<(usize, serde_json::Value)> = full
            .cursors
            .iter()
            .filter(|(_, c)| c.get("window").is_some())
            .cloned()
            .collect();
        assert!(kills.len() >= 5, "{page_size}: {kills:?}");
        let at = |c: &serde_json::Value, key: &str| c["window"]["next"]["export"][key].clone();
        // Cursors at a file's end (pages of 50) and at a file's start (pages of 40).
        assert!(
            kills.iter().any(|(_, c)| at(c, "line") == 100) == (page_size == 50)
                && kills.iter().any(|(_, c)| at(c, "line") == 0) == (page_size == 40),
            "{page_size}: {kills:?}"
        );
        for (n, cursor) in &kills {
            assert_eq!(at(cursor, "files"), 3, "{cursor}");
            let before = set(&full.records[..*n]);
            for reversed in [false, true] {
                sandbox.set_exports(crate::sandbox::ExportBehaviour {
                    reversed,
                    ..Default::default()
                });
                let rest = resume_export(&sandbox, src.as_ref(), &schema, cursor, &before).await;
                assert_eq!(
                    before
                        .union(&rest.ids())
                        .cloned()
                        .collect::<std::collections::BTreeSet<_>>(),
                    want,
                    "nothing skipped: {cursor}, reversed {reversed}"
                );
                // Killed again, in the files listed in the other order now.
                let Some((m, again)) = rest
                    .cursors
                    .iter()
                    .find(|(m, c)| *m > 0 && c.get("window").is_some())
                    .cloned()
                else {
                    continue;
                };
                sandbox.set_exports(crate::sandbox::ExportBehaviour {
                    reversed: !reversed,
                    ..Default::default()
                });
                let mut both = before.clone();
                both.extend(set(&rest.records[..m]));
                let last = resume_export(&sandbox, src.as_ref(), &schema, &again, &both).await;
                both.extend(last.ids());
                assert_eq!(both, want, "nothing skipped: {again} after {cursor}");
            }
        }

        // The job lists a file fewer now (a file dropped, or its list answered in part): a
        // new export, whose first page starts the snapshot over.
        let (_, cursor) = kills
            .iter()
            .find(|(_, c)| at(c, "file") == 1)
            .cloned()
            .unwrap();
        sandbox.set_exports(crate::sandbox::ExportBehaviour {
            listed: Some(2),
            ..Default::default()
        });
        let started = sandbox.exports_started();
        let anew = read_all(src.as_ref(), &schema, Some(cursor), false)
            .await
            .unwrap();
        assert_eq!(sandbox.exports_started(), started + 1, "exported anew");
        assert!(anew.first_page_resets, "a new snapshot");
        assert_eq!(anew.ids().len(), 200, "the two files the new job lists");
        assert!(anew.duplicates().is_empty());
    }

    // Links that differ only in their query: they read whole, but a killed read cannot
    // tell its files apart by name, so it exports anew and reads every contact.
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        query_named: true,
        ..Default::default()
    });
    let src = source("sendgrid", &sandbox, serde_json::json!({"page_size": 40}));
    let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    assert_eq!(full.ids(), want);
    assert!(full.duplicates().is_empty());
    let (_, cursor) = full
        .cursors
        .iter()
        .find(|(n, c)| *n > 100 && c.get("window").is_some())
        .cloned()
        .unwrap();
    let started = sandbox.exports_started();
    let anew = read_all(src.as_ref(), &schema, Some(cursor.clone()), false)
        .await
        .unwrap();
    assert_eq!(
        sandbox.exports_started(),
        started + 1,
        "exported anew: {cursor}"
    );
    assert!(anew.first_page_resets);
    assert_eq!(anew.ids(), want);
    assert!(anew.duplicates().is_empty());
    // No cursor keeps a link's signature.
    for (_, c) in full.cursors.iter().chain(&anew.cursors) {
        assert!(!c.to_string().contains("Signature"), "{c}");
    }
}

/// Faults on every request of an export (errors, 429s, cut and garbled bodies, the files
/// included): every contact still lands once.
#[tokio::test]
async fn an_export_reads_every_record_once_through_faults() {
    let (sandbox, schema) = sendgrid_contacts(230).await;
    sandbox.kit().set_faults(Faults {
        error_rate: 0.2,
        throttle_rate: 0.1,
        truncate_rate: 0.2,
        malformed_rate: 0.1,
        ..Faults::default()
    });
    let src = source("sendgrid", &sandbox, serde_json::json!({}));
    let log = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    assert!(log.duplicates().is_empty());
    assert_eq!(log.ids(), sandbox.ids("contacts").into_iter().collect());
    assert!(sandbox.kit().counters().faults_injected > 0);
}

#[test]
fn an_export_stream_is_checked_like_any_other() {
    let head = format!(
        "check = \"/scopes\"\n{GOOD_HEAD}[[streams]]\nname = \"contacts\"\npath = \"/exports\"\nmethod = \"POST\"\nrecords = \"$\"\n"
    );
    let good = "export = { status_path = \"/exports/{{ export.id }}\", pending = [\"pending\"], ready = [\"ready\"], failed = [\"failure\"], urls = \"urls\" }\n";
    assert!(Spec::parse("x.toml", "x", &format!("{head}{good}")).is_ok());
    let e = parse_error(&format!(
        "{head}export = {{ status_path = \"/exports/status\", pending = [\"p\"], ready = [\"r\"], failed = [\"f\"], urls = \"urls\" }}\n"
    ));
    assert_eq!(
        (e.stream.as_deref(), e.key.as_str()),
        (Some("contacts"), "export.status_path"),
        "{e}"
    );
    assert!(e.message.contains("{{ export.id }}"), "{e}");
    let e = parse_error(&format!(
        "{head}incremental = {{ cursor_field = \"updated_at\", param = \"since\" }}\n{good}"
    ));
    assert_eq!(e.key, "incremental", "{e}");
    let e = parse_error(&format!(
        "{head}export = {{ status_path = \"/exports/{{{{ export.id }}}}\", pending = [], ready = [\"r\"], failed = [\"f\"], urls = \"urls\" }}\n"
    ));
    assert_eq!(e.key, "export.pending", "{e}");
    let e = parse_error(&format!(
        "{head}export = {{ status_path = \"/exports/{{{{ export.id }}}}\", pending = [\"p\"], ready = [\"r\"], failed = [\"f\"], urls = \"urls\", poll = 3 }}\n"
    ));
    assert!(e.key.contains("poll"), "{e}");
    let e = parse_error(&format!(
        "{head}{good}[sandbox.values]\n\"users.kind\" = [\"a\"]\n"
    ));
    assert_eq!(e.key, "sandbox.values.users.kind", "{e}");
    assert!(e.message.contains("no stream `users`"), "{e}");
}

/// Pages that end exactly at a file's end, every cursor of a read resumed from, an empty
/// export, and a resumed job whose links expired while the vendor still lists it.
#[tokio::test]
async fn an_export_resumes_from_every_cursor_and_starts_over_when_its_links_expired() {
    // Two files of 100, pages of 50: every other page ends at a file's end.
    let (sandbox, schema) = sendgrid_contacts(200).await;
    let src = source("sendgrid", &sandbox, serde_json::json!({"page_size": 50}));
    let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    let want: std::collections::BTreeSet<String> = sandbox.ids("contacts").into_iter().collect();
    assert_eq!(full.ids(), want);
    let at_file_end = full
        .cursors
        .iter()
        .filter(|(_, c)| c["window"]["next"]["export"]["line"] == 100)
        .count();
    assert_eq!(at_file_end, 2, "each file's last page: {:?}", full.cursors);
    for (done, cursor) in &full.cursors {
        let rest = read_all(src.as_ref(), &schema, Some(cursor.clone()), false)
            .await
            .unwrap();
        let before: std::collections::BTreeSet<String> = full.records[..*done]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        let union: std::collections::BTreeSet<String> =
            before.union(&rest.ids()).cloned().collect();
        if cursor.get("window").is_some() {
            assert!(before.is_disjoint(&rest.ids()), "re-read after {cursor}");
            assert_eq!(union, want, "resumed after {cursor}");
        } else {
            // The last page's cursor: the next run exports again, from the start.
            assert_eq!(rest.ids(), want);
            assert!(rest.first_page_resets);
        }
    }
    let started = sandbox.exports_started();

    // The job is still listed as ready, its links expired: a new export, over again.
    let (_, middle) = full
        .cursors
        .iter()
        .find(|(n, _)| *n == 50)
        .cloned()
        .unwrap();
    sandbox.expire_export_links();
    let again = read_all(src.as_ref(), &schema, Some(middle), false)
        .await
        .unwrap();
    assert_eq!(sandbox.exports_started(), started + 1);
    assert!(again.first_page_resets, "the snapshot starts over");
    assert_eq!(again.ids(), want);

    // An account without contacts: one empty page that completes the snapshot.
    let (empty, schema) = sendgrid_contacts(0).await;
    let src = source("sendgrid", &empty, serde_json::json!({}));
    let log = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    assert!(log.records.is_empty());
    assert!(
        log.first_page_resets,
        "an empty snapshot still replaces the table"
    );
    assert!(log.last_cursor().unwrap().get("window").is_none());
}

#[test]
fn an_export_spec_names_its_mistakes() {
    let stream = "[[streams]]\nname = \"contacts\"\npath = \"/exports\"\nmethod = \"POST\"\nrecords = \"$\"\n";
    let export = |extra: &str| {
        format!(
            "export = {{ status_path = \"/exports/{{{{ export.id }}}}\", pending = [\"pending\"], ready = [\"ready\"], failed = [\"failure\"{extra}], urls = \"urls\" }}\n"
        )
    };
    // Without `check`, `tributary check` would start an export.
    let e = parse_error(&format!("{GOOD_HEAD}{stream}{}", export("")));
    assert_eq!(e.key, "check", "{e}");
    let head = format!("check = \"/scopes\"\n{GOOD_HEAD}");
    assert!(Spec::parse("x.toml", "x", &format!("{head}{stream}{}", export(""))).is_ok());
    // A status both pending and failed.
    let e = parse_error(&format!("{head}{stream}{}", export(", \"pending\"")));
    assert_eq!(e.key, "export.pending", "{e}");
    // A spec-wide offset pagination does not apply to the export's one request.
    let offset = format!("{head}[pagination]\ntype = \"offset\"\nparam = \"offset\"\n");
    assert!(Spec::parse("x.toml", "x", &format!("{offset}{stream}{}", export(""))).is_ok());
    // Simulated values for the primary key would make records share it.
    let e = parse_error(&format!(
        "{head}{stream}{}[sandbox.values]\n\"contacts.id\" = [\"a\"]\n",
        export("")
    ));
    assert_eq!(e.key, "sandbox.values.contacts.id", "{e}");
}

/// A limit the vendor documents per minute is simulated per minute: Chargebee counts 150
/// requests a minute per test site, so 150 requests at once pass and the 151st is refused.
/// (A one-second window of the same average rate, 2.5/s rounded down to 2, refused the
/// third request of any second, which Chargebee does not.)
/// The same holds for a limit set while the simulator runs (`POST /_sandbox/rate_limit`
/// with `requests_per_second`), which the test of each way sets.
#[tokio::test]
async fn a_limit_per_minute_is_counted_over_the_minute() {
    for at_start in [true, false] {
        let vendor = crate::builtin("chargebee").unwrap();
        let sandbox = DeclarativeSandbox::start(
            vendor,
            SandboxConfig {
                records: 3,
                rate_limit: at_start.then_some(2.5),
                ..SandboxConfig::default()
            },
            0,
        )
        .await
        .unwrap();
        let lines: toml::Value = toml::from_str(&sandbox.source_lines()).unwrap();
        let key = lines["api_key"].as_str().unwrap().to_owned();
        let base = lines["api_base"].as_str().unwrap().to_owned();
        let client = reqwest::Client::new();
        if !at_start {
            let answer: serde_json::Value = client
                .post(format!("{}/_sandbox/rate_limit", sandbox.url()))
                .json(&serde_json::json!({"requests_per_second": 2.5}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["rate_limit"]["requests"], 150, "{answer}");
            assert_eq!(answer["rate_limit"]["window_seconds"], 60.0, "{answer}");
        }
        let get = || {
            client
                .get(format!("{base}/customers?limit=1"))
                .basic_auth(&key, Some(""))
                .send()
        };
        for i in 0..150 {
            let status = get().await.unwrap().status();
            assert_eq!(
                status, 200,
                "request {i} of the minute's 150 (at start: {at_start})"
            );
        }
        assert_eq!(
            get().await.unwrap().status(),
            429,
            "the 151st in the minute (at start: {at_start})"
        );
        assert_eq!(sandbox.kit().counters().rate_limited, 1);
    }
}

/// A file store that answers each export link with `307 TemporaryRedirect` to where the
/// file lives (S3 does for a bucket in another region): the read follows it, still
/// without credentials (the simulator refuses them at either address), and lands every
/// contact once.
#[tokio::test]
async fn an_export_file_behind_a_redirect_is_followed() {
    let (sandbox, schema) = sendgrid_contacts(150).await;
    sandbox.set_exports(crate::sandbox::ExportBehaviour {
        redirect: true,
        ..Default::default()
    });
    let src = source("sendgrid", &sandbox, serde_json::json!({"page_size": 40}));
    let full = read_all(src.as_ref(), &schema, None, false).await.unwrap();
    let want: std::collections::BTreeSet<String> = sandbox.ids("contacts").into_iter().collect();
    assert_eq!(want.len(), 150);
    assert!(full.duplicates().is_empty(), "{:?}", full.duplicates());
    assert_eq!(full.ids(), want);
}

/// The simulated limit never admits more than the rate, and below one request a minute
/// keeps the per-second form's longer window.
#[test]
fn a_simulated_limit_rounds_down_and_keeps_slow_rates_exact() {
    use crate::sandbox::simulated_limit;
    use std::time::Duration;
    use tributary_sandbox_kit::RateLimit;
    let minute = crate::spec::RateLimitSpec {
        requests_per_minute: Some(150.0),
        ..Default::default()
    };
    let second = crate::spec::RateLimitSpec {
        requests_per_second: Some(100.0),
        ..Default::default()
    };
    let per = |requests, secs| RateLimit {
        requests,
        window: Duration::from_secs(secs),
    };
    assert_eq!(simulated_limit(&minute, 2.5), per(150, 60));
    assert_eq!(simulated_limit(&minute, 2.51), per(150, 60));
    assert_eq!(
        simulated_limit(&minute, 0.001),
        RateLimit::per_second(0.001)
    );
    assert_eq!(simulated_limit(&minute, 0.0), RateLimit::per_second(0.0));
    assert_eq!(simulated_limit(&minute, f64::NAN).requests, 0);
    assert_eq!(simulated_limit(&second, 2.5), RateLimit::per_second(2.5));
}
