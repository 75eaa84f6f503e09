//! What the receiver knows about each open connection: whether it is inside
//! a request or waiting for one, since when, and whether bytes of the next
//! request head have arrived. The watchdog of each connection turns that into
//! deadlines; the accept loop sheds the connection that has waited longest
//! for a request head when the connection cap is reached.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection ended: the `reason` label of
/// `wa_receiver_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it, or the server did after an answer that ends the
    /// connection (a 4xx with an unread body, `Connection: close`).
    Completed,
    /// No complete request head within WA_HEADER_TIMEOUT.
    HeaderTimeout,
    /// Kept alive, and no next request within WA_KEEPALIVE_TIMEOUT.
    KeepAliveTimeout,
    /// The body missed its deadline (first byte, minimum rate or maximum duration).
    BodyTimeout,
    /// A request took longer than any legitimate one can.
    RequestTimeout,
    /// An answer could not be written for WA_HEADER_TIMEOUT: the client does
    /// not read.
    WriteTimeout,
    /// No TLS handshake within WA_HEADER_TIMEOUT.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (not TLS, no common parameters, a client
    /// certificate that does not chain to WA_TLS_CLIENT_CA, ...).
    TlsHandshakeFailed,
    /// Closed to make room for a new connection at WA_MAX_CONNECTIONS
    /// (waiting for a request head, or sending an unverified body).
    Shed,
    /// Refused at WA_MAX_CONNECTIONS: every connection held a verified request.
    Refused,
    /// Closed by the receiver's shutdown while waiting for a request or
    /// sending an unverified body.
    Shutdown,
    /// An I/O or HTTP protocol error.
    Error,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::KeepAliveTimeout => "keepalive_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::RequestTimeout => "request_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::TlsHandshakeTimeout => "tls_handshake_timeout",
            CloseReason::TlsHandshakeFailed => "tls_handshake_failed",
            CloseReason::Shed => "shed",
            CloseReason::Refused => "refused",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }

    pub(crate) fn count(self) {
        metrics::counter!("wa_receiver_connections_closed_total", "reason" => self.label())
            .increment(1);
    }
}

/// The connection-level deadlines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header: Duration,
    pub keepalive: Duration,
    /// From a complete head to the response handed to hyper: longer than
    /// the body deadline and the broker's confirm together (a backstop).
    pub request: Duration,
}

/// What a connection's watchdog decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The request head is late; `respond` when bytes of it arrived (a 408
    /// tells the client why), silent when nothing did.
    HeaderTimeout {
        respond: bool,
    },
    KeepAliveTimeout,
    RequestTimeout,
    /// A write has made no progress for the header timeout.
    WriteTimeout,
    Shed,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head: the first (`first`), or the next one on a
    /// kept-alive connection. `wait` orders the connections for shedding.
    AwaitingHead {
        since: Instant,
        first: bool,
        wait: u64,
    },
    /// Between a complete head and the end of the response; `reading` while
    /// its body arrives and nobody knows yet whether it is signed (then it
    /// may be shed, after every connection waiting for a head).
    InRequest {
        since: Instant,
        reading: Option<u64>,
    },
    Closed,
}

/// `head_first_byte` values that are not times.
const FIRST_BYTE_ARMED: u64 = u64::MAX;
const FIRST_BYTE_DISARMED: u64 = u64::MAX - 1;

/// One connection's state, shared by its I/O wrapper, its HTTP service and
/// its watchdog.
pub(crate) struct ConnState {
    epoch: Instant,
    registry: Arc<Registry>,
    phase: Mutex<Phase>,
    bytes_read: AtomicU64,
    /// Milliseconds after `epoch` when the first byte of the next request
    /// arrived on a kept-alive connection (or one of the markers above).
    head_first_byte: AtomicU64,
    shed: AtomicBool,
    /// Milliseconds after `epoch` (plus one) since when a write has been
    /// waiting for the client to read; 0 while writes go through.
    write_stalled: AtomicU64,
    close_reason: Mutex<Option<CloseReason>>,
    changed: Notify,
}

