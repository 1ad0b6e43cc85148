//! The connector contract: a typed [`Connector`] trait for authors, the object-safe
//! [`Source`] the runtime holds, joined by a blanket impl, and [`SourceFactory`], the one
//! thing a vendor crate exports for registration.
//!
//! The blanket impl owns what every connector's read would otherwise repeat: it decodes
//! the committed JSON cursor into the connector's own [`Connector::Cursor`] (an
//! undecodable one is [`Error::Cursor`] naming the stream) and drops it on a full
//! refresh, and the runtime hands every read the stream's [`StreamSchema`] as `discover`
//! returned it, so no connector looks its stream up again.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::page::PageStream;
use crate::schema::StreamSchema;
use crate::tracking::Message;

/// What the runtime tells a connector about where it runs.
#[derive(Debug, Clone, Default)]
pub struct SourceContext {
    /// The source's name in the config (`[sources.<name>]`).
    pub source: String,
}

/// One stream read. The runtime asks a [`Source`] with the committed cursor as JSON (the
/// default `C`); the blanket impl hands the [`Connector`] the same request with the cursor
/// decoded into [`Connector::Cursor`] (see [`ReadRequest::decode`]).
#[derive(Debug, Clone)]
pub struct ReadRequest<C = serde_json::Value> {
    /// The stream's schema, as `discover` returned it (with any columns discovery adds at
    /// run time, such as a vendor's custom fields).
    pub schema: StreamSchema,
    /// The cursor committed by the last run: `None` on the first sync, when the committed
    /// cursor is `null`, and on a full refresh.
    pub cursor: Option<C>,
    /// Ignore the cursor and read everything again, as a new snapshot: the first page must
    /// set [`crate::Page::reset`]. The snapshot replaces the table's rows only when it is
    /// complete; until then, the old rows stay and are updated in place, so a failed or
    /// interrupted refresh never shrinks the table.
    pub full_refresh: bool,
}

impl<C> ReadRequest<C> {
    /// The stream's name (its schema's name, which is also its table's).
    pub fn stream(&self) -> &str {
        &self.schema.name
    }
}

impl ReadRequest {
    /// The request with its committed cursor decoded into `C`: dropped on a full refresh,
    /// `None` when it is absent or `null`, and [`Error::Cursor`] naming the stream when it
    /// does not decode (corrupt, or written by an incompatible version).
    pub fn decode<C: DeserializeOwned>(self) -> Result<ReadRequest<C>> {
        let cursor = if self.full_refresh {
            None
        } else {
            crate::cursor::decode(&self.schema.name, self.cursor)?
        };
        Ok(ReadRequest {
            schema: self.schema,
            cursor,
            full_refresh: self.full_refresh,
        })
    }
}

/// A vendor connector, typed. Implement this; the runtime uses it through [`Source`].
///
/// Guarantees a connector gives: pages come in order; each page's cursor is a valid
/// resume point covering exactly the records of that page and all before it; reading again
/// from a committed cursor never skips a change made after it.
#[async_trait]
pub trait Connector: Send + Sync + Sized + 'static {
    /// The source's options (`[sources.<name>]` less the runtime's own keys). Use
    /// `#[serde(deny_unknown_fields)]` so a misspelt key is an error naming it.
    type Config: DeserializeOwned + Send;

    /// Where a read resumes: committed as JSON with every page (see
    /// [`crate::Page::with_cursor`]) and decoded by the SDK before the next read. Keep it
    /// plain data (no map with non-text keys), so that it always encodes.
    type Cursor: Serialize + DeserializeOwned + Send;

    /// The `type` that selects this connector in the config, e.g. `"stripe"`.
    const KIND: &'static str;

    /// Builds a source from its options. Validates them; makes no network call.
    fn new(config: Self::Config, ctx: SourceContext) -> Result<Self>;

    /// The streams a source with these options has whatever the vendor answers (a fixed
    /// list, or the ones the options name), when there is such a list; `None` (the default)
    /// when only the vendor can tell. `tributary plan --per stream` plans one unit of work
    /// per stream from it, without a network call.
    fn known_streams(config: &Self::Config) -> Option<Vec<String>> {
        let _ = config;
        None
    }

    /// Verifies the credentials and reachability with one cheap call.
    async fn check(&self) -> Result<()>;

    /// The streams this source offers, with their schemas.
    async fn discover(&self) -> Result<Vec<StreamSchema>>;

    /// Reads one stream from its committed cursor (already decoded, and `None` on a full
    /// refresh) as pages.
    async fn read(&self, request: ReadRequest<Self::Cursor>) -> Result<PageStream>;

    /// The Tracking-API messages that `record` of `stream` stands for, for sources with
    /// tracking enabled. `source` is the source's name, the seed of every derived id. Only
    /// event streams return any; the default returns none. Must be a pure function of its
    /// arguments: a record mapped again after a retry must give the same messages.
    fn messages(&self, source: &str, stream: &str, record: &serde_json::Value) -> Vec<Message> {
        let _ = (source, stream, record);
        Vec::new()
    }
}

