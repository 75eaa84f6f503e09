use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use sqlx::migrate::MigrateDatabase;
use wa_loadgen::{Generator, Job, LoadReport, fire};

use crate::process::{Role, free_addr, micros_per, this_binary, wa_ingest_binary};
use crate::report::{HttpFigures, Ratios, Report, WorkerFigures};
use crate::{BenchArgs, Servers};

pub(crate) const SECRET: &str = "bench-app-secret";

pub async fn run_all(args: &BenchArgs) -> anyhow::Result<Report> {
    let wa_ingest = wa_ingest_binary()?;
    let (namespace, database_url) = bench_database(&args.servers, "bench").await?;
    let outcome = stages(args, &wa_ingest, &namespace, &database_url).await;
    cleanup(&args.servers, &namespace, &database_url, 4).await;
    outcome
}

/// A namespace of its own and a database named after it.
pub(crate) async fn bench_database(
    servers: &Servers,
    kind: &str,
) -> anyhow::Result<(String, String)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let namespace = format!("{kind}_{}", &id[..8]);
    let mut database_url = servers.database.database_url.url().clone();
    database_url.set_path(&format!("/wa_{namespace}"));
    let database_url = database_url.to_string();
    sqlx::Postgres::create_database(&database_url)
        .await
        .context("cannot create the bench database")?;
    Ok((namespace, database_url))
}

