//! The Tributary runtime: configuration, the connector registry, the sync engine, the
//! warehouse table writer, the run log, the scheduler and the command implementations.
//! The `tributary` binary (`main.rs`) is a thin shell over [`cli`].

pub mod cli;
pub mod config;
pub mod engine;
pub mod registry;
pub mod runs;
pub mod scheduler;
pub mod tracking;
pub mod warehouse;
