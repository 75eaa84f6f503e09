use std::time::Duration;

use wa_broker::BrokerArgs;
use wa_core::args::MetricsArgs;
use wa_core::config::parse_duration;
use wa_store::DatabaseArgs;

/// Event shard queues when `WA_EVENT_SHARDS` is not set.
pub const DEFAULT_EVENT_SHARDS: u16 = 4;

#[derive(Debug, Clone, clap::Args)]
pub struct RelayConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs<9091>,
    /// How long an event is held so that an earlier message arriving late
    /// can overtake it.
    #[arg(long, env = "WA_REORDER_WINDOW", value_name = "WA_REORDER_WINDOW", default_value = "3s", value_parser = parse_duration)]
    pub reorder_window: Duration,
    /// Queues `{ns}.events.{i}` that contacts are spread over. Changing it
    /// moves contacts between queues: drain the old ones first.
    #[arg(long, env = "WA_EVENT_SHARDS", value_name = "WA_EVENT_SHARDS", default_value_t = DEFAULT_EVENT_SHARDS, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub event_shards: u16,
    /// Contacts one release locks at most (fewer after a release that filled
    /// its event budget from a few contacts: see `Released::contacts_next`).
    #[arg(long, env = "WA_RELAY_BATCH_CONTACTS", value_name = "WA_RELAY_BATCH_CONTACTS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_contacts: u32,
    /// Events one release reads. A release has a fixed cost (locking,
    /// reading, one commit): 8000 released a backlog at 0.8-1.6x the rate
    /// the worker stored it (near 1.0 once the worker stored 28,000 events/s,
    /// the machine's ceiling for confirmed publishes); 4000 fell to 0.8-1.1x
    /// earlier, 1000 never kept up (`wa-ingest bench`, docs/performance.md).
    #[arg(long, env = "WA_RELAY_BATCH_EVENTS", value_name = "WA_RELAY_BATCH_EVENTS", default_value_t = 8000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_events: u32,
    /// Releases in progress at once, each holding its own contacts (and a
    /// database connection): publishing for some while others read or commit.
    #[arg(long, env = "WA_RELAY_CONCURRENCY", value_name = "WA_RELAY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Pause between releases when nothing is due.
    #[arg(long, env = "WA_RELAY_POLL", value_name = "WA_RELAY_POLL", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long published events stay in the outbox.
    #[arg(long, env = "WA_OUTBOX_RETENTION", value_name = "WA_OUTBOX_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub outbox_retention: Duration,
}

impl RelayConfig {
    /// Each release holds a connection for its whole length, and pruning
    /// needs one more.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            u32::from(self.concurrency) < self.database.db_pool_size,
            "WA_RELAY_CONCURRENCY ({}) must be below WA_DB_POOL_SIZE ({}): each release holds a connection",
            self.concurrency,
            self.database.db_pool_size
        );
        Ok(())
    }
}
