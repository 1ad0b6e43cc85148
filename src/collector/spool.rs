//! The spool: accepted messages on local disk, fsynced before the collector answers 200,
//! until the committer has them in the tables.
//!
//! A spool is a directory of one collector process: `collector-id` (a random id, the
//! collector's name in the tables' commits) and segment files `seg-<first seq>.log` of
//! records `[len u32][crc32 u32][seq u64][source len u8][source][message JSON]`. Every
//! record has a sequence number one above the previous one, across segments and restarts.
//!
//! **Group commit.** Requests hand their messages to one writer task; it writes everything
//! that queued up while the previous fsync ran, fsyncs once, and then answers all of them,
//! so concurrent requests share an fsync. **Crash safety.** A record is acknowledged only
//! after its fsync; a torn tail (a write the process died in) is cut off when the spool is
//! opened again; that write was never acknowledged. Segments whose every record is landed
//! are deleted, but never the newest, which carries the sequence on.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{Notify, mpsc, oneshot};

/// A segment is closed and a new one started past this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The most requests one fsync covers.
const GROUP_MAX: usize = 512;
/// Requests waiting for the writer past which new ones are turned away (503).
const QUEUE: usize = 4096;
/// Bytes of a record before its source name.
const HEADER: usize = 4 + 4 + 8 + 1;

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number in this spool.
    pub seq: u64,
    /// The source it was sent to.
    pub source: String,
    /// The message, as JSON.
    pub json: Vec<u8>,
}

/// Positions shared by the writer, the committer and the server.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last sequence number fsynced (acknowledged).
    pub written: AtomicU64,
    /// The last sequence number whose message is in the tables (or a duplicate dropped).
    pub landed: AtomicU64,
    /// Woken after each fsync.
    pub wrote: Notify,
}

impl Progress {
    /// Messages acknowledged but not yet landed.
    pub fn pending(&self) -> u64 {
        self.written
            .load(Ordering::Acquire)
            .saturating_sub(self.landed.load(Ordering::Acquire))
    }
}

struct Append {
    records: Vec<(Arc<str>, Vec<u8>)>,
    done: oneshot::Sender<Result<u64, String>>,
}

/// Hands messages to the spool's writer.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Append>,
}

/// Why an append was not taken.
#[derive(Debug)]
pub enum AppendError {
    /// The writer's queue is full: try again later (503).
    Busy,
    /// Writing or fsyncing failed (500); the messages are not acknowledged.
    Failed(String),
}

impl Appender {
    /// Spools `records` (source, message JSON) and resolves once they are fsynced, with
    /// the last one's sequence number.
    pub async fn append(&self, records: Vec<(Arc<str>, Vec<u8>)>) -> Result<u64, AppendError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(Append { records, done })
            .map_err(|_| AppendError::Busy)?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AppendError::Failed(e)),
            Err(_) => Err(AppendError::Failed("the spool writer stopped".to_owned())),
        }
    }
}

/// An opened spool.
pub struct Spool {
    /// The directory.
    pub dir: PathBuf,
    /// This collector's id (from `collector-id`).
    pub collector_id: String,
    /// The first sequence number still in the spool (where replay starts).
    pub first: u64,
    /// The last sequence number written before this process (0: none).
    pub last: u64,
    /// The open segment the writer appends to, and its first sequence number.
    active: (File, u64),
}

/// The name of the segment whose first record is `seq`.
fn segment_name(seq: u64) -> String {
    format!("seg-{seq:020}.log")
}

/// The segments in `dir`, by first sequence number.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot list the spool directory {}", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("seg-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the spool directory {}", dir.display()))
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end or a torn or
/// corrupt tail.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<Record>> {
    let mut head = [0u8; 8];
    if let Err(e) = r.read_exact(&mut head) {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(e),
        };
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(HEADER - 8..=64 << 20).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if let Err(e) = r.read_exact(&mut body) {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(e),
        };
    }
    if crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    let source_len = body[8] as usize;
    if body.len() < 9 + source_len {
        return Ok(None);
    }
    let source = String::from_utf8_lossy(&body[9..9 + source_len]).into_owned();
    let json = body[9 + source_len..].to_vec();
    Ok(Some(Record { seq, source, json }))
}

