//! The durable outbox of Tracking-API messages, kept in the warehouse bucket.
//!
//! Layout: `<warehouse>/_tributary/outbox/<source>/<stream>/<seq>.jsonl` (seq zero-padded
//! to 20 digits), one wire-format message per line, plus `acked.json` =
//! `{"seq": N, "line": L}`.
//!
//! Guarantees:
//! - A file is written *before* the table commit `seq` that lands its rows, and counts only
//!   once that commit has landed: a file whose seq is above the stream's committed seq is a
//!   leftover of a failed commit and is ignored (the retry of that seq overwrites it). So
//!   the outbox holds exactly the messages of committed rows, with no extra machinery.
//! - Delivery goes in seq order; after every acknowledged batch the ack marker moves, so a
//!   process killed mid-delivery resends only unacknowledged messages, with the same
//!   `messageId`s. A fully acknowledged file is deleted.
//! - Delivery failure loses nothing: files stay until a later run delivers them.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Rejected, TrackingClient, batches, fit};

/// Where the acknowledged part of a stream's outbox ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The file being delivered.
    pub seq: i64,
    /// Lines of it acknowledged (or reported and skipped).
    pub line: usize,
}

/// One stream's outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

/// What a delivery pass over one stream's outbox did.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Messages the collector accepted.
    pub sent: u64,
    /// Messages reported and skipped (too big, or refused with 400).
    pub rejected: Vec<Rejected>,
    /// Messages still waiting (the collector failed).
    pub pending: u64,
    /// Why delivery stopped, when it did.
    pub error: Option<String>,
}

impl Outbox {
    /// The outbox of `source`/`stream` in the warehouse whose store and root are given.
    pub fn new(store: Arc<dyn ObjectStore>, root: &Path, source: &str, stream: &str) -> Self {
        let dir = root
            .clone()
            .join("_tributary")
            .join("outbox")
            .join(source)
            .join(stream);
        Outbox { store, dir }
    }

    fn file(&self, seq: i64) -> Path {
        self.dir.clone().join(format!("{seq:020}.jsonl"))
    }

    fn ack_path(&self) -> Path {
        self.dir.clone().join("acked.json")
    }

    /// Writes the messages of commit `seq` (before that commit is made). Overwrites a
    /// leftover of an earlier failed attempt at the same seq.
    pub async fn write(&self, seq: i64, messages: &[Value]) -> Result<()> {
        let mut body = Vec::new();
        for message in messages {
            serde_json::to_writer(&mut body, message)?;
            body.push(b'\n');
        }
        let path = self.file(seq);
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .with_context(|| format!("writing the tracking outbox file {path}"))?;
        Ok(())
    }

    /// The seqs of the files waiting, in order, up to `committed` (the stream's committed
    /// seq).
    pub async fn pending_files(&self, committed: i64) -> Result<Vec<i64>> {
        let mut seqs: Vec<i64> = self
            .store
            .list(Some(&self.dir))
            .map_ok(|meta| {
                meta.location
                    .filename()
                    .and_then(|name| name.strip_suffix(".jsonl"))
                    .and_then(|seq| seq.parse::<i64>().ok())
            })
            .try_collect::<Vec<_>>()
            .await
            .with_context(|| format!("listing the tracking outbox {}", self.dir))?
            .into_iter()
            .flatten()
            .filter(|seq| *seq <= committed)
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    async fn read_ack(&self) -> Result<Ack> {
        match self.store.get(&self.ack_path()).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading the outbox marker {}", self.ack_path()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Ack::default()),
            Err(e) => Err(anyhow!(
                "reading the outbox marker {}: {e}",
                self.ack_path()
            )),
        }
    }

    async fn write_ack(&self, ack: Ack) -> Result<()> {
        let body = serde_json::to_vec(&ack)?;
        self.store
            .put(&self.ack_path(), PutPayload::from(body))
            .await
            .with_context(|| format!("writing the outbox marker {}", self.ack_path()))?;
        Ok(())
    }

