//! Streams read by an asynchronous export job ([`crate::spec::Export`]): start the job,
//! poll its status until its files are ready, download each file (without the API's
//! credentials) and hand on its JSON lines in pages of `page_size` records.
//!
//! Every page's cursor names the job, the file and the line after the page, so a killed
//! read resumes in the same export as long as the vendor still lists its files; when it
//! does not (expired, failed, forgotten), a new export starts and its first page starts
//! the snapshot over. The last page's cursor is empty: the next run exports again.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tributary_sdk::pagination::{PageSender, spawn_pages};
use tributary_sdk::{Error, Page, PageStream, Records, Result};

use super::{Cursor, DeclarativeSource, Next, PageRequest, Window};
use crate::extract::get_path;
use crate::spec::{Export, Method, Pagination, StreamSpec, dotted};
use crate::template;

/// The longest line a file may hold (one record).
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// A file may decompress to at most this many times its size, plus [`MAX_LINE`]: JSON
/// compresses some 5 to 20 times; more is a gzip bomb, not an export.
const MAX_RATIO: u64 = 100;

/// A page ends at this many bytes of records even short of `page_size` lines, so a file of
/// long lines cannot make one page huge.
const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;

/// How long one file's download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest job id taken from a vendor (it goes into the status path).
const MAX_JOB_ID: usize = 200;

/// Where a job stands.
enum Status {
    Pending,
    Ready(Vec<String>),
    Failed(String),
}

/// A downloaded file, read line by line (decompressed when it is gzip).
struct Lines {
    reader: Box<dyn BufRead + Send>,
    /// Lines read so far.
    line: u64,
    /// Decompressed bytes read so far, and the most allowed.
    read: u64,
    limit: u64,
}

impl Lines {
    fn new(body: Bytes) -> Lines {
        let limit = (body.len() as u64).saturating_mul(MAX_RATIO) + MAX_LINE;
        // Gzip by its magic bytes, whatever the name or headers say: SendGrid's exports are
        // gzip, and some have come plain (airbytehq/airbyte#35343).
        let reader: Box<dyn BufRead + Send> = if body.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
                std::io::Cursor::new(body),
            )))
        } else {
            Box::new(std::io::Cursor::new(body))
        };
        Lines {
            reader,
            line: 0,
            read: 0,
            limit,
        }
    }

    /// The next line (without its end), or `None` at the end of the file.
    fn next_line(&mut self, buf: &mut Vec<u8>) -> std::result::Result<Option<()>, String> {
        buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', buf)
            .map_err(|e| format!("the file does not decompress: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.read += n as u64;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.len() as u64 > MAX_LINE {
            return Err(format!(
                "line {} is over {} MiB",
                self.line,
                MAX_LINE / 1024 / 1024
            ));
        }
        if self.read > self.limit {
            return Err(format!(
                "it decompresses to over {MAX_RATIO} times its size: not an export file"
            ));
        }
        Ok(Some(()))
    }
}

/// Whether `body` is a whole file: gzip that decompresses to its end (within the bomb
/// limit), or plain text whose last line is a complete JSON object.
fn check_file(body: &Bytes) -> std::result::Result<(), String> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let limit = (body.len() as u64).saturating_mul(MAX_RATIO) + MAX_LINE;
        let mut decoder =
            flate2::read::MultiGzDecoder::new(std::io::Cursor::new(body.clone())).take(limit + 1);
        let n = std::io::copy(&mut decoder, &mut std::io::sink())
            .map_err(|e| format!("the gzip file is damaged: {e}"))?;
        if n > limit {
            return Err(format!(
                "it decompresses to over {MAX_RATIO} times its size: not an export file"
            ));
        }
        return Ok(());
    }
    let last = body
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .rfind(|l| !l.is_empty());
    match last {
        None => Ok(()),
        Some(l)
            if l.starts_with(b"{")
                && serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok() =>
        {
            Ok(())
        }
        Some(_) => Err("its last line is not a complete JSON object".into()),
    }
}

