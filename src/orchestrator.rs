//! One sync run: the selected sources are built and discovered, each stream is synced
//! (at most `sync.concurrency` of a source at once), tracking messages are delivered after
//! a stream's commits, the run is recorded in the run log, and a summary is printed. Used
//! by `sync`, the scheduler of `run`, and `demo`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use futures::{FutureExt, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{EXIT_DEFERRED, EXIT_ERROR};
use crate::config::Loaded;
use crate::engine::{self, Cancel, Status, StreamJob, StreamOutcome, TrackingOutcome};
use crate::lease::Acquired;
use crate::logging::{progress_bars, scrubbed};
use crate::registry::{self, BuiltSource, SourceFailure};
use crate::runs;
use crate::tracking::outbox::Outbox;
use crate::warehouse::Warehouse;

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
pub fn run_exit_code(run: &RunOutcome) -> ExitCode {
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
    if stream.is_some() && source.is_none() && config.sources.len() + config.retl.len() > 1 {
        bail!("--stream needs --source when several sources are configured");
    }
    // Reverse-ETL sources run after the cloud-app ones; `--stream` names a model there.
    let retl = config.selected_retl(source);
    let cloud = config.selects_cloud(source);
    if let (Some(model), [only]) = (stream, retl.as_slice()) {
        only.model(model)
            .map_err(|e| anyhow!("{}: {e}", config.path.display()))?;
    }
    // Config errors first: a source's bad option must stop the run before the warehouse
    // is touched.
    let prepared = match cloud {
        true => registry::prepare_all(config, source)?,
        false => Vec::new(),
    };
    let warehouse = Warehouse::new(&config.warehouse)?;
    // Before anything is written: a store whose commits would not be atomic stops the run.
    warehouse.check_conditional_put().await?;
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
    // Before any stream starts: the run log stands in for the volume of runs that began
    // before the volume table existed, and only those.
    if let Err(e) = crate::overview::volume::ensure(&warehouse).await {
        tracing::warn!(error = %format!("{e:#}"), "Could not create the volume table; the Source Overview will not count this run.");
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
    if !retl.is_empty() {
        let leases = match config.sync.leases {
            true => Some(crate::lease::for_warehouse(
                &warehouse,
                config.sync.lease_seconds,
            )?),
            false => None,
        };
        for r in retl {
            if cancel.is_cancelled() {
                break;
            }
            let ran =
                crate::retl::run_source(&warehouse, leases.as_ref(), r, stream, &run_id, &cancel)
                    .await?;
            crate::overview::volume::record(&warehouse, &ran).await;
            outcomes.extend(ran);
        }
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
    let leases = match config.sync.leases {
        true => Some(crate::lease::for_warehouse(
            warehouse,
            config.sync.lease_seconds,
        )?),
        false => None,
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
            let mut job = StreamJob {
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
                lease: None,
            };
            let leases = leases.as_ref();
            async move {
                // The stream and its outbox are this worker's only under its lease.
                let acquired = match leases {
                    Some(leases) => leases.acquire(name, &schema.name).await.map(Some),
                    None => Ok(None),
                };
                let lease = match acquired {
                    Ok(None) => None,
                    Ok(Some(Acquired::Taken(lease))) => Some(lease),
                    Ok(Some(Acquired::Held(holder))) => {
                        tracing::info!(source = %name, stream = %schema.name, owner = %holder.owner, expires_at = %holder.expires_at, "Another worker holds the stream's lease; skipping it.");
                        if let Some(pb) = &job.progress {
                            pb.finish_with_message("leased");
                        }
                        let outcome = StreamOutcome::new(name, &schema.name, Status::Leased(holder.describe()));
                        crate::metrics::stream_finished(&outcome);
                        return outcome;
                    }
                    Err(e) => {
                        let e = e.context(format!("taking the lease on {name}.{}", schema.name));
                        tracing::error!(source = %name, stream = %schema.name, error = %scrubbed(&e), "Could not take the stream's lease; not synced.");
                        if let Some(pb) = &job.progress {
                            pb.finish_with_message("failed");
                        }
                        return StreamOutcome::new(name, &schema.name, Status::Failed(scrubbed(&e)));
                    }
                };
                let check = lease.as_ref().map(|lease| {
                    crate::metrics::lease_held(name, &schema.name, 1);
                    lease.check()
                });
                job.lease = check.clone();
                let mut outcome = engine::sync_stream(job).await;
                outcome.worker = lease.as_ref().map(|lease| lease.record().owner);
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
                        check.as_ref(),
                    )
                    .await;
                    if let Err(e) = &delivered {
                        tracing::warn!(source = %name, stream = %outcome.stream, error = %format!("{e:#}"), "Could not read the tracking outbox; it stays for the next run.");
                    }
                    outcome.tracking = Some(TrackingOutcome::of(
                        &delivered,
                        client.accepts_any_write_key(),
                    ));
                }
                if let Some(lease) = lease {
                    lease.release().await;
                    crate::metrics::lease_held(name, &schema.name, -1);
                }
                crate::metrics::stream_finished(&outcome);
                // One small append per stream run, after its commits.
                crate::overview::volume::record(warehouse, std::slice::from_ref(&outcome)).await;
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

pub fn print_summary(run: &RunOutcome) {
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
        if let Some(changes) = &o.changes {
            println!("    reverse ETL: {}", changes.line());
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
        if let Status::Leased(holder) = &o.status {
            println!("    leased: another worker syncs it now, {holder}; not synced by this run");
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
    let leased = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Leased(_)))
        .count();
    if leased > 0 {
        println!(
            "{leased} streams leased: another worker holds their lease and syncs them; not a \
             failure (exit code 0)"
        );
    }
}
