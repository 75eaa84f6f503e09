//! What a database error means for the deliveries that met it, decided by
//! its cause (the SQLSTATE the server sent, or what went wrong on the way to
//! it), never by accident. The table is mirrored in README ("Failures,
//! retries and the DLQ"): change both together.

use std::fmt;

/// What a failed write is about; it decides what becomes of the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// About the message: these rows fail the same way every time (a check,
    /// a value the database refuses). Dead-lettered at once.
    Permanent,
    /// About the attempt: the same write may succeed when tried again
    /// (serialization failure, deadlock, timeout, a lock). Retried.
    Transient,
    /// About the dependency: any message would fail the same way until the
    /// database is fixed. The worker pauses and probes; nothing is failed.
    Systemic(Systemic),
}

/// Why a dependency cannot take writes (the `reason` label of
/// `wa_worker_paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Systemic {
    /// Cannot connect, connection lost, the server shutting down or starting.
    Unreachable,
    /// A standby, a failover in progress, a maintenance switch.
    ReadOnly,
    /// Out of disk, memory or connections; the server's own I/O failing.
    Resources,
    /// The role may not log in, or may not write these tables.
    Privileges,
    /// A database, table, column, function or type the statements use is
    /// missing or different: migrations not run, the wrong database.
    Schema,
}

impl Systemic {
    pub fn as_str(self) -> &'static str {
        match self {
            Systemic::Unreachable => "unreachable",
            Systemic::ReadOnly => "read_only",
            Systemic::Resources => "resources",
            Systemic::Privileges => "privileges",
            Systemic::Schema => "schema",
        }
    }
}

impl fmt::Display for Systemic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PostgreSQL's SQLSTATE classes (appendix A of its manual), each decided
/// with the reason; the codes that differ from their class come first. Data
/// only ever reaches the server as bind parameters, so an error about a
/// statement's shape (class 42) is never about a payload.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    use ErrorClass::{Permanent, Systemic as Dependency, Transient};
    use Systemic::{Privileges, ReadOnly, Resources, Schema, Unreachable};
    match code {
        // read_only_sql_transaction: a standby, or default_transaction_read_only.
        "25006" => return Dependency(ReadOnly),
        // insufficient_privilege: a GRANT is missing.
        "42501" => return Dependency(Privileges),
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or coming.
        "57P01" | "57P02" | "57P03" => return Dependency(Unreachable),
        // database_dropped.
        "57P04" => return Dependency(Schema),
        // protocol_violation: the server refused this request's framing.
        "08P01" => return Transient,
        // transaction_integrity_constraint_violation: a deferred constraint refused these rows.
        "40002" => return Permanent,
        _ => {}
    }
    match code.get(..2).unwrap_or("") {
        // Success, warning, no data: not errors; a driver surprise, tried again.
        "00" | "01" | "02" => Transient,
        // SQL statement not yet complete: this attempt's state.
        "03" => Transient,
        // Connection exception: the server cannot be reached.
        "08" => Dependency(Unreachable),
        // Triggered action exception: a trigger that is not ours; the breaker catches repeats.
        "09" => Transient,
        // Feature not supported: the server lacks what the statements use.
        "0A" => Dependency(Schema),
        // Invalid transaction initiation, locator exception: this attempt's state.
        "0B" | "0F" => Transient,
        // Invalid grantor, invalid role specification: the role is wrong.
        "0L" | "0P" => Dependency(Privileges),
        // Diagnostics exception: this attempt's state.
        "0Z" => Transient,
        // Case not found (PL/pgSQL in a trigger): not ours; the breaker catches repeats.
        "20" => Transient,
        // Cardinality violation: this payload's rows conflict with each other.
        "21" => Permanent,
        // Data exception: a value of this payload (out of range, bad JSON).
        "22" => Permanent,
        // Integrity constraint violation: a check, not-null or key refused these rows.
        "23" => Permanent,
        // Invalid cursor state: this attempt's state.
        "24" => Transient,
        // Invalid transaction state (25006 above): this attempt's transaction.
        "25" => Transient,
        // Invalid SQL statement name: a prepared statement vanished (a pooler swapped sessions).
        "26" => Transient,
        // Triggered data change violation: these rows.
        "27" => Permanent,
        // Invalid authorization specification: cannot log in.
        "28" => Dependency(Privileges),
        // Dependent privilege descriptors, transaction termination, routine exception: this attempt's.
        "2B" | "2D" | "2F" => Transient,
        // Invalid cursor name: this attempt's state.
        "34" => Transient,
        // External routine (invocation) exception: not ours; the breaker catches repeats.
        "38" | "39" => Transient,
        // Savepoint exception: this attempt's state.
        "3B" => Transient,
        // Invalid catalog name: the database does not exist.
        "3D" => Dependency(Schema),
        // Invalid schema name: the schema does not exist.
        "3F" => Dependency(Schema),
        // Transaction rollback: serialization failure, deadlock; lost a race.
        "40" => Transient,
        // Syntax error or access rule violation (42501 above): undefined table,
        // column or function, a changed type: the statements do not fit the schema.
        "42" => Dependency(Schema),
        // WITH CHECK OPTION violation: these rows.
        "44" => Permanent,
        // Insufficient resources: disk full, out of memory, too many connections.
        "53" => Dependency(Resources),
        // Program limit exceeded: this payload is too large for an index or a statement.
        "54" => Permanent,
        // Object not in prerequisite state: lock not available, object in use.
        "55" => Transient,
        // Operator intervention (57P0x above): query canceled, statement or idle timeout.
        "57" => Transient,
        // System error: the server's disk or operating system failed.
        "58" => Dependency(Resources),
        // Snapshot too old: this attempt's snapshot.
        "72" => Transient,
        // Configuration file error: reported on reload, not for a write.
        "F0" => Transient,
        // Foreign data wrapper error, PL/pgSQL raise, internal error or corruption:
        // not ours to know; retried, and the breaker catches repeats.
        "HV" | "P0" | "XX" => Transient,
        // A class PostgreSQL may add later: retried, and the breaker catches repeats.
        _ => Transient,
    }
}

