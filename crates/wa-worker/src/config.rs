use std::path::PathBuf;
use std::time::Duration;

use wa_broker::BrokerArgs;
use wa_core::SecretUrls;
use wa_core::args::MetricsArgs;
use wa_core::config::parse_duration;
use wa_store::DatabaseArgs;

use crate::claim::FailMode;

/// The retry tiers when `WA_RETRY_TIERS` is not set.
const DEFAULT_RETRY_TIERS: &str = "5s,30s,2m,10m,1h";

/// [`DEFAULT_RETRY_TIERS`] as durations (the queues a default worker declares).
pub fn default_retry_tiers() -> Vec<Duration> {
    DEFAULT_RETRY_TIERS
        .split(',')
        .map(|tier| parse_duration(tier).expect("the default tiers parse"))
        .collect()
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs<9090>,
    /// Unacked deliveries the broker may push to this worker.
    #[arg(long, env = "WA_PREFETCH", value_name = "WA_PREFETCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Deliveries handled together (one claim round trip, one transaction).
    #[arg(long, env = "WA_BATCH_SIZE", value_name = "WA_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// How long a partial batch waits for more deliveries.
    #[arg(long, env = "WA_BATCH_LINGER", value_name = "WA_BATCH_LINGER", default_value = "5ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Batches handled at once.
    #[arg(long, env = "WA_CONCURRENCY", value_name = "WA_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// How long a claim protects an event while it is being stored.
    #[arg(long, env = "WA_CLAIM_LEASE", value_name = "WA_CLAIM_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub claim_lease: Duration,
    /// How long a stored event's `done` marker is kept (at least 24 h).
    #[arg(long, env = "WA_CLAIM_DONE_TTL", value_name = "WA_CLAIM_DONE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub claim_done_ttl: Duration,
    /// What to do when Redis is unreachable.
    #[arg(
        long,
        env = "WA_CLAIM_FAIL_MODE",
        value_name = "WA_CLAIM_FAIL_MODE",
        value_enum,
        default_value = "open"
    )]
    pub claim_fail_mode: FailMode,
    /// Delays of the retry tiers, in order; after the last comes the DLQ.
    #[arg(long, env = "WA_RETRY_TIERS", value_name = "WA_RETRY_TIERS", value_delimiter = ',', default_value = DEFAULT_RETRY_TIERS, value_parser = parse_duration)]
    pub retry_tiers: Vec<Duration>,
    /// Quick in-process retries of a transient store error before a tier.
    #[arg(long, env = "WA_QUICK_RETRIES", value_name = "WA_QUICK_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=10))]
    pub quick_retries: u8,
    /// The breaker: this many distinct deliveries failing alone with the same
    /// non-payload error within WA_BREAKER_WINDOW pause the worker as an
    /// outage would.
    #[arg(long, env = "WA_BREAKER_THRESHOLD", value_name = "WA_BREAKER_THRESHOLD", default_value_t = 10, value_parser = clap::value_parser!(u16).range(2..))]
    pub breaker_threshold: u16,
    /// The window the breaker counts failures in.
    #[arg(long, env = "WA_BREAKER_WINDOW", value_name = "WA_BREAKER_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub breaker_window: Duration,
    /// How long a paused worker holds its deliveries before handing them
    /// back to the queue (republished, so no delivery is counted against
    /// x-delivery-limit). Keep it under half the broker's consumer_timeout.
    #[arg(long, env = "WA_PAUSE_HOLD_LIMIT", value_name = "WA_PAUSE_HOLD_LIMIT", default_value = "10m", value_parser = parse_duration)]
    pub pause_hold_limit: Duration,
    /// How long shutdown waits for batches in flight.
    #[arg(long, env = "WA_SHUTDOWN_GRACE", value_name = "WA_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Name of this worker in DLQ entries and the broker's consumer list.
    #[arg(long, env = "WA_WORKER_ID", value_name = "WA_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl WorkerConfig {
    /// Checks what clap cannot: relations between options.
    pub fn validate(&self) -> Result<(), String> {
        if self.claim_done_ttl < Duration::from_secs(24 * 3600) {
            return Err("WA_CLAIM_DONE_TTL must be at least 24h".into());
        }
        if self.claim_lease < Duration::from_secs(1) {
            return Err("WA_CLAIM_LEASE must be at least 1s".into());
        }
        if self.retry_tiers.is_empty() || self.retry_tiers.iter().any(Duration::is_zero) {
            return Err("WA_RETRY_TIERS needs at least one non-zero delay".into());
        }
        if self.breaker_window.is_zero() {
            return Err("WA_BREAKER_WINDOW must be longer than 0s".into());
        }
        if self.pause_hold_limit < Duration::from_millis(100) {
            return Err("WA_PAUSE_HOLD_LIMIT must be at least 100ms".into());
        }
        if usize::from(self.batch_size) > usize::from(self.prefetch) {
            return Err("WA_BATCH_SIZE must not exceed WA_PREFETCH".into());
        }
        Ok(())
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Where the claims live (`REDIS_URL`) and how long a command may take.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`rediss://` for TLS); with WA_REDIS_CLUSTER, the seed
    /// nodes of the cluster, comma-separated.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
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
