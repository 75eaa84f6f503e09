use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use wa_core::args::AppSecretArgs;
use wa_core::config::parse_duration;

use crate::generate::Generator;

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The receiver's webhook URL.
    #[arg(
        long,
        env = "WA_LOADGEN_URL",
        value_name = "WA_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080/webhooks/whatsapp"
    )]
    pub url: String,
    #[command(flatten)]
    pub app_secret: AppSecretArgs,
    /// Unique payloads to send.
    #[arg(long, default_value_t = 1000)]
    pub payloads: usize,
    /// Times each payload is sent, the copies at once (Meta redelivers).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub duplicates: u32,
    /// Requests in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// At most this many requests per second (unlimited if absent).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Distinct WhatsApp users the messages come from.
    #[arg(long, default_value_t = 50)]
    pub contacts: usize,
    /// Makes a run repeatable.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tag in every wamid of the run (random if absent), so runs never overlap.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where to write the unique event keys sent, one per line, for `loadgen check`.
    #[arg(long)]
    pub events_out: Option<PathBuf>,
    /// Time limit of one request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub by_status: BTreeMap<String, u64>,
    pub unique_events: usize,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Option<Histogram<u64>>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Latency at a quantile, in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests {}  accepted {}  rejected {}  in {:.2}s  ({:.0} req/s)",
            self.requests,
            self.accepted,
            self.rejected,
            self.elapsed.as_secs_f64(),
            self.requests_per_second()
        )?;
        writeln!(
            f,
            "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(1.0)
        )?;
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(f, "answers     {}", statuses.join(", "))?;
        write!(f, "unique events sent {}", self.unique_events)
    }
}

/// Sends the run and reports. The copies of one payload go out together.
pub async fn send(args: &SendArgs) -> anyhow::Result<LoadReport> {
    let secret = args
        .app_secret
        .secrets
        .first()
        .context("WA_APP_SECRET is empty")?
        .clone();
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let generator = Generator::new(run_id, args.contacts, args.seed);
    let mut unique_events = BTreeSet::new();
    let mut jobs = Vec::with_capacity(args.payloads * args.duplicates as usize);
    for i in 0..args.payloads {
        let body = Arc::new(generator.payload(i));
        for event in wa_payload::parse_payload(&body).context("generated payload does not parse")? {
            unique_events.insert(event.key().to_owned());
        }
        let signature = Arc::new(wa_receiver::sign(secret.expose(), &body));
        for _ in 0..args.duplicates {
            jobs.push((body.clone(), signature.clone()));
        }
    }
    if let Some(path) = &args.events_out {
        let lines: Vec<&str> = unique_events.iter().map(String::as_str).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let client = reqwest::Client::builder()
        .timeout(args.request_timeout)
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let mut report = fire(
        &client,
        &args.url,
        jobs,
        args.concurrency as usize,
        args.rate,
        None,
    )
    .await;
    report.unique_events = unique_events.len();
    Ok(report)
}

/// A body and its signature header.
pub type Job = (Arc<Vec<u8>>, Arc<String>);

/// POSTs the jobs with at most `concurrency` in flight and at most `rate`
/// per second, recording each answer and its latency. With `duration`, the
/// jobs are sent round and round until it has passed; without, once each.
pub async fn fire(
    client: &reqwest::Client,
    url: &str,
    jobs: Vec<Job>,
    concurrency: usize,
    rate: Option<f64>,
    duration: Option<Duration>,
) -> LoadReport {
    let deadline = duration.map(|d| Instant::now() + d);
    let jobs: Box<dyn Iterator<Item = Job> + Send> = match deadline {
        Some(_) if !jobs.is_empty() => Box::new(jobs.into_iter().cycle()),
        _ => Box::new(jobs.into_iter()),
    };
    let queue = Arc::new(Mutex::new(jobs));
    let pacer = rate.filter(|r| *r > 0.0).map(|r| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Arc::new(Mutex::new(interval))
    });
    let started = Instant::now();
    let lanes = (0..concurrency.max(1)).map(|_| {
        let (client, url, queue, pacer) =
            (client.clone(), url.to_owned(), queue.clone(), pacer.clone());
        tokio::spawn(async move {
            let mut report = LoadReport {
                latency: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
                ..LoadReport::default()
            };
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Some((body, signature)) = queue.lock().await.next() else {
                    break;
                };
                if let Some(pacer) = &pacer {
                    pacer.lock().await.tick().await;
                }
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature.as_str())
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = report.latency.as_mut() {
                    let _ = h.record(micros.max(1));
                }
                let status = match answer {
                    Ok(response) => response.status().as_u16().to_string(),
                    Err(error) if error.is_timeout() => "timeout".to_owned(),
                    Err(_) => "connection error".to_owned(),
                };
                report.requests += 1;
                if status == "200" {
                    report.accepted += 1;
                } else {
                    report.rejected += 1;
                }
                *report.by_status.entry(status).or_default() += 1;
            }
            report
        })
    });
    let mut total = LoadReport::default();
    for lane in futures_util::future::join_all(lanes).await {
        let Ok(lane) = lane else { continue };
        total.requests += lane.requests;
        total.accepted += lane.accepted;
        total.rejected += lane.rejected;
        for (status, n) in lane.by_status {
            *total.by_status.entry(status).or_default() += n;
        }
        match (&mut total.latency, lane.latency) {
            (Some(sum), Some(h)) => {
                let _ = sum.add(h);
            }
            (slot @ None, h) => *slot = h,
            _ => {}
        }
    }
    total.elapsed = started.elapsed();
    total
}
