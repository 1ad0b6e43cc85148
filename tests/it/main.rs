//! End-to-end tests: the real `tributary` binary against the simulators on 127.0.0.1 and
//! real object-store servers (`moto` for S3, also behind the fault-injecting `proxy`;
//! Azurite for Azure; fake-gcs-server for GCS; see `stores`), with the tables read back (by
//! deltalake here, and by Python's `deltalake` in `readback` and the store tests), and
//! `plan`'s output run by Apache Airflow and validated against the Kubernetes schemas
//! (`plan`), and four `run` daemons sharing one bucket (`fleet`). One test binary, a module
//! per topic.

mod azure;
mod collector;
mod common;
mod compact;
mod config_errors;
mod declarative;
mod demo;
mod fleet;
mod gcs;
mod hostile;
mod hostile_records;
mod leases;
mod metrics;
mod moto;
mod overview;
mod plan;
mod postgres;
mod proxy;
mod readback;
mod resilience;
mod retl;
mod s3;
mod s3_faults;
mod s3_writers;
mod salesforce;
mod scaffold;
mod stores;
mod stripe;
mod zendesk;
