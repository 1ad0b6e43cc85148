//! A fault-injecting HTTP proxy for the object-store tests: it listens on 127.0.0.1,
//! forwards every request to an S3-compatible server (moto) and, on the test's command,
//! breaks chosen requests the ways real object stores and networks do: an error status
//! before the request reaches the store, an error status after it landed (the answer was
//! lost), a connection closed without an answer, a body cut short, an answer that comes
//! after the client's timeout. Each [`Rule`] injects a bounded number of faults, so a
//! retrying client always gets through eventually unless the test wants it not to.
//!
//! It also records every request and what was answered, for assertions about what the
//! client did (and serializes create-if-absent puts, see [`FaultProxy::start`]).
//!
//! In front of fake-gcs-server it also translates the one request that emulator lacks, see
//! [`Upstream::FakeGcs`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// GETs of table files (`.json` and `.parquet` objects), which exist when read.
    Read,
    /// Listings (GET with `list-type=`).
    List,
    /// Uploads of a Parquet data file: single PUTs and every request of a multipart
    /// upload (create, parts, complete).
    DataFile,
    /// The part uploads of multipart uploads.
    UploadPart,
    /// The completion of multipart uploads.
    CompleteUpload,
    /// PUTs of Delta commit files (`_delta_log/<20 digits>.json`).
    CommitFile,
}

impl Target {
    /// Whether a request is one of these.
    pub fn matches(self, method: &Method, path: &str, query: &str) -> bool {
        let put = method == Method::PUT;
        match self {
            Target::Read => {
                method == Method::GET && (path.ends_with(".json") || path.ends_with(".parquet"))
            }
            Target::List => method == Method::GET && query.contains("list-type="),
            Target::DataFile => {
                (put || method == Method::POST) && path.ends_with(".parquet") && !is_log(path)
            }
            Target::UploadPart => put && query.contains("partNumber="),
            Target::CompleteUpload => method == Method::POST && query.contains("uploadId="),
            Target::CommitFile => put && is_commit_file(path),
        }
    }
}

fn is_log(path: &str) -> bool {
    path.contains("/_delta_log/")
}

