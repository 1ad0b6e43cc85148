//! `sandbox` and `demo`: the vendor simulators the registry lists, served standalone or
//! synced into a local warehouse to show what lands.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
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

/// The demo's event-stream source, which its collector fills.
pub const DEMO_EVENTS: &str = "web";

/// The spool of the demo's collector (relative to where `demo` runs).
pub const DEMO_SPOOL: &str = "tributary-demo-spool";

/// How many rounds of [`DEMO_BATCH`] the demo sends through its collector.
pub const DEMO_ROUNDS: usize = 6;

/// One round of the demo's messages: (call, event name, how many); 50 messages.
pub const DEMO_BATCH: [(&str, Option<&str>, usize); 7] = [
    ("track", Some("Product Viewed"), 25),
    ("track", Some("Order Completed"), 10),
    ("identify", None, 6),
    ("page", None, 5),
    ("screen", None, 2),
    ("group", None, 1),
    ("alias", None, 1),
];

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

/// The limits of `tributary sandbox`'s simulators.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Requests per second to the account (`--rate-limit`).
    pub rate_limit: Option<f64>,
    /// Requests per second to one endpoint, for vendors that limit endpoints
    /// (`--endpoint-rate-limit`).
    pub endpoint_rate_limit: Option<f64>,
    /// Requests answered at once, for vendors with such a limit (`--concurrency-limit`).
    pub concurrency_limit: Option<usize>,
}

