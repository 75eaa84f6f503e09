/// A failed write, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StoreError {
    #[source]
    source: sqlx::Error,
    /// Failed while getting a connection, before any statement ran.
    connecting: bool,
}

impl From<sqlx::Error> for StoreError {
    fn from(source: sqlx::Error) -> Self {
        Self {
            source,
            connecting: false,
        }
    }
}

impl StoreError {
    /// Whatever goes wrong while connecting (refused, reset, TLS or protocol
    /// garbage from a half-dead peer, pool timeout) means "unreachable".
    pub(crate) fn connecting(source: sqlx::Error) -> Self {
        Self {
            source,
            connecting: true,
        }
    }

    /// True when the same write may succeed later: the database is
    /// unreachable, busy, restarting, or the transaction lost a race
    /// (serialization failure, deadlock). False when these rows will fail
    /// the same way every time (a check, a value the database refuses).
    pub fn is_transient(&self) -> bool {
        if self.connecting {
            return true;
        }
        match &self.source {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => is_transient_sqlstate(&code),
                None => true,
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }

    /// True when the database cannot be reached at all (as opposed to one
    /// statement failing): workers pause instead of failing deliveries.
    pub fn is_unreachable(&self) -> bool {
        if self.connecting {
            return true;
        }
        match &self.source {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || is_schema_missing(&code)
            }),
            _ => false,
        }
    }

    /// The SQLSTATE, when the database answered with one.
    pub fn sqlstate(&self) -> Option<String> {
        match &self.source {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// Undefined table, column or schema: the migrations have not run (yet).
/// Not the message's fault: wait for `wa-ingest migrate` instead of
/// dead-lettering everything.
fn is_schema_missing(code: &str) -> bool {
    matches!(code, "42P01" | "42703" | "3F000")
}

/// SQLSTATE classes that name a condition, not a bad row: 08 connection
/// exception, 40 transaction rollback (serialization failure, deadlock), 53
/// insufficient resources, 55P03 lock not available, 57 operator
/// intervention (shutdown, cancel), 58 system error.
fn is_transient_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
        || is_schema_missing(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for transient in ["08006", "40001", "40P01", "53300", "57P01", "55P03"] {
            assert!(is_transient_sqlstate(transient), "{transient}");
        }
        for transient in ["42P01", "42703"] {
            assert!(
                is_transient_sqlstate(transient),
                "unmigrated schema: {transient}"
            );
        }
        for permanent in ["23514", "23502", "22P05", "22021", "42601"] {
            assert!(!is_transient_sqlstate(permanent), "{permanent}");
        }
    }
}