/// The text of a scalar (a job id may be a number).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl DeclarativeSource {
    /// Starts an export of `s`; its job id.
    async fn start_export(&self, s: &StreamSpec, export: &Export) -> Result<String> {
        // The export's request is the stream's own, on one page.
        let once = StreamSpec {
            pagination: Some(Pagination::None),
            ..s.clone()
        };
        let request = self.page_request(&once, None, None, None)?;
        let what = format!(
            "{} {} (start an export)",
            super::method_name(s.method),
            s.path
        );
        let id_path = dotted(&export.id_path).unwrap_or_default();
        let (_, id) = self
            .send(&what, &request, |r| {
                let body: Value = serde_json::from_slice(&r.body)
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                let id = get_path(&body, &id_path)
                    .and_then(text)
                    .ok_or_else(|| format!("the answer has no job id at `{}`", export.id_path))?;
                // It goes into the status path, with the credentials: a path segment only.
                let plain = id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if id.is_empty() || id.len() > MAX_JOB_ID || !plain || id.bytes().all(|b| b == b'.')
                {
                    return Err(format!(
                        "the job id at `{}` is not a plain id (letters, digits, `-`, `_`, `.`)",
                        export.id_path
                    ));
                }
                Ok(id)
            })
            .await?;
        Ok(id)
    }

    /// The status of job `id`.
    async fn export_status(&self, s: &StreamSpec, export: &Export, id: &str) -> Result<Status> {
        let path = template::render(&export.status_path, |name| match name {
            "export.id" => Some(id.to_owned()),
            other => self.lookup(other),
        });
        let request = PageRequest {
            url: self.resolve(&path, &s.name)?,
            query: Vec::new(),
            body: None,
            method: Method::Get,
        };
        let what = format!("GET {} (export status)", export.status_path);
        let status_path = dotted(&export.status_field).unwrap_or_default();
        let urls_path = dotted(&export.urls).unwrap_or_default();
        let message_path = export.message_field.as_deref().and_then(|m| dotted(m).ok());
        let (_, status) = self
            .send(&what, &request, |r| {
                let body: Value = serde_json::from_slice(&r.body)
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                let status = get_path(&body, &status_path)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("the answer has no status at `{}`", export.status_field))?;
                if export.ready.iter().any(|x| x == status) {
                    let urls = get_path(&body, &urls_path)
                        .and_then(Value::as_array)
                        .ok_or_else(|| {
                            format!("a ready export lists no files at `{}`", export.urls)
                        })?;
                    let urls = urls
                        .iter()
                        .map(|u| u.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| format!("`{}` holds something other than URLs", export.urls))?;
                    Ok(Status::Ready(urls))
                } else if export.failed.iter().any(|x| x == status) {
                    let reason = message_path
                        .as_ref()
                        .and_then(|p| get_path(&body, p))
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    Ok(Status::Failed(format!("status `{status}`: {reason}")))
                } else if export.pending.iter().any(|x| x == status) {
                    Ok(Status::Pending)
                } else {
                    // Not retried as a broken body would be: it is an answer we cannot read.
                    Ok(Status::Failed(format!(
                        "unknown status `{status}` (the spec lists pending {:?}, ready {:?}, failed {:?})",
                        export.pending, export.ready, export.failed
                    )))
                }
            })
            .await?;
        Ok(status)
    }

    /// Waits for job `id` to be ready; its file URLs.
    async fn wait_for_export(
        &self,
        s: &StreamSpec,
        export: &Export,
        id: &str,
        pages: &PageSender,
    ) -> Result<Option<Vec<String>>> {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        let longest = Duration::from_secs(export.poll_seconds);
        let timeout = Duration::from_secs(export.timeout_seconds);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait.min(longest)) => {}
                // The read was cancelled (a lost lease, a stop): stop polling.
                _ = pages.closed() => return Ok(None),
            }
            match self.export_status(s, export, id).await? {
                Status::Ready(urls) => return Ok(Some(urls)),
                Status::Failed(why) => {
                    return Err(Error::protocol(
                        self.name(),
                        &s.name,
                        format!("export {id} failed: {why}"),
                    ));
                }
                Status::Pending if started.elapsed() >= timeout => {
                    return Err(Error::protocol(
                        self.name(),
                        &s.name,
                        format!(
                            "export {id} was still pending after {} s (`export.timeout_seconds`)",
                            export.timeout_seconds
                        ),
                    ));
                }
                Status::Pending => wait = (wait * 2).min(longest),
            }
        }
    }

    /// Downloads file `index` of an export: no credentials go with it.
    async fn download(&self, s: &StreamSpec, url: &str, index: usize) -> Result<Bytes> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::protocol(
                self.name(),
                &s.name,
                format!("export file {index} has a bad URL: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(Error::protocol(
                self.name(),
                &s.name,
                format!("export file {index} is not an http(s) URL"),
            ));
        }
        let what = format!("download export file {index}");
        // A file cut short or garbled in transit is downloaded again, as a broken page is.
        // A file takes longer than an API page: up to DOWNLOAD_TIMEOUT.
        // Redirects are followed (the store may answer where the file lives): the request
        // carries no credentials to take along.
        let response = self
            .http
            .get_file(&what, parsed, DOWNLOAD_TIMEOUT, |r| check_file(&r.body))
            .await
            .map_err(|e| match e {
                // The file store refused the link, not the API key: say so.
                Error::Auth { status, .. } => Error::protocol(
                    self.name(),
                    &s.name,
                    format!(
                        "export file {index}'s link was refused (HTTP {status}): it may have expired; the next run starts a new export"
                    ),
                ),
                other => other,
            })?;
        Ok(response.body)
    }

    /// Reads stream `s` by an export job, resuming at `cursor`'s job, file and line.
    pub(super) fn export_walk(
        self: &Arc<Self>,
        s: StreamSpec,
        cursor: Option<Cursor>,
    ) -> PageStream {
        let this = Arc::clone(self);
        spawn_pages(2, move |pages| async move {
            let Some(export) = s.export.clone() else {
                return Ok(());
            };
            let mut resume = cursor.and_then(|c| c.window).and_then(|w| match w.next {
                Next::Export {
                    job,
                    file,
                    line,
                    name,
                    done,
                    files,
                } => Some((
                    w.mark_ms,
                    job,
                    Resume {
                        file,
                        name,
                        done,
                        files,
                    },
                    line,
                )),
                _ => None,
            });
            loop {
                // The same export while the vendor still lists the file being read; else a
                // new one, whose first page starts the snapshot over.
                let mut from = None;
                if let Some((mark, job, at, line)) = resume.take() {
                    match this.export_status(&s, &export, &job).await {
                        Ok(Status::Ready(urls)) => match at.plan(&urls) {
                            Ok((order, done)) => {
                                from = Some((false, mark, job, urls, order, done, line));
                            }
                            Err(why) => tracing::info!(
                                source = this.name(),
                                stream = %s.name,
                                "export {job} cannot be resumed: {why}; starting a new export"
                            ),
                        },
                        Ok(_) => tracing::info!(
                            source = this.name(),
                            stream = %s.name,
                            "export {job} is no longer ready; starting a new export"
                        ),
                        Err(e) => tracing::info!(
                            source = this.name(),
                            stream = %s.name,
                            "export {job} cannot be resumed ({e}); starting a new export"
                        ),
                    }
                }
                let resumed = from.is_some();
                let (reset, mark, job, urls, order, done, skip) = match from {
                    Some(r) => r,
                    None => {
                        let mark = chrono::Utc::now().timestamp_millis();
                        let job = this.start_export(&s, &export).await?;
                        let Some(urls) = this.wait_for_export(&s, &export, &job, &pages).await?
                        else {
                            return Ok(());
                        };
                        let order = (0..urls.len()).collect();
                        (true, mark, job, urls, order, Vec::new(), 0)
                    }
                };
                let job_files = JobFiles {
                    mark,
                    job: &job,
                    urls: &urls,
                };
                match this
                    .read_files(&s, &pages, &job_files, &order, done, skip, reset)
                    .await
                {
                    Err(e) if resumed => {
                        // A resumed job's links may have expired while the vendor still
                        // lists it: start over rather than fail the same way every run.
                        tracing::info!(
                            source = this.name(),
                            stream = %s.name,
                            "export {job} cannot be read any more ({e}); starting a new export"
                        );
                    }
                    other => return other,
                }
            }
        })
    }

    /// Hands on the lines of `files`, file by file in `order` (the first after its first
    /// `skip` lines; `read_whole` names the files read before), in pages of `page_size`
    /// records (or 32 MiB), each with the cursor after it.
    #[allow(clippy::too_many_arguments)]
    async fn read_files(
        &self,
        s: &StreamSpec,
        pages: &PageSender,
        files: &JobFiles<'_>,
        order: &[usize],
        mut read_whole: Vec<String>,
        mut skip: u64,
        mut reset: bool,
    ) -> Result<()> {
        let (job, urls) = (files.job, files.urls);
        let page_size = self.page_size(s) as usize;
        let done = Cursor {
            since_ms: None,
            window: None,
        };
        if order.is_empty() {
            // An empty export (no files): the snapshot is empty, and complete.
            let page = Page::with_cursor(
                Records::Json {
                    body: Bytes::from_static(b"[]"),
                    path: &[],
                },
                &done,
            )
            .resetting(reset);
            pages.send(page).await;
            return Ok(());
        }
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut count = 0usize;
        let mut line = Vec::new();
        for (k, &index) in order.iter().enumerate() {
            let url = &urls[index];
            if pages.is_closed() {
                return Ok(());
            }
            let body = self.download(s, url, index).await?;
            let mut lines = Lines::new(body);
            let bad = |m: String| {
                Error::protocol(
                    self.name(),
                    &s.name,
                    format!("export {job} file {index}: {m}"),
                )
            };
            let last_file = k + 1 == order.len();
            loop {
                let more = lines.next_line(&mut line).map_err(bad)?;
                if more.is_some() {
                    if lines.line <= skip {
                        continue;
                    }
                    let text = line.trim_ascii();
                    if text.is_empty() {
                        continue;
                    }
                    if !text.starts_with(b"{")
                        || serde_json::from_slice::<serde::de::IgnoredAny>(text).is_err()
                    {
                        return Err(bad(format!("line {} is not a JSON object", lines.line)));
                    }
                    batch.push(if count == 0 { b'[' } else { b',' });
                    batch.extend_from_slice(text);
                    count += 1;
                    if count < page_size && batch.len() < MAX_PAGE_BYTES {
                        continue;
                    }
                } else if count == 0 && !last_file {
                    // The end of a file with nothing pending: on to the next.
                    break;
                }
                if count == 0 {
                    batch.push(b'[');
                }
                batch.push(b']');
                // Where the next page starts: after this line, or at the next file.
                let next = match more {
                    Some(()) => Some((index, lines.line)),
                    None if last_file => None,
                    None => {
                        read_whole.push(file_name(url));
                        Some((order[k + 1], 0))
                    }
                };
                let resume = match next {
                    None => done.clone(),
                    Some((file, line)) => Cursor {
                        since_ms: None,
                        window: Some(Window {
                            mark_ms: files.mark,
                            next: Next::Export {
                                job: job.to_owned(),
                                file: file as u64,
                                line,
                                name: file_name(&urls[file]),
                                done: Some(read_whole.clone()),
                                files: Some(urls.len() as u64),
                            },
                            deletions: false,
                            parent: None,
                        }),
                    },
                };
                let page = Page::with_cursor(
                    Records::Json {
                        body: Bytes::from(std::mem::take(&mut batch)),
                        path: &[],
                    },
                    &resume,
                )
                .resetting(reset);
                reset = false;
                count = 0;
                if !pages.send(page).await {
                    return Ok(());
                }
                if more.is_none() {
                    break;
                }
            }
            // A file that ended without a page of its own is read whole too.
            if read_whole.last() != Some(&file_name(url)) {
                read_whole.push(file_name(url));
            }
            skip = 0;
        }
        Ok(())
    }
}

