//! The Salesforce simulator as the runtime drives it (`tributary sandbox salesforce`,
//! `demo`).

use async_trait::async_trait;
use tributary_sandbox_kit::Latency;
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions, Started};

use crate::sandbox::{self as sf, SalesforceSandbox, SandboxConfig};

/// Starts Salesforce simulators for the runtime.
pub fn factory() -> SimulatorFactory {
    SimulatorFactory {
        vendor: "salesforce",
        default_port: 12113,
        // Records per object: a quarter of the others' keeps the demo's Bulk jobs short.
        demo_records: |records| (records / 4).max(5),
        endpoint_limits: false,
        concurrency_limits: false,
        start,
    }
}

fn start(options: SimulatorOptions) -> Started {
    Box::pin(async move {
        let config = SandboxConfig {
            records: options.records,
            seed: options.seed,
            ..Default::default()
        };
        let sandbox = SalesforceSandbox::start(config, options.port).await?;
        sandbox.set_latency(Latency::of(options.latency_ms, options.latency_jitter_ms));
        // Requests per second, answered 429 above it; the org's daily API budget is the
        // other limit (`POST /_sandbox/limits`).
        sandbox.set_rate_limit(options.rate_limit);
        Ok(Box::new(Running(sandbox)) as Box<dyn Simulator>)
    })
}

struct Running(SalesforceSandbox);

#[async_trait]
impl Simulator for Running {
    fn url(&self) -> String {
        self.0.url()
    }

    fn source_config(&self) -> String {
        format!(
            "type = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
             refresh_token = \"{}\"\n\
             objects = [\"Account\", \"Contact\", \"Opportunity\", \"OpportunityHistory\", \"Invoice__c\"]\n\
             bulk_threshold = 100\nbulk_poll_ms = 200\nrequests_per_second = 200\n",
            self.0.url(),
            sf::CLIENT_ID,
            sf::CLIENT_SECRET,
            sf::REFRESH_TOKEN,
        )
    }

    fn demo_hints(&self, root: &str, source: &str) -> Vec<String> {
        vec![format!(
            "Salesforce objects landed under {root}{source}/ (e.g. {root}{source}/opportunity_history, and the custom object {root}{source}/invoice__c)."
        )]
    }

    async fn shutdown(self: Box<Self>) {
        self.0.shutdown().await;
    }
}