/// Whether `path` is a Delta commit file (`…/_delta_log/00000000000000000007.json`).
pub fn is_commit_file(path: &str) -> bool {
    path.rsplit_once("/_delta_log/").is_some_and(|(_, name)| {
        name.strip_suffix(".json")
            .is_some_and(|v| v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What to do to a request a rule picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (S3's XML error) without forwarding: the request never arrives.
    Refuse(u16),
    /// Forward, then answer this status instead of the store's: the request landed, the
    /// client does not know.
    LoseAnswer(u16),
    /// Forward, then close the connection without answering.
    HangUp,
    /// Forward, answer the store's status and headers, then close the connection halfway
    /// through the body.
    CutBody,
    /// Forward, then hold the answer this long (longer than the client's timeout: it gives
    /// up, the request has landed).
    Stall(Duration),
    /// Hold the request this long, then forward it as is: a slow store. Two writers' puts
    /// of one commit version are then both in flight, and the store decides between them.
    Delay(Duration),
}

/// A fault on some of the requests of a [`Target`]: after letting `skip` matching
/// requests through, on every `every`-th matching request, at most `times` times.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    target: Target,
    fault: Fault,
    skip: u32,
    every: u32,
    times: u32,
}

impl Rule {
    /// `fault` on the next request of `target`, once.
    pub fn new(target: Target, fault: Fault) -> Rule {
        Rule {
            target,
            fault,
            skip: 0,
            every: 1,
            times: 1,
        }
    }

    /// Lets the first `n` matching requests through.
    pub fn skip(self, n: u32) -> Rule {
        Rule { skip: n, ..self }
    }

    /// Injects on every `n`-th matching request (1: each one).
    pub fn every(self, n: u32) -> Rule {
        Rule {
            every: n.max(1),
            ..self
        }
    }

    /// Injects at most `n` times.
    pub fn times(self, n: u32) -> Rule {
        Rule { times: n, ..self }
    }
}

struct RuleState {
    rule: Rule,
    matched: u32,
    injected: u32,
}

impl RuleState {
    /// Counts a matching request; whether to break it.
    fn pick(&mut self) -> bool {
        self.matched += 1;
        let n = self.matched;
        let due = n > self.rule.skip && (n - self.rule.skip - 1).is_multiple_of(self.rule.every);
        if due && self.injected < self.rule.times {
            self.injected += 1;
            true
        } else {
            false
        }
    }
}

/// What the proxy forwards to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// moto: create-if-absent puts are forwarded one at a time (see [`FaultProxy::start`]).
    Moto,
    /// A server that decides its own races (Azurite): everything forwarded as it came.
    AsIs,
    /// fake-gcs-server, which has no XML API upload (fsouza/fake-gcs-server#331, open),
    /// the single `PUT /<bucket>/<object>` object_store sends for every write, and whose
    /// XML API listing ignores `start-after` (object_store's `list_with_offset`, which
    /// Delta readers use to find new commits). A listing's answer loses the keys up to
    /// `start-after`, as GCS leaves them out. A put
    /// is forwarded as the JSON API's multipart upload of the same bytes, its
    /// `x-goog-if-generation-match` as the upload's `ifGenerationMatch` (GCS's one
    /// precondition, in its two spellings), and the answer's generation and etag as the
    /// XML API's headers. The emulator checks the precondition and decides races; the
    /// proxy takes no lock. Everything else (reads, listings, deletes) is forwarded as is.
    FakeGcs {
        /// `false`: the upload goes as a media upload, whose `ifGenerationMatch`
        /// fake-gcs-server 1.54 accepts and ignores, as stores that lack conditional
        /// puts do.
        preconditions: bool,
    },
}

/// A request the proxy saw and how it was answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// The status the store answered (`None`: not forwarded, or no answer).
    pub upstream: Option<u16>,
    pub fault: Option<Fault>,
    /// Whether it was a create-if-absent put (`If-None-Match: *`, or GCS's
    /// `x-goog-if-generation-match: 0`).
    pub create: bool,
}

struct Shared {
    upstream: String,
    kind: Upstream,
    client: reqwest::Client,
    rules: Mutex<Vec<RuleState>>,
    seen: Mutex<Vec<Seen>>,
    creates: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy; stops accepting connections on drop.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the `aws_endpoint` for the client under test.
    pub endpoint: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`), with no fault armed.
    ///
    /// Create-if-absent puts (`If-None-Match: *`) are forwarded one at a time: moto checks
    /// that the key is absent and then writes it without a lock, so two racing commits of
    /// the same version could both "win" there, where S3 lets exactly one.
    pub async fn start(upstream: &str) -> FaultProxy {
        Self::start_for(upstream, Upstream::Moto).await
    }

    /// Starts a proxy in front of `upstream`, a server of the `kind` given.
    pub async fn start_for(upstream: &str, kind: Upstream) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let client = reqwest::Client::builder()
            .no_proxy()
            .no_gzip()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            kind,
            client,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            creates: tokio::sync::Mutex::new(()),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        handle(shared, req)
                    });
                    // Errors here are the faults this proxy injects, or the client hanging up.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            shared,
            accept,
        }
    }

    /// Arms `rule` (rules are checked in the order they were added; the first that picks
    /// a request breaks it).
    pub fn inject(&self, rule: Rule) {
        lock(&self.shared.rules).push(RuleState {
            rule,
            matched: 0,
            injected: 0,
        });
    }

    /// Disarms every rule.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Faults injected so far by the rules armed now.
    pub fn injected(&self) -> u32 {
        lock(&self.shared.rules).iter().map(|r| r.injected).sum()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }
}

/// Hop-by-hop headers, which describe one connection and are not forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    )
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// An S3 error answer.
fn s3_error(status: u16) -> Response<Body> {
    let code = if status == 503 {
        "SlowDown"
    } else {
        "InternalError"
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let method = req.method().clone();
    // Decoded: GCS clients send an object's `/` as `%2F`.
    let path = object_store::path::Path::from_url_path(req.uri().path())
        .map(|p| format!("/{p}"))
        .unwrap_or_else(|_| req.uri().path().to_owned());
    let query = req.uri().query().unwrap_or_default().to_owned();
    let fault = lock(&shared.rules)
        .iter_mut()
        .filter(|r| r.rule.target.matches(&method, &path, &query))
        .fold(None, |picked, r| {
            // Every matching rule counts the request, so `skip`/`every` mean the same
            // whatever other rules are armed.
            let due = r.pick();
            picked.or(due.then_some(r.rule.fault))
        });
    let create = req.headers().get("if-none-match").is_some_and(|v| v == "*")
        || req
            .headers()
            .get("x-goog-if-generation-match")
            .is_some_and(|v| v == "0");
    let record = |upstream: Option<u16>| {
        lock(&shared.seen).push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            upstream,
            fault,
            create,
        });
    };

    if let Some(Fault::Delay(d)) = fault {
        tokio::time::sleep(d).await;
    }
    if let Some(Fault::Refuse(status)) = fault {
        // Read the body, as a server does before it answers.
        let _ = req.into_body().collect().await;
        record(None);
        return Ok(s3_error(status));
    }

    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let xml_put = match shared.kind {
        Upstream::FakeGcs { preconditions }
            if parts.method == Method::PUT
                && query.is_empty()
                && !parts.headers.contains_key("x-goog-copy-source") =>
        {
            Some(preconditions)
        }
        _ => None,
    };
    let forward = match xml_put {
        Some(preconditions) => {
            json_api_upload(&shared, &path, &parts.headers, body, preconditions)?
        }
        None => {
            let url = format!("{}{}", shared.upstream, parts.uri);
            let mut forward = shared.client.request(parts.method.clone(), url);
            for (name, value) in &parts.headers {
                // The client sets the length of the body it sends; the Host header stays
                // the client's (it is part of the request's signature).
                if !hop_by_hop(name) && name != "content-length" {
                    forward = forward.header(name, value);
                }
            }
            forward.body(body)
        }
    };
    let guard = if create && shared.kind == Upstream::Moto {
        Some(shared.creates.lock().await)
    } else {
        None
    };
    let answer = forward.send().await;
    let answer = match answer {
        Ok(a) => {
            let status = a.status();
            let headers = a.headers().clone();
            let bytes = a.bytes().await;
            bytes.map(|b| (status, headers, b))
        }
        Err(e) => Err(e),
    };
    drop(guard);
    let start_after = match shared.kind {
        Upstream::FakeGcs { .. } if parts.method == Method::GET => {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "start-after")
                .map(|(_, v)| v.into_owned())
        }
        _ => None,
    };
    let answer = match (xml_put, answer) {
        (Some(_), Ok(a)) => Ok(xml_put_answer(a)),
        (None, Ok((status, headers, bytes))) if start_after.is_some() => {
            let listing = String::from_utf8_lossy(&bytes);
            let cut = listing_after(&listing, start_after.as_deref().unwrap_or_default());
            let mut headers = headers;
            headers.remove("content-length");
            Ok((status, headers, Bytes::from(cut)))
        }
        (_, a) => a,
    };
    let (status, headers, bytes) = match answer {
        Ok(a) => a,
        Err(e) => {
            record(None);
            eprintln!("test proxy: upstream failed: {e}");
            return Ok(s3_error(502));
        }
    };
    let upstream = Some(status.as_u16());

    match fault {
        Some(Fault::LoseAnswer(code)) => {
            record(upstream);
            return Ok(s3_error(code));
        }
        Some(Fault::HangUp) => {
            record(upstream);
            return Err("hung up by the test proxy".into());
        }
        Some(Fault::Stall(d)) => tokio::time::sleep(d).await,
        _ => {}
    }

    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let body = if fault == Some(Fault::CutBody) && bytes.len() > 1 {
        // Half the body, then an error: the connection is closed short of its
        // Content-Length. The pause lets the headers and the half reach the client first
        // (without it the connection may close before anything is sent).
        use futures::StreamExt;
        let half = bytes.slice(..bytes.len() / 2);
        let half = futures::stream::once(async move { Ok(Frame::data(half)) });
        let cut = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err::<Frame<Bytes>, BoxError>("body cut by the test proxy".into())
        });
        BodyExt::boxed(StreamBody::new(half.chain(cut)))
    } else {
        full(bytes)
    };
    record(upstream);
    Ok(response.body(body)?)
}

/// The JSON API upload that does what the XML API's `PUT <path>` asks (see
/// [`Upstream::FakeGcs`]).
fn json_api_upload(
    shared: &Shared,
    path: &str,
    headers: &hyper::HeaderMap,
    body: Bytes,
    preconditions: bool,
) -> Result<reqwest::RequestBuilder, BoxError> {
    let (bucket, object) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or("an XML API put names a bucket and an object")?;
    let name = object_store::path::Path::from_url_path(object)?.to_string();
    let generation = headers
        .get("x-goog-if-generation-match")
        .map(|v| v.to_str())
        .transpose()?;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let upload = format!("{}/upload/storage/v1/b/{bucket}/o", shared.upstream);
    Ok(match (preconditions, generation) {
        (true, generation) => {
            let boundary = format!("tributary-{}", uuid::Uuid::new_v4().simple());
            let metadata = serde_json::json!({"name": name, "contentType": content_type});
            let mut multipart = format!(
                "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\ncontent-type: {content_type}\r\n\r\n"
            )
            .into_bytes();
            multipart.extend_from_slice(&body);
            multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let mut query = vec![("uploadType", "multipart".to_owned())];
            query.extend(generation.map(|g| ("ifGenerationMatch", g.to_owned())));
            shared
                .client
                .post(upload)
                .query(&query)
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(multipart)
        }
        (false, generation) => {
            let mut query = vec![("uploadType", "media".to_owned()), ("name", name)];
            query.extend(generation.map(|g| ("ifGenerationMatch", g.to_owned())));
            shared
                .client
                .post(upload)
                .query(&query)
                .header("content-type", content_type)
                .body(body)
        }
    })
}

/// An XML API listing without the objects whose key is not after `offset`.
fn listing_after(listing: &str, offset: &str) -> String {
    let mut out = String::with_capacity(listing.len());
    let mut rest = listing;
    while let Some(start) = rest.find("<Contents>") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("</Contents>") else {
            break;
        };
        let end = start + len + "</Contents>".len();
        let entry = &rest[start..end];
        let key = entry
            .split_once("<Key>")
            .and_then(|(_, k)| k.split_once("</Key>"))
            .map(|(k, _)| k)
            .unwrap_or_default();
        if key > offset {
            out.push_str(entry);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The XML API's answer to a put, from the JSON API's answer to the upload: the status,
/// and on success the object's etag and generation as headers, with no body.
fn xml_put_answer(
    (status, headers, bytes): (reqwest::StatusCode, hyper::HeaderMap, Bytes),
) -> (reqwest::StatusCode, hyper::HeaderMap, Bytes) {
    if !status.is_success() {
        return (status, headers, bytes);
    }
    let object: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut out = hyper::HeaderMap::new();
    let field = |f: &str| object[f].as_str().unwrap_or_default().to_owned();
    for (name, value) in [
        ("etag", format!("\"{}\"", field("etag"))),
        ("x-goog-generation", field("generation")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert(name, v);
        }
    }
    (status, out, Bytes::new())
}

/// The proxy itself: each fault does to an object_store client what it says.
#[tokio::test(flavor = "multi_thread")]
async fn each_fault_breaks_what_it_says() {
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, RetryConfig};

    let moto = crate::moto::Moto::start().await;
    moto.create_bucket("bkt", false).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let store = AmazonS3Builder::new()
        .with_endpoint(&proxy.endpoint)
        .with_allow_http(true)
        .with_bucket_name("bkt")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_retry(RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .with_config("timeout".parse().expect("a client option"), "1s")
        .build()
        .expect("a client");
    let path = |name: &str| Path::from(format!("x/{name}"));
    let exists = |name: &'static str| {
        let store = &store;
        async move { store.head(&path(name)).await.is_ok() }
    };

    proxy.inject(Rule::new(Target::DataFile, Fault::Refuse(503)));
    let e = store.put(&path("a.parquet"), "a".into()).await.unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    assert!(!exists("a.parquet").await, "a refused put never arrives");

    proxy.inject(Rule::new(Target::DataFile, Fault::LoseAnswer(500)));
    let e = store.put(&path("b.parquet"), "b".into()).await.unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
    assert!(
        exists("b.parquet").await,
        "the put landed, its answer was lost"
    );

    proxy.inject(Rule::new(Target::DataFile, Fault::HangUp));
    store.put(&path("c.parquet"), "c".into()).await.unwrap_err();
    assert!(
        exists("c.parquet").await,
        "the put landed before the hang-up"
    );

    proxy.inject(Rule::new(
        Target::CommitFile,
        Fault::Stall(Duration::from_secs(3)),
    ));
    let commit = Path::from("x/_delta_log/00000000000000000000.json");
    let e = store
        .put_opts(&commit, "{}".into(), PutMode::Create.into())
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("Timeout"), "{e:?}");
    assert!(store.head(&commit).await.is_ok(), "the commit landed, late");
    let e = store
        .put_opts(&commit, "{}".into(), PutMode::Create.into())
        .await
        .unwrap_err();
    assert!(
        matches!(e, object_store::Error::AlreadyExists { .. }),
        "a create-if-absent put of an existing key is refused: {e}"
    );

    store
        .put(&path("d.parquet"), vec![7u8; 1000].into())
        .await
        .expect("no fault armed");
    proxy.inject(Rule::new(Target::Read, Fault::CutBody));
    let e = store
        .get(&path("d.parquet"))
        .await
        .expect("headers")
        .bytes()
        .await;
    assert!(e.is_err(), "the body is cut short");
    assert_eq!(proxy.injected(), 5);
}
