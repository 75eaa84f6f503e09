//! Failovers behind DNS, as managed PostgreSQL and Redis services do them:
//! the server's host vanishes mid-stream (its link pulled, so nothing
//! answers, not even a reset) and the server's name moves to a new host.
//!
//! Connections to the vanished host are given up within 30 s (TCP
//! keepalive and `TCP_USER_TIMEOUT`: vendor/sqlx-core for PostgreSQL, the
//! worker's Redis link for Redis; AMQP heartbeats for RabbitMQ), and the
//! worker or receiver reconnects by name. Without that bound, a request
//! sent just before the link went waits for the kernel to stop
//! retransmitting, about 15 minutes, and its webhook with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wa_e2e::edge::ReceiverProcess;
use wa_e2e::env::TEST_RETRY_TIERS;
use wa_e2e::network::{HostsFile, RemoteHost};
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::relay::readdress;
use wa_e2e::roles::{RelayedServer, all_stored_once_and_nothing_dead_lettered, wait_ready};
use wa_e2e::servers::{Process, ServerDir, free_port};
use wa_e2e::{TcpRelay, TestEnv, eventually, metric_sum};

/// The name the worker is given for the server that fails over.
const NAME: &str = "primary.wa-test";

#[tokio::test]
async fn a_postgresql_primary_that_vanishes_as_its_name_moves_is_given_up_and_nothing_is_lost() {
    let env = TestEnv::new().await;
    let failover = Failover::of(&env, RelayedServer::PostgreSql);
    let worker = failover.worker(&env, &[]);
    stream_through(&env, &failover, &worker, Met::Pause("postgresql")).await;
}

/// Claims fail closed here, so that the worker stores nothing while Redis
/// is away: failing open would store everything without it.
#[tokio::test]
async fn a_redis_primary_that_vanishes_as_its_name_moves_is_given_up_and_nothing_is_lost() {
    let env = TestEnv::new().await;
    let failover = Failover::of(&env, RelayedServer::Redis);
    let settings = [
        ("WA_CLAIM_FAIL_MODE", "closed"),
        ("WA_REDIS_TIMEOUT", "500ms"),
    ];
    let worker = failover.worker(&env, &settings);
    stream_through(&env, &failover, &worker, Met::Pause("redis")).await;
}

/// What the worker had not acked on the dead connection is delivered again
/// once the broker notices it is dead, and the claims absorb it.
#[tokio::test]
async fn a_rabbitmq_node_that_vanishes_as_its_name_moves_is_given_up_and_nothing_is_lost() {
    let env = TestEnv::new().await;
    let failover = Failover::of(&env, RelayedServer::RabbitMq);
    let worker = failover.worker(&env, &[]);
    let reconnected = Met::Logged("lost the RabbitMQ connection; reconnecting");
    stream_through(&env, &failover, &worker, reconnected).await;
}

/// The edge answers Meta 200 only after the broker's confirm: while the
/// node is silent it answers 503 (the confirm never comes), and once the
/// heartbeats have ended the dead connection it publishes through the
/// new host, by name. Every 200 is in the queue.
#[tokio::test]
async fn the_receiver_answers_503_while_its_rabbitmq_node_is_silent_and_200_once_the_name_moved() {
    let env = TestEnv::new().await;
    let failover = Failover::of(&env, RelayedServer::RabbitMq);
    let command = failover
        .hosts
        .command(&env, env!("CARGO_BIN_EXE_wa-ingest"), &["receiver"]);
    let by_name = failover.by_name();
    let receiver = ReceiverProcess::spawn(command, &env, &[by_name]).await;
    let client = reqwest::Client::new();
    let webhooks = receiver.url("/webhooks/whatsapp");
    let post = |i: usize| post_signed(&client, &webhooks, payloads::mixed(&format!("edge{i}"), 1));
    assert_eq!(post(0).await, 200);

    failover.happen();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut answers = Vec::new();
    while !answers.ends_with(&[200, 200]) {
        assert!(
            Instant::now() < deadline,
            "no two 200s in a row through the new host within 90 s: {answers:?}"
        );
        answers.push(post(answers.len() + 1).await);
    }
    assert!(
        answers.iter().all(|&status| status == 200 || status == 503),
        "only 200 or 503: {answers:?}"
    );
    assert!(
        answers.contains(&503),
        "the silent node was felt: {answers:?}"
    );
    let accepted = 1 + answers.iter().filter(|&&status| status == 200).count();
    let queued = env.queue_depth("inbound").await as usize;
    assert!(
        queued >= accepted,
        "every 200 was confirmed: {queued} queued, {accepted} answered 200"
    );
    receiver.stop().await;
}

