//! One test's private slice of the shared servers.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use wa_core::Namespace;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// The retry tiers of test workers: short, so that retries finish in a test.
pub const TEST_RETRY_TIERS: &str = "100ms,200ms,300ms";

/// Tiers a test worker takes after [`TEST_RETRY_TIERS`] when rows stay held
/// for the server's 30-s bound on an idle transaction. Each attempt behind
/// a held row waits 5 s for its lock, so the short tiers alone spend a
/// delivery's four attempts in about 20 s and dead-letter it; with these
/// its sixth attempt comes a minute after the first at the earliest.
pub const PATIENT_RETRY_TIERS: &str = "5s,30s";

/// Event shard queues of test relays.
pub const TEST_EVENT_SHARDS: u16 = 4;

/// Overridable for a CI with servers elsewhere.
fn server(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

pub struct TestEnv {
    pub namespace: Namespace,
    pub amqp_url: String,
    pub redis_url: String,
    pub database_url: String,
    pub db: PgPool,
    pub amqp: Connection,
}

impl TestEnv {
    /// A fresh namespace (exchanges, queues, Redis keys) and a fresh,
    /// migrated database. Panics, naming the server, if one is missing.
    pub async fn new() -> Self {
        Self::create(true, None, None).await
    }

    /// Like [`TestEnv::new`], with RabbitMQ at `amqp_url` (a node of a test
    /// cluster) instead of the shared broker.
    pub async fn on_broker(amqp_url: &str) -> Self {
        Self::create(true, Some(amqp_url.to_owned()), None).await
    }

    /// Like [`TestEnv::new`], with the database on the PostgreSQL server at
    /// `postgres_url` (a test's own) instead of the shared one.
    pub async fn on_postgres(postgres_url: &str) -> Self {
        Self::create(true, None, Some(postgres_url.to_owned())).await
    }

    /// Like [`TestEnv::new`], with an empty database: for tests that apply
    /// the migrations themselves.
    pub async fn unmigrated() -> Self {
        Self::create(false, None, None).await
    }

    async fn create(
        migrated: bool,
        amqp_url: Option<String>,
        postgres_url: Option<String>,
    ) -> Self {
        // Quiet unless asked: WA_TEST_LOG=1 (with RUST_LOG to filter).
        if std::env::var_os("WA_TEST_LOG").is_some() {
            wa_core::telemetry::init_logging(wa_core::telemetry::LogFormat::Pretty);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let namespace: Namespace = format!("t_{}", &id[..12]).parse().expect("valid namespace");
        let amqp_url = amqp_url.unwrap_or_else(|| server("WA_TEST_AMQP_URL", AMQP_URL));
        let redis_url = server("WA_TEST_REDIS_URL", REDIS_URL);
        let postgres_url =
            postgres_url.unwrap_or_else(|| server("WA_TEST_POSTGRES_URL", POSTGRES_URL));
        let database_url = format!("{postgres_url}/wa_{namespace}");

        let amqp = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is required at {amqp_url}: {e}"));
        let redis = redis::Client::open(redis_url.as_str()).expect("valid Redis URL");
        redis
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis is required at {redis_url}: {e}"));
        sqlx::Postgres::create_database(&database_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required at {database_url}: {e}"));
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await
            .expect("connect to the test database");
        if migrated {
            wa_store::migrate(&db).await.expect("migrations apply");
        }
        // Declared up front, as any role would, so a test can publish first.
        let channel = amqp.create_channel().await.expect("channel");
        Self::topology(&namespace)
            .declare(&channel)
            .await
            .expect("declare the topology");
        let _ = channel.close(200, "".into()).await;
        Self {
            namespace,
            amqp_url,
            redis_url,
            database_url,
            db,
            amqp,
        }
    }

    /// The topology test workers use.
    pub fn topology(namespace: &Namespace) -> wa_broker::Topology {
        let tiers: Vec<Duration> = TEST_RETRY_TIERS
            .split(',')
            .map(|t| wa_core::config::parse_duration(t).expect("test tier"))
            .collect();
        wa_broker::Topology::new(namespace.clone())
            .with_retry_tiers(&tiers)
            .with_event_shards(TEST_EVENT_SHARDS)
    }

    pub fn queue(&self, suffix: &str) -> String {
        self.namespace.amqp(suffix)
    }

    /// Messages ready in a queue (not counting those delivered and unacked).
    pub async fn queue_depth(&self, suffix: &str) -> u32 {
        self.queue_counts(suffix)
            .await
            .map_or(0, |queue| queue.message_count())
    }

    /// Consumers of a queue.
    pub async fn queue_consumers(&self, suffix: &str) -> u32 {
        self.queue_counts(suffix)
            .await
            .map_or(0, |queue| queue.consumer_count())
    }

    /// A passive declare: the queue's counts, or `None` when it does not exist.
    async fn queue_counts(&self, suffix: &str) -> Option<lapin::Queue> {
        let channel = self.amqp.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                self.queue(suffix).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = channel.close(200, "".into()).await;
        queue
    }

    /// Waits until a queue holds `depth` ready messages: quorum queues count
    /// returned (unacked, then released) messages a moment later.
    pub async fn wait_for_depth(&self, suffix: &str, depth: u32) {
        crate::eventually(
            &format!("{suffix} to hold {depth}"),
            Duration::from_secs(30),
            || async {
                match self.queue_depth(suffix).await {
                    d if d == depth => Ok(()),
                    d => Err(d.to_string()),
                }
            },
        )
        .await;
    }

    /// Publishes raw bytes to `{ns}.inbound` with a confirm, as the receiver would.
    pub async fn publish_inbound(&self, body: &[u8]) {
        self.publish(&self.queue("inbound"), "", body).await;
    }

    /// Publishes every body to `{ns}.inbound` at the same moment (each on
    /// its own channel, all released by one barrier), as Meta's concurrent
    /// redeliveries arrive.
    pub async fn publish_inbound_at_once(&self, bodies: &[&Vec<u8>]) {
        let gate = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
        futures_util::future::join_all(bodies.iter().map(|body| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                self.publish_inbound(body).await;
            }
        }))
        .await;
    }

    /// `wa-ingest <args>` as a process of its own on this test's servers
    /// and namespace, as a user runs the binary; `binary` is the test's
    /// `env!("CARGO_BIN_EXE_wa-ingest")`. Killed when dropped.
    pub fn process(&self, binary: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .env("WA_NAMESPACE", self.namespace.as_str())
            .env("AMQP_URL", &self.amqp_url)
            .env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `wa-ingest worker` as a process of its own, for tests that signal or
    /// kill it. Output goes nowhere.
    pub fn worker_process(&self, binary: &str) -> tokio::process::Command {
        let mut command = self.process(binary, &["worker"]);
        command
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("WA_RETRY_TIERS", TEST_RETRY_TIERS)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    /// Publishes many bodies to `{ns}.inbound` on one channel, confirms
    /// awaited together.
    pub async fn publish_inbound_all(&self, bodies: &[Vec<u8>]) {
        self.publish_all_with(
            &self.queue("inbound"),
            "",
            bodies,
            BasicProperties::default(),
        )
        .await;
    }

    /// Publishes many bodies with the same properties on one channel,
    /// confirms awaited together.
    pub async fn publish_all_with(
        &self,
        exchange: &str,
        routing_key: &str,
        bodies: &[Vec<u8>],
        properties: BasicProperties,
    ) {
        let channel = self.confirm_channel().await;
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        let _ = channel.close(200, "".into()).await;
    }

    /// A channel of its own in confirm mode.
    async fn confirm_channel(&self) -> lapin::Channel {
        let channel = self.amqp.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        channel
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        self.publish_with(exchange, routing_key, body, BasicProperties::default())
            .await;
    }

    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let channel = self.confirm_channel().await;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "publish to {exchange} not routed"
        );
        let _ = channel.close(200, "".into()).await;
    }

    /// Takes every message now in a queue (acking them), in order.
    pub async fn drain(&self, suffix: &str) -> Vec<lapin::message::BasicGetMessage> {
        let channel = self.amqp.create_channel().await.expect("channel");
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.queue(suffix).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            messages.push(message);
        }
        let _ = channel.close(200, "".into()).await;
        messages
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits (`limit` at most) until `sql`, a `count(*)`, gives `expected`.
    pub async fn wait_for_count(
        &self,
        what: &str,
        sql: &'static str,
        expected: i64,
        limit: Duration,
    ) {
        crate::eventually(what, limit, || async {
            match self.count(sql).await {
                n if n == expected => Ok(()),
                n => Err(n.to_string()),
            }
        })
        .await;
    }

    /// Rows in `messages` and `message_statuses`.
    pub async fn stored_rows(&self) -> (i64, i64) {
        (
            self.count("SELECT count(*) FROM messages").await,
            self.count("SELECT count(*) FROM message_statuses").await,
        )
    }

    /// Messages waiting for a worker: in the inbound queue and the retry tiers.
    pub async fn queued_for_workers(&self) -> u32 {
        let mut queued = self.queue_depth("inbound").await;
        for tier in TEST_RETRY_TIERS.split(',') {
            queued += self.queue_depth(&format!("retry.{tier}")).await;
        }
        queued
    }

    /// Waits until the tables hold `expected` rows and the inbound and retry
    /// queues are empty, so that nothing is left to change the counts; then
    /// checks the rows once more after a pause.
    pub async fn settled(&self, expected: (i64, i64)) {
        crate::eventually(
            "all rows stored and queues empty",
            Duration::from_secs(60),
            || async {
                let now = self.stored_rows().await;
                let queued = self.queued_for_workers().await;
                if now == expected && queued == 0 {
                    Ok(())
                } else {
                    Err(format!("rows {now:?}, queued {queued}"))
                }
            },
        )
        .await;
        // Give a straggler the chance to show itself before counting exactly.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.stored_rows().await, expected);
    }

    /// The name of the test's database.
    pub fn database_name(&self) -> &str {
        self.database_url
            .rsplit_once('/')
            .map_or("", |(_, name)| name)
    }

    /// A connection to the server's maintenance database, for statements
    /// about this test's own database and roles (ALTER DATABASE, CREATE
    /// ROLE) that must not run inside it.
    pub async fn admin(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        let url = format!("{}/postgres", server("WA_TEST_POSTGRES_URL", POSTGRES_URL));
        sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required at {url}: {e}"))
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis connection")
    }
}

/// Whatever a test leaves behind is removed when its `TestEnv` goes, even
/// when the test panicked: the namespace's queues and Redis keys, and its
/// database. Runs on a thread of its own, with its own runtime and
/// connections, because `Drop` cannot await.
impl Drop for TestEnv {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        let amqp_url = self.amqp_url.clone();
        let redis_url = self.redis_url.clone();
        let database_url = self.database_url.clone();
        run_cleanup(async move { cleanup(&namespace, &amqp_url, &redis_url, &database_url).await });
    }
}

