//! Delivery of Tracking-API messages (Segment Spec `identify`/`track`/`group`) to a
//! Segment-compatible collector. See [`client`] for the HTTP side: batching, size limits
//! and the bisection of rejected batches.

pub mod client;