/// A failed database operation, classified by [`StoreError::class`].
///
/// It displays as the error it wraps and returns that error's cause as its
/// source, so a log line built with `error_chain` shows each cause once.
#[derive(Debug)]
pub struct StoreError {
    repr: Repr,
}

#[derive(Debug)]
enum Repr {
    Sqlx {
        source: sqlx::Error,
        /// Failed while getting a connection, before any statement ran.
        connecting: bool,
    },
    /// The probe found the server read-only before trying to write.
    ReadOnly { in_recovery: bool },
    /// The server did not answer within this long: frozen or hung, its
    /// connection still open.
    NoAnswer { waited: std::time::Duration },
}

impl From<sqlx::Error> for StoreError {
    fn from(source: sqlx::Error) -> Self {
        Self {
            repr: Repr::Sqlx {
                source,
                connecting: false,
            },
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Sqlx { source, .. } => source.fmt(f),
            Repr::ReadOnly { in_recovery: true } => {
                f.write_str("the database is read-only: a standby in recovery")
            }
            Repr::ReadOnly { in_recovery: false } => {
                f.write_str("the database is read-only: transaction_read_only is on")
            }
            Repr::NoAnswer { waited } => write!(
                f,
                "the database did not answer within {waited:?}: it is frozen or hung"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.repr {
            // Transparent: the wrapped error's text is this one's already.
            Repr::Sqlx { source, .. } => source.source(),
            Repr::ReadOnly { .. } | Repr::NoAnswer { .. } => None,
        }
    }
}

impl StoreError {
    /// Whatever goes wrong while connecting (refused, reset, TLS or protocol
    /// garbage from a half-dead peer, pool timeout) is about the dependency.
    pub(crate) fn connecting(source: sqlx::Error) -> Self {
        Self {
            repr: Repr::Sqlx {
                source,
                connecting: true,
            },
        }
    }

    pub(crate) fn read_only(in_recovery: bool) -> Self {
        Self {
            repr: Repr::ReadOnly { in_recovery },
        }
    }

    pub(crate) fn no_answer(waited: std::time::Duration) -> Self {
        Self {
            repr: Repr::NoAnswer { waited },
        }
    }

    /// What the error is about: the message, the attempt or the dependency.
    pub fn class(&self) -> ErrorClass {
        let (source, connecting) = match &self.repr {
            Repr::Sqlx { source, connecting } => (source, *connecting),
            Repr::ReadOnly { .. } => return ErrorClass::Systemic(Systemic::ReadOnly),
            Repr::NoAnswer { .. } => return ErrorClass::Systemic(Systemic::Unreachable),
        };
        let class = match source {
            sqlx::Error::Database(db) => db
                .code()
                .map_or(ErrorClass::Transient, |code| sqlstate_class(&code)),
            other => sqlx_class(other),
        };
        match class {
            // Before any statement ran, nothing was about this message.
            ErrorClass::Permanent | ErrorClass::Transient if connecting => {
                ErrorClass::Systemic(Systemic::Unreachable)
            }
            class => class,
        }
    }

    pub fn is_systemic(&self) -> bool {
        matches!(self.class(), ErrorClass::Systemic(_))
    }

    /// A lock another session holds outlasted the session's `lock_timeout`
    /// (`55P03`): the rows this write needs, not the database, are busy.
    pub fn is_lock_wait(&self) -> bool {
        self.sqlstate().as_deref() == Some("55P03")
    }

    /// The SQLSTATE, when the database answered with one.
    pub fn sqlstate(&self) -> Option<String> {
        match &self.repr {
            Repr::Sqlx {
                source: sqlx::Error::Database(db),
                ..
            } => db.code().map(|c| c.into_owned()),
            Repr::ReadOnly { .. } => Some("25006".to_owned()),
            Repr::Sqlx { .. } | Repr::NoAnswer { .. } => None,
        }
    }

    /// What failures of the same cause share, free of any data: the
    /// SQLSTATE, else the kind of error. The breaker counts by it.
    pub fn signature(&self) -> String {
        match (&self.repr, self.sqlstate()) {
            (_, Some(code)) => format!("sqlstate {code}"),
            (Repr::Sqlx { source, .. }, None) => format!("sqlx {}", sqlx_kind(source)),
            (Repr::ReadOnly { .. }, None) => "read-only".to_owned(),
            (Repr::NoAnswer { .. }, None) => "no answer".to_owned(),
        }
    }
}

/// The errors sqlx raises itself, each decided with the reason.
fn sqlx_class(error: &sqlx::Error) -> ErrorClass {
    use ErrorClass::{Permanent, Systemic as Dependency, Transient};
    use Systemic::{Schema, Unreachable};
    match error {
        // Answered by the table above.
        sqlx::Error::Database(_) => Transient,
        // The connection broke, could not be made, or the pool has none to give.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_) => Dependency(Unreachable),
        // The result does not have the columns or types the worker reads:
        // the schema differs from the one it was built for.
        sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Migrate(_) => Dependency(Schema),
        // A value of this payload the driver cannot send.
        sqlx::Error::Encode(_) | sqlx::Error::InvalidArgument(_) => Permanent,
        // Garbage on a live connection, a transaction in an odd state, no
        // row where one was expected: this attempt's; the breaker catches repeats.
        _ => Transient,
    }
}

fn sqlx_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::InvalidArgument(_) => "invalid_argument",
        sqlx::Error::Database(_) => "database",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::TypeNotFound { .. } => "type_not_found",
        sqlx::Error::ColumnIndexOutOfBounds { .. } => "column_index_out_of_bounds",
        sqlx::Error::ColumnNotFound(_) => "column_not_found",
        sqlx::Error::ColumnDecode { .. } => "column_decode",
        sqlx::Error::Encode(_) => "encode",
        sqlx::Error::Decode(_) => "decode",
        sqlx::Error::PoolTimedOut => "pool_timed_out",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::WorkerCrashed => "worker_crashed",
        sqlx::Error::Migrate(_) => "migrate",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::{Permanent, Systemic as Dependency, Transient};
    use super::Systemic::*;
    use super::*;

    #[test]
    fn every_sqlstate_class_is_decided() {
        // One code of every class of PostgreSQL 15's appendix A, and the
        // codes that differ from their class.
        let table = [
            ("00000", Transient),
            ("01000", Transient),
            ("02000", Transient),
            ("03000", Transient),
            ("08000", Dependency(Unreachable)),
            ("08003", Dependency(Unreachable)),
            ("08006", Dependency(Unreachable)),
            ("08001", Dependency(Unreachable)),
            ("08P01", Transient),
            ("09000", Transient),
            ("0A000", Dependency(Schema)),
            ("0B000", Transient),
            ("0F000", Transient),
            ("0L000", Dependency(Privileges)),
            ("0P000", Dependency(Privileges)),
            ("0Z000", Transient),
            ("20000", Transient),
            ("21000", Permanent),
            ("22001", Permanent),
            ("22003", Permanent),
            ("22021", Permanent),
            ("22P02", Permanent),
            ("22P05", Permanent),
            ("23502", Permanent),
            ("23503", Permanent),
            ("23505", Permanent),
            ("23514", Permanent),
            ("24000", Transient),
            ("25001", Transient),
            ("25P02", Transient),
            ("25P03", Transient),
            ("25006", Dependency(ReadOnly)),
            ("26000", Transient),
            ("27000", Permanent),
            ("28000", Dependency(Privileges)),
            ("28P01", Dependency(Privileges)),
            ("2B000", Transient),
            ("2D000", Transient),
            ("2F000", Transient),
            ("34000", Transient),
            ("38000", Transient),
            ("39000", Transient),
            ("3B000", Transient),
            ("3D000", Dependency(Schema)),
            ("3F000", Dependency(Schema)),
            ("40000", Transient),
            ("40001", Transient),
            ("40P01", Transient),
            ("40002", Permanent),
            ("40003", Transient),
            ("42000", Dependency(Schema)),
            ("42601", Dependency(Schema)),
            ("42P01", Dependency(Schema)),
            ("42703", Dependency(Schema)),
            ("42883", Dependency(Schema)),
            ("42804", Dependency(Schema)),
            ("42501", Dependency(Privileges)),
            ("44000", Permanent),
            ("53000", Dependency(Resources)),
            ("53100", Dependency(Resources)),
            ("53200", Dependency(Resources)),
            ("53300", Dependency(Resources)),
            ("53400", Dependency(Resources)),
            ("54000", Permanent),
            ("54001", Permanent),
            ("55000", Transient),
            ("55006", Transient),
            ("55P03", Transient),
            ("57000", Transient),
            ("57014", Transient),
            ("57P01", Dependency(Unreachable)),
            ("57P02", Dependency(Unreachable)),
            ("57P03", Dependency(Unreachable)),
            ("57P04", Dependency(Schema)),
            ("57P05", Transient),
            ("58000", Dependency(Resources)),
            ("58030", Dependency(Resources)),
            ("72000", Transient),
            ("F0000", Transient),
            ("HV000", Transient),
            ("P0001", Transient),
            ("P0004", Transient),
            ("XX000", Transient),
            ("XX001", Transient),
            ("XX002", Transient),
            ("ZZ999", Transient),
            ("", Transient),
        ];
        for (code, class) in table {
            assert_eq!(sqlstate_class(code), class, "SQLSTATE {code:?}");
        }
    }

    #[test]
    fn sqlx_errors_are_decided() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let boxed = || -> sqlx::error::BoxDynError { "boom".into() };
        let table = [
            (sqlx::Error::Io(io()), Dependency(Unreachable)),
            (sqlx::Error::Tls(boxed()), Dependency(Unreachable)),
            (sqlx::Error::PoolTimedOut, Dependency(Unreachable)),
            (sqlx::Error::PoolClosed, Dependency(Unreachable)),
            (sqlx::Error::WorkerCrashed, Dependency(Unreachable)),
            (sqlx::Error::Configuration(boxed()), Dependency(Unreachable)),
            (sqlx::Error::Protocol("garbage".into()), Transient),
            (sqlx::Error::RowNotFound, Transient),
            (sqlx::Error::BeginFailed, Transient),
            (
                sqlx::Error::ColumnNotFound("wamid".into()),
                Dependency(Schema),
            ),
            (sqlx::Error::Decode(boxed()), Dependency(Schema)),
            (
                sqlx::Error::TypeNotFound {
                    type_name: "t".into(),
                },
                Dependency(Schema),
            ),
            (sqlx::Error::Encode(boxed()), Permanent),
            (sqlx::Error::InvalidArgument("x".into()), Permanent),
        ];
        for (error, class) in table {
            let text = error.to_string();
            assert_eq!(StoreError::from(error).class(), class, "{text}");
        }
    }

    #[test]
    fn anything_while_connecting_is_about_the_dependency() {
        let garbage = StoreError::connecting(sqlx::Error::Protocol("garbage".into()));
        assert_eq!(garbage.class(), Dependency(Unreachable));
        assert_eq!(garbage.signature(), "sqlx protocol");
    }

    #[test]
    fn a_read_only_probe_says_why() {
        let standby = StoreError::read_only(true);
        assert_eq!(standby.class(), Dependency(ReadOnly));
        assert_eq!(standby.sqlstate().as_deref(), Some("25006"));
        assert!(standby.to_string().contains("standby"));
    }
}
