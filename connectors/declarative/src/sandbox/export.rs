//! Export jobs in the simulator, as SendGrid's contacts export behaves
//! (<https://www.twilio.com/docs/sendgrid/api-reference/contacts/export-contacts> and
//! `.../export-contacts-status`): the stream's request starts a job (202 with its `id`),
//! the status path answers the spec's first pending status on the first poll and then its
//! first ready status with the file URLs; each file holds up to [`FILE_RECORDS`] records as
//! gzip JSON lines, at a pre-signed-style URL on this server that, like S3, refuses a
//! request that also carries an `Authorization` header.

use axum::http::Method;
use serde_json::{Value, json};
use tributary_sandbox_kit::api::{Answer, ApiRequest};

use super::{Shared, error};
use crate::extract::set_path;
use crate::spec::{Export, StreamSpec, dotted};

/// Where the files are served, at the server's root.
pub const FILES: &str = "/__exports/";

/// Records per file (SendGrid splits an export by `max_file_size`).
pub const FILE_RECORDS: usize = 100;

/// One export job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// Status polls answered so far.
    pub polls: u32,
    /// Gzip JSON lines, one per file.
    pub files: Vec<Vec<u8>>,
    pub records: usize,
    /// The job is still listed but its links have expired (403, as S3 answers).
    pub expired: bool,
}

/// The jobs started, and how they behave.
#[derive(Debug, Default)]
pub struct Exports {
    pub jobs: Vec<Job>,
    pub behaviour: ExportBehaviour,
    /// Jobs started, forgotten ones included (ids are never reused).
    pub started: u64,
}

/// How the simulator's jobs behave (set by tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportBehaviour {
    /// Polls answered "pending" before a job is ready (default 1).
    pub pending_polls: Option<u32>,
    /// Every job fails instead of becoming ready.
    pub fail: bool,
    /// Files are served plain, not gzip.
    pub plain: bool,
    /// Each file link answers `307 TemporaryRedirect` to where the file is served, as S3
    /// does for a bucket in another region.
    pub redirect: bool,
    /// A ready job lists its files last first: the vendor documents no order, so a
    /// resumed read must not take the list's order for the order it read in.
    pub reversed: bool,
    /// Each file link is the same path, the file named only in the query
    /// (`.../download?file=N&X-Amz-Signature=...`).
    pub query_named: bool,
    /// A ready job lists only its first N files (of the order it lists them in): a file
    /// dropped from the list, or a list answered in part.
    pub listed: Option<usize>,
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// S3's answer to a pre-signed URL that also carries an `Authorization` header.
fn s3_error(status: u16, code: &str, message: &str) -> Answer {
    (
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        .into_bytes(),
    )
}

impl Shared {
    /// Routes a request of an export stream `s`, if it is one.
    pub(super) fn export_route(
        &self,
        s: &StreamSpec,
        export: &Export,
        request: &ApiRequest,
        path: &str,
    ) -> Option<Answer> {
        if request.method == Method::POST && self.render(&s.path) == path {
            return Some(self.start_export(s, export));
        }
        if request.method == Method::GET {
            let id = self.match_slot(&export.status_path, path, |n| n == "export.id")?;
            return Some(self.export_status(export, request, &id));
        }
        None
    }

