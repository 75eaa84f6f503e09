//! The roles, started in-process on port 0 with a test's namespace, each
//! with its own shutdown token. Configuration goes through the same clap
//! parser as the binary, so defaults and validation are the real ones.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;
use crate::env::TEST_RETRY_TIERS;

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

/// Binds 127.0.0.1:0 and runs a role on it with a shutdown token of its own.
pub(crate) async fn spawn<F, Fut>(
    run: F,
) -> (
    SocketAddr,
    CancellationToken,
    JoinHandle<anyhow::Result<()>>,
)
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    (addr, shutdown, task)
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// The plain ops listener, when started with one.
    pub ops_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Receiver {
    /// A receiver talking to RabbitMQ at `amqp_url` (the env's, or a relay's).
    pub async fn start(env: &TestEnv, amqp_url: &str, extra: &[&str]) -> Self {
        let config = Self::config(env, amqp_url, extra);
        let (addr, shutdown, task) =
            spawn(|listener, shutdown| wa_receiver::run(listener, config, shutdown)).await;
        let receiver = Self {
            addr,
            ops_addr: None,
            shutdown,
            task,
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
        let (addr, shutdown, task) = spawn(|listener, shutdown| {
            wa_receiver::run_with_ops(listener, Some(ops), config, shutdown)
        })
        .await;
        wait_ready(ops_addr).await;
        Self {
            addr,
            ops_addr: Some(ops_addr),
            shutdown,
            task,
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
        self.shutdown.cancel();
        self.task
            .await
            .expect("receiver task")
            .expect("receiver ran");
    }
}

pub struct Worker {
    pub ops_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
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

impl Worker {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        Self::start_with(env, WorkerServers::of(env), extra).await
    }

    pub async fn start_with(env: &TestEnv, servers: WorkerServers<'_>, extra: &[&str]) -> Self {
        let mut args = owned(&[
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
        args.extend(owned(extra));
        let config: wa_worker::WorkerConfig = parse(args);
        let (ops_addr, shutdown, task) =
            spawn(|listener, shutdown| wa_worker::run(listener, config, shutdown)).await;
        Self {
            ops_addr,
            shutdown,
            task,
        }
    }

    pub async fn metrics(&self) -> String {
        crate::scrape(self.ops_addr).await
    }

    /// The DLQ is empty and this worker dead-lettered nothing.
    pub async fn assert_nothing_dead_lettered(&self, env: &TestEnv) {
        assert_eq!(env.queue_depth("dlq").await, 0);
        let metrics = self.metrics().await;
        let dead_lettered = crate::metric_sum(
            &metrics,
            "wa_deliveries_total",
            &[("outcome", "dead_lettered")],
        );
        assert_eq!(dead_lettered, 0.0);
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.ops_addr).await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("worker task").expect("worker ran");
    }
}

async fn wait_ready(addr: SocketAddr) {
    let url = format!("http://{addr}/readyz");
    crate::eventually(
        "/readyz to answer 200",
        std::time::Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                match reqwest::get(&url).await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("{}", response.status())),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
    )
    .await;
}

pub struct Relay {
    pub ops_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let mut args = owned(&[
            "--namespace",
            env.namespace.as_str(),
            "--amqp-url",
            &env.amqp_url,
            "--database-url",
            &env.database_url,
            "--event-shards",
            &crate::env::TEST_EVENT_SHARDS.to_string(),
            "--poll-interval",
            "50ms",
        ]);
        args.extend(owned(extra));
        let config: wa_relay::RelayConfig = parse(args);
        let (ops_addr, shutdown, task) =
            spawn(|listener, shutdown| wa_relay::run(listener, config, shutdown)).await;
        Self {
            ops_addr,
            shutdown,
            task,
        }
    }

    /// Ends it as a crash would: no draining, no commit.
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("relay task").expect("relay ran");
    }
}

/// The console's token in tests (operator `alice`).
pub const CONSOLE_TOKEN: &str = "test-console-token-0123456789abcdef";

pub struct Console {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Console {
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let mut args = owned(&[
            "--namespace",
            env.namespace.as_str(),
            "--amqp-url",
            &env.amqp_url,
            "--database-url",
            &env.database_url,
            "--console-token",
            &format!("alice:{CONSOLE_TOKEN}"),
            "--retry-tiers",
            TEST_RETRY_TIERS,
            "--event-shards",
            &crate::env::TEST_EVENT_SHARDS.to_string(),
        ]);
        args.extend(owned(extra));
        let config: wa_console::ConsoleConfig = parse(args);
        let (addr, shutdown, task) =
            spawn(|listener, shutdown| wa_console::run(listener, config, shutdown)).await;
        let health = format!("http://{addr}/healthz");
        crate::eventually(
            "the console to answer",
            std::time::Duration::from_secs(15),
            || {
                let health = health.clone();
                async move {
                    match reqwest::get(&health).await {
                        Ok(response) if response.status().is_success() => Ok(()),
                        Ok(response) => Err(response.status().to_string()),
                        Err(error) => Err(error.to_string()),
                    }
                }
            },
        )
        .await;
        Self {
            addr,
            shutdown,
            task,
        }
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
        self.shutdown.cancel();
        self.task.await.expect("console task").expect("console ran");
    }
}
