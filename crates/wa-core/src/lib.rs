//! What every wa-ingest role shares: configuration types, the RabbitMQ link
//! and topology, logging, metrics and health endpoints, and shutdown.

pub mod args;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use config::{Namespace, SecretString, SecretUrl, SecretUrls};
