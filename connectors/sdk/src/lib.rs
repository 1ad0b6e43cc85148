//! The Tributary connector SDK.
//!
//! Everything a connector author needs, and nothing of the runtime: the [`Connector`] trait
//! (and its object-safe twin [`Source`]), stream schemas, pages of records, the conversion
//! of JSON records into Arrow batches, the rate-limited HTTP client, reusable pagination
//! pieces, the Tracking-API [`Message`]s that event streams also emit, and the conformance
//! kit that every connector runs in its tests.
//!
//! Vendor crates depend on this crate only; the `tributary` binary depends on this crate
//! and on every vendor crate and registers them in one explicit function.

pub mod clock;
pub mod conformance;
pub mod connector;
pub mod convert;
pub mod cursor;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod incremental;
pub mod options;
pub mod page;
pub mod pagination;
pub mod ranges;
pub mod schema;
pub mod secret;
pub mod simulator;
pub mod stats;
pub mod tracking;

pub use connector::{Connector, ReadRequest, Source, SourceContext, SourceFactory, factory};
pub use error::{Error, Result};
pub use page::{Page, PageStream, Record, Records};
pub use schema::{Column, ColumnType, StreamKind, StreamSchema};
pub use secret::Secret;
pub use tracking::Message;

/// The `User-Agent` every connector sends: `tributary/<version>`.
pub const USER_AGENT: &str = concat!("tributary/", env!("CARGO_PKG_VERSION"));
