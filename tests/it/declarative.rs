//! Declarative vendors, end to end: the binary syncs a spec-built vendor's simulator
//! (full, then incremental after creates, updates and deletes), a user's own spec file from
//! the config (`type = "declarative"`), and `connector check-spec` on good and bad specs.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tributary_declarative::sandbox::{DeclarativeSandbox, SandboxConfig};

use crate::common::{Env, Vendor, assert_success, id_counts, read_table, strings};

macro_rules! spec_vendor {
    ($ty:ident, $name:literal) => {
        pub struct $ty;
        impl Vendor for $ty {
            type Sandbox = DeclarativeSandbox;
            const NAME: &'static str = $name;
            fn source_lines(sandbox: &DeclarativeSandbox) -> String {
                format!(
                    "{}requests_per_second = 1000\npage_size = 25\n",
                    sandbox.source_lines()
                )
            }
        }
    };
}

spec_vendor!(Chargebee, "chargebee");
spec_vendor!(HubSpot, "hubspot");
spec_vendor!(Intercom, "intercom");
spec_vendor!(Mailchimp, "mailchimp");
spec_vendor!(SendGrid, "sendgrid");
spec_vendor!(Twilio, "twilio");

async fn env<V: Vendor<Sandbox = DeclarativeSandbox>>(records: usize) -> Env<V> {
    let vendor = tributary_declarative::builtin(V::NAME).expect("built-in spec");
    let sandbox = DeclarativeSandbox::start(
        vendor,
        SandboxConfig {
            records,
            ..SandboxConfig::default()
        },
        0,
    )
    .await
    .expect("simulator starts");
    Env::with_sandbox(sandbox, "", "")
}

/// The primary key column of `stream` of vendor `V` (`id`, Twilio's `sid`, ...).
fn key_of<V: Vendor<Sandbox = DeclarativeSandbox>>(stream: &str) -> String {
    let vendor = tributary_declarative::builtin(V::NAME).expect("built-in spec");
    vendor
        .schemas
        .iter()
        .find(|s| s.name == stream)
        .map(|s| s.primary_key.clone())
        .unwrap_or_else(|| "id".into())
}

