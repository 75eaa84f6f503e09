//! The DLQ as a library: what the `dlq` commands and the console do, with
//! results returned instead of printed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::Channel;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::types::FieldTable;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wa_broker::{Broker, Outgoing, headers};
use wa_core::telemetry::error_chain;

use crate::entry::DlqEntry;
use crate::filter::Filter;
use crate::scan::{Drain, Scan};

/// How long an action waits for a connection to RabbitMQ.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);

/// A channel of its own on the broker's live connection: the scan's
/// unacked messages go back when it closes.
async fn channel(broker: &Broker) -> anyhow::Result<Channel> {
    let never = CancellationToken::new();
    let session = broker.connected_within(CONNECT_LIMIT, &never).await?;
    Ok(session.connection().create_channel().await?)
}

/// What the DLQ held when it was read: every entry up to the scan limit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub entries: Vec<DlqEntry>,
    /// True when the scan stopped at its limit with more in the queue.
    pub truncated: bool,
}

/// Reads up to `scan_limit` messages and gives them all back.
pub async fn snapshot(broker: &Broker, scan_limit: usize) -> anyhow::Result<Snapshot> {
    let scan = Scan::fetch(channel(broker).await?, &broker.topology().dlq(), scan_limit).await?;
    let snapshot = Snapshot {
        entries: scan.messages.iter().map(|(e, _)| e.clone()).collect(),
        truncated: scan.truncated,
    };
    scan.finish().await;
    Ok(snapshot)
}

/// One message in full: its entry, its AMQP headers (less the signature)
/// and its body.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub entry: DlqEntry,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The webhook as received: personal data.
    pub body: Vec<u8>,
}

impl Inspection {
    fn of(entry: &DlqEntry, delivery: &Delivery) -> Self {
        let properties = &delivery.properties;
        let table = properties.headers().clone().unwrap_or_default();
        let headers = table
            .inner()
            .iter()
            .filter(|(key, _)| key.as_str() != headers::SIGNATURE)
            .map(|(key, value)| (key.to_string(), header_text(value)))
            .collect();
        Self {
            entry: entry.clone(),
            content_type: properties.content_type().as_ref().map(|c| c.to_string()),
            headers,
            body: delivery.data.to_vec(),
        }
    }
}

/// A header value as an operator reads it: text as text, numbers as numbers.
fn header_text(value: &lapin::types::AMQPValue) -> String {
    use lapin::types::AMQPValue;
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The message with this id, read from at most `scan_limit` messages
/// (all given back).
pub async fn inspect(
    broker: &Broker,
    id: &str,
    scan_limit: usize,
) -> anyhow::Result<Option<Inspection>> {
    let scan = Scan::fetch_until(
        channel(broker).await?,
        &broker.topology().dlq(),
        scan_limit,
        |entry| entry.id == id,
    )
    .await?;
    let found = scan
        .messages
        .iter()
        .find(|(entry, _)| entry.id == id)
        .map(|(entry, message)| Inspection::of(entry, message));
    scan.finish().await;
    Ok(found)
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Messages that matched the filters (up to `--limit`).
    pub matched: usize,
    pub replayed: usize,
    pub failed: usize,
    /// Messages in the DLQ when the command ended.
    pub remaining: usize,
    /// The run stopped because it held `scan_limit` messages it passed over
    /// (or counted on a dry run), not at the end of the DLQ: more may match.
    pub truncated: bool,
}

/// How a replay goes: at most `limit` messages, at most `rate` per second,
/// or only count what it would do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    pub limit: Option<usize>,
    pub rate: Option<f64>,
    pub dry_run: bool,
}

