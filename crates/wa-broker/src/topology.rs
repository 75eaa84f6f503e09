//! The exchanges and queues of one namespace. Declaring is idempotent, and
//! every role declares at start, so any start order works.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use wa_core::Namespace;
use wa_core::config::format_duration;

/// A delivery that keeps coming back (a worker crashing on it, say) is
/// dead-lettered by the broker after this many deliveries.
pub const INBOUND_DELIVERY_LIMIT: i64 = 50;

#[derive(Debug, Clone)]
pub struct Topology {
    namespace: Namespace,
    retry_tiers: Vec<Duration>,
    event_shards: u16,
}

impl Topology {
    /// What the receiver needs: `{ns}.inbound` and `{ns}.dlq`.
    pub fn new(namespace: Namespace) -> Self {
        Self {
            namespace,
            retry_tiers: Vec::new(),
            event_shards: 0,
        }
    }

    /// Adds the downstream events: exchange `{ns}.events` routing to
    /// `shards` queues `{ns}.events.{i}`, each with a single active consumer
    /// so that one contact's events are consumed in order.
    pub fn with_event_shards(mut self, shards: u16) -> Self {
        self.event_shards = shards;
        self
    }

    pub fn events(&self) -> String {
        self.namespace.amqp("events")
    }

    pub fn event_shards(&self) -> u16 {
        self.event_shards
    }

    pub fn event_queue(&self, shard: u16) -> String {
        self.namespace.amqp(&format!("events.{shard}"))
    }

    /// Adds one delay queue per retry tier (`{ns}.retry.5s`, ...). A tier's
    /// delay is part of its queue's name, so changing the tiers declares new
    /// queues instead of clashing with the arguments of the old ones.
    pub fn with_retry_tiers(mut self, tiers: &[Duration]) -> Self {
        self.retry_tiers = tiers.to_vec();
        self
    }

    /// Exchange and queue receiving every webhook body.
    pub fn inbound(&self) -> String {
        self.namespace.amqp("inbound")
    }

    pub fn dlq(&self) -> String {
        self.namespace.amqp("dlq")
    }

    pub fn retry_tiers(&self) -> &[Duration] {
        &self.retry_tiers
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        self.namespace
            .amqp(&format!("retry.{}", format_duration(delay)))
    }

    /// Every queue this topology declares.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.inbound(), self.dlq()];
        queues.extend(
            self.retry_tiers
                .iter()
                .map(|&delay| self.retry_queue(delay)),
        );
        queues.extend((0..self.event_shards).map(|shard| self.event_queue(shard)));
        queues
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        let mut exchanges = vec![self.inbound()];
        if self.event_shards > 0 {
            exchanges.push(self.events());
        }
        exchanges
    }

    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let inbound = self.inbound();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                inbound.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        let mut inbound_args = quorum();
        inbound_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(INBOUND_DELIVERY_LIMIT),
        );
        dead_letter_to(&mut inbound_args, "", &self.dlq());
        declare_queue(channel, &inbound, inbound_args).await?;
        channel
            .queue_bind(
                inbound.as_str().into(),
                inbound.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        declare_queue(channel, &self.dlq(), quorum()).await?;

        if self.event_shards > 0 {
            let events = self.events();
            channel
                .exchange_declare(
                    events.as_str().into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            for shard in 0..self.event_shards {
                let mut args = quorum();
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                let queue = self.event_queue(shard);
                declare_queue(channel, &queue, args).await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        events.as_str().into(),
                        shard.to_string().as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }

        for &delay in &self.retry_tiers {
            let mut args = quorum();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            dead_letter_to(&mut args, &inbound, "");
            declare_queue(channel, &self.retry_queue(delay), args).await?;
        }
        Ok(())
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

/// Broker-side dead-lettering that waits for the target's confirm
/// (`at-least-once`), so a message is never lost between two queues.
fn dead_letter_to(args: &mut FieldTable, exchange: &str, routing_key: &str) {
    args.insert("x-dead-letter-exchange".into(), long_string(exchange));
    if !routing_key.is_empty() {
        args.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
    }
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(ShortString::from(name), options, args)
        .await?;
    Ok(())
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The shard of a contact's events: the first 8 bytes of SHA-256 of the
/// contact key, modulo the shard count. Stable across processes and versions.
pub fn event_shard(contact_key: &str, shards: u16) -> u16 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(contact_key.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(shards.max(1))) as u16
}