/// `sandbox`: serve one simulator (or `all`) until interrupted. `all` seeds each the way
/// `demo` does, so it serves again what a demo synced.
pub async fn sandbox(
    name: &str,
    port: Option<u16>,
    records: usize,
    limits: Limits,
    latency_ms: u64,
    latency_jitter_ms: Option<u64>,
) -> Result<ExitCode> {
    let selected = selected(name, port)?;
    if limits.endpoint_rate_limit.is_some() && !selected.iter().any(|(f, _)| f.endpoint_limits) {
        bail!(
            "--endpoint-rate-limit: the {name} simulator has no limit per endpoint; only {} \
             limit each endpoint on its own (use --rate-limit)",
            registry::vendors()
                .into_iter()
                .filter(|v| v.simulator.endpoint_limits)
                .map(|v| v.simulator.vendor)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if limits.concurrency_limit.is_some() && !selected.iter().any(|(f, _)| f.concurrency_limits) {
        bail!(
            "--concurrency-limit: the {name} simulator has no limit on requests at once; only {} \
             have one",
            registry::vendors()
                .into_iter()
                .filter(|v| v.simulator.concurrency_limits)
                .map(|v| v.simulator.vendor)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut running: Vec<(SimulatorFactory, Box<dyn Simulator>)> = Vec::new();
    for (factory, port) in selected {
        let records = if name == ALL {
            (factory.demo_records)(records)
        } else {
            records
        };
        let options = SimulatorOptions {
            records,
            rate_limit: limits.rate_limit,
            concurrency_limit: limits
                .concurrency_limit
                .filter(|_| factory.concurrency_limits),
            endpoint_rate_limit: limits
                .endpoint_rate_limit
                .filter(|_| factory.endpoint_limits),
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

/// The demo's messages: [`DEMO_ROUNDS`] batches of [`DEMO_BATCH`], as Segment's libraries
/// send them (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>).
fn demo_messages() -> Vec<Vec<serde_json::Value>> {
    let now = tributary_sdk::tracking::iso8601(chrono::Utc::now());
    let mut n = 0usize;
    (0..DEMO_ROUNDS)
        .map(|_| {
            let mut batch = Vec::new();
            for (call, event, count) in DEMO_BATCH {
                for _ in 0..count {
                    n += 1;
                    let user = format!("demo-user-{}", n % 40);
                    let mut m = serde_json::json!({
                        "type": call,
                        "messageId": uuid::Uuid::new_v4().to_string(),
                        "userId": user,
                        "timestamp": now,
                    });
                    match call {
                        "track" => {
                            m["event"] = event.unwrap_or_default().into();
                            m["properties"] = serde_json::json!({"price": (n % 50) as f64 + 0.99, "sku": format!("SKU-{}", n % 7)});
                        }
                        "identify" => m["traits"] = serde_json::json!({"email": format!("{user}@example.com")}),
                        "page" | "screen" => m["name"] = "Home".into(),
                        "group" => m["groupId"] = "demo-team".into(),
                        _ => m["previousId"] = format!("anon-{n}").into(),
                    }
                    batch.push(m);
                }
            }
            batch
        })
        .collect()
}

/// Starts the collector (`tributary serve` on the demo's config, a child process on a
/// free port), sends it a few hundred messages over HTTP, stops it (SIGTERM: it lands
/// what its spool holds and appends the volume counts) and prints the Source Overview.
async fn collect_events(config: &config::Loaded) -> Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let source = config
        .events
        .iter()
        .find(|e| e.name == DEMO_EVENTS)
        .context("the demo's event-stream source")?;
    let key = source
        .write_keys
        .first()
        .context("the demo source's write key")?
        .clone();
    let exe = std::env::current_exe().context("finding the tributary binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--config", DEMO_CONFIG])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `tributary serve`")?;
    let mut lines =
        tokio::io::BufReader::new(child.stdout.take().context("serve's stdout")?).lines();
    // Its log, kept to say why if it fails.
    let mut stderr = child.stderr.take().context("serve's stderr")?;
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut url = None;
    let mut page = None;
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(u) = line.strip_prefix("Collector listening on ") {
                url = Some(u.to_owned());
            }
            if let Some(u) = line.strip_prefix("Source Overview at ") {
                page = Some(u.to_owned());
                break;
            }
        }
    })
    .await;
    let Some(url) = url.filter(|_| started.is_ok()) else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        bail!(
            "`tributary serve` did not start: {}",
            log.await.unwrap_or_default().trim()
        );
    };
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    println!(
        "Collector (`tributary serve`) on {url}; the Source Overview page at {}",
        page.as_deref().unwrap_or("-")
    );
    let client = crate::tracking::client_for(&crate::config::TrackingConfig {
        endpoint: url.clone(),
        write_key: key,
        enabled: true,
    })?;
    let mut sent = 0u64;
    for batch in demo_messages() {
        let report = client.send(&batch).await?;
        sent += report.delivered;
        if let Some(r) = report.rejected.first() {
            bail!(
                "the collector refused message {}: {}",
                r.message_id,
                r.reason
            );
        }
    }
    println!(
        "Sent {sent} messages to source `{DEMO_EVENTS}` (POST {url}/v1/batch); stopping the collector, which lands them."
    );
    stop(&mut child).await?;
    let status = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait())
        .await
        .context("the collector did not stop within 120 s")??;
    if !status.success() {
        bail!(
            "the collector exited with {status}: {}",
            log.await.unwrap_or_default().trim()
        );
    }
    let warehouse = Warehouse::new(&config.warehouse)?;
    let range = crate::overview::range::TimeRange::parse("1h", chrono::Utc::now())?;
    let overview = crate::overview::report::build(
        &warehouse,
        &crate::overview::configured_sources(config),
        &range,
        None,
    )
    .await?;
    println!();
    print!("{}", crate::overview::report::text(&overview));
    println!();
    println!(
        "The same overview: `tributary --config {DEMO_CONFIG} overview --range 1h`; as a web page at http://{}{} while `tributary --config {DEMO_CONFIG} serve` runs.",
        config.serve.listen,
        crate::overview::web::PATH
    );
    Ok(())
}

/// Asks `child` to stop as `serve` expects: SIGTERM (it lands its spool, then exits).
async fn stop(child: &mut tokio::process::Child) -> Result<()> {
    let pid = child.id().context("the collector has exited")?;
    #[cfg(unix)]
    {
        let pid = i32::try_from(pid).context("a process id")?;
        // SAFETY: kill(2) with a valid signal number only sends a signal; `pid` is our
        // own child, which has not been waited for, so the id is not reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot signal the collector: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        child.start_kill()?;
    }
    Ok(())
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
    // An event-stream source, which the demo's collector (`serve`) fills.
    text.push_str(&format!(
        "\n[sources.{DEMO_EVENTS}]\ntype = \"http\"\nwrite_keys = [\"{}\"]\n\n[serve]\nspool = \"{DEMO_SPOOL}\"\n",
        crate::collector::config::new_write_key()
    ));
    let config = config::parse(&text, Path::new("(demo)"))?;
    // Written now: the collector started below reads it.
    let written = std::fs::write(DEMO_CONFIG, &text);
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
    println!();
    match &written {
        Ok(()) => {
            if let Err(e) = collect_events(&config).await {
                println!("The collector part of the demo failed: {e:#}");
            }
        }
        Err(e) => println!(
            "Could not write ./{DEMO_CONFIG} ({e}), which the collector reads; skipping the event-stream part."
        ),
    }
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
