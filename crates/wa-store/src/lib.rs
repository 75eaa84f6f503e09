//! PostgreSQL, the system of record. Unique constraints decide what is new:
//! `INSERT ... ON CONFLICT DO NOTHING RETURNING` reports only the rows really
//! inserted, and every side effect of an event happens for those rows only,
//! in the same transaction.

mod error;
mod identity;
pub mod outbox;
mod persist;

pub use error::StoreError;
pub use identity::ContactChanges;
pub use persist::{Persisted, Store};

/// The schema, embedded in the binary (`wa-ingest migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Applies the migrations that have not run yet. Safe to run from several
/// processes at once: sqlx takes an advisory lock.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
