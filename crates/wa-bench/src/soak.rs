//! `wa-ingest bench soak`: the whole pipeline (a receiver, two workers, the
//! relay, and a consumer of the downstream events) held at a fixed request
//! rate for a set time, printing every interval what a stage falling behind
//! would show first; at the end, every event is accounted for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::select_all;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use wa_broker::Topology;
use wa_core::config::parse_duration;

use crate::Servers;
use crate::process::{Role, free_addr, wa_ingest_binary};
use crate::stages::{SECRET, bench_database, cleanup, default_topology, metric_sum, soak_payload};

const EVENT_SHARDS: u16 = 4;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub servers: Servers,
    /// How long the load runs.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Webhooks per second (each 1 message and 2 statuses). Take 70 % of the
    /// slowest stage's maximum from `wa-ingest bench`.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Requests in flight at most; a receiver slower than the rate shows as
    /// a request rate below it.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How often the figures are printed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Distinct users the messages come from.
    #[arg(long, default_value_t = 1000)]
    pub contacts: usize,
    /// How long the backlogs may take to drain once the load stops.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// RSS growth is also measured from the first interval after this much
    /// of the run: allocators and pools fill up in the first minute, and
    /// that is not a leak.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub warm_up: Duration,
}

/// The relay's default reorder window, which the soak's relay runs with.
const REORDER_WINDOW_MS: f64 = 3000.0;
/// Stored-to-published p99 may exceed the reorder window by this much.
const PUBLISH_SLACK_MS: f64 = 250.0;
/// RSS may grow by this fraction over the run.
const RSS_GROWTH_LIMIT: f64 = 0.10;

/// What the downstream consumer has seen, per ordering key by sequence.
#[derive(Default)]
struct Downstream {
    received: u64,
    /// First deliveries of an event (the sequence moved on by one).
    new: u64,
    /// An event received again (a sequence not above the last).
    repeated: u64,
    /// A sequence that skipped ahead: an event missing or out of order.
    gaps: u64,
    last: HashMap<String, i64>,
}

impl Downstream {
    fn record(&mut self, key: &str, sequence: i64) {
        self.received += 1;
        let last = self.last.entry(key.to_owned()).or_insert(0);
        if sequence <= *last {
            self.repeated += 1;
            return;
        }
        if sequence > *last + 1 {
            self.gaps += 1;
        }
        *last = sequence;
        self.new += 1;
    }
}

/// The client's side of the load.
struct Sent {
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// POST latency of the current interval, microseconds.
    latency: Mutex<Histogram<u64>>,
}

pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    let wa_ingest = wa_ingest_binary()?;
    let (namespace, database_url) = bench_database(&args.servers, "soak").await?;
    let topology = default_topology(&namespace, EVENT_SHARDS);
    let outcome = soak(
        &args,
        &wa_ingest,
        namespace.as_str(),
        &topology,
        &database_url,
    )
    .await;
    cleanup(&args.servers, &namespace, &topology, &database_url).await;
    outcome
}

struct Roles {
    receiver: Role,
    workers: Vec<Role>,
    relay: Role,
}

impl Roles {
    fn all(&self) -> Vec<(String, &Role)> {
        let mut all = vec![("receiver".to_owned(), &self.receiver)];
        for (i, worker) in self.workers.iter().enumerate() {
            all.push((format!("worker {}", i + 1), worker));
        }
        all.push(("relay".to_owned(), &self.relay));
        all
    }
}

