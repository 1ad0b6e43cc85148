//! The Tributary runtime: configuration, the connector registry, the sync engine and the
//! orchestration of a run over it, the warehouse table writer, the run log, the
//! scheduler, logging, and the command implementations. The `tributary` binary
//! (`main.rs`) is a thin shell over [`cli`] and [`demo`].

pub mod cli;
pub mod collector;
pub mod config;
pub mod demo;
pub mod engine;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod orchestrator;
pub mod overview;
pub mod plan;
pub mod registry;
pub mod retl;
pub mod runs;
pub mod scaffold;
pub mod scheduler;
pub mod sink;
pub mod tracking;
pub mod warehouse;
