//! `sandbox` and `demo`: the vendor simulators the registry lists, served standalone or
//! synced into a local warehouse to show what lands.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions};

use crate::cli::wait_for_signal;
use crate::config;
use crate::engine::Cancel;
use crate::orchestrator::{print_summary, run_exit_code, sync_sources};
use crate::registry;
use crate::warehouse::Warehouse;

/// The `sandbox` argument that serves every simulator.
pub const ALL: &str = "all";

/// Where `demo` leaves the config of the simulators it used.
pub const DEMO_CONFIG: &str = "tributary.demo.toml";

/// The names `sandbox` accepts: every vendor with a simulator, and `all`.
pub fn sandbox_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = registry::vendors()
        .iter()
        .map(|v| v.simulator.vendor)
        .collect();
    names.push(ALL);
    names
}

/// The simulators `name` selects, each with its port: its default (`port` unset), `port`,
/// or for `all`, `port + i` for the i-th vendor of the registry.
fn selected(name: &str, port: Option<u16>) -> Result<Vec<(SimulatorFactory, u16)>> {
    let factories: Vec<SimulatorFactory> = registry::vendors()
        .into_iter()
        .map(|v| v.simulator)
        .collect();
    if name == ALL {
        return factories
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let port = match port {
                    None => f.default_port,
                    Some(base) => base
                        .checked_add(i as u16)
                        .context("--port is too high for every simulator to follow it")?,
                };
                Ok((f, port))
            })
            .collect();
    }
    let f = factories
        .into_iter()
        .find(|f| f.vendor == name)
        .with_context(|| {
            format!(
                "no simulator called `{name}`; choose one of {}",
                sandbox_names().join(", ")
            )
        })?;
    Ok(vec![(f, port.unwrap_or(f.default_port))])
}

