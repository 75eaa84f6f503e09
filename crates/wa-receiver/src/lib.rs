//! The receiver: the thin HTTP edge that Meta calls. It checks the signature
//! and that the body is JSON, publishes the raw bytes with a confirm, and
//! answers 200 only once the broker holds the message. All parsing happens in
//! the workers.
//!
//! It faces the public internet: every connection runs under deadlines
//! (request head, body rate, keep-alive), connections are capped, body
//! memory is taken as bytes arrive from a shared budget, and nothing is
//! parsed or published before the HMAC of the whole body holds.

mod body;
mod config;
mod connection;
mod server;
mod signature;
mod tls;
mod webhook;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{EdgeArgs, ReceiverConfig, TlsArgs};
pub use connection::CloseReason;
pub use signature::{
    BodySignature, SIGNATURE_HEADER, SignatureError, SignatureVerifier, parse_signature_header,
    sign,
};

/// Serves until `shutdown` fires, then stops accepting, lets the requests in
/// flight finish, and closes the broker connection.
pub async fn run(
    listener: TcpListener,
    config: ReceiverConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_ops(listener, None, config, shutdown).await
}

/// [`run`], with `ops_listener` (WA_OPS_ADDR) serving `/healthz`, `/readyz`
/// and `/metrics` over plain HTTP beside the public listener.
pub async fn run_with_ops(
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    config: ReceiverConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let tls = tls::load(&config.tls)?;
    // The broker outlives the HTTP server: requests in flight still need
    // their confirms after shutdown starts.
    let broker_stop = CancellationToken::new();
    let broker = config.broker.start(
        "wa-ingest receiver",
        config.broker.topology(),
        broker_stop.clone(),
    )?;
    let (acceptor, client_auth) = match tls {
        Some((acceptor, client_auth)) => (Some(acceptor), client_auth),
        None => (None, None),
    };
    let app = webhook::router(Arc::new(webhook::AppState::new(
        &config,
        broker.clone(),
        client_auth,
    )));
    let ops = ops_listener.map(|ops_listener| {
        let readiness = broker.clone();
        tokio::spawn(wa_core::ops::serve(
            ops_listener,
            Arc::new(move || readiness.check_connected()),
            shutdown.clone(),
        ))
    });
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = acceptor.is_some(),
        "receiver listening"
    );
    let edge = &config.edge;
    server::serve(
        listener,
        server::Listener {
            app,
            tls: acceptor,
            timeouts: connection::Timeouts {
                header: edge.header_timeout,
                keepalive: edge.keepalive_timeout,
                request: edge.body_max_duration
                    + config.broker.amqp.confirm_timeout
                    + edge.header_timeout,
            },
            max_connections: edge.max_connections as usize,
        },
        shutdown,
    )
    .await;
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    broker_stop.cancel();
    tracing::info!("receiver stopped");
    Ok(())
}
