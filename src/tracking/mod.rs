//! Delivery of Tracking-API messages (Segment Spec `identify`/`track`/`group`) to a
//! Segment-compatible collector. See [`client`] for the HTTP side: batching, size limits
//! and the bisection of rejected batches; see [`outbox`] for the durable queue in the
//! warehouse bucket that makes delivery exactly-once per acknowledgement.

pub mod client;
pub mod outbox;

use anyhow::Result;
use tributary_sdk::http::HttpConfig;

use crate::config::TrackingConfig;
use crate::warehouse::{Warehouse, read_position};
use client::TrackingClient;
use outbox::{Delivery, Outbox};

/// The client of a source's collector. Few retries with short backoff: a collector that is
/// down leaves its messages in the outbox for the next run instead of holding up the sync.
pub fn client_for(config: &TrackingConfig) -> Result<TrackingClient> {
    let mut http = HttpConfig::new("Tracking API", 50.0);
    http.burst = 10;
    http.max_retries = 3;
    http.max_backoff = std::time::Duration::from_secs(10);
    http.max_retry_after = std::time::Duration::from_secs(60);
    TrackingClient::new(&config.endpoint, config.write_key.clone(), http)
}

/// What `check` prints for a source's collector: one line (never the write key), and
/// whether it is a failure. See [`client::TrackingClient::probe`].
pub async fn check_line(config: &TrackingConfig) -> (String, bool) {
    match client_for(config) {
        Ok(client) => {
            let probe = client.probe().await;
            let line = probe.line(&client.host());
            (
                tributary_sdk::secret::scrub(&line).into_owned(),
                probe.failed(),
            )
        }
        Err(e) => (
            tributary_sdk::secret::scrub(&format!("tracking: FAILED: {e:#}")).into_owned(),
            true,
        ),
    }
}

/// The stream's committed seq (0 before its first commit or without a table).
pub async fn committed_seq(warehouse: &Warehouse, source: &str, stream: &str) -> Result<i64> {
    match warehouse.open(&[source, stream]).await? {
        None => Ok(0),
        Some(table) => {
            let app_id = format!("tributary/{source}/{stream}");
            Ok(read_position(&table, &app_id).await?.0)
        }
    }
}

/// Delivers the committed backlog of one stream's outbox, under the stream's lease when
/// the run holds one (it stops before the next batch once the lease is lost).
pub async fn deliver_stream(
    warehouse: &Warehouse,
    source: &str,
    stream: &str,
    outbox: &Outbox,
    client: &TrackingClient,
    lease: Option<&crate::lease::LeaseCheck>,
) -> Result<Delivery> {
    let committed = committed_seq(warehouse, source, stream).await?;
    let hold = || lease.map_or(Ok(()), |l| l.check());
    let delivery = outbox.deliver(client, committed, &hold).await?;
    match &delivery.error {
        Some(error) => {
            tracing::warn!(source, stream, sent = delivery.sent, pending = delivery.pending, error = %error, "Tracking delivery stopped; the rest stays in the outbox for the next run.")
        }
        None => tracing::info!(
            source,
            stream,
            sent = delivery.sent,
            rejected = delivery.rejected.len(),
            "Delivered tracking messages."
        ),
    }
    Ok(delivery)
}
