use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use sqlx::migrate::MigrateDatabase;
use wa_broker::Topology;
use wa_core::Namespace;
use wa_loadgen::{Generator, Job, LoadReport, fire};

use crate::process::{Role, free_addr, micros_per, this_binary, wa_ingest_binary};
use crate::report::{HttpFigures, Ratios, Report, WorkerFigures};
use crate::{BenchArgs, Servers};

pub(crate) const SECRET: &str = "bench-app-secret";

pub(crate) async fn run_all(args: &BenchArgs) -> anyhow::Result<Report> {
    let wa_ingest = wa_ingest_binary()?;
    let (namespace, database_url) = bench_database(&args.servers, "bench").await?;
    let topology = default_topology(&namespace, wa_relay::DEFAULT_EVENT_SHARDS);
    let outcome = async {
        let run = Run::new(args, &wa_ingest, &namespace, &topology, &database_url).await?;
        let report = run.all_stages().await;
        run.pool.close().await;
        report
    }
    .await;
    cleanup(&args.servers, &namespace, &topology, &database_url).await;
    outcome
}

/// `wa-ingest bench --postgres-tls`: only the worker, plaintext against TLS.
pub(crate) async fn run_postgres_tls(
    args: &BenchArgs,
) -> anyhow::Result<crate::postgres_tls::TlsReport> {
    let wa_ingest = wa_ingest_binary()?;
    let (namespace, database_url) = bench_database(&args.servers, "bench").await?;
    let topology = default_topology(&namespace, wa_relay::DEFAULT_EVENT_SHARDS);
    let outcome = async {
        // The bench counts rows in plaintext, so that the TLS sessions it
        // sees are the worker's.
        let plain_url = crate::postgres_tls::with_sslmode(&database_url.parse()?, "disable");
        let run = Run::new(args, &wa_ingest, &namespace, &topology, &plain_url).await?;
        let report = crate::postgres_tls::compare(&run).await;
        run.pool.close().await;
        report
    }
    .await;
    cleanup(&args.servers, &namespace, &topology, &database_url).await;
    outcome
}

/// A fresh namespace (`{kind}_…`) and a database of its own on the server of
/// `DATABASE_URL`.
pub(crate) async fn bench_database(
    servers: &Servers,
    kind: &str,
) -> anyhow::Result<(Namespace, String)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let namespace: Namespace = format!("{kind}_{}", &id[..8])
        .parse()
        .map_err(anyhow::Error::msg)?;
    let mut database_url = servers.database.database_url.url().clone();
    database_url.set_path(&format!("/wa_{namespace}"));
    let database_url = database_url.to_string();
    sqlx::Postgres::create_database(&database_url)
        .await
        .context("cannot create the bench database")?;
    Ok((namespace, database_url))
}

/// The queues the roles declare with their default settings, over `shards`
/// event queues.
pub(crate) fn default_topology(namespace: &Namespace, shards: u16) -> Topology {
    Topology::new(namespace.clone())
        .with_retry_tiers(&wa_worker::default_retry_tiers())
        .with_event_shards(shards)
}

/// What every stage of one run shares.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a BenchArgs,
    /// The production binary the roles run from.
    wa_ingest: &'a Path,
    pub(crate) namespace: &'a Namespace,
    pub(crate) topology: &'a Topology,
    pub(crate) database_url: &'a str,
    /// Every node, for the roles.
    amqp_url: String,
    /// The first node, where the bench itself publishes and purges.
    pub(crate) first_node: String,
    /// A pool on the bench database, for counting rows.
    pool: sqlx::PgPool,
    client: reqwest::Client,
    /// Signed webhook bodies for the HTTP stages.
    jobs: Vec<Job>,
}

/// The worker stages: unique payloads, then every payload three times.
const WORKER_RUNS: &[(&str, usize)] = &[
    ("[4/8] worker, no duplicates", 1),
    ("[5/8] worker, every payload 3 times", 3),
];
const WORKER_RUNS_UNIQUE: &[(&str, usize)] = &[("[4/8] worker, no duplicates", 1)];

/// 512 signed payloads of the load generator's mix.
fn signed_jobs(namespace: &Namespace) -> Vec<Job> {
    let generator = Generator::new(format!("{namespace}http"), 200, 1);
    (0..512)
        .map(|i| {
            let body = generator.payload(i);
            let signature = wa_receiver::sign(SECRET, &body);
            (Arc::new(body), Arc::new(signature))
        })
        .collect()
}

