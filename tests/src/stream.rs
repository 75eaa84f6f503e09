//! Meta's traffic during an outage: every payload POSTed twice at once,
//! paced so that the stream spans what the test breaks meanwhile; then
//! Meta's redelivery of whatever was not answered 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Semaphore;

use crate::payloads::{mixed, post_signed};
use crate::{TestEnv, eventually};

pub struct Stream {
    pub payloads: Vec<Vec<u8>>,
    /// Payloads whose POSTs have all been answered.
    pub done: Arc<AtomicUsize>,
}

/// What the first pass got back.
pub struct FirstPass {
    /// Per payload: did at least one of its two POSTs get a 200?
    pub accepted: Vec<bool>,
    /// Answers other than 200 (503 while no node could confirm, 0 for a
    /// connection error).
    pub refused: usize,
}

impl Stream {
    pub fn new(tag: &str, count: usize) -> Self {
        Self {
            payloads: (0..count).map(|i| mixed(&format!("{tag}{i}"), 1)).collect(),
            done: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits until `fraction` of the payloads have been answered.
    pub async fn reached(&self, fraction: f64) {
        let goal = (self.payloads.len() as f64 * fraction) as usize;
        while self.done.load(Ordering::Relaxed) < goal {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs every payload twice at once, one payload every `interval`, at
    /// most 32 payloads in flight.
    pub async fn send_twice(&self, url: &str, interval: Duration) -> FirstPass {
        let client = reqwest::Client::new();
        let in_flight = Arc::new(Semaphore::new(32));
        let mut ticks = tokio::time::interval(interval);
        let mut tasks = Vec::with_capacity(self.payloads.len());
        for body in &self.payloads {
            ticks.tick().await;
            let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
            let (client, url, body, done) = (
                client.clone(),
                url.to_owned(),
                body.clone(),
                self.done.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (a, b) = tokio::join!(
                    post_signed(&client, &url, body.clone()),
                    post_signed(&client, &url, body)
                );
                drop(permit);
                done.fetch_add(1, Ordering::Relaxed);
                [a, b]
            }));
        }
        let answers: Vec<[u16; 2]> = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("POST task"))
            .collect();
        FirstPass {
            accepted: answers.iter().map(|a| a.contains(&200)).collect(),
            refused: answers.iter().flatten().filter(|&&s| s != 200).count(),
        }
    }

    /// As Meta does: POSTs each payload that got no 200 again until it does.
    pub async fn redeliver_refused(&self, url: &str, first: &FirstPass) -> usize {
        let client = reqwest::Client::new();
        let refused: Vec<&Vec<u8>> = self
            .payloads
            .iter()
            .zip(&first.accepted)
            .filter(|(_, accepted)| !**accepted)
            .map(|(body, _)| body)
            .collect();
        for body in &refused {
            eventually(
                "a redelivery to be accepted",
                Duration::from_secs(60),
                || {
                    let (client, body) = (client.clone(), (*body).clone());
                    async move {
                        match post_signed(&client, url, body).await {
                            200 => Ok(()),
                            other => Err(other.to_string()),
                        }
                    }
                },
            )
            .await;
        }
        refused.len()
    }
}

/// Every payload answered 200 in the first pass is stored: no 200 was
/// given for a message the broker did not confirm.
pub async fn every_accepted_payload_is_stored(env: &TestEnv, stream: &Stream, first: &FirstPass) {
    let wamids: Vec<String> = stream
        .payloads
        .iter()
        .zip(&first.accepted)
        .filter(|(_, accepted)| **accepted)
        .map(|(body, _)| {
            let value: serde_json::Value = serde_json::from_slice(body).expect("JSON");
            value["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
                .as_str()
                .expect("wamid")
                .to_owned()
        })
        .collect();
    let expected = wamids.len() as i64;
    eventually(
        "every payload answered 200 to be stored",
        Duration::from_secs(120),
        || {
            let wamids = wamids.clone();
            async move {
                let stored: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM messages WHERE wamid = ANY($1)")
                        .bind(wamids)
                        .fetch_one(&env.db)
                        .await
                        .map_err(|e| e.to_string())?;
                if stored == expected {
                    Ok(())
                } else {
                    Err(format!("{stored} of {expected}"))
                }
            }
        },
    )
    .await;
}

/// Each event of the stream stored exactly once, nothing dead-lettered, and
/// downstream: one `message.created` per message, and each reply's status
/// advances (one to three, as its statuses were stored together or apart;
/// each (wamid, status) once by the outbox's unique event id).
pub async fn stored_exactly_once(env: &TestEnv, payloads: usize) {
    let n = payloads as i64;
    eventually("every event stored", Duration::from_secs(120), || async {
        let rows = env.stored_rows().await;
        if rows == (n, 3 * n) {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.stored_rows().await, (n, 3 * n), "messages, statuses");
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE event_type = 'message.created'")
            .await,
        n,
        "one message.created per message"
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT wamid) FROM outbox WHERE event_type = 'message.status'")
            .await,
        n,
        "every reply's status went downstream"
    );
    assert!(
        env.count("SELECT count(*) FROM outbox WHERE event_type = 'message.status'")
            .await
            <= 3 * n,
        "at most one event per status"
    );
    assert_eq!(env.queue_depth("dlq").await, 0, "nothing dead-lettered");
}