    fn start_export(&self, s: &StreamSpec, export: &Export) -> Answer {
        let plain = self.exports.read().behaviour.plain;
        let lines: Vec<String> = {
            let store = self.store.read();
            store
                .streams
                .get(&s.name)
                .map(|recs| {
                    recs.values()
                        .filter(|r| !r.deleted)
                        .map(|r| r.value.to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let files: Vec<Vec<u8>> = lines
            .chunks(FILE_RECORDS)
            .map(|chunk| {
                let mut text = chunk.join("\n");
                text.push('\n');
                if plain {
                    text.into_bytes()
                } else {
                    gzip(text.as_bytes())
                }
            })
            .collect();
        let mut exports = self.exports.write();
        exports.started += 1;
        let n = exports.started;
        let id = format!("{n:08x}-5e1d-4c0e-9a7b-{n:012x}");
        exports.jobs.push(Job {
            id: id.clone(),
            polls: 0,
            files,
            records: lines.len(),
            expired: false,
        });
        let mut body = json!({"_metadata": {}});
        set_path(
            &mut body,
            &dotted(&export.id_path).unwrap_or_default(),
            json!(id),
        );
        (202, body.to_string().into_bytes())
    }

    fn export_status(&self, export: &Export, request: &ApiRequest, id: &str) -> Answer {
        let mut exports = self.exports.write();
        let behaviour = exports.behaviour;
        let Some(job) = exports.jobs.iter_mut().find(|j| j.id == id) else {
            return error(404, &format!("export {id} not found"));
        };
        job.polls += 1;
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.kit.clock.now_ms())
            .unwrap_or_default();
        let mut body = json!({
            "id": id,
            "created_at": now.to_rfc3339(),
            "updated_at": now.to_rfc3339(),
            "expires_at": (now + chrono::Duration::days(3)).to_rfc3339(),
            "contact_count": job.records,
            "_metadata": {},
        });
        let status_path = dotted(&export.status_field).unwrap_or_default();
        let (status, urls) = if job.polls <= behaviour.pending_polls.unwrap_or(1) {
            (export.pending[0].clone(), None)
        } else if behaviour.fail {
            (export.failed[0].clone(), None)
        } else {
            let host = request
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let mut files: Vec<usize> = (0..job.files.len()).collect();
            if behaviour.reversed {
                files.reverse();
            }
            files.truncate(behaviour.listed.unwrap_or(usize::MAX));
            let urls: Vec<Value> = files
                .into_iter()
                .map(|n| {
                    json!(if behaviour.query_named {
                        format!(
                            "http://{host}{FILES}{id}/download?file={n}&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0f1e2d"
                        )
                    } else {
                        format!(
                            "http://{host}{FILES}{id}/{n}.json.gzip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0f1e2d"
                        )
                    })
                })
                .collect();
            (export.ready[0].clone(), Some(urls))
        };
        set_path(&mut body, &status_path, json!(status));
        if let Some(urls) = urls {
            set_path(
                &mut body,
                &dotted(&export.urls).unwrap_or_default(),
                json!(urls),
            );
        }
        if behaviour.fail
            && let Some(m) = &export.message_field
        {
            set_path(
                &mut body,
                &dotted(m).unwrap_or_default(),
                json!("The export could not be completed."),
            );
        }
        (200, body.to_string().into_bytes())
    }

    /// A file of an export (`<job>/<n>.json.gzip`).
    pub(super) fn export_file(
        &self,
        request: &ApiRequest,
        rest: &str,
    ) -> (Answer, Vec<(String, String)>) {
        if request.headers.contains_key("authorization") {
            return (
                s3_error(
                    400,
                    "InvalidArgument",
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
                ),
                Vec::new(),
            );
        }
        if self.exports.read().behaviour.redirect && request.param("moved").is_none() {
            // S3's answer for a bucket in another region: the same object, elsewhere.
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("moved", "1");
            for (k, v) in &request.query {
                query.append_pair(k, v);
            }
            let location = format!("{}?{}", request.path, query.finish());
            return (
                s3_error(
                    307,
                    "TemporaryRedirect",
                    "Please re-send this request to the specified temporary endpoint. Continue to use the original request endpoint for future requests.",
                ),
                vec![("Location".to_owned(), location)],
            );
        }
        (self.file_answer(request, rest), Vec::new())
    }

    /// `<job>/<n>.json.gzip`, or `<job>/download?file=<n>`.
    fn file_answer(&self, request: &ApiRequest, rest: &str) -> Answer {
        let file = rest.split_once('/').and_then(|(job, name)| {
            let n: usize = match name {
                "download" => request.param("file")?.parse().ok()?,
                _ => name.split('.').next()?.parse().ok()?,
            };
            let exports = self.exports.read();
            exports
                .jobs
                .iter()
                .find(|j| j.id == job)
                .and_then(|j| j.files.get(n).map(|f| (j.expired, f.clone())))
        });
        match file {
            Some((true, _)) => s3_error(403, "AccessDenied", "Request has expired"),
            Some((false, bytes)) => (200, bytes),
            None => s3_error(404, "NoSuchKey", "The specified key does not exist."),
        }
    }
}
