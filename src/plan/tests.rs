//! The renderers' structure, the schedules' meaning, the quoting of names and paths, and
//! the errors. The real Airflow and the Kubernetes schemas check the output in
//! `tests/it/plan.rs`.

use std::path::Path;
use std::process::Command;

use clap::Parser;

use super::*;

const CONFIG: &str = r#"
[warehouse]
url = "s3://bucket/raw"
[warehouse.options]
aws_access_key_id = "${AWS_ACCESS_KEY_ID}"
aws_secret_access_key = "${AWS_SECRET_ACCESS_KEY}"
aws_region = "${AWS_REGION:-us-east-1}"

[sync]
concurrency = 3

[sources.stripe]
type = "stripe"
schedule = "*/15 * * * *"
streams = ["events", "charges", "customers"]
api_key = "${STRIPE_API_KEY}"
api_base = "http://127.0.0.1:12111"

[sources.zendesk]
type = "zendesk"
subdomain = "acme"
email = "admin@acme.example"
api_token = "${ZENDESK_API_TOKEN}"

[sources.salesforce]
type = "salesforce"
schedule = "0 0 */6 * * *"
login_url = "https://login.salesforce.com"
client_id = "app"
client_secret = "sk_live_literal_secret_in_the_file"
refresh_token = "${file:/run/secrets/sf-refresh}"
objects = ["Account", "OpportunityHistory", "Invoice__c"]
"#;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    plan: PlanArgs,
}

/// The plan args as the command line would give them.
fn args(line: &[&str]) -> PlanArgs {
    let mut argv = vec!["plan"];
    argv.extend_from_slice(line);
    Cli::try_parse_from(argv).expect("arguments parse").plan
}

fn plan(per: Per) -> Plan {
    build(CONFIG, Path::new("t.toml"), per, None).expect("the config plans")
}

fn render_with(plan: &Plan, line: &[&str]) -> String {
    let args = args(line);
    let target = Target {
        binary: args
            .binary
            .clone()
            .unwrap_or_else(|| "/usr/local/bin/tributary".into()),
        config: args
            .config_path_in_plan
            .clone()
            .unwrap_or_else(|| "/etc/tributary/tributary.toml".into()),
        args,
    };
    render(plan, &target).expect("renders")
}

fn err(text: &str, per: Per, only: Option<&str>) -> String {
    format!(
        "{:#}",
        build(text, Path::new("t.toml"), per, only).unwrap_err()
    )
}

fn standard(text: &str) -> Result<String, String> {
    standard_cron(&Schedule::parse(text).expect("schedule parses"))
}

/// Whether standard-cron `expr` (5 fields, Sunday 0) fires at `t`: a reading of crontab(5)
/// written independently of the renderer.
fn fires(expr: &str, t: chrono::DateTime<chrono::Utc>) -> bool {
    use chrono::{Datelike, Timelike};
    let fields: Vec<&str> = expr.split(' ').collect();
    assert_eq!(fields.len(), 5, "{expr}");
    let matches = |field: &str, value: u32, min: u32, max: u32| {
        field.split(',').any(|part| {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, s.parse::<u32>().unwrap()),
                None => (part, 1),
            };
            let (lo, hi) = match range {
                "*" => (min, max),
                r => match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None if part.contains('/') => (r.parse().unwrap(), max),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                },
            };
            value >= lo && value <= hi && (value - lo).is_multiple_of(step)
        })
    };
    let dom_restricted = fields[2] != "*";
    let dow_restricted = fields[4] != "*";
    let dom = matches(fields[2], t.day(), 1, 31);
    let dow = matches(fields[4], t.weekday().num_days_from_sunday(), 0, 6);
    let day = match (dom_restricted, dow_restricted) {
        (true, true) => dom || dow,
        _ => dom && dow,
    };
    matches(fields[0], t.minute(), 0, 59)
        && matches(fields[1], t.hour(), 0, 23)
        && matches(fields[3], t.month(), 1, 12)
        && day
}

