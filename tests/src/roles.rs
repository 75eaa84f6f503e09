//! The roles, started in-process on port 0 with a test's namespace, each
//! with its own shutdown token. Configuration goes through the same clap
//! parser as the binary, so defaults and validation are the real ones.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::env::TEST_RETRY_TIERS;
use crate::{TcpRelay, TestEnv};

pub const APP_SECRET: &str = "test-app-secret";
pub const ROTATED_SECRET: &str = "test-app-secret-next";
pub const VERIFY_TOKEN: &str = "test-verify-token";

/// A test's extra options come last and win over the harness's defaults.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args<T: clap::Args> {
    #[command(flatten)]
    config: T,
}

/// Parses options as the binary would (defaults, environment, validation).
pub fn parse<T: clap::Args>(args: Vec<String>) -> T {
    let argv = std::iter::once("wa-ingest".to_owned()).chain(args);
    Args::<T>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("bad test configuration: {e}"))
        .config
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The test's namespace, RabbitMQ and database as options, then `more`.
fn broker_and_database(env: &TestEnv, more: &[&str]) -> Vec<String> {
    let servers = [
        "--namespace",
        env.namespace.as_str(),
        "--amqp-url",
        &env.amqp_url,
        "--database-url",
        &env.database_url,
    ];
    owned(&servers).into_iter().chain(owned(more)).collect()
}

/// A role running in this process, with a shutdown token of its own.
pub(crate) struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Signals shutdown and waits for the role to finish; panics, naming
    /// `role`, if it failed.
    pub(crate) async fn stop(self, role: &str) {
        self.shutdown.cancel();
        self.task
            .await
            .unwrap_or_else(|error| panic!("{role} task: {error}"))
            .unwrap_or_else(|error| panic!("{role} ran: {error:?}"));
    }

    /// Ends it as a crash would: no draining, no commit.
    fn kill(self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1:0 and runs a role on it with a shutdown token of its own.
async fn spawn<F, Fut>(run: F) -> (SocketAddr, Running)
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    (addr, Running { shutdown, task })
}

/// Parses the harness's `args`, then a test's `extra` (which win), as the
/// binary would, and runs the role on 127.0.0.1:0.
pub(crate) async fn start_role<T, F, Fut>(
    mut args: Vec<String>,
    extra: &[&str],
    run: F,
) -> (SocketAddr, Running)
where
    T: clap::Args,
    F: FnOnce(TcpListener, T, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    args.extend(owned(extra));
    let config: T = parse(args);
    spawn(|listener, shutdown| run(listener, config, shutdown)).await
}