/// One worker run: its figures, its peak RSS and how many of its sessions
/// on the bench database used TLS (counted before it stops).
pub(crate) struct Measured {
    pub(crate) figures: WorkerFigures,
    pub(crate) peak_rss: u64,
    pub(crate) tls_sessions: i64,
}

impl<'a> Run<'a> {
    async fn new(
        args: &'a BenchArgs,
        wa_ingest: &'a Path,
        namespace: &'a Namespace,
        topology: &'a Topology,
        database_url: &'a str,
    ) -> anyhow::Result<Self> {
        let pool = sqlx::PgPool::connect(database_url).await?;
        wa_store::migrate(&pool).await?;
        Ok(Run {
            args,
            wa_ingest,
            namespace,
            topology,
            database_url,
            amqp_url: args.servers.amqp.amqp_url.expose(),
            first_node: args.servers.amqp.amqp_url.first().expose().to_owned(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(args.concurrency)
                .build()?,
            jobs: signed_jobs(namespace),
            pool,
        })
    }
}

impl Run<'_> {
    async fn all_stages(&self) -> anyhow::Result<Report> {
        let mut report = Report {
            worker_prefetch: self.args.prefetch,
            concurrency: self.args.concurrency,
            ..Report::default()
        };
        if self.args.deliver_only {
            self.deliver(&mut report).await?;
            return Ok(report);
        }
        if self.args.worker_only {
            crate::postgres_tls::declare_topology(self).await?;
            self.worker(&mut report, WORKER_RUNS).await?;
            self.worker_already_stored(&mut report).await?;
            report.ratios = Ratios::of(&report);
            return Ok(report);
        }
        if self.args.relay_only {
            crate::postgres_tls::declare_topology(self).await?;
            self.worker(&mut report, WORKER_RUNS_UNIQUE).await?;
            self.relay(&mut report).await?;
            report.ratios = Ratios::of(&report);
            return Ok(report);
        }
        self.receiver(&mut report).await?;
        self.bare_handler(&mut report).await?;
        self.broker_ceiling(&mut report).await?;
        if self.args.receiver_only {
            report.ratios = Ratios::of(&report);
            return Ok(report);
        }
        self.worker(&mut report, WORKER_RUNS).await?;
        self.worker_already_stored(&mut report).await?;
        self.relay(&mut report).await?;
        self.deliver(&mut report).await?;
        report.ratios = Ratios::of(&report);
        Ok(report)
    }

    /// Starts `wa-ingest <role>` with `env`; ready once `/readyz` answers on `addr`.
    async fn role(
        &self,
        role: &str,
        mut env: HashMap<&'static str, String>,
        addr: SocketAddr,
    ) -> anyhow::Result<Role> {
        env.insert("AMQP_URL", self.amqp_url.clone());
        env.insert("WA_NAMESPACE", self.namespace.to_string());
        Role::start(self.wa_ingest, &[role], &env, addr).await
    }

    /// The HTTP load of the stage, at full speed or at a fixed rate.
    async fn load(&self, url: &str, rate: Option<f64>, duration: Duration) -> LoadReport {
        let concurrency = self.args.concurrency;
        fire(
            &self.client,
            url,
            self.jobs.clone(),
            concurrency,
            rate,
            Some(duration),
        )
        .await
    }

    async fn receiver(&self, report: &mut Report) -> anyhow::Result<()> {
        let duration = self.args.duration;
        eprintln!(
            "[1/8] receiver: {} in flight for {duration:?}",
            self.args.concurrency
        );
        let addr = free_addr()?;
        let env = HashMap::from([
            ("WA_APP_SECRET", SECRET.to_owned()),
            ("WA_VERIFY_TOKEN", "bench".to_owned()),
            ("LISTEN_ADDR", addr.to_string()),
        ]);
        let receiver = self.role("receiver", env, addr).await?;
        let url = format!("http://{addr}/webhooks/whatsapp");
        let cpu_before = receiver.cpu();
        let full = self.load(&url, None, duration).await;
        report.receiver = figures(&full);
        report.receiver_cpu_us_per_request = micros_per(receiver.cpu() - cpu_before, full.accepted);
        let half_rate = full.requests_per_second() / 2.0;
        let half = self.load(&url, Some(half_rate), duration / 2).await;
        report.receiver_p99_ms_at_half_rate = half.latency_ms(0.99);
        report.receiver_peak_rss_bytes = receiver.peak_rss().unwrap_or(0);
        receiver.stop().await;
        purge(&self.first_node, &self.topology.inbound()).await
    }