impl ConnState {
    /// A connection just accepted: waiting for its first request head.
    pub(crate) fn open(registry: &Arc<Registry>) -> Arc<Self> {
        let now = Instant::now();
        let wait = registry.next_wait();
        let state = Arc::new(Self {
            epoch: now,
            registry: registry.clone(),
            phase: Mutex::new(Phase::AwaitingHead {
                since: now,
                first: true,
                wait,
            }),
            bytes_read: AtomicU64::new(0),
            head_first_byte: AtomicU64::new(FIRST_BYTE_DISARMED),
            shed: AtomicBool::new(false),
            write_stalled: AtomicU64::new(0),
            close_reason: Mutex::new(None),
            changed: Notify::new(),
        });
        registry.waiting().insert(wait, state.clone());
        state
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request head is complete: the body has deadlines of its own, and
    /// the connection is no longer among those waiting for a head.
    pub(crate) fn request_started(&self) {
        let mut phase = self.phase();
        if let Phase::AwaitingHead { wait, .. } = *phase {
            self.registry.waiting().remove(&wait);
        }
        *phase = Phase::InRequest {
            since: Instant::now(),
            reading: None,
        };
        self.head_first_byte
            .store(FIRST_BYTE_DISARMED, Ordering::Relaxed);
        drop(phase);
        self.changed.notify_one();
    }

    /// The body of an unverified request starts to arrive: until
    /// [`ConnState::body_read`], the connection may be shed at the cap.
    pub(crate) fn body_reading(self: &Arc<Self>) {
        let mut phase = self.phase();
        if let Phase::InRequest { reading, .. } = &mut *phase
            && reading.is_none()
        {
            let order = self.registry.next_wait();
            *reading = Some(order);
            self.registry.reading().insert(order, self.clone());
        }
    }

    /// The body is in (or abandoned): the request is no longer sheddable.
    pub(crate) fn body_read(&self) {
        let mut phase = self.phase();
        if let Phase::InRequest { reading, .. } = &mut *phase
            && let Some(order) = reading.take()
        {
            self.registry.reading().remove(&order);
        }
    }

    /// The response is written: the connection waits for its next request.
    pub(crate) fn request_finished(self: &Arc<Self>) {
        let mut phase = self.phase();
        let Phase::InRequest { reading, .. } = *phase else {
            return;
        };
        if let Some(order) = reading {
            self.registry.reading().remove(&order);
        }
        let wait = self.registry.next_wait();
        *phase = Phase::AwaitingHead {
            since: Instant::now(),
            first: false,
            wait,
        };
        self.head_first_byte
            .store(FIRST_BYTE_ARMED, Ordering::Relaxed);
        self.registry.waiting().insert(wait, self.clone());
        drop(phase);
        self.changed.notify_one();
    }

    pub(crate) fn closed(&self) {
        let mut phase = self.phase();
        match *phase {
            Phase::AwaitingHead { wait, .. } => {
                self.registry.waiting().remove(&wait);
            }
            Phase::InRequest {
                reading: Some(order),
                ..
            } => {
                self.registry.reading().remove(&order);
            }
            _ => {}
        }
        *phase = Phase::Closed;
    }

    /// Waiting for a request head, or reading a body not yet verified:
    /// nothing is lost by closing it (Meta retries what it did not get a
    /// 200 for).
    pub(crate) fn sheddable(&self) -> bool {
        matches!(
            *self.phase(),
            Phase::AwaitingHead { .. }
                | Phase::InRequest {
                    reading: Some(_),
                    ..
                }
        )
    }

    /// Asks the watchdog to close the connection if it still waits for a
    /// request head.
    fn shed(&self) {
        self.shed.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Set by a handler that ends the connection for a reason of its own.
    pub(crate) fn set_close_reason(&self, reason: CloseReason) {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_read(&self, bytes: usize) {
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
        if self.head_first_byte.load(Ordering::Relaxed) == FIRST_BYTE_ARMED {
            let now = self.millis_since_epoch();
            let _ = self.head_first_byte.compare_exchange(
                FIRST_BYTE_ARMED,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 2)
    }

    fn note_write(&self, ready: bool) {
        if ready {
            if self.write_stalled.load(Ordering::Relaxed) != 0 {
                self.write_stalled.store(0, Ordering::Relaxed);
            }
        } else if self.write_stalled.load(Ordering::Relaxed) == 0 {
            self.write_stalled
                .store(self.millis_since_epoch() + 1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// What expires next and when: the phase's deadline, or a stalled
    /// write's if that comes first; `None` once closed.
    fn next_expiry(&self, timeouts: &Timeouts) -> Option<(Instant, Expiry)> {
        let phase = self.phase_expiry(timeouts)?;
        match self.write_stalled.load(Ordering::Relaxed) {
            0 => Some(phase),
            since => {
                let stall = self.epoch + Duration::from_millis(since - 1) + timeouts.header;
                Some(if stall < phase.0 && phase.1 != Expiry::Shed {
                    (stall, Expiry::WriteTimeout)
                } else {
                    phase
                })
            }
        }
    }

    fn phase_expiry(&self, timeouts: &Timeouts) -> Option<(Instant, Expiry)> {
        let (since, first) = match *self.phase() {
            Phase::AwaitingHead { since, first, .. } => (since, first),
            Phase::InRequest { since, reading } => {
                if reading.is_some() && self.shed.load(Ordering::SeqCst) {
                    return Some((since, Expiry::Shed));
                }
                // Past its body a request is not shed: a shed that raced
                // with the end of the body is void.
                self.shed.store(false, Ordering::SeqCst);
                return Some((since + timeouts.request, Expiry::RequestTimeout));
            }
            Phase::Closed => return None,
        };
        if self.shed.load(Ordering::SeqCst) {
            return Some((since, Expiry::Shed));
        }
        if first {
            let respond = self.bytes_read.load(Ordering::Relaxed) > 0;
            return Some((since + timeouts.header, Expiry::HeaderTimeout { respond }));
        }
        match self.head_first_byte.load(Ordering::Relaxed) {
            FIRST_BYTE_ARMED | FIRST_BYTE_DISARMED => {
                Some((since + timeouts.keepalive, Expiry::KeepAliveTimeout))
            }
            millis => Some((
                self.epoch + Duration::from_millis(millis) + timeouts.header,
                Expiry::HeaderTimeout { respond: true },
            )),
        }
    }

    /// Resolves when the connection has missed a deadline or was shed.
    pub(crate) async fn expiry(&self, timeouts: &Timeouts) -> Expiry {
        // One timer for the connection's life, moved as the deadline moves
        // (twice a request), rather than a new one each time.
        let deadline = tokio::time::sleep_until(self.epoch);
        tokio::pin!(deadline);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.next_expiry(timeouts) {
                None => changed.await,
                Some((at, expiry)) if at <= Instant::now() => return expiry,
                Some((at, _)) => {
                    if deadline.deadline() != at {
                        deadline.as_mut().reset(at);
                    }
                    tokio::select! {
                        _ = changed => {}
                        _ = &mut deadline => {}
                    }
                }
            }
        }
    }
}

/// The connections that may be shed at the cap, in the order they started
/// to wait for a request head, or to read an unverified body.
#[derive(Default)]
pub(crate) struct Registry {
    next_wait: AtomicU64,
    waiting: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    reading: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn next_wait(&self) -> u64 {
        self.next_wait.fetch_add(1, Ordering::Relaxed)
    }

    fn waiting(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reading(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection that has waited longest for a request head to
    /// close, or if none waits, the one that has been reading an unverified
    /// body the longest (a legitimate body takes milliseconds; Meta retries
    /// what is cut); false when neither exists.
    pub(crate) fn shed_oldest(&self) -> bool {
        let oldest = self.waiting().pop_first();
        let oldest = oldest.or_else(|| self.reading().pop_first());
        match oldest {
            Some((_, connection)) => {
                connection.shed();
                true
            }
            None => false,
        }
    }
}

/// The connection's I/O, counting the bytes read so that the watchdog knows
/// when a request head has started.
pub(crate) struct Metered<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.state.note_read(read);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.note_write(polled.is_ready());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.state.note_write(polled.is_ready());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.note_write(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that tells the connection when the response is over
/// (written or abandoned): the keep-alive wait starts then.
pub(crate) struct EndsRequest {
    inner: Body,
    state: Arc<ConnState>,
}

impl EndsRequest {
    pub(crate) fn wrap(inner: Body, state: Arc<ConnState>) -> Body {
        Body::new(Self { inner, state })
    }
}

impl Drop for EndsRequest {
    fn drop(&mut self) {
        self.state.request_finished();
    }
}

impl http_body::Body for EndsRequest {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}
