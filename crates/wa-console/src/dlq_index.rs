//! The DLQ as the console last read it. Reading 10,000 messages takes
//! seconds, so pages render from the last read and a stale one is read
//! again in the background (one read at a time); after an action the
//! console waits for a fresh read, so the operator sees its effect.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use wa_broker::Broker;
use wa_core::telemetry::error_chain;
use wa_dlq::Snapshot;

/// A read older than this is refreshed even if the depth did not change.
const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Indexed {
    pub(crate) snapshot: Snapshot,
    pub(crate) read_at: DateTime<Utc>,
    pub(crate) took: Duration,
    read_instant: Instant,
}

pub(crate) struct DlqIndex {
    broker: Broker,
    scan_limit: usize,
    /// How often a read may be repeated when the depth changed.
    min_age: Duration,
    current: RwLock<Option<Arc<Indexed>>>,
    /// Held while a read runs: one at a time.
    reading: tokio::sync::Mutex<()>,
}

impl DlqIndex {
    pub(crate) fn new(broker: Broker, scan_limit: usize, min_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            broker,
            scan_limit,
            min_age,
            current: RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Option<Arc<Indexed>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last read, refreshed in the background when it is stale (the
    /// queue's depth moved, or it is older than a minute). The first call
    /// waits for a read.
    pub(crate) async fn get(self: &Arc<Self>, depth: Option<u32>) -> anyhow::Result<Arc<Indexed>> {
        let Some(current) = self.current() else {
            return self.fresh().await;
        };
        let age = current.read_instant.elapsed();
        let moved = depth.is_some_and(|d| {
            let (now, read) = (d as usize, current.snapshot.entries.len());
            // A read cut at the scan limit saw fewer than the queue holds.
            if current.snapshot.truncated {
                now < read
            } else {
                now != read
            }
        });
        if age > MAX_AGE || (moved && age > self.min_age) {
            let index = self.clone();
            tokio::spawn(async move {
                if let Ok(_reading) = index.reading.try_lock()
                    && let Err(error) = index.read().await
                {
                    tracing::warn!(error = %error_chain(error.as_ref()), "cannot read the DLQ");
                }
            });
        }
        Ok(current)
    }

    /// A read that starts after this call.
    pub(crate) async fn fresh(&self) -> anyhow::Result<Arc<Indexed>> {
        let _reading = self.reading.lock().await;
        self.read().await
    }

    async fn read(&self) -> anyhow::Result<Arc<Indexed>> {
        let started = Instant::now();
        let snapshot = wa_dlq::snapshot(&self.broker, self.scan_limit).await?;
        let indexed = Arc::new(Indexed {
            snapshot,
            read_at: Utc::now(),
            took: started.elapsed(),
            read_instant: Instant::now(),
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(indexed.clone());
        Ok(indexed)
    }
}
