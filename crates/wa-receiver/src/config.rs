use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wa_broker::BrokerArgs;
use wa_core::SecretString;
use wa_core::args::AppSecretArgs;
use wa_core::config::parse_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub app_secret: AppSecretArgs,
    /// Token Meta echoes in the verification handshake.
    #[arg(
        long,
        env = "WA_VERIFY_TOKEN",
        value_name = "WA_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub verify_token: SecretString,
    /// Address to listen on.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        value_name = "LISTEN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_addr: SocketAddr,
    /// Largest accepted body in bytes (Meta's payloads reach 3 MB).
    #[arg(long, env = "WA_BODY_LIMIT", value_name = "WA_BODY_LIMIT", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(3 * 1024 * 1024..=64 * 1024 * 1024))]
    pub body_limit: u64,
    /// Verified requests waiting for the broker at once; more are answered
    /// 503 so that Meta retries.
    #[arg(long, env = "WA_MAX_IN_FLIGHT", value_name = "WA_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Bytes of request bodies held in memory at once, all connections
    /// together, counted as buffers grow while bytes arrive (never by what
    /// Content-Length announces). A body that would pass it gets 503.
    #[arg(long, env = "WA_BODY_BUFFER", value_name = "WA_BODY_BUFFER", default_value_t = 24 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024 * 1024..=4 * 1024 * 1024 * 1024))]
    pub body_buffer: u64,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Optional second, plain-HTTP listener that serves only `/healthz`,
    /// `/readyz` and `/metrics` (for probes and scrapers when LISTEN_ADDR
    /// demands client certificates, or to keep metrics off the public port).
    #[arg(long, env = "WA_OPS_ADDR", value_name = "WA_OPS_ADDR")]
    pub ops_addr: Option<SocketAddr>,
}

/// Deadlines and the connection cap of the public listener: what keeps slow,
/// half-open and idle clients from holding a connection, a task or memory.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Time from accepting a connection (TLS handshake included), or from
    /// the first byte of a later request on a kept-alive connection, to a
    /// complete request head. Missed: 408 and close.
    #[arg(long, env = "WA_HEADER_TIMEOUT", value_name = "WA_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,
    /// Time the body has to start arriving; every byte received adds
    /// 1/WA_BODY_MIN_RATE seconds, up to WA_BODY_MAX_DURATION in all
    /// (Apache's `RequestReadTimeout body=20-60,MinRate=500`). Missed: 408
    /// and close.
    #[arg(long, env = "WA_BODY_TIMEOUT", value_name = "WA_BODY_TIMEOUT", default_value = "20s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,
    /// Bytes per second a body must keep arriving at to earn more time.
    #[arg(long, env = "WA_BODY_MIN_RATE", value_name = "WA_BODY_MIN_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub body_min_rate: u32,
    /// The longest any body may take, however fast it arrives.
    #[arg(long, env = "WA_BODY_MAX_DURATION", value_name = "WA_BODY_MAX_DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub body_max_duration: Duration,
    /// How long a kept-alive connection may wait for the first byte of its
    /// next request before it is closed.
    #[arg(long, env = "WA_KEEPALIVE_TIMEOUT", value_name = "WA_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = parse_positive_duration)]
    pub keepalive_timeout: Duration,
    /// Open connections at most. At the cap a new connection takes the place
    /// of the one that has waited longest for a request head, else of the
    /// one that has been sending an unverified body longest; when every
    /// connection holds a verified request, it waits up to WA_HEADER_TIMEOUT
    /// for one to end and is refused after that.
    #[arg(long, env = "WA_MAX_CONNECTIONS", value_name = "WA_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

/// TLS termination in the receiver; plain HTTP when `WA_TLS_CERT` is unset.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM file with the server certificate chain; turns TLS on (needs WA_TLS_KEY).
    #[arg(
        long,
        env = "WA_TLS_CERT",
        value_name = "WA_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of WA_TLS_CERT.
    #[arg(
        long,
        env = "WA_TLS_KEY",
        value_name = "WA_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CA(s) client certificates must chain to. Set, the
    /// webhook route (`/webhooks/whatsapp`) answers only clients with such a
    /// certificate; `/healthz`, `/readyz` and `/metrics` stay open to any
    /// TLS client.
    #[arg(
        long,
        env = "WA_TLS_CLIENT_CA",
        value_name = "WA_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Subject common name the client certificate must carry (Meta's is
    /// `client.webhooks.fbclientcerts.com`).
    #[arg(
        long,
        env = "WA_TLS_CLIENT_CN",
        value_name = "WA_TLS_CLIENT_CN",
        requires = "tls_client_ca"
    )]
    pub tls_client_cn: Option<String>,
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        zero if zero.is_zero() => Err("must be longer than 0".to_owned()),
        duration => Ok(duration),
    }
}

impl ReceiverConfig {
    /// Checks what clap cannot check one option at a time.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.body_buffer < self.body_limit {
            anyhow::bail!(
                "WA_BODY_BUFFER ({}) is smaller than WA_BODY_LIMIT ({}): a body of the largest \
                 accepted size could never be read",
                self.body_buffer,
                self.body_limit
            );
        }
        if self.edge.body_max_duration < self.edge.body_timeout {
            anyhow::bail!(
                "WA_BODY_MAX_DURATION ({:?}) is shorter than WA_BODY_TIMEOUT ({:?})",
                self.edge.body_max_duration,
                self.edge.body_timeout
            );
        }
        Ok(())
    }
}
