//! The Acme simulator as the runtime drives it (`tributary sandbox acme`, `demo`).

use async_trait::async_trait;
use tributary_sandbox_kit::Latency;
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions, Started};

use crate::sandbox::{AcmeSandbox, SandboxConfig};

/// The port `tributary sandbox acme` serves on unless told otherwise.
pub const DEFAULT_PORT: u16 = 12190;

/// Starts Acme simulators for the runtime.
pub fn factory() -> SimulatorFactory {
    SimulatorFactory {
        vendor: "acme",
        default_port: DEFAULT_PORT,
        demo_records: |records| records,
        endpoint_limits: false,
        concurrency_limits: false,
        start,
    }
}

fn start(options: SimulatorOptions) -> Started {
    Box::pin(async move {
        let config = SandboxConfig {
            records: options.records,
            rate_limit: options.rate_limit,
            seed: options.seed,
        };
        let sandbox = AcmeSandbox::start(config, options.port).await?;
        sandbox
            .kit()
            .set_latency(Latency::of(options.latency_ms, options.latency_jitter_ms));
        Ok(Box::new(Running(sandbox)) as Box<dyn Simulator>)
    })
}

struct Running(AcmeSandbox);

#[async_trait]
impl Simulator for Running {
    fn url(&self) -> String {
        self.0.url()
    }

    fn source_config(&self) -> String {
        format!(
            "type = \"acme\"\napi_key = \"{}\"\napi_base = \"{}\"\nrequests_per_second = 200\n",
            AcmeSandbox::API_KEY,
            self.0.url()
        )
    }

    /// One item created, one renamed, one deleted; the clock moves past their second so
    /// the next read (which stops at the current second) sees them.
    async fn demo_changes(&self) -> Option<(String, String)> {
        let acme = &self.0;
        let mut changed = vec![acme.create("New item")];
        let ids = acme.ids();
        if let Some(id) = ids.first() {
            acme.update(id, "name", serde_json::json!("Renamed item"));
            changed.push(id.clone());
        }
        if let Some(id) = ids.last() {
            acme.delete(id);
            changed.push(format!("{id} (deleted)"));
        }
        acme.kit().clock.advance(std::time::Duration::from_secs(2));
        Some((
            "items".to_owned(),
            format!("Changed items {} in the simulator", changed.join(", ")),
        ))
    }

    async fn shutdown(self: Box<Self>) {
        self.0.shutdown().await;
    }
}