/// The object-safe twin of [`Connector`], held by the runtime as `Arc<dyn Source>`.
#[async_trait]
pub trait Source: Send + Sync {
    /// The connector's `type`.
    fn kind(&self) -> &'static str;
    /// See [`Connector::check`].
    async fn check(&self) -> Result<()>;
    /// See [`Connector::discover`].
    async fn discover(&self) -> Result<Vec<StreamSchema>>;
    /// See [`Connector::read`]; the cursor is the committed JSON, decoded here.
    async fn read(&self, request: ReadRequest) -> Result<PageStream>;
    /// See [`Connector::messages`].
    fn messages(&self, source: &str, stream: &str, record: &serde_json::Value) -> Vec<Message>;
}

#[async_trait]
impl<C: Connector> Source for C {
    fn kind(&self) -> &'static str {
        C::KIND
    }
    async fn check(&self) -> Result<()> {
        Connector::check(self).await
    }
    async fn discover(&self) -> Result<Vec<StreamSchema>> {
        Connector::discover(self).await
    }
    async fn read(&self, request: ReadRequest) -> Result<PageStream> {
        Connector::read(self, request.decode()?).await
    }
    fn messages(&self, source: &str, stream: &str, record: &serde_json::Value) -> Vec<Message> {
        Connector::messages(self, source, stream, record)
    }
}

/// The constructor a [`SourceFactory`] holds.
type BuildFn = dyn Fn(serde_json::Value, SourceContext) -> Result<Arc<dyn Source>> + Send + Sync;

/// What a [`SourceFactory`] calls for [`Connector::known_streams`].
type KnownStreamsFn = dyn Fn(serde_json::Value) -> Result<Option<Vec<String>>> + Send + Sync;

/// Builds sources of one connector type from their options.
#[derive(Clone)]
pub struct SourceFactory {
    /// The connector's `type`.
    pub kind: &'static str,
    build: Arc<BuildFn>,
    known_streams: Arc<KnownStreamsFn>,
}

impl std::fmt::Debug for SourceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFactory")
            .field("kind", &self.kind)
            .finish()
    }
}

impl SourceFactory {
    /// Builds a source from its options (already freed of the runtime's own keys, with
    /// `${ENV}` references resolved). A deserialization error is an [`Error::Config`] naming
    /// the offending key's full path, never its value (see [`crate::options`]).
    pub fn build(&self, options: serde_json::Value, ctx: SourceContext) -> Result<Arc<dyn Source>> {
        (self.build)(options, ctx)
    }

    /// See [`Connector::known_streams`]; `options` as for [`SourceFactory::build`] (`${ENV}`
    /// references may be left unresolved: no option is used to reach the vendor).
    pub fn known_streams(&self, options: serde_json::Value) -> Result<Option<Vec<String>>> {
        (self.known_streams)(options)
    }
}

impl SourceFactory {
    /// A factory for connectors that are not one Rust type per `kind`, such as vendors
    /// assembled from a declarative spec: `build` gets the options and the context,
    /// `known_streams` the options (see [`SourceFactory::known_streams`]).
    pub fn from_fn(
        kind: &'static str,
        build: impl Fn(serde_json::Value, SourceContext) -> Result<Arc<dyn Source>>
        + Send
        + Sync
        + 'static,
        known_streams: impl Fn(serde_json::Value) -> Result<Option<Vec<String>>> + Send + Sync + 'static,
    ) -> SourceFactory {
        SourceFactory {
            kind,
            build: Arc::new(build),
            known_streams: Arc::new(known_streams),
        }
    }
}

