//! What every wa-ingest role shares: configuration types and parsing,
//! logging, the operator endpoints (health, readiness, metrics), backoff,
//! shutdown and the threads' scheduling policy. The broker lives in
//! wa-broker, the database in wa-store.

pub mod args;
pub mod backoff;
pub mod config;
pub mod executable;
pub mod ops;
pub mod scheduling;
pub mod shutdown;
pub mod telemetry;

pub use config::{Namespace, SecretString, SecretUrl, SecretUrls};
