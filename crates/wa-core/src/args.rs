//! Command-line and environment options shared by several roles. Each role
//! flattens the groups it needs, so every option has one name everywhere.
//! The options of one dependency live beside the code that uses them
//! (`AmqpArgs` and `BrokerArgs` in wa-broker, `DatabaseArgs` in wa-store,
//! `RedisArgs` in wa-worker).

use std::net::SocketAddr;

use crate::Namespace;

/// The ops listener of a role (`/healthz`, `/readyz`, `/metrics`):
/// `0.0.0.0:PORT` unless `METRICS_ADDR` says otherwise.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs<const PORT: u16> {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "METRICS_ADDR",
        value_name = "METRICS_ADDR",
        default_value = format!("0.0.0.0:{PORT}")
    )]
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NamespaceArgs {
    /// Prefix of exchanges, queues and Redis keys.
    #[arg(
        long = "namespace",
        env = "WA_NAMESPACE",
        value_name = "WA_NAMESPACE",
        default_value = "wa"
    )]
    pub namespace: Namespace,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AppSecretArgs {
    /// Meta app secret(s) that sign the webhooks; comma-separated to allow rotation.
    #[arg(
        long = "app-secret",
        env = "WA_APP_SECRET",
        value_name = "WA_APP_SECRET",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub secrets: Vec<crate::SecretString>,
}
