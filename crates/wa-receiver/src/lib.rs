//! The receiver: the thin HTTP edge that Meta calls. It checks the signature
//! and that the body is JSON, publishes the raw bytes with a confirm, and
//! answers 200 only once the broker holds the message. All parsing happens in
//! the workers.

mod config;
mod signature;
mod webhook;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_core::broker::{Broker, Topology};

pub use config::ReceiverConfig;
pub use signature::{SIGNATURE_HEADER, SignatureError, SignatureVerifier, sign};

/// Serves until `shutdown` fires, then stops accepting, lets the requests in
/// flight finish, and closes the broker connection.
pub async fn run(
    listener: TcpListener,
    config: ReceiverConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The broker outlives the HTTP server: requests in flight still need
    // their confirms after shutdown starts.
    let broker_stop = CancellationToken::new();
    let topology = Topology::new(config.namespace.namespace.clone());
    let broker = Broker::start(
        config.amqp.broker_config("wa-ingest receiver"),
        topology,
        broker_stop.clone(),
    );
    let app = webhook::router(Arc::new(webhook::AppState::new(&config, broker)));
    tracing::info!(addr = %listener.local_addr()?, "receiver listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    broker_stop.cancel();
    served?;
    tracing::info!("receiver stopped");
    Ok(())
}