fn encode(out: &mut Vec<u8>, seq: u64, source: &str, json: &[u8]) {
    let source = &source.as_bytes()[..source.len().min(255)];
    let len = 8 + 1 + source.len() + json.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(source.len() as u8);
    out.extend_from_slice(source);
    out.extend_from_slice(json);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Spool {
    /// Opens (or creates) the spool at `dir`: cuts a torn tail off the newest segment and
    /// starts a new segment after it.
    pub fn open(dir: &Path) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let id_path = dir.join("collector-id");
        let collector_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                let tmp = dir.join("collector-id.tmp");
                let mut f = File::create(&tmp)
                    .with_context(|| format!("cannot write in the spool {}", dir.display()))?;
                f.write_all(id.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &id_path)?;
                sync_dir(dir)?;
                id
            }
        };
        let segs = segments(dir)?;
        let first = segs.first().map(|s| s.0).unwrap_or(1);
        let mut last = first.saturating_sub(1);
        if let Some((seg_first, path)) = segs.last() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open the spool segment {}", path.display()))?;
            let mut reader = BufReader::new(&file);
            let mut good = 0u64;
            let mut expect = *seg_first;
            while let Some(r) = read_record(&mut reader)? {
                if r.seq != expect {
                    break;
                }
                good += (HEADER + r.source.len() + r.json.len()) as u64;
                expect += 1;
            }
            let len = file.metadata()?.len();
            if good < len {
                tracing::warn!(segment = %path.display(), bytes = len - good, "Cutting off a torn spool tail (a write the process died in; it was never acknowledged).");
                file.set_len(good)?;
                file.sync_all()?;
            }
            last = expect - 1;
        }
        let next = last + 1;
        let path = dir.join(segment_name(next));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create the spool segment {}", path.display()))?;
        sync_dir(dir)?;
        Ok(Spool {
            dir: dir.to_owned(),
            collector_id,
            first: first.min(next),
            last,
            active: (file, next),
        })
    }

    /// Starts the writer task; returns the handle requests append through.
    pub fn start_writer(self, progress: Arc<Progress>) -> (Appender, Reader) {
        let (tx, mut rx) = mpsc::channel::<Append>(QUEUE);
        progress.written.store(self.last, Ordering::Release);
        progress
            .landed
            .store(self.first.saturating_sub(1), Ordering::Release);
        let reader = Reader {
            dir: self.dir.clone(),
            current: None,
            next: self.first,
        };
        let dir = self.dir;
        let (file, seg_first) = self.active;
        let mut state = Some(WriterState {
            file,
            bytes: 0,
            next: seg_first,
            dir,
            broken: None,
        });
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(a) => group.push(a),
                        Err(_) => break,
                    }
                }
                let Some(mut st) = state.take() else { break };
                let records: Vec<Vec<(Arc<str>, Vec<u8>)>> = group
                    .iter_mut()
                    .map(|a| std::mem::take(&mut a.records))
                    .collect();
                let joined = tokio::task::spawn_blocking(move || {
                    let result = st.write(&records);
                    (st, result)
                })
                .await;
                let (st, result) = match joined {
                    Ok(x) => x,
                    Err(e) => {
                        for a in group {
                            let _ = a.done.send(Err(format!("the spool writer failed: {e}")));
                        }
                        break;
                    }
                };
                match result {
                    Ok(lasts) => {
                        if let Some(last) = lasts.last() {
                            progress.written.store(*last, Ordering::Release);
                        }
                        progress.wrote.notify_one();
                        for (a, last) in group.into_iter().zip(lasts) {
                            let _ = a.done.send(Ok(last));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Could not write to the spool; answering 500.");
                        for a in group {
                            let _ = a.done.send(Err(e.clone()));
                        }
                    }
                }
                state = Some(st);
            }
        });
        (Appender { tx }, reader)
    }
}

struct WriterState {
    file: File,
    bytes: u64,
    next: u64,
    dir: PathBuf,
    /// Set when a failed write could not be undone: every later write fails.
    broken: Option<String>,
}

