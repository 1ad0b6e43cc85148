//! Stripe, end to end: the binary against the Stripe simulator. A module per topic: full
//! and incremental syncs, history tables, rate limits, crash-resume, and the events
//! delivered as Tracking-API messages.

mod crash_resume;
mod history;
mod rate_limit;
mod sync;
pub mod tracking;
