//! Command-line and environment options shared by several roles. Each role
//! flattens the groups it needs, so every option has one name everywhere.

use std::time::Duration;

use crate::config::parse_duration;
use crate::{Namespace, SecretUrl};

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
    /// RabbitMQ URL.
    #[arg(
        long = "amqp-url",
        value_parser = crate::config::SecretUrlParser,
        env = "AMQP_URL", value_name = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: SecretUrl,
    /// How long a publish waits for the broker's confirm.
    #[arg(long, env = "WA_CONFIRM_TIMEOUT", value_name = "WA_CONFIRM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub confirm_timeout: Duration,
    /// Confirm-mode channels that publishes are spread over.
    #[arg(long, env = "WA_PUBLISH_CHANNELS", value_name = "WA_PUBLISH_CHANNELS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub publish_channels: u16,
}

impl AmqpArgs {
    pub fn broker_config(&self, connection_name: &str) -> crate::broker::BrokerConfig {
        let mut config = crate::broker::BrokerConfig::new(self.amqp_url.clone(), connection_name);
        config.confirm_timeout = self.confirm_timeout;
        config.publish_channels = usize::from(self.publish_channels);
        config
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        long = "redis-url",
        value_parser = crate::config::SecretUrlParser,
        env = "REDIS_URL", value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: SecretUrl,
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
        let mut options: sqlx::postgres::PgConnectOptions = self.database_url.expose().parse()?;
        // Over loopback TLS protects nothing and, with sqlx 0.9.0 (which
        // leaves Nagle's algorithm on), costs a delayed-ACK stall per
        // statement. An explicit `sslmode` in the URL always wins.
        let chose_sslmode = self
            .database_url
            .url()
            .query_pairs()
            .any(|(key, _)| key == "sslmode");
        let loopback = match self.database_url.url().host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            // postgres:// is not a "special" scheme: IP addresses arrive as domains.
            Some(url::Host::Domain(name)) => {
                name == "localhost"
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            None => true,
        };
        if loopback && !chose_sslmode {
            options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.db_pool_size)
            .acquire_timeout(self.db_acquire_timeout)
            .connect_lazy_with(options))
    }
}