async fn stages(
    args: &BenchArgs,
    wa_ingest: &Path,
    namespace: &str,
    database_url: &str,
) -> anyhow::Result<Report> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    wa_store::migrate(&pool).await?;
    let amqp_url = args.servers.amqp.amqp_url.expose().to_owned();
    let mut report = Report {
        worker_prefetch: args.prefetch,
        concurrency: args.concurrency,
        ..Report::default()
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let generator = Generator::new(format!("{namespace}http"), 200, 1);
    let jobs: Vec<Job> = (0..512)
        .map(|i| {
            let body = generator.payload(i);
            let signature = wa_receiver::sign(SECRET, &body);
            (Arc::new(body), Arc::new(signature))
        })
        .collect();

    eprintln!(
        "[1/7] receiver: {} in flight for {:?}",
        args.concurrency, args.duration
    );
    let addr = free_addr()?;
    let env = HashMap::from([
        ("AMQP_URL", amqp_url.clone()),
        ("WA_NAMESPACE", namespace.to_owned()),
        ("WA_APP_SECRET", SECRET.to_owned()),
        ("WA_VERIFY_TOKEN", "bench".to_owned()),
        ("LISTEN_ADDR", addr.to_string()),
    ]);
    let receiver = Role::start(wa_ingest, &["receiver"], &env, addr).await?;
    let url = format!("http://{addr}/webhooks/whatsapp");
    let cpu_before = receiver.cpu();
    let full = fire(
        &client,
        &url,
        jobs.clone(),
        args.concurrency,
        None,
        Some(args.duration),
    )
    .await;
    report.receiver = figures(&full);
    report.receiver_cpu_us_per_request = micros_per(receiver.cpu() - cpu_before, full.accepted);
    let half_rate = full.requests_per_second() / 2.0;
    let half = fire(
        &client,
        &url,
        jobs.clone(),
        args.concurrency,
        Some(half_rate),
        Some(args.duration / 2),
    )
    .await;
    report.receiver_p99_ms_at_half_rate = half.latency_ms(0.99);
    report.receiver_peak_rss_bytes = receiver.peak_rss().unwrap_or(0);
    receiver.stop().await;
    purge(&amqp_url, &format!("{namespace}.inbound")).await?;

    eprintln!("[2/7] bare handler (HTTP ceiling)");
    let addr = free_addr()?;
    let bare = Role::start(
        &this_binary()?,
        &["bench", "--serve-bare", &addr.to_string()],
        &HashMap::new(),
        addr,
    )
    .await?;
    let bare_url = format!("http://{addr}/webhooks/whatsapp");
    report.bare_handler = figures(
        &fire(
            &client,
            &bare_url,
            jobs.clone(),
            args.concurrency,
            None,
            Some(args.duration),
        )
        .await,
    );
    bare.stop().await;

    eprintln!("[3/7] broker ceiling: confirmed publishes and consume + ack");
    let typical = jobs[0].0.clone();
    let ceiling = crate::broker::measure(
        &amqp_url,
        &format!("{namespace}.ceiling"),
        typical,
        args.concurrency,
        4,
        args.duration,
        args.prefetch,
    )
    .await?;
    report.broker_publish_per_second = ceiling.publish_per_second;
    report.broker_consume_ack_per_second = ceiling.consume_ack_per_second;

    let worker_env = |metrics: std::net::SocketAddr| {
        HashMap::from([
            ("AMQP_URL", amqp_url.clone()),
            (
                "REDIS_URL",
                args.servers.redis.redis_url.expose().to_owned(),
            ),
            ("DATABASE_URL", database_url.to_owned()),
            ("WA_NAMESPACE", namespace.to_owned()),
            ("METRICS_ADDR", metrics.to_string()),
            ("WA_PREFETCH", args.prefetch.to_string()),
        ])
    };
    let n = args.worker_payloads;
    let mut peak_rss = 0;
    let mut new_bodies = Vec::new();
    for (stage, copies) in [
        ("[4/7] worker, no duplicates", 1),
        ("[5/7] worker, every payload 3 times", 3),
    ] {
        eprintln!("{stage}: {n} payloads of 3 events");
        let bodies = worker_payloads(&format!("{namespace}c{copies}"), n, copies);
        publish_all(&amqp_url, &format!("{namespace}.inbound"), &bodies).await?;
        let before = stored(&pool).await?;
        let target = before + 3 * n as i64;
        let pool = &pool;
        let run = run_worker(wa_ingest, &worker_env, bodies.len(), move |_| async move {
            Ok(progress(stored(pool).await?, before, target))
        })
        .await?;
        peak_rss = peak_rss.max(run.peak_rss);
        if copies == 1 {
            report.worker_unique = run.figures(3 * n as u64);
            new_bodies = bodies;
        } else {
            report.worker_duplicates = run.figures(3 * n as u64);
        }
    }
    // The same deliveries again: every event is claimed done already, so a
    // delivery should cost one Redis round trip and nothing else.
    eprintln!("[6/7] worker, every delivery already stored: {n} payloads");
    publish_all(&amqp_url, &format!("{namespace}.inbound"), &new_bodies).await?;
    let deliveries = new_bodies.len();
    let run = run_worker(wa_ingest, &worker_env, deliveries, |metrics| async move {
        let duplicates =
            metric_sum(metrics, "wa_events_total", "outcome=\"duplicate_claim\"").await;
        Ok(progress(duplicates as i64, 0, 3 * deliveries as i64))
    })
    .await?;
    peak_rss = peak_rss.max(run.peak_rss);
    report.worker_already_stored = run.figures(0);
    let stored_rows = stored(&pool).await?;
    anyhow::ensure!(
        stored_rows == 6 * n as i64,
        "the worker stored {stored_rows} rows, not {}: a duplicate was stored",
        6 * n
    );
    report.worker_peak_rss_bytes = peak_rss;

    // The worker runs left their downstream events in the outbox: release
    // them all with the default reorder window (past for all of them after
    // this pause) and time it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending = unpublished(&pool).await?;
    eprintln!("[7/7] relay: release {pending} outbox events");
    let addr = free_addr()?;
    let relay_env = HashMap::from([
        ("AMQP_URL", amqp_url.clone()),
        ("DATABASE_URL", database_url.to_owned()),
        ("WA_NAMESPACE", namespace.to_owned()),
        ("METRICS_ADDR", addr.to_string()),
    ]);
    let started = Instant::now();
    let relay = Role::start(wa_ingest, &["relay"], &relay_env, addr).await?;
    let cpu_before = relay.cpu();
    while unpublished(&pool).await? > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the relay did not finish within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let relay_cpu = relay.cpu() - cpu_before;
    report.relay_peak_rss_bytes = relay.peak_rss().unwrap_or(0);
    relay.stop().await;
    report.relay_events = u64::try_from(pending).unwrap_or(0);
    report.relay_events_per_second = pending as f64 / seconds;
    report.relay_cpu_us_per_event = micros_per(relay_cpu, report.relay_events);
    pool.close().await;

    let ceiling = report
        .bare_handler
        .per_second
        .min(report.broker_publish_per_second);
    report.ratios = Ratios {
        receiver_vs_ceiling: report.receiver.per_second / ceiling,
        worker_vs_consume_ceiling: report.worker_unique.deliveries_per_second
            / report.broker_consume_ack_per_second,
        duplicates_vs_unique: report.worker_duplicates.unique_events_per_second
            / report.worker_unique.unique_events_per_second,
        relay_vs_worker: report.relay_events_per_second
            / report.worker_unique.unique_events_per_second,
        stored_vs_new_delivery_cpu: report.worker_already_stored.cpu_us_per_delivery
            / report.worker_unique.cpu_us_per_delivery,
    };
    Ok(report)
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

/// Starts a worker on the filled inbound queue and polls `progress` until
/// it says done. The clock and the CPU count start with the first event:
/// process start-up and connecting are not ingestion.
async fn run_worker<F, Fut>(
    wa_ingest: &Path,
    env: &dyn Fn(std::net::SocketAddr) -> HashMap<&'static str, String>,
    deliveries: usize,
    progress: F,
) -> anyhow::Result<WorkerRun>
where
    F: Fn(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<bool>>>,
{
    let addr = free_addr()?;
    let launched = Instant::now();
    let worker = Role::start(wa_ingest, &["worker"], &env(addr), addr).await?;
    let mut started = None;
    loop {
        match progress(addr).await? {
            Some(true) => break,
            Some(false) if started.is_none() => started = Some((Instant::now(), worker.cpu())),
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
    };
    worker.stop().await;
    Ok(run)
}

/// The sum of a counter over the series whose labels contain `filter`, from
/// a role's /metrics.
pub(crate) async fn metric_sum(addr: std::net::SocketAddr, name: &str, filter: &str) -> f64 {
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

/// Seconds the worker spent in each stage of its batches (summed over
/// concurrent batches), from its own `wa_stage_seconds` histogram.
async fn stage_seconds(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
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

pub(crate) async fn unpublished(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

pub(crate) async fn stored(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM message_statuses)",
    )
    .fetch_one(pool)
    .await?)
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

pub(crate) async fn cleanup(servers: &Servers, namespace: &str, database_url: &str, shards: u16) {
    if let Ok(connection) = Connection::connect(
        servers.amqp.amqp_url.expose(),
        ConnectionProperties::default(),
    )
    .await
        && let Ok(channel) = connection.create_channel().await
    {
        let fixed = [
            "inbound",
            "dlq",
            "retry.5s",
            "retry.30s",
            "retry.2m",
            "retry.10m",
            "retry.1h",
            "ceiling",
        ];
        let shards = (0..shards).map(|i| format!("events.{i}"));
        for queue in fixed.iter().map(|q| (*q).to_owned()).chain(shards) {
            let _ = channel
                .queue_delete(
                    format!("{namespace}.{queue}").as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        for exchange in ["inbound", "events"] {
            let _ = channel
                .exchange_delete(
                    format!("{namespace}.{exchange}").as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = connection.close(200, "bench cleaned up".into()).await;
    }
    let _ = delete_redis_keys(servers, namespace).await;
    let _ = sqlx::Postgres::force_drop_database(database_url).await;
}

/// The run's claim markers (24 h TTL) would outlive it: delete them.
async fn delete_redis_keys(servers: &Servers, namespace: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(servers.redis.redis_url.expose())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
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
