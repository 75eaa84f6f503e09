//! The exchanges and queues of one namespace. Declaring is idempotent, and
//! every role declares at start, so any start order works.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::Namespace;
use crate::config::format_duration;

/// A delivery that keeps coming back (a worker crashing on it, say) is
/// dead-lettered by the broker after this many deliveries.
pub const INBOUND_DELIVERY_LIMIT: i64 = 50;

#[derive(Debug, Clone)]
pub struct Topology {
    namespace: Namespace,
    retry_tiers: Vec<Duration>,
}

impl Topology {
    /// What the receiver needs: `{ns}.inbound` and `{ns}.dlq`.
    pub fn new(namespace: Namespace) -> Self {
        Self {
            namespace,
            retry_tiers: Vec::new(),
        }
    }

    /// Adds one delay queue per retry tier (`{ns}.retry.5s`, ...). A tier's
    /// delay is part of its queue's name, so changing the tiers declares new
    /// queues instead of clashing with the arguments of the old ones.
    pub fn with_retry_tiers(mut self, tiers: &[Duration]) -> Self {
        self.retry_tiers = tiers.to_vec();
        self
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
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