/// Runs `work` to completion (15 s at most) on a thread of its own, with its
/// own runtime, because `Drop` cannot await and may run during a panic.
fn run_cleanup(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(15), work).await;
        });
    });
    let _ = cleanup.join();
}

/// A login role of this test's own, allowed to read and write the test's
/// database; dropped (with its grants) when the value goes, even on panic.
pub struct TestRole {
    pub name: String,
    /// The test's database, reached as this role.
    pub database_url: String,
    admin_url: String,
}

impl TestRole {
    pub async fn create(env: &TestEnv) -> Self {
        let name = format!("{}_writer", env.namespace);
        let mut admin = env.admin().await;
        execute(&mut admin, format!("CREATE ROLE {name} LOGIN")).await;
        execute(
            &mut admin,
            format!(
                "GRANT CONNECT ON DATABASE {} TO {name}",
                env.database_name()
            ),
        )
        .await;
        let mut db = env.db.acquire().await.expect("connection");
        for grant in [
            format!("GRANT USAGE ON SCHEMA public TO {name}"),
            format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {name}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}"),
        ] {
            execute(&mut db, grant).await;
        }
        let server = server("WA_TEST_POSTGRES_URL", POSTGRES_URL);
        let database_url = env
            .database_url
            .replacen("postgres@", &format!("{name}@"), 1);
        assert_ne!(
            database_url, env.database_url,
            "the test URL names its user"
        );
        Self {
            name,
            database_url,
            admin_url: format!("{server}/postgres"),
        }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        let database_url = self
            .database_url
            .replacen(&format!("{name}@"), "postgres@", 1);
        run_cleanup(async move {
            use sqlx::Connection;
            for (url, statements) in [
                (database_url, vec![format!("DROP OWNED BY {name}")]),
                (
                    admin_url,
                    vec![
                        format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
                        ),
                        format!("DROP ROLE IF EXISTS {name}"),
                    ],
                ),
            ] {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&url).await {
                    for statement in statements {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                            .execute(&mut connection)
                            .await;
                    }
                }
            }
        });
    }
}

/// Runs one statement built at run time from names of this test's own.
pub async fn execute(connection: &mut sqlx::PgConnection, statement: String) {
    sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
        .execute(connection)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn cleanup(namespace: &Namespace, amqp_url: &str, redis_url: &str, database_url: &str) {
    if let Ok(connection) = Connection::connect(amqp_url, ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        let mut queues = vec!["inbound".to_owned(), "dlq".to_owned()];
        queues.extend(
            TEST_RETRY_TIERS
                .split(',')
                .chain(PATIENT_RETRY_TIERS.split(','))
                .map(|t| format!("retry.{t}")),
        );
        queues.extend((0..TEST_EVENT_SHARDS).map(|i| format!("events.{i}")));
        for queue in queues {
            let _ = channel
                .queue_delete(
                    namespace.amqp(&queue).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = channel
            .exchange_delete(
                namespace.amqp("inbound").as_str().into(),
                Default::default(),
            )
            .await;
        let _ = connection.close(200, "".into()).await;
    }
    if let Ok(client) = redis::Client::open(redis_url)
        && let Ok(mut redis) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{namespace}:*"))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await;
        }
    }
    let _ = sqlx::Postgres::force_drop_database(database_url).await;
}