/// Waits (up to `timeout`) until `url` answers with a success status.
pub(crate) async fn wait_success(what: &str, url: String, timeout: Duration) {
    crate::eventually(what, timeout, || {
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await;
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// The plain ops listener, when started with one.
    pub ops_addr: Option<SocketAddr>,
    running: Running,
}

impl Receiver {
    /// A receiver talking to RabbitMQ at `amqp_url` (the env's, or a relay's).
    pub async fn start(env: &TestEnv, amqp_url: &str, extra: &[&str]) -> Self {
        let config = Self::config(env, amqp_url, extra);
        let (addr, running) =
            spawn(|listener, shutdown| wa_receiver::run(listener, config, shutdown)).await;
        let receiver = Self {
            addr,
            ops_addr: None,
            running,
        };
        receiver.wait_ready().await;
        receiver
    }

    /// A receiver that also serves `/healthz`, `/readyz` and `/metrics` on
    /// a plain ops listener (WA_OPS_ADDR), and is waited for there: for
    /// receivers whose public listener speaks TLS.
    pub async fn start_with_ops(env: &TestEnv, extra: &[&str]) -> Self {
        let config = Self::config(env, &env.amqp_url, extra);
        let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ops_addr = ops.local_addr().expect("address");
        let (addr, running) = spawn(|listener, shutdown| {
            wa_receiver::run_with_ops(listener, Some(ops), config, shutdown)
        })
        .await;
        wait_ready(ops_addr).await;
        Self {
            addr,
            ops_addr: Some(ops_addr),
            running,
        }
    }

    fn config(env: &TestEnv, amqp_url: &str, extra: &[&str]) -> wa_receiver::ReceiverConfig {
        let mut args = owned(&[
            "--namespace",
            env.namespace.as_str(),
            "--amqp-url",
            amqp_url,
            "--app-secret",
            &format!("{APP_SECRET},{ROTATED_SECRET}"),
            "--verify-token",
            VERIFY_TOKEN,
            "--confirm-timeout",
            "2s",
        ]);
        args.extend(owned(extra));
        parse(args)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/metrics`, from the plain ops listener when there is one.
    pub async fn metrics(&self) -> String {
        crate::scrape(self.ops_addr.unwrap_or(self.addr)).await
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.addr).await;
    }

    pub async fn stop(self) {
        self.running.stop("receiver").await;
    }
}

pub struct Worker {
    pub ops_addr: SocketAddr,
    running: Running,
}

/// Where a worker finds its servers; relays may stand in for any of them.
pub struct WorkerServers<'a> {
    pub amqp_url: &'a str,
    pub redis_url: &'a str,
    pub database_url: &'a str,
}

impl<'a> WorkerServers<'a> {
    pub fn of(env: &'a TestEnv) -> Self {
        Self {
            amqp_url: &env.amqp_url,
            redis_url: &env.redis_url,
            database_url: &env.database_url,
        }
    }
}

/// The server a worker reaches through a [`TcpRelay`], so a test can cut it.
#[derive(Debug, Clone, Copy)]
pub enum RelayedServer {
    RabbitMq,
    Redis,
    PostgreSql,
}

impl RelayedServer {
    /// The URL of this server that `env`'s roles use.
    pub fn url_in(self, env: &TestEnv) -> &str {
        match self {
            Self::RabbitMq => &env.amqp_url,
            Self::Redis => &env.redis_url,
            Self::PostgreSql => &env.database_url,
        }
    }

    /// The environment variable that gives a role this server's URL.
    pub fn variable(self) -> &'static str {
        match self {
            Self::RabbitMq => "AMQP_URL",
            Self::Redis => "REDIS_URL",
            Self::PostgreSql => "DATABASE_URL",
        }
    }
}

impl Worker {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        Self::start_with(env, WorkerServers::of(env), extra).await
    }

    /// A worker that reaches `server` through a new [`TcpRelay`], and that
    /// relay; the worker is ready when this returns.
    pub async fn start_relayed(
        env: &TestEnv,
        server: RelayedServer,
        extra: &[&str],
    ) -> (Self, TcpRelay) {
        let (relay, relayed) = TcpRelay::in_front_of(server.url_in(env));
        let mut servers = WorkerServers::of(env);
        match server {
            RelayedServer::RabbitMq => servers.amqp_url = &relayed,
            RelayedServer::Redis => servers.redis_url = &relayed,
            RelayedServer::PostgreSql => servers.database_url = &relayed,
        }
        let worker = Self::start_with(env, servers, extra).await;
        worker.wait_ready().await;
        (worker, relay)
    }

    pub async fn start_with(env: &TestEnv, servers: WorkerServers<'_>, extra: &[&str]) -> Self {
        let args = owned(&[
            "--namespace",
            env.namespace.as_str(),
            "--amqp-url",
            servers.amqp_url,
            "--redis-url",
            servers.redis_url,
            "--database-url",
            servers.database_url,
            "--retry-tiers",
            TEST_RETRY_TIERS,
            "--db-acquire-timeout",
            "1s",
            "--redis-timeout",
            "500ms",
        ]);
        let (ops_addr, running) = start_role(args, extra, wa_worker::run).await;
        Self { ops_addr, running }
    }

    pub async fn metrics(&self) -> String {
        crate::scrape(self.ops_addr).await
    }

    /// The DLQ is empty and this worker dead-lettered nothing.
    pub async fn assert_nothing_dead_lettered(&self, env: &TestEnv) {
        assert_nothing_dead_lettered(env, self.ops_addr).await;
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.ops_addr).await;
    }

    /// Waits (90 s at most) until the worker is paused for `dependency`
    /// with `reason` (`wa_worker_paused`).
    pub async fn wait_paused(&self, dependency: &str, reason: &str) {
        let what = format!("the worker paused for {dependency} ({reason})");
        crate::eventually(&what, Duration::from_secs(90), || async {
            match self.paused(dependency, reason).await {
                1.0 => Ok(()),
                n => Err(n.to_string()),
            }
        })
        .await;
    }

    /// `wa_worker_paused` for `dependency` and `reason`: 1 while paused so.
    pub async fn paused(&self, dependency: &str, reason: &str) -> f64 {
        crate::metric_sum(
            &self.metrics().await,
            "wa_worker_paused",
            &[("dependency", dependency), ("reason", reason)],
        )
    }

    pub async fn readyz(&self) -> (u16, String) {
        readyz(self.ops_addr).await
    }

    pub async fn stop(self) {
        self.running.stop("worker").await;
    }
}

/// The DLQ is empty and the worker whose operations endpoint is at
/// `ops_addr` dead-lettered nothing.
pub async fn assert_nothing_dead_lettered(env: &TestEnv, ops_addr: SocketAddr) {
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = crate::scrape(ops_addr).await;
    let dead_lettered = crate::metric_sum(
        &metrics,
        "wa_deliveries_total",
        &[("outcome", "dead_lettered")],
    );
    assert_eq!(dead_lettered, 0.0);
}

/// Waits for `total` mixed payloads ([`crate::payloads::mixed`]: one
/// message and three statuses each) to be stored, then checks that none
/// was stored twice and none was dead-lettered by the worker at `ops_addr`.
pub async fn all_stored_once_and_nothing_dead_lettered(
    env: &TestEnv,
    ops_addr: SocketAddr,
    total: i64,
) {
    let messages = || env.count("SELECT count(*) FROM messages");
    crate::eventually("everything stored", Duration::from_secs(90), || async {
        match messages().await {
            n if n == total => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages().await, total, "messages stored once");
    assert_eq!(
        env.count("SELECT count(*) FROM message_statuses").await,
        total * 3,
        "statuses stored once"
    );
    assert_nothing_dead_lettered(env, ops_addr).await;
}

pub async fn wait_ready(addr: SocketAddr) {
    let url = format!("http://{addr}/readyz");
    wait_success("/readyz to answer 200", url, Duration::from_secs(15)).await;
}

pub struct Relay {
    pub ops_addr: SocketAddr,
    running: Running,
}

impl Relay {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let shards = crate::env::TEST_EVENT_SHARDS.to_string();
        let args =
            broker_and_database(env, &["--event-shards", &shards, "--poll-interval", "50ms"]);
        let (ops_addr, running) = start_role(args, extra, wa_relay::run).await;
        Self { ops_addr, running }
    }

    /// Ends it as a crash would: no draining, no commit.
    pub fn kill(self) {
        self.running.kill();
    }

    pub async fn stop(self) {
        self.running.stop("relay").await;
    }
}

/// `/readyz`'s status and text at a role's operations address; status 0
/// with the error when it cannot be asked.
pub async fn readyz(ops_addr: SocketAddr) -> (u16, String) {
    match reqwest::get(format!("http://{ops_addr}/readyz")).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    }
}

/// The console's token in tests (operator `alice`).
pub const CONSOLE_TOKEN: &str = "test-console-token-0123456789abcdef";

pub struct Console {
    pub addr: SocketAddr,
    running: Running,
}

impl Console {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let token = format!("alice:{CONSOLE_TOKEN}");
        let shards = crate::env::TEST_EVENT_SHARDS.to_string();
        let args = broker_and_database(
            env,
            &[
                "--console-token",
                &token,
                "--retry-tiers",
                TEST_RETRY_TIERS,
                "--event-shards",
                &shards,
            ],
        );
        let (addr, running) = start_role(args, extra, wa_console::run).await;
        let health = format!("http://{addr}/healthz");
        wait_success("the console to answer", health, Duration::from_secs(15)).await;
        Self { addr, running }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client that does not follow redirects, the `Cookie` header of a
    /// fresh session, and that session's CSRF token (read from a page).
    pub async fn signed_in(&self) -> (reqwest::Client, String, String) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let response = client
            .post(self.url("/login"))
            .form(&[("token", CONSOLE_TOKEN)])
            .send()
            .await
            .expect("login");
        assert_eq!(response.status().as_u16(), 303, "login redirects");
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let page = client
            .get(self.url("/conversation"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("body");
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF token in the page")
            .to_owned();
        (client, cookie, csrf)
    }

    pub async fn stop(self) {
        self.running.stop("console").await;
    }
}
