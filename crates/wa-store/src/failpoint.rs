//! A test-only failpoint: makes writes fail with a database error that the
//! classification table does not know, the way an unknown dependency failure
//! would. It exists only with the `failpoints` feature, which only the
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

pub(crate) fn check(events: &[&Event]) -> Result<(), sqlx::Error> {
    let armed = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let fails = match armed {
        None => false,
        Some(Failpoint::EveryWrite) => true,
        Some(Failpoint::EventKeyContains(text)) => events.iter().any(|e| e.key().contains(&text)),
    };
    if fails {
        Err(sqlx::Error::Database(Box::new(Injected)))
    } else {
        Ok(())
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
