//! End-to-end tests: the real `tributary` binary against the simulators on 127.0.0.1,
//! with the tables read back (by deltalake here, and by Python's `deltalake` in
//! `readback`). One test binary, a module per topic.

mod common;
mod config_errors;
mod crash_resume;
mod rate_limit;
mod readback;
mod s3;
mod salesforce;
mod stripe_sync;
mod tracking;
