use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;

use crate::entry::DlqEntry;

/// An empty get while the queue's count says otherwise is tried again this
/// many times, 100 ms apart.
const EMPTY_CHECKS: usize = 50;

/// Held messages are in memory: stop reading past this many bytes.
pub const MAX_SCAN_BYTES: usize = 256 * 1024 * 1024;

/// A scan ends when the broker has sent nothing for this long: it pushes
/// every ready message at once, so a pause means the queue is read.
const SCAN_IDLE: Duration = Duration::from_millis(300);
/// How long a scan waits for the first message of a queue that has some.
const SCAN_FIRST: Duration = Duration::from_secs(3);

/// The DLQ's messages, fetched unacked. Whatever is neither acked nor kept
/// goes back to the queue when the scan's channel closes.
pub(crate) struct Scan {
    channel: Channel,
    pub(crate) messages: Vec<(DlqEntry, Delivery)>,
    /// True when the scan stopped at its limit with more in the queue.
    pub(crate) truncated: bool,
}

impl Scan {
    /// Fetches up to `limit` messages; they stay ours until `finish`.
    pub(crate) async fn fetch(channel: Channel, queue: &str, limit: usize) -> lapin::Result<Self> {
        Self::fetch_until(channel, queue, limit, |_| false).await
    }

    /// Like [`Scan::fetch`], stopping early after the first entry `found`
    /// accepts. A consumer with a prefetch of `limit` (the broker pushes
    /// them all at once), not one `basic.get` per message: a get costs a
    /// round trip of several milliseconds on a quorum queue.
    pub(crate) async fn fetch_until(
        channel: Channel,
        queue: &str,
        limit: usize,
        found: impl Fn(&DlqEntry) -> bool,
    ) -> lapin::Result<Self> {
        let mut scan = Self {
            channel,
            messages: Vec::new(),
            truncated: false,
        };
        let ready = ready(&scan.channel, queue).await?;
        if ready == 0 || limit == 0 {
            scan.truncated = ready > 0;
            return Ok(scan);
        }
        let prefetch = u16::try_from(limit).unwrap_or(u16::MAX);
        scan.channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = scan
            .channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut bytes = 0;
        loop {
            if scan.messages.len() >= limit || bytes >= MAX_SCAN_BYTES {
                scan.truncated = true;
                break;
            }
            let wait = if scan.messages.is_empty() {
                SCAN_FIRST
            } else {
                SCAN_IDLE
            };
            let delivery = match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(delivery)) => delivery?,
                Ok(None) | Err(_) => break,
            };
            bytes += delivery.data.len();
            let entry = DlqEntry::from_delivery(&delivery);
            let done = found(&entry);
            scan.messages.push((entry, delivery));
            if done {
                break;
            }
        }
        // Nothing more is pushed; what was is ours until `finish`.
        let _ = scan
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        Ok(scan)
    }

    pub(crate) async fn ack(message: &BasicGetMessage) -> lapin::Result<()> {
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
    }

    /// Gives back every message not acked.
    pub(crate) async fn finish(self) {
        let _ = self.channel.close(200, "dlq scan done".into()).await;
    }
}

/// Messages ready in a queue, as the broker counts them now.
async fn ready(channel: &Channel, queue: &str) -> lapin::Result<usize> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(queue.message_count() as usize)
}

/// The DLQ read one message at a time until it is empty, for the commands
/// that act (replay, purge): they end when the queue does, not at a count
/// read up front, which a quorum queue reports late. The messages a command
/// passes over are held unacked until [`Drain::finish`], so the same run does
/// not meet them again; they are bounded like a scan.
pub(crate) struct Drain {
    channel: Channel,
    queue: String,
    held: Vec<BasicGetMessage>,
    held_bytes: usize,
    limit: usize,
}

impl Drain {
    pub(crate) fn new(channel: Channel, queue: &str, limit: usize) -> Self {
        Self {
            channel,
            queue: queue.to_owned(),
            held: Vec::new(),
            held_bytes: 0,
            limit,
        }
    }

    /// The next message, or `None` once the queue is empty. An empty get is
    /// checked against the queue's count: messages another reader just gave
    /// back reach a quorum queue a moment after it says "empty".
    pub(crate) async fn next(&self) -> lapin::Result<Option<BasicGetMessage>> {
        for _ in 0..EMPTY_CHECKS {
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?;
            if got.is_some() || self.ready().await? == 0 {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(None)
    }

    /// Keeps a message passed over (or not acted on) until the end.
    pub(crate) fn hold(&mut self, message: BasicGetMessage) {
        self.held_bytes += message.delivery.data.len();
        self.held.push(message);
    }

    /// True when no more messages can be held: the run stops there.
    pub(crate) fn is_full(&self) -> bool {
        self.held.len() >= self.limit || self.held_bytes >= MAX_SCAN_BYTES
    }

    /// Messages left in the DLQ: the ones held plus those still ready.
    pub(crate) async fn remaining(&self) -> lapin::Result<usize> {
        Ok(self.held.len() + self.ready().await?)
    }

    /// Messages ready in the queue, as the broker counts them now.
    async fn ready(&self) -> lapin::Result<usize> {
        ready(&self.channel, &self.queue).await
    }

    /// Gives back every message held.
    pub(crate) async fn finish(self) {
        let _ = self.channel.close(200, "dlq drain done".into()).await;
    }
}
