//! Command-line and environment options shared by several roles. Each role
//! flattens the groups it needs, so every option has one name everywhere.
//! The options of one dependency live beside the code that uses them
//! (`AmqpArgs` and `BrokerArgs` in wa-broker, `DatabaseArgs` in wa-store,
//! `RedisArgs` in wa-worker).

use crate::Namespace;

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
