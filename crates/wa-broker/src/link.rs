//! The RabbitMQ link of a role: one connection kept alive by a supervisor
//! that reconnects with backoff and re-declares the topology, a small set of
//! confirm-mode channels for publishing, and consumers opened on request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use wa_core::backoff::full_jitter;
use wa_core::telemetry::error_chain;
use wa_core::{SecretUrl, SecretUrls};

use crate::Topology;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The nodes of the cluster (or the one broker), tried in turn.
    pub nodes: SecretUrls,
    /// CA and client certificate for `amqps://` nodes.
    pub tls: OwnedTLSConfig,
    /// Channels in confirm mode that publishes are spread over.
    pub publish_channels: usize,
    /// How long a publish may wait for the broker's confirm.
    pub confirm_timeout: Duration,
    /// How long one connection attempt (TCP, handshake, topology) may take.
    pub connect_timeout: Duration,
    /// Shown in the management UI.
    pub connection_name: String,
}

impl BrokerConfig {
    pub fn new(nodes: impl Into<SecretUrls>, connection_name: impl Into<String>) -> Self {
        Self {
            nodes: nodes.into(),
            tls: OwnedTLSConfig::default(),
            publish_channels: 4,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connection_name: connection_name.into(),
        }
    }
}

/// A handle on the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    topology: Topology,
    session: watch::Sender<Option<Arc<Session>>>,
    /// Why the last attempt to connect failed, until one succeeds.
    last_failure: Mutex<Option<String>>,
}

/// One live connection. When it breaks, the supervisor drops it and builds a
/// new one; holders of the old one see their operations fail.
pub struct Session {
    connection: Connection,
    pub(crate) publishers: Vec<Channel>,
    next_publisher: AtomicUsize,
    broken: CancellationToken,
}

impl Session {
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Resolves when this connection is gone.
    pub async fn broken(&self) {
        self.broken.cancelled().await;
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_cancelled()
    }

    /// Tells the supervisor to replace this connection.
    pub fn mark_broken(&self) {
        self.broken.cancel();
    }

    /// Round robin over the publisher channels.
    pub(crate) fn next_publisher(&self) -> usize {
        self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len()
    }
}

impl Broker {
    /// Starts the supervisor. It connects in the background, so a role can
    /// start (and answer `/readyz` with 503) before the broker is up.
    pub fn start(config: BrokerConfig, topology: Topology, shutdown: CancellationToken) -> Self {
        let (session, _) = watch::channel(None);
        let broker = Self {
            inner: Arc::new(Inner {
                config,
                topology,
                session,
                last_failure: Mutex::new(None),
            }),
        };
        tokio::spawn(broker.clone().supervise(shutdown));
        broker
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// For `/readyz`: `Err` with the reason while there is no connection.
    pub fn check_connected(&self) -> Result<(), String> {
        if self.is_connected() {
            Ok(())
        } else {
            Err("not connected to RabbitMQ".to_owned())
        }
    }

    /// For command-line tools: a live session within `limit`, or an error
    /// that names the (redacted) URL and why the last attempt failed.
    pub async fn connected_within(
        &self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Arc<Session>> {
        tokio::time::timeout(limit, self.connected(cancel))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                let nodes = &self.inner.config.nodes;
                match self.last_failure() {
                    Some(reason) => anyhow::anyhow!(
                        "cannot connect to RabbitMQ at AMQP_URL {nodes}; the last attempt, to {reason}"
                    ),
                    None => anyhow::anyhow!("cannot connect to RabbitMQ at AMQP_URL {nodes}"),
                }
            })
    }

