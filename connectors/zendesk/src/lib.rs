//! The Zendesk Support source of Tributary.
//!
//! Thirteen streams: tickets and users from Zendesk's cursor-based incremental exports,
//! organizations and ticket events from its time-based ones, and nine lists (groups,
//! memberships, ticket fields and forms, ticket metrics, satisfaction ratings, brands,
//! tags) taken as a fresh snapshot each run. See [`streams`] for the cursors and the custom
//! field columns, [`config`] for the options, [`client`] for the two rate limits, and
//! [`tracking`] for the Tracking-API messages ticket events map to.
//!
//! With the `sandbox` feature the crate also holds the Zendesk simulator used by
//! `tributary sandbox zendesk`, `tributary demo` and the tests.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tributary_sdk::connector::find_stream;
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

pub use config::ZendeskConfig;

use client::{Limit, ZendeskClient};
use config::Settings;
use streams::{Cursor, CustomField, ReadContext};

/// How long `discover` reuses the custom ticket fields it fetched (a sync discovers, then
/// reads: one fetch serves both). Reads of `tickets` always fetch them afresh.
const FIELDS_TTL: Duration = Duration::from_secs(300);

/// A Zendesk Support account as a source.
#[derive(Debug)]
pub struct Zendesk {
    client: Arc<ZendeskClient>,
    settings: Settings,
    schemas: Vec<StreamSchema>,
    fields: Mutex<Option<(Instant, Vec<CustomField>)>>,
    ctx: SourceContext,
}

impl Zendesk {
    /// The source's name in the config.
    pub fn source_name(&self) -> &str {
        &self.ctx.source
    }

    /// The custom ticket fields and their columns, fetched from `/api/v2/ticket_fields`
    /// (every page), or reused from the last fetch when `reuse` and it is recent.
    pub async fn custom_fields(&self, reuse: bool) -> Result<Vec<CustomField>> {
        if reuse
            && let Some((at, fields)) = &*self.fields.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < FIELDS_TTL
        {
            return Ok(fields.clone());
        }
        let mut all: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        let mut guard = streams::list_guard("ticket_fields");
        loop {
            let mut query = vec![("page[size]", config::MAX_PAGE_SIZE.to_string())];
            if let Some(after) = &after {
                query.push(("page[after]", after.clone()));
            }
            let listing = self
                .client
                .get(
                    "ticket_fields",
                    Limit::Api,
                    "/api/v2/ticket_fields.json",
                    &query,
                    "ticket_fields",
                )
                .await?;
            let next = streams::next_list_page(
                &listing,
                "ticket_fields",
                "/api/v2/ticket_fields.json",
                &mut guard,
            )?;
            all.extend(listing.records("ticket_fields")?);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let reserved: Vec<String> = self
            .base_tickets_schema()?
            .columns
            .iter()
            .map(|c| c.name.clone())
            .chain(tributary_sdk::schema::SYSTEM_COLUMNS.map(str::to_owned))
            .collect();
        let fields = streams::custom_fields(&all, &reserved);
        *self.fields.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), fields.clone()));
        Ok(fields)
    }

    fn base_tickets_schema(&self) -> Result<&StreamSchema> {
        find_stream(&self.schemas, "tickets")
    }
}

#[async_trait]
impl Connector for Zendesk {
    type Config = ZendeskConfig;
    type Cursor = Cursor;

    const KIND: &'static str = "zendesk";

    fn known_streams(_config: &ZendeskConfig) -> Option<Vec<String>> {
        // Every Zendesk stream exists in every account.
        streams::schemas()
            .ok()
            .map(|s| s.into_iter().map(|s| s.name).collect())
    }

    fn new(config: ZendeskConfig, ctx: SourceContext) -> Result<Self> {
        let settings = config.validate()?;
        Ok(Zendesk {
            client: Arc::new(ZendeskClient::new(&settings)?),
            settings,
            schemas: streams::schemas()?,
            fields: Mutex::new(None),
            ctx,
        })
    }

    /// Fetches the signed-in user: proves the credentials, and that they are an admin's.
    async fn check(&self) -> Result<()> {
        self.client.me().await.map(drop)
    }

    /// The declared schemas, with a column per custom ticket field added to `tickets`.
    /// When the fields cannot be fetched (bad credentials, Zendesk down), the declared
    /// schemas are returned and the failure logged: the streams' own reads then report it,
    /// and other sources of the config still sync.
    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        let fields = match self.custom_fields(true).await {
            Ok(fields) => fields,
            Err(error) => {
                tracing::warn!(
                    source = %self.ctx.source,
                    %error,
                    "Could not fetch the custom ticket fields; discovering without them."
                );
                Vec::new()
            }
        };
        Ok(self
            .schemas
            .iter()
            .map(|schema| {
                if schema.name == "tickets" {
                    streams::tickets_schema(schema, &fields)
                } else {
                    schema.clone()
                }
            })
            .collect())
    }

    async fn read(&self, request: ReadRequest<Cursor>) -> Result<PageStream> {
        let def = streams::stream(request.stream())?;
        let custom_fields = if def.shape == streams::Shape::Tickets {
            streams::by_id(&self.custom_fields(false).await?)
        } else {
            Default::default()
        };
        let context = ReadContext {
            client: Arc::clone(&self.client),
            settings: self.settings.clone(),
            custom_fields,
        };
        Ok(streams::read(
            context,
            def,
            request.cursor,
            request.full_refresh,
        ))
    }

    /// Ticket events map to `track` messages: see [`tracking`].
    fn messages(&self, source: &str, stream: &str, record: &Value) -> Vec<Message> {
        tracking::messages(source, stream, record)
    }
}

/// The factory that registers the Zendesk connector with the runtime.
pub fn factory() -> SourceFactory {
    tributary_sdk::factory::<Zendesk>()
}