    async fn bare_handler(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!("[2/8] bare handler (HTTP ceiling)");
        let addr = free_addr()?;
        let args = ["bench", "--serve-bare", &addr.to_string()];
        let bare = Role::start(&this_binary()?, &args, &HashMap::new(), addr).await?;
        let url = format!("http://{addr}/webhooks/whatsapp");
        report.bare_handler = figures(&self.load(&url, None, self.args.duration).await);
        bare.stop().await;
        Ok(())
    }

    async fn broker_ceiling(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!("[3/8] broker ceiling: confirmed publishes and consume + ack");
        let ceiling = crate::broker::measure(
            &self.first_node,
            &ceiling_queue(self.namespace),
            self.jobs[0].0.clone(),
            self.args.concurrency,
            4,
            self.args.duration,
            self.args.prefetch,
        )
        .await?;
        report.broker_publish_per_second = ceiling.publish_per_second;
        report.broker_consume_ack_per_second = ceiling.consume_ack_per_second;
        Ok(())
    }

    /// The worker drains a filled queue once per run: `(stage, copies of
    /// every payload)`.
    async fn worker(&self, report: &mut Report, runs: &[(&str, usize)]) -> anyhow::Result<()> {
        let n = self.args.worker_payloads;
        for &(stage, copies) in runs {
            eprintln!("{stage}: {n} payloads of 3 events");
            let tag = format!("{}c{copies}", self.namespace);
            let measured = self
                .drain_with_worker(&tag, copies, self.database_url)
                .await?;
            report.worker_peak_rss_bytes = report.worker_peak_rss_bytes.max(measured.peak_rss);
            if copies == 1 {
                report.worker_unique = measured.figures;
            } else {
                report.worker_duplicates = measured.figures;
            }
        }
        Ok(())
    }

    /// The no-duplicates deliveries again: every event is claimed done
    /// already, so a delivery should cost one Redis round trip and nothing
    /// else.
    async fn worker_already_stored(&self, report: &mut Report) -> anyhow::Result<()> {
        let n = self.args.worker_payloads;
        eprintln!("[6/8] worker, every delivery already stored: {n} payloads");
        let bodies = worker_payloads(&format!("{}c1", self.namespace), n, 1);
        publish_all(&self.first_node, &self.topology.inbound(), &bodies).await?;
        let deliveries = bodies.len();
        let target = 3 * deliveries as i64;
        let run = self
            .run_worker(self.database_url, deliveries, |metrics| async move {
                // Found by their claims or, unparsed, by their bodies' markers.
                let duplicates =
                    metric_sum(metrics, "wa_events_total", "outcome=\"duplicate_").await;
                Ok(progress(duplicates as i64, 0, target))
            })
            .await?;
        report.worker_peak_rss_bytes = report.worker_peak_rss_bytes.max(run.peak_rss);
        report.worker_already_stored = run.figures(0);
        let stored_rows = wa_store::lookup::count_messages_and_statuses(&self.pool).await?;
        anyhow::ensure!(
            stored_rows == 6 * n as i64,
            "the worker stored {stored_rows} rows, not {}: a duplicate was stored",
            6 * n
        );
        Ok(())
    }

    /// One worker process storing `worker_payloads` payloads (each `copies`
    /// times) published before it starts, over `database_url`, timed from
    /// its first stored row.
    pub(crate) async fn drain_with_worker(
        &self,
        tag: &str,
        copies: usize,
        database_url: &str,
    ) -> anyhow::Result<Measured> {
        let n = self.args.worker_payloads;
        let bodies = worker_payloads(tag, n, copies);
        publish_all(&self.first_node, &self.topology.inbound(), &bodies).await?;
        let before = wa_store::lookup::count_messages_and_statuses(&self.pool).await?;
        let target = before + 3 * n as i64;
        let pool = &self.pool;
        let run = self
            .run_worker(database_url, bodies.len(), move |_| async move {
                let now = wa_store::lookup::count_messages_and_statuses(pool).await?;
                Ok(progress(now, before, target))
            })
            .await?;
        Ok(Measured {
            figures: run.figures(3 * n as u64),
            peak_rss: run.peak_rss,
            tls_sessions: run.tls_sessions,
        })
    }

