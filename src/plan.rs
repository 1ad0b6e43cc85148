//! `plan`: the units of work of a config (one per source, or one per stream) and their
//! schedules, written for the schedulers teams already run: an Apache Airflow DAG file, a
//! Kubernetes CronJob manifest, or crontab lines. Each unit runs `tributary sync --source S
//! [--stream T]`; the state lives in the warehouse, so any machine can run any unit.
//!
//! The plan reads the config as written, without resolving `${…}` references: the machine
//! that plans needs no secrets, and the output carries none (only the variables' names, so
//! the scheduler can be told which ones each unit needs). It makes no network call: the
//! streams of a source come from its `streams` key, or from the connector's static list.
//!
//! Schedules are rewritten in standard cron (5 fields, UTC, day of week 0-6 from Sunday),
//! computed from the schedule `tributary run` parsed, so every target fires exactly when
//! `run` would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cron::TimeUnitSpec;
use serde_json::{Value, json};

use crate::config::{DEFAULT_SCHEDULE, Schedule};

/// What `plan` writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An Apache Airflow DAG file (Python): one DAG per source.
    Airflow,
    /// Kubernetes batch/v1 CronJobs, multi-document YAML.
    #[value(alias = "kubernetes")]
    K8s,
    /// crontab(5) lines.
    #[value(alias = "cron")]
    Crontab,
}

/// The unit of work.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Per {
    /// One unit per source: `sync --source S` runs its streams together under one rate
    /// limiter (`sync.concurrency` at once).
    Source,
    /// One unit per stream: `sync --source S --stream T`, retried and watched on its own.
    Stream,
}

/// The command-line arguments of `tributary plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// The target: `airflow` (a DAG file), `k8s` (CronJob manifests) or `crontab`.
    #[arg(long, value_enum)]
    pub format: Format,
    /// One unit of work per source or per stream.
    #[arg(long, value_enum, default_value_t = Per::Source)]
    pub per: Per,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The `tributary` binary as the scheduler's machine calls it. Default
    /// `/usr/local/bin/tributary` (airflow, crontab), `tributary` (k8s: the image's PATH).
    #[arg(long, env = "TRIBUTARY_PLAN_BINARY")]
    pub binary: Option<String>,
    /// The config file's path on the scheduler's machine. Default: this config's absolute
    /// path (airflow, crontab); `/etc/tributary/tributary.toml` (k8s: the ConfigMap's mount).
    #[arg(long, env = "TRIBUTARY_PLAN_CONFIG")]
    pub config_path_in_plan: Option<String>,
    /// Times a failed unit is retried (Airflow `retries`, Kubernetes `backoffLimit`).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Minutes between an Airflow task's retries.
    #[arg(long, default_value_t = 5)]
    pub retry_delay_minutes: u32,
    /// Airflow: slots of each source's pool, i.e. its tasks running at once. Default 1: each
    /// `sync` process has its own rate limiter, so N at once may send N times the source's
    /// `requests_per_second`; raise it only after dividing that by N.
    #[arg(long, default_value_t = 1)]
    pub pool_slots: u32,
    /// Kubernetes: the container image holding the `tributary` binary.
    #[arg(long, default_value = "tributary:latest")]
    pub image: String,
    /// Kubernetes: the ConfigMap holding the config file.
    #[arg(long, default_value = "tributary-config")]
    pub configmap: String,
    /// Kubernetes: the Secret holding the environment variables the config refers to.
    #[arg(long, default_value = "tributary-secrets")]
    pub secret: String,
    /// crontab: the directory of each unit's log file (`<unit>.log`, appended to).
    #[arg(long, default_value = "/var/log/tributary")]
    pub log_dir: String,
    /// crontab: the directory of each unit's `flock` lock file.
    #[arg(long, default_value = "/tmp")]
    pub lock_dir: String,
}

/// Exit code of `sync` that means deferred, nothing failed ([`crate::cli::EXIT_DEFERRED`]).
const DEFERRED: u8 = crate::cli::EXIT_DEFERRED;

