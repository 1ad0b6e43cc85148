//! The commands: check, discover, sync, run, state, sandbox, demo.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use futures::{FutureExt, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::{self, Loaded};
use crate::engine::{self, Cancel, Status, StreamJob, StreamOutcome, TrackingOutcome};
use crate::registry::{self, BuiltSource, SourceFailure};
use crate::runs;
use crate::tracking::outbox::Outbox;
use crate::warehouse::compact::{CompactOptions, compact_table};
use crate::warehouse::{Warehouse, read_position};

/// Exit code: something failed (a stream, a check, the config).
pub const EXIT_ERROR: u8 = 1;

/// Exit code: nothing failed, but some streams were deferred (e.g. the vendor's daily API
/// budget is nearly spent); what ran is committed and the next run picks up the rest.
pub const EXIT_DEFERRED: u8 = 3;

/// What one `sync` of the selected sources did.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Each stream run.
    pub streams: Vec<StreamOutcome>,
    /// The sources that were not synced at all: discovery failed, or the run was cancelled
    /// before their streams started.
    pub failed_sources: Vec<SourceFailure>,
}

/// The exit code of a run: failed or cancelled streams (or sources) win over deferred ones.
fn run_exit_code(run: &RunOutcome) -> ExitCode {
    let outcomes = &run.streams;
    if !run.failed_sources.is_empty()
        || outcomes
            .iter()
            .any(|o| matches!(o.status, Status::Failed(_) | Status::Cancelled))
    {
        ExitCode::from(EXIT_ERROR)
    } else if outcomes
        .iter()
        .any(|o| matches!(o.status, Status::Deferred(_)))
    {
        ExitCode::from(EXIT_DEFERRED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The vendors `sandbox` can simulate.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxVendor {
    /// Stripe's API.
    Stripe,
    /// Zendesk Support's API.
    Zendesk,
    /// Salesforce's REST and Bulk API 2.0, with its OAuth token endpoint.
    Salesforce,
}

/// Sets up logging on stderr: sentences with fields for people, JSON lines for machines.
/// `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn,object_store=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .init();
    }
}

/// The progress bars of this process (drawn only when stderr is a terminal).
fn progress_bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Writes log lines to stderr above the progress bars instead of through them.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole event per write: mask any secret a vendor's
        // text or an error chain carried into it, as a last line of defence.
        let line = String::from_utf8_lossy(buf);
        let line = tributary_sdk::secret::scrub(&line);
        progress_bars().suspend(|| std::io::stderr().write_all(line.as_bytes()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An error chain as one line, with every secret masked: for anything printed or stored.
pub fn scrubbed(e: &anyhow::Error) -> String {
    tributary_sdk::secret::scrub(&format!("{e:#}")).into_owned()
}

/// `check`: builds every source and asks each for one cheap authenticated call, then for
/// its streams. Sources are checked at once; one that fails is a FAILED line and the
/// others are still checked. A source with tracking gets one more line for its collector
/// (see [`crate::tracking::check_line`]): Segment's cannot be asked about a write key, so
/// the line says where to confirm delivery; any other is sent an empty batch, and a
/// refused write key fails the check. SIGTERM/SIGINT stops every check in flight.
pub async fn check(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    Warehouse::new(&config.warehouse)?;
    let prepared = registry::prepare_all(&config, only)?;
    let cancel = cancel_on_signal();
    let checks = prepared.into_iter().map(|p| {
        let (config, cancel) = (&config, &cancel);
        async move {
            let name = p.config.name.clone();
            let tracking = p.config.tracking.clone().filter(|t| t.enabled);
            let source = async {
                let checked = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(Status::Cancelled),
                    r = p.source.check() => {
                        r.map_err(|e| Status::Failed(registry::source_error(config, &name, e)))
                    }
                };
                match checked {
                    Ok(()) => registry::discover(config, p, None, cancel).await,
                    Err(status) => Err(SourceFailure {
                        source: name.clone(),
                        status,
                    }),
                }
            };
            // The collector is checked alongside: a wrong write key is found now, not
            // after a sync has queued messages for it.
            let collector = async {
                let tracking = tracking.as_ref()?;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    line = crate::tracking::check_line(tracking) => Some(line),
                }
            };
            tokio::join!(source, collector)
        }
    });
    let mut failed = 0;
    for (result, collector) in futures::future::join_all(checks).await {
        match result {
            Ok(s) => println!("{:<20} ok ({} streams)", s.config.name, s.streams.len()),
            Err(f) => {
                failed += 1;
                println!("{:<20} {}", f.source, f.describe());
            }
        }
        if let Some((line, collector_failed)) = collector {
            println!("{:<20} {line}", "");
            failed += usize::from(collector_failed);
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

/// `discover`: every stream with its primary key, cursor and columns. A source whose
/// discovery fails is a FAILED line; the others are listed.
pub async fn discover(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let prepared = registry::prepare_all(&config, only)?;
    let cancel = cancel_on_signal();
    let (sources, failures) = registry::discover_all(&config, prepared, None, &cancel).await;
    for s in sources {
        for stream in &s.streams {
            println!(
                "{}.{} ({:?}; primary key {}; cursor {})",
                s.config.name,
                stream.name,
                stream.kind,
                stream.primary_key,
                stream.cursor_field.as_deref().unwrap_or("-")
            );
            for field in stream.arrow_schema().fields() {
                println!("    {:<48} {}", field.name(), field.data_type());
            }
        }
    }
    for f in &failures {
        println!("{:<20} {}", f.source, f.describe());
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

/// `sync`: one run of the selected streams; prints a summary; fails if any stream did.
pub async fn sync(
    config_path: &Path,
    source: Option<&str>,
    stream: Option<&str>,
    full_refresh: bool,
) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let cancel = cancel_on_signal();
    let run = sync_sources(&config, source, stream, full_refresh, cancel).await?;
    print_summary(&run);
    Ok(run_exit_code(&run))
}

/// Syncs the selected streams of the selected sources and records the run.
///
/// A config error stops it before anything runs. A source whose discovery fails is
/// reported in [`RunOutcome::failed_sources`] and the others are synced. Cancelled
/// during discovery, it syncs nothing and reports the sources as cancelled.
pub async fn sync_sources(
    config: &Loaded,
    source: Option<&str>,
    stream: Option<&str>,
    full_refresh: bool,
    cancel: Cancel,
) -> Result<RunOutcome> {
    if stream.is_some() && source.is_none() && config.sources.len() > 1 {
        bail!("--stream needs --source when several sources are configured");
    }
    // Config errors first: a source's bad option must stop the run before the warehouse
    // is touched.
    let prepared = registry::prepare_all(config, source)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    let (sources, mut failed_sources) =
        registry::discover_all(config, prepared, stream, &cancel).await;
    if cancel.is_cancelled() {
        // Stopped before any stream started: nothing to commit, nothing to record.
        failed_sources.extend(sources.into_iter().map(|s| SourceFailure {
            source: s.config.name,
            status: Status::Cancelled,
        }));
        return Ok(RunOutcome {
            streams: Vec::new(),
            failed_sources,
        });
    }
    let run_id = uuid::Uuid::new_v4().to_string();
    let progress = std::io::stderr().is_terminal().then(progress_bars);
    let mut outcomes = Vec::new();
    for s in &sources {
        outcomes.extend(
            sync_source(
                config,
                &warehouse,
                s,
                full_refresh,
                &run_id,
                &cancel,
                progress,
            )
            .await?,
        );
    }
    if let Some(bars) = progress {
        // The summary table says the same; leave the terminal clean for it.
        let _ = bars.clear();
    }
    if let Err(e) = runs::record(&warehouse, &run_id, &outcomes).await {
        tracing::warn!(error = %format!("{e:#}"), "Could not append to the run log table.");
    }
    Ok(RunOutcome {
        streams: outcomes,
        failed_sources,
    })
}

async fn sync_source(
    config: &Loaded,
    warehouse: &Warehouse,
    s: &BuiltSource,
    full_refresh: bool,
    run_id: &str,
    cancel: &Cancel,
    progress: Option<&MultiProgress>,
) -> Result<Vec<StreamOutcome>> {
    let name = &s.config.name;
    let tracking = match s.config.tracking.as_ref().filter(|t| t.enabled) {
        Some(t) => {
            let client = crate::tracking::client_for(t)
                .map_err(|e| anyhow!("source `{name}`: tracking: {e:#}"))?;
            Some((Arc::new(client), warehouse.store()?))
        }
        None => None,
    };
    let jobs: Vec<futures::future::BoxFuture<'_, StreamOutcome>> = s
        .streams
        .iter()
        .map(|schema| {
            let pb = progress.map(|mp| {
                let pb = mp.add(ProgressBar::no_length());
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>28} {spinner} {human_pos} records ({rate}) {msg}",
                    )
                    .map(|style| {
                        style.with_key(
                            "rate",
                            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = write!(w, "{:.0}/s", state.per_sec());
                            },
                        )
                    })
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_prefix(format!("{}.{}", s.config.name, schema.name));
                pb.enable_steady_tick(std::time::Duration::from_millis(200));
                pb
            });
            let tracked = tracking
                .as_ref()
                .filter(|_| schema.kind == tributary_sdk::StreamKind::Events)
                .map(|(client, (store, root))| {
                    let outbox = Outbox::new(Arc::clone(store), root, name, &schema.name);
                    (Arc::clone(client), outbox)
                });
            let job = StreamJob {
                warehouse,
                source_name: name,
                source: Arc::clone(&s.source),
                schema: schema.clone(),
                tuning: &config.sync,
                full_refresh,
                run_id,
                cancel: cancel.clone(),
                progress: pb,
                outbox: tracked.as_ref().map(|(_, outbox)| outbox.clone()),
                history: s.config.history,
            };
            async move {
                let mut outcome = engine::sync_stream(job).await;
                // After the stream's commits, and for any backlog of earlier runs.
                if let Some((client, outbox)) = tracked
                    && !cancel.is_cancelled()
                {
                    let delivered = crate::tracking::deliver_stream(
                        warehouse,
                        name,
                        &outcome.stream,
                        &outbox,
                        &client,
                    )
                    .await;
                    let unverified = client.accepts_any_write_key();
                    outcome.tracking = Some(match delivered {
                        Ok(d) => TrackingOutcome {
                            unverified,
                            sent: d.sent,
                            pending: d.pending,
                            rejected: d.rejected.len() as u64,
                            error: d.error,
                        },
                        Err(e) => {
                            tracing::warn!(source = %name, stream = %outcome.stream, error = %format!("{e:#}"), "Could not read the tracking outbox; it stays for the next run.");
                            TrackingOutcome {
                                unverified,
                                error: Some(scrubbed(&e)),
                                ..TrackingOutcome::default()
                            }
                        }
                    });
                }
                outcome
            }
            .boxed()
        })
        .collect();
    Ok(futures::stream::iter(jobs)
        .buffered(config.sync.concurrency)
        .collect()
        .await)
}

/// A summary's list of column names: the first few, each cut short, and how many more (a
/// run may add up to `sync.max_new_columns` columns of up to 255 bytes each).
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|n| {
            match n
                .char_indices()
                .nth(tributary_sdk::convert::LOGGED_NAME_CHARS)
            {
                Some((i, _)) => format!("{}…", n.get(..i).unwrap_or(n)),
                None => n.clone(),
            }
        })
        .collect();
    if names.len() > SHOWN {
        out.push(format!("and {} more", names.len() - SHOWN));
    }
    out.join(", ")
}