    fn last_failure(&self) -> Option<String> {
        self.inner
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_last_failure(&self, reason: Option<String>) {
        *self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// The live session, if there is one now.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .borrow()
            .as_ref()
            .filter(|s| !s.is_broken())
            .cloned()
    }

    /// Waits for a live session; `None` once `cancel` fires.
    pub async fn connected(&self, cancel: &CancellationToken) -> Option<Arc<Session>> {
        let mut changes = self.inner.session.subscribe();
        loop {
            if let Some(session) = self.current() {
                return Some(session);
            }
            tokio::select! {
                changed = changes.changed() => changed.ok()?,
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Keeps one connection up. A node that cannot be reached, or whose
    /// connection was lost, hands over to the next node of `AMQP_URL`; the
    /// backoff grows only once every node has failed in a row.
    async fn supervise(self, shutdown: CancellationToken) {
        let nodes = self.inner.config.nodes.urls();
        let mut node = 0;
        let mut failed_in_a_row = 0;
        let mut delays = reconnect_backoff();
        loop {
            let url = &nodes[node % nodes.len()];
            let attempt = tokio::time::timeout(self.inner.config.connect_timeout, self.open(url));
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = shutdown.cancelled() => break,
            };
            match outcome {
                Ok(Ok(session)) => {
                    delays = reconnect_backoff();
                    failed_in_a_row = 0;
                    self.set_last_failure(None);
                    tracing::info!(
                        connection = %self.inner.config.connection_name,
                        node = %url,
                        "connected to RabbitMQ"
                    );
                    let session = Arc::new(session);
                    self.inner.session.send_replace(Some(session.clone()));
                    tokio::select! {
                        () = session.broken() => {}
                        () = shutdown.cancelled() => {
                            self.inner.session.send_replace(None);
                            // Broken first, so the watcher does not report our own close.
                            session.mark_broken();
                            let _ = session.connection.close(200, "shutdown".into()).await;
                            break;
                        }
                    }
                    self.inner.session.send_replace(None);
                    tracing::warn!(node = %url, "lost the RabbitMQ connection; reconnecting");
                    let _ = session.connection.close(320, "reconnecting".into()).await;
                    // The lost node is likely down: start with the next one.
                    node += 1;
                    continue;
                }
                Ok(Err(error)) => {
                    let reason = connect_failure(url, &error);
                    tracing::warn!(node = %url, error = %reason, "cannot connect to RabbitMQ");
                    self.set_last_failure(Some(format!("{url}: {reason}")));
                }
                Err(_) => {
                    tracing::warn!(node = %url, "connecting to RabbitMQ timed out");
                    let limit = self.inner.config.connect_timeout;
                    self.set_last_failure(Some(format!("{url}: timed out after {limit:?}")));
                }
            }
            node += 1;
            failed_in_a_row += 1;
            if failed_in_a_row % nodes.len() != 0 {
                // Other nodes are still untried in this round: no wait.
                continue;
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.inner.session.send_replace(None);
    }

    async fn open(&self, url: &SecretUrl) -> lapin::Result<Session> {
        let config = &self.inner.config;
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.as_str().into());
        let connection = DefaultConnectionBuilder::new()?
            .with_uri_str(with_heartbeat(url))
            .with_properties(properties)
            .with_tls_config(config.tls.clone())
            .connect()
            .await?;
        let broken = CancellationToken::new();
        watch_connection(&connection, broken.clone());

        let setup = connection.create_channel().await?;
        self.inner.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;

        let mut publishers = Vec::with_capacity(config.publish_channels.max(1));
        for _ in 0..config.publish_channels.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            publishers.push(channel);
        }
        Ok(Session {
            connection,
            publishers,
            next_publisher: AtomicUsize::new(0),
            broken,
        })
    }
}

/// Why connecting to `url` failed; for TLS, with the setting that most
/// likely needs a look (a TLS alert alone does not say what to change).
fn connect_failure(url: &SecretUrl, error: &lapin::Error) -> String {
    let chain = error_chain(error);
    if url.url().scheme() != "amqps" {
        return chain;
    }
    let hint = if chain.contains("UnknownIssuer") {
        "the broker's certificate does not chain to WA_AMQP_CA_FILE, or to the system's roots when that is unset"
    } else if chain.contains("NotValidForName") {
        "the broker's certificate is not for the host named in AMQP_URL"
    } else if chain.contains("CertificateRequired") || chain.contains("HandshakeFailure") {
        "the broker refused the TLS handshake: does it want a client certificate (WA_AMQP_CLIENT_CERT, WA_AMQP_CLIENT_KEY) from a CA it trusts?"
    } else if chain.contains("Connection reset by peer") {
        // Under TLS 1.3 a broker that wants a client certificate refuses it
        // after the client's side of the handshake is done: the client may
        // meet the reset that follows the alert before the alert itself.
        "the broker dropped the connection at the TLS handshake: does it want a client certificate (WA_AMQP_CLIENT_CERT, WA_AMQP_CLIENT_KEY) from a CA it trusts?"
    } else {
        return chain;
    };
    format!("{chain} ({hint})")
}

/// Marks the session broken on the first connection error, and polls the
/// status too: a dead peer shows up as missed heartbeats, not always as an event.
fn watch_connection(connection: &Connection, broken: CancellationToken) {
    let mut events = connection.events_listener();
    let status = connection.status().clone();
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(error)) => {
                        tracing::warn!(error = %error_chain(&error), "RabbitMQ connection error");
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = poll.tick() => {
                    if !status.connected() && !status.connecting() {
                        break;
                    }
                }
                () = broken.cancelled() => return,
            }
        }
        broken.cancel();
    });
}

/// Heartbeats every 10 s unless the URL sets its own: without them a broker
/// that vanished without closing the socket goes unnoticed for minutes.
fn with_heartbeat(url: &SecretUrl) -> String {
    let mut url = url.url().clone();
    if !url.query_pairs().any(|(key, _)| key == "heartbeat") {
        url.query_pairs_mut().append_pair("heartbeat", "10");
    }
    url.to_string()
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    full_jitter(Duration::from_millis(100), Duration::from_secs(5), None)
}

#[cfg(test)]
mod tests {
    use super::connect_failure;

    fn failure(url: &str, cause: &str) -> String {
        let error = lapin::Error::from(std::io::Error::other(cause.to_owned()));
        connect_failure(&url.parse().expect("a URL"), &error)
    }

    #[test]
    fn a_tls_failure_names_the_setting_to_look_at() {
        let tls = "amqps://u:p@rabbit:5671/%2f";
        let unknown = failure(tls, "invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("UnknownIssuer ("), "{unknown}");
        assert!(unknown.contains("WA_AMQP_CA_FILE"), "{unknown}");
        let name = failure(tls, "invalid peer certificate: NotValidForName");
        assert!(name.contains("the host named in AMQP_URL"), "{name}");
        assert!(!name.contains("WA_AMQP_CA_FILE"), "{name}");
        let client = failure(tls, "received fatal alert: CertificateRequired");
        assert!(client.contains("WA_AMQP_CLIENT_CERT"), "{client}");
        let reset = failure(tls, "Connection reset by peer (os error 104)");
        assert!(reset.contains("WA_AMQP_CLIENT_CERT"), "{reset}");
        let expired = failure(tls, "invalid peer certificate: Expired");
        assert!(
            !expired.contains('('),
            "no guess beyond the cause: {expired}"
        );
    }

    #[test]
    fn a_plain_failure_is_its_cause_alone() {
        let plain = failure("amqp://u:p@rabbit:5672/%2f", "UnknownIssuer");
        assert!(!plain.contains("WA_AMQP"), "{plain}");
    }
}
