//! The integration tests, one binary: full cycles, failures, crashes, restores,
//! metrics and configuration against real PostgreSQL, S3 (moto), Azure (Azurite), GCS
//! (fake-gcs-server), Pushgateway and Prometheus servers and the Kubernetes stand-in,
//! through the real binary. One binary
//! links kube, sqlx, object_store and axum once instead of once per test file.

mod support;

mod config;
mod crash;
mod cycle;
mod encryption;
mod failures;
mod faults;
mod metrics;
mod providers;
mod restore;
mod retention;
mod server_copy;
mod shards;
mod trust;
