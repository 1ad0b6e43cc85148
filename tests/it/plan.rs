//! `plan` checked by the schedulers' own tools: the Airflow DAG file parsed and run by a
//! real Apache Airflow (standalone, SQLite) against the three simulators, every stream
//! landing; the Kubernetes CronJobs validated against the Kubernetes API's JSON schemas
//! (kubernetes-validate). Both tools are installed by scripts/test.sh, which names them in
//! TRIBUTARY_AIRFLOW and TRIBUTARY_KUBERNETES_VALIDATE.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tributary_salesforce::sandbox::{SalesforceSandbox, SandboxConfig as SfConfig};
use tributary_stripe::sandbox::{SandboxConfig as StripeConfig, StripeSandbox};
use tributary_zendesk::sandbox::{SandboxConfig as ZendeskConfig, ZendeskSandbox};

use crate::common::{assert_success, id_counts, read_table};

/// The `airflow` command installed by scripts/test.sh.
fn airflow() -> PathBuf {
    std::env::var("TRIBUTARY_AIRFLOW").map(PathBuf::from).unwrap_or_else(|_| {
        panic!("TRIBUTARY_AIRFLOW is not set: run the suite with scripts/test.sh, which installs Apache Airflow (PyPI)")
    })
}

/// The `kubernetes-validate` command installed by scripts/test.sh.
fn kubernetes_validate() -> PathBuf {
    std::env::var("TRIBUTARY_KUBERNETES_VALIDATE").map(PathBuf::from).unwrap_or_else(|_| {
        panic!("TRIBUTARY_KUBERNETES_VALIDATE is not set: run the suite with scripts/test.sh, which installs kubernetes-validate (PyPI)")
    })
}

