//! Response latency: a real vendor answers a list page in hundreds of milliseconds, the
//! simulators on loopback in microseconds. With a latency set, every vendor request (not
//! the `/_sandbox/*` control endpoints) is answered no sooner than its latency after it
//! arrived, so a benchmark against the simulator is bound by round trips as it would be
//! against the vendor.
//!
//! Each request sleeps on its own task: concurrent requests wait their latencies in
//! parallel, as at a vendor, and nothing is serialized. The jitter is drawn from an RNG
//! seeded from the simulator's seed (its own, so latency does not change which faults a
//! seeded run injects). The rate limit still counts a request when it arrives.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::control::Vendor;

/// How long the simulator takes to answer a vendor request: `latency_ms`, plus or minus up
/// to `jitter_ms` (uniformly; never below zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// The mean latency, in milliseconds (0 = answer at once).
    #[serde(default)]
    pub latency_ms: u64,
    /// The most a latency departs from `latency_ms`, either way, in milliseconds; when
    /// absent from a control request, 20% of `latency_ms`.
    #[serde(default)]
    pub jitter_ms: u64,
}

impl Latency {
    /// `ms` milliseconds with the default jitter of ±20%.
    pub fn with_default_jitter(ms: u64) -> Latency {
        Latency {
            latency_ms: ms,
            jitter_ms: ms / 5,
        }
    }

    /// `ms` milliseconds with `jitter_ms` of jitter, or the default ±20% when `None` (how
    /// `tributary sandbox --latency-ms L [--latency-jitter-ms J]` asks for it).
    pub fn of(ms: u64, jitter_ms: Option<u64>) -> Latency {
        match jitter_ms {
            Some(jitter_ms) => Latency {
                latency_ms: ms,
                jitter_ms,
            },
            None => Latency::with_default_jitter(ms),
        }
    }

    /// No latency.
    pub fn is_zero(&self) -> bool {
        self.latency_ms == 0 && self.jitter_ms == 0
    }
}

/// The configured latency and the seeded RNG drawing its jitter.
#[derive(Debug)]
pub struct LatencyState {
    latency: Latency,
    rng: StdRng,
    /// Extra latency of the requests whose path starts with a prefix (the first that
    /// matches): a vendor endpoint slower than the rest.
    slower: Vec<(String, Duration)>,
}

/// Mixed into the simulator's seed so the jitter's RNG is not the faults' RNG.
const SEED_SALT: u64 = 0x6c61_7465_6e63_7921;

impl LatencyState {
    /// No latency; jitter drawn from an RNG seeded from `seed`.
    pub fn new(seed: u64) -> LatencyState {
        LatencyState {
            latency: Latency::default(),
            rng: StdRng::seed_from_u64(seed ^ SEED_SALT),
            slower: Vec::new(),
        }
    }

    /// The configured latency.
    pub fn get(&self) -> Latency {
        self.latency
    }

    /// Replaces the latency.
    pub fn set(&mut self, latency: Latency) {
        self.latency = latency;
    }

    /// Requests whose path starts with `prefix` take `extra` longer than the others.
    pub fn slow_down(&mut self, prefix: &str, extra: Duration) {
        self.slower.retain(|(p, _)| p != prefix);
        self.slower.push((prefix.to_owned(), extra));
    }

    /// The latency of the next request to `path`: [`LatencyState::draw`] and any extra
    /// latency of its path.
    pub fn draw_for(&mut self, path: &str) -> Duration {
        let extra = self
            .slower
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(Duration::ZERO, |(_, extra)| *extra);
        self.draw() + extra
    }

    /// The latency of the next request (zero when none is set).
    pub fn draw(&mut self) -> Duration {
        let Latency {
            latency_ms,
            jitter_ms,
        } = self.latency;
        if jitter_ms == 0 {
            return Duration::from_millis(latency_ms);
        }
        let low = latency_ms.saturating_sub(jitter_ms);
        let high = latency_ms.saturating_add(jitter_ms);
        Duration::from_millis(self.rng.random_range(low..=high))
    }
}

