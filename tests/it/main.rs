//! End-to-end tests: the real `tributary` binary against the simulators on 127.0.0.1 and a
//! real S3-compatible server (`moto`, also behind the fault-injecting `proxy`), with the
//! tables read back (by deltalake here, and by Python's `deltalake` in `readback` and the
//! S3 tests). One test binary, a module per topic.

mod common;
mod compact;
mod config_errors;
mod demo;
mod hostile;
mod hostile_records;
mod moto;
mod proxy;
mod readback;
mod resilience;
mod s3;
mod s3_faults;
mod s3_writers;
mod salesforce;
mod scaffold;
mod stripe;
mod zendesk;