fn print_summary(run: &RunOutcome) {
    let outcomes = &run.streams;
    println!(
        "{:<32} {:>10} {:>6} {:>12} {:>9}  status",
        "stream", "records", "files", "bytes", "seconds"
    );
    for o in outcomes {
        println!(
            "{:<32} {:>10} {:>6} {:>12} {:>9.2}  {}",
            format!("{}.{}", o.source, o.stream),
            o.records,
            o.files,
            o.bytes,
            o.seconds(),
            o.status.word()
        );
        if !o.widened_columns.is_empty() {
            println!("    widened to float: {}", o.widened_columns.join(", "));
        }
        if !o.new_columns.is_empty() {
            println!("    new columns: {}", name_list(&o.new_columns));
        }
        if o.rescued_values > 0 {
            println!(
                "    {} values did not fit their column and were kept in _rescued_data",
                o.rescued_values
            );
        }
        if o.capped_fields > 0 {
            println!(
                "    {} fields were kept in _rescued_data instead of becoming columns (past sync.max_new_columns, or a name over 255 bytes), e.g. {}",
                o.capped_fields,
                o.capped_example.as_deref().unwrap_or("?")
            );
        }
        if o.oversized_values > 0 {
            println!(
                "    {} values were too large for a batch (over 2 GiB of text) and were left null",
                o.oversized_values
            );
        }
        if let Status::Failed(e) = &o.status {
            println!("    error: {e}");
        }
        if let Status::Deferred(reason) = &o.status {
            println!("    deferred: {reason}");
        }
        if let Status::Skipped(reason) = &o.status {
            println!("    warning: skipped, not available on this account's plan: {reason}");
        }
    }
    // One line per source with tracking: what reached the collector and what waits.
    let mut tracked: Vec<(&str, TrackingOutcome, u64)> = Vec::new();
    for o in outcomes {
        let Some(t) = &o.tracking else { continue };
        let i = match tracked.iter().position(|(s, _, _)| *s == o.source) {
            Some(i) => i,
            None => {
                tracked.push((&o.source, TrackingOutcome::default(), 0));
                tracked.len() - 1
            }
        };
        tracked[i].2 += o.messages_queued;
        let sum = &mut tracked[i].1;
        sum.sent += t.sent;
        sum.pending += t.pending;
        sum.rejected += t.rejected;
        sum.unverified |= t.unverified;
        if sum.error.is_none() {
            sum.error.clone_from(&t.error);
        }
    }
    for (source, t, queued) in &tracked {
        println!(
            "tracking {source}: {} messages accepted by the collector, {} pending, {} rejected ({queued} queued by this run)",
            t.sent, t.pending, t.rejected
        );
        if t.unverified {
            println!(
                "    Segment accepts any write key and drops invalid messages after answering 200: \
                 confirm arrival in the source's Debugger in Segment"
            );
        }
        if let Some(e) = &t.error {
            println!("    delivery error (retried next run): {e}");
        }
    }
    // One line per source that was not synced at all, after the streams that were.
    for f in &run.failed_sources {
        println!("{:<32} {}", f.source, f.describe());
    }
    let total: u64 = outcomes.iter().map(|o| o.records).sum();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Failed(_)))
        .count();
    println!(
        "{} streams, {total} records, {failed} failed",
        outcomes.len()
    );
    let deferred = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Deferred(_)))
        .count();
    if !run.failed_sources.is_empty() {
        println!(
            "{} sources not synced: {}",
            run.failed_sources.len(),
            run.failed_sources
                .iter()
                .map(|f| format!("{} ({})", f.source, f.status.word()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if deferred > 0 {
        println!(
            "{deferred} streams deferred: not started to stay within the vendor's API budget; \
             what ran is committed and the next run picks them up (exit code {EXIT_DEFERRED})"
        );
    }
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Skipped(_)))
        .count();
    if skipped > 0 {
        println!(
            "{skipped} streams skipped: the account's plan does not include them (drop them \
             from `streams` to silence this)"
        );
    }
}

/// `run`: the scheduler daemon. A config error stops it at once. Each source is discovered
/// at start so a broken one shows now, not at its first slot: it is a FAILED line, the
/// daemon still runs every source on its schedule (a vendor that comes back is synced),
/// and it exits with 1 when stopped.
pub async fn run(config_path: &Path) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let prepared = registry::prepare_all(&config, None)?;
    Warehouse::new(&config.warehouse)?;
    let cancel = cancel_on_signal();
    let (_, failures) = registry::discover_all(&config, prepared, None, &cancel).await;
    for f in &failures {
        println!("{:<20} {}", f.source, f.describe());
    }
    if cancel.is_cancelled() {
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    crate::scheduler::run(Arc::new(config), cancel).await?;
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

/// `state`: each stream's committed cursor and last commit.
pub async fn state(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    println!(
        "{:<32} {:>8} {:>5} {:<26} cursor",
        "stream", "version", "seq", "last commit"
    );
    let prepared = registry::prepare_all(&config, only)?;
    let cancel = cancel_on_signal();
    let (sources, failures) = registry::discover_all(&config, prepared, None, &cancel).await;
    for s in sources {
        for stream in &s.streams {
            let name = format!("{}.{}", s.config.name, stream.name);
            match warehouse.open(&[&s.config.name, &stream.name]).await? {
                None => println!("{name:<32} {:>8} {:>5} {:<26} -", "-", "-", "never synced"),
                Some(table) => {
                    let app_id = format!("tributary/{}/{}", s.config.name, stream.name);
                    let (seq, meta) = read_position(&table, &app_id).await?;
                    let version = table.version().map(|v| v.to_string()).unwrap_or_default();
                    match meta {
                        Some(m) => println!(
                            "{name:<32} {version:>8} {seq:>5} {:<26} {}",
                            m.committed_at, m.cursor
                        ),
                        None => println!(
                            "{name:<32} {version:>8} {:>5} {:<26} -",
                            "-", "no commit yet"
                        ),
                    }
                    if s.config.tracking.is_some()
                        && stream.kind == tributary_sdk::StreamKind::Events
                    {
                        let (store, root) = warehouse.store()?;
                        let outbox = Outbox::new(store, &root, &s.config.name, &stream.name);
                        println!(
                            "    tracking outbox: {} messages pending",
                            outbox.backlog(seq).await?
                        );
                    }
                }
            }
        }
    }
    for f in &failures {
        println!("{:<32} {}", f.source, f.describe());
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

/// `compact`: merge small files of the selected tables and remove unreferenced files older
/// than the retention period. Safe while syncs run (see [`crate::warehouse::compact`]).
pub async fn compact(
    config_path: &Path,
    only_source: Option<&str>,
    only_stream: Option<&str>,
    options: &CompactOptions,
) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    if only_stream.is_some() && only_source.is_none() && config.sources.len() > 1 {
        bail!("--stream needs --source when several sources are configured");
    }
    let sources: Vec<&str> = match only_source {
        Some(name) => vec![config.source(name)?.name.as_str()],
        None => config.sources.iter().map(|s| s.name.as_str()).collect(),
    };
    let (store, root) = warehouse.store()?;
    let mut tables: Vec<Vec<String>> = Vec::new();
    for source in &sources {
        let listed = store
            .list_with_delimiter(Some(&root.clone().join(*source)))
            .await
            .map_err(|e| anyhow!("listing the tables of source `{source}`: {e}"))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|n| only_stream.is_none_or(|s| s == n))
            .collect();
        names.sort();
        tables.extend(names.into_iter().map(|n| vec![source.to_string(), n]));
    }
    if let Some(stream) = only_stream
        && tables.is_empty()
    {
        bail!(
            "there is no table for stream `{stream}` of source `{}` in {} (has it been synced?)",
            sources.join(", "),
            warehouse.root()
        );
    }
    if only_source.is_none() {
        tables.push(runs::RUNS_TABLE.iter().map(|s| s.to_string()).collect());
    }
    println!(
        "{:<40} {:>12} {:>7} {:>10} {:>8} {:>8}",
        "table", "files", "merged", "rows", "purged", "removed"
    );
    let mut failed = 0;
    for parts in &tables {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let name = parts.join(".");
        match compact_table(&warehouse, &parts, options).await {
            Ok(None) => {}
            Ok(Some(r)) => println!(
                "{name:<40} {:>12} {:>7} {:>10} {:>8} {:>8}",
                format!("{} -> {}", r.files_before, r.files_after),
                r.files_merged,
                r.rows,
                r.deleted_rows_purged,
                r.files_removed
            ),
            Err(e) => {
                failed += 1;
                println!("{name:<40} failed");
                eprintln!("    error: {}", scrubbed(&e));
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sandbox`: serve a simulator until interrupted.
pub async fn sandbox(
    vendor: SandboxVendor,
    port: u16,
    records: usize,
    rate_limit: Option<f64>,
) -> Result<ExitCode> {
    match vendor {
        SandboxVendor::Stripe => {
            let config = tributary_stripe::sandbox::SandboxConfig {
                records,
                rate_limit,
                ..Default::default()
            };
            tributary_stripe::sandbox::serve_forever(config, port).await?;
        }
        SandboxVendor::Zendesk => {
            use tributary_zendesk::sandbox::{RateLimits, SandboxConfig};
            // Zendesk counts per minute: R requests a second is R×60 a minute for the
            // account, and the incremental exports keep Zendesk's own 10 a minute.
            let rate_limits = rate_limit
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| RateLimits::per_minute((r * 60.0).round().clamp(1.0, 1e9) as u32));
            let config = SandboxConfig {
                records,
                rate_limits,
                ..Default::default()
            };
            tributary_zendesk::sandbox::serve_forever(config, port).await?;
        }
        SandboxVendor::Salesforce => {
            if rate_limit.is_some() {
                tracing::warn!(
                    "--rate-limit is not simulated for Salesforce (its limit is the daily API budget; POST /_sandbox/limits sets it)."
                );
            }
            let config = tributary_salesforce::sandbox::SandboxConfig {
                records,
                ..Default::default()
            };
            tributary_salesforce::sandbox::serve_forever(config, port).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `demo`: simulators → local warehouse, then a look at what landed.
pub async fn demo(warehouse_dir: &str, records: usize) -> Result<ExitCode> {
    use tributary_stripe::sandbox::{SandboxConfig, StripeSandbox};
    use tributary_zendesk::sandbox::ZendeskSandbox;
    let stripe = StripeSandbox::start(
        SandboxConfig {
            records,
            ..Default::default()
        },
        0,
    )
    .await?;
    let zendesk = ZendeskSandbox::start(
        tributary_zendesk::sandbox::SandboxConfig {
            records,
            ..Default::default()
        },
        0,
    )
    .await?;
    use tributary_salesforce::sandbox::{self as sf, SalesforceSandbox};
    let salesforce = SalesforceSandbox::start(
        sf::SandboxConfig {
            records: (records / 4).max(5),
            ..Default::default()
        },
        0,
    )
    .await?;
    println!(
        "Stripe simulator on {} ({} objects per stream), Zendesk simulator on {} ({} tickets), Salesforce simulator on {}; syncing into {warehouse_dir}",
        stripe.url(),
        records,
        zendesk.url(),
        records,
        salesforce.url()
    );
    let text = format!(
        r#"
[warehouse]
url = {warehouse_dir:?}

[sources.stripe]
type = "stripe"
api_key = "{key}"
api_base = "{url}"
requests_per_second = 200

[sources.zendesk]
type = "zendesk"
subdomain = "{subdomain}"
email = "{email}"
api_token = "{token}"
api_base = "{zendesk_url}"
# The simulator has no rate limit unless asked; Zendesk's are 200 and 10 a minute.
requests_per_minute = 12000
export_requests_per_minute = 6000

[sources.salesforce]
type = "salesforce"
login_url = "{sf_url}"
client_id = "{sf_client}"
client_secret = "{sf_secret}"
refresh_token = "{sf_refresh}"
objects = ["Account", "Contact", "Opportunity", "OpportunityHistory", "Invoice__c"]
bulk_threshold = 100
bulk_poll_ms = 200
requests_per_second = 200
"#,
        key = StripeSandbox::api_key(),
        url = stripe.url(),
        subdomain = ZendeskSandbox::SUBDOMAIN,
        email = ZendeskSandbox::EMAIL,
        token = ZendeskSandbox::API_TOKEN,
        zendesk_url = zendesk.url(),
        sf_url = salesforce.url(),
        sf_client = sf::CLIENT_ID,
        sf_secret = sf::CLIENT_SECRET,
        sf_refresh = sf::REFRESH_TOKEN,
    );
    let config = config::parse(&text, Path::new("(demo)"))?;
    let mut outcomes = sync_sources(&config, None, None, false, Cancel::never()).await?;
    print_summary(&outcomes);

    // Show an incremental run: a few changes in the simulator, then only they are synced.
    let created = stripe.create(
        "customers",
        serde_json::json!({"email": "new.customer@example.com", "name": "New Customer"}),
    );
    let mut changed = vec![created["id"].as_str().unwrap_or_default().to_owned()];
    if let Some(id) = stripe.ids("customers").get(1) {
        stripe.update(
            "customers",
            id,
            serde_json::json!({"name": "Renamed Customer"}),
        );
        changed.push(id.clone());
    }
    if let Some(id) = stripe.ids("customers").last() {
        stripe.delete("customers", id);
        changed.push(format!("{id} (deleted)"));
    }
    println!();
    println!(
        "Changed customers {} in the simulator; syncing again, incrementally:",
        changed.join(", ")
    );
    let second = sync_sources(
        &config,
        Some("stripe"),
        Some("customers"),
        false,
        Cancel::never(),
    )
    .await?;
    print_summary(&second);
    outcomes.streams.extend(second.streams);
    outcomes.failed_sources.extend(second.failed_sources);

    let warehouse = Warehouse::new(&config.warehouse)?;
    let root = warehouse.root().path().to_owned();
    println!();
    println!("The tables are Delta Lake tables, one per stream, under {root}stripe/.");
    println!("Query them with DuckDB, for example:");
    println!(
        "    duckdb -c \"INSTALL delta; LOAD delta; SELECT status, count(*), sum(amount)/100.0 AS total FROM delta_scan('{root}stripe/charges') GROUP BY status\""
    );
    println!("or with Python (pip install deltalake):");
    println!(
        "    python3 -c \"import deltalake; print(deltalake.QueryBuilder().register('c', deltalake.DeltaTable('{root}stripe/customers')).execute('select count(*) from c').read_all())\""
    );
    println!("Zendesk's tables are under {root}zendesk/, custom ticket fields as columns, e.g.:");
    println!(
        "    duckdb -c \"INSTALL delta; LOAD delta; SELECT custom_product, status, count(*) FROM delta_scan('{root}zendesk/tickets') GROUP BY ALL ORDER BY ALL\""
    );
    println!(
        "Salesforce objects landed under {root}salesforce/ (e.g. {root}salesforce/opportunity_history, and the custom object {root}salesforce/invoice__c)."
    );
    println!(
        "Every run is logged in the table {root}_tributary/sync_runs; `tributary state` shows the cursors."
    );
    stripe.shutdown().await;
    zendesk.shutdown().await;
    salesforce.shutdown().await;
    Ok(run_exit_code(&outcomes))
}

/// A cancellation that fires on SIGTERM or SIGINT.
fn cancel_on_signal() -> Cancel {
    let (handle, cancel) = Cancel::new();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("Signal received; finishing the current commits, then stopping.");
        handle.cancel();
    });
    cancel
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