/// What a replay reports as it goes.
pub enum ReplayNote<'a> {
    /// Dry run: this one matches.
    WouldReplay(&'a DlqEntry),
    /// Could not be replayed; it stays in the DLQ.
    Failed(&'a DlqEntry, String),
    Progress {
        replayed: usize,
        per_second: f64,
    },
}

/// Reads the DLQ until it is empty or `limit` messages are replayed; each
/// one matching goes through a confirmed publish to `{ns}.inbound`, then the
/// ack of the DLQ copy: a crash in between leaves a duplicate, which the
/// pipeline absorbs, never a lost message. A message that fails again and
/// is back before the run ends (it carries this run's replay mark) is left
/// for the next run instead of going round in circles. Messages passed
/// over are held (at most `scan_limit`) and given back at the end.
pub async fn replay(
    broker: &Broker,
    filter: &Filter,
    pace: Pace,
    scan_limit: usize,
    mut note: impl FnMut(ReplayNote<'_>),
) -> anyhow::Result<ReplaySummary> {
    let mut drain = Drain::new(channel(broker).await?, &broker.topology().dlq(), scan_limit);
    let inbound = broker.topology().inbound();
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
                note(ReplayNote::WouldReplay(&entry));
                drain.hold(message);
                continue;
            }
            if let Some(interval) = interval.as_mut() {
                interval.tick().await;
            }
            match replay_one(broker, &inbound, &message).await {
                Ok(()) => summary.replayed += 1,
                Err(error) => {
                    note(ReplayNote::Failed(&entry, error));
                    summary.failed += 1;
                    drain.hold(message);
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                note(ReplayNote::Progress {
                    replayed: summary.replayed,
                    per_second: summary.replayed as f64 / started.elapsed().as_secs_f64(),
                });
            }
        }
        anyhow::Ok(drain.remaining().await?)
    }
    .await;
    summary.truncated = drain.is_full();
    drain.finish().await;
    summary.remaining = outcome?;
    Ok(summary)
}

/// Publishes the message to `{ns}.inbound` and removes it here.
async fn replay_one(
    broker: &Broker,
    inbound: &str,
    message: &BasicGetMessage,
) -> Result<(), String> {
    broker
        .publish(Outgoing {
            exchange: inbound,
            routing_key: "",
            body: &message.delivery.data,
            properties: replayed_properties(&message.delivery.properties),
        })
        .await
        .map_err(|error| format!("not replayed: {}", error_chain(&error)))?;
    // Published but still in the DLQ: a later replay makes a duplicate, which is absorbed.
    Scan::ack(message).await.map_err(|error| {
        format!(
            "replayed but not removed from the DLQ: {}",
            error_chain(&error)
        )
    })
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

/// A count as a run that may have stopped at the scan limit gives it: "at
/// least N" when it did (`truncated`), else N.
pub fn counted(count: usize, truncated: bool) -> String {
    if truncated {
        format!("at least {count}")
    } else {
        count.to_string()
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct PurgeSummary {
    /// Purged, or on a dry run, what would be.
    pub purged: usize,
    /// Messages in the DLQ when it ended.
    pub remaining: usize,
    /// The run stopped because it held `scan_limit` messages it kept (or
    /// counted on a dry run), not at the end of the DLQ: more may be old
    /// enough.
    pub truncated: bool,
}

/// Deletes every message (or those whose last failure is before `cutoff`)
/// until the DLQ is empty or `limit` are deleted; a dry run only counts
/// them. A confirmed purge takes the dry run's count as its limit, so that
/// it deletes no more than the operator was shown.
pub async fn purge(
    broker: &Broker,
    cutoff: Option<DateTime<Utc>>,
    dry_run: bool,
    limit: Option<usize>,
    scan_limit: usize,
) -> anyhow::Result<PurgeSummary> {
    let mut drain = Drain::new(channel(broker).await?, &broker.topology().dlq(), scan_limit);
    let limit = limit.unwrap_or(usize::MAX);
    let mut purged = 0;
    let outcome = async {
        while purged < limit && !drain.is_full() {
            let Some(message) = drain.next().await? else {
                break;
            };
            let entry = DlqEntry::from_message(&message);
            let old_enough =
                cutoff.is_none_or(|cutoff| entry.last_failure_at.is_some_and(|at| at < cutoff));
            if old_enough && !dry_run {
                Scan::ack(&message).await?;
            } else {
                drain.hold(message);
            }
            purged += usize::from(old_enough);
        }
        anyhow::Ok(drain.remaining().await?)
    }
    .await;
    let truncated = drain.is_full();
    drain.finish().await;
    Ok(PurgeSummary {
        purged,
        remaining: outcome?,
        truncated,
    })
}