    /// Starts a worker on the filled inbound queue and polls `progress`
    /// until it says done. The clock and the CPU count start with the first
    /// event: process start-up and connecting are not ingestion.
    async fn run_worker<F, Fut>(
        &self,
        database_url: &str,
        deliveries: usize,
        progress: F,
    ) -> anyhow::Result<WorkerRun>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<bool>>>,
    {
        let addr = free_addr()?;
        let env = HashMap::from([
            ("REDIS_URL", self.args.servers.redis.redis_url.expose()),
            ("DATABASE_URL", database_url.to_owned()),
            ("METRICS_ADDR", addr.to_string()),
            ("WA_PREFETCH", self.args.prefetch.to_string()),
        ]);
        let launched = Instant::now();
        let worker = self.role("worker", env, addr).await?;
        let mut started = None;
        loop {
            match progress(addr).await? {
                Some(true) => break,
                Some(false) if started.is_none() => {
                    started = Some((Instant::now(), worker.cpu()));
                }
                _ => {}
            }
            anyhow::ensure!(
                launched.elapsed() < Duration::from_secs(300),
                "the worker did not finish within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (clock, cpu) = started.unwrap_or((Instant::now(), worker.cpu()));
        let run = WorkerRun {
            deliveries,
            seconds: clock.elapsed().as_secs_f64().max(0.001),
            cpu: worker.cpu() - cpu,
            peak_rss: worker.peak_rss().unwrap_or(0),
            stage_seconds: stage_seconds(addr).await,
            tls_sessions: tls_sessions(&self.pool).await?,
        };
        worker.stop().await;
        Ok(run)
    }

    /// The worker runs left their downstream events in the outbox: release
    /// them all with the default reorder window (past for all of them after
    /// this pause) and time it. As for the worker, the clock and the CPU
    /// count start with the first release; progress is read from the relay's
    /// own counter, so that counting the outbox does not load the database
    /// the relay works on.
    async fn relay(&self, report: &mut Report) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pending = wa_store::outbox::count_unpublished(&self.pool).await?;
        eprintln!("[7/8] relay: release {pending} outbox events");
        let addr = free_addr()?;
        let env = HashMap::from([
            ("DATABASE_URL", self.database_url.to_owned()),
            ("METRICS_ADDR", addr.to_string()),
        ]);
        let launched = Instant::now();
        let relay = self.role("relay", env, addr).await?;
        let (mut clock, mut cpu_before) = (Instant::now(), relay.cpu());
        loop {
            let released = metric_sum(addr, "wa_relay_events_total", "").await;
            if released >= pending as f64 {
                break;
            }
            if released == 0.0 {
                // Still starting: the first release has not committed yet.
                (clock, cpu_before) = (Instant::now(), relay.cpu());
            }
            anyhow::ensure!(
                launched.elapsed() < Duration::from_secs(300),
                "the relay did not finish within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = clock.elapsed().as_secs_f64().max(0.001);
        let relay_cpu = relay.cpu() - cpu_before;
        report.relay_peak_rss_bytes = relay.peak_rss().unwrap_or(0);
        relay.stop().await;
        let left = wa_store::outbox::count_unpublished(&self.pool).await?;
        anyhow::ensure!(left == 0, "the relay left {left} events unpublished");
        report.relay_events = u64::try_from(pending).unwrap_or(0);
        report.relay_events_per_second = pending as f64 / seconds;
        report.relay_cpu_us_per_event = micros_per(relay_cpu, report.relay_events);
        Ok(())
    }

    /// HTTP delivery to a local endpoint by a real `wa-ingest deliver`.
    async fn deliver(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!(
            "[8/8] deliver: {} events in 100 conversations to a local endpoint",
            self.args.deliver_events
        );
        report.deliver = crate::deliver::measure(
            self.wa_ingest,
            &self.pool,
            self.database_url,
            self.args.deliver_events,
            100,
        )
        .await?;
        Ok(())
    }
}

/// Where a worker run stands: `Some(true)` once done, `Some(false)` once
/// started (the clock starts with the first event), `None` before.
fn progress(now: i64, before: i64, target: i64) -> Option<bool> {
    (now > before).then_some(now >= target)
}

/// One worker process from its first event to its last.
struct WorkerRun {
    deliveries: usize,
    seconds: f64,
    cpu: Duration,
    peak_rss: u64,
    stage_seconds: std::collections::BTreeMap<String, f64>,
    /// Its sessions on the bench database that used TLS (counted before it
    /// stopped).
    tls_sessions: i64,
}

impl WorkerRun {
    fn figures(&self, unique_events: u64) -> WorkerFigures {
        WorkerFigures {
            deliveries: self.deliveries as u64,
            unique_events,
            seconds: self.seconds,
            deliveries_per_second: self.deliveries as f64 / self.seconds,
            unique_events_per_second: unique_events as f64 / self.seconds,
            cpu_us_per_delivery: micros_per(self.cpu, self.deliveries as u64),
            cpu_us_per_event: micros_per(self.cpu, unique_events),
            stage_seconds: self.stage_seconds.clone(),
        }
    }
}

/// The sum of a counter over the series whose labels contain `filter`, from
/// a role's /metrics.
pub(crate) async fn metric_sum(addr: SocketAddr, name: &str, filter: &str) -> f64 {
    let text = match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(filter))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sessions on this pool's database that use TLS.
async fn tls_sessions(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// The bench's own queue for the broker ceiling (not part of the topology).
fn ceiling_queue(namespace: &Namespace) -> String {
    namespace.amqp("ceiling")
}

/// Seconds the worker spent in each stage of its batches (summed over
/// concurrent batches), from its own `wa_stage_seconds` histogram.
async fn stage_seconds(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let text = match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("wa_stage_seconds_sum{stage=\"")?;
            let (stage, value) = rest.split_once("\"} ")?;
            Some((stage.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn figures(load: &LoadReport) -> HttpFigures {
    HttpFigures {
        requests: load.requests,
        errors: load.rejected,
        per_second: load.requests_per_second(),
        p50_ms: load.latency_ms(0.5),
        p90_ms: load.latency_ms(0.9),
        p99_ms: load.latency_ms(0.99),
        max_ms: load.latency_ms(1.0),
    }
}

/// `n` payloads of one inbound message and two statuses, each `copies` times
/// in a row (Meta's duplicates come close together).
fn worker_payloads(tag: &str, n: usize, copies: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::with_capacity(n * copies);
    for i in 0..n {
        let body = soak_payload(tag, i, 500);
        for _ in 0..copies {
            bodies.push(body.clone());
        }
    }
    bodies
}

/// Payload `i` of a run: one inbound message from one of `contacts` users
/// and two statuses of a business message to them; 3 events, about 1 KB.
pub(crate) fn soak_payload(tag: &str, i: usize, contacts: usize) -> Vec<u8> {
    let wa_id = format!("4915{:08}", i % contacts.max(1));
    let ts = 1_760_000_000 + i as i64;
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Bench User"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": format!("wamid.{tag}.in.{i}"), "timestamp": ts.to_string(),
                          "type": "text", "text": {"body": "Where is my order? It was due yesterday."}}],
            "statuses": [
                {"id": format!("wamid.{tag}.out.{i}"), "status": "sent", "timestamp": ts.to_string(), "recipient_id": wa_id,
                 "conversation": {"id": "c", "origin": {"type": "service"}}, "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"}},
                {"id": format!("wamid.{tag}.out.{i}"), "status": "delivered", "timestamp": (ts + 1).to_string(), "recipient_id": wa_id}
            ]}}]}]
    }))
    .unwrap_or_default()
}

