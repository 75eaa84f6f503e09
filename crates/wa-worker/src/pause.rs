//! The gate every write passes: open, or closed while a dependency cannot
//! take writes. Batches that meet a closed gate wait with their deliveries
//! unacked (bounded by the prefetch): nothing is failed, no attempt is spent,
//! and nothing returns to the queue, where every return would count against
//! the quorum queue's `x-delivery-limit`.

use tokio::sync::watch;

use crate::failure::Pause;

pub(crate) struct Gate {
    state: watch::Sender<Option<Pause>>,
}

/// What a batch waiting at the gate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Open,
    /// Still closed when the deliveries' hold limit came.
    HoldLimit,
}

impl Gate {
    /// A gate closed until the first probe passes.
    pub(crate) fn closed(pause: Pause) -> Self {
        let (state, _) = watch::channel(Some(pause));
        Self { state }
    }

    /// For `/readyz`: `Err` with the reason while closed.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.state.borrow().as_ref() {
            None => Ok(()),
            Some(pause) => Err(format!("paused: {pause}")),
        }
    }

    /// Closes the gate. True when it was open: the caller then probes and
    /// opens it again; a gate already closed keeps its first reason.
    pub(crate) fn close(&self, pause: Pause) -> bool {
        self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(pause);
            true
        })
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.borrow().is_none()
    }

    /// A closed gate takes the newer reason a probe found (the connection
    /// was cut, and now the server turns out to be read-only). False when
    /// the gate is open or the reason is the same.
    pub(crate) fn update(&self, pause: Pause) -> bool {
        self.state.send_if_modified(|state| match state {
            Some(current) if *current != pause => {
                *current = pause;
                true
            }
            _ => false,
        })
    }

    pub(crate) fn open(&self) {
        self.state.send_replace(None);
    }

    /// Resolves once the gate is closed.
    pub(crate) async fn wait_closed(&self) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`: the wait ends only by closing.
        let _ = state.wait_for(Option::is_some).await;
    }

    /// Waits until the gate is open, or until `deadline`.
    pub(crate) async fn wait_open(&self, deadline: tokio::time::Instant) -> Admit {
        let mut state = self.state.subscribe();
        match tokio::time::timeout_at(deadline, state.wait_for(Option::is_none)).await {
            Ok(_) => Admit::Open,
            Err(_) => Admit::HoldLimit,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::failure::{Dependency, PauseReason};

    fn pause(detail: &str) -> Pause {
        Pause {
            dependency: Dependency::Postgresql,
            reason: PauseReason::Breaker,
            detail: detail.to_owned(),
        }
    }

    #[tokio::test]
    async fn waiters_pass_when_it_opens_and_keep_the_first_reason() {
        let gate = std::sync::Arc::new(Gate::closed(pause("first")));
        assert!(!gate.close(pause("second")), "already closed");
        assert!(gate.check().is_err_and(|reason| reason.contains("first")));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_open(deadline).await }
        });
        tokio::task::yield_now().await;
        gate.open();
        assert_eq!(waiter.await.expect("waiter"), Admit::Open);
        assert_eq!(gate.check(), Ok(()));
        assert!(gate.close(pause("third")));
    }

    #[tokio::test]
    async fn a_closed_gate_gives_up_at_the_hold_limit() {
        let gate = Gate::closed(pause("down"));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        assert_eq!(gate.wait_open(deadline).await, Admit::HoldLimit);
    }
}