/// `plan`: reads the config, renders it, writes it to `--out` or standard output.
pub fn command(config_path: &Path, args: &PlanArgs) -> Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(config_path).with_context(|| {
        format!(
            "cannot read the config file {} (pass --config FILE)",
            config_path.display()
        )
    })?;
    let plan = build(&text, config_path, args.per, args.source.as_deref())?;
    let config_in_plan = match &args.config_path_in_plan {
        Some(p) => p.clone(),
        None if args.format == Format::K8s => K8S_CONFIG_PATH.to_owned(),
        None => std::path::absolute(config_path)
            .with_context(|| format!("the absolute path of {}", config_path.display()))?
            .display()
            .to_string(),
    };
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None if args.format == Format::K8s => "tributary".to_owned(),
        None => "/usr/local/bin/tributary".to_owned(),
    };
    let target = Target {
        binary,
        config: config_in_plan,
        args: args.clone(),
    };
    let output = render(&plan, &target)?;
    if args.format == Format::K8s && plan.local_warehouse {
        eprintln!(
            "warning: `warehouse.url` is a local path: a pod's disk is gone when its Job ends; use an s3://, gs:// or az:// bucket"
        );
    }
    match &args.out {
        Some(path) => std::fs::write(path, output)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{output}"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A `${VAR}` reference in the config: the variable a unit needs in its environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// Written `${VAR:-default}`: the config works without it.
    pub optional: bool,
}

/// One source as the plan sees it.
#[derive(Debug, Clone)]
pub struct PlannedSource {
    /// `[sources.<name>]`.
    pub name: String,
    /// Its connector.
    pub kind: String,
    /// The schedule as written.
    pub written_schedule: String,
    /// The schedule in standard 5-field cron (see [`standard_cron`]).
    pub cron: String,
    /// Its units' streams, sorted; empty when the plan is per source.
    pub streams: Vec<String>,
    /// The environment variables its units need (its section's and the warehouse's),
    /// sorted; an optional one is listed once, as optional only if every reference is.
    pub env: Vec<EnvVar>,
    /// `${file:/path}` references: files its units read, sorted.
    pub files: Vec<String>,
}

/// The units of work of a config.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One unit per source or per stream.
    pub per: Per,
    /// The sources, sorted by name.
    pub sources: Vec<PlannedSource>,
    /// `warehouse.url` is a local path (lost with a pod's disk).
    pub local_warehouse: bool,
}

/// One unit: a source, or one of its streams.
#[derive(Debug, Clone, Copy)]
pub struct Unit<'a> {
    /// The source.
    pub source: &'a PlannedSource,
    /// The stream, when the plan is per stream.
    pub stream: Option<&'a str>,
}

impl Unit<'_> {
    /// `source` or `source.stream`.
    fn label(&self) -> String {
        match self.stream {
            Some(s) => format!("{}.{s}", self.source.name),
            None => self.source.name.clone(),
        }
    }

    /// `source` or `source-stream`: a file name part.
    fn slug(&self) -> String {
        match self.stream {
            Some(s) => format!("{}-{s}", self.source.name),
            None => self.source.name.clone(),
        }
    }

    /// The `sync` arguments after the binary.
    fn sync_args(&self, config: &str) -> Vec<String> {
        let mut args = vec![
            "--config".to_owned(),
            config.to_owned(),
            "sync".to_owned(),
            "--source".to_owned(),
            self.source.name.clone(),
        ];
        if let Some(s) = self.stream {
            args.extend(["--stream".to_owned(), s.to_owned()]);
        }
        args
    }
}

impl Plan {
    /// Every unit, sources in name order and their streams in name order.
    pub fn units(&self) -> Vec<Unit<'_>> {
        let mut out = Vec::new();
        for source in &self.sources {
            match self.per {
                Per::Source => out.push(Unit {
                    source,
                    stream: None,
                }),
                Per::Stream => out.extend(source.streams.iter().map(|s| Unit {
                    source,
                    stream: Some(s.as_str()),
                })),
            }
        }
        out
    }
}

