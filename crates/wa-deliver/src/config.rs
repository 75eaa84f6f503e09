use std::time::Duration;

use ipnet::IpNet;
use wa_core::args::MetricsArgs;
use wa_core::config::parse_duration;
use wa_store::DatabaseArgs;

use crate::schedule::RetrySchedule;

/// Networks that endpoints may reach although they are not public (the SSRF
/// guard's allow-list); shared by `deliver` and `endpoints add|update`.
#[derive(Debug, Clone, clap::Args)]
pub struct AllowArgs {
    /// Private networks (CIDRs, comma-separated) that endpoints may reach,
    /// such as 127.0.0.0/8 for tests or 10.0.0.0/8 inside a private
    /// deployment. Default: none, only public addresses.
    #[arg(long = "allow", env = "WA_DELIVER_ALLOW", value_name = "WA_DELIVER_ALLOW", value_delimiter = ',', value_parser = parse_net)]
    pub allow: Vec<IpNet>,
}

impl AllowArgs {
    pub fn guard(&self) -> crate::guard::NetGuard {
        crate::guard::NetGuard::new(self.allow.clone())
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network such as 127.0.0.0/8 or fd00::/8"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeliverConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub allow: AllowArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs<9092>,
    /// Conversations this deliverer sends to at once, over all endpoints
    /// (each endpoint also has its own max_in_flight).
    #[arg(long, env = "WA_DELIVER_CONCURRENCY", value_name = "WA_DELIVER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Time limit to open a connection (TCP and TLS handshake).
    #[arg(long, env = "WA_DELIVER_CONNECT_TIMEOUT", value_name = "WA_DELIVER_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time limit of a whole request, from connecting to the answer's body.
    #[arg(long, env = "WA_DELIVER_TIMEOUT", value_name = "WA_DELIVER_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Bytes of an answer's body read at most; the rest is not read.
    #[arg(long, env = "WA_DELIVER_RESPONSE_LIMIT", value_name = "WA_DELIVER_RESPONSE_LIMIT", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(0..=16_777_216))]
    pub response_limit: u32,
    /// Delays after the 1st, 2nd, ... failure in a row; the last repeats
    /// until the endpoint is disabled. ±20 % jitter.
    #[arg(long, env = "WA_DELIVER_RETRY_SCHEDULE", value_name = "WA_DELIVER_RETRY_SCHEDULE", default_value = crate::schedule::DEFAULT_SCHEDULE)]
    pub retry_schedule: RetrySchedule,
    /// An endpoint that has had no success for this long is disabled (its
    /// deliveries stay pending; `endpoints enable` resumes them).
    #[arg(long, env = "WA_DELIVER_DISABLE_AFTER", value_name = "WA_DELIVER_DISABLE_AFTER", default_value = "120h", value_parser = parse_duration)]
    pub disable_after: Duration,
    /// How long a deliverer holds a conversation; renewed after each
    /// delivery. A deliverer that dies lets its conversations go after it.
    #[arg(long, env = "WA_DELIVER_LEASE", value_name = "WA_DELIVER_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// How long a delivered event is kept (with its attempts) after its
    /// delivery: `endpoints replay` and the attempts reach back this far.
    /// Pending deliveries are kept however old.
    #[arg(long, env = "WA_DELIVER_RETENTION", value_name = "WA_DELIVER_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Pause between looks for due conversations when there was nothing to do.
    #[arg(long, env = "WA_DELIVER_POLL", value_name = "WA_DELIVER_POLL", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

impl DeliverConfig {
    /// Checks that only the combination of options can get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        let longest = self.connect_timeout.max(self.request_timeout);
        anyhow::ensure!(
            self.lease > longest + Duration::from_secs(2),
            "WA_DELIVER_LEASE ({:?}) must exceed WA_DELIVER_TIMEOUT ({:?}) by more than 2 s, \
             or a conversation could be sent by two deliverers at once",
            self.lease,
            longest
        );
        Ok(())
    }
}
