//! The Zendesk simulator as the runtime drives it (`tributary sandbox zendesk`, `demo`).

use async_trait::async_trait;
use tributary_sandbox_kit::Latency;
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions, Started};

use crate::sandbox::{RateLimits, SandboxConfig, ZendeskSandbox};

/// Starts Zendesk simulators for the runtime.
pub fn factory() -> SimulatorFactory {
    SimulatorFactory {
        vendor: "zendesk",
        default_port: 12112,
        demo_records: |records| records,
        endpoint_limits: false,
        concurrency_limits: false,
        start,
    }
}

fn start(options: SimulatorOptions) -> Started {
    Box::pin(async move {
        // Zendesk counts per minute: R requests a second is R×60 a minute for the account,
        // and the incremental exports keep Zendesk's own 10 a minute.
        let rate_limits = options
            .rate_limit
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| RateLimits::per_minute((r * 60.0).round().clamp(1.0, 1e9) as u32));
        let config = SandboxConfig {
            records: options.records,
            rate_limits,
            seed: options.seed,
            ..Default::default()
        };
        let sandbox = ZendeskSandbox::start(config, options.port).await?;
        sandbox.set_latency(Latency::of(options.latency_ms, options.latency_jitter_ms));
        Ok(Box::new(Running(sandbox)) as Box<dyn Simulator>)
    })
}

struct Running(ZendeskSandbox);

#[async_trait]
impl Simulator for Running {
    fn url(&self) -> String {
        self.0.url()
    }

    fn source_config(&self) -> String {
        format!(
            "type = \"zendesk\"\nsubdomain = \"{}\"\nemail = \"{}\"\napi_token = \"{}\"\napi_base = \"{}\"\n\
             # The simulator has no rate limit unless asked; Zendesk's are 200 and 10 a minute.\n\
             requests_per_minute = 12000\nexport_requests_per_minute = 6000\n",
            ZendeskSandbox::SUBDOMAIN,
            ZendeskSandbox::EMAIL,
            ZendeskSandbox::API_TOKEN,
            self.0.url()
        )
    }

    fn demo_hints(&self, root: &str, source: &str) -> Vec<String> {
        vec![
            format!(
                "Zendesk's tables are under {root}{source}/, custom ticket fields as columns, e.g.:"
            ),
            format!(
                "    duckdb -c \"INSTALL delta; LOAD delta; SELECT custom_product, status, count(*) FROM delta_scan('{root}{source}/tickets') GROUP BY ALL ORDER BY ALL\""
            ),
        ]
    }

    async fn shutdown(self: Box<Self>) {
        self.0.shutdown().await;
    }
}
