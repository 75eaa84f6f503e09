//! What the overview shows, read when it is asked for: queue depths from
//! the broker (passive declares: no management API needed), counts from
//! PostgreSQL, rates and pauses from the roles' metrics, errors from the DLQ.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sqlx::PgPool;
use wa_broker::{Broker, Topology};

use crate::dlq_index::Indexed;

/// A PostgreSQL count that takes longer than this is shown as the planner's estimate.
const EXACT_COUNT_TIMEOUT: &str = "1500ms";
/// Each broker question may take this long.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub(crate) struct QueueDepth {
    /// `inbound`, `retry-0`, `dlq`, `events-0`: stable across namespaces.
    pub(crate) label: String,
    pub(crate) name: String,
    /// Ready messages; `None` when the queue does not exist (or the broker did not answer).
    pub(crate) messages: Option<u32>,
    pub(crate) consumers: Option<u32>,
}

/// The queues of a namespace, in the pipeline's order, with their labels.
pub(crate) fn queue_names(topology: &Topology) -> Vec<(String, String)> {
    let mut names = vec![("inbound".to_owned(), topology.inbound())];
    names.extend(
        topology
            .retry_tiers()
            .iter()
            .enumerate()
            .map(|(i, tier)| (format!("retry-{i}"), topology.retry_queue(*tier))),
    );
    names.push(("dlq".to_owned(), topology.dlq()));
    names.extend(
        (0..topology.event_shards()).map(|i| (format!("events-{i}"), topology.event_queue(i))),
    );
    names
}

/// Every queue's depth. A passive declare of a missing queue closes its
/// channel, so such a failure opens a new one for the next queue.
pub(crate) async fn queue_depths(broker: &Broker) -> Result<Vec<QueueDepth>, String> {
    let session = broker.current().ok_or("not connected to RabbitMQ")?;
    let mut channel = None;
    let mut depths = Vec::new();
    for (label, name) in queue_names(broker.topology()) {
        if channel.is_none() {
            channel = tokio::time::timeout(BROKER_TIMEOUT, session.connection().create_channel())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(open) = channel.as_ref() else {
            depths.push(QueueDepth {
                label,
                name,
                messages: None,
                consumers: None,
            });
            continue;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            BROKER_TIMEOUT,
            open.queue_declare(name.as_str().into(), passive, FieldTable::default()),
        )
        .await;
        match declared {
            Ok(Ok(queue)) => depths.push(QueueDepth {
                label,
                name,
                messages: Some(queue.message_count()),
                consumers: Some(queue.consumer_count()),
            }),
            _ => {
                channel = None;
                depths.push(QueueDepth {
                    label,
                    name,
                    messages: None,
                    consumers: None,
                });
            }
        }
    }
    if let Some(open) = channel {
        let _ = open.close(200, "console".into()).await;
    }
    Ok(depths)
}

/// A row count, exact or (when the exact count took too long) estimated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count {
    pub(crate) value: i64,
    pub(crate) exact: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) messages: Count,
    pub(crate) statuses: Count,
    pub(crate) group_events: Count,
    pub(crate) contacts: Count,
    /// Outbox events not yet released downstream, and the oldest one's age.
    pub(crate) outbox_backlog: i64,
    pub(crate) outbox_oldest_seconds: Option<f64>,
    /// Released in the last five minutes.
    pub(crate) released_recently: i64,
}

const TABLES: [&str; 4] = ["messages", "message_statuses", "group_events", "contacts"];

pub(crate) async fn stored(db: &PgPool) -> Result<Stored, sqlx::Error> {
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push(count(db, table).await?);
    }
    let (outbox_backlog, outbox_oldest_seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(db)
    .await?;
    let released_recently: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at > now() - interval '5 minutes'",
    )
    .fetch_one(db)
    .await?;
    Ok(Stored {
        messages: counts[0],
        statuses: counts[1],
        group_events: counts[2],
        contacts: counts[3],
        outbox_backlog,
        outbox_oldest_seconds,
        released_recently,
    })
}

/// `count(*)` under a statement timeout; past it, `pg_class.reltuples`.
async fn count(db: &PgPool, table: &'static str) -> Result<Count, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = '{EXACT_COUNT_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await?;
    let exact: Result<i64, _> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await;
    drop(tx);
    match exact {
        Ok(value) => Ok(Count { value, exact: true }),
        Err(_) => {
            let estimate: f32 =
                sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = $1::regclass")
                    .bind(table)
                    .fetch_one(db)
                    .await?;
            Ok(Count {
                value: estimate.max(0.0) as i64,
                exact: false,
            })
        }
    }
}

/// Per error class: how many, and the latest error with its time.
#[derive(Debug, Clone)]
pub(crate) struct ClassErrors {
    pub(crate) class: String,
    pub(crate) count: usize,
    pub(crate) latest_error: String,
    pub(crate) latest_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub(crate) fn errors_by_class(index: &Indexed) -> Vec<ClassErrors> {
    let mut classes: BTreeMap<&str, ClassErrors> = BTreeMap::new();
    for entry in &index.snapshot.entries {
        let at = entry.failed_at();
        let class = classes
            .entry(entry.class.as_str())
            .or_insert_with(|| ClassErrors {
                class: entry.class.clone(),
                count: 0,
                latest_error: entry.error.clone(),
                latest_at: at,
            });
        class.count += 1;
        if at > class.latest_at {
            class.latest_at = at;
            class.latest_error = entry.error.clone();
        }
    }
    classes.into_values().collect()
}