#[test]
fn schedules_become_standard_cron_that_fires_when_run_does() {
    for (written, expected) in [
        ("*/15 * * * *", "*/15 * * * *"),
        ("0 */3 * * *", "0 */3 * * *"),
        ("*/30 * * * *", "*/30 * * * *"),
        ("0 6,18 * * *", "0 6,18 * * *"),
        ("5,10 * * * *", "5,10 * * * *"),
        ("30 */3 * * *", "30 */3 * * *"),
        ("0 0 */6 * * *", "0 */6 * * *"),
        ("5-59/15 9-17 * * *", "5-59/15 9-17 * * *"),
        ("0,30 6,18 1 * *", "*/30 6,18 1 * *"),
        ("0 4 * JAN,JUL *", "0 4 * */6 *"),
        // Five fields are standard cron, Sunday 0 (or 7), as `run` reads them.
        ("0 9 * * 1-5", "0 9 * * 1-5"),
        ("0 9 * * MON-FRI", "0 9 * * 1-5"),
        ("0 9 * * SUN", "0 9 * * 0"),
        ("0 9 * * 7", "0 9 * * 0"),
        ("0 9 * * 5-7", "0 9 * * 0,5,6"),
        ("0 9 * * 0-6", "0 9 * * *"),
        ("0 9 * * */2", "0 9 * * */2"),
        // Six fields are the `cron` crate's own, Sunday 1.
        ("0 0 9 * * 2-6", "0 9 * * 1-5"),
    ] {
        let cron = standard(written).unwrap();
        assert_eq!(cron, expected, "{written}");
        // Minute by minute over five weeks: the standard expression fires exactly when the
        // schedule `run` parsed does.
        let schedule = Schedule::parse(written).unwrap();
        let start = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        for minute in 0..(35 * 24 * 60) {
            let t = start + chrono::Duration::minutes(minute);
            assert_eq!(
                fires(&cron, t),
                schedule.cron.includes(t),
                "{written} -> {cron} at {t}"
            );
        }
    }
}

#[test]
fn schedules_the_targets_cannot_express_are_refused_with_the_reason() {
    let e = standard("30 0 * * * *").unwrap_err();
    assert!(e.contains("seconds other than :00"), "{e}");
    let e = standard("0 0 9 * * * 2030").unwrap_err();
    assert!(e.contains("year"), "{e}");
    let e = standard("0 9 1 * MON").unwrap_err();
    assert!(
        e.contains("both the day of the month and the day of the week"),
        "{e}"
    );
    let e = err(
        "[sources.s]\ntype = \"stripe\"\nschedule = \"30 0 * * * *\"\n",
        Per::Source,
        None,
    );
    assert!(e.contains("`sources.s.schedule`"), "{e}");
}

#[test]
fn units_are_sorted_and_streams_come_from_config_or_the_connector() {
    let p = plan(Per::Stream);
    let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["salesforce", "stripe", "zendesk"]);
    let streams = |name: &str| {
        p.sources
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .streams
            .clone()
    };
    assert_eq!(streams("stripe"), ["charges", "customers", "events"]);
    assert_eq!(
        streams("salesforce"),
        ["account", "invoice__c", "opportunity_history"]
    );
    // Zendesk's streams without asking Zendesk: its fixed list, sorted.
    let zendesk = streams("zendesk");
    assert!(
        zendesk.contains(&"tickets".to_owned()) && zendesk.len() >= 10,
        "{zendesk:?}"
    );
    assert!(zendesk.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(p.units().len(), 3 + 3 + zendesk.len());
    assert!(plan(Per::Source).units().iter().all(|u| u.stream.is_none()));
    let only = build(CONFIG, Path::new("t.toml"), Per::Stream, Some("stripe")).unwrap();
    assert_eq!(only.sources.len(), 1);
}

