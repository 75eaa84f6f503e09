//! The public listener: its own accept loop (a connection cap that sheds
//! the longest-waiting idle connection first, accept errors that back off,
//! a drain on shutdown), optional TLS with a handshake deadline, and hyper's
//! HTTP/1.1 under a watchdog that enforces the header and keep-alive
//! deadlines (the body deadline is enforced where the body is read).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{CloseReason, ConnState, EndsRequest, Expiry, Metered, Registry, Timeouts};
use crate::tls::{self, ClientIdentity};

/// Largest request head (request line and headers) hyper buffers; it is
/// also hyper's read buffer, so it bounds what one connection holds outside
/// the body budget. Meta's heads are well under 2 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long the 408 of a late head may take to write.
const LATE_HEAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The request extension that tells a handler about its connection.
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub state: Arc<ConnState>,
    pub identity: ClientIdentity,
}

pub(crate) struct Listener {
    pub app: Router,
    pub tls: Option<TlsAcceptor>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
}

/// Serves `listener` until `shutdown`, then stops accepting, closes the
/// connections that wait for a request or still read an unverified body,
/// and lets verified requests finish.
pub(crate) async fn serve(listener: TcpListener, config: Listener, shutdown: CancellationToken) {
    let shared = Arc::new(Shared::new(config));
    let connections = TaskTracker::new();
    let mut accept_backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_backoff.reset();
                accepted
            }
            Err(error) => {
                // Out of file descriptors and the like: the next accept
                // would fail too, and a busy loop helps no one.
                let pause = accept_backoff.next();
                tracing::warn!(%error, ?pause, "accept failed");
                metrics::counter!("wa_receiver_accept_errors_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = shared.slot() => slot,
        };
        let Some(slot) = slot else {
            tracing::warn!(%peer, "connection refused: every connection is inside a request");
            CloseReason::Refused.count();
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            slot,
            shared.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

struct Shared {
    app: Router,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    http: http1::Builder,
    slots: Arc<Semaphore>,
    registry: Arc<Registry>,
}

impl Shared {
    fn new(config: Listener) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            // The watchdog enforces the header and keep-alive deadlines and
            // answers 408. hyper's own header timer would only duplicate it,
            // at the cost of a boxed timer per request.
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        Self {
            app: config.app,
            tls: config.tls,
            timeouts: config.timeouts,
            http,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            registry: Arc::new(Registry::default()),
        }
    }

    /// A connection slot: a free one, or the one of the connection that has
    /// waited longest for a request head, else of the one that has been
    /// reading an unverified body longest (shed for this one). When every
    /// connection is past its body, waits up to the header timeout for one
    /// to finish; `None` after that.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let give_up = Instant::now() + self.timeouts.header;
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return Some(slot);
            }
            // A shed connection frees its slot within moments; otherwise
            // look again soon for a connection that became idle.
            let wait = if self.registry.shed_oldest() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            };
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            let wait = wait.min(give_up - now);
            if let Ok(Ok(slot)) =
                tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await
            {
                return Some(slot);
            }
        }
    }
}

