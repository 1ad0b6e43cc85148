//! The Acme source of Tributary, scaffolded by `tributary connector new` from the template
//! connector (`connectors/template`): small and complete, to be made the vendor's own.
//!
//! One stream, `items`, read incrementally by its update time in windows that end at
//! Acme's own clock (see [`streams`]); deletions arrive as tombstones. [`config`] holds
//! the options, [`client`] the HTTP calls (rate limit, retries, quota headers), and with
//! the `sandbox` feature [`sandbox`] is the Acme simulator (on the sandbox kit) and
//! [`simulator`] exports it to `tributary sandbox acme` and `tributary demo`.

use std::sync::Arc;

use async_trait::async_trait;
use tributary_sdk::{Connector, PageStream, ReadRequest, Result, SourceContext, StreamSchema};

pub mod client;
pub mod config;
pub mod streams;

#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod simulator;

#[cfg(test)]
mod tests;

pub use config::AcmeConfig;

use client::AcmeClient;
use config::Settings;
use streams::Cursor;

/// An Acme account as a source.
#[derive(Debug)]
pub struct Acme {
    client: Arc<AcmeClient>,
    settings: Settings,
    schemas: Vec<StreamSchema>,
}

#[async_trait]
impl Connector for Acme {
    type Config = AcmeConfig;
    type Cursor = Cursor;

    const KIND: &'static str = "acme";

    fn new(config: AcmeConfig, _ctx: SourceContext) -> Result<Self> {
        let settings = config.validate()?;
        Ok(Acme {
            client: Arc::new(AcmeClient::new(&settings)?),
            settings,
            schemas: streams::schemas()?,
        })
    }

    /// `GET /v1/me`: one cheap call that proves the key.
    async fn check(&self) -> Result<()> {
        self.client.me().await.map(drop)
    }

    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        Ok(self.schemas.clone())
    }

    async fn read(&self, request: ReadRequest<Cursor>) -> Result<PageStream> {
        Ok(streams::read(
            Arc::clone(&self.client),
            streams::stream(request.stream())?,
            self.settings.page_size,
            request.cursor,
            request.full_refresh,
        ))
    }
}

/// The factory that registers the Acme connector with the runtime.
pub fn factory() -> tributary_sdk::SourceFactory {
    tributary_sdk::factory::<Acme>()
}