#[test]
fn each_source_needs_its_own_and_the_warehouses_variables() {
    let p = plan(Per::Source);
    let env = |name: &str| {
        p.sources
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .env
            .iter()
            .map(|v| format!("{}{}", v.name, if v.optional { "?" } else { "" }))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        env("stripe"),
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_REGION?",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_API_KEY"
        ]
    );
    assert!(env("zendesk").contains(&"ZENDESK_API_TOKEN".to_owned()));
    assert!(!env("zendesk").contains(&"STRIPE_API_KEY".to_owned()));
    let sf = p.sources.iter().find(|s| s.name == "salesforce").unwrap();
    assert_eq!(sf.files, ["/run/secrets/sf-refresh"]);
    assert!(!p.local_warehouse);
}

#[test]
fn mistakes_name_what_to_fix() {
    let e = err(CONFIG, Per::Source, Some("strip"));
    assert!(
        e.contains("no source `strip`") && e.contains("salesforce, stripe, zendesk"),
        "{e}"
    );
    let e = err("[sources.s]\ntype = \"nope\"\n", Per::Source, None);
    assert!(
        e.contains("`sources.s.type`") && e.contains("stripe"),
        "{e}"
    );
    let e = err(
        "[sources.s]\ntype = \"stripe\"\napi_key = \"${K}\"\nstreams = [\"charges\", \"chargez\"]\n",
        Per::Stream,
        None,
    );
    assert!(
        e.contains("`sources.s.streams[1]`") && e.contains("customers"),
        "{e}"
    );
    assert!(!e.contains("chargez"), "values are not quoted: {e}");
    // --per stream reads the connector's options (its streams may depend on them): a
    // mistake there is named.
    let e = err(
        "[sources.s]\ntype = \"stripe\"\napi_kee = \"${K}\"\n",
        Per::Stream,
        None,
    );
    assert!(e.contains("`[sources.s]`") && e.contains("api_kee"), "{e}");
    // Salesforce without `objects`: the org decides which default objects exist.
    let e = err(
        "[sources.sf]\ntype = \"salesforce\"\nclient_id = \"${ID}\"\n",
        Per::Stream,
        None,
    );
    assert!(
        e.contains("`sources.sf.streams`") && e.contains("objects") && e.contains("--per source"),
        "{e}"
    );
    // ... with `streams`, it plans.
    build(
        "[sources.sf]\ntype = \"salesforce\"\nclient_id = \"${ID}\"\nstreams = [\"account\"]\n",
        Path::new("t.toml"),
        Per::Stream,
        None,
    )
    .unwrap();
    let e = err("", Per::Source, None);
    assert!(e.contains("no sources configured"), "{e}");
    let e = err(
        "[sources.s]\ntype = \"stripe\"\napi_key = \"${NOT A NAME}\"\n",
        Per::Source,
        None,
    );
    assert!(e.contains("`sources.s.api_key`"), "{e}");
    let e = err("[sources.s\ntype = \"stripe\"\n", Per::Source, None);
    assert!(e.starts_with("t.toml:1:"), "{e}");
}

#[test]
fn an_unknown_format_is_refused_with_the_known_ones() {
    let Err(e) = Cli::try_parse_from(["plan", "--format", "nomad"]) else {
        panic!("nomad is not a format");
    };
    let e = e.to_string();
    assert!(
        e.contains("nomad") && e.contains("airflow") && e.contains("k8s") && e.contains("crontab"),
        "{e}"
    );
}

#[test]
fn output_never_holds_a_secret_and_is_deterministic() {
    // SAFETY: the only test using this variable.
    unsafe { std::env::set_var("STRIPE_API_KEY", "sk_live_from_the_environment") };
    for format in ["airflow", "k8s", "crontab"] {
        for per in ["source", "stream"] {
            let p = plan(if per == "source" {
                Per::Source
            } else {
                Per::Stream
            });
            let out = render_with(&p, &["--format", format, "--per", per]);
            assert!(!out.contains("sk_live"), "{format}/{per}:\n{out}");
            assert!(out.contains("STRIPE_API_KEY"), "{format}/{per}");
            assert_eq!(out, render_with(&p, &["--format", format, "--per", per]));
        }
    }
}

