//! Test-only failpoints: make writes fail with a database error that the
//! classification table does not know, the way an unknown dependency failure
//! would, or stop a write before its commit, with its transaction open on
//! the server. They exist only with the `failpoints` feature, which only the
//! end-to-end tests turn on: `cargo build -p wa-ingest` has none of it.

use std::borrow::Cow;
use std::sync::Mutex;

use wa_payload::Event;

/// The SQLSTATE of the injected error: in no class PostgreSQL defines.
pub const INJECTED_SQLSTATE: &str = "WA999";

/// Which writes fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failpoint {
    /// Every write, the probe's included: a failing dependency.
    EveryWrite,
    /// Writes that hold an event whose key contains this text: a failure
    /// that follows one payload.
    EventKeyContains(String),
    /// Writes that hold an event whose key contains this text wait before
    /// their commit until disarmed: the rows stay locked by a transaction
    /// that is open on the server.
    HoldBeforeCommit(String),
}

static ARMED: Mutex<Option<Failpoint>> = Mutex::new(None);

pub fn arm(failpoint: Failpoint) {
    *ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(failpoint);
}

pub fn disarm() {
    *ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
}

fn armed() -> Option<Failpoint> {
    ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn any_key_contains(events: &[&Event], text: &str) -> bool {
    events.iter().any(|e| e.key().contains(text))
}

pub(crate) fn check(events: &[&Event]) -> Result<(), sqlx::Error> {
    let fails = match armed() {
        Some(Failpoint::EveryWrite) => true,
        Some(Failpoint::EventKeyContains(text)) => any_key_contains(events, &text),
        None | Some(Failpoint::HoldBeforeCommit(_)) => false,
    };
    if fails {
        Err(sqlx::Error::Database(Box::new(Injected)))
    } else {
        Ok(())
    }
}

pub(crate) async fn hold_before_commit(events: &[&Event]) {
    while matches!(armed(), Some(Failpoint::HoldBeforeCommit(text)) if any_key_contains(events, &text))
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[derive(Debug)]
struct Injected;

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected failure (failpoint)")
    }
}

impl std::error::Error for Injected {}

impl sqlx::error::DatabaseError for Injected {
    fn message(&self) -> &str {
        "injected failure (failpoint)"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(INJECTED_SQLSTATE))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
