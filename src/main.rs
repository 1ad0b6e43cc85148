//! The `tributary` binary: parses the command line, sets up logging, and hands over to
//! the command. Errors reach the user here, as one readable message and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use tributary::{cli, demo, logging};

/// Sync SaaS objects (Stripe, …) into Delta Lake tables, incrementally and exactly once.
#[derive(Parser, Debug)]
#[command(name = "tributary", version, about, propagate_version = true)]
struct Args {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        default_value = "./tributary.toml",
        env = "TRIBUTARY_CONFIG"
    )]
    config: PathBuf,
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Collect Segment Tracking-API messages for the event-stream sources (HTTP API,
    /// Pixel API) and land them in the warehouse, until SIGTERM/SIGINT.
    Serve {
        /// The address to listen on (default `[serve] listen`, 127.0.0.1:8088).
        #[arg(long)]
        listen: Option<String>,
        /// The spool directory (default `[serve] spool`, ./spool).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464): /metrics,
        /// /healthz and /readyz.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Create and list sources.
    Sources {
        #[command(subcommand)]
        action: SourcesAction,
    },
    /// Verify every source's credentials and reachability.
    Check {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// List each source's streams and their columns.
    Discover {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Sync once: every configured stream (or the ones selected) from its cursor.
    Sync {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Only this stream (needs --source when several sources are configured).
        #[arg(long)]
        stream: Option<String>,
        /// Ignore the committed cursors; read everything again and replace the tables.
        #[arg(long)]
        full_refresh: bool,
    },
    /// Run as a daemon: sync every source on its cron schedule until SIGTERM/SIGINT.
    Run {
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464): /metrics,
        /// /healthz and /readyz.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Print the units of work and their schedules for another scheduler: an Airflow DAG
    /// file, Kubernetes CronJobs or crontab lines. Reads the config without its secrets.
    Plan(tributary::plan::PlanArgs),
    /// Show each stream's cursor and last commit.
    State {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Stream leases: free one by hand.
    Lease {
        #[command(subcommand)]
        action: LeaseAction,
    },
    /// Merge small files and remove unreferenced files older than the retention period.
    /// Safe while syncs run.
    Compact {
        /// Only this source's tables.
        #[arg(long)]
        source: Option<String>,
        /// Only this stream's table (needs --source when several sources are configured).
        #[arg(long)]
        stream: Option<String>,
        /// Keep unreferenced files younger than this many hours (time travel, and files of
        /// syncs still running). Must exceed the longest sync.
        #[arg(long, default_value_t = 168.0)]
        retention_hours: f64,
        /// Size of the merged files, in MiB; files under half of it are merged.
        #[arg(long, default_value_t = 128)]
        target_file_mb: u64,
    },
    /// Serve a vendor simulator (or `all` of them) on 127.0.0.1, standalone.
    Sandbox {
        /// The vendor to simulate, or `all`.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(tributary::demo::sandbox_names()))]
        vendor: String,
        /// The port (0 picks a free one). Default: the vendor's own (12111 Stripe, 12112
        /// Zendesk, 12113 Salesforce); with `all`, the first of consecutive ports.
        #[arg(long)]
        port: Option<u16>,
        /// Objects per stream (charges get this many; other streams scale from it).
        #[arg(long, default_value_t = 200)]
        records: usize,
        /// Requests per second above which it answers 429, as the vendor does (with
        /// Retry-After; Stripe's names the limit in Stripe-Rate-Limited-Reason instead).
        #[arg(long, value_parser = positive_rate)]
        rate_limit: Option<f64>,
        /// Requests per second to one endpoint above which it answers 429, for a vendor
        /// that limits each endpoint too (Stripe: with `--rate-limit R`, min(R, 25) unless
        /// this is given); set it to simulate an account whose endpoint limit the vendor
        /// has raised.
        #[arg(long, value_parser = positive_rate)]
        endpoint_rate_limit: Option<f64>,
        /// Requests answered at once past which it answers 429, for a vendor with such a
        /// limit (Stripe's concurrency limiter, whose number Stripe does not publish).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        concurrency_limit: Option<u32>,
        /// Milliseconds every API request takes to answer, as a real vendor's round trip
        /// (requests wait in parallel); `demo` answers at once.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// The most a request's latency departs from `--latency-ms`, either way (default:
        /// 20% of it), drawn from a seeded RNG.
        #[arg(long)]
        latency_jitter_ms: Option<u64>,
    },
    /// Reverse-ETL sources (`type = "postgres"` or `"delta"`).
    Retl {
        #[command(subcommand)]
        action: RetlAction,
    },
    /// Connectors: scaffold a new vendor, or list the vendors this build knows.
    Connector {
        #[command(subcommand)]
        action: ConnectorAction,
    },
    /// The Source Overview: per source, events per type and name (or records per
    /// collection) over a time range, with the % change against the previous period.
    Overview {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// 10m, 1h, 24h, 7d, 2w, or FROM..TO (RFC 3339) within the last two weeks.
        #[arg(long, default_value = tributary::overview::web::DEFAULT_RANGE)]
        range: String,
        /// Serve the overview web page on this address (e.g. 127.0.0.1:8089) instead of
        /// printing it; port 0 picks a free one, printed on the first line.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Start the simulators, sync them into ./warehouse, and show what landed.
    Demo {
        /// Where the tables land.
        #[arg(long, default_value = "./warehouse")]
        warehouse: String,
        /// Objects per stream in the simulators.
        #[arg(long, default_value_t = 200)]
        records: usize,
    },
}

#[derive(clap::Subcommand, Debug)]
enum RetlAction {
    /// Print what the next run of a model would send: the counts of added, updated and
    /// deleted rows and the first calls. Sends nothing, records nothing.
    Preview {
        /// The reverse-ETL source.
        #[arg(long)]
        source: String,
        /// The model.
        #[arg(long)]
        model: String,
        /// How many calls to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(clap::Subcommand, Debug)]
enum SourcesAction {
    /// Add an event-stream source with a new random write key to the config (or print the
    /// section to paste), and print the key.
    Create {
        /// The source's name (lowercase letters, digits, `_`, `-`).
        name: String,
        /// `http`, or the labels `javascript`, `server`, `mobile` of the same kind.
        #[arg(long = "type", default_value = "http")]
        kind: String,
    },
    /// Every source with its type, write-key prefix and schedule.
    List,
}

#[derive(clap::Subcommand, Debug)]
enum LeaseAction {
    /// Free a stream's lease. Refused while the lease is live, unless --force.
    Release {
        /// The source.
        #[arg(long)]
        source: String,
        /// The stream.
        #[arg(long)]
        stream: String,
        /// Free it even while it is live (only when its worker is gone; a live holder
        /// stops before its next commit).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ConnectorAction {
    /// Scaffold connectors/NAME (config, client, streams, a simulator on the sandbox kit,
    /// tests) and schemas/NAME from the template connector, and register it here.
    New {
        /// The vendor's name as configs write it (`type = "NAME"`), e.g. `widget_co`.
        name: String,
        /// The workspace to write into (this repository's root).
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
        /// The simulator's default port (default: one above the known vendors').
        #[arg(long)]
        port: Option<u16>,
        /// Write the crate only; do not edit Cargo.toml and src/registry.rs.
        #[arg(long)]
        no_register: bool,
    },
    /// Validates a declarative spec file (and its schemas) without running anything;
    /// exits 1 naming the file, the stream and the key of the first mistake.
    CheckSpec {
        /// The spec file, e.g. `connectors/declarative/specs/hubspot.toml`.
        file: std::path::PathBuf,
    },
    /// The vendors this build knows (`--markdown`: README's vendor table).
    List {
        /// As the Markdown table README holds.
        #[arg(long)]
        markdown: bool,
    },
}

/// A simulator's rate limit: a positive number of requests per second.
fn positive_rate(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: give requests per second above 0, e.g. 100 or 0.5"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init_logging(args.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Serve {
                listen,
                spool,
                metrics,
            } => {
                tributary::collector::serve(
                    &args.config,
                    listen.as_deref(),
                    spool.as_deref(),
                    metrics,
                )
                .await
            }
            Command::Sources { action } => match action {
                SourcesAction::Create { name, kind } => {
                    tributary::collector::create(&args.config, &name, &kind)
                }
                SourcesAction::List => tributary::collector::list(&args.config),
            },
            Command::Check { source } => cli::check(&args.config, source.as_deref()).await,
            Command::Discover { source } => cli::discover(&args.config, source.as_deref()).await,
            Command::Sync {
                source,
                stream,
                full_refresh,
            } => {
                cli::sync(
                    &args.config,
                    source.as_deref(),
                    stream.as_deref(),
                    full_refresh,
                )
                .await
            }
            Command::Run { metrics } => cli::run(&args.config, metrics).await,
            Command::Plan(plan) => tributary::plan::command(&args.config, &plan),
            Command::Compact {
                source,
                stream,
                retention_hours,
                target_file_mb,
            } => {
                if !(retention_hours.is_finite() && retention_hours >= 0.0) {
                    eprintln!("error: --retention-hours must be a number of hours, 0 or more");
                    return Ok(ExitCode::from(2));
                }
                let options = tributary::warehouse::compact::CompactOptions {
                    target_size: target_file_mb.max(1) * 1024 * 1024,
                    retention: chrono::Duration::milliseconds(
                        (retention_hours * 3_600_000.0) as i64,
                    ),
                    row_group_size: 65_536,
                };
                cli::compact(&args.config, source.as_deref(), stream.as_deref(), &options).await
            }
            Command::State { source } => cli::state(&args.config, source.as_deref()).await,
            Command::Lease {
                action:
                    LeaseAction::Release {
                        source,
                        stream,
                        force,
                    },
            } => cli::lease_release(&args.config, &source, &stream, force).await,
            Command::Sandbox {
                vendor,
                port,
                records,
                rate_limit,
                endpoint_rate_limit,
                concurrency_limit,
                latency_ms,
                latency_jitter_ms,
            } => {
                demo::sandbox(
                    &vendor,
                    port,
                    records,
                    demo::Limits {
                        rate_limit,
                        endpoint_rate_limit,
                        concurrency_limit: concurrency_limit.map(|n| n as usize),
                    },
                    latency_ms,
                    latency_jitter_ms,
                )
                .await
            }
            Command::Overview {
                source,
                range,
                listen,
            } => {
                tributary::overview::command(&args.config, source.as_deref(), &range, listen).await
            }
            Command::Demo { warehouse, records } => demo::demo(&warehouse, records).await,
            Command::Retl {
                action:
                    RetlAction::Preview {
                        source,
                        model,
                        limit,
                    },
            } => cli::retl_preview(&args.config, &source, &model, limit).await,
            Command::Connector { action } => match action {
                ConnectorAction::New {
                    name,
                    root,
                    port,
                    no_register,
                } => tributary::scaffold::new_connector(&root, &name, port, !no_register)
                    .map(|()| ExitCode::SUCCESS),
                ConnectorAction::CheckSpec { file } => Ok(tributary::cli::check_spec(&file)),
                ConnectorAction::List { markdown } => {
                    print!("{}", tributary::scaffold::list(markdown));
                    Ok(ExitCode::SUCCESS)
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", logging::scrubbed(&e));
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
