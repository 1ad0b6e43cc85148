//! The Salesforce source of Tributary.
//!
//! Streams are the org's objects, discovered at run time: `describeGlobal` checks the
//! configured objects exist, and each object's `describe` gives its typed columns, custom
//! objects (`__c`) and custom fields included (see [`describe`]). Objects are read with
//! REST `queryAll` or, when large, Bulk API 2.0 query jobs, incrementally on
//! `SystemModstamp` (see [`streams`] for the cursor design); objects too wide for one REST
//! query URL are read in chunks of fields ([`chunks`]). [`auth`] holds the three OAuth
//! flows, [`client`] the HTTP side and the org's API budget, [`config`] the options.
//!
//! The daily API budget: before an object starts, the org's usage as Salesforce last
//! reported it (`Sforce-Limit-Info`) is compared with `api_budget_percent`; past it, the
//! object is deferred ([`tributary_sdk::Error::Deferred`]) and the run ends as deferred,
//! not failed.
//!
//! With the `sandbox` feature the crate also holds the Salesforce simulator used by
//! `tributary sandbox salesforce`, `tributary demo` and the tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;
use tributary_sdk::connector::find_named;
use tributary_sdk::{
    Connector, Error, PageStream, ReadRequest, Result, SourceContext, SourceFactory, StreamSchema,
};

pub mod auth;
pub mod chunks;
pub mod client;
pub mod config;
pub mod describe;
pub mod streams;

#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod simulator;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;

pub use config::SalesforceConfig;

use client::SalesforceClient;
use config::Settings;
use describe::ObjectPlan;
use streams::{Cursor, ReadOptions};

/// Describe calls in flight at once during discovery.
const DESCRIBE_CONCURRENCY: usize = 4;

/// A Salesforce org as a source.
#[derive(Debug)]
pub struct Salesforce {
    client: Arc<SalesforceClient>,
    settings: Settings,
    plans: OnceCell<Vec<Arc<ObjectPlan>>>,
    ctx: SourceContext,
}

impl Salesforce {
    /// The source's name in the config.
    pub fn source_name(&self) -> &str {
        &self.ctx.source
    }

    /// The org's daily API usage `(used, limit)` as Salesforce last reported it.
    pub fn api_usage(&self) -> Option<(u64, u64)> {
        self.client.budget().usage()
    }

    /// The org's client, for tests that drive it directly.
    #[cfg(test)]
    pub(crate) fn client(&self) -> &Arc<SalesforceClient> {
        &self.client
    }

    /// Access tokens fetched so far (the first one and every renewal).
    pub fn tokens_fetched(&self) -> u64 {
        self.client.tokens_fetched()
    }

    /// The read plans of the configured objects, describing the org once per source.
    pub async fn plans(&self) -> Result<&[Arc<ObjectPlan>]> {
        self.plans
            .get_or_try_init(|| self.describe_objects())
            .await
            .map(Vec::as_slice)
    }

    async fn describe_objects(&self) -> Result<Vec<Arc<ObjectPlan>>> {
        let global = self.client.describe_global().await?;
        let mut chosen = Vec::new();
        for (i, choice) in self.settings.objects.iter().enumerate() {
            match global
                .iter()
                .find(|o| o.name.eq_ignore_ascii_case(&choice.name) && o.queryable)
            {
                Some(found) => chosen.push((found.name.clone(), choice.fields.clone())),
                None if self.settings.objects_explicit => {
                    // Named by position: config errors never quote a value.
                    return Err(Error::config(
                        format!("objects[{i}]"),
                        "is not an object of this org that the user can query (custom \
                         objects end in `__c`; check the name and the user's permissions)",
                    ));
                }
                None => {
                    tracing::warn!(source = %self.ctx.source, object = %choice.name, "The org has no such object (or the user cannot query it); skipping it.");
                }
            }
        }
        let mut calls = Vec::with_capacity(chosen.len());
        for (name, _) in &chosen {
            let client = Arc::clone(&self.client);
            let name = name.clone();
            calls.push(async move { client.describe(&name).await });
        }
        let describes: Vec<_> = futures::stream::iter(calls)
            .buffered(DESCRIBE_CONCURRENCY)
            .try_collect()
            .await?;
        let mut plans: Vec<Arc<ObjectPlan>> = Vec::new();
        for (describe, (_, fields)) in describes.iter().zip(&chosen) {
            let plan = describe::plan(describe, fields)?;
            if let Some(other) = plans.iter().find(|p| p.schema.name == plan.schema.name) {
                return Err(Error::config(
                    "objects",
                    format!(
                        "`{}` and `{}` would both land in table `{}`; sync one of them",
                        other.object, plan.object, plan.schema.name
                    ),
                ));
            }
            plans.push(Arc::new(plan));
        }
        Ok(plans)
    }
}

#[async_trait]
impl Connector for Salesforce {
    type Config = SalesforceConfig;
    type Cursor = Cursor;

    const KIND: &'static str = "salesforce";

    fn known_streams(config: &SalesforceConfig) -> Option<Vec<String>> {
        // The tables of the objects written; without them, the default objects the org
        // lacks are skipped at run time, so only the org can tell.
        config
            .objects
            .as_ref()
            .map(|o| o.iter().map(|o| describe::table_name(o)).collect())
    }

    fn new(config: SalesforceConfig, ctx: SourceContext) -> Result<Self> {
        let settings = config.validate()?;
        Ok(Salesforce {
            client: Arc::new(SalesforceClient::new(&settings)?),
            settings,
            plans: OnceCell::new(),
            ctx,
        })
    }

    /// Logs in and reads the org's limits: proves the credentials and the API access.
    async fn check(&self) -> Result<()> {
        self.client.limits().await.map(drop)
    }

    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        Ok(self
            .plans()
            .await?
            .iter()
            .map(|p| p.schema.clone())
            .collect())
    }

    async fn read(&self, request: ReadRequest<Cursor>) -> Result<PageStream> {
        // The object's read plan (its API name, fields and chunks), described once per
        // source; the stream is the plan's table.
        let plans = self.plans().await?;
        let plan = Arc::clone(find_named(plans, request.stream(), |p| &p.schema.name)?);
        self.client
            .budget()
            .check(self.settings.api_budget_percent, &plan.object)?;
        let s = &self.settings;
        let options = ReadOptions {
            bulk_threshold: s.bulk_threshold,
            bulk_page_size: s.bulk_page_size,
            bulk_poll: Duration::from_millis(s.bulk_poll_ms),
            bulk_timeout: Duration::from_secs(s.bulk_timeout_seconds),
            lookback_seconds: s.lookback_seconds,
            api_budget_percent: s.api_budget_percent,
            page_size: s.page_size,
            max_concurrency: s.max_concurrency,
        };
        Ok(streams::read(
            Arc::clone(&self.client),
            plan,
            options,
            request.cursor,
            request.full_refresh,
        ))
    }
}

/// The factory that registers the Salesforce connector with the runtime.
pub fn factory() -> SourceFactory {
    tributary_sdk::factory::<Salesforce>()
}
