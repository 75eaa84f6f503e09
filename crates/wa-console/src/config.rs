use std::net::SocketAddr;
use std::time::Duration;

use wa_broker::BrokerArgs;
use wa_core::SecretString;
use wa_core::config::parse_duration;
use wa_store::DatabaseArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Operator address of the console (never the public webhook listener).
    #[arg(
        long,
        env = "CONSOLE_ADDR",
        value_name = "CONSOLE_ADDR",
        default_value = "127.0.0.1:9300"
    )]
    pub console_addr: SocketAddr,
    /// Access tokens, comma-separated; `name:token` names the operator in
    /// the audit log. Each token at least 24 characters.
    #[arg(
        long = "console-token",
        env = "WA_CONSOLE_TOKEN",
        value_name = "WA_CONSOLE_TOKEN",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub tokens: Vec<SecretString>,
    /// Prometheus endpoints of the roles (`http://worker:9090/metrics`),
    /// comma-separated; a host name with several addresses is scraped at each.
    #[arg(
        long = "console-scrape",
        env = "WA_CONSOLE_SCRAPE",
        value_name = "WA_CONSOLE_SCRAPE",
        value_delimiter = ','
    )]
    pub scrape: Vec<url::Url>,
    /// How often the overview refreshes itself and the metrics are scraped.
    #[arg(long, env = "WA_CONSOLE_REFRESH", value_name = "WA_CONSOLE_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub refresh: Duration,
    /// How long a login lasts.
    #[arg(long, env = "WA_CONSOLE_SESSION_TTL", value_name = "WA_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (when the console is reached over HTTPS).
    #[arg(long, env = "WA_CONSOLE_SECURE_COOKIE", value_name = "WA_CONSOLE_SECURE_COOKIE", default_value_t = false, action = clap::ArgAction::Set)]
    pub secure_cookie: bool,
    /// Delays of the retry tiers (as the workers have them), for their queue depths.
    #[arg(long, env = "WA_RETRY_TIERS", value_name = "WA_RETRY_TIERS", value_delimiter = ',', default_value = "5s,30s,2m,10m,1h", value_parser = parse_duration)]
    pub retry_tiers: Vec<Duration>,
    /// Event shard queues (as the relays have them), for their depths.
    #[arg(long, env = "WA_EVENT_SHARDS", value_name = "WA_EVENT_SHARDS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub event_shards: u16,
    /// At most this many DLQ messages are read per look at the DLQ.
    #[arg(
        long,
        env = "WA_DLQ_SCAN_LIMIT",
        value_name = "WA_DLQ_SCAN_LIMIT",
        default_value_t = 10_000
    )]
    pub scan_limit: usize,
}

/// Tokens shorter than this are refused at start: the token is the only
/// thing between the network and the DLQ's personal data.
pub const MIN_TOKEN_LEN: usize = 24;

/// One configured token and the operator it names.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub token: SecretString,
}

impl ConsoleConfig {
    /// The operators, or an error naming the variable.
    pub fn operators(&self) -> Result<Vec<Operator>, String> {
        let mut operators = Vec::new();
        for (index, entry) in self.tokens.iter().enumerate() {
            let entry = entry.expose().trim();
            let (name, token) = match entry.split_once(':') {
                Some((name, token)) if !name.is_empty() => (name.to_owned(), token),
                _ => (format!("operator{}", index + 1), entry),
            };
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(format!(
                    "WA_CONSOLE_TOKEN: the token of {name} is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(format!(
                    "WA_CONSOLE_TOKEN: operator name {name:?} may hold only letters, digits and -_.@"
                ));
            }
            operators.push(Operator {
                name,
                token: SecretString::new(token),
            });
        }
        if operators.is_empty() {
            return Err("WA_CONSOLE_TOKEN is required".into());
        }
        Ok(operators)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.operators()?;
        if self.refresh < Duration::from_secs(1) {
            return Err("WA_CONSOLE_REFRESH must be at least 1s".into());
        }
        if self.retry_tiers.is_empty() {
            return Err("WA_RETRY_TIERS needs at least one delay".into());
        }
        for url in &self.scrape {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!("WA_CONSOLE_SCRAPE: {url} is not an http(s) URL"));
            }
        }
        Ok(())
    }
}
