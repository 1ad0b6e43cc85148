//! The Stripe simulator as the runtime drives it (`tributary sandbox stripe`, `demo`).

use async_trait::async_trait;
use tributary_sandbox_kit::Latency;
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions, Started};

use crate::sandbox::{SandboxConfig, StripeSandbox};

/// Starts Stripe simulators for the runtime.
pub fn factory() -> SimulatorFactory {
    SimulatorFactory {
        vendor: "stripe",
        default_port: 12111,
        demo_records: |records| records,
        endpoint_limits: true,
        concurrency_limits: true,
        start,
    }
}

fn start(options: SimulatorOptions) -> Started {
    Box::pin(async move {
        let config = SandboxConfig {
            records: options.records,
            rate_limit: options.rate_limit,
            // A simulated account with a limit has Stripe's per-endpoint one too, unless
            // told what its raised one is.
            endpoint_rate_limit: options.endpoint_rate_limit.or(options
                .rate_limit
                .map(|r| r.min(crate::config::ENDPOINT_REQUESTS_PER_SECOND))),
            concurrency_limit: options.concurrency_limit,
            seed: options.seed,
            ..Default::default()
        };
        let sandbox = StripeSandbox::start(config, options.port).await?;
        sandbox.set_latency(Latency::of(options.latency_ms, options.latency_jitter_ms));
        Ok(Box::new(Running(sandbox)) as Box<dyn Simulator>)
    })
}

struct Running(StripeSandbox);

#[async_trait]
impl Simulator for Running {
    fn url(&self) -> String {
        self.0.url()
    }

    fn source_config(&self) -> String {
        // Each endpoint as fast as the simulator allows it (Stripe's default is 25/s).
        let per_endpoint = self.0.endpoint_rate_limit().unwrap_or(200.0);
        format!(
            "type = \"stripe\"\napi_key = \"{}\"\napi_base = \"{}\"\nrequests_per_second = 200\nrequests_per_second_per_endpoint = {per_endpoint}\n",
            StripeSandbox::api_key(),
            self.0.url()
        )
    }

    /// One customer created, one renamed, one deleted.
    async fn demo_changes(&self) -> Option<(String, String)> {
        let stripe = &self.0;
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
        Some((
            "customers".to_owned(),
            format!("Changed customers {} in the simulator", changed.join(", ")),
        ))
    }

    fn demo_hints(&self, root: &str, source: &str) -> Vec<String> {
        vec![
            format!("The tables are Delta Lake tables, one per stream, under {root}{source}/."),
            "Query them with DuckDB, for example:".to_owned(),
            format!(
                "    duckdb -c \"INSTALL delta; LOAD delta; SELECT status, count(*), sum(amount)/100.0 AS total FROM delta_scan('{root}{source}/charges') GROUP BY status\""
            ),
            "or with Python (pip install deltalake):".to_owned(),
            format!(
                "    python3 -c \"import deltalake; print(deltalake.QueryBuilder().register('c', deltalake.DeltaTable('{root}{source}/customers')).execute('select count(*) from c').read_all())\""
            ),
        ]
    }

    async fn shutdown(self: Box<Self>) {
        self.0.shutdown().await;
    }
}
