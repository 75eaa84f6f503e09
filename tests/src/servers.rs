//! Servers a test starts for itself, from the programs installed on the
//! machine (Debian's `rabbitmq-server`, `redis-server`, `postgresql`): a
//! 3-node RabbitMQ cluster, a Redis Cluster of 3 masters and 3 replicas, and
//! TLS-only RabbitMQ, Redis and PostgreSQL with a CA made for the test.
//!
//! Each runs on free ports with its data in a temporary folder, in a process
//! group of its own, and is killed with its whole group (and the folder
//! removed) when the value is dropped, even when the test panicked. The
//! shared servers are never touched. A program that is missing fails the
//! test, naming it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::network::RemoteHost;
use crate::tls::{Ca, Identity};

/// A port nobody uses now, for a server process to bind. It is chosen
/// below the kernel's ephemeral range (32768 and up): a port from there can
/// be taken by any outgoing connection of the tests running alongside before
/// the server binds it, and the server then fails to start.
pub fn free_port() -> u16 {
    free_port_below(32000, 0)
}

/// A free port whose neighbour `offset` above is free too; RabbitMQ's CLI
/// tools take the node's distribution port + 10000 (and ten above it).
fn free_port_below(limit: u16, offset: u16) -> u16 {
    for _ in 0..200 {
        let port = 20000 + (rand::random::<u16>() % (limit - 20000));
        // Around the default node's distribution port (25672) and its CLI's (35672).
        if (25600..25700).contains(&port)
            || (25600..25700).contains(&(port + offset - 10000 * u16::from(offset >= 10000)))
        {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if (0..=10).all(|i| free(port + offset + i)) && free(port) {
            return port;
        }
    }
    panic!("no free port pair below {limit}");
}

/// A folder of a test's servers, removed on drop.
pub struct ServerDir {
    pub path: PathBuf,
}

impl ServerDir {
    pub fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "wa-{kind}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&path).expect("server folder");
        Self { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.file(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("folder");
        }
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server process in its own process group: killing the group also ends
/// what a wrapper script started (RabbitMQ's `erl`).
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is required for this test: {e}"));
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Waits until the server accepts connections on `port`; panics with its
    /// log when it exits first or does not listen within `limit`.
    pub fn wait_listening(&mut self, what: &str, port: u16, limit: Duration) {
        self.wait_listening_at(what, SocketAddr::from(([127, 0, 0, 1], port)), limit);
    }

    /// Waits until the server accepts connections at `address`; panics as
    /// [`Process::wait_listening`] does.
    pub fn wait_listening_at(&mut self, what: &str, address: SocketAddr, limit: Duration) {
        let mut exited = None;
        let done = poll_until(limit, || {
            accepts(address) || {
                exited = self.child.try_wait().ok().flatten();
                exited.is_some()
            }
        });
        if done && exited.is_none() {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let state = exited.map_or_else(
            || format!("not listening after {limit:?}"),
            |status| format!("exited ({status})"),
        );
        panic!(
            "{what} at {address}: {state}; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// SIGKILL to the whole group: a crash, not a shutdown.
    pub fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} is required for this test: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {:?} failed: {text}",
        command.get_args().collect::<Vec<_>>()
    );
    text
}

/// Polls `ready` every 200 ms until it holds, or panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, ready),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `ready` every 200 ms until it holds (true) or `limit` has passed (false).
fn poll_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

fn accepts(address: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

// ---------------------------------------------------------------- RabbitMQ

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

struct RabbitNode {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

/// What a node listens on.
enum RabbitListener {
    Tcp,
    /// TLS only: no plain listener at all, and a client must present a
    /// certificate from the same CA as the server's.
    Tls {
        cert: String,
        key: String,
        ca: String,
    },
}

/// A RabbitMQ cluster of nodes `waclusterN_{id}@localhost` on one machine,
/// with its own ports, data, logs, Erlang cookie and port mapper (`epmd`,
/// stopped with the cluster; the machine's own broker keeps the default one);
/// or one such node on TLS only ([`RabbitCluster::start_tls`]).
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
    epmd_port: u16,
    listener: RabbitListener,
    dir: ServerDir,
}

impl RabbitCluster {
    /// Starts `size` nodes at once and joins them to the first.
    pub fn start(size: usize) -> Self {
        Self::start_listening(size, |_| RabbitListener::Tcp)
    }

    /// One node that speaks AMQP over TLS only (as managed brokers do), with
    /// a certificate from `ca`, and that demands a client certificate from
    /// `ca` too.
    pub fn start_tls(ca: &Ca) -> Self {
        Self::start_listening(1, |dir| {
            let Identity { cert_pem, key_pem } = ca.server();
            RabbitListener::Tls {
                cert: dir.write("server.crt", &cert_pem),
                key: dir.write("server.key", &key_pem),
                ca: dir.write("ca.crt", &ca.pem()),
            }
        })
    }

    fn start_listening(size: usize, listener: impl FnOnce(&ServerDir) -> RabbitListener) -> Self {
        let dir = ServerDir::new("rabbitmq");
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let cookie = dir.write(".erlang.cookie", &format!("WACLUSTER{id}"));
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("cookie mode");
        let nodes: Vec<RabbitNode> = (1..=size)
            .map(|n| {
                let node_dir = dir.file(&format!("node{n}"));
                std::fs::create_dir_all(&node_dir).expect("node folder");
                RabbitNode {
                    name: format!("wacluster{n}_{id}@localhost"),
                    amqp_port: free_port_below(29000, 0),
                    dist_port: free_port_below(29000, 10000),
                    dir: node_dir,
                    process: None,
                }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            epmd_port: free_port_below(29000, 0),
            listener: listener(&dir),
            dir,
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        for index in 0..size {
            cluster.await_startup(index);
        }
        let first = cluster.nodes[0].name.clone();
        for index in 1..size {
            let name = cluster.nodes[index].name.clone();
            cluster.ctl(&["-n", &name, "stop_app"]);
            cluster.ctl(&["-n", &name, "join_cluster", &first]);
            cluster.ctl(&["-n", &name, "start_app"]);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let config = node.dir.join("rabbitmq.conf");
        let port = node.amqp_port;
        let listeners = match &self.listener {
            RabbitListener::Tcp => format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
            RabbitListener::Tls { cert, key, ca } => format!(
                "listeners.tcp = none\n\
                 listeners.ssl.local = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n"
            ),
        };
        std::fs::write(&config, format!("{listeners}loopback_users = none\n"))
            .expect("node config");
        let plugins = node.dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").expect("plugins file");
        let env_file = node.dir.join("rabbitmq-env.conf");
        std::fs::write(&env_file, "").expect("env file");
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"));
        command
            // A node writes crash dumps (MnesiaCore.*, erl_crash.dump) here.
            .current_dir(&node.dir)
            .env("HOME", &self.dir.path)
            .env("RABBITMQ_CONF_ENV_FILE", &env_file)
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string());
        if let RabbitListener::Tcp = self.listener {
            command.env("RABBITMQ_NODE_PORT", node.amqp_port.to_string());
        }
        let process = Process::spawn(&mut command, &node.dir.join("server.out"));
        self.nodes[index].process = Some(process);
    }

    fn await_startup(&self, index: usize) {
        let name = self.nodes[index].name.clone();
        wait_until(
            &format!("RabbitMQ node {name} to start"),
            Duration::from_secs(120),
            || {
                self.ctl_command(&["-n", &name, "await_startup", "-t", "10"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"));
        command
            .env("HOME", &self.dir.path)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .args(args);
        command
    }

    fn ctl(&self, args: &[&str]) -> String {
        run(&mut self.ctl_command(args))
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// `amqp://` (`amqps://` for TLS) URL of node `index` (0-based).
    pub fn url(&self, index: usize) -> String {
        let scheme = match self.listener {
            RabbitListener::Tcp => "amqp",
            RabbitListener::Tls { .. } => "amqps",
        };
        format!(
            "{scheme}://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[index].amqp_port
        )
    }

    /// `rabbitmqctl list_connections <items>` on the first node: one line
    /// per client connection, its items tab-separated.
    pub fn connections(&self, items: &[&str]) -> Vec<String> {
        let mut args = vec![
            "-n",
            &self.nodes[0].name,
            "list_connections",
            "-q",
            "--no-table-headers",
        ];
        args.extend_from_slice(items);
        self.ctl(&args).lines().map(str::to_owned).collect()
    }

    /// Every node's URL, comma-separated, starting with node `first`.
    pub fn urls_from(&self, first: usize) -> String {
        (0..self.size())
            .map(|i| self.url((first + i) % self.size()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node (index) holding the leader of quorum queue `queue`, or why
    /// it cannot be told yet: while a new leader is being elected the queue
    /// is left out of `list_queues`, and `rabbitmqctl` itself may fail.
    pub fn leader_of(&self, queue: &str) -> Result<usize, String> {
        let alive = (0..self.size())
            .find(|&i| self.nodes[i].process.is_some())
            .ok_or("no node running")?;
        let output = self
            .ctl_command(&[
                "-n",
                &self.nodes[alive].name,
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "leader",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("rabbitmqctl: {e}"))?;
        let listing = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "rabbitmqctl list_queues failed: {listing}{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .map(|(_, leader)| leader.trim())
            .ok_or_else(|| format!("queue {queue} not listed: {listing}"))?;
        self.nodes
            .iter()
            .position(|node| node.name == leader)
            .ok_or_else(|| format!("leader {leader} is not one of ours"))
    }

    /// Kills node `index` as a crash would (SIGKILL to the Erlang VM).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
        let _ = std::fs::remove_file(
            self.nodes[index]
                .dir
                .join("mnesia")
                .join(format!("{}.pid", self.nodes[index].name)),
        );
    }

    /// Starts a killed node again; it rejoins the cluster from its data.
    pub fn restart(&mut self, index: usize) {
        self.spawn(index);
        self.await_startup(index);
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.kill();
            }
        }
        stop_epmd(self.epmd_port);
    }
}

/// Stops the port mapper on `port`. It refuses while a node is registered,
/// and a killed node leaves it only once the kernel has closed its socket:
/// asks again for up to 5 s.
fn stop_epmd(port: u16) {
    for _ in 0..50 {
        let stopped = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if stopped {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the test cluster's epmd on port {port} would not stop");
}

// ------------------------------------------------------------------- Redis

/// One `redis-server` answering TLS only, its certificate signed by `ca`.
pub struct RedisTls {
    pub port: u16,
    _process: Process,
    _dir: ServerDir,
}

impl RedisTls {
    pub fn start(ca: &Ca) -> Self {
        let dir = ServerDir::new("redis-tls");
        let Identity { cert_pem, key_pem } = ca.server();
        let cert = dir.write("server.crt", &cert_pem);
        let key = dir.write("server.key", &key_pem);
        let ca_file = dir.write("ca.crt", &ca.pem());
        let port = free_port();
        let mut process = Process::spawn(
            Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
                .args(["--tls-ca-cert-file", &ca_file, "--tls-auth-clients", "no"])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir.path),
            &dir.file("server.log"),
        );
        process.wait_listening("Redis over TLS", port, Duration::from_secs(20));
        Self {
            port,
            _process: process,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

struct RedisNode {
    port: u16,
    process: Option<Process>,
}

/// A Redis Cluster of 3 masters with one replica each, made by
/// `redis-cli --cluster create`; failover after 1 s without a master.
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    _dir: ServerDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = ServerDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for n in 0..6 {
            let port = free_port();
            let bus = free_port();
            let node_dir = dir.file(&format!("node{n}"));
            std::fs::create_dir_all(&node_dir).expect("node folder");
            let process = Process::spawn(
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--cluster-port",
                        &bus.to_string(),
                    ])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    .args(["--cluster-config-file", "nodes.conf"])
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&node_dir),
                &node_dir.join("server.log"),
            );
            nodes.push(RedisNode {
                port,
                process: Some(process),
            });
        }
        for node in &mut nodes {
            if let Some(process) = node.process.as_mut() {
                process.wait_listening("a Redis Cluster node", node.port, Duration::from_secs(20));
            }
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        run(Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"]));
        let cluster = Self { nodes, _dir: dir };
        for index in 0..cluster.nodes.len() {
            wait_until(
                "the Redis Cluster to be ok",
                Duration::from_secs(30),
                || {
                    cluster
                        .cli(index, &["cluster", "info"])
                        .contains("cluster_state:ok")
                },
            );
        }
        cluster
    }

    fn cli(&self, index: usize, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.nodes[index].port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Seed URLs of every node, comma-separated.
    pub fn seed_urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}/", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Nodes that say they are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].process.is_some())
            .filter(|&i| self.cli(i, &["role"]).starts_with("master"))
            .collect()
    }

    /// Kills node `index` (SIGKILL); its replica takes over after the node timeout.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Waits until a replica has taken over every lost master and the
    /// surviving nodes agree the cluster is whole again.
    pub fn wait_failed_over(&self) {
        wait_until("a replica to be promoted", Duration::from_secs(30), || {
            self.masters().len() == 3
        });
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.is_some() {
                wait_until(
                    "the Redis Cluster to fail over",
                    Duration::from_secs(30),
                    || {
                        self.cli(index, &["cluster", "info"])
                            .contains("cluster_state:ok")
                    },
                );
            }
        }
    }

    /// Keys matching `pattern` on every live master.
    pub fn count_keys(&self, pattern: &str) -> usize {
        self.masters()
            .into_iter()
            .map(|i| {
                self.cli(i, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum()
    }
}

// -------------------------------------------------------------- PostgreSQL

/// The newest PostgreSQL installed (Debian: /usr/lib/postgresql/{version}/bin).
fn pg_bin() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let version = versions
        .last()
        .expect("PostgreSQL is required for this test: no /usr/lib/postgresql/{version}");
    format!("/usr/lib/postgresql/{version}/bin")
}

/// A new cluster's data folder in `dir`: `initdb` with trust
/// authentication for `postgres`, owned by the `postgres` user when we are
/// root (PostgreSQL refuses to run as root).
fn init_postgres(dir: &ServerDir) -> PathBuf {
    let data = dir.file("data");
    let mut initdb = Command::new(format!("{}/initdb", pg_bin()));
    initdb
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .arg("-D")
        .arg(&data);
    as_postgres_user(&mut initdb, &dir.path);
    run(&mut initdb);
    data
}

/// The `postgres` arguments every test cluster runs with, then `settings`
/// (`name=value`).
fn postgres_args(data: &Path, port: u16, settings: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-D".to_owned(),
        data.to_string_lossy().into_owned(),
        "-p".to_owned(),
        port.to_string(),
    ];
    let common = [
        "fsync=off",
        "unix_socket_directories=",
        "max_connections=100",
    ];
    for setting in common.iter().chain(settings) {
        args.extend(["-c".to_owned(), (*setting).to_owned()]);
    }
    args
}

/// A PostgreSQL cluster of the test's own (`initdb` on a free port), with
/// `ssl = on` and a certificate from `ca`; trust authentication for
/// `postgres` over TCP from 127.0.0.1.
pub struct PostgresTls {
    pub port: u16,
    dir: ServerDir,
    ca_file: String,
    _process: Process,
}

impl PostgresTls {
    pub fn start(ca: &Ca) -> Self {
        let dir = ServerDir::new("postgres-tls");
        let data = init_postgres(&dir);
        let Identity { cert_pem, key_pem } = ca.server();
        let cert = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&cert, cert_pem).expect("certificate");
        std::fs::write(&key, key_pem).expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("key mode");
        let ca_file = dir.write("ca.crt", &ca.pem());
        let port = free_port();
        let mut postgres = Command::new(format!("{}/postgres", pg_bin()));
        postgres.args(postgres_args(
            &data,
            port,
            &[
                "listen_addresses=127.0.0.1",
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
            ],
        ));
        as_postgres_user(&mut postgres, &dir.path);
        let mut process = Process::spawn(&mut postgres, &dir.file("server.log"));
        process.wait_listening("PostgreSQL with TLS", port, Duration::from_secs(30));
        Self {
            port,
            dir,
            ca_file,
            _process: process,
        }
    }

    /// `postgres://` URL of database `name`, TLS verified against the test CA.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=verify-full&sslrootcert={}",
            self.port, self.ca_file
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("server.log")).unwrap_or_default()
    }
}

/// A PostgreSQL cluster of the test's own on a [`RemoteHost`], listening on
/// the host's address only, with trust authentication for `postgres` from
/// this machine: a server that stays up while the link to it is pulled.
/// Needs root, as the host does.
pub struct PostgresOnHost {
    pub address: SocketAddr,
    _process: Process,
    dir: ServerDir,
}

impl PostgresOnHost {
    pub fn start(host: &RemoteHost) -> Self {
        let dir = ServerDir::new("postgres-remote");
        let data = init_postgres(&dir);
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules.push_str("host all postgres 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).expect("pg_hba.conf");
        let port = free_port();
        let address = SocketAddr::from((host.address, port));
        // `ip netns exec` needs root; the server then drops to `postgres`.
        let mut postgres = host.command("setpriv");
        postgres
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(format!("{}/postgres", pg_bin()))
            .args(postgres_args(
                &data,
                port,
                &[&format!("listen_addresses={}", host.address)],
            ));
        let mut process = Process::spawn(&mut postgres, &dir.file("server.log"));
        process.wait_listening_at(
            "PostgreSQL on its own host",
            address,
            Duration::from_secs(30),
        );
        Self {
            address,
            _process: process,
            dir,
        }
    }

    /// `postgres://` URL of the server, without a database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}", self.address)
    }

    /// Stops the server and every backend of it (SIGSTOP): it answers
    /// nothing, while its kernel still accepts connections, acknowledges
    /// what is sent and answers keepalives, as when its VM is paused or its
    /// storage hangs. Backends are in process groups of their own, so each
    /// is stopped by itself; the postmaster first, so that none is forked
    /// meanwhile.
    pub fn freeze(&self) {
        let postmaster = self.postmaster().expect("the postmaster's pid");
        run(Command::new("kill").args(["-STOP", &postmaster]));
        let _ = Command::new("pkill")
            .args(["-STOP", "-P", &postmaster])
            .status();
    }

    /// Lets the server go on after [`PostgresOnHost::freeze`].
    pub fn thaw(&self) {
        let postmaster = self.postmaster().expect("the postmaster's pid");
        let _ = Command::new("pkill")
            .args(["-CONT", "-P", &postmaster])
            .status();
        run(Command::new("kill").args(["-CONT", &postmaster]));
    }

    /// The postmaster's process id, from its `postmaster.pid`.
    fn postmaster(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.file("data").join("postmaster.pid")).ok()?;
        text.lines().next().map(str::to_owned)
    }
}

impl Drop for PostgresOnHost {
    /// Backends left stopped by a test that failed while the server was
    /// frozen would outlive it: the postmaster's death reaches a backend
    /// only once it runs again.
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster() {
            let _ = Command::new("pkill")
                .args(["-CONT", "-P", &postmaster])
                .status();
        }
    }
}

/// PostgreSQL refuses to run as root: run as the `postgres` user when we
/// are root, owning the folder.
fn as_postgres_user(command: &mut Command, dir: &Path) {
    if !running_as_root() {
        return;
    }
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status();
    let uid = id_of("-u");
    let gid = id_of("-g");
    command.uid(uid).gid(gid);
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn id_of(flag: &str) -> u32 {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("id postgres");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the postgres user exists (Debian's postgresql package)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "exited (exit status: 3); the end of its log:\nno port for me")]
    fn a_server_that_exits_before_listening_is_reported_with_its_log() {
        let dir = ServerDir::new("exits-early");
        let mut process = Process::spawn(
            Command::new("sh").args(["-c", "echo 'no port for me'; exit 3"]),
            &dir.file("server.log"),
        );
        process.wait_listening("a server", free_port(), Duration::from_secs(20));
    }
}