/// Where a resumed job's read was, from its cursor.
struct Resume {
    /// The file being read: its place in the list then, and its name.
    file: u64,
    name: String,
    /// The files read whole, by name (`None` in a cursor from before they were kept).
    done: Option<Vec<String>>,
    /// How many files the job listed (`None` in a cursor from before it was kept).
    files: Option<u64>,
}

impl Resume {
    /// The files the job reads now, in order: the one being read, then every other not
    /// read whole, as the vendor lists them now; and the files read whole. A vendor may
    /// list the files in another order, with newly signed links, so they are found by
    /// name. `Err` says why the read cannot go on in this job (a new export is always
    /// safe): the list no longer holds the files the cursor knows, or its names do not
    /// tell the files apart (links that differ only in their query).
    ///
    /// A cursor without `done` counts the files listed before the one being read as
    /// read, as it did then; one without a name (older still) finds the file by place.
    fn plan(self, urls: &[String]) -> std::result::Result<(Vec<usize>, Vec<String>), String> {
        let names: Vec<String> = urls.iter().map(|u| file_name(u)).collect();
        if let Some(files) = self.files
            && files != urls.len() as u64
        {
            return Err(format!(
                "it lists {} files now, {files} when the read began",
                urls.len()
            ));
        }
        if self.name.is_empty() {
            let at = self.file as usize;
            if at >= urls.len() {
                return Err(format!("it lists {} files, not file {at}", urls.len()));
            }
            return Ok(((at..urls.len()).collect(), names[..at].to_vec()));
        }
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        if unique.len() < names.len() {
            return Err("its file links differ only in their query, which names no file".into());
        }
        let Some(at) = names.iter().position(|n| *n == self.name) else {
            return Err("it no longer lists the file being read".into());
        };
        match self.done {
            Some(done) => {
                if let Some(gone) = done.iter().find(|d| !unique.contains(d)) {
                    return Err(format!(
                        "it no longer lists `{}`, a file read before",
                        file_path(gone)
                    ));
                }
                let order = std::iter::once(at)
                    .chain((0..urls.len()).filter(|&i| i != at && !done.contains(&names[i])))
                    .collect();
                Ok((order, done))
            }
            None => Ok(((at..urls.len()).collect(), names[..at].to_vec())),
        }
    }
}

