use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wa_broker::{Broker, BrokerArgs};
use wa_core::config::parse_duration;

use crate::actions::{self, Pace, ReplayNote, ReplaySummary, Snapshot};
use crate::entry::DlqEntry;
use crate::filter::Filter;

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
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
        /// Only messages whose last failure is older than this age (e.g. 7d is `168h`).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        #[arg(long)]
        yes: bool,
    },
}

/// Depth and counts by class and by error text, as `dlq stats` prints them.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub depth: usize,
    pub truncated: bool,
    pub by_class: BTreeMap<String, usize>,
    pub by_error: BTreeMap<String, usize>,
}

impl Stats {
    pub fn of(snapshot: &Snapshot) -> Self {
        let mut stats = Self {
            depth: snapshot.entries.len(),
            truncated: snapshot.truncated,
            by_class: BTreeMap::new(),
            by_error: BTreeMap::new(),
        };
        for entry in &snapshot.entries {
            *stats.by_class.entry(entry.class.clone()).or_default() += 1;
            *stats.by_error.entry(entry.error.clone()).or_default() += 1;
        }
        stats
    }
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let broker = args
        .broker
        .start("wa-ingest dlq", args.broker.topology(), stop.clone())?;
    let result = execute(&args, &broker).await;
    stop.cancel();
    result
}

async fn execute(args: &DlqArgs, broker: &Broker) -> anyhow::Result<()> {
    let scan_limit = args.scan_limit;
    match &args.command {
        DlqCommand::Replay {
            filter,
            limit,
            rate,
            dry_run,
        } => {
            let pace = Pace {
                limit: *limit,
                rate: *rate,
                dry_run: *dry_run,
            };
            let summary = actions::replay(broker, filter, pace, scan_limit, print_note).await?;
            report_replay(&summary, *dry_run, scan_limit)
        }
        DlqCommand::Purge { older_than, yes } => {
            if !yes {
                bail!("purge deletes messages for good: add --yes to confirm");
            }
            let cutoff = older_than
                .map(|age| Utc::now() - chrono::Duration::from_std(age).unwrap_or_default());
            let summary = actions::purge(broker, cutoff, false, None, scan_limit).await?;
            println!(
                "purged {} message(s); {} remain in the DLQ",
                summary.purged, summary.remaining
            );
            if summary.truncated {
                note_stopped_at(scan_limit, "kept");
            }
            Ok(())
        }
        DlqCommand::Show { id, payload } => {
            let Some(found) = actions::inspect(broker, id, scan_limit).await? else {
                bail!("no message with id {id} in the DLQ");
            };
            println!("{}", serde_json::to_string_pretty(&found.entry)?);
            println!("content-type: {}", found.content_type.unwrap_or_default());
            for (key, value) in &found.headers {
                println!("header {key}: {value}");
            }
            if *payload {
                println!("{}", String::from_utf8_lossy(&found.body));
            }
            Ok(())
        }
        DlqCommand::Stats { json } => {
            let snapshot = read(broker, scan_limit).await?;
            let stats = Stats::of(&snapshot);
            if *json {
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
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let snapshot = read(broker, scan_limit).await?;
            let entries: Vec<&DlqEntry> = snapshot
                .entries
                .iter()
                .filter(|entry| filter.matches(entry))
                .take(*limit)
                .collect();
            if *json {
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
    }
}

/// A bounded snapshot, with a note on stderr when the limit cut it short.
async fn read(broker: &Broker, scan_limit: usize) -> anyhow::Result<Snapshot> {
    let snapshot = actions::snapshot(broker, scan_limit).await?;
    if snapshot.truncated {
        eprintln!("note: read only the first {scan_limit} messages (--scan-limit)");
    }
    Ok(snapshot)
}

fn print_note(note: ReplayNote<'_>) {
    match note {
        ReplayNote::WouldReplay(entry) => println!(
            "would replay {} ({}, {})",
            entry.id,
            entry.class,
            one_line(&entry.error, 60)
        ),
        ReplayNote::Failed(entry, error) => eprintln!("could not replay {}: {error}", entry.id),
        ReplayNote::Progress {
            replayed,
            per_second,
        } => eprintln!("progress: {replayed} replayed, {per_second:.1}/s"),
    }
}

fn report_replay(summary: &ReplaySummary, dry_run: bool, scan_limit: usize) -> anyhow::Result<()> {
    if dry_run {
        println!(
            "would replay {} message(s); {} in the DLQ",
            actions::counted(summary.matched, summary.truncated),
            summary.remaining
        );
        if summary.truncated {
            note_stopped_at(scan_limit, "counted");
        }
        return Ok(());
    }
    println!(
        "replayed {} message(s); {} remain in the DLQ",
        summary.replayed, summary.remaining
    );
    if summary.truncated {
        note_stopped_at(scan_limit, "passed over");
    }
    if summary.failed > 0 {
        bail!(
            "{} message(s) could not be replayed and stay in the DLQ",
            summary.failed
        );
    }
    Ok(())
}

/// Says on stderr that a run ended at the scan limit, not at the DLQ's end.
fn note_stopped_at(scan_limit: usize, held: &str) {
    eprintln!(
        "note: stopped after holding the messages it {held} ({scan_limit}, the --scan-limit, or {} MiB); more may match behind them: raise the limit to reach them",
        crate::MAX_SCAN_BYTES >> 20
    );
}

/// The text on one line, cut to `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
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