/// How many rows each key has.
fn key_counts(batches: &[arrow::record_batch::RecordBatch], key: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in strings(batches, key) {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// The value of `column` in the latest row of each key.
fn latest_by(
    batches: &[arrow::record_batch::RecordBatch],
    key: &str,
    column: &str,
) -> HashMap<String, String> {
    let keys = strings(batches, key);
    let values = strings(batches, column);
    let received = strings(batches, "received_at");
    let mut best: HashMap<String, (String, String)> = HashMap::new();
    for ((k, v), r) in keys.into_iter().zip(values).zip(received) {
        match best.get(&k) {
            Some((br, _)) if *br > r => {}
            _ => {
                best.insert(k, (r, v));
            }
        }
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Asserts the table of `stream` holds exactly the simulator's live ids, each once.
async fn assert_table_is<V: Vendor<Sandbox = DeclarativeSandbox>>(env: &Env<V>, stream: &str) {
    let counts = key_counts(&read_table(&env.table(stream)).await, &key_of::<V>(stream));
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    let live: BTreeSet<String> = env.sandbox.ids(stream).into_iter().collect();
    assert!(live.is_subset(&got), "{stream}: every live record lands");
    assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
}

/// A full sync lands every stream; then, after a create, an update and (where the vendor
/// keeps tombstones, `deletes`) a delete in `stream`, an incremental sync lands exactly
/// those, once.
async fn full_then_incremental<V: Vendor<Sandbox = DeclarativeSandbox>>(stream: &str) {
    sync_then_changes::<V>(stream, true).await
}

async fn sync_then_changes<V: Vendor<Sandbox = DeclarativeSandbox>>(stream: &str, deletes: bool) {
    let env: Env<V> = env(70).await;
    let vendor = tributary_declarative::builtin(V::NAME).unwrap();
    let streams: Vec<String> = vendor
        .spec
        .spec
        .streams
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("0 failed"), "{summary}");
    for s in &streams {
        assert_table_is(&env, s).await;
    }

    let ids = env.sandbox.ids(stream);
    let created = env.sandbox.create(stream);
    assert!(
        env.sandbox
            .update(stream, &ids[0], "note", serde_json::json!("changed"))
    );
    if deletes {
        assert!(env.sandbox.delete(stream, &ids[1]));
    }
    env.sandbox.kit().clock.advance(Duration::from_secs(2));
    let requests_before = env.sandbox.kit().counters().requests;
    env.sync_ok(&[]).await;
    let batches = read_table(&env.table(stream)).await;
    let key = key_of::<V>(stream);
    let counts = key_counts(&batches, &key);
    assert_eq!(counts.len(), 71, "{stream}: the new record landed once");
    assert!(counts.values().all(|&n| n == 1), "{stream}: exactly once");
    assert!(counts.contains_key(&created));
    assert_eq!(latest_by(&batches, &key, "note")[&ids[0]], "changed");
    let deleted = latest_by(&batches, &key, "is_deleted");
    if deletes {
        assert_eq!(
            deleted[&ids[1]], "true",
            "{stream}: the deleted record is flagged"
        );
    }
    assert_eq!(deleted[&ids[0]], "false");
    // Incremental: a few pages per stream, not the whole account again.
    let requests = env.sandbox.kit().counters().requests - requests_before;
    assert!(
        requests < 40,
        "{stream}: {requests} requests for three changes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chargebee_full_then_incremental_sync_lands_every_change_once() {
    full_then_incremental::<Chargebee>("customers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hubspot_full_then_incremental_sync_lands_every_change_once() {
    full_then_incremental::<HubSpot>("contacts").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn intercom_full_then_incremental_sync_lands_every_change_once() {
    sync_then_changes::<Intercom>("contacts", false).await;
}

/// List members are read list by list (a parent→child stream), archived members flagged.
#[tokio::test(flavor = "multi_thread")]
async fn mailchimp_full_then_incremental_sync_lands_every_change_once() {
    full_then_incremental::<Mailchimp>("list_members").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twilio_full_then_incremental_sync_lands_every_change_once() {
    sync_then_changes::<Twilio>("messages", false).await;
}

/// Global unsubscribes, read with `start_time`; SendGrid keeps no trace of a removed one.
#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_full_then_incremental_sync_lands_every_change_once() {
    sync_then_changes::<SendGrid>("unsubscribes", false).await;
}

/// SendGrid's marketing contacts come from an export job (start, poll, download the gzip
/// files without the API key): every run is a snapshot that replaces the table, so a
/// deleted contact leaves it and a changed one lands changed, each contact once.
#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_contacts_land_from_an_export_job_and_each_run_replaces_them() {
    // 230 contacts: three export files.
    let env: Env<SendGrid> = env(230).await;
    let summary = env.sync_ok(&[]).await;
    assert!(summary.contains("0 failed"), "{summary}");
    assert_eq!(env.sandbox.exports_started(), 1);
    let ids = env.sandbox.ids("contacts");
    assert_eq!(ids.len(), 230);
    let counts = key_counts(&read_table(&env.table("contacts")).await, "contact_id");
    assert_eq!(counts.len(), 230);
    assert!(counts.values().all(|&n| n == 1), "each contact once");

    assert!(env.sandbox.delete("contacts", &ids[0]));
    assert!(
        env.sandbox
            .update("contacts", &ids[1], "first_name", serde_json::json!("Ada"))
    );
    env.sync_ok(&[]).await;
    assert_eq!(env.sandbox.exports_started(), 2, "a new export each run");
    let batches = read_table(&env.table("contacts")).await;
    let counts = key_counts(&batches, "contact_id");
    assert_eq!(
        counts.len(),
        229,
        "the deleted contact left with the snapshot"
    );
    assert!(!counts.contains_key(&ids[0]));
    assert!(counts.values().all(|&n| n == 1), "each contact once");
    assert_eq!(
        latest_by(&batches, "contact_id", "first_name")[&ids[1]],
        "Ada"
    );
}

/// A user's own spec, selected with `type = "declarative"` and `spec = "<file>"`.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_spec_file_syncs_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = dir.path().join("billing.toml");
    let text = std::fs::read_to_string(root.join("connectors/declarative/specs/chargebee.toml"))
        .unwrap()
        .replace("schemas = \"../../../schemas/chargebee\"", "");
    std::fs::write(&spec, text).unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    for s in ["customers", "subscriptions", "invoices", "events"] {
        std::fs::copy(
            root.join(format!("schemas/chargebee/{s}.json")),
            dir.path().join(format!("schemas/{s}.json")),
        )
        .unwrap();
    }
    let vendor = tributary_declarative::load_file(&spec).unwrap();
    let sandbox = DeclarativeSandbox::start(vendor, SandboxConfig::default(), 0)
        .await
        .unwrap();
    let warehouse = dir.path().join("warehouse");
    let config = dir.path().join("tributary.toml");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nurl = {:?}\n\n[sources.billing]\ntype = \"declarative\"\nspec = {:?}\n{}requests_per_second = 1000\n",
            warehouse.display().to_string(),
            spec.display().to_string(),
            sandbox.source_lines()
        ),
    )
    .unwrap();
    let out = crate::common::run_binary(&config, &["sync"]).await;
    assert_success(&out);
    let counts = id_counts(&read_table(&warehouse.join("billing/customers")).await);
    assert_eq!(counts.len(), sandbox.ids("customers").len());

    // A mistake in the spec stops the command, naming the file, the stream and the key.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("records = \"list[*].invoice\"", "record = \"list\""),
    )
    .unwrap();
    let out = crate::common::run_binary(&config, &["sync"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("billing.toml"), "{stderr}");
    assert!(
        stderr.contains("stream `invoices`") && stderr.contains("`record`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_spec_accepts_the_builtin_specs_and_names_a_mistake() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |file: std::path::PathBuf| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["connector", "check-spec"])
            .arg(file)
            .output()
            .await
            .unwrap()
    };
    let spec = root.join("connectors/declarative/specs/hubspot.toml");
    let out = run(spec.clone()).await;
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("HubSpot (5 streams): OK"), "{stdout}");
    assert!(stdout.contains("contacts") && stdout.contains("incremental on `updatedAt`"));

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&spec).unwrap();
    let bad = text.replacen(
        "incremental = { cursor_field = \"updatedAt\", field_format = \"rfc3339\", format = \"unix_ms\" }",
        "incremental = { cursor_field = \"updatedAt\", field_format = \"rfc3339\", formt = \"unix_ms\" }",
        1,
    );
    let spec = dir.path().join("hubspot.toml");
    std::fs::write(&spec, bad).unwrap();
    let out = run(spec.clone()).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hubspot.toml") && stderr.contains("stream `contacts`"),
        "{stderr}"
    );
    assert!(stderr.contains("formt"), "{stderr}");

    // A bad record path, and an incremental stream without a "changed since" filter: each
    // named by file, stream and key.
    let chargebee = root.join("connectors/declarative/specs/chargebee.toml");
    let text = std::fs::read_to_string(&chargebee).unwrap();
    let cases = [
        (
            text.replace(
                "records = \"list[*].invoice\"",
                "records = \"list[*]..invoice\"",
            ),
            "stream `invoices`: key `records`",
        ),
        (
            text.replacen(
                "incremental = { cursor_field = \"updated_at\", param = \"updated_at[after]\",",
                "incremental = { cursor_field = \"updated_at\",",
                1,
            ),
            "stream `customers`: key `incremental.param`",
        ),
    ];
    for (bad, want) in cases {
        let spec = dir.path().join("billing.toml");
        std::fs::write(&spec, bad).unwrap();
        let out = run(spec.clone()).await;
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("billing.toml: {want}")),
            "{want}: {stderr}"
        );
    }
}
