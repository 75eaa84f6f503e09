use std::net::SocketAddr;

use wa_core::SecretString;
use wa_core::args::{AmqpArgs, AppSecretArgs, NamespaceArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverConfig {
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
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
    /// Requests handled at once; more are answered 503 so that Meta retries.
    #[arg(long, env = "WA_MAX_IN_FLIGHT", value_name = "WA_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Bytes of request bodies held in memory at once (by Content-Length, or
    /// the body limit when none is given); past it, 503. Bounds the
    /// receiver's memory whatever clients send.
    #[arg(long, env = "WA_BODY_BUFFER", value_name = "WA_BODY_BUFFER", default_value_t = 24 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub body_buffer: u64,
}
