//! A replay server for contract tests: answers requests with recorded vendor responses
//! (the examples of a vendor's API reference) and logs every request it saw, so a
//! connector's parsers are tested against what the vendor sends, not against our
//! simulator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One recorded answer. The first route not used up whose path matches, and whose
/// `query` (if any) occurs in the decoded query string, answers.
#[derive(Debug)]
pub struct Route {
    path: String,
    query: Option<&'static str>,
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    /// Answers one request only.
    once: bool,
    used: AtomicBool,
}

impl Route {
    /// A 200 with `body` for requests to `path` whose query contains `query`.
    pub fn new(path: impl Into<String>, query: Option<&'static str>, body: &'static str) -> Route {
        Route {
            path: path.into(),
            query,
            status: 200,
            headers: Vec::new(),
            body,
            once: false,
            used: AtomicBool::new(false),
        }
    }

    /// Answers with `status` instead of 200.
    pub fn status(mut self, status: u16) -> Route {
        self.status = status;
        self
    }

    /// Adds a response header (a `content-type` replaces the default JSON one).
    pub fn header(mut self, name: &'static str, value: &'static str) -> Route {
        self.headers.push((name, value));
        self
    }

    /// Answers only the first matching request; later ones fall to the next route.
    pub fn once(mut self) -> Route {
        self.once = true;
        self
    }
}

/// A running replay server on 127.0.0.1.
#[derive(Debug)]
pub struct Replay {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Replay {
    /// Serves `routes`; a request no route answers gets a 500 naming it.
    pub async fn start(routes: Vec<Route>) -> Replay {
        Replay::start_as(routes, None).await
    }

    /// Like [`Replay::start`], with every occurrence of `placeholder` in the bodies
    /// replaced by the server's own URL (a recorded answer that names the vendor's host,
    /// such as an OAuth token answer's instance URL, then points back here).
    pub async fn start_as(routes: Vec<Route>, placeholder: Option<&'static str>) -> Replay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port on 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let routes = Arc::new(routes);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&log);
        let own = url.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (routes, seen, own) = (Arc::clone(&routes), Arc::clone(&seen), own.clone());
            async move {
                let path = req.uri().path().to_owned();
                let query = crate::form::parse_pairs(req.uri().query().unwrap_or_default())
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!("{} {path}?{query}", req.method()));
                let found = routes.iter().find(|r| {
                    r.path == path
                        && r.query.is_none_or(|q| query.contains(q))
                        && !(r.once && r.used.swap(true, Ordering::SeqCst))
                });
                let mut response = axum::http::Response::builder();
                let body = match found {
                    Some(r) => {
                        response = response.status(r.status);
                        if !r
                            .headers
                            .iter()
                            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                        {
                            response = response.header("content-type", "application/json");
                        }
                        for (name, value) in &r.headers {
                            response = response.header(*name, *value);
                        }
                        match placeholder {
                            Some(p) => r.body.replace(p, &own),
                            None => r.body.to_owned(),
                        }
                    }
                    None => {
                        response = response.status(500);
                        format!("no recorded response for {path}?{query}")
                    }
                };
                response
                    .body(axum::body::Body::from(body))
                    .unwrap_or_default()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Replay { url, log }
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request seen, as `METHOD /path?decoded&query`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(url: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = url.trim_start_matches("http://");
        let (host, rest) = addr.split_once('/').map_or((addr, ""), |(h, r)| (h, r));
        let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
        s.write_all(
            format!("GET /{rest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        (
            status,
            out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
        )
    }

    #[tokio::test]
    async fn routes_answer_in_order_once_routes_once_and_the_log_keeps_every_request() {
        let replay = Replay::start_as(
            vec![
                Route::new("/a", Some("x=1 2"), "first HOST")
                    .status(401)
                    .once(),
                Route::new("/a", None, "then"),
            ],
            Some("HOST"),
        )
        .await;
        let base = replay.url().to_owned();
        assert_eq!(
            get(&format!("{base}/a?x=1%202")).await,
            (401, format!("first {base}"))
        );
        assert_eq!(
            get(&format!("{base}/a?x=1%202")).await,
            (200, "then".to_owned())
        );
        let (status, body) = get(&format!("{base}/b")).await;
        assert_eq!(status, 500);
        assert!(body.contains("no recorded response for /b"), "{body}");
        assert_eq!(
            replay.requests(),
            ["GET /a?x=1 2", "GET /a?x=1 2", "GET /b?"]
        );
    }
}
