//! The Stripe source of Tributary.
//!
//! Sixteen streams (customers, charges, invoices, subscriptions, … and the events feed
//! itself), each read once in full from its list endpoint and then incrementally from
//! Stripe's events: see [`streams`] for the cursor design and the 30-day retention
//! fallback, [`config`] for the options, [`client`] for the HTTP side, [`tracking`] for
//! the Tracking-API messages its events map to.
//!
//! With the `sandbox` feature the crate also holds the Stripe simulator used by
//! `tributary sandbox stripe`, `tributary demo` and the tests.

use std::sync::Arc;

use async_trait::async_trait;
use tributary_sdk::{
    Connector, Message, PageStream, ReadRequest, Result, SourceContext, SourceFactory, StreamSchema,
};

pub mod client;
pub mod config;
pub mod streams;
pub mod tracking;

#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod simulator;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;

pub use config::StripeConfig;

use client::StripeClient;
use streams::Cursor;

/// A Stripe account as a source.
#[derive(Debug)]
pub struct Stripe {
    client: Arc<StripeClient>,
    page_size: u32,
    max_concurrency: u32,
    schemas: Vec<StreamSchema>,
    ctx: SourceContext,
}

impl Stripe {
    /// The source's name in the config.
    pub fn source_name(&self) -> &str {
        &self.ctx.source
    }
}

#[async_trait]
impl Connector for Stripe {
    type Config = StripeConfig;
    type Cursor = Cursor;

    const KIND: &'static str = "stripe";

    fn known_streams(_config: &StripeConfig) -> Option<Vec<String>> {
        // Every Stripe stream exists in every account.
        streams::schemas()
            .ok()
            .map(|s| s.into_iter().map(|s| s.name).collect())
    }

    fn new(config: StripeConfig, ctx: SourceContext) -> Result<Self> {
        let settings = config.validate()?;
        Ok(Stripe {
            client: Arc::new(StripeClient::new(&settings)?),
            page_size: settings.page_size,
            max_concurrency: settings.max_concurrency,
            schemas: streams::schemas()?,
            ctx,
        })
    }

    /// Lists one event: proves the key is valid and may read events.
    async fn check(&self) -> Result<()> {
        self.client
            .list("check", "/v1/events", &[("limit", "1".to_owned())])
            .await
            .map(drop)
    }

    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        Ok(self.schemas.clone())
    }

    async fn read(&self, request: ReadRequest<Cursor>) -> Result<PageStream> {
        let def = streams::stream(request.stream())?;
        Ok(streams::read(
            Arc::clone(&self.client),
            def,
            &request.schema,
            self.page_size,
            self.max_concurrency,
            request.cursor,
            request.full_refresh,
        ))
    }

    /// Events map to `identify`/`track` messages: see [`tracking`].
    fn messages(&self, source: &str, stream: &str, record: &serde_json::Value) -> Vec<Message> {
        tracking::messages(source, stream, record)
    }
}

/// The factory that registers the Stripe connector with the runtime.
pub fn factory() -> SourceFactory {
    tributary_sdk::factory::<Stripe>()
}
