//! Built-in declarative vendors' simulators as the runtime drives them (`tributary sandbox
//! <vendor>`, `demo`): each is the spec's simulator ([`crate::sandbox`]).

use async_trait::async_trait;
use tributary_sandbox_kit::Latency;
use tributary_sdk::simulator::{Simulator, SimulatorFactory, SimulatorOptions, Started};

use crate::sandbox::{DeclarativeSandbox, SandboxConfig};

include!(concat!(env!("OUT_DIR"), "/simulators.rs"));

/// The most records per stream the demo seeds: every stream of every vendor is synced.
const DEMO_RECORDS: usize = 200;

/// The port of `tributary sandbox <vendor>`: the spec's `sandbox.port`, else one from
/// 12300 on in the order of the built-in vendors.
pub fn default_port(vendor: &str) -> u16 {
    let index = crate::builtin_names()
        .iter()
        .position(|n| *n == vendor)
        .unwrap_or(0);
    crate::builtin(vendor)
        .ok()
        .and_then(|v| v.spec.spec.sandbox.port)
        .unwrap_or(12300 + index as u16)
}

fn start(vendor: &'static str, options: SimulatorOptions) -> Started {
    Box::pin(async move {
        let spec = crate::builtin(vendor).map_err(std::io::Error::other)?;
        let config = SandboxConfig {
            records: options.records,
            rate_limit: options.rate_limit,
            seed: options.seed,
        };
        let sandbox = DeclarativeSandbox::start(spec, config, options.port).await?;
        sandbox
            .kit()
            .set_latency(Latency::of(options.latency_ms, options.latency_jitter_ms));
        Ok(Box::new(Running { vendor, sandbox }) as Box<dyn Simulator>)
    })
}

struct Running {
    vendor: &'static str,
    sandbox: DeclarativeSandbox,
}

#[async_trait]
impl Simulator for Running {
    fn url(&self) -> String {
        self.sandbox.url()
    }

    fn source_config(&self) -> String {
        format!(
            "type = \"{}\"\n{}requests_per_second = 200\n",
            self.vendor,
            self.sandbox.source_lines()
        )
    }

    /// In the first incremental stream: one record created, one changed, one deleted; the
    /// clock moves past their second.
    async fn demo_changes(&self) -> Option<(String, String)> {
        let vendor = crate::builtin(self.vendor).ok()?;
        let stream = vendor
            .spec
            .spec
            .streams
            .iter()
            .find(|s| s.incremental.is_some() && s.deleted.is_some())?
            .name
            .clone();
        let sb = &self.sandbox;
        let ids = sb.ids(&stream);
        let mut changed = vec![sb.create(&stream)];
        if let Some(id) = ids.first() {
            sb.update(
                &stream,
                id,
                "demo_note",
                serde_json::json!("changed by the demo"),
            );
            changed.push(id.clone());
        }
        if let Some(id) = ids.last() {
            sb.delete(&stream, id);
            changed.push(format!("{id} (deleted)"));
        }
        sb.kit().clock.advance(std::time::Duration::from_secs(2));
        Some((
            stream.clone(),
            format!("Changed {stream} {} in the simulator", changed.join(", ")),
        ))
    }

    async fn shutdown(self: Box<Self>) {
        self.sandbox.shutdown().await;
    }
}
