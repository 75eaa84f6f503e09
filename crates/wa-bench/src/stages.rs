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

use crate::BenchArgs;
use crate::process::{Role, free_addr, this_binary, wa_ingest_binary};
use crate::report::{HttpFigures, Ratios, Report, WorkerFigures};

const SECRET: &str = "bench-app-secret";

pub async fn run_all(args: &BenchArgs) -> anyhow::Result<Report> {
    let wa_ingest = wa_ingest_binary()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let namespace = format!("bench_{}", &id[..8]);
    let mut database_url = args.database.database_url.url().clone();
    database_url.set_path(&format!("/wa_{namespace}"));
    let database_url = database_url.to_string();
    sqlx::Postgres::create_database(&database_url)
        .await
        .context("cannot create the bench database")?;
    let outcome = stages(args, &wa_ingest, &namespace, &database_url).await;
    cleanup(args, &namespace, &database_url).await;
    outcome
}

async fn stages(
    args: &BenchArgs,
    wa_ingest: &Path,
    namespace: &str,
    database_url: &str,
) -> anyhow::Result<Report> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    wa_store::migrate(&pool).await?;
    let amqp_url = args.amqp.amqp_url.expose().to_owned();
    let mut report = Report {
        worker_prefetch: args.prefetch,
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
        "[1/6] receiver: {} in flight for {:?}",
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

    eprintln!("[2/6] bare handler (HTTP ceiling)");
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

    eprintln!("[3/6] broker ceiling: confirmed publishes and consume + ack");
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
            ("REDIS_URL", args.redis.redis_url.expose().to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("WA_NAMESPACE", namespace.to_owned()),
            ("METRICS_ADDR", metrics.to_string()),
            ("WA_PREFETCH", args.prefetch.to_string()),
        ])
    };
    let n = args.worker_payloads;
    let mut peak_rss = 0;
    for (stage, copies) in [
        ("[4/6] worker, no duplicates", 1),
        ("[5/6] worker, every payload 3 times", 3),
    ] {
        eprintln!("{stage}: {n} payloads of 3 events");
        let bodies = worker_payloads(&format!("{namespace}c{copies}"), n, copies);
        publish_all(&amqp_url, &format!("{namespace}.inbound"), &bodies).await?;
        let before = stored(&pool).await?;
        let addr = free_addr()?;
        let launched = Instant::now();
        let worker = Role::start(wa_ingest, &["worker"], &worker_env(addr), addr).await?;
        // The clock starts with the first stored row: process start-up and
        // connecting are not ingestion.
        let mut started = None;
        let target = before + 3 * n as i64;
        loop {
            let now = stored(&pool).await?;
            if now > before && started.is_none() {
                started = Some(Instant::now());
            }
            if now >= target {
                break;
            }
            anyhow::ensure!(
                launched.elapsed() < Duration::from_secs(300),
                "the worker did not finish within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seconds = started
            .map_or(0.0, |s| s.elapsed().as_secs_f64())
            .max(0.001);
        peak_rss = peak_rss.max(worker.peak_rss().unwrap_or(0));
        let stages = stage_seconds(addr).await;
        worker.stop().await;
        let figures = WorkerFigures {
            deliveries: bodies.len() as u64,
            unique_events: 3 * n as u64,
            seconds,
            deliveries_per_second: bodies.len() as f64 / seconds,
            unique_events_per_second: 3.0 * n as f64 / seconds,
            stage_seconds: stages,
        };
        if copies == 1 {
            report.worker_unique = figures;
        } else {
            report.worker_duplicates = figures;
        }
    }
    report.worker_peak_rss_bytes = peak_rss;

    // The worker runs left their downstream events in the outbox: release
    // them all with no reorder window and time it.
    let pending = unpublished(&pool).await?;
    eprintln!("[6/6] relay: release {pending} outbox events");
    let addr = free_addr()?;
    let relay_env = HashMap::from([
        ("AMQP_URL", amqp_url.clone()),
        ("DATABASE_URL", database_url.to_owned()),
        ("WA_NAMESPACE", namespace.to_owned()),
        ("METRICS_ADDR", addr.to_string()),
        ("WA_REORDER_WINDOW", "0s".to_owned()),
    ]);
    let started = Instant::now();
    let relay = Role::start(wa_ingest, &["relay"], &relay_env, addr).await?;
    while unpublished(&pool).await? > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the relay did not finish within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    relay.stop().await;
    report.relay_events = u64::try_from(pending).unwrap_or(0);
    report.relay_events_per_second = pending as f64 / seconds;
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
    };
    Ok(report)
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
        let wa_id = format!("4915{:08}", i % 500);
        let ts = 1_760_000_000 + i as i64;
        let body = serde_json::to_vec(&json!({
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
        .expect("JSON");
        for _ in 0..copies {
            bodies.push(body.clone());
        }
    }
    bodies
}

async fn unpublished(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

async fn stored(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
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

async fn cleanup(args: &BenchArgs, namespace: &str, database_url: &str) {
    if let Ok(connection) =
        Connection::connect(args.amqp.amqp_url.expose(), ConnectionProperties::default()).await
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
        let shards = (0..4).map(|i| format!("events.{i}"));
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
    let _ = delete_redis_keys(args, namespace).await;
    let _ = sqlx::Postgres::force_drop_database(database_url).await;
}

/// The run's claim markers (24 h TTL) would outlive it: delete them.
async fn delete_redis_keys(args: &BenchArgs, namespace: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(args.redis.redis_url.expose())?;
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