async fn publish_all(url: &str, exchange: &str, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    for chunk in bodies.chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for body in chunk {
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            anyhow::ensure!(
                confirm.await?.is_ack(),
                "the broker refused a bench message"
            );
        }
    }
    let _ = connection.close(200, "filled".into()).await;
    Ok(())
}

async fn purge(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = connection.close(200, "purged".into()).await;
    Ok(())
}

pub(crate) async fn cleanup(
    servers: &Servers,
    namespace: &Namespace,
    topology: &Topology,
    database_url: &str,
) {
    if let Ok(connection) = Connection::connect(
        servers.amqp.amqp_url.first().expose(),
        ConnectionProperties::default(),
    )
    .await
        && let Ok(channel) = connection.create_channel().await
    {
        let queues = topology
            .queues()
            .into_iter()
            .chain([ceiling_queue(namespace)]);
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in topology.exchanges() {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
        let _ = connection.close(200, "bench cleaned up".into()).await;
    }
    let _ = delete_redis_keys(servers, namespace).await;
    let _ = sqlx::Postgres::force_drop_database(database_url).await;
}

/// The run's claim markers (24 h TTL) would outlive it: delete them.
async fn delete_redis_keys(servers: &Servers, namespace: &Namespace) -> redis::RedisResult<()> {
    let client = redis::Client::open(servers.redis.redis_url.first().expose())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(namespace.redis("*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