/// Two hosts of the test's own, each forwarding to the same server of the
/// test's (a new primary serves the same data), and a hosts file in which
/// [`NAME`] points at the first.
struct Failover {
    old: RemoteHost,
    new: RemoteHost,
    hosts: HostsFile,
    _relays: [TcpRelay; 2],
    /// The variable that names the server, and its URL with [`NAME`] as
    /// the host.
    variable: &'static str,
    url_by_name: String,
    dir: ServerDir,
}

impl Failover {
    fn of(env: &TestEnv, server: RelayedServer) -> Self {
        let url = server.url_in(env);
        let (address, _) = readdress(url, "");
        let (_, url_by_name) = readdress(url, &format!("{NAME}:{}", address.port()));
        let (old, new) = (RemoteHost::create(), RemoteHost::create());
        let relays = [
            TcpRelay::serving(old.listen(address.port()), address),
            TcpRelay::serving(new.listen(address.port()), address),
        ];
        let hosts = HostsFile::new();
        hosts.point(NAME, old.address);
        Self {
            old,
            new,
            hosts,
            _relays: relays,
            variable: server.variable(),
            url_by_name,
            dir: ServerDir::new("failover"),
        }
    }

    /// The setting that has a role reach the server by [`NAME`].
    fn by_name(&self) -> (&str, &str) {
        (self.variable, &self.url_by_name)
    }

    /// `wa-ingest worker` as a process that resolves names through the
    /// test's hosts file and reaches the server by [`NAME`], with
    /// `settings` over the test's servers.
    fn worker(&self, env: &TestEnv, settings: &[(&str, &str)]) -> Worker {
        let ops_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = self
            .hosts
            .command(env, env!("CARGO_BIN_EXE_wa-ingest"), &["worker"]);
        command
            .env("METRICS_ADDR", ops_addr.to_string())
            .env("WA_RETRY_TIERS", TEST_RETRY_TIERS)
            .env("WA_DB_ACQUIRE_TIMEOUT", "1s")
            .envs(settings.iter().copied().chain([self.by_name()]));
        let log = self.dir.file("worker.log");
        let process = Process::spawn(command.as_std_mut(), &log);
        Worker {
            ops_addr,
            log,
            _process: process,
        }
    }

    /// The old host vanishes and the name moves to the new one.
    fn happen(&self) {
        self.old.pull_link();
        self.hosts.point(NAME, self.new.address);
    }
}

struct Worker {
    ops_addr: SocketAddr,
    log: PathBuf,
    _process: Process,
}

/// How a test knows the worker met the vanished host.
enum Met {
    /// It paused for this dependency.
    Pause(&'static str),
    /// It logged this.
    Logged(&'static str),
}

/// Sixty webhooks, with the failover a third of the way in: once the first
/// twenty are stored, so that the worker's next requests go out on
/// connections it has just used (not checked again before use) to the
/// vanished host. Each is stored once, nothing is dead-lettered, and the
/// worker met the vanished host (`met`).
async fn stream_through(env: &TestEnv, failover: &Failover, worker: &Worker, met: Met) {
    wait_ready(worker.ops_addr).await;
    let (total, before) = (60, 20);
    let publish = |range: std::ops::Range<i64>| async move {
        for i in range {
            env.publish_inbound(&payloads::mixed(&format!("failover{i}"), 1))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    publish(0..before).await;
    eventually(
        "the first third stored through the old host",
        Duration::from_secs(30),
        || async {
            match env.count("SELECT count(*) FROM messages").await {
                n if n == before => Ok(()),
                n => Err(n.to_string()),
            }
        },
    )
    .await;
    failover.happen();
    publish(before..total).await;

    all_stored_once_and_nothing_dead_lettered(env, worker.ops_addr, total).await;
    match met {
        Met::Pause(dependency) => {
            let metrics = wa_e2e::scrape(worker.ops_addr).await;
            let pauses = metric_sum(
                &metrics,
                "wa_worker_pauses_total",
                &[("dependency", dependency)],
            );
            assert!(
                pauses >= 1.0,
                "the worker paused for {dependency}: {metrics}"
            );
        }
        Met::Logged(line) => {
            let log = std::fs::read_to_string(&worker.log).expect("the worker's log");
            assert!(log.contains(line), "the worker logged {line:?}: {log}");
        }
    }
}
