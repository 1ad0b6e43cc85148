//! Data files written on a thread of their own, so the engine converts the next page while
//! the previous batch is encoded, compressed and uploaded.
//!
//! Encoding a batch into Parquet is CPU work (a tenth of a Stripe sync's time); done on the
//! engine's task it stalls conversion, and the two never overlap. [`FileWriter`] hands
//! batches through a channel to a blocking thread that owns the open [`DataFile`], and
//! [`FileWriter::write`] returns once that thread has taken the batch: one batch is
//! encoded while the next is converted, never more, so memory holds two batches as it
//! did when both ran on one task (the writer is the faster side, so the hand-over rarely
//! waits).
//!
//! Guarantees: batches are written in the order given, into the file open when they were
//! given; [`FileWriter::finish`] returns only once every batch given before it is in a
//! finished (closed and uploaded) file, so a commit made after it names only complete
//! files. The first write error stops the writer: the call that meets it (or the next one)
//! returns that error, and nothing written after it is handed back as finished.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use arrow::datatypes::Schema as ArrowSchema;
use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{DataFile, NewFile, StreamTable};

/// What the engine asks the writer thread to do, in order.
enum Msg {
    /// Finish the open file (if any) and write into this one from now on.
    Open(Box<DataFile>),
    /// Append a batch to the open file.
    Write(RecordBatch),
    /// Finish the open file and hand back every file finished since the last `Finish`.
    Finish(oneshot::Sender<Vec<NewFile>>),
}

/// One stream run's data-file writer, running on a blocking thread (see the module doc).
pub struct FileWriter {
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<Result<()>>>,
    /// The schema of the file open on the writer thread, if one is.
    open: Option<Arc<ArrowSchema>>,
}

impl FileWriter {
    /// Starts the writer thread.
    pub fn spawn() -> Self {
        let (tx, rx) = mpsc::channel(1);
        let handle = tokio::runtime::Handle::current();
        // A blocking thread, not a runtime worker: encoding a batch takes milliseconds of
        // CPU, which would stall the fetch tasks on a worker. `block_on` still drives the
        // upload's I/O through the runtime.
        let task = tokio::task::spawn_blocking(move || handle.block_on(run(rx)));
        FileWriter {
            tx: Some(tx),
            task: Some(task),
            open: None,
        }
    }

    /// Appends `batch` to the open data file of `table`, or to a new one when none is open
    /// or the batch's schema differs from the open file's (the stream gained a column).
    /// Returns once the writer thread has taken the batch (after the one before it is
    /// written), not once this one is written.
    pub async fn write(&mut self, table: &StreamTable, batch: RecordBatch) -> Result<()> {
        let schema = batch.schema();
        if self.open.as_ref() != Some(&schema) {
            let file = table.new_file_for(&batch)?;
            self.send(Msg::Open(Box::new(file))).await?;
            self.open = Some(schema);
        }
        self.send(Msg::Write(batch)).await?;
        // The channel holds one message: room again means the thread took the batch.
        let taken = match &self.tx {
            Some(tx) => tx.reserve().await.is_ok(),
            None => false,
        };
        if !taken {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Finishes the open data file and returns every file finished since the last call,
    /// once each is completely written (closed and uploaded). Empty when nothing was
    /// written since.
    pub async fn finish(&mut self) -> Result<Vec<NewFile>> {
        let (reply, files) = oneshot::channel();
        self.send(Msg::Finish(reply)).await?;
        self.open = None;
        match files.await {
            Ok(files) => Ok(files),
            Err(_) => Err(self.failure().await),
        }
    }

    async fn send(&mut self, msg: Msg) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(anyhow!(
                "the data file writer stopped after an earlier error"
            ));
        };
        if tx.send(msg).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Why the writer thread stopped (it only stops early on an error).
    async fn failure(&mut self) -> anyhow::Error {
        self.tx = None;
        self.open = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow!("the data file writer stopped unexpectedly"),
                Err(e) => anyhow!("the data file writer failed: {e}"),
            },
            None => anyhow!("the data file writer stopped after an earlier error"),
        }
    }
}

/// The writer thread: the open file, and the files finished since the last `Finish`.
async fn run(mut rx: mpsc::Receiver<Msg>) -> Result<()> {
    let mut file: Option<DataFile> = None;
    let mut finished: Vec<NewFile> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Open(next) => {
                close(&mut file, &mut finished).await?;
                file = Some(*next);
            }
            Msg::Write(batch) => {
                if let Some(f) = file.as_mut() {
                    f.write(&batch).await?;
                }
            }
            Msg::Finish(reply) => {
                close(&mut file, &mut finished).await?;
                // The engine stopped waiting only when it is gone; nothing to hand back.
                let _ = reply.send(std::mem::take(&mut finished));
            }
        }
    }
    // The engine dropped the writer (it failed or stopped): an open file is abandoned
    // unfinished, as it was before; no commit names it.
    Ok(())
}

async fn close(file: &mut Option<DataFile>, finished: &mut Vec<NewFile>) -> Result<()> {
    if let Some(f) = file.take()
        && f.rows() > 0
    {
        finished.push(f.finish().await?);
    }
    Ok(())
}
