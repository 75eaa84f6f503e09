//! The worker's way to Redis: one server (a `ConnectionManager` that
//! reconnects in the background) or a Redis Cluster (the async cluster
//! client, which follows MOVED/ASK and failovers), over TLS when the URL
//! says `rediss://`. Certificates are verified: against `WA_REDIS_CA_FILE`
//! when it is set, else against the system's roots.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    Client, ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    TlsCertificates, Value,
};
use wa_core::SecretUrls;
use wa_core::config::{read_client_pem_pair, read_pem_file};

use crate::RedisArgs;

/// Everything needed to reach Redis, checked at start.
#[derive(Clone)]
pub struct RedisTarget {
    urls: SecretUrls,
    cluster: bool,
    certificates: Option<TlsCertificates>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl RedisTarget {
    /// Reads the TLS files; an error names the variable at fault.
    pub fn from_args(args: &RedisArgs) -> anyhow::Result<Self> {
        if !args.redis_cluster && args.redis_url.urls().len() > 1 {
            anyhow::bail!(
                "REDIS_URL lists {} URLs: several are only for a Redis Cluster (WA_REDIS_CLUSTER=true)",
                args.redis_url.urls().len()
            );
        }
        for url in args.redis_url.urls() {
            if !matches!(url.url().scheme(), "redis" | "rediss") {
                anyhow::bail!("REDIS_URL {url}: the scheme must be redis:// or rediss://");
            }
        }
        let root_cert = args
            .redis_ca_file
            .as_deref()
            .map(|path| read_text("WA_REDIS_CA_FILE", path).map(String::into_bytes))
            .transpose()?;
        let client_tls = read_client_pem_pair(
            ("WA_REDIS_CLIENT_CERT", args.redis_client_cert.as_deref()),
            ("WA_REDIS_CLIENT_KEY", args.redis_client_key.as_deref()),
        )
        .map_err(anyhow::Error::msg)?
        .map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.into_bytes(),
            client_key: key.into_bytes(),
        });
        let tls_files = root_cert.is_some() || client_tls.is_some();
        let all_tls = args
            .redis_url
            .urls()
            .iter()
            .all(|url| url.url().scheme() == "rediss");
        if tls_files && !all_tls {
            anyhow::bail!(
                "WA_REDIS_CA_FILE or WA_REDIS_CLIENT_CERT is set but REDIS_URL is not rediss://"
            );
        }
        Ok(Self {
            urls: args.redis_url.clone(),
            cluster: args.redis_cluster,
            certificates: tls_files.then_some(TlsCertificates {
                client_tls,
                root_cert,
            }),
            ca_file: args.redis_ca_file.clone(),
            timeout: args.redis_timeout,
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Connects (the cluster client reads the slot map from a seed now).
    /// A failure says which variable to look at.
    pub async fn connect(&self) -> Result<RedisLink, RedisError> {
        let connected = if self.cluster {
            self.connect_cluster().await
        } else {
            self.connect_single().await
        };
        connected.map_err(|error| self.explain(error))
    }

    async fn connect_single(&self) -> Result<RedisLink, RedisError> {
        let info = self
            .urls
            .first()
            .expose()
            .into_connection_info()?
            .set_tcp_settings(tcp_settings());
        let client = match &self.certificates {
            Some(certificates) => Client::build_with_tls(info, certificates.clone())?,
            None => Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let manager = client.get_connection_manager_with_config(config).await?;
        Ok(RedisLink::Single(manager))
    }

    async fn connect_cluster(&self) -> Result<RedisLink, RedisError> {
        let seeds: Vec<&str> = self.urls.urls().iter().map(|url| url.expose()).collect();
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            // A failover takes the cluster a few seconds; beyond a couple of
            // quick retries the claims fail open (or the worker pauses).
            .retries(2)
            .max_retry_wait(500)
            .tcp_settings(tcp_settings());
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        let connection = builder.build()?.get_async_connection().await?;
        Ok(RedisLink::Cluster(connection))
    }

    /// Names the variables behind a connection failure.
    fn explain(&self, error: RedisError) -> RedisError {
        let tls = self
            .urls
            .urls()
            .iter()
            .any(|url| url.url().scheme() == "rediss");
        let detail = if !tls {
            format!("REDIS_URL {}: {error}", self.urls)
        } else if let Some(ca) = &self.ca_file {
            format!(
                "REDIS_URL {}: {error} (the server's certificate must chain to WA_REDIS_CA_FILE {})",
                self.urls,
                ca.display()
            )
        } else {
            format!(
                "REDIS_URL {}: {error} (the server's certificate must chain to the system's roots; set WA_REDIS_CA_FILE for a private CA)",
                self.urls
            )
        };
        RedisError::from((error.kind(), "cannot connect to Redis", detail))
    }
}

/// Every TCP connection to Redis: Nagle's algorithm off (it would hold back
/// the small writes of a pipeline), and a bound on a silent server.
///
/// A response timeout fails the request but keeps its connection. So when
/// a server's host vanishes (a failover that moves its name elsewhere),
/// every request would go to the same dead connection until the kernel
/// stopped retransmitting, about 15 minutes. Keepalive probes and
/// `TCP_USER_TIMEOUT` end that connection within 30 s; the link then
/// reconnects, by name. A live server's kernel acknowledges at once, so a
/// slow command is not cut short.
fn tcp_settings() -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(5))
        .with_retries(4);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(30));
    settings
}

/// A live connection to one server or to a cluster; cheap to clone.
#[derive(Clone)]
pub enum RedisLink {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A PEM file named by `variable`, read now; the error names both.
fn read_text(variable: &str, path: &std::path::Path) -> anyhow::Result<String> {
    read_pem_file(variable, path).map_err(anyhow::Error::msg)
}
