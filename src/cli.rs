//! The commands: check, discover, sync, run, state, lease release, compact (`sandbox` and
//! `demo` are in [`crate::demo`], one sync run in [`crate::orchestrator`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};

use crate::config;
use crate::engine::{Cancel, Status};
use crate::lease::{HandRelease, Leases};
use crate::logging::scrubbed;
use crate::orchestrator::{print_summary, run_exit_code, sync_sources};
use crate::registry::{self, SourceFailure};
use crate::runs;
use crate::tracking::outbox::Outbox;
use crate::warehouse::compact::{CompactOptions, compact_table};
use crate::warehouse::{Warehouse, read_position};

/// Exit code: something failed (a stream, a check, the config).
pub const EXIT_ERROR: u8 = 1;

/// Exit code: nothing failed, but some streams were deferred (e.g. the vendor's daily API
/// budget is nearly spent); what ran is committed and the next run picks up the rest.
pub const EXIT_DEFERRED: u8 = 3;

/// `check`: builds every source and asks each for one cheap authenticated call, then for
/// its streams. Sources are checked at once; one that fails is a FAILED line and the
/// others are still checked. A source with tracking gets one more line for its collector
/// (see [`crate::tracking::check_line`]): Segment's cannot be asked about a write key, so
/// the line says where to confirm delivery; any other is sent an empty batch, and a
/// refused write key fails the check. SIGTERM/SIGINT stops every check in flight.
pub async fn check(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    Warehouse::new(&config.warehouse)?;
    let prepared = match config.selects_cloud(only) {
        true => registry::prepare_all(&config, only)?,
        false => Vec::new(),
    };
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
    // Reverse-ETL sources: every model's query or table is opened and its columns checked
    // against its id and mapping (nothing is read past that).
    for source in config.selected_retl(only) {
        let (line, source_failed) = tokio::select! {
            biased;
            _ = cancel.cancelled() => ("cancelled".to_owned(), true),
            r = crate::retl::check(source) => r,
        };
        println!("{:<20} {line}", source.name);
        failed += usize::from(source_failed);
        if source.tracking.enabled {
            let (line, collector_failed) = crate::tracking::check_line(&source.tracking).await;
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

/// `run`: the scheduler daemon. A config error stops it at once. Each source is discovered
/// at start so a broken one shows now, not at its first slot: it is a FAILED line, the
/// daemon still runs every source on its schedule (a vendor that comes back is synced),
/// and it exits with 1 when stopped.
///
/// With `metrics`, serves Prometheus metrics on that address (see [`crate::metrics`]):
/// `/readyz` answers 200 once the sources are discovered and the scheduler runs.
pub async fn run(config_path: &Path, metrics: Option<std::net::SocketAddr>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let prepared = match config.selects_cloud(None) {
        true => registry::prepare_all(&config, None)?,
        false => Vec::new(),
    };
    Warehouse::new(&config.warehouse)?;
    let cancel = cancel_on_signal();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = metrics {
        crate::metrics::serve(addr, Arc::clone(&ready), cancel.clone()).await?;
    }
    let (_, failures) = registry::discover_all(&config, prepared, None, &cancel).await;
    for f in &failures {
        println!("{:<20} {}", f.source, f.describe());
    }
    if cancel.is_cancelled() {
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    crate::scheduler::run(Arc::new(config), cancel).await?;
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

/// `state`: each stream's committed cursor and last commit, and its lease while one is
/// live (or expired without being released: a worker that died).
pub async fn state(config_path: &Path, only: Option<&str>) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    let leases = crate::lease::for_warehouse(&warehouse, config.sync.lease_seconds)?;
    println!(
        "{:<32} {:>8} {:>5} {:<26} cursor",
        "stream", "version", "seq", "last commit"
    );
    let prepared = match config.selects_cloud(only) {
        true => registry::prepare_all(&config, only)?,
        false => Vec::new(),
    };
    let cancel = cancel_on_signal();
    let (sources, failures) = registry::discover_all(&config, prepared, None, &cancel).await;
    for source in config.selected_retl(only) {
        for line in crate::retl::state_lines(&warehouse, source).await? {
            println!("{line}");
        }
    }
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
            if let Some(line) = lease_line(&leases, &s.config.name, &stream.name).await? {
                println!("    {line}");
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

/// The `state` line of a stream's lease: live, or expired without release; `None` when
/// free.
async fn lease_line(leases: &Leases, source: &str, stream: &str) -> Result<Option<String>> {
    let Some(current) = leases.current(source, stream).await? else {
        return Ok(None);
    };
    Ok(match current.record {
        Err(reason) => Some(format!("lease: unreadable: {reason}")),
        Ok(r) if r.released => None,
        Ok(r) if r.is_live(chrono::Utc::now()) => Some(format!(
            "lease: live, {} (since {})",
            r.describe(),
            r.acquired_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        Ok(r) => Some(format!(
            "lease: expired at {}, not released by {} (a worker that stopped; the next sync takes it over)",
            r.expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.owner
        )),
    })
}

/// `lease release`: frees a stream's lease by hand. A live lease is refused (exit 1, naming
/// its holder) unless `force`.
pub async fn lease_release(
    config_path: &Path,
    source: &str,
    stream: &str,
    force: bool,
) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    config.source(source)?;
    crate::lease::check_names(source, stream)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    let leases = crate::lease::for_warehouse(&warehouse, config.sync.lease_seconds)?;
    match leases.release_by_hand(source, stream, force).await? {
        HandRelease::NoLease => println!("{source}.{stream}: no lease to release"),
        HandRelease::WasFree(r) if r.released => {
            println!(
                "{source}.{stream}: the lease is free already (released by {})",
                r.owner
            )
        }
        HandRelease::WasFree(r) => println!(
            "{source}.{stream}: released the lease, which had expired at {} ({})",
            r.expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.owner
        ),
        HandRelease::Forced(r) => println!(
            "{source}.{stream}: released a live lease by force, it was {}; if that worker still runs, it stops before its next commit",
            r.describe()
        ),
    }
    Ok(ExitCode::SUCCESS)
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
    if only_stream.is_some()
        && only_source.is_none()
        && config.sources.len() + config.retl.len() + config.events.len() > 1
    {
        bail!("--stream needs --source when several sources are configured");
    }
    // Compaction commits too: the same guard as a sync's.
    warehouse.check_conditional_put().await?;
    // Event-stream sources' tables too: a collector adds a file to each table it lands in
    // every round. A collector commit that meets a compaction's is planned again, as a
    // sync's is.
    let sources: Vec<&str> = match only_source {
        Some(name) if config.retl_source(name).is_some() => Vec::new(),
        Some(name) if config.events.iter().any(|e| e.name == name) => vec![name],
        Some(name) => vec![config.source(name)?.name.as_str()],
        None => config
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(config.events.iter().map(|e| e.name.as_str()))
            .collect(),
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
    // Reverse-ETL models' state tables (`--stream` names a model), once they exist.
    for source in config.selected_retl(only_source) {
        for model in &source.models {
            let parts = [
                "_tributary",
                "retl",
                source.name.as_str(),
                model.name.as_str(),
            ];
            if only_stream.is_none_or(|s| s == model.name)
                && warehouse.open(&parts).await?.is_some()
            {
                tables.push(parts.iter().map(|p| p.to_string()).collect());
            }
        }
    }
    if let Some(stream) = only_stream
        && tables.is_empty()
    {
        bail!(
            "there is no table for stream `{stream}` of source `{}` in {} (has it been synced?)",
            match only_source {
                Some(name) => name.to_owned(),
                None => config
                    .sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .chain(config.retl.iter().map(|s| s.name.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            warehouse.root()
        );
    }
    if only_source.is_none() {
        tables.push(runs::RUNS_TABLE.iter().map(|s| s.to_string()).collect());
        // The Source Overview's volume table: one small file per stream run.
        let volume = crate::overview::volume::VOLUME_TABLE;
        tables.push(volume.iter().map(|s| s.to_string()).collect());
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

/// `retl preview`: what the next run of a model would send, without sending or recording
/// anything: the counts, then up to `limit` calls as JSON, one per line.
pub async fn retl_preview(
    config_path: &Path,
    source: &str,
    model: &str,
    limit: usize,
) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let Some(retl) = config.retl_source(source) else {
        let names: Vec<&str> = config.retl.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "{}: `{source}` is not a reverse-ETL source (type \"postgres\" or \"delta\"); {}",
            config.path.display(),
            match names.is_empty() {
                true => "none is configured".to_owned(),
                false => format!("configured: {}", names.join(", ")),
            }
        );
    };
    let model = retl
        .model(model)
        .map_err(|e| anyhow!("{}: {e}", config.path.display()))?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    let cancel = cancel_on_signal();
    let preview = crate::retl::preview(&warehouse, retl, model, limit, &cancel).await?;
    println!(
        "{source}.{}: {} would be sent (preview: nothing sent, nothing recorded)",
        model.name,
        preview.changes.line()
    );
    for message in &preview.sample {
        println!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `connector check-spec FILE`: validates a declarative spec and its schemas; prints the
/// streams it declares, or the first mistake (file, stream, key) and exits 1.
pub fn check_spec(file: &Path) -> ExitCode {
    match tributary_declarative::load_file(file) {
        Ok(vendor) => {
            let spec = &vendor.spec.spec;
            println!(
                "{}: {} ({} streams): OK",
                file.display(),
                spec.vendor,
                spec.streams.len()
            );
            for s in &spec.streams {
                let how = match &s.incremental {
                    Some(i) => format!("incremental on `{}`", i.cursor_field),
                    None => "full snapshot".to_owned(),
                };
                println!("  {:<24} {how}", s.name);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
