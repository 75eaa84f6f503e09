//! Acks in runs. A batch's plain acks go out as one `basic.ack multiple` on
//! its highest tag instead of one ack per delivery, each of which lapin
//! sends through its internal RPC task.
//!
//! A multiple ack also acks every lower tag still outstanding on the
//! channel. So batches take turns in the order they were dispatched, and a
//! batch sends it only when the batch before it says that it settled every
//! delivery it had (and so on back to the start of the channel), and when
//! it has settled its own others (moved, requeued). A batch that could not
//! say so (its task ended early, a move or an ack failed) breaks the chain:
//! every later batch on that channel acks one delivery at a time, which is
//! always safe. Each channel starts a chain of its own.

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::sync::oneshot;
use wa_core::telemetry::error_chain;

/// Hands out the turns of one channel's batches, in dispatch order.
pub(crate) struct AckChain {
    last: oneshot::Receiver<bool>,
}

impl AckChain {
    pub(crate) fn new() -> Self {
        let (settled, last) = oneshot::channel();
        let _ = settled.send(true);
        Self { last }
    }

    pub(crate) fn next_turn(&mut self) -> AckTurn {
        let (settled, next) = oneshot::channel();
        AckTurn {
            before: std::mem::replace(&mut self.last, next),
            settled,
        }
    }
}

/// One batch's place in its channel's chain. Dropped without
/// [`AckTurn::finish`], it tells the next batch that not everything before
/// it is settled.
pub(crate) struct AckTurn {
    before: oneshot::Receiver<bool>,
    settled: oneshot::Sender<bool>,
}

impl AckTurn {
    /// Acks `pending` once every earlier delivery of the channel is settled
    /// and `rest_settled` says this batch's other deliveries are: with one
    /// multiple ack on the highest tag when it may, else one by one. Then
    /// hands the turn on, saying whether everything up to here is settled.
    pub(crate) async fn finish(self, pending: &[&Delivery], rest_settled: bool) {
        let clean = self.before.await.unwrap_or(false) && rest_settled;
        let settled = match pending.iter().max_by_key(|delivery| delivery.delivery_tag) {
            None => clean,
            Some(highest) if clean => ack(highest, true).await,
            Some(_) => {
                futures_util::future::join_all(pending.iter().map(|d| ack(d, false))).await;
                false
            }
        };
        let _ = self.settled.send(settled);
    }
}

/// Acks `delivery` (and with `multiple` every lower tag outstanding on its
/// channel); true once the broker has it.
pub(crate) async fn ack(delivery: &Delivery, multiple: bool) -> bool {
    match delivery.ack(BasicAckOptions { multiple }).await {
        Ok(sent) => sent,
        Err(error) => {
            // The broker redelivers it; the claims and the database absorb that.
            tracing::debug!(error = %error_chain(&error), "ack failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn says(turn: AckTurn, settled: bool) {
        let _ = turn.before.await;
        let _ = turn.settled.send(settled);
    }

    #[tokio::test]
    async fn a_turn_hears_whether_everything_before_it_is_settled() {
        let mut chain = AckChain::new();
        let first = chain.next_turn();
        let second = chain.next_turn();
        let third = chain.next_turn();
        let fourth = chain.next_turn();
        says(first, true).await;
        assert!(second.before.await.unwrap_or(false));
        // A batch whose task ended without finishing breaks the chain.
        drop(third);
        assert!(!fourth.before.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn a_broken_chain_stays_broken_for_the_batches_after() {
        let mut chain = AckChain::new();
        let first = chain.next_turn();
        let second = chain.next_turn();
        let third = chain.next_turn();
        says(first, false).await;
        // The second batch has nothing pending: it passes on what it heard.
        second.finish(&[], true).await;
        assert!(!third.before.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn turns_finish_in_dispatch_order_whatever_order_their_batches_end_in() {
        let mut chain = AckChain::new();
        let turns: Vec<AckTurn> = (0..16).map(|_| chain.next_turn()).collect();
        let last = chain.next_turn();
        let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(turns.len()));
        let tasks: Vec<_> = turns
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, turn)| {
                let (finished, barrier) = (finished.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let clean = turn.before.await.unwrap_or(false);
                    finished.lock().expect("lock").push(i);
                    let _ = turn.settled.send(clean);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("turn task");
        }
        assert_eq!(*finished.lock().expect("lock"), (0..16).collect::<Vec<_>>());
        assert!(last.before.await.unwrap_or(false));
    }
}
