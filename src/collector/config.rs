//! Event-stream sources (`[sources.<name>] type = "http"`) and the collector's `[serve]`
//! section.
//!
//! An event-stream source has no schedule and no streams: Segment's libraries (or any HTTP
//! client) send it messages through `tributary serve`, authenticated by one of its write
//! keys. `javascript`, `server` and `mobile` are accepted as labels of the same kind, as
//! Segment groups its libraries; they only change what `sources list` prints.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Deserialize;
use tributary_sdk::Secret;

/// The `type`s of an event-stream source.
pub const KINDS: [&str; 4] = ["http", "javascript", "server", "mobile"];

/// The fewest characters a write key may have (a guessable key is no authentication).
pub const MIN_WRITE_KEY_CHARS: usize = 16;

/// `[sources.<name>]` of an event-stream type.
#[derive(Debug, Clone)]
pub struct EventSource {
    /// The source's name, also the folder of its tables in the warehouse.
    pub name: String,
    /// The type as written (`http`, `javascript`, `server` or `mobile`).
    pub kind: String,
    /// `write_keys`: the keys that authenticate messages for this source (secrets).
    pub write_keys: Vec<Secret>,
}

/// `[serve]`: the collector started by `tributary serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The address to listen on (`--listen` overrides it). Default `127.0.0.1:8088`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The spool directory: accepted messages are written and fsynced here before the
    /// answer, and removed once they are in the tables. One directory per collector
    /// process (`--spool` overrides it). Default `./spool`.
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
    /// Messages accepted but not yet in the tables past which new requests get 503 with
    /// `Retry-After` (from 1000 to 100000000). Default 1000000.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
    /// The most messages landed by one round of table commits (from 1 to 1000000; a round
    /// also stops at 32 MiB of messages). Default 25000. Under a backlog every round is
    /// this full, and each commit's cost grows with the table's files, so larger rounds
    /// land more per second: at 60 s of full load 10000 landed 38,500 events/s, 25000
    /// 59,000/s with a 283 MB peak, 40000 71,000/s with 333 MB (BENCHMARKS.md). Below
    /// the load a round lands what arrived in `commit_interval_ms`.
    #[serde(default = "default_commit_messages")]
    pub commit_messages: usize,
    /// Milliseconds between rounds of table commits while messages wait (from 10 to
    /// 600000). Default 1000.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Message ids remembered for deduplication (24 hours, at most this many; from 0 to
    /// 100000000). Default 1000000 (about 40 MB).
    #[serde(default = "default_dedupe_capacity")]
    pub dedupe_capacity: usize,
    /// Seconds a client has to send its whole request body (from 1 to 600); a slower one
    /// gets 408. Default 10.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_seconds: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            spool: default_spool(),
            max_pending: default_max_pending(),
            commit_messages: default_commit_messages(),
            commit_interval_ms: default_commit_interval_ms(),
            dedupe_capacity: default_dedupe_capacity(),
            body_timeout_seconds: default_body_timeout(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8088".to_owned()
}
fn default_spool() -> PathBuf {
    PathBuf::from("./spool")
}
fn default_max_pending() -> u64 {
    1_000_000
}
fn default_commit_messages() -> usize {
    25_000
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_dedupe_capacity() -> usize {
    1_000_000
}
fn default_body_timeout() -> u64 {
    10
}

impl ServeConfig {
    /// Checks every number's range, naming the key.
    pub fn validate(&self, file: &str) -> Result<()> {
        use tributary_sdk::options::check_range;
        let check = |key: &str, v: u64, lo: u64, hi: u64| {
            check_range(key, v, lo, hi).map_err(|e| anyhow::anyhow!("{file}: {e}"))
        };
        check("serve.max_pending", self.max_pending, 1000, 100_000_000)?;
        check(
            "serve.commit_messages",
            self.commit_messages as u64,
            1,
            1_000_000,
        )?;
        check(
            "serve.commit_interval_ms",
            self.commit_interval_ms,
            10,
            600_000,
        )?;
        check(
            "serve.dedupe_capacity",
            self.dedupe_capacity as u64,
            0,
            100_000_000,
        )?;
        check(
            "serve.body_timeout_seconds",
            self.body_timeout_seconds,
            1,
            600,
        )?;
        Ok(())
    }
}

/// Reads an event-stream source's keys (`table` without `type`); `at` is
/// `sources.<name>`. `resolve` resolves `${…}` references.
pub fn parse(
    name: String,
    kind: String,
    mut table: toml::Table,
    at: &str,
    file: &str,
    resolve: impl Fn(&str, &str) -> Result<String>,
) -> Result<EventSource> {
    for key in ["schedule", "streams", "history", "tracking", "models"] {
        if table.contains_key(key) {
            bail!(
                "{file}: `{at}.{key}` is not for an event-stream source (type \"{kind}\"): its messages arrive through `tributary serve` and land as they come"
            );
        }
    }
    let keys = match table.remove("write_keys") {
        Some(toml::Value::Array(items)) => items,
        Some(_) => bail!(
            "{file}: `{at}.write_keys` must be a list of strings, e.g. write_keys = [\"${{WEB_WRITE_KEY}}\"]"
        ),
        None => bail!(
            "{file}: `[{at}]` has no `write_keys`; run `tributary sources create {name} --type {kind}` for a new key, or write write_keys = [\"${{WEB_WRITE_KEY}}\"]"
        ),
    };
    if let Some(key) = table.keys().next() {
        bail!(
            "{file}: unknown key `{at}.{key}`; an event-stream source takes `type` and `write_keys`"
        );
    }
    let mut write_keys = Vec::new();
    for (i, item) in keys.into_iter().enumerate() {
        let here = format!("{at}.write_keys[{i}]");
        let toml::Value::String(s) = item else {
            bail!("{file}: `{here}` must be a string");
        };
        let key = resolve(&s, &here)?;
        if key.chars().count() < MIN_WRITE_KEY_CHARS || !key.chars().all(|c| c.is_ascii_graphic()) {
            bail!(
                "{file}: `{here}` must be at least {MIN_WRITE_KEY_CHARS} printable ASCII characters without spaces; run `tributary sources create` for a random one"
            );
        }
        write_keys.push(Secret::new(key));
    }
    if write_keys.is_empty() {
        bail!("{file}: `{at}.write_keys` is empty; give the source at least one write key");
    }
    Ok(EventSource {
        name,
        kind,
        write_keys,
    })
}

/// A new write key: 40 characters from `[A-Za-z0-9]` drawn from the operating system's
/// CSPRNG-seeded generator (about 238 bits).
pub fn new_write_key() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..40)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// What `sources list` shows of a write key: its first six characters.
pub fn key_prefix(key: &str) -> String {
    let head: String = key.chars().take(6).collect();
    format!("{head}…")
}
