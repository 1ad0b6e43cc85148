//! The connector registry: every vendor crate, registered in one explicit function.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use tributary_sdk::{Source, SourceContext, SourceFactory, StreamSchema};

use crate::config::{Loaded, SourceConfig};

/// Every connector this binary knows. Adding a vendor: one line here.
pub fn factories() -> Vec<SourceFactory> {
    vec![
        tributary_stripe::factory(),
        tributary_zendesk::factory(),
        tributary_salesforce::factory(),
    ]
}

/// A configured source, built and with its selected streams.
pub struct BuiltSource {
    /// Its configuration.
    pub config: SourceConfig,
    /// The connector.
    pub source: Arc<dyn Source>,
    /// The streams to sync, with their schemas, in the connector's order.
    pub streams: Vec<StreamSchema>,
}

/// Builds one configured source and resolves its `streams` against what it offers.
pub async fn build(config: &Loaded, source: &SourceConfig) -> Result<BuiltSource> {
    let file = config.path.display();
    // Every connector's HTTP client reads its body cap from here (see the SDK's `http`).
    tributary_sdk::http::set_max_body_bytes(config.sync.max_response_mb * 1024 * 1024);
    let factories = factories();
    let factory = factories
        .iter()
        .find(|f| f.kind == source.kind)
        .ok_or_else(|| {
            anyhow!(
                "{file}: `sources.{}.type` = \"{}\" is not a connector this build knows; known types: {}",
                source.name,
                source.kind,
                factories.iter().map(|f| f.kind).collect::<Vec<_>>().join(", ")
            )
        })?;
    let built = factory
        .build(
            source.options.clone(),
            SourceContext {
                source: source.name.clone(),
            },
        )
        .map_err(|e| match e {
            tributary_sdk::Error::Config { key, message } => {
                anyhow!("{file}: `sources.{}.{key}`: {message}", source.name)
            }
            other => anyhow!("{file}: `[sources.{}]`: {other}", source.name),
        })?;
    let all = built
        .discover()
        .await
        .map_err(|e| anyhow!("source `{}`: discovering streams: {e}", source.name))?;
    let streams = match &source.streams {
        None => all,
        Some(wanted) => {
            let mut out = Vec::new();
            for name in wanted {
                match all.iter().find(|s| &s.name == name) {
                    Some(s) => out.push(s.clone()),
                    None => {
                        return Err(anyhow!(
                            "{file}: `sources.{}.streams` names `{name}`, which {} does not have; available: {}",
                            source.name,
                            source.kind,
                            all.iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
            out
        }
    };
    Ok(BuiltSource {
        config: source.clone(),
        source: built,
        streams,
    })
}

/// Builds every source of the config, or the one named.
pub async fn build_all(config: &Loaded, only: Option<&str>) -> Result<Vec<BuiltSource>> {
    let selected: Vec<&SourceConfig> = match only {
        Some(name) => vec![config.source(name)?],
        None => config.sources.iter().collect(),
    };
    if selected.is_empty() {
        return Err(anyhow!(
            "{}: no sources configured; add a [sources.<name>] table (see config.example.toml)",
            config.path.display()
        ));
    }
    let mut out = Vec::new();
    for s in selected {
        out.push(build(config, s).await?);
    }
    Ok(out)
}