async fn soak(
    args: &SoakArgs,
    wa_ingest: &Path,
    namespace: &str,
    topology: &Topology,
    database_url: &str,
) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    wa_store::migrate(&pool).await?;
    warn_without_autovacuum(&pool).await?;
    // Every node for the roles; the soak's own connection goes to the first.
    let amqp_url = args.servers.amqp.amqp_url.expose();
    let first_node = args.servers.amqp.amqp_url.first().expose().to_owned();
    let common = |metrics: std::net::SocketAddr| {
        HashMap::from([
            ("AMQP_URL", amqp_url.clone()),
            ("REDIS_URL", args.servers.redis.redis_url.expose()),
            ("DATABASE_URL", database_url.to_owned()),
            ("WA_NAMESPACE", namespace.to_owned()),
            ("METRICS_ADDR", metrics.to_string()),
            ("WA_EVENT_SHARDS", EVENT_SHARDS.to_string()),
        ])
    };
    let addr = free_addr()?;
    let mut env = common(free_addr()?);
    env.extend([
        ("WA_APP_SECRET", SECRET.to_owned()),
        ("WA_VERIFY_TOKEN", "soak".to_owned()),
        ("LISTEN_ADDR", addr.to_string()),
    ]);
    let receiver = Role::start(wa_ingest, &["receiver"], &env, addr).await?;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let addr = free_addr()?;
        workers.push(Role::start(wa_ingest, &["worker"], &common(addr), addr).await?);
    }
    let addr = free_addr()?;
    let relay = Role::start(wa_ingest, &["relay"], &common(addr), addr).await?;
    let roles = Roles {
        receiver,
        workers,
        relay,
    };

    let connection = Connection::connect(&first_node, ConnectionProperties::default())
        .await
        .with_context(|| "cannot connect to RabbitMQ at AMQP_URL".to_owned())?;
    let downstream = Arc::new(Mutex::new(Downstream::default()));
    let consumer = tokio::spawn(consume(
        connection.create_channel().await?,
        topology.clone(),
        downstream.clone(),
    ));
    let depths = connection.create_channel().await?;

    let sent = Arc::new(Sent {
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let url = format!("http://{}/webhooks/whatsapp", roles.receiver.addr);
    let (stop_sending, stop) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(send(
        url,
        args.clone(),
        format!("{namespace}s"),
        sent.clone(),
        stop,
    ));

    println!(
        "soak: {:.0} webhooks/s (3 events each) for {:?}, figures every {:?}",
        args.rate, args.duration, args.interval
    );
    println!(
        "{:>6} {:>5} {:>8} {:>9} {:>9} {:>8} {:>7} {:>8} {:>9} {:>11}  RSS MiB ({})",
        "t s",
        "load",
        "req/s",
        "stored/s",
        "relay/s",
        "inbound",
        "events",
        "outbox",
        "POST p99",
        "st→pub p99",
        roles
            .all()
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    let mut previous = Counters::read(&roles, &sent).await;
    let mut first_rss: Option<Vec<u64>> = None;
    let mut warm_rss: Option<Vec<u64>> = None;
    let mut loads = Vec::new();
    let mut backlogs = Vec::new();
    let mut worst_publish_p99 = 0.0f64;
    while started.elapsed() < args.duration {
        ticks.tick().await;
        let now = Counters::read(&roles, &sent).await;
        let seconds = args.interval.as_secs_f64();
        let rate = |f: fn(&Counters) -> f64| (f(&now) - f(&previous)) / seconds;
        let post_p99 = {
            let mut latency = sent.latency.lock().unwrap_or_else(|p| p.into_inner());
            let p99 = latency.value_at_quantile(0.99) as f64 / 1000.0;
            latency.reset();
            p99
        };
        let publish_p99 = published_p99_ms(&pool, args.interval).await?;
        worst_publish_p99 = worst_publish_p99.max(publish_p99);
        let inbound = depth(&depths, &topology.inbound()).await;
        let mut events = 0;
        for shard in 0..EVENT_SHARDS {
            events += depth(&depths, &topology.event_queue(shard)).await;
        }
        let backlog = wa_store::outbox::count_unpublished(&pool).await?;
        backlogs.push((inbound, backlog));
        let rss: Vec<u64> = roles
            .all()
            .iter()
            .map(|(_, role)| role.rss().unwrap_or(0))
            .collect();
        first_rss.get_or_insert_with(|| rss.clone());
        if started.elapsed() >= args.warm_up {
            warm_rss.get_or_insert_with(|| rss.clone());
        }
        let load = load_average();
        loads.push(load);
        println!(
            "{:>6.0} {:>5.1} {:>8.0} {:>9.0} {:>9.0} {:>8} {:>7} {:>8} {:>9.1} {:>11.1}  {}",
            started.elapsed().as_secs_f64(),
            load,
            rate(|c| c.accepted),
            rate(|c| c.stored),
            rate(|c| c.released),
            inbound,
            events,
            backlog,
            post_p99,
            publish_p99,
            rss.iter()
                .map(|b| format!("{:.1}", *b as f64 / MIB))
                .collect::<Vec<_>>()
                .join(" ")
        );
        previous = now;
    }
    // Requests in flight finish, so that every webhook the receiver took is
    // counted as sent.
    let _ = stop_sending.send(true);
    let _ = sender.await;
    let accepted = sent.accepted.load(Ordering::Relaxed);
    let rejected = sent.rejected.load(Ordering::Relaxed);
    let expected = 3 * i64::try_from(accepted).unwrap_or(i64::MAX);
    println!("load stopped: {accepted} webhooks accepted, {rejected} refused; draining");

    let drained = Instant::now();
    let (stored_rows, outbox_rows, backlog) = loop {
        let stored_rows = wa_store::lookup::count_messages_and_statuses(&pool).await?;
        let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        let backlog = wa_store::outbox::count_unpublished(&pool).await?;
        let consumed = downstream.lock().unwrap_or_else(|p| p.into_inner()).new;
        let settled = stored_rows >= expected
            && backlog == 0
            && i64::try_from(consumed).unwrap_or(0) >= outbox_rows;
        if settled || drained.elapsed() > args.drain_timeout {
            break (stored_rows, outbox_rows, backlog);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A moment for anything still in flight to show up as doubled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.abort();
    let inbound = depth(&depths, &topology.inbound()).await;
    let _ = connection.close(200, "soak done".into()).await;
    let end_rss: Vec<(String, u64)> = roles
        .all()
        .iter()
        .map(|(name, role)| (name.clone(), role.rss().unwrap_or(0)))
        .collect();
    let seen = {
        let seen = downstream.lock().unwrap_or_else(|p| p.into_inner());
        Downstream {
            last: HashMap::new(),
            ..*seen
        }
    };

    println!("drained in {:.1}s", drained.elapsed().as_secs_f64());
    let run_publish_p99 = run_published_p99_ms(&pool).await?;
    let lost = (expected - stored_rows).max(0);
    let doubled_rows = (stored_rows - expected).max(0);
    let lost_downstream = (outbox_rows - i64::try_from(seen.new).unwrap_or(0)).max(0);
    println!(
        "stored events {stored_rows} of {expected}: {lost} lost, {doubled_rows} more than sent"
    );
    println!(
        "downstream events {} new of {outbox_rows} in the outbox: {lost_downstream} lost, {} received twice, {} out of order",
        seen.new, seen.repeated, seen.gaps
    );
    println!("backlogs at the end: inbound {inbound}, outbox {backlog}");
    let publish_limit = REORDER_WINDOW_MS + PUBLISH_SLACK_MS;
    println!(
        "stored→published p99 of the whole run: {run_publish_p99:.0} ms, worst of an interval {worst_publish_p99:.0} ms (reorder window {REORDER_WINDOW_MS:.0} ms; goal <= {publish_limit:.0} ms: {})",
        verdict(run_publish_p99 <= publish_limit)
    );
    let peaks = third_peaks(&backlogs);
    let described: Vec<String> = peaks
        .iter()
        .map(|(inbound, outbox)| format!("inbound {inbound} / outbox {outbox}"))
        .collect();
    // The outbox holds a reorder window of events at any time; a backlog
    // grows when the last third's peak clearly tops the earlier ones.
    let slack = (args.rate * 3.0) as i64;
    let bounded = backlog_bounded(peaks.iter().map(|p| i64::from(p.0)), slack)
        && backlog_bounded(peaks.iter().map(|p| p.1), slack);
    println!(
        "peak backlogs by third of the run: {} (no upward trend: {})",
        described.join(", "),
        verdict(bounded)
    );
    let first_rss = first_rss.unwrap_or_default();
    let warm_rss = warm_rss.unwrap_or_else(|| first_rss.clone());
    let mut rss_ok = true;
    for (((name, end), first), warm) in end_rss.iter().zip(first_rss).zip(warm_rss) {
        let growth = |from: u64| {
            if from > 0 {
                *end as f64 / from as f64 - 1.0
            } else {
                0.0
            }
        };
        rss_ok &= growth(warm) < RSS_GROWTH_LIMIT;
        println!(
            "RSS {name}: {:.1} MiB after the first interval, {:.1} MiB after {:?}, {:.1} MiB at the end ({:+.1} % from the first interval, {:+.1} % after warm-up)",
            first as f64 / MIB,
            warm as f64 / MIB,
            args.warm_up,
            *end as f64 / MIB,
            growth(first) * 100.0,
            growth(warm) * 100.0
        );
    }
    println!(
        "RSS growth of every process after warm-up < {:.0} %: {}",
        RSS_GROWTH_LIMIT * 100.0,
        verdict(rss_ok)
    );
    if !loads.is_empty() {
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        let max = loads.iter().copied().fold(0.0, f64::max);
        let min = loads.iter().copied().fold(f64::MAX, f64::min);
        println!("load average (1 min) during the run: min {min:.1}, mean {mean:.1}, max {max:.1}");
    }
    let failed = lost > 0
        || doubled_rows > 0
        || lost_downstream > 0
        || seen.repeated > 0
        || seen.gaps > 0
        || backlog > 0
        || inbound > 0;
    pool.close().await;
    for (_, role) in [("receiver", roles.receiver), ("relay", roles.relay)] {
        role.stop().await;
    }
    for worker in roles.workers {
        worker.stop().await;
    }
    anyhow::ensure!(
        !failed,
        "the soak lost, doubled or left events behind (see above)"
    );
    println!("soak passed: 0 lost, 0 doubled, backlogs 0");
    Ok(())
}

/// Running totals read at each interval.
struct Counters {
    accepted: f64,
    stored: f64,
    released: f64,
}

impl Counters {
    async fn read(roles: &Roles, sent: &Sent) -> Self {
        let mut stored = 0.0;
        for worker in &roles.workers {
            stored += metric_sum(worker.addr, "wa_events_total", "outcome=\"stored\"").await;
        }
        Self {
            accepted: sent.accepted.load(Ordering::Relaxed) as f64,
            stored,
            released: metric_sum(roles.relay.addr, "wa_relay_events_total", "").await,
        }
    }
}

/// Sends webhook `i` at tick `i` of the rate, each with a payload of its own.
async fn send(
    url: String,
    args: SoakArgs,
    tag: String,
    sent: Arc<Sent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0.. {
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            slot = async {
                pace.tick().await;
                slots.clone().acquire_owned().await
            } => slot,
        };
        let Ok(slot) = slot else {
            break;
        };
        let body = soak_payload(&tag, i, args.contacts);
        let signature = wa_receiver::sign(SECRET, &body);
        let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
        requests.spawn(async move {
            let started = Instant::now();
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", signature)
                .body(body)
                .send()
                .await;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = sent
                .latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(micros.max(1));
            let counter = match answer {
                Ok(response) if response.status().is_success() => &sent.accepted,
                _ => &sent.rejected,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(slot);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

/// Consumes every shard queue (auto-ack) and checks each ordering key's
/// sequence numbers.
async fn consume(channel: Channel, topology: Topology, downstream: Arc<Mutex<Downstream>>) {
    let mut consumers = Vec::new();
    for shard in 0..EVENT_SHARDS {
        let Ok(consumer) = channel
            .basic_consume(
                topology.event_queue(shard).as_str().into(),
                format!("soak-{shard}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
        else {
            return;
        };
        consumers.push(consumer);
    }
    let mut deliveries = select_all(consumers);
    while let Some(Ok(delivery)) = deliveries.next().await {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let key = match headers.inner().get(wa_broker::headers::CONTACT_KEY) {
            Some(AMQPValue::LongString(key)) => key.to_string(),
            _ => String::new(),
        };
        let sequence = match headers.inner().get(wa_broker::headers::SEQUENCE) {
            Some(AMQPValue::LongLongInt(sequence)) => *sequence,
            _ => 0,
        };
        downstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&key, sequence);
    }
}

/// Messages ready in a queue (0 when it cannot be read).
async fn depth(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_or(0, |queue| queue.message_count())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The machine's 1-minute load average: the soak shares it with whatever
/// else runs.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The highest (inbound, outbox) backlog in each third of the intervals.
fn third_peaks(backlogs: &[(u32, i64)]) -> Vec<(u32, i64)> {
    let third = backlogs.len().div_ceil(3).max(1);
    backlogs
        .chunks(third)
        .map(|chunk| {
            let inbound = chunk.iter().map(|b| b.0).max().unwrap_or(0);
            let outbox = chunk.iter().map(|b| b.1).max().unwrap_or(0);
            (inbound, outbox)
        })
        .collect()
}

/// No upward trend: the last third's peak is within `slack` (about a
/// second of traffic) of the highest earlier peak.
fn backlog_bounded(peaks: impl Iterator<Item = i64>, slack: i64) -> bool {
    let peaks: Vec<i64> = peaks.collect();
    match peaks.split_last() {
        Some((last, earlier)) if !earlier.is_empty() => {
            *last <= earlier.iter().copied().max().unwrap_or(0) + slack
        }
        _ => true,
    }
}

/// p99 of published_at - created_at over every event of the run,
/// milliseconds.
async fn run_published_p99_ms(pool: &sqlx::PgPool) -> anyhow::Result<f64> {
    let p99: Option<f64> = sqlx::query_scalar(
        "SELECT percentile_cont(0.99) WITHIN GROUP
                (ORDER BY EXTRACT(EPOCH FROM published_at - created_at))
         FROM outbox WHERE published_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(p99.unwrap_or(0.0) * 1000.0)
}

/// p99 of published_at - created_at over the events published in the last
/// `interval`, milliseconds.
async fn published_p99_ms(pool: &sqlx::PgPool, interval: Duration) -> anyhow::Result<f64> {
    let p99: Option<f64> = sqlx::query_scalar(
        "SELECT percentile_cont(0.99) WITHIN GROUP
                (ORDER BY EXTRACT(EPOCH FROM published_at - created_at))
         FROM outbox
         WHERE published_at IS NOT NULL AND published_at > now() - make_interval(secs => $1)",
    )
    .bind(interval.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(p99.unwrap_or(0.0) * 1000.0)
}

/// Every published event updates its outbox row, and the relay's claims walk
/// the index those updates leave dead entries in: without autovacuum they
/// pile up and each claim slows down, which a production server never sees.
async fn warn_without_autovacuum(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await?;
    if autovacuum != "on" {
        println!(
            "warning: this PostgreSQL runs with autovacuum={autovacuum}: the outbox's dead rows \
             are never vacuumed, so the relay's claims slow down as the run goes on; \
             for figures that stand for production, point DATABASE_URL at a server with autovacuum on"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_bounded_unless_the_last_third_tops_the_earlier_peaks() {
        assert!(backlog_bounded([900, 1200, 1100].into_iter(), 100));
        assert!(backlog_bounded([900, 800, 1000].into_iter(), 100));
        assert!(!backlog_bounded([900, 1500, 3000].into_iter(), 100));
        assert!(backlog_bounded([5].into_iter(), 0));
    }

    /// The worker stages and the soak measure the parser's usual path.
    #[test]
    fn the_bench_payload_is_read_without_a_json_tree() {
        let body = crate::stages::soak_payload("t", 7, 500);
        let events = wa_payload::parse_payload_fast(&body).expect("the fast path reads it");
        assert_eq!(events.len(), 3);
        assert_eq!(events, wa_payload::parse_payload_tree(&body).unwrap());
    }

    #[test]
    fn peaks_are_taken_per_third_of_the_intervals() {
        let backlogs = [(1, 10), (3, 5), (2, 7), (0, 1), (9, 2), (4, 4)];
        assert_eq!(third_peaks(&backlogs), vec![(3, 10), (2, 7), (9, 4)]);
    }
}