/// The factory of connector `C`: what a vendor crate's `factory()` returns.
pub fn factory<C: Connector>() -> SourceFactory {
    SourceFactory {
        kind: C::KIND,
        build: Arc::new(|options, ctx| {
            let config: C::Config = crate::options::from_value(options)?;
            Ok(Arc::new(C::new(config, ctx)?) as Arc<dyn Source>)
        }),
        known_streams: Arc::new(|options| {
            let config: C::Config = crate::options::from_value(options)?;
            Ok(C::known_streams(&config))
        }),
    }
}

/// Picks the stream named `name` out of `streams`, or says which exist.
pub fn find_stream<'a>(streams: &'a [StreamSchema], name: &str) -> Result<&'a StreamSchema> {
    find_named(streams, name, |s| &s.name)
}

/// Picks the item called `name` (by `name_of`) out of `items`, a connector's own table of
/// streams (definitions, read plans), or fails with [`Error::UnknownStream`] listing the
/// names there are.
pub fn find_named<'a, T>(
    items: &'a [T],
    name: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    items
        .iter()
        .find(|item| name_of(item) == name)
        .ok_or_else(|| Error::UnknownStream {
            stream: name.to_owned(),
            available: items.iter().map(&name_of).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{Page, Records};
    use futures::StreamExt;
    use serde::Deserialize;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Position {
        after: u32,
    }

    /// Remembers what its read was handed, and emits one page at the next position.
    #[derive(Default)]
    struct Probe {
        seen: Mutex<Vec<(String, Option<Position>, bool)>>,
    }

    #[async_trait]
    impl Connector for Probe {
        type Config = serde_json::Value;
        type Cursor = Position;
        const KIND: &'static str = "probe";

        fn new(_: serde_json::Value, _: SourceContext) -> Result<Self> {
            Ok(Probe::default())
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
        async fn discover(&self) -> Result<Vec<StreamSchema>> {
            Ok(vec![schema()])
        }
        async fn read(&self, request: ReadRequest<Position>) -> Result<PageStream> {
            let next = Position {
                after: request.cursor.as_ref().map_or(0, |c| c.after) + 1,
            };
            self.seen.lock().unwrap().push((
                request.stream().to_owned(),
                request.cursor,
                request.full_refresh,
            ));
            let page = Page::with_cursor(Records::Values(Vec::new()), &next);
            Ok(futures::stream::iter([Ok(page)]).boxed())
        }
    }

    fn schema() -> StreamSchema {
        StreamSchema::from_json(r#"{"name":"things","columns":[{"name":"id","type":"string"}]}"#)
            .unwrap()
    }

    fn request(cursor: Option<serde_json::Value>, full_refresh: bool) -> ReadRequest {
        ReadRequest {
            schema: schema(),
            cursor,
            full_refresh,
        }
    }

    #[tokio::test]
    async fn the_blanket_impl_decodes_drops_and_refuses_cursors() {
        let probe = Probe::default();
        let source: &dyn Source = &probe;
        let cursor = Some(serde_json::json!({"after": 4}));
        let mut pages = source.read(request(cursor.clone(), false)).await.unwrap();
        // The page's cursor is the connector's, encoded for the next run.
        let page = pages.next().await.unwrap().unwrap();
        assert_eq!(page.cursor, serde_json::json!({"after": 5}));
        for (cursor, full_refresh) in [(cursor, true), (Some(serde_json::Value::Null), false)] {
            drop(source.read(request(cursor, full_refresh)).await.unwrap());
        }
        assert_eq!(
            *probe.seen.lock().unwrap(),
            vec![
                ("things".to_owned(), Some(Position { after: 4 }), false),
                ("things".to_owned(), None, true),
                ("things".to_owned(), None, false),
            ]
        );
        // An undecodable cursor never reaches the connector.
        let bad = source
            .read(request(Some(serde_json::json!({"after": "x"})), false))
            .await;
        assert!(
            matches!(&bad, Err(Error::Cursor { stream, .. }) if stream == "things"),
            "{:?}",
            bad.err()
        );
        assert_eq!(probe.seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn find_named_lists_what_there_is() {
        let names = ["a", "b"];
        assert_eq!(find_named(&names, "b", |n| n).unwrap(), &"b");
        let err = find_named(&names, "c", |n| n).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownStream { stream, available } if stream == "c" && available == "a, b"),
            "{err}"
        );
    }
}