/// Doubles from 10 ms to 1 s while accepting keeps failing.
#[derive(Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next(&mut self) -> Duration {
        let pause = Duration::from_millis(10) * 2u32.pow(self.failures.min(7));
        self.failures = self.failures.saturating_add(1);
        pause.min(Duration::from_secs(1))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One connection from accept to close, holding its slot throughout.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    metrics::gauge!("wa_receiver_connections_open").increment(1.0);
    // Responses are written whole; nothing gains from Nagle's delay.
    let _ = stream.set_nodelay(true);
    let state = ConnState::open(&shared.registry);
    let reason = match &shared.tls {
        None => {
            serve_http(
                stream,
                ClientIdentity::Anonymous,
                &state,
                &shared,
                &shutdown,
            )
            .await
        }
        Some(acceptor) => {
            let handshake = tokio::select! {
                handshake = acceptor.accept(stream) => Ok(handshake),
                expiry = state.expiry(&shared.timeouts) => Err(match expiry {
                    Expiry::Shed => CloseReason::Shed,
                    Expiry::HeaderTimeout { .. }
                    | Expiry::KeepAliveTimeout
                    | Expiry::RequestTimeout
                    | Expiry::WriteTimeout => CloseReason::TlsHandshakeTimeout,
                }),
                _ = shutdown.cancelled() => Err(CloseReason::Shutdown),
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let identity = tls::client_identity(stream.get_ref().1);
                    serve_http(stream, identity, &state, &shared, &shutdown).await
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    CloseReason::TlsHandshakeFailed
                }
                Err(reason) => reason,
            }
        }
    };
    state.closed();
    tracing::debug!(%peer, reason = reason.label(), "connection closed");
    reason.count();
    metrics::gauge!("wa_receiver_connections_open").decrement(1.0);
}

/// What ended the HTTP exchange loop.
enum Stop {
    Finished(Result<(), hyper::Error>),
    Expired(Expiry),
    Shutdown,
}

async fn serve_http<S>(
    io: S,
    identity: ClientIdentity,
    state: &Arc<ConnState>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let context = ConnContext {
        state: state.clone(),
        identity,
    };
    let app = shared.app.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        context.state.request_started();
        request.extensions_mut().insert(context.clone());
        let mut app = app.clone();
        let state = context.state.clone();
        async move {
            let response = tower::Service::call(&mut app, request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| EndsRequest::wrap(body, state)))
        }
    });
    let mut conn = shared
        .http
        .serve_connection(TokioIo::new(Metered::new(io, state.clone())), service);
    let mut draining = false;
    let stop = loop {
        tokio::select! {
            finished = &mut conn => break Stop::Finished(finished),
            expiry = state.expiry(&shared.timeouts) => break Stop::Expired(expiry),
            _ = shutdown.cancelled(), if !draining => {
                if state.sheddable() {
                    break Stop::Shutdown;
                }
                // A verified request: finish it, then close.
                draining = true;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match stop {
        Stop::Finished(Ok(())) => state.close_reason().unwrap_or(CloseReason::Completed),
        Stop::Finished(Err(error)) if error.is_timeout() => CloseReason::HeaderTimeout,
        Stop::Finished(Err(error)) => {
            tracing::debug!(%error, "connection ended with an error");
            state.close_reason().unwrap_or(CloseReason::Error)
        }
        Stop::Expired(Expiry::HeaderTimeout { respond }) => {
            if respond {
                let mut io = conn.into_parts().io.into_inner().into_inner();
                let answer = async {
                    io.write_all(
                        b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                    )
                    .await?;
                    io.shutdown().await
                };
                let _ = tokio::time::timeout(LATE_HEAD_ANSWER_TIMEOUT, answer).await;
            }
            CloseReason::HeaderTimeout
        }
        Stop::Expired(Expiry::KeepAliveTimeout) => CloseReason::KeepAliveTimeout,
        Stop::Expired(Expiry::RequestTimeout) => CloseReason::RequestTimeout,
        Stop::Expired(Expiry::WriteTimeout) => CloseReason::WriteTimeout,
        Stop::Expired(Expiry::Shed) => CloseReason::Shed,
        Stop::Shutdown => CloseReason::Shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cap_of_connections_past_their_bodies_refuses_after_the_header_timeout() {
        let shared = Shared::new(Listener {
            app: Router::new(),
            tls: None,
            timeouts: Timeouts {
                header: Duration::from_millis(200),
                keepalive: Duration::from_secs(1),
                request: Duration::from_secs(1),
            },
            max_connections: 1,
        });
        // A connection past its body holds the only slot and is not sheddable.
        let busy = shared.slot().await.expect("the first slot");
        assert!(shared.slot().await.is_none(), "refused at the cap");
        drop(busy);
        assert!(shared.slot().await.is_some(), "a slot once it is free");
    }
}
