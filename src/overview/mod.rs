//! The Source Overview, as Segment shows one for every source: how many events (per event
//! type and, for tracks, event name) or records (per collection) each source landed over a
//! time range, against the previous period of the same length, with a volume chart.
//!
//! - [`volume`]: the per-minute volume table the syncs (and the collector) append to.
//! - [`range`]: the time picker's ranges, the previous period, the chart's buckets.
//! - [`report`]: the breakdown, and the text `tributary overview` prints.
//! - [`web`]: the self-contained web page (`tributary overview --listen`, and `serve`).

pub mod range;
pub mod report;
pub mod volume;
pub mod web;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};

use crate::config;
use crate::warehouse::Warehouse;
use report::SourceKind;

/// The sources of a config, in its order, with what they send: cloud-app sources and
/// reverse-ETL sources (records), then event-stream sources (events).
pub fn configured_sources(config: &config::Loaded) -> Vec<(String, SourceKind)> {
    config
        .sources
        .iter()
        .map(|s| (s.name.clone(), SourceKind::Records))
        .chain(
            config
                .retl
                .iter()
                .map(|s| (s.name.clone(), SourceKind::Records)),
        )
        .chain(
            config
                .events
                .iter()
                .map(|s| (s.name.clone(), SourceKind::Events)),
        )
        .collect()
}

/// `overview`: prints the breakdown of every source (or `source`) over `range`; with
/// `listen`, serves the web page on that address instead until SIGTERM/SIGINT.
pub async fn command(
    config_path: &Path,
    source: Option<&str>,
    range: &str,
    listen: Option<SocketAddr>,
) -> Result<ExitCode> {
    let config = config::load(config_path)?;
    let warehouse = Warehouse::new(&config.warehouse)?;
    let sources = configured_sources(&config);
    if let Some(addr) = listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow!("cannot listen on {addr} (--listen): {e}"))?;
        let bound = listener.local_addr()?;
        // The first line of output: scripts (and the tests) read the address from it.
        println!("Source Overview at http://{bound}/");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tracing::info!(address = %bound, "Serving the Source Overview.");
        axum::serve(listener, web::router(warehouse, sources))
            .with_graceful_shutdown(crate::cli::wait_for_signal())
            .await
            .map_err(|e| anyhow!("serving the Source Overview on {bound}: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let range = range::TimeRange::parse(range, chrono::Utc::now())?;
    let overview = report::build(&warehouse, &sources, &range, source).await?;
    print!("{}", report::text(&overview));
    Ok(ExitCode::SUCCESS)
}
