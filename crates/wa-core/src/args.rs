//! Command-line and environment options shared by several roles. Each role
//! flattens the groups it needs, so every option has one name everywhere.

use std::time::Duration;

use std::path::PathBuf;

use crate::broker::tls::AmqpTlsFiles;
use crate::config::parse_duration;
use crate::{Namespace, SecretUrl, SecretUrls};

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

#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL; for a cluster, one URL per node, comma-separated
    /// (tried in turn; a lost connection moves on to the next node).
    #[arg(
        long = "amqp-url",
        value_parser = crate::config::SecretUrlsParser,
        env = "AMQP_URL", value_name = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: SecretUrls,
    /// PEM CA certificate(s) that `amqps://` brokers must chain to (default: the system's roots).
    #[arg(long, env = "WA_AMQP_CA_FILE", value_name = "WA_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to `amqps://` brokers (with WA_AMQP_CLIENT_KEY).
    #[arg(long, env = "WA_AMQP_CLIENT_CERT", value_name = "WA_AMQP_CLIENT_CERT")]
    pub amqp_client_cert: Option<PathBuf>,
    /// PEM (PKCS#8) key of WA_AMQP_CLIENT_CERT.
    #[arg(long, env = "WA_AMQP_CLIENT_KEY", value_name = "WA_AMQP_CLIENT_KEY")]
    pub amqp_client_key: Option<PathBuf>,
    /// How long a publish waits for the broker's confirm.
    #[arg(long, env = "WA_CONFIRM_TIMEOUT", value_name = "WA_CONFIRM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub confirm_timeout: Duration,
    /// Confirm-mode channels that publishes are spread over.
    #[arg(long, env = "WA_PUBLISH_CHANNELS", value_name = "WA_PUBLISH_CHANNELS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub publish_channels: u16,
}

impl AmqpArgs {
    /// The broker settings; fails, naming the variable, when a TLS file
    /// cannot be read.
    pub fn broker_config(
        &self,
        connection_name: &str,
    ) -> anyhow::Result<crate::broker::BrokerConfig> {
        let mut config = crate::broker::BrokerConfig::new(self.amqp_url.clone(), connection_name);
        config.confirm_timeout = self.confirm_timeout;
        config.publish_channels = usize::from(self.publish_channels);
        config.tls = AmqpTlsFiles {
            ca_file: self.amqp_ca_file.clone(),
            client_cert: self.amqp_client_cert.clone(),
            client_key: self.amqp_client_key.clone(),
        }
        .load()?;
        Ok(config)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`rediss://` for TLS); with WA_REDIS_CLUSTER, the seed
    /// nodes of the cluster, comma-separated.
    #[arg(
        long = "redis-url",
        value_parser = crate::config::SecretUrlsParser,
        env = "REDIS_URL", value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: SecretUrls,
    /// Redis is a Redis Cluster: REDIS_URL lists seed nodes, commands follow the slots.
    #[arg(long, env = "WA_REDIS_CLUSTER", value_name = "WA_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
    /// PEM CA certificate(s) a `rediss://` server must chain to (default: the system's roots).
    #[arg(long, env = "WA_REDIS_CA_FILE", value_name = "WA_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to a `rediss://` server (with WA_REDIS_CLIENT_KEY).
    #[arg(
        long,
        env = "WA_REDIS_CLIENT_CERT",
        value_name = "WA_REDIS_CLIENT_CERT"
    )]
    pub redis_client_cert: Option<PathBuf>,
    /// PEM key of WA_REDIS_CLIENT_CERT.
    #[arg(long, env = "WA_REDIS_CLIENT_KEY", value_name = "WA_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,
    /// Time limit of every Redis command.
    #[arg(long, env = "WA_REDIS_TIMEOUT", value_name = "WA_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long = "database-url",
        value_parser = crate::config::SecretUrlParser,
        env = "DATABASE_URL", value_name = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wa_ingest"
    )]
    pub database_url: SecretUrl,
    /// Connections in the pool.
    #[arg(long, env = "WA_DB_POOL_SIZE", value_name = "WA_DB_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size: u32,
    /// How long to wait for a pooled connection before calling the database unreachable.
    #[arg(long, env = "WA_DB_ACQUIRE_TIMEOUT", value_name = "WA_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// A lazily connecting pool: a role starts (and reports not ready) while
    /// PostgreSQL is down, instead of failing at start.
    pub fn pool(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        // TLS as the URL says (`sslmode`, `sslrootcert`; sqlx's default
        // `prefer` uses it when the server offers it). TCP_NODELAY is set
        // by the patched sqlx-core (patches/sqlx-core), so TLS costs no stall.
        let options: sqlx::postgres::PgConnectOptions = self.database_url.expose().parse()?;
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.db_pool_size)
            .acquire_timeout(self.db_acquire_timeout)
            .connect_lazy_with(options))
    }
}
