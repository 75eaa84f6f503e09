//! The PostgreSQL options of every role that reaches the database
//! (`DATABASE_URL`, the pool size and its acquire timeout), and the pool
//! they build.

use std::time::Duration;

use wa_core::SecretUrl;
use wa_core::config::{SecretUrlParser, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long = "database-url",
        value_parser = SecretUrlParser,
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
