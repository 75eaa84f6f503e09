//! The broker's command-line and environment options, flattened by every
//! role that talks to RabbitMQ.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wa_core::SecretUrls;
use wa_core::args::NamespaceArgs;
use wa_core::config::parse_duration;

use crate::tls::AmqpTlsFiles;
use crate::{Broker, BrokerConfig, Topology};

/// What every role that talks to RabbitMQ is given: its namespace and the
/// broker's options.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

impl BrokerArgs {
    /// The namespace's exchanges and queues (default retry tiers and shards).
    pub fn topology(&self) -> Topology {
        Topology::new(self.namespace.namespace.clone())
    }

    /// Starts the broker link for `topology`, named `connection_name` in
    /// RabbitMQ; it runs until `stop`.
    pub fn start(
        &self,
        connection_name: &str,
        topology: Topology,
        stop: CancellationToken,
    ) -> anyhow::Result<Broker> {
        let config = self.amqp.broker_config(connection_name)?;
        Ok(Broker::start(config, topology, stop))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL; for a cluster, one URL per node, comma-separated
    /// (tried in turn; a lost connection moves on to the next node).
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        value_name = "AMQP_URL",
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
    pub fn broker_config(&self, connection_name: &str) -> anyhow::Result<BrokerConfig> {
        let mut config = BrokerConfig::new(self.amqp_url.clone(), connection_name);
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
