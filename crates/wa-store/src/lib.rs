//! PostgreSQL, the system of record. Unique constraints decide what is new:
//! `INSERT ... ON CONFLICT DO NOTHING RETURNING` reports only the rows really
//! inserted, and every side effect of an event happens for those rows only,
//! in the same transaction.

/// The end of an `INSERT INTO group_members AS m ...`: a membership row
/// only moves to a later change (Meta time, then event key), whatever the
/// order the changes arrive in.
macro_rules! later_membership_wins {
    () => {
        "ON CONFLICT (group_id, contact_key) DO UPDATE SET
             is_member = EXCLUDED.is_member,
             wa_id = COALESCE(EXCLUDED.wa_id, m.wa_id),
             user_id = COALESCE(EXCLUDED.user_id, m.user_id),
             changed_at = EXCLUDED.changed_at,
             event_key = EXCLUDED.event_key,
             updated_at = now()
         WHERE (m.changed_at, m.event_key) < (EXCLUDED.changed_at, EXCLUDED.event_key)"
    };
}

mod database;
mod error;
#[cfg(feature = "failpoints")]
pub mod failpoint;
mod identity;
pub mod lookup;
pub mod outbox;
mod persist;
pub mod retention;
pub mod seed;

pub use database::{ANSWER_WITHIN, DatabaseArgs, answered};
pub use error::{ErrorClass, StoreError, Systemic, sqlstate_class};
pub use identity::ContactChanges;
pub use persist::{LockWait, Persisted, Store};

/// The schema, embedded in the binary (`wa-ingest migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Applies the migrations that have not run yet. Safe to run from several
/// processes at once: sqlx takes an advisory lock.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
