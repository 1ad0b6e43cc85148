//! The sandbox kit: what every vendor simulator of Tributary shares, so that a simulator
//! holds only its vendor's store, generator, routes and error shapes.
//!
//! - [`Server`]: binds 127.0.0.1, serves an axum router from a tokio task, stops on
//!   [`Server::shutdown`] (waiting a bounded time) or on drop.
//! - [`Kit`]: the state every simulator's handler consults: the simulated [`Clock`], a
//!   sliding-window rate limit ([`Window`]) answered with 429 and `Retry-After`, seeded
//!   fault injection ([`Faults`]: errors, throttling, slow answers, cut bodies, malformed
//!   JSON), a response [`Latency`] with seeded jitter (installed on a router with
//!   [`latency::delay`]) and the counters behind `/_sandbox/stats`.
//! - [`Kit::control`]: the one control API of every simulator (`/_sandbox/faults`,
//!   `/_sandbox/rate_limit`, `/_sandbox/latency`, `/_sandbox/clock`, `/_sandbox/stats`, `/_sandbox/stats/reset`),
//!   with the [`Vendor`] trait supplying the vendor's error bodies, its statistics and its
//!   own control endpoints.
//! - [`api`]: the whole request pipeline for a simulator that only writes its routes
//!   ([`api::Api`]).
//! - [`form`]: query strings and form bodies (percent-decoding, `a[b][c]` keys);
//!   [`gzip`]: negotiation and compression; [`response`]: cut and malformed bodies;
//!   [`base64`]: Basic credentials and opaque cursors.

pub mod api;
pub mod base64;
pub mod clock;
pub mod control;
pub mod faults;
pub mod form;
pub mod gzip;
pub mod kit;
pub mod latency;
pub mod limiter;
pub mod replay;
pub mod response;
pub mod server;

pub use clock::Clock;
pub use control::{SandboxError, Vendor};
pub use faults::{After, Before, Faults, NoExtra};
pub use kit::{Counters, Kit, KitConfig};
pub use latency::Latency;
pub use limiter::{Measure, RateLimit, Refused, Window};
pub use server::Server;

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A poisoned lock only means another request panicked mid-way; the data is still usable
/// for a simulator, and refusing every later request would hide the original failure.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A simulator's store: read and written by the handler and the Rust API alike, usable
/// after a panicked request (see [`lock`]).
#[derive(Debug, Default)]
pub struct StoreLock<T>(RwLock<T>);

impl<T> StoreLock<T> {
    /// Holds `value`.
    pub fn new(value: T) -> StoreLock<T> {
        StoreLock(RwLock::new(value))
    }

    /// Shared access.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A value as JSON, `null` when it cannot be (never for the kit's own types).
pub fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
