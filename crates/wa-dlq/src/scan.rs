use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use crate::entry::DlqEntry;

/// Held messages are in memory: stop reading past this many bytes.
const MAX_SCAN_BYTES: usize = 256 * 1024 * 1024;

/// The DLQ's messages, fetched unacked. Whatever is neither acked nor kept
/// goes back to the queue when the scan's channel closes.
pub(crate) struct Scan {
    channel: Channel,
    pub(crate) messages: Vec<(DlqEntry, BasicGetMessage)>,
    /// True when the scan stopped at its limit with more in the queue.
    pub(crate) truncated: bool,
}

impl Scan {
    /// Fetches up to `limit` messages; they stay ours until `finish`.
    pub(crate) async fn fetch(channel: Channel, queue: &str, limit: usize) -> lapin::Result<Self> {
        let mut messages = Vec::new();
        let mut truncated = false;
        let mut bytes = 0;
        loop {
            if messages.len() >= limit || bytes >= MAX_SCAN_BYTES {
                truncated = true;
                break;
            }
            let fetched = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?;
            let Some(message) = fetched else { break };
            bytes += message.delivery.data.len();
            let entry = DlqEntry::from_message(&message);
            messages.push((entry, message));
        }
        Ok(Self {
            channel,
            messages,
            truncated,
        })
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
