use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wa_broker::AmqpArgs;
use wa_broker::{Broker, Outgoing, Topology, headers};
use wa_core::args::NamespaceArgs;
use wa_core::config::parse_duration;
use wa_core::telemetry::error_chain;

use crate::entry::DlqEntry;
use crate::scan::{Drain, Scan};

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// At most this many DLQ messages are read (and held) per command.
    #[arg(
        long,
        env = "WA_DLQ_SCAN_LIMIT",
        value_name = "WA_DLQ_SCAN_LIMIT",
        default_value_t = 10_000,
        global = true
    )]
    pub scan_limit: usize,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Only the messages with this id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Only this error class (`transient`, `permanent`, `unknown`).
    #[arg(long)]
    pub class: Option<String>,
    /// Only messages that first failed at or after this time (RFC 3339, or an
    /// age such as `30m` or `2h`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    fn matches(&self, entry: &DlqEntry) -> bool {
        (self.ids.is_empty() || self.ids.contains(&entry.id))
            && self.class.as_ref().is_none_or(|c| *c == entry.class)
            && self.since.is_none_or(|since| {
                entry
                    .first_failure_at
                    .or(entry.last_failure_at)
                    .is_some_and(|at| at >= since)
            })
    }
}

fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = parse_duration(value)
        .map_err(|_| format!("{value:?} is neither an RFC 3339 time nor an age like 2h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(age).map_err(|e| e.to_string())?)
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Depth, and counts by error class and by error text.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// One line per message: id, class, error, attempts, first failure, wamids.
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Headers and metadata of one message; the body only with --payload.
    Show {
        id: String,
        /// Also print the body (personal data: mind where it goes).
        #[arg(long)]
        payload: bool,
    },
    /// Publish messages back to `{ns}.inbound` (confirmed), then remove them here.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// At most this many messages.
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many messages per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete messages for good. Refuses to run without --yes.
    Purge {
        /// Only messages whose last failure is older than this age (e.g. `7d`).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Messages that matched the filters (up to `--limit`).
    pub matched: usize,
    pub replayed: usize,
    pub failed: usize,
    /// Messages in the DLQ when the command ended.
    pub remaining: usize,
}

#[derive(Debug, Serialize)]
struct Stats {
    depth: usize,
    truncated: bool,
    by_class: BTreeMap<String, usize>,
    by_error: BTreeMap<String, usize>,
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let topology = Topology::new(args.namespace.namespace.clone());
    let dlq_queue = topology.dlq();
    let inbound = topology.inbound();
    let broker = Broker::start(
        args.amqp.broker_config("wa-ingest dlq")?,
        topology,
        stop.clone(),
    );
    let result = async {
        let session = broker
            .connected_within(Duration::from_secs(15), &stop)
            .await?;
        let channel = session.connection().create_channel().await?;
        match &args.command {
            DlqCommand::Replay {
                filter,
                limit,
                rate,
                dry_run,
            } => {
                let drain = Drain::new(channel, &dlq_queue, args.scan_limit);
                let pace = Pace {
                    limit: *limit,
                    rate: *rate,
                    dry_run: *dry_run,
                };
                let summary = replay(drain, &broker, &inbound, filter, pace).await?;
                report_replay(&summary, *dry_run)
            }
            DlqCommand::Purge { older_than, yes } => {
                if !yes {
                    bail!("purge deletes messages for good: add --yes to confirm");
                }
                let drain = Drain::new(channel, &dlq_queue, args.scan_limit);
                purge(drain, *older_than).await
            }
            command => {
                let scan = Scan::fetch(channel, &dlq_queue, args.scan_limit).await?;
                let outcome = execute(command, &scan);
                if scan.truncated {
                    eprintln!(
                        "note: read only the first {} messages (--scan-limit)",
                        args.scan_limit
                    );
                }
                scan.finish().await;
                outcome
            }
        }
    }
    .await;
    stop.cancel();
    result
}

/// The read-only commands, on a bounded snapshot of the DLQ.
fn execute(command: &DlqCommand, scan: &Scan) -> anyhow::Result<()> {
    match command {
        DlqCommand::Stats { json } => print_stats(scan, *json),
        DlqCommand::List {
            filter,
            limit,
            json,
        } => print_list(scan, filter, *limit, *json),
        DlqCommand::Show { id, payload } => print_message(scan, id, *payload),
        DlqCommand::Replay { .. } | DlqCommand::Purge { .. } => {
            unreachable!("replay and purge drain the queue")
        }
    }
}

/// `dlq stats`: depth, then counts by error class and by error text.
fn print_stats(scan: &Scan, json: bool) -> anyhow::Result<()> {
    let mut stats = Stats {
        depth: scan.messages.len(),
        truncated: scan.truncated,
        by_class: BTreeMap::new(),
        by_error: BTreeMap::new(),
    };
    for (entry, _) in &scan.messages {
        *stats.by_class.entry(entry.class.clone()).or_default() += 1;
        *stats.by_error.entry(entry.error.clone()).or_default() += 1;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!(
        "depth: {}{}",
        stats.depth,
        if stats.truncated { "+" } else { "" }
    );
    println!("by class:");
    for (class, n) in &stats.by_class {
        println!("  {n:>7}  {class}");
    }
    println!("by error:");
    for (error, n) in &stats.by_error {
        println!("  {n:>7}  {error}");
    }
    Ok(())
}

/// `dlq list`: one line (or JSON object) per matching message.
fn print_list(scan: &Scan, filter: &Filter, limit: usize, json: bool) -> anyhow::Result<()> {
    let entries: Vec<&DlqEntry> = scan
        .messages
        .iter()
        .map(|(entry, _)| entry)
        .filter(|entry| filter.matches(entry))
        .take(limit)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!(
        "{:<64}  {:<9}  {:>8}  {:<25}  {:<40}  wamids",
        "id", "class", "attempts", "first failure", "error"
    );
    for entry in entries {
        println!(
            "{:<64}  {:<9}  {:>8}  {:<25}  {:<40}  {}",
            entry.id,
            entry.class,
            entry.attempts,
            entry
                .first_failure_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            one_line(&entry.error, 40),
            entry.wamids.join(","),
        );
    }
    Ok(())
}

/// `dlq show`: one message's entry and headers (never the signature); the
/// body only when asked for.
fn print_message(scan: &Scan, id: &str, payload: bool) -> anyhow::Result<()> {
    let Some((entry, message)) = scan.messages.iter().find(|(entry, _)| entry.id == id) else {
        bail!("no message with id {id} in the DLQ");
    };
    println!("{}", serde_json::to_string_pretty(entry)?);
    let properties = &message.delivery.properties;
    println!(
        "content-type: {}",
        properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    let table = properties
        .headers()
        .clone()
        .unwrap_or_else(FieldTable::default);
    for (key, value) in table.inner() {
        if key.as_str() != headers::SIGNATURE {
            println!("header {key}: {value:?}");
        }
    }
    if payload {
        println!("{}", String::from_utf8_lossy(&message.delivery.data));
    }
    Ok(())
}

fn report_replay(summary: &ReplaySummary, dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        println!(
            "would replay {} message(s); {} in the DLQ",
            summary.matched, summary.remaining
        );
        return Ok(());
    }
    println!(
        "replayed {} message(s); {} remain in the DLQ",
        summary.replayed, summary.remaining
    );
    if summary.failed > 0 {
        bail!(
            "{} message(s) could not be replayed and stay in the DLQ",
            summary.failed
        );
    }
    Ok(())
}

/// Deletes every message (or those whose last failure is older than
/// `older_than`) until the DLQ is empty.
async fn purge(mut drain: Drain, older_than: Option<Duration>) -> anyhow::Result<()> {
    let cutoff =
        older_than.map(|age| Utc::now() - chrono::Duration::from_std(age).unwrap_or_default());
    let mut purged = 0;
    let outcome = async {
        while !drain.is_full() {
            let Some(message) = drain.next().await? else {
                break;
            };
            let entry = DlqEntry::from_message(&message);
            let old_enough =
                cutoff.is_none_or(|cutoff| entry.last_failure_at.is_some_and(|at| at < cutoff));
            if old_enough {
                Scan::ack(&message).await?;
                purged += 1;
            } else {
                drain.hold(message);
            }
        }
        anyhow::Ok(drain.remaining().await?)
    }
    .await;
    drain.finish().await;
    let remaining = outcome?;
    println!("purged {purged} message(s); {remaining} remain in the DLQ");
    Ok(())
}

/// How a replay goes: at most `limit` messages, at most `rate` per second,
/// or only say what it would do.
struct Pace {
    limit: Option<usize>,
    rate: Option<f64>,
    dry_run: bool,
}

/// Reads the DLQ until it is empty or `limit` messages are replayed; each
/// one matching goes through a confirmed publish to `{ns}.inbound`, then the
/// ack of the DLQ copy: a crash in between leaves a duplicate, which the
/// pipeline absorbs, never a lost message. A message that fails again and
/// is back before the run ends (it carries this run's replay mark) is left
/// for the next run instead of going round in circles.
async fn replay(
    mut drain: Drain,
    broker: &Broker,
    inbound: &str,
    filter: &Filter,
    pace: Pace,
) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    let run_started = Utc::now();
    let limit = pace.limit.unwrap_or(usize::MAX);
    let mut interval = pace
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let outcome = async {
        while summary.matched < limit && !drain.is_full() {
            let Some(message) = drain.next().await? else {
                break;
            };
            let entry = DlqEntry::from_message(&message);
            let back_again = entry.replayed_at.is_some_and(|at| at >= run_started);
            if back_again || !filter.matches(&entry) {
                drain.hold(message);
                continue;
            }
            summary.matched += 1;
            if pace.dry_run {
                println!(
                    "would replay {} ({}, {})",
                    entry.id,
                    entry.class,
                    one_line(&entry.error, 60)
                );
                drain.hold(message);
                continue;
            }
            if let Some(interval) = interval.as_mut() {
                interval.tick().await;
            }
            if replay_one(broker, inbound, &entry, &message).await {
                summary.replayed += 1;
            } else {
                summary.failed += 1;
                drain.hold(message);
            }
            if last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                eprintln!(
                    "progress: {} replayed, {:.1}/s",
                    summary.replayed,
                    summary.replayed as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        anyhow::Ok(drain.remaining().await?)
    }
    .await;
    drain.finish().await;
    summary.remaining = outcome?;
    Ok(summary)
}

/// True when the message was published to `{ns}.inbound` and removed here.
async fn replay_one(
    broker: &Broker,
    inbound: &str,
    entry: &DlqEntry,
    message: &lapin::message::BasicGetMessage,
) -> bool {
    let published = broker
        .publish(Outgoing {
            exchange: inbound,
            routing_key: "",
            body: &message.delivery.data,
            properties: replayed_properties(&message.delivery.properties),
        })
        .await;
    if let Err(error) = published {
        eprintln!("could not replay {}: {}", entry.id, error_chain(&error));
        return false;
    }
    if let Err(error) = Scan::ack(message).await {
        // Published but still in the DLQ: a later replay makes a duplicate, which is absorbed.
        eprintln!(
            "replayed {} but could not remove it from the DLQ: {}",
            entry.id,
            error_chain(&error)
        );
        return false;
    }
    true
}

/// The original headers, less the failure history: a replayed message gets
/// the whole retry ladder again.
fn replayed_properties(properties: &lapin::BasicProperties) -> lapin::BasicProperties {
    let dropped = [
        headers::ATTEMPTS,
        headers::DEFERRALS,
        headers::ERROR_CLASS,
        headers::ERROR,
        headers::FIRST_FAILURE_AT,
        headers::LAST_FAILURE_AT,
        headers::DEAD_LETTERED_BY,
    ];
    let mut table = FieldTable::default();
    if let Some(existing) = properties.headers() {
        for (key, value) in existing.inner() {
            if !dropped.contains(&key.as_str()) {
                table.insert(key.clone(), value.clone());
            }
        }
    }
    table.insert(
        headers::REPLAYED_AT.into(),
        headers::text_value(&Utc::now().to_rfc3339()),
    );
    properties.clone().with_headers(table)
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}
