//! A downstream consumer of every event shard, as a service behind the
//! relay would be: it acks what it receives and keeps it for assertions.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::Value;

use crate::TestEnv;
use crate::env::TEST_EVENT_SHARDS;

/// One event as a consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: String,
    /// The contact record the event is about (`contact.key`).
    pub contact: String,
    /// What the relay orders and shards by (`x-wa-contact-key`).
    pub ordering_key: String,
    pub timestamp: String,
    pub sequence: i64,
    pub late: bool,
    pub shard: u16,
    pub body: Value,
}

pub struct Sink {
    events: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    pub async fn start(env: &TestEnv) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        for shard in 0..TEST_EVENT_SHARDS {
            let channel = env.amqp.create_channel().await.expect("channel");
            let mut consumer = channel
                .basic_consume(
                    env.queue(&format!("events.{shard}")).as_str().into(),
                    format!("sink-{shard}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            let events = events.clone();
            tokio::spawn(async move {
                let _channel = channel;
                while let Some(Ok(delivery)) = consumer.next().await {
                    let body: Value = serde_json::from_slice(&delivery.data).expect("JSON event");
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .expect("id")
                        .to_string();
                    assert_eq!(body["id"], id.as_str());
                    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
                    events.lock().expect("lock").push(Received {
                        id,
                        kind: text(&body["type"]),
                        contact: text(&body["contact"]["key"]),
                        ordering_key: text(&body["ordering_key"]),
                        timestamp: text(&body["timestamp"]),
                        sequence: body["sequence"].as_i64().expect("sequence"),
                        late: body["late"].as_bool().expect("late"),
                        shard,
                        body,
                    });
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                }
            });
        }
        Self { events }
    }

    pub fn received(&self) -> Vec<Received> {
        self.events.lock().expect("lock").clone()
    }

    /// Distinct event ids received so far.
    pub fn unique(&self) -> usize {
        self.received()
            .iter()
            .map(|e| e.id.clone())
            .collect::<HashSet<_>>()
            .len()
    }
}