/// Reads the units of work out of config text (`path` names the file in messages), every
/// source or the one named `only`.
pub fn build(text: &str, path: &Path, per: Per, only: Option<&str>) -> Result<Plan> {
    let file = path.display().to_string();
    let doc: toml::Table = toml::from_str(text).map_err(|e| syntax_error(&file, text, &e))?;
    let mut warehouse_env = Refs::default();
    let mut local_warehouse = true;
    if let Some(w) = doc.get("warehouse") {
        warehouse_env.collect(w, "warehouse", &file)?;
        if let Some(toml::Value::String(url)) = w.get("url") {
            local_warehouse = url.starts_with("file:") || !url.contains("://");
        }
    }
    let sources = match doc.get("sources") {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("{file}: `sources` must be tables, [sources.<name>]"),
        None => toml::Table::new(),
    };
    if sources.is_empty() {
        bail!(
            "{file}: no sources configured; add a [sources.<name>] table (see config.example.toml)"
        );
    }
    if let Some(name) = only
        && !sources.contains_key(name)
    {
        bail!(
            "{file}: there is no source `{name}`; configured sources: {}",
            sources.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    // Cloud-app connectors, and the reverse-ETL source types (whose units are models).
    let known: Vec<&str> = crate::registry::factories()
        .iter()
        .map(|f| f.kind)
        .chain(crate::retl::config::KINDS)
        .collect();
    let mut planned = Vec::new();
    for (name, section) in sources {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let at = format!("sources.{name}");
        if !crate::warehouse::is_path_segment(&name) {
            bail!(
                "{file}: `[{at}]`: a source name must be lowercase letters, digits, `_` or `-` (it becomes a folder of the warehouse)"
            );
        }
        let toml::Value::Table(section) = section else {
            bail!("{file}: `{at}` must be a table, [{at}]");
        };
        let kind = match section.get("type") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => bail!("{file}: `{at}.type` must be a string such as \"stripe\""),
            None => bail!("{file}: `[{at}]` has no `type`; add e.g. type = \"stripe\""),
        };
        // Event-stream sources have no schedule: `tributary serve` collects them.
        if crate::collector::config::KINDS.contains(&kind.as_str()) {
            continue;
        }
        if !known.contains(&kind.as_str()) {
            bail!(
                "{file}: `{at}.type` is not a connector this build knows; known types: {}",
                known.join(", ")
            );
        }
        let written_schedule = match section.get("schedule") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => bail!("{file}: `{at}.schedule` must be a cron expression in a string"),
            None => DEFAULT_SCHEDULE.to_owned(),
        };
        let schedule = Schedule::parse(&written_schedule)
            .map_err(|e| anyhow!("{file}: `{at}.schedule`: {e}"))?;
        let cron = standard_cron(&schedule).map_err(|e| anyhow!("{file}: `{at}.schedule`: {e}"))?;
        let configured = match section.get("streams") {
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        _ => bail!("{file}: `{at}.streams` must be a list of stream names"),
                    }
                }
                if out.is_empty() {
                    bail!("{file}: `{at}.streams` is empty; remove it to sync every stream");
                }
                Some(out)
            }
            Some(_) => bail!("{file}: `{at}.streams` must be a list of stream names"),
            None => None,
        };
        let streams = match per {
            Per::Source => Vec::new(),
            Per::Stream => stream_list(&file, &at, &kind, &section, configured)?,
        };
        let mut refs = warehouse_env.clone();
        refs.collect(&toml::Value::Table(section), &at, &file)?;
        planned.push(PlannedSource {
            name,
            kind,
            written_schedule,
            cron,
            streams,
            env: refs.vars(),
            files: refs.files.into_iter().collect(),
        });
    }
    Ok(Plan {
        per,
        sources: planned,
        local_warehouse,
    })
}

/// The streams of a source, sorted: the configured ones (checked against the connector's
/// list where it is known without asking the vendor), else the connector's static list.
fn stream_list(
    file: &str,
    at: &str,
    kind: &str,
    section: &toml::Table,
    configured: Option<Vec<String>>,
) -> Result<Vec<String>> {
    let known = static_streams(kind, section).map_err(|e| anyhow!("{file}: `[{at}]`: {e}"))?;
    let mut streams = match (configured, known) {
        (Some(wanted), Some(known)) => {
            for (i, stream) in wanted.iter().enumerate() {
                if !known.contains(stream) {
                    // Named by position: config errors never quote a value.
                    bail!(
                        "{file}: `{at}.streams[{i}]` is not a stream of {kind}; available: {}",
                        known.join(", ")
                    );
                }
            }
            wanted
        }
        (Some(wanted), None) => wanted,
        (None, Some(known)) => known,
        (None, None) => bail!(
            "{file}: `[{at}]`: --per stream needs the source's streams, and {kind}'s are only known by asking the vendor{}; list them in `{at}.streams`, or plan --per source",
            if kind == "salesforce" {
                " when `objects` is not set (the org may lack some default objects)"
            } else {
                ""
            }
        ),
    };
    streams.sort();
    streams.dedup();
    for s in &streams {
        if s.is_empty() || s.chars().any(|c| c.is_control()) {
            bail!("{file}: `{at}.streams` holds an empty name or a control character");
        }
    }
    Ok(streams)
}

