//! Event-stream sources: `tributary serve`, a Segment-compatible collector whose 200 is a
//! durability promise, and the `sources` commands that create and list sources.
//!
//! The path of a message: [`server`] checks it (Segment's rules, [`message`]) and hands it
//! to the [`spool`], which fsyncs it (many requests share one fsync) before the 200; the
//! [`landing`] committer lands the spool into Delta tables in Segment's warehouse schema,
//! each table commit carrying the spool position it reached, so a killed collector
//! resumes from its tables and lands every acknowledged message exactly once.

pub mod config;
pub mod landing;
pub mod message;
pub mod server;
pub mod spool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::warehouse::Warehouse;

/// `serve`: collects messages for the configured event-stream sources until SIGTERM or
/// SIGINT, then stops taking requests, lands what the spool holds and exits.
///
/// With `metrics`, serves Prometheus metrics on that address (see [`crate::metrics`]):
/// `/readyz` answers 200 while the collector takes requests, 503 before and while it
/// stops.
pub async fn serve(
    config_path: &Path,
    listen: Option<&str>,
    spool_dir: Option<&Path>,
    metrics: Option<SocketAddr>,
) -> Result<ExitCode> {
    let config = crate::config::load(config_path)?;
    if config.events.is_empty() {
        bail!(
            "{}: no event-stream source is configured; run `tributary sources create web --type http` to add one",
            config_path.display()
        );
    }
    let mut keys = HashMap::new();
    for source in &config.events {
        let name: Arc<str> = Arc::from(source.name.as_str());
        for key in &source.write_keys {
            if let Some(other) = keys.insert(key.expose().to_owned(), name.clone())
                && other != name
            {
                bail!(
                    "{}: sources `{other}` and `{}` share a write key; each key must belong to one source",
                    config_path.display(),
                    source.name
                );
            }
        }
    }
    let warehouse = Warehouse::new(&config.warehouse)?;
    warehouse.check_conditional_put().await?;
    let spool_dir: PathBuf = spool_dir
        .map(Path::to_owned)
        .unwrap_or_else(|| config.serve.spool.clone());
    let spool = spool::Spool::open(&spool_dir)?;
    let collector_id = spool.collector_id.clone();
    let progress = Arc::new(spool::Progress::default());
    let (appender, reader) = spool.start_writer(progress.clone());
    let mut committer = landing::Committer::new(
        warehouse.clone(),
        collector_id.clone(),
        spool_dir.clone(),
        config.serve.clone(),
        &config.sync,
        reader,
        progress.clone(),
    );
    // The Source Overview's volume table counts what each round landed.
    let (on_volume, volume) = crate::overview::volume::Recorder::start(warehouse.clone());
    committer.on_volume = Some(on_volume);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (metrics_stop, metrics_cancel) = crate::engine::Cancel::new();
    if let Some(addr) = metrics {
        let bound = crate::metrics::serve(addr, ready.clone(), metrics_cancel).await?;
        println!("Metrics on http://{bound}/metrics");
        let progress = progress.clone();
        crate::metrics::collector_backlog(move || progress.pending());
    }
    let committing = tokio::spawn(committer.run(stop_rx));

    let shared = Arc::new(server::Shared {
        keys,
        appender,
        progress: progress.clone(),
        max_pending: config.serve.max_pending,
        body_timeout: Duration::from_secs(config.serve.body_timeout_seconds),
    });
    let listen = listen.unwrap_or(&config.serve.listen);
    let addr: SocketAddr = listen.parse().with_context(|| {
        format!("`{listen}` is not an address to listen on (e.g. 127.0.0.1:8088)")
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // Installed before saying so on stdout: a SIGTERM right after must stop gracefully.
    let shutdown = shutdown_signal()?;
    // Ready before saying so: a probe right after the line below must not get 503 (the
    // bound listener queues connections until the server below takes them).
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(address = %bound, collector = %collector_id, spool = %spool_dir.display(), "Collector listening.");
    println!("Collector listening on http://{bound}");
    let sources: Vec<&str> = config.events.iter().map(|s| s.name.as_str()).collect();
    println!("Sources: {}", sources.join(", "));
    println!(
        "Source Overview at http://{bound}{}",
        crate::overview::web::PATH
    );
    let app = server::router(shared).nest(
        crate::overview::web::PATH,
        crate::overview::web::router(warehouse, crate::overview::configured_sources(&config)),
    );
    let stopping = {
        let ready = ready.clone();
        async move {
            shutdown.await;
            ready.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stopping)
        .await
        .context("the collector's HTTP server failed")?;
    tracing::info!(
        pending = progress.pending(),
        "Stopping: landing what the spool holds."
    );
    let _ = stop_tx.send(true);
    let _ = committing.await;
    volume.finish().await;
    metrics_stop.cancel();
    let left = progress.pending();
    if left > 0 {
        eprintln!(
            "{left} messages stay in the spool {}; the next `serve` lands them",
            spool_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(crate::cli::wait_for_signal())
    }
}

/// One line of `sources list`.
struct Listed {
    name: String,
    kind: String,
    keys: String,
    schedule: String,
}

/// `sources list`: every source with its type, its write keys' first characters and its
/// schedule.
pub fn list(config_path: &Path) -> Result<ExitCode> {
    let config = crate::config::load(config_path)?;
    let mut rows = Vec::new();
    for s in &config.sources {
        rows.push(Listed {
            name: s.name.clone(),
            kind: s.kind.clone(),
            keys: s
                .tracking
                .as_ref()
                .map(|t| format!("(sends with {})", config::key_prefix(t.write_key.expose())))
                .unwrap_or_else(|| "-".to_owned()),
            schedule: s.schedule.text.clone(),
        });
    }
    for s in &config.retl {
        rows.push(Listed {
            name: s.name.clone(),
            kind: match s.connection {
                crate::retl::config::Connection::Postgres(_) => "postgres".to_owned(),
                crate::retl::config::Connection::Delta(_) => "delta".to_owned(),
            },
            keys: format!(
                "(sends with {})",
                config::key_prefix(s.tracking.write_key.expose())
            ),
            schedule: s.schedule.text.clone(),
        });
    }
    for s in &config.events {
        rows.push(Listed {
            name: s.name.clone(),
            kind: s.kind.clone(),
            keys: s
                .write_keys
                .iter()
                .map(|k| config::key_prefix(k.expose()))
                .collect::<Vec<_>>()
                .join(", "),
            schedule: "- (event stream: `tributary serve`)".to_owned(),
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    println!(
        "{:<20} {:<12} {:<24} SCHEDULE",
        "SOURCE", "TYPE", "WRITE KEY"
    );
    for r in rows {
        println!(
            "{:<20} {:<12} {:<24} {}",
            r.name, r.kind, r.keys, r.schedule
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sources create NAME --type TYPE`: adds an event-stream source with a new write key to
/// the config file (appended at its end, leaving the rest of the file as it was), or
/// prints the section to paste when the file cannot be changed. Refuses a name that
/// exists: a source's type cannot change (as in Segment), so a different type needs a new
/// source.
pub fn create(config_path: &Path, name: &str, kind: &str) -> Result<ExitCode> {
    if !config::KINDS.contains(&kind) {
        bail!(
            "`--type {kind}`: `sources create` makes event-stream sources, of type {}; cloud-app and reverse-ETL sources are written in the config by hand",
            config::KINDS.join(", ")
        );
    }
    if !crate::warehouse::is_path_segment(name) {
        bail!(
            "`{name}`: a source name must be lowercase letters, digits, `_` or `-` (it becomes a folder of the warehouse)"
        );
    }
    let text = match std::fs::read_to_string(config_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("cannot read the config file {}: {e}", config_path.display()),
    };
    if !text.is_empty() {
        let doc: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", config_path.display()))?;
        if let Some(existing) = doc.get("sources").and_then(|s| s.get(name)) {
            let existing_kind = existing.get("type").and_then(|t| t.as_str()).unwrap_or("?");
            if existing_kind != kind {
                bail!(
                    "a source `{name}` of type \"{existing_kind}\" exists; a source's type cannot be changed once created. Create a new source with another name (e.g. `tributary sources create {name}-{kind} --type {kind}`)"
                );
            }
            bail!(
                "a source `{name}` of type \"{kind}\" exists already; `tributary sources list` shows its keys"
            );
        }
    }
    let key = config::new_write_key();
    let section = format!(
        "\n[sources.{name}]\n# An event-stream source: `tributary serve` collects its messages (Segment's Tracking API).\ntype = \"{kind}\"\n# Write keys that authenticate its messages (secrets: prefer \"${{ENV_VAR}}\" references).\nwrite_keys = [\"{key}\"]\n"
    );
    let mut new_text = text.clone();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&section);
    // A syntax check only: the rest of the file may refer to variables not set here.
    let parses = toml::from_str::<toml::Table>(&new_text).is_ok();
    let written = parses
        && std::fs::write(config_path, &new_text)
            .map_err(|e| eprintln!("cannot write {}: {e}", config_path.display()))
            .is_ok();
    if written {
        println!(
            "Added source `{name}` (type \"{kind}\") to {}.",
            config_path.display()
        );
    } else {
        println!(
            "Could not add the source to {} in place; paste this section into it:\n{section}",
            config_path.display()
        );
    }
    println!("Write key: {key}");
    println!("Keep it secret; `tributary sources list` shows only its first characters.");
    Ok(ExitCode::SUCCESS)
}