/// The job a read takes its files from.
struct JobFiles<'a> {
    /// When the job was started (the cursor's mark).
    mark: i64,
    job: &'a str,
    urls: &'a [String],
}

/// A file's URL without its query (the signature) and without any `user:password@`,
/// which names the file across status answers that sign its link anew, and keeps no
/// credential in the cursor.
fn file_name(url: &str) -> String {
    let bare = url.split(['?', '#']).next().unwrap_or_default();
    match bare.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => bare.to_owned(),
    }
}

/// The path of a file's name, for messages (a name is a URL without its query).
fn file_path(name: &str) -> &str {
    name.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn all_lines(body: Bytes) -> Result<Vec<String>, String> {
        let mut lines = Lines::new(body);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while lines.next_line(&mut buf)?.is_some() {
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        Ok(out)
    }

    #[test]
    fn a_file_is_named_by_its_link_without_query_or_credentials() {
        for (url, name) in [
            (
                "https://b.s3.amazonaws.com/e/1.json.gz?X-Amz-Signature=ab#x",
                "https://b.s3.amazonaws.com/e/1.json.gz",
            ),
            (
                "https://user:pw@host.example/e/2.gz?s=1",
                "https://host.example/e/2.gz",
            ),
            ("https://host.example", "https://host.example"),
            ("relative/3.gz?sig=1", "relative/3.gz"),
        ] {
            assert_eq!(file_name(url), name);
        }
        assert_eq!(file_path("https://host.example/e/2.gz"), "/e/2.gz");
    }

    #[test]
    fn a_resume_goes_on_only_while_the_list_holds_what_the_cursor_knows() {
        let urls: Vec<String> = ["c", "a", "b"]
            .iter()
            .map(|f| format!("https://h.example/{f}.gz?sig=new"))
            .collect();
        let name = |f: &str| format!("https://h.example/{f}.gz");
        let resume = |file: u64, at: &str, done: Option<Vec<&str>>, files: Option<u64>| Resume {
            file,
            name: at.is_empty().then(String::new).unwrap_or_else(|| name(at)),
            done: done.map(|d| d.iter().map(|f| name(f)).collect()),
            files,
        };
        // `a` read whole, in `b` now; listed as c, a, b: b, then c.
        assert_eq!(
            resume(1, "b", Some(vec!["a"]), Some(3)).plan(&urls),
            Ok((vec![2, 0], vec![name("a")]))
        );
        // Older cursors: the files before the one being read count as read.
        assert_eq!(
            resume(1, "a", None, None).plan(&urls),
            Ok((vec![1, 2], vec![name("c")]))
        );
        assert_eq!(
            resume(2, "", None, None).plan(&urls),
            Ok((vec![2], vec![name("c"), name("a")]))
        );
        for (bad, why) in [
            (
                resume(1, "b", Some(vec!["a"]), Some(4)),
                "it lists 3 files now, 4 when the read began",
            ),
            (
                resume(1, "d", Some(vec![]), Some(3)),
                "it no longer lists the file being read",
            ),
            (
                resume(1, "b", Some(vec!["d"]), Some(3)),
                "it no longer lists `/d.gz`, a file read before",
            ),
            (resume(3, "", None, None), "it lists 3 files, not file 3"),
        ] {
            assert_eq!(bad.plan(&urls), Err(why.to_owned()));
        }
        let same: Vec<String> = (0..3)
            .map(|n| format!("https://h.example/download?file={n}&sig=x"))
            .collect();
        assert_eq!(
            Resume {
                file: 1,
                name: "https://h.example/download".into(),
                done: Some(vec![]),
                files: Some(3),
            }
            .plan(&same),
            Err("its file links differ only in their query, which names no file".to_owned())
        );
    }

    #[test]
    fn gzip_and_plain_files_give_the_same_lines() {
        let text = b"{\"a\":1}\r\n{\"a\":2}\n\n{\"a\":3}";
        let want = vec!["{\"a\":1}", "{\"a\":2}", "", "{\"a\":3}"];
        assert_eq!(all_lines(Bytes::from_static(text)).unwrap(), want);
        assert_eq!(all_lines(gzip(text)).unwrap(), want);
        assert!(check_file(&gzip(text)).is_ok());
        assert!(check_file(&Bytes::from_static(text)).is_ok());
        assert!(check_file(&Bytes::new()).is_ok(), "an empty export");
    }

    #[test]
    fn a_damaged_file_is_refused_and_a_bomb_is_stopped() {
        let whole = gzip(b"{\"a\":1}\n{\"a\":2}\n");
        let cut = whole.slice(..whole.len() - 6);
        assert!(check_file(&cut).unwrap_err().contains("damaged"));
        let plain_cut = Bytes::from_static(b"{\"a\":1}\n{\"a\":");
        assert!(check_file(&plain_cut).unwrap_err().contains("last line"));

        // 64 MiB of newlines compress to some 64 KiB: over 100 times the file's size.
        let bomb = gzip(&vec![b'\n'; 64 * 1024 * 1024]);
        assert!(bomb.len() < 200 * 1024);
        assert!(
            check_file(&bomb)
                .unwrap_err()
                .contains("decompresses to over")
        );
        let err = all_lines(bomb).unwrap_err();
        assert!(err.contains("decompresses to over"), "{err}");

        // One line over the limit.
        let long = gzip(&vec![b'x'; MAX_LINE as usize + 10]);
        let err = all_lines(long).unwrap_err();
        assert!(err.contains("line 1 is over 16 MiB"), "{err}");
    }
}
