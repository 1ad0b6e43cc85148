//! The connector registry: every vendor crate, registered in one explicit function; and
//! building and discovering the configured sources.
//!
//! Two phases with different failure rules. Building a source validates its options and
//! makes no network call: a mistake there is a config error and stops the command before
//! anything runs. Discovering a source's streams talks to the vendor: a source whose
//! discovery fails (refused credentials, a vendor down) or is cancelled is reported as a
//! [`SourceFailure`] and the other sources go on.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use tributary_sdk::simulator::SimulatorFactory;
use tributary_sdk::{Source, SourceContext, SourceFactory, StreamSchema};

use crate::config::{Loaded, SourceConfig};
use crate::engine::{Cancel, Status};

/// One vendor: its connector and its simulator.
#[derive(Debug, Clone)]
pub struct Vendor {
    /// Builds the vendor's sources.
    pub source: SourceFactory,
    /// Starts the vendor's simulator (`sandbox`, `demo`).
    pub simulator: SimulatorFactory,
}

/// A vendor crate that exports `factory()` and, behind its `sandbox` feature,
/// `simulator::factory()`.
macro_rules! vendor {
    ($krate:ident) => {
        Vendor {
            source: $krate::factory(),
            simulator: $krate::simulator::factory(),
        }
    };
}

/// Every vendor this binary knows, in the order `demo` and the docs list them. Adding a
/// vendor: one line here (and its crate in the workspace).
pub fn vendors() -> Vec<Vendor> {
    let mut vendors = vec![
        vendor!(tributary_stripe),
        vendor!(tributary_zendesk),
        vendor!(tributary_salesforce),
    ];
    // Vendors written as specs (connectors/declarative/specs/<vendor>.toml).
    vendors.extend(
        tributary_declarative::factories()
            .into_iter()
            .zip(tributary_declarative::simulator::factories())
            .map(|(source, simulator)| Vendor { source, simulator }),
    );
    vendors
}

/// Every connector this binary knows: the vendors, and `declarative` (a spec file of the
/// user's).
pub fn factories() -> Vec<SourceFactory> {
    let mut factories: Vec<SourceFactory> = vendors().into_iter().map(|v| v.source).collect();
    factories.push(tributary_declarative::user_factory());
    factories
}

/// A configured source whose options are valid; its streams are not known yet.
pub struct Prepared {
    /// Its configuration.
    pub config: SourceConfig,
    /// The connector.
    pub source: Arc<dyn Source>,
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

/// A source that could not be discovered or checked, and why.
#[derive(Debug, Clone)]
pub struct SourceFailure {
    /// The source's name.
    pub source: String,
    /// [`Status::Failed`] with the error, or [`Status::Cancelled`].
    pub status: Status,
}

impl SourceFailure {
    /// The line summaries print after the source's name: `FAILED: <error>` or `cancelled`.
    pub fn describe(&self) -> String {
        match &self.status {
            Status::Failed(e) => format!("FAILED: {e}"),
            other => other.word().to_owned(),
        }
    }
}

/// An SDK error of source `name`, with a config key written as its full path.
pub fn source_error(config: &Loaded, name: &str, e: tributary_sdk::Error) -> String {
    let text = match e {
        tributary_sdk::Error::Config { key, message } => format!(
            "{}: invalid option `sources.{name}.{key}`: {message}",
            config.path.display()
        ),
        other => other.to_string(),
    };
    // Vendors' messages may echo a credential; never print one.
    tributary_sdk::secret::scrub(&text).into_owned()
}

/// Builds one configured source from its options. Validates them; no network call.
pub fn prepare(config: &Loaded, source: &SourceConfig) -> Result<Prepared> {
    let file = config.path.display();
    // Every connector's HTTP client reads its body cap from here (see the SDK's `http`).
    tributary_sdk::http::set_max_body_bytes(config.sync.max_response_mb * 1024 * 1024);
    let factories = factories();
    let factory = factories
        .iter()
        .find(|f| f.kind == source.kind)
        .ok_or_else(|| {
            // The type as written is not repeated: config errors never quote a value.
            anyhow!(
                "{file}: `sources.{}.type` is not a connector this build knows; known types: {}",
                source.name,
                factories
                    .iter()
                    .map(|f| f.kind)
                    .collect::<Vec<_>>()
                    .join(", ")
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
            e @ tributary_sdk::Error::Config { .. } => {
                anyhow!("{}", source_error(config, &source.name, e))
            }
            other => anyhow!(
                "{file}: `[sources.{}]`: {}",
                source.name,
                source_error(config, &source.name, other)
            ),
        })?;
    Ok(Prepared {
        config: source.clone(),
        source: built,
    })
}

/// Builds every source of the config, or the one named; the first config error stops it.
pub fn prepare_all(config: &Loaded, only: Option<&str>) -> Result<Vec<Prepared>> {
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
    selected.into_iter().map(|s| prepare(config, s)).collect()
}

/// Discovers a source's streams and selects the ones to sync: `only_stream` if given (any
/// stream the source has), else the configured `streams`, else all. Gives up as
/// [`Status::Cancelled`] as soon as `cancel` fires.
pub async fn discover(
    config: &Loaded,
    prepared: Prepared,
    only_stream: Option<&str>,
    cancel: &Cancel,
) -> Result<BuiltSource, SourceFailure> {
    let name = prepared.config.name.clone();
    let failed = |message: String| SourceFailure {
        source: name.clone(),
        status: Status::Failed(message),
    };
    if cancel.is_cancelled() {
        return Err(SourceFailure {
            source: name.clone(),
            status: Status::Cancelled,
        });
    }
    // Dropping the discovery future on cancel drops its requests in flight.
    let all = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            return Err(SourceFailure { source: name.clone(), status: Status::Cancelled });
        }
        all = prepared.source.discover() => all.map_err(|e| {
            failed(format!("discovering streams: {}", source_error(config, &name, e)))
        })?,
    };
    let streams = match (only_stream, &prepared.config.streams) {
        (Some(stream), _) => vec![
            tributary_sdk::connector::find_stream(&all, stream)
                .map_err(|e| failed(e.to_string()))?
                .clone(),
        ],
        (None, None) => all,
        (None, Some(wanted)) => {
            let mut out = Vec::new();
            for (i, stream) in wanted.iter().enumerate() {
                match all.iter().find(|s| &s.name == stream) {
                    Some(s) => out.push(s.clone()),
                    // Named by position: config errors never quote a value.
                    None => {
                        return Err(failed(format!(
                            "{}: `sources.{name}.streams[{i}]` is not a stream of {}; available: {}",
                            config.path.display(),
                            prepared.config.kind,
                            all.iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
            out
        }
    };
    Ok(BuiltSource {
        config: prepared.config,
        source: prepared.source,
        streams,
    })
}

/// Discovers every prepared source at once (a slow vendor does not hold up the others).
/// Each failure is logged and returned; the sources that worked are returned in order.
pub async fn discover_all(
    config: &Loaded,
    prepared: Vec<Prepared>,
    only_stream: Option<&str>,
    cancel: &Cancel,
) -> (Vec<BuiltSource>, Vec<SourceFailure>) {
    let results = futures::future::join_all(
        prepared
            .into_iter()
            .map(|p| discover(config, p, only_stream, cancel)),
    )
    .await;
    let mut built = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(b) => built.push(b),
            Err(f) => {
                if let Status::Failed(e) = &f.status {
                    tracing::error!(source = %f.source, error = %e, "Could not discover the source's streams; the other sources go on.");
                }
                failures.push(f);
            }
        }
    }
    (built, failures)
}
