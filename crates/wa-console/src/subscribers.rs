//! The HTTP subscribers (wa-deliver's endpoints) as the console shows them:
//! each endpoint's state with its recent attempts, read through wa-deliver's
//! store.

use sqlx::PgPool;
use wa_deliver::store::{self, Attempt, EndpointStatus};

/// The attempts a success rate and the last error are taken from.
pub(crate) const RECENT_ATTEMPTS: i64 = 50;

pub(crate) struct Subscriber {
    pub(crate) status: EndpointStatus,
    /// Newest first, at most [`RECENT_ATTEMPTS`].
    pub(crate) attempts: Vec<Attempt>,
}

impl Subscriber {
    /// The share of recent attempts answered with a 2xx, if any were made.
    pub(crate) fn success_rate(&self) -> Option<f64> {
        let succeeded = self.attempts.iter().filter(|a| succeeded(a)).count();
        (!self.attempts.is_empty()).then(|| succeeded as f64 / self.attempts.len() as f64)
    }

    /// The newest failed attempt.
    pub(crate) fn last_error(&self) -> Option<&Attempt> {
        self.attempts.iter().find(|a| !succeeded(a))
    }
}

pub(crate) fn succeeded(attempt: &Attempt) -> bool {
    attempt
        .status_code
        .is_some_and(|code| (200..300).contains(&code))
}

async fn with_attempts(pool: &PgPool, status: EndpointStatus) -> Result<Subscriber, sqlx::Error> {
    let attempts = store::attempts(pool, status.endpoint.id, RECENT_ATTEMPTS).await?;
    Ok(Subscriber { status, attempts })
}

/// Every endpoint, by id.
pub(crate) async fn list(pool: &PgPool) -> Result<Vec<Subscriber>, sqlx::Error> {
    let mut subscribers = Vec::new();
    for status in store::list(pool).await? {
        subscribers.push(with_attempts(pool, status).await?);
    }
    Ok(subscribers)
}

pub(crate) async fn one(pool: &PgPool, id: i64) -> Result<Option<Subscriber>, sqlx::Error> {
    match store::status(pool, id).await? {
        Some(status) => with_attempts(pool, status).await.map(Some),
        None => Ok(None),
    }
}

/// Deliveries waiting for every endpoint together.
pub(crate) async fn total_backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    Ok(store::backlogs(pool)
        .await?
        .iter()
        .map(|(_, _, backlog)| backlog)
        .sum())
}