#[test]
fn shell_words_survive_spaces_and_quotes() {
    let words = [
        "/opt/my tools/tributary",
        "it's \"quoted\"",
        "$HOME `x` \\n *",
        "",
        "plain-word_1.toml",
    ];
    let quoted: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    assert_eq!(quoted[4], "plain-word_1.toml");
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("printf '%s\\n' {}", quoted.join(" ")))
        .output()
        .expect("sh runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        words.join("\n") + "\n"
    );
}

/// Python's reading of the DAG file: every BashOperator's arguments, split as the shell
/// splits them, and each DAG's keywords.
fn python_view(dag_file: &str) -> String {
    let script = r#"
import ast, shlex, sys
tree = ast.parse(sys.stdin.read())
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DAG":
        kw = {k.arg: k.value for k in node.keywords}
        print("DAG", ast.literal_eval(kw["dag_id"]), ast.literal_eval(kw["schedule"]))
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BashOperator":
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        command = kw["bash_command"]
        # What Jinja leaves of a raw block (the real Airflow renders it in tests/it/plan.rs).
        if command.startswith("{% raw %}") and command.endswith("{% endraw %}"):
            command = command[len("{% raw %}"):-len("{% endraw %}")]
        print("TASK", kw["task_id"], kw["pool"], kw["skip_on_exit_code"], shlex.split(command))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dag_file.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{dag_file}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn airflow_has_a_dag_per_source_a_task_per_unit_in_the_sources_pool() {
    let p = plan(Per::Stream);
    let out = render_with(
        &p,
        &[
            "--format",
            "airflow",
            "--per",
            "stream",
            "--binary",
            "/opt/it's here/tributary",
            "--config-path-in-plan",
            "/etc/my \"configs\"/{{ ds }}.toml",
        ],
    );
    let view = python_view(&out);
    assert!(view.contains("DAG tributary_stripe */15 * * * *"), "{view}");
    assert!(
        view.contains("DAG tributary_salesforce 0 */6 * * *"),
        "{view}"
    );
    assert!(view.contains("DAG tributary_zendesk 0 */3 * * *"), "{view}");
    let tasks: Vec<&str> = view.lines().filter(|l| l.starts_with("TASK")).collect();
    assert_eq!(tasks.len(), p.units().len());
    // The Jinja-looking path is kept from rendering by {% raw %}; the shell sees the words.
    assert!(
        view.contains(
            "TASK charges tributary_stripe 3 [\"/opt/it's here/tributary\", '--config', '/etc/my \"configs\"/{{ ds }}.toml', 'sync', '--source', 'stripe', '--stream', 'charges']"
        ),
        "{view}"
    );
    assert!(out.contains("\"retries\": 2,") && out.contains("timedelta(minutes=5)"));
    assert!(out.contains("max_active_runs=1") && out.contains("catchup=False"));
    assert!(out.contains("airflow pools set tributary_stripe 1 'Tributary source stripe'"));
    // Plain paths need no raw block.
    let out = render_with(&plan(Per::Source), &["--format", "airflow"]);
    let view = python_view(&out);
    assert!(
        view.contains("TASK sync tributary_stripe 3 ['/usr/local/bin/tributary', '--config', '/etc/tributary/tributary.toml', 'sync', '--source', 'stripe']"),
        "{view}"
    );
    let out = render_with(
        &plan(Per::Source),
        &["--format", "airflow", "--pool-slots", "3", "--retries", "0"],
    );
    assert!(
        out.contains("airflow pools set tributary_zendesk 3 "),
        "{out}"
    );
    assert!(out.contains("\"retries\": 0,"));
}

#[test]
fn k8s_has_a_forbid_cronjob_per_unit_with_the_config_and_its_secrets() {
    let p = plan(Per::Stream);
    let out = render_with(
        &p,
        &[
            "--format",
            "k8s",
            "--per",
            "stream",
            "--binary",
            "tributary",
            "--image",
            "registry.example/tributary:1.2",
            "--secret",
            "vendor-keys",
        ],
    );
    let docs: Vec<&str> = out.split("\n---\n").skip(1).collect();
    assert_eq!(docs.len(), p.units().len(), "{out}");
    let charges = docs
        .iter()
        .find(|d| d.contains("name: \"tributary-stripe-charges\""))
        .expect("the stripe charges CronJob");
    for line in [
        "apiVersion: \"batch/v1\"",
        "kind: \"CronJob\"",
        "  schedule: \"*/15 * * * *\"",
        "  concurrencyPolicy: \"Forbid\"",
        "  timeZone: \"Etc/UTC\"",
        "  startingDeadlineSeconds: 300",
        "      backoffLimit: 2",
        "          restartPolicy: \"Never\"",
        "              image: \"registry.example/tributary:1.2\"",
        "                - \"tributary\"\n                - \"--config\"\n                - \"/etc/tributary/tributary.toml\"\n                - \"sync\"\n                - \"--source\"\n                - \"stripe\"\n                - \"--stream\"\n                - \"charges\"",
        "                - name: \"STRIPE_API_KEY\"\n                  valueFrom:\n                    secretKeyRef:\n                      key: \"STRIPE_API_KEY\"\n                      name: \"vendor-keys\"",
        "                      optional: true",
        "                - mountPath: \"/etc/tributary\"\n                  name: \"config\"\n                  readOnly: true",
        "            - configMap:\n                items:\n                  - key: \"tributary.toml\"\n                    path: \"tributary.toml\"\n                name: \"tributary-config\"",
    ] {
        assert!(charges.contains(line), "{line}\nin\n{charges}");
    }
    assert!(!charges.contains("ZENDESK_API_TOKEN"), "{charges}");
    let invoice = docs
        .iter()
        .find(|d| d.contains("tributary/stream: \"invoice__c\""))
        .expect("the custom object's CronJob");
    assert!(
        invoice.contains("name: \"tributary-salesforce-invoice--c\""),
        "{invoice}"
    );
    assert!(
        out.contains("#     and the file \"/run/secrets/sf-refresh\""),
        "{out}"
    );
}

#[test]
fn k8s_names_fit_52_characters_and_stay_distinct() {
    let long = "a".repeat(60);
    let a = k8s_name(&format!("{long}-x"));
    let b = k8s_name(&format!("{long}-y"));
    assert!(a.len() <= 52 && b.len() <= 52 && a != b, "{a} {b}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
    assert_eq!(k8s_name("stripe_eu-charges"), "tributary-stripe-eu-charges");
    let e = build(
        "[sources.a_b]\ntype = \"stripe\"\n[sources.a-b]\ntype = \"stripe\"\n",
        Path::new("t.toml"),
        Per::Source,
        None,
    )
    .map(|p| {
        let args = args(&["--format", "k8s"]);
        render(
            &p,
            &Target {
                binary: "tributary".into(),
                config: K8S_CONFIG_PATH.into(),
                args,
            },
        )
    })
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(e.contains("`a-b`") && e.contains("`a_b`"), "{e}");
}

/// Runs the CronJob's wrapper around `sh -c inner`; its exit code.
fn wrapped(inner: &str, term_after: Option<std::time::Duration>) -> i32 {
    let mut child = Command::new("/bin/sh")
        .args(["-c", K8S_WRAPPER, "tributary-sync", "/bin/sh", "-c", inner])
        .spawn()
        .expect("sh runs");
    if let Some(after) = term_after {
        std::thread::sleep(after);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn the_k8s_wrapper_treats_deferred_as_success_and_forwards_sigterm() {
    assert_eq!(wrapped("exit 0", None), 0);
    assert_eq!(wrapped("exit 3", None), 0);
    assert_eq!(wrapped("exit 1", None), 1);
    // SIGTERM to the wrapper (PID 1 in the pod) reaches `sync`, and its own exit code is
    // the pod's.
    let code = wrapped(
        "trap 'exit 7' TERM; sleep 5 & wait",
        Some(std::time::Duration::from_millis(300)),
    );
    assert_eq!(code, 7);
}

#[test]
fn crontab_lines_have_five_fields_a_lock_a_log_and_the_configs_schedule() {
    let p = plan(Per::Stream);
    let out = render_with(
        &p,
        &[
            "--format",
            "crontab",
            "--per",
            "stream",
            "--binary",
            "/opt/100% tributary/bin",
            "--log-dir",
            "/var/log/trib/",
        ],
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(lines.len(), p.units().len(), "{out}");
    for line in &lines {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        assert_eq!(fields.len(), 6, "{line}");
        let schedule = fields[..5].join(" ");
        let command = fields[5];
        let source = p
            .sources
            .iter()
            .find(|s| command.contains(&format!("--source {} ", s.name)))
            .unwrap_or_else(|| panic!("a source in {line}"));
        assert_eq!(schedule, source.cron, "{line}");
        Schedule::parse(&schedule).expect("a valid schedule");
        assert!(command.starts_with("flock -n /tmp/tributary-"), "{line}");
        assert!(command.ends_with(".log 2>&1"), "{line}");
        // cron would cut the line at a bare `%`.
        assert!(!command.replace("\\%", "").contains('%'), "{line}");
    }
    assert!(
        lines.contains(&"*/15 * * * * flock -n /tmp/tributary-stripe-charges.lock '/opt/100\\% tributary/bin' --config /etc/tributary/tributary.toml sync --source stripe --stream charges >> /var/log/trib/stripe-charges.log 2>&1"),
        "{out}"
    );
    assert!(out.contains("#   stripe: AWS_ACCESS_KEY_ID, AWS_REGION (optional), AWS_SECRET_ACCESS_KEY, STRIPE_API_KEY"), "{out}");
}

#[test]
fn a_reverse_etl_sources_units_are_its_models() {
    let text = "[sources.app_db]\ntype = \"postgres\"\nurl = \"postgres://app:${PG_PASSWORD}@db/app\"\nschedule = \"*/30 * * * *\"\n\n[sources.app_db.tracking]\nwrite_key = \"${SEGMENT_WRITE_KEY}\"\n\n[sources.app_db.models.users]\nquery = \"SELECT 1\"\nid = \"id\"\n[sources.app_db.models.users.mapping]\ncall = \"identify\"\nuser_id = \"id\"\n\n[sources.app_db.models.accounts]\nquery = \"SELECT 1\"\nid = \"id\"\n[sources.app_db.models.accounts.mapping]\ncall = \"group\"\nuser_id = \"id\"\ngroup_id = \"id\"\n";
    let p = build(text, Path::new("t.toml"), Per::Stream, None).unwrap();
    assert_eq!(p.sources[0].streams, ["accounts", "users"]);
    assert_eq!(p.sources[0].cron, "*/30 * * * *");
    let env: Vec<&str> = p.sources[0].env.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(env, ["PG_PASSWORD", "SEGMENT_WRITE_KEY"]);
    let no_models = text
        .split("\n\n[sources.app_db.models.users]")
        .next()
        .unwrap();
    let e = format!(
        "{:#}",
        build(no_models, Path::new("t.toml"), Per::Stream, None).unwrap_err()
    );
    assert!(e.contains("needs `models`"), "{e}");
}
