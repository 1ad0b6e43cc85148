//! Zendesk, end to end: the binary against the Zendesk simulator. A module per topic:
//! syncs and deletions, custom fields, crash-resume, rate limits, plans without an
//! endpoint, tracking, config and credential errors.

mod config_errors;
mod crash_resume;
mod plan;
mod rate_limit;
mod snapshot;
mod sync;
mod tracking;

use tributary_zendesk::sandbox::{SandboxConfig, ZendeskSandbox};

use crate::common::{Env, Vendor};

/// Zendesk, its source pointing at the simulator with API-token authentication.
pub struct Zendesk;

impl Vendor for Zendesk {
    type Sandbox = ZendeskSandbox;
    const NAME: &'static str = "zendesk";
    fn source_lines(sandbox: &ZendeskSandbox) -> String {
        format!(
            "subdomain = \"https://{}.zendesk.com\"\nemail = \"{}\"\napi_token = \"{}\"\napi_base = \"{}\"\n",
            ZendeskSandbox::SUBDOMAIN,
            ZendeskSandbox::EMAIL,
            ZendeskSandbox::API_TOKEN,
            sandbox.url()
        )
    }
}

/// A Zendesk simulator, a temp warehouse and a config file pointing at both.
pub type ZendeskEnv = Env<Zendesk>;

/// The client's rates when a test does not measure them: far above anything the
/// simulator is asked to enforce.
pub const FAST: (u32, u32) = (600_000, 600_000);

impl Env<Zendesk> {
    /// Starts a simulator with `records` tickets and writes a config whose source section
    /// is `[sources.zendesk]` plus `extra` lines.
    pub async fn start(records: usize, extra: &str) -> ZendeskEnv {
        Self::start_with(
            SandboxConfig {
                records,
                ..Default::default()
            },
            FAST,
            extra,
        )
        .await
    }

    /// Like [`ZendeskEnv::start`] with the simulator's config and the client's
    /// `(requests_per_minute, export_requests_per_minute)`.
    pub async fn start_with(config: SandboxConfig, rates: (u32, u32), extra: &str) -> ZendeskEnv {
        let sandbox = ZendeskSandbox::start(config, 0)
            .await
            .expect("sandbox starts");
        let env: ZendeskEnv = Env::with_sandbox(sandbox, "", "");
        env.write_config(rates, extra);
        env
    }

    /// Rewrites the config with the client's rates and `extra` source lines.
    pub fn write_config(&self, (rpm, export_rpm): (u32, u32), extra: &str) {
        self.write_sections(
            "",
            &format!(
                "requests_per_minute = {rpm}\nexport_requests_per_minute = {export_rpm}\n{extra}"
            ),
        );
    }

    /// Moves the simulator past the exports' one-minute exclusion window.
    pub fn past_the_minute(&self) {
        self.sandbox
            .advance_clock(std::time::Duration::from_secs(61));
    }
}