impl WriterState {
    /// Writes and fsyncs every request's records; returns each request's last sequence
    /// number.
    fn write(&mut self, requests: &[Vec<(Arc<str>, Vec<u8>)>]) -> Result<Vec<u64>, String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let mut buf = Vec::new();
        let mut lasts = Vec::with_capacity(requests.len());
        let mut seq = self.next;
        for records in requests {
            for (source, json) in records {
                encode(&mut buf, seq, source, json);
                seq += 1;
            }
            lasts.push(seq - 1);
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let message = format!("cannot write to the spool in {}: {e}", self.dir.display());
            // Take the partial write back, so the next record follows the last good one.
            if let Err(e2) = self
                .file
                .set_len(self.bytes)
                .and_then(|()| self.file.sync_all())
            {
                self.broken = Some(format!("{message}; and cannot undo it: {e2}"));
            }
            return Err(message);
        }
        self.bytes += buf.len() as u64;
        self.next = seq;
        if self.bytes > SEGMENT_BYTES {
            let path = self.dir.join(segment_name(self.next));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    self.file = f;
                    self.bytes = 0;
                    if let Err(e) = sync_dir(&self.dir) {
                        tracing::warn!(error = %e, "Could not fsync the spool directory.");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Could not start a new spool segment; going on with the current one.")
                }
            }
        }
        Ok(lasts)
    }
}

/// Reads the spool in order, for the committer.
pub struct Reader {
    dir: PathBuf,
    current: Option<BufReader<File>>,
    next: u64,
}

impl Reader {
    /// The next sequence number this reader returns.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Up to `max` records from the next one on, none past `upto` (the last fsynced), and
    /// no more once they hold `max_bytes` of messages (always at least one).
    pub fn read(&mut self, upto: u64, max: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while self.next <= upto && out.len() < max && bytes < max_bytes {
            if self.current.is_none() {
                let path = self.dir.join(segment_name(self.next));
                let file = File::open(&path).with_context(|| {
                    format!(
                        "the spool has no segment starting at record {} ({}); was the spool directory changed by hand?",
                        self.next,
                        path.display()
                    )
                })?;
                self.current = Some(BufReader::new(file));
            }
            let Some(reader) = self.current.as_mut() else {
                break;
            };
            let position = reader.stream_position()?;
            match read_record(reader)? {
                Some(r) if r.seq == self.next => {
                    self.next += 1;
                    bytes += r.json.len();
                    out.push(r);
                }
                Some(r) => bail!(
                    "the spool is out of order: record {} where {} was expected",
                    r.seq,
                    self.next
                ),
                None => {
                    // The end of a segment: the next record starts the next one.
                    if self.dir.join(segment_name(self.next)).exists() {
                        self.current = None;
                    } else {
                        // Not written yet (the writer's buffer): look again next time.
                        reader.seek(SeekFrom::Start(position))?;
                        return if out.is_empty() {
                            Err(anyhow!(
                                "the spool ends before record {}, which was acknowledged",
                                self.next
                            ))
                        } else {
                            Ok(out)
                        };
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Deletes the segments whose every record is at or below `landed`, except the newest.
pub fn prune(dir: &Path, landed: u64) -> Result<()> {
    let segs = segments(dir)?;
    for pair in segs.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first.saturating_sub(1) <= landed {
            std::fs::remove_file(path).with_context(|| {
                format!("cannot delete the landed spool segment {}", path.display())
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> (Arc<str>, Vec<u8>) {
        (Arc::from("web"), s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn records_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.collector_id.clone();
        let progress = Arc::new(Progress::default());
        let (app, mut reader) = spool.start_writer(progress.clone());
        assert_eq!(
            app.append(vec![rec("{\"a\":1}"), rec("{\"a\":2}")])
                .await
                .unwrap(),
            2
        );
        assert_eq!(app.append(vec![rec("{\"a\":3}")]).await.unwrap(), 3);
        let got = reader.read(3, 10, usize::MAX).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        drop(app);
        // A torn write after the last acknowledged record.
        let segs = segments(dir.path()).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(&segs.last().unwrap().1)
            .unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.collector_id, id);
        assert_eq!((spool.first, spool.last), (1, 3));
        let progress = Arc::new(Progress::default());
        let (app, mut reader) = spool.start_writer(progress);
        assert_eq!(app.append(vec![rec("{\"a\":4}")]).await.unwrap(), 4);
        // A byte budget ends a read after the record that reaches it (never before the
        // first), and the next read goes on from there.
        let got = reader.read(4, 10, 1).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        let got = reader.read(4, 10, 14).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        let got = reader.read(4, 10, usize::MAX).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(got[0].json, b"{\"a\":4}");
        prune(dir.path(), 4).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1, "the newest stays");
    }
}