/// Axum middleware answering every vendor request of `vendor` no sooner than the kit's
/// latency after it arrived (control endpoints at once). Install it on a simulator's
/// router with `axum::middleware::from_fn_with_state(shared, latency::delay::<Shared>)`.
pub async fn delay<V: Vendor>(
    State(vendor): State<Arc<V>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/_sandbox/") {
        return next.run(request).await;
    }
    let arrived = Instant::now();
    let latency = vendor.kit().draw_latency_for(request.uri().path());
    let response = next.run(request).await;
    if !latency.is_zero() {
        // The time spent answering counts towards the latency, as at a vendor.
        tokio::time::sleep_until(arrived + latency).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{SandboxError, control};
    use crate::faults::NoExtra;
    use crate::kit::{Kit, KitConfig};
    use crate::server::Server;
    use crate::to_json;
    use axum::http::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake {
        kit: Kit<NoExtra>,
    }

    impl Vendor for Fake {
        type Faults = NoExtra;
        fn kit(&self) -> &Kit<NoExtra> {
            &self.kit
        }
        fn error_body(&self, error: &SandboxError) -> Vec<u8> {
            format!("{{\"error\": {}}}", error.status()).into_bytes()
        }
        fn stats(&self) -> serde_json::Value {
            to_json(&self.kit.counters())
        }
    }

    async fn handle(State(fake): State<Arc<Fake>>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 16)
            .await
            .unwrap_or_default();
        let body = match parts.uri.path().strip_prefix("/_sandbox/") {
            Some(path) => control(&*fake, &parts.method, path, &body).1,
            None => b"{}".to_vec(),
        };
        Response::new(axum::body::Body::from(body))
    }

    async fn serve() -> (Arc<Fake>, Server) {
        let fake = Arc::new(Fake {
            kit: Kit::new(KitConfig::default()),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&fake),
                delay::<Fake>,
            ))
            .with_state(Arc::clone(&fake));
        (fake, Server::start(0, router, "test").await.unwrap())
    }

    /// One request on its own connection: the time it took and the body.
    async fn call(server: &Server, method: Method, path: &str, body: &str) -> (Duration, String) {
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (started.elapsed(), body)
    }

    #[tokio::test]
    async fn every_vendor_request_waits_its_own_latency_in_parallel() {
        let (fake, server) = serve().await;
        let (_, set) = call(
            &server,
            Method::POST,
            "/_sandbox/latency",
            r#"{"latency_ms": 200}"#,
        )
        .await;
        let set: Latency = serde_json::from_str(&set).unwrap();
        assert_eq!(set, Latency::with_default_jitter(200));
        assert_eq!(fake.kit.latency(), set);
        let (_, got) = call(&server, Method::GET, "/_sandbox/latency", "").await;
        assert_eq!(serde_json::from_str::<Latency>(&got).unwrap(), set);

        let started = std::time::Instant::now();
        let calls = (0..10).map(|_| call(&server, Method::GET, "/v1/things", ""));
        let took = futures::future::join_all(calls).await;
        let all = started.elapsed();
        for (each, body) in &took {
            assert_eq!(body, "{}");
            // 200 ms − 20% jitter at least.
            assert!(*each >= Duration::from_millis(160), "{each:?}");
        }
        // Serialized, ten would take at least 1.6 s.
        assert!(all < Duration::from_millis(1_200), "{all:?}");

        // Control endpoints are answered at once; `{}` turns the latency off.
        let (took, _) = call(
            &server,
            Method::POST,
            "/_sandbox/latency",
            r#"{"latency_ms": 5000, "jitter_ms": 0}"#,
        )
        .await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(
            fake.kit.latency(),
            Latency {
                latency_ms: 5000,
                jitter_ms: 0
            }
        );
        call(&server, Method::POST, "/_sandbox/latency", "{}").await;
        let (took, _) = call(&server, Method::GET, "/v1/things", "").await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        let (_, bad) = call(
            &server,
            Method::POST,
            "/_sandbox/latency",
            r#"{"latency_ms": -1}"#,
        )
        .await;
        assert_eq!(bad, r#"{"error": 400}"#);
        server.shutdown().await;
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded() {
        let draws = |seed| {
            let mut state = LatencyState::new(seed);
            state.set(Latency::with_default_jitter(300));
            (0..200).map(|_| state.draw()).collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7));
        assert_ne!(a, draws(8));
        assert!(
            a.iter()
                .all(|d| (240..=360).contains(&(d.as_millis() as u64)))
        );
        assert!(a.iter().any(|d| d.as_millis() != 300), "jitter varies");
        let mut state = LatencyState::new(1);
        assert_eq!(state.draw(), Duration::ZERO);
        state.set(Latency {
            latency_ms: 10,
            jitter_ms: 50,
        });
        assert!((0..100).all(|_| state.draw() <= Duration::from_millis(60)));
    }

    #[test]
    fn a_slower_path_adds_its_extra_latency() {
        let mut state = LatencyState::new(1);
        state.set(Latency {
            latency_ms: 30,
            jitter_ms: 0,
        });
        state.slow_down("/v1/events", Duration::from_millis(500));
        assert_eq!(state.draw_for("/v1/events"), Duration::from_millis(530));
        assert_eq!(
            state.draw_for("/v1/events/evt_1"),
            Duration::from_millis(530)
        );
        assert_eq!(state.draw_for("/v1/charges"), Duration::from_millis(30));
        // Set again, the prefix's extra is replaced, not added.
        state.slow_down("/v1/events", Duration::from_millis(100));
        assert_eq!(state.draw_for("/v1/events"), Duration::from_millis(130));
        state.set(Latency::default());
        assert_eq!(state.draw_for("/v1/events"), Duration::from_millis(100));
        assert_eq!(state.draw_for("/v1/charges"), Duration::ZERO);
    }
}
