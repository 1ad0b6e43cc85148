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

use std::path::PathBuf;
use std::process::Output;

use tributary_zendesk::sandbox::{SandboxConfig, ZendeskSandbox};

use crate::common::{assert_success, run_binary};

/// A Zendesk simulator, a temp warehouse and a config file pointing at both.
pub struct ZendeskEnv {
    pub sandbox: ZendeskSandbox,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The client's rates when a test does not measure them: far above anything the
/// simulator is asked to enforce.
pub const FAST: (u32, u32) = (600_000, 600_000);

impl ZendeskEnv {
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
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("tributary.toml");
        let env = ZendeskEnv {
            sandbox,
            dir,
            config,
        };
        env.write_config(rates, extra);
        env
    }

    pub fn write_config(&self, (rpm, export_rpm): (u32, u32), extra: &str) {
        let text = format!(
            "[warehouse]\nurl = {:?}\n\n[sync]\nbatch_size = 500\n\n[sources.zendesk]\ntype = \"zendesk\"\nsubdomain = \"https://{}.zendesk.com\"\nemail = \"{}\"\napi_token = \"{}\"\napi_base = \"{}\"\nrequests_per_minute = {rpm}\nexport_requests_per_minute = {export_rpm}\n{extra}\n",
            self.warehouse().display().to_string(),
            ZendeskSandbox::SUBDOMAIN,
            ZendeskSandbox::EMAIL,
            ZendeskSandbox::API_TOKEN,
            self.sandbox.url()
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    pub fn table(&self, stream: &str) -> PathBuf {
        self.warehouse().join("zendesk").join(stream)
    }

    /// Runs `tributary <args> --config <config>` to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        run_binary(&self.config, args).await
    }

    /// Runs a sync that must succeed; returns its stdout.
    pub async fn sync_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Moves the simulator past the exports' one-minute exclusion window.
    pub fn past_the_minute(&self) {
        self.sandbox
            .advance_clock(std::time::Duration::from_secs(61));
    }
}