/// The stream names a source has whatever the vendor answers, when its connector knows
/// them without a network call ([`tributary_sdk::Connector::known_streams`]; Salesforce's
/// only when `objects` is written); a reverse-ETL source's are its models.
fn static_streams(kind: &str, section: &toml::Table) -> Result<Option<Vec<String>>> {
    // A reverse-ETL source's units are its models (`sync --stream` names a model).
    if crate::retl::config::KINDS.contains(&kind) {
        return match section.get("models") {
            Some(toml::Value::Table(models)) => Ok(Some(models.keys().cloned().collect())),
            _ => Err(anyhow!("a reverse-ETL source needs `models`")),
        };
    }
    let Some(factory) = crate::registry::factories()
        .into_iter()
        .find(|f| f.kind == kind)
    else {
        return Ok(None);
    };
    let mut options = section.clone();
    for key in crate::config::RUNTIME_KEYS {
        options.remove(key);
    }
    factory
        .known_streams(crate::config::plain_json(toml::Value::Table(options)))
        .map_err(|e| anyhow!("{e}"))
}

/// The `${…}` references of a config section.
#[derive(Debug, Clone, Default)]
struct Refs {
    /// Variable name → optional (every reference has a default).
    env: BTreeMap<String, bool>,
    files: BTreeSet<String>,
}

impl Refs {
    fn collect(&mut self, value: &toml::Value, at: &str, file: &str) -> Result<()> {
        match value {
            toml::Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    let after = &rest[start + 2..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| anyhow!("{file}: `{at}`: `${{` without a closing `}}`"))?;
                    let reference = &after[..end];
                    if let Some(path) = reference.strip_prefix("file:") {
                        self.files.insert(path.to_owned());
                    } else {
                        let (name, optional) = match reference.split_once(":-") {
                            Some((n, _)) => (n, true),
                            None => (reference, false),
                        };
                        if name.is_empty()
                            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            bail!(
                                "{file}: `{at}`: `${{{reference}}}` is not an environment variable name"
                            );
                        }
                        let entry = self.env.entry(name.to_owned()).or_insert(optional);
                        *entry &= optional;
                    }
                    rest = &after[end + 1..];
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.collect(item, &format!("{at}[{i}]"), file)?;
                }
            }
            toml::Value::Table(t) => {
                for (k, v) in t {
                    self.collect(v, &format!("{at}.{k}"), file)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn vars(&self) -> Vec<EnvVar> {
        self.env
            .iter()
            .map(|(name, optional)| EnvVar {
                name: name.clone(),
                optional: *optional,
            })
            .collect()
    }
}

/// A TOML syntax error as `file:line:column: message`, never quoting the line (it may
/// hold a secret).
fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow!("{file}:{line}:{column}: {message}")
        }
        None => anyhow!("{file}: {message}"),
    }
}

