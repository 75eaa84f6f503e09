//! The broker's command-line and environment options, flattened by every
//! role that talks to RabbitMQ.

use std::time::Duration;

use wa_core::SecretUrl;
use wa_core::config::{SecretUrlParser, parse_duration};

use crate::BrokerConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL.
    #[arg(
        long = "amqp-url",
        value_parser = SecretUrlParser,
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
    pub fn broker_config(&self, connection_name: &str) -> BrokerConfig {
        let mut config = BrokerConfig::new(self.amqp_url.clone(), connection_name);
        config.confirm_timeout = self.confirm_timeout;
        config.publish_channels = usize::from(self.publish_channels);
        config
    }
}
