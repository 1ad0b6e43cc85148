//! Vendor simulators as the runtime drives them: `tributary sandbox <vendor>` serves one,
//! `tributary demo` starts them all, syncs them and shows what landed.
//!
//! A vendor crate with a simulator exports a [`SimulatorFactory`] (behind its `sandbox`
//! feature) next to its [`crate::SourceFactory`]; the runtime's registry lists both once
//! per vendor, so the CLI, the demo and the docs' vendor list need no vendor code.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

/// How to start a simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorOptions {
    /// The size of the seeded account (the vendor says what it scales: charges, tickets,
    /// records per object).
    pub records: usize,
    /// Requests per second above which it answers 429 in the vendor's way (`Retry-After`,
    /// or Stripe's `Stripe-Rate-Limited-Reason`; `None`: no limit).
    pub rate_limit: Option<f64>,
    /// For a vendor that also limits each endpoint on its own
    /// ([`SimulatorFactory::endpoint_limits`]): requests per second to one endpoint above
    /// which it answers 429 (`None`: the vendor's default for an account with
    /// `rate_limit`, e.g. Stripe's 25). A vendor that has raised an account's endpoint
    /// limit is simulated by setting it.
    pub endpoint_rate_limit: Option<f64>,
    /// For a vendor with a limit on requests answered at once
    /// ([`SimulatorFactory::concurrency_limits`]): that many, past which it answers 429
    /// (`None`: no such limit, the vendor's number being undocumented).
    pub concurrency_limit: Option<usize>,
    /// Milliseconds every API request takes to answer (0: at once, as the demo runs), so
    /// a benchmark on loopback is bound by round trips as against the vendor. Requests
    /// wait their latencies in parallel.
    pub latency_ms: u64,
    /// The most a request's latency departs from `latency_ms`, either way (`None`: 20% of
    /// `latency_ms`); drawn from an RNG seeded with `seed`.
    pub latency_jitter_ms: Option<u64>,
    /// The port on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Seed of the generated data, for repeatable accounts.
    pub seed: u64,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            records: 200,
            rate_limit: None,
            endpoint_rate_limit: None,
            concurrency_limit: None,
            latency_ms: 0,
            latency_jitter_ms: None,
            port: 0,
            seed: 42,
        }
    }
}

/// A running simulator.
#[async_trait]
pub trait Simulator: Send + Sync {
    /// Its base URL, `http://127.0.0.1:PORT`.
    fn url(&self) -> String;

    /// The body of a `[sources.<name>]` config section (TOML, without the header) that
    /// syncs this simulator, with its credentials; the demo's settings (fast rates, small
    /// Bulk thresholds) included.
    fn source_config(&self) -> String;

    /// For the demo: changes a few objects so an incremental run has something to land.
    /// Returns the stream to sync again and a sentence saying what changed.
    async fn demo_changes(&self) -> Option<(String, String)> {
        None
    }

    /// For the demo: lines showing how to query what landed for source `source` under
    /// the warehouse root `root` (ending with `/`).
    fn demo_hints(&self, root: &str, source: &str) -> Vec<String> {
        vec![format!("{} tables are under {root}{source}/.", source)]
    }

    /// Stops serving, waiting (boundedly) for requests in flight.
    async fn shutdown(self: Box<Self>);
}

/// What [`SimulatorFactory::start`] returns.
pub type Started =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Simulator>>> + Send + 'static>>;

/// How to start one vendor's simulator.
#[derive(Clone, Copy)]
pub struct SimulatorFactory {
    /// The vendor's name (its connector's `type`).
    pub vendor: &'static str,
    /// The port `tributary sandbox <vendor>` serves on unless told otherwise.
    pub default_port: u16,
    /// The records the demo seeds when asked for `records` (a vendor whose objects cost
    /// more to serve seeds fewer).
    pub demo_records: fn(usize) -> usize,
    /// Whether the vendor limits each endpoint on its own too, so
    /// [`SimulatorOptions::endpoint_rate_limit`] means something (Stripe).
    pub endpoint_limits: bool,
    /// Whether the vendor limits the requests it answers at once, so
    /// [`SimulatorOptions::concurrency_limit`] means something (Stripe).
    pub concurrency_limits: bool,
    /// Seeds an account and serves it.
    pub start: fn(SimulatorOptions) -> Started,
}

impl std::fmt::Debug for SimulatorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorFactory")
            .field("vendor", &self.vendor)
            .field("default_port", &self.default_port)
            .field("endpoint_limits", &self.endpoint_limits)
            .field("concurrency_limits", &self.concurrency_limits)
            .finish()
    }
}