/// A schedule in standard cron as crontab(5), Kubernetes and Airflow read it: 5 fields,
/// day of week 0-6 from Sunday. Built from the parsed schedule, not the text, so it fires
/// exactly when `run` does (a 6-field schedule is the `cron` crate's own, Sunday 1).
///
/// Refused: a schedule with seconds other than 0 or with years (the targets schedule to
/// the minute), and one restricting both the day of month and the day of week, which
/// `run` reads as both and standard cron as either.
pub fn standard_cron(schedule: &Schedule) -> Result<String, String> {
    let c = &schedule.cron;
    let seconds: Vec<u32> = c.seconds().iter().collect();
    if seconds != [0] {
        return Err(format!(
            "`{}` fires at seconds other than :00; cron, Kubernetes and Airflow schedule to the minute: write 5 fields",
            schedule.text
        ));
    }
    if !c.years().is_all() {
        return Err(format!(
            "`{}` restricts the year; cron, Kubernetes and Airflow have no year field",
            schedule.text
        ));
    }
    if !c.days_of_month().is_all() && !c.days_of_week().is_all() {
        return Err(format!(
            "`{}` restricts both the day of the month and the day of the week: `tributary run` fires when both match, cron when either does; restrict one",
            schedule.text
        ));
    }
    let minutes = cron_field(c.minutes(), 0, 0, 59);
    let hours = cron_field(c.hours(), 0, 0, 23);
    let dom = cron_field(c.days_of_month(), 0, 1, 31);
    let months = cron_field(c.months(), 0, 1, 12);
    // The `cron` crate's Sunday is 1, standard cron's 0.
    let dow = cron_field(c.days_of_week(), 1, 0, 6);
    Ok(format!("{minutes} {hours} {dom} {months} {dow}"))
}

/// One field of a parsed schedule in standard cron, its values lowered by `shift`.
fn cron_field(spec: &impl TimeUnitSpec, shift: u32, min: u32, max: u32) -> String {
    if spec.is_all() {
        return "*".to_owned();
    }
    let values: Vec<u32> = spec.iter().map(|v| v - shift).collect();
    compact_field(&values, min, max)
}

