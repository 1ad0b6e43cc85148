//! The SDK's error type: one `#[non_exhaustive]` enum whose variants carry the context a
//! user needs to fix the cause (the config key, the stream, the HTTP status and the
//! vendor's own message).

use std::time::Duration;

/// A `Result` whose error defaults to the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A source option is missing or invalid.
    #[error("invalid option `{key}`: {message}")]
    Config {
        /// The option, as written in the config file (e.g. `api_key`).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The vendor rejected the credentials (HTTP 401/403).
    #[error("{vendor} rejected the credentials (HTTP {status}): {message}")]
    Auth {
        /// The vendor, e.g. `Stripe`.
        vendor: String,
        /// The HTTP status.
        status: u16,
        /// The vendor's own message.
        message: String,
    },

    /// The vendor answered with an error status that retries did not cure.
    #[error("{method} {url} failed with HTTP {status}: {message}")]
    Http {
        /// The HTTP method.
        method: String,
        /// The request URL, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The vendor's own message (or the start of the body).
        message: String,
    },

    /// The request did not get an answer (connection refused or reset, timeout, truncated
    /// body) even after retries.
    #[error("{method} {url} failed after {attempts} attempts: {message}")]
    Transport {
        /// The HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        message: String,
    },

    /// Rate limited for longer than the client is willing to wait: a `Retry-After` past
    /// its limit, or 429s that went on through every retry it allows.
    #[error("{url} is rate limited; giving up rather than waiting {retry_after:?} more")]
    RateLimited {
        /// The request URL.
        url: String,
        /// The wait the client would have had next: the vendor's `Retry-After`, or its
        /// own backoff when the vendor said none.
        retry_after: Duration,
    },

    /// The vendor broke its own API contract in a way retrying cannot cure: a paginated
    /// walk that repeats a cursor or makes no progress, a 200 whose body is not the
    /// documented shape, an answer larger than the configured cap. The stream stops; what
    /// was committed before stays, and nothing of the offending answer lands.
    #[error("{vendor} stream `{stream}`: {message}")]
    Protocol {
        /// The vendor, e.g. `Stripe`.
        vendor: String,
        /// The stream (or the request, when no stream is involved).
        stream: String,
        /// What the vendor did, and what it means for the data.
        message: String,
    },

    /// A vendor response could not be understood.
    #[error("could not decode {context}: {message}")]
    Decode {
        /// What was being decoded (e.g. `GET /v1/charges response`).
        context: String,
        /// The parser's message.
        message: String,
    },

    /// The configuration names a stream the connector does not have.
    #[error("unknown stream `{stream}`; available streams: {available}")]
    UnknownStream {
        /// The stream asked for.
        stream: String,
        /// The streams that exist, comma-separated.
        available: String,
    },

    /// A committed cursor could not be used (corrupt, or written by an incompatible
    /// version).
    #[error("stream `{stream}`: the committed cursor is not usable: {message}")]
    Cursor {
        /// The stream.
        stream: String,
        /// What is wrong.
        message: String,
    },

    /// A schema file or a record did not fit the schema machinery.
    #[error("schema of `{stream}`: {message}")]
    Schema {
        /// The stream.
        stream: String,
        /// What is wrong.
        message: String,
    },

    /// An Arrow error while building a batch.
    #[error("building Arrow batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// The account cannot read this stream at all (a vendor plan or add-on that does not
    /// include the endpoint, e.g. Zendesk's ticket forms below Suite Growth). Not a
    /// failure and not a credentials problem: the stream is skipped with a warning, the
    /// other streams sync, and what was committed before stays.
    #[error("not available on this account's plan: {message}")]
    Unavailable {
        /// The vendor's own message.
        message: String,
    },

    /// The connector must not start (or go on with) this stream now, e.g. the vendor's daily
    /// API budget is nearly spent. Not a failure: what was read before is committed, the
    /// run ends as deferred, and the next run resumes from the committed cursor.
    #[error("deferred: {reason}")]
    Deferred {
        /// Why, and when it will be worth trying again.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Protocol`].
    pub fn protocol(
        vendor: impl Into<String>,
        stream: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Protocol {
            vendor: vendor.into(),
            stream: stream.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Decode`].
    pub fn decode(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Decode {
            context: context.into(),
            message: message.to_string(),
        }
    }
}