/// `sandbox`: serve one simulator (or `all`) until interrupted. `all` seeds each the way
/// `demo` does, so it serves again what a demo synced.
pub async fn sandbox(
    name: &str,
    port: Option<u16>,
    records: usize,
    rate_limit: Option<f64>,
    latency_ms: u64,
    latency_jitter_ms: Option<u64>,
) -> Result<ExitCode> {
    let mut running: Vec<(SimulatorFactory, Box<dyn Simulator>)> = Vec::new();
    for (factory, port) in selected(name, port)? {
        let records = if name == ALL {
            (factory.demo_records)(records)
        } else {
            records
        };
        let options = SimulatorOptions {
            records,
            rate_limit,
            latency_ms,
            latency_jitter_ms,
            port,
            ..SimulatorOptions::default()
        };
        let simulator = (factory.start)(options).await.with_context(|| {
            format!(
                "cannot serve the {} simulator on port {port}",
                factory.vendor
            )
        })?;
        running.push((factory, simulator));
    }
    for (factory, simulator) in &running {
        tracing::info!(vendor = factory.vendor, url = %simulator.url(), "Simulator listening.");
        println!(
            "# {} simulator on {}; a source that syncs it:",
            factory.vendor,
            simulator.url()
        );
        println!(
            "[sources.{}]\n{}",
            factory.vendor,
            simulator.source_config()
        );
    }
    wait_for_signal().await;
    for (_, simulator) in running {
        simulator.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The first port of a run of `n` free ports on 127.0.0.1 among the usual ones (12111,
/// 12211, ...), so `sandbox all --port P` can serve the demo's simulators again.
fn free_base_port(n: u16) -> Option<u16> {
    (0..9u16)
        .map(|k| 12111 + 100 * k)
        .find(|&base| (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
}

/// `demo`: every simulator → a local warehouse, then an incremental run of a few changes,
/// and how to query what landed and go on from here.
/// The reverse-ETL model the demo previews: the synced Stripe customers, as identify calls.
const DEMO_RETL: &str = r#"
[sources.lake]
type = "delta"

[sources.lake.tracking]
write_key = "demo-write-key"

[sources.lake.models.customers]
table = "stripe/customers"
columns = ["id", "email", "name", "is_deleted"]
filter = "email IS NOT NULL AND is_deleted = false"
id = "id"

[sources.lake.models.customers.mapping]
call = "identify"
user_id = "id"
traits = ["email", "name"]
"#;

/// Shows what a reverse-ETL model over the demo's Stripe customers would send (a preview:
/// nothing is sent or recorded).
async fn retl_preview(config: &config::Loaded, warehouse_dir: &str) {
    let text = format!("[warehouse]\nurl = {:?}\n{DEMO_RETL}", config.warehouse.url);
    let result = async {
        let loaded = config::parse(&text, Path::new("(demo)"))?;
        let source = &loaded.retl[0];
        let warehouse = Warehouse::new(&loaded.warehouse)?;
        crate::retl::preview(&warehouse, source, &source.models[0], 2, &Cancel::never()).await
    }
    .await;
    println!();
    match result {
        Ok(preview) => {
            println!(
                "Reverse ETL: a `delta` model over {warehouse_dir}/stripe/customers would send {} (preview; see README \"Reverse ETL sources\"), e.g.:",
                preview.changes.line()
            );
            for call in preview.sample {
                println!("    {call}");
            }
        }
        Err(e) => println!("Reverse ETL preview failed: {e:#}"),
    }
}

pub async fn demo(warehouse_dir: &str, records: usize) -> Result<ExitCode> {
    let factories: Vec<SimulatorFactory> = registry::vendors()
        .into_iter()
        .map(|v| v.simulator)
        .collect();
    let base = free_base_port(factories.len() as u16);
    let mut running: Vec<(SimulatorFactory, Box<dyn Simulator>)> = Vec::new();
    // Whether every simulator got its planned port (and so can be served again).
    let mut replayable = base.is_some();
    for (i, factory) in factories.into_iter().enumerate() {
        let planned = base.map_or(0, |b| b + i as u16);
        let options = |port| SimulatorOptions {
            records: (factory.demo_records)(records),
            port,
            ..SimulatorOptions::default()
        };
        let simulator = match (factory.start)(options(planned)).await {
            Ok(s) => s,
            // Taken since we looked: any free port will do for this run.
            Err(_) if planned != 0 => {
                replayable = false;
                (factory.start)(options(0)).await?
            }
            Err(e) => return Err(e.into()),
        };
        running.push((factory, simulator));
    }
    let urls: Vec<String> = running
        .iter()
        .map(|(f, s)| format!("{} on {}", f.vendor, s.url()))
        .collect();
    println!(
        "Simulators: {} ({records} records per stream); syncing into {warehouse_dir}",
        urls.join(", ")
    );
    let mut text = format!(
        "# Written by `tributary demo`: its simulators as sources.\n[warehouse]\nurl = {warehouse_dir:?}\n"
    );
    for (factory, simulator) in &running {
        text.push_str(&format!(
            "\n[sources.{}]\n{}",
            factory.vendor,
            simulator.source_config()
        ));
    }
    let config = config::parse(&text, Path::new("(demo)"))?;
    let mut outcomes = sync_sources(&config, None, None, false, Cancel::never()).await?;
    print_summary(&outcomes);

    // An incremental run: a few changes in a simulator, then only they are synced.
    for (factory, simulator) in &running {
        let Some((stream, what)) = simulator.demo_changes().await else {
            continue;
        };
        println!();
        println!("{what}; syncing again, incrementally:");
        let again = sync_sources(
            &config,
            Some(factory.vendor),
            Some(&stream),
            false,
            Cancel::never(),
        )
        .await?;
        print_summary(&again);
        outcomes.streams.extend(again.streams);
        outcomes.failed_sources.extend(again.failed_sources);
    }

    let warehouse = Warehouse::new(&config.warehouse)?;
    let root = warehouse.root().path().to_owned();
    println!();
    for (factory, simulator) in &running {
        for line in simulator.demo_hints(&root, factory.vendor) {
            println!("{line}");
        }
    }
    println!(
        "Every run is logged in the table {root}_tributary/sync_runs; `tributary state` shows the cursors."
    );
    retl_preview(&config, warehouse_dir).await;
    let written = std::fs::write(DEMO_CONFIG, &text);
    println!();
    match (written, base) {
        (Ok(()), Some(base)) if replayable => {
            println!(
                "The demo's config is in ./{DEMO_CONFIG}. To go on, serve the simulators again:"
            );
            println!("    tributary sandbox {ALL} --port {base} --records {records}");
            println!("and in another terminal, for example:");
            println!("    tributary --config {DEMO_CONFIG} state");
            println!("    tributary --config {DEMO_CONFIG} sync");
        }
        (Ok(()), _) => {
            println!(
                "The demo's config is in ./{DEMO_CONFIG}; its simulators' ports were taken, so serve each again with `tributary sandbox <vendor> --port <its port>` before using it."
            );
        }
        (Err(e), _) => {
            tracing::warn!(error = %e, "Could not write {DEMO_CONFIG}.");
        }
    }
    for (_, simulator) in running {
        simulator.shutdown().await;
    }
    Ok(run_exit_code(&outcomes))
}