/// Runs `command` to completion (at most `limit`), its output.
async fn run(command: &mut tokio::process::Command, limit: Duration) -> Output {
    let what = format!("{command:?}");
    tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} took over {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `tributary --config <config> plan <args>`.
async fn plan(config: &Path, args: &[&str]) -> Output {
    run(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("--config")
            .arg(config)
            .arg("plan")
            .args(args),
        Duration::from_secs(30),
    )
    .await
}

/// The secrets the config refers to, as the Airflow worker's environment holds them.
const SECRETS: [(&str, &str); 4] = [
    ("STRIPE_API_KEY", "sk_test_tributary_sandbox"),
    ("ZENDESK_API_TOKEN", ZendeskSandbox::API_TOKEN),
    (
        "SALESFORCE_CLIENT_SECRET",
        tributary_salesforce::sandbox::CLIENT_SECRET,
    ),
    (
        "SALESFORCE_REFRESH_TOKEN",
        tributary_salesforce::sandbox::REFRESH_TOKEN,
    ),
];

/// An Airflow home on SQLite with its DAG folder.
struct Airflow {
    home: PathBuf,
    dags: PathBuf,
}

impl Airflow {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(airflow());
        c.args(args);
        self.environment(c)
    }

    /// `sh -c script` in this Airflow's environment.
    fn shell(&self, script: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(script);
        self.environment(c)
    }

    fn environment(&self, mut c: tokio::process::Command) -> tokio::process::Command {
        c.env("AIRFLOW_HOME", &self.home)
            .env(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                format!("sqlite:///{}", self.home.join("airflow.db").display()),
            )
            .env("AIRFLOW__CORE__DAGS_FOLDER", &self.dags)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__UNIT_TEST_MODE", "False");
        for (name, _) in SECRETS {
            c.env_remove(name);
        }
        c
    }

    /// Runs `airflow <args>`, which must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = run(&mut self.command(args), Duration::from_secs(240)).await;
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `airflow dags test <dag>` with the secrets in the environment its tasks inherit.
    async fn dags_test(&self, dag: &str) {
        let mut c = self.command(&["dags", "test", dag]);
        c.envs(SECRETS);
        let out = run(&mut c, Duration::from_secs(240)).await;
        assert_success(&out);
    }

    /// What Airflow recorded, read from its database: `dag_id task_id state` per task
    /// instance and `dag_id state` per DAG run, sorted.
    async fn recorded(&self) -> (Vec<String>, Vec<String>) {
        let python = airflow().with_file_name("python");
        let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for row in db.execute("select dag_id, task_id, state from task_instance order by 1, 2, 3"):
    print("TI", *row)
for row in db.execute("select dag_id, state from dag_run order by 1, 2"):
    print("RUN", *row)
"#;
        let out = run(
            tokio::process::Command::new(python)
                .arg("-c")
                .arg(script)
                .arg(self.home.join("airflow.db")),
            Duration::from_secs(30),
        )
        .await;
        assert_success(&out);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pick = |prefix: &str| {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        (pick("TI "), pick("RUN "))
    }
}

/// The planned units of the config: (source, stream) for every task.
const STRIPE_STREAMS: [&str; 3] = ["charges", "customers", "events"];
const SALESFORCE_STREAMS: [&str; 3] = ["account", "invoice__c", "opportunity"];

#[tokio::test(flavor = "multi_thread")]
async fn airflow_parses_and_runs_the_planned_dags_and_every_stream_lands() {
    let started = std::time::Instant::now();
    let stripe = StripeSandbox::start(
        StripeConfig {
            records: 20,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("stripe sandbox");
    let zendesk = ZendeskSandbox::start(
        ZendeskConfig {
            records: 20,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("zendesk sandbox");
    let salesforce = SalesforceSandbox::start(
        SfConfig {
            records: 20,
            ..Default::default()
        },
        0,
    )
    .await
    .expect("salesforce sandbox");
    let dir = tempfile::tempdir().expect("temp dir");
    // The binary and the config where a path needs quoting in a shell command.
    let odd = dir.path().join("it's a \"dir\"");
    std::fs::create_dir_all(&odd).unwrap();
    let binary = odd.join("tributary");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tributary"), &binary).unwrap();
    let warehouse = dir.path().join("warehouse");
    let config = odd.join("tributary.toml");
    std::fs::write(
        &config,
        format!(
            r#"[warehouse]
url = {warehouse:?}

[sources.stripe]
type = "stripe"
schedule = "*/30 * * * *"
streams = ["events", "customers", "charges"]
api_key = "${{STRIPE_API_KEY}}"
api_base = "{stripe}"
requests_per_second = 500

[sources.zendesk]
type = "zendesk"
subdomain = "{subdomain}"
email = "{email}"
api_token = "${{ZENDESK_API_TOKEN}}"
api_base = "{zendesk}"
requests_per_minute = 12000
export_requests_per_minute = 6000

[sources.salesforce]
type = "salesforce"
schedule = "0 */6 * * *"
login_url = "{salesforce}"
client_id = "{client_id}"
client_secret = "${{SALESFORCE_CLIENT_SECRET}}"
refresh_token = "${{SALESFORCE_REFRESH_TOKEN}}"
objects = ["Account", "Opportunity", "Invoice__c"]
bulk_poll_ms = 20
requests_per_second = 500
# Stops starting objects once 1% of the org's daily API requests are used: the simulator's
# limit is lowered below to make a run defer.
api_budget_percent = 1
"#,
            warehouse = warehouse.display().to_string(),
            stripe = stripe.url(),
            subdomain = ZendeskSandbox::SUBDOMAIN,
            email = ZendeskSandbox::EMAIL,
            zendesk = zendesk.url(),
            salesforce = salesforce.url(),
            client_id = tributary_salesforce::sandbox::CLIENT_ID,
        ),
    )
    .unwrap();

    let af = Airflow {
        home: dir.path().join("airflow"),
        dags: dir.path().join("dags"),
    };
    std::fs::create_dir_all(&af.home).unwrap();
    std::fs::create_dir_all(&af.dags).unwrap();
    let dag_file = af.dags.join("tributary.py");
    let out = plan(
        &config,
        &[
            "--format",
            "airflow",
            "--per",
            "stream",
            "--binary",
            &binary.display().to_string(),
            // A failed task is retried at once: the test fails in seconds, not minutes.
            "--retry-delay-minutes",
            "0",
            "--out",
            &dag_file.display().to_string(),
        ],
    )
    .await;
    assert_success(&out);
    let dag_text = std::fs::read_to_string(&dag_file).expect("the DAG file");
    assert!(!dag_text.contains("sk_test"), "no secret in the DAG file");
    let zendesk_streams: Vec<String> = tributary_zendesk::streams::schemas()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();

    af.ok(&["db", "migrate"]).await;
    // Airflow parses the file: no import error, one DAG per source.
    let errors = af
        .ok(&["dags", "list-import-errors", "--local", "-o", "json"])
        .await;
    // The JSON is the last line (Python warnings may come before it).
    assert_eq!(
        errors.trim().lines().last(),
        Some("[]"),
        "import errors: {errors}"
    );
    let dags = af.ok(&["dags", "list", "--local", "-o", "json"]).await;
    for dag in [
        "tributary_salesforce",
        "tributary_stripe",
        "tributary_zendesk",
    ] {
        assert!(dags.contains(&format!("\"{dag}\"")), "{dag} in {dags}");
    }
    // The pools, created as the DAG file says to.
    let pool_commands: Vec<&str> = dag_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("airflow pools set "))
        .collect();
    assert_eq!(pool_commands.len(), 3, "{dag_text}");
    for args in pool_commands {
        let quoted = format!(
            "'{}'",
            airflow().display().to_string().replace('\'', r"'\''")
        );
        let out = run(
            &mut af.shell(&format!("{quoted} pools set {args}")),
            Duration::from_secs(60),
        )
        .await;
        assert_success(&out);
    }
    let pools = af.ok(&["pools", "list", "-o", "plain"]).await;
    assert!(pools.contains("tributary_stripe"), "{pools}");
    let parsed = started.elapsed();

    for dag in [
        "tributary_stripe",
        "tributary_zendesk",
        "tributary_salesforce",
    ] {
        af.dags_test(dag).await;
    }

    // Airflow ran every planned task, and each succeeded.
    let (tasks, runs) = af.recorded().await;
    let mut expected: Vec<String> = Vec::new();
    expected.extend(
        SALESFORCE_STREAMS
            .iter()
            .map(|s| format!("tributary_salesforce {s} success")),
    );
    expected.extend(
        STRIPE_STREAMS
            .iter()
            .map(|s| format!("tributary_stripe {s} success")),
    );
    let mut sorted = zendesk_streams.clone();
    sorted.sort();
    expected.extend(
        sorted
            .iter()
            .map(|s| format!("tributary_zendesk {s} success")),
    );
    assert_eq!(tasks, expected);
    assert_eq!(
        runs,
        [
            "tributary_salesforce success",
            "tributary_stripe success",
            "tributary_zendesk success"
        ]
    );

    // Every stream landed: a table per task, with the simulators' objects exactly once
    // where the simulators list them.
    for (source, streams) in [
        ("stripe", STRIPE_STREAMS.map(str::to_owned).to_vec()),
        ("zendesk", zendesk_streams.clone()),
        ("salesforce", SALESFORCE_STREAMS.map(str::to_owned).to_vec()),
    ] {
        for stream in streams {
            let table = warehouse.join(source).join(&stream);
            assert!(
                table.join("_delta_log").is_dir(),
                "{source}.{stream} landed a table"
            );
        }
    }
    for (source, stream, mut want) in [
        ("stripe", "customers", stripe.ids("customers")),
        ("stripe", "charges", stripe.ids("charges")),
        ("zendesk", "tickets", zendesk.ids("tickets")),
        ("salesforce", "account", salesforce.ids("Account")),
    ] {
        let counts = id_counts(&read_table(&warehouse.join(source).join(stream)).await);
        let mut got: Vec<String> = counts.keys().cloned().collect();
        got.sort();
        want.sort();
        assert!(
            !want.is_empty(),
            "{source}.{stream}: the simulator has objects"
        );
        assert_eq!(got, want, "{source}.{stream}: every object landed");
        assert!(counts.values().all(|&n| n == 1), "{source}.{stream}: once");
    }

    // Over `api_budget_percent` of Salesforce's daily API requests (but under the limit):
    // `sync` defers (exit code 3), the tasks end as skipped, not failed, and the run
    // succeeds.
    let (used, _) = salesforce.api_usage();
    salesforce.set_daily_api_limit(used + 50);
    af.dags_test("tributary_salesforce").await;
    let (tasks, runs) = af.recorded().await;
    for stream in SALESFORCE_STREAMS {
        assert!(
            tasks.contains(&format!("tributary_salesforce {stream} skipped")),
            "{stream} skipped: {tasks:?}"
        );
    }
    assert_eq!(
        runs.iter()
            .filter(|r| *r == "tributary_salesforce success")
            .count(),
        2,
        "{runs:?}"
    );
    eprintln!(
        "Airflow: parsed and pools set in {parsed:?}; everything in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn k8s_cronjobs_pass_the_kubernetes_api_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The example config plans as is: no secret needs to be set.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    for per in ["source", "stream"] {
        let file = dir.path().join(format!("cronjobs-{per}.yaml"));
        let out = plan(
            &example,
            &[
                "--format",
                "k8s",
                "--per",
                per,
                "--image",
                "registry.example/tributary:1.0",
                "--out",
                &file.display().to_string(),
            ],
        )
        .await;
        assert_success(&out);
        let text = std::fs::read_to_string(&file).unwrap();
        let documents = text.matches("\n---\n").count() + usize::from(text.starts_with("---\n"));
        assert!(documents >= 3, "{text}");
        // timeZone is stable from Kubernetes 1.27; the validator's newest schemas too.
        for version in ["1.27.0", "1.37.0"] {
            let out = run(
                tokio::process::Command::new(kubernetes_validate())
                    .args(["--strict", "-k", version])
                    .arg(&file),
                Duration::from_secs(120),
            )
            .await;
            assert_success(&out);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                stdout.matches(" passed for resource cronjob/").count(),
                documents,
                "every CronJob validated against {version}:\n{stdout}"
            );
            assert!(!stdout.contains("ERROR"), "{stdout}");
        }
    }
    // The validator is not a rubber stamp: a misspelt field fails it.
    let bad = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(dir.path().join("cronjobs-source.yaml")).unwrap();
    std::fs::write(&bad, good.replacen("backoffLimit:", "backofLimit:", 1)).unwrap();
    let out = run(
        tokio::process::Command::new(kubernetes_validate())
            .arg("--strict")
            .arg(&bad),
        Duration::from_secs(120),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("backofLimit") && stdout.contains("ERROR"),
        "{stdout}"
    );
}