/// A set of values as a cron field: `*/15` or `5-59/15` for a progression that runs to the
/// end of the field's range, else a list of values and `a-b` ranges.
fn compact_field(values: &[u32], min: u32, max: u32) -> String {
    // Two values make a progression only from the start (`*/30`, not `6-23/12` for 6,18).
    if values.len() >= 3 || (values.len() == 2 && values[0] == min) {
        let step = values[1] - values[0];
        let progression = step > 1 && values.windows(2).all(|w| w[1] - w[0] == step);
        let last = values[values.len() - 1];
        if progression && last + step > max {
            return if values[0] == min {
                format!("*/{step}")
            } else {
                format!("{}-{max}/{step}", values[0])
            };
        }
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        parts.push(match j - i {
            0 => values[i].to_string(),
            1 => format!("{},{}", values[i], values[j]),
            _ => format!("{}-{}", values[i], values[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Where and how the scheduler runs the binary.
#[derive(Debug, Clone)]
pub struct Target {
    /// The binary as the scheduler calls it.
    pub binary: String,
    /// The config's path on the scheduler's machine.
    pub config: String,
    /// The rest of the options.
    pub args: PlanArgs,
}

/// The plan in the target's form.
pub fn render(plan: &Plan, target: &Target) -> Result<String> {
    for (what, value) in [
        ("--binary", &target.binary),
        ("the config path", &target.config),
    ] {
        if value.is_empty() || value.chars().any(|c| c.is_control()) {
            bail!("{what} is empty or holds a control character (a newline, a tab)");
        }
    }
    match target.args.format {
        Format::Airflow => airflow(plan, target),
        Format::K8s => k8s(plan, target),
        Format::Crontab => crontab(plan, target),
    }
}

/// `s` as one shell word: as is when it is plain, else single-quoted.
pub fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The shell command of a unit.
fn shell_command(unit: &Unit, target: &Target) -> String {
    std::iter::once(target.binary.clone())
        .chain(unit.sync_args(&target.config))
        .map(|a| sh_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Python (or YAML) string literal: JSON's escapes are Python's and YAML's.
fn literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// What each source needs in its environment, as comment lines (`prefix` starts each).
fn environment_notes(plan: &Plan, prefix: &str) -> String {
    let mut out = String::new();
    for s in &plan.sources {
        let vars: Vec<String> = s
            .env
            .iter()
            .map(|v| {
                if v.optional {
                    format!("{} (optional)", v.name)
                } else {
                    v.name.clone()
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "{prefix}  {}: {}",
            s.name,
            if vars.is_empty() {
                "-".to_owned()
            } else {
                vars.join(", ")
            }
        );
        for f in &s.files {
            let _ = writeln!(out, "{prefix}    and the file {}", literal(f));
        }
    }
    out
}

/// The pool of a source's tasks.
fn pool_name(source: &str) -> String {
    format!("tributary_{source}")
}

/// The Airflow DAG file: one DAG per source (sources have their own schedules), one
/// BashOperator per unit.
///
/// BashOperator without `env` inherits the worker's environment (where the secrets are),
/// and ends a task whose command exits with `skip_on_exit_code` as skipped
/// (https://airflow.apache.org/docs/apache-airflow/2.9.3/_api/airflow/operators/bash/index.html).
/// Pools bound how many tasks of a set run at once; a pool's tasks queue while its slots are
/// taken (https://airflow.apache.org/docs/apache-airflow/stable/administration-and-deployment/pools.html).
fn airflow(plan: &Plan, target: &Target) -> Result<String> {
    let a = &target.args;
    let per = match plan.per {
        Per::Source => "source",
        Per::Stream => "stream",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#""""Tributary's units of work as Airflow DAGs, written by `tributary plan --format airflow --per {per}`.

Regenerate it from the config rather than editing it. One DAG per source, scheduled by the
source's `schedule` (in UTC, as `tributary run` reads it); each task runs `tributary sync`
for its source{stream_note}. Needs Airflow 2.6 or later (`skip_on_exit_code`).

Pools: each source's tasks run in the pool `tributary_<source>`, whose slots bound how many
run at once. Every `sync` process has its own rate limiter at the source's
`requests_per_second`, so two at once may send twice the vendor account's rate: the pools
have {slots} slot(s) (`tributary plan --pool-slots N` writes more; then divide
`requests_per_second` by N). A task whose pool does not exist is never scheduled: create them
once with
"#,
        stream_note = if plan.per == Per::Stream {
            " and stream"
        } else {
            ""
        },
        slots = a.pool_slots,
    );
    for s in &plan.sources {
        let _ = writeln!(
            out,
            "    airflow pools set {} {} {}",
            pool_name(&s.name),
            a.pool_slots,
            sh_quote(&format!("Tributary source {}", s.name))
        );
    }
    let _ = write!(
        out,
        r#"
Exit code {DEFERRED} of `sync` means deferred: nothing failed, some streams were left for the next
run to stay within the vendor's API budget. Such a task ends as skipped, not failed, and is
not retried (a retry would spend more of the same budget).

The tasks inherit the worker's environment, which must hold the variables the config
refers to:
{env}"""

from datetime import timedelta

import pendulum
from airflow import DAG

try:  # Airflow 3: the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

DEFAULT_ARGS = {{
    "owner": "tributary",
    "retries": {retries},
    "retry_delay": timedelta(minutes={delay}),
}}
"#,
        env = environment_notes(plan, ""),
        retries = a.retries,
        delay = a.retry_delay_minutes,
    );
    for s in &plan.sources {
        let dag_id = format!("tributary_{}", s.name);
        let _ = write!(
            out,
            r#"
with DAG(
    dag_id={dag_id},
    description={description},
    schedule={schedule},
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["tributary", {kind}],
):
"#,
            dag_id = literal(&dag_id),
            description = literal(&format!(
                "tributary sync of source {} ({}), schedule {} as written",
                s.name, s.kind, s.written_schedule
            )),
            schedule = literal(&s.cron),
            kind = literal(&s.kind),
        );
        for unit in plan.units().iter().filter(|u| u.source.name == s.name) {
            let task_id = unit.stream.unwrap_or("sync");
            if !task_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                bail!(
                    "stream `{}` of source `{}` cannot be an Airflow task id (letters, digits, `_`, `-`, `.`)",
                    task_id.escape_default(),
                    s.name
                );
            }
            let mut command = shell_command(unit, target);
            // bash_command is a Jinja template: keep `{{` in a path from being rendered.
            if command.contains('{') {
                command = format!("{{% raw %}}{command}{{% endraw %}}");
            }
            let _ = write!(
                out,
                r#"    BashOperator(
        task_id={task_id},
        bash_command={command},
        pool={pool},
        skip_on_exit_code={DEFERRED},
    )
"#,
                task_id = literal(task_id),
                command = literal(&command),
                pool = literal(&pool_name(&s.name)),
            );
        }
    }
    Ok(out)
}

/// Where the config's ConfigMap is mounted by default.
pub const K8S_CONFIG_PATH: &str = "/etc/tributary/tributary.toml";

/// A CronJob name: a DNS subdomain of at most 52 characters, as the controller appends 11 to
/// name each Job (https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/).
fn k8s_name(slug: &str) -> String {
    let mut name: String = format!("tributary-{slug}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if name.len() > 52 {
        // Truncated names stay distinct by a hash of the whole.
        let hash = slug.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        name.truncate(43);
        name = format!("{}-{:08x}", name.trim_end_matches('-'), hash as u32);
    }
    name.trim_end_matches('-').to_owned()
}

/// A label value: at most 63 characters, alphanumerics at both ends.
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The container's entrypoint: runs `sync` as a child and hands it SIGTERM (a shell as PID 1
/// would not; a wait cut short by the signal is waited again for `sync`'s own code), and
/// turns its exit code 3 (deferred, nothing failed) into success, so the Job neither fails nor
/// retries and spends more of the vendor's budget.
pub const K8S_WRAPPER: &str = r#""$@" & pid=$!; term=0; trap 'term=1; kill -TERM "$pid" 2>/dev/null' TERM INT; wait "$pid"; rc=$?; while [ "$term" = 1 ] && [ "$rc" -gt 128 ]; do term=0; wait "$pid"; rc=$?; done; if [ "$rc" -eq 3 ]; then exit 0; fi; exit "$rc""#;

/// Kubernetes batch/v1 CronJobs, one per unit. Fields as in the API reference
/// (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/cron-job-v1/);
/// `kubernetes-validate` checks them against its schemas in tests/it/plan.rs.
fn k8s(plan: &Plan, target: &Target) -> Result<String> {
    let a = &target.args;
    let config = Path::new(&target.config);
    let (Some(mount), Some(key)) = (
        config.parent().map(|p| p.display().to_string()),
        config.file_name().map(|f| f.to_string_lossy().into_owned()),
    ) else {
        bail!("--config-path-in-plan must be an absolute file path, e.g. {K8S_CONFIG_PATH}");
    };
    if !config.is_absolute() || mount == "/" {
        bail!(
            "--config-path-in-plan must be an absolute file path below /, e.g. {K8S_CONFIG_PATH}"
        );
    }
    let per = match plan.per {
        Per::Source => "source",
        Per::Stream => "stream",
    };
    let mut out = format!(
        "# Tributary's units of work as Kubernetes CronJobs, written by\n\
         # `tributary plan --format k8s --per {per}`. Apply with `kubectl apply -f FILE`.\n\
         # They need, in the same namespace, the config as a ConfigMap (mounted at {mount}):\n\
         #   kubectl create configmap {configmap} --from-file={key}=tributary.toml\n\
         # and the variables it refers to in a Secret (each unit reads its source's):\n\
         #   kubectl create secret generic {secret} --from-literal=NAME=value ...\n",
        configmap = a.configmap,
        secret = a.secret,
    );
    out.push_str(&environment_notes(plan, "# "));
    out.push_str(
        "# A `${file:...}` reference needs that file mounted at its path (add a volume).\n\
         # Schedules are UTC, as `tributary run` reads them. Exit code 3 of `sync` (deferred,\n\
         # nothing failed) counts as success: the Job neither fails nor retries.\n",
    );
    if plan.local_warehouse {
        out.push_str(
            "# WARNING: warehouse.url is a local path: a pod's disk is gone when its Job ends.\n",
        );
    }
    let mut names = BTreeMap::new();
    for unit in plan.units() {
        let name = k8s_name(&unit.slug());
        if let Some(other) = names.insert(name.clone(), unit.label()) {
            bail!(
                "`{other}` and `{}` would both be the CronJob `{name}`; rename one source",
                unit.label()
            );
        }
        let mut labels = json!({
            "app.kubernetes.io/name": "tributary",
            "app.kubernetes.io/component": "sync",
            "tributary/source": label_value(&unit.source.name),
        });
        let mut annotations = json!({
            "tributary/source": unit.source.name,
            "tributary/schedule-as-written": unit.source.written_schedule,
        });
        if let Some(stream) = unit.stream {
            labels["tributary/stream"] = json!(label_value(stream));
            annotations["tributary/stream"] = json!(stream);
        }
        let env: Vec<Value> = unit
            .source
            .env
            .iter()
            .map(|v| {
                let mut key_ref = json!({"name": a.secret, "key": v.name});
                if v.optional {
                    key_ref["optional"] = json!(true);
                }
                json!({"name": v.name, "valueFrom": {"secretKeyRef": key_ref}})
            })
            .collect();
        let mut args = vec![target.binary.clone()];
        args.extend(unit.sync_args(&target.config));
        let mut container = json!({
            "name": "sync",
            "image": a.image,
            "command": ["/bin/sh", "-c", K8S_WRAPPER, "tributary-sync"],
            "args": args,
            "volumeMounts": [{"name": "config", "mountPath": mount, "readOnly": true}],
        });
        if !env.is_empty() {
            container["env"] = Value::Array(env);
        }
        let cronjob = json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {
                "schedule": unit.source.cron,
                // `timeZone` is stable since Kubernetes 1.27.
                "timeZone": "Etc/UTC",
                // A run still going when the next is due: skip the next (the state is in
                // the bucket; two runs of one stream would only race).
                "concurrencyPolicy": "Forbid",
                // A run missed by more than this (controller down) is skipped, not caught
                // up late.
                "startingDeadlineSeconds": 300,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": a.retries,
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                // A failed pod is replaced by the Job (up to backoffLimit),
                                // not restarted in place.
                                "restartPolicy": "Never",
                                "containers": [container],
                                "volumes": [{
                                    "name": "config",
                                    "configMap": {
                                        "name": a.configmap,
                                        "items": [{"key": key, "path": key}],
                                    },
                                }],
                            },
                        },
                    },
                },
            },
        });
        out.push_str("---\n");
        yaml(&cronjob, 0, &mut out);
    }
    Ok(out)
}

/// Block YAML for a JSON value (strings double-quoted with JSON's escapes, which YAML's
/// double-quoted style shares).
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
                {
                    k.clone()
                } else {
                    literal(k)
                };
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(v, indent + 2, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        // The first key goes on the dash's line.
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(&inner[indent + 2..]);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}-");
                        yaml(item, indent + 2, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => literal(s),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// crontab(5) lines, one per unit, each under `flock -n` (a run still going makes the next
/// one skip) and appending to its log.
fn crontab(plan: &Plan, target: &Target) -> Result<String> {
    let a = &target.args;
    for (what, value) in [("--log-dir", &a.log_dir), ("--lock-dir", &a.lock_dir)] {
        if value.is_empty() || value.chars().any(|c| c.is_control()) {
            bail!("{what} is empty or holds a control character");
        }
    }
    let per = match plan.per {
        Per::Source => "source",
        Per::Stream => "stream",
    };
    let mut out = format!(
        "# Tributary's units of work as crontab lines, written by\n\
         # `tributary plan --format crontab --per {per}`. Install with `crontab FILE` (replaces\n\
         # the user's crontab) or paste them into `crontab -e`; create {log_dir} first.\n\
         # Schedules are UTC, as `tributary run` reads them: on a machine whose local time is\n\
         # not UTC, set CRON_TZ=UTC where the cron daemon supports it (cronie), or run cron in UTC.\n\
         # `flock -n` makes a run skip while the previous run of the same unit still holds its lock.\n\
         # Exit code 3 of `sync` (deferred, nothing failed) is only seen in the log.\n\
         # cron starts commands with an almost empty environment: set the variables the config\n\
         # refers to above these lines (NAME=value, see crontab(5)) or in a wrapper:\n",
        log_dir = a.log_dir,
    );
    out.push_str(&environment_notes(plan, "# "));
    let dir = |d: &str| d.trim_end_matches('/').to_owned();
    for s in &plan.sources {
        let _ = writeln!(
            out,
            "\n# {} ({}): schedule {} as written",
            s.name, s.kind, s.written_schedule
        );
        for unit in plan.units().iter().filter(|u| u.source.name == s.name) {
            let slug = unit.slug();
            let lock = format!("{}/tributary-{slug}.lock", dir(&a.lock_dir));
            let log = format!("{}/{slug}.log", dir(&a.log_dir));
            let command = format!(
                "flock -n {} {} >> {} 2>&1",
                sh_quote(&lock),
                shell_command(unit, target),
                sh_quote(&log)
            );
            // cron turns an unescaped `%` into a newline (crontab(5)).
            let _ = writeln!(out, "{} {}", s.cron, command.replace('%', r"\%"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