    async fn read_lines(&self, seq: i64) -> Result<Vec<Value>> {
        let path = self.file(seq);
        let bytes = self
            .store
            .get(&path)
            .await
            .with_context(|| format!("reading the tracking outbox file {path}"))?
            .bytes()
            .await?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line)
                    .with_context(|| format!("a line of {path} is not JSON"))
            })
            .collect()
    }

    /// Messages waiting up to commit `committed`, without sending anything.
    pub async fn backlog(&self, committed: i64) -> Result<u64> {
        let ack = self.read_ack().await?;
        let mut total = 0;
        for seq in self.pending_files(committed).await? {
            let lines = self.read_lines(seq).await?.len();
            let done = if seq == ack.seq { ack.line } else { 0 };
            total += lines.saturating_sub(done) as u64;
        }
        Ok(total)
    }

    /// Delivers every waiting file up to commit `committed`, in order, moving the ack marker
    /// after each acknowledged batch. A collector failure stops the pass and is reported in
    /// [`Delivery::error`]; what is left stays for the next run. `hold` is asked before
    /// every batch is sent (the stream's lease): an `Err` stops the pass the same way, so a
    /// worker that lost the stream's lease sends nothing more.
    pub async fn deliver(
        &self,
        client: &TrackingClient,
        committed: i64,
        hold: &(dyn Fn() -> Result<(), String> + Sync),
    ) -> Result<Delivery> {
        let mut delivery = Delivery::default();
        let mut ack = self.read_ack().await?;
        let files = self.pending_files(committed).await?;
        for (i, seq) in files.iter().copied().enumerate() {
            let lines = self.read_lines(seq).await?;
            let start = if seq == ack.seq {
                ack.line.min(lines.len())
            } else {
                0
            };
            if delivery.error.is_some() {
                delivery.pending += (lines.len() - start) as u64;
                continue;
            }
            // Fit each message; the ones that cannot fit are reported and counted as done.
            let mut fitted = Vec::new();
            let mut line_of = Vec::new();
            for (line, message) in lines.iter().enumerate().skip(start) {
                match fit(message.clone()) {
                    Ok(message) => {
                        fitted.push(message);
                        line_of.push(line);
                    }
                    Err(rejected) => {
                        tracing::warn!(message_id = %rejected.message_id, reason = %rejected.reason, "Skipped a tracking message that does not fit.");
                        delivery.rejected.push(rejected);
                    }
                }
            }
            let mut done = start;
            for range in batches(&fitted) {
                if let Err(reason) = hold() {
                    delivery.error = Some(reason);
                    break;
                }
                match client.send(&fitted[range.clone()]).await {
                    Ok(report) => {
                        delivery.sent += report.delivered;
                        delivery.rejected.extend(report.rejected);
                        // The batch's last line, and any unfittable lines before the next.
                        done = line_of.get(range.end).copied().unwrap_or(lines.len());
                        ack = Ack { seq, line: done };
                        self.write_ack(ack).await?;
                    }
                    Err(e) => {
                        delivery.error = Some(crate::logging::scrubbed(&e));
                        break;
                    }
                }
            }
            if fitted.is_empty() {
                done = lines.len();
            }
            if done >= lines.len() {
                self.store
                    .delete(&self.file(seq))
                    .await
                    .with_context(|| format!("deleting the delivered outbox file {seq}"))?;
                // Point the marker at the next file so a rerun starts there.
                ack = Ack {
                    seq: files.get(i + 1).copied().unwrap_or(seq + 1),
                    line: 0,
                };
                self.write_ack(ack).await?;
            } else {
                delivery.pending += (lines.len() - done) as u64;
            }
        }
        Ok(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn files_above_the_committed_seq_are_leftovers() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let outbox = Outbox::new(store, &Path::from("wh"), "stripe", "events");
        outbox.write(1, &[json!({"messageId": "a"})]).await.unwrap();
        outbox
            .write(2, &[json!({"messageId": "b"}), json!({"messageId": "c"})])
            .await
            .unwrap();
        // A commit that failed after writing its outbox file.
        outbox.write(3, &[json!({"messageId": "d"})]).await.unwrap();
        assert_eq!(outbox.pending_files(2).await.unwrap(), vec![1, 2]);
        assert_eq!(outbox.backlog(2).await.unwrap(), 3);
        assert_eq!(outbox.backlog(0).await.unwrap(), 0);
        // The retry of seq 3 replaces the leftover.
        outbox.write(3, &[]).await.unwrap();
        assert_eq!(outbox.backlog(3).await.unwrap(), 3);
        // An acknowledged prefix no longer counts.
        outbox.write_ack(Ack { seq: 2, line: 1 }).await.unwrap();
        assert_eq!(outbox.backlog(3).await.unwrap(), 2);
    }
}
