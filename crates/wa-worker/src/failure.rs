//! Why a delivery could not be handled, and what that decides: retry later
//! (transient), dead-letter at once (permanent), or neither: pause the
//! worker, because the dependency cannot take any message (systemic).

use std::fmt;

use wa_core::telemetry::error_chain;
use wa_store::{ErrorClass, StoreError, Systemic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The same delivery may succeed later: a dependency was busy, timed out,
    /// or lost a race.
    Transient,
    /// The same bytes fail the same way every time: not JSON, not a WhatsApp
    /// envelope, a value the database refuses.
    Permanent,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure with the text an operator reads in the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub reason: String,
}

impl Failure {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Transient,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Permanent,
            reason: reason.into(),
        }
    }
}

impl From<&wa_payload::PayloadError> for Failure {
    fn from(error: &wa_payload::PayloadError) -> Self {
        Failure::permanent(error_chain(error))
    }
}

/// A failure that is about one delivery (or one attempt), with what
/// failures of the same cause share: the breaker counts by `signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub failure: Failure,
    pub signature: String,
    /// Where it failed: the dependency a breaker trip pauses for.
    pub dependency: Dependency,
    /// A lock another session holds outlasted the wait for it.
    pub lock_held: bool,
}

/// The dependency a worker waits for while paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Postgresql,
    Redis,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgresql => "postgresql",
            Dependency::Redis => "redis",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dependency::Postgresql => "PostgreSQL",
            Dependency::Redis => "Redis",
        }
    }
}

/// Why the worker is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Not reached since the worker started.
    Starting,
    /// An error that would hit any message the same way (the classification table).
    Systemic(Systemic),
    /// Many distinct deliveries failed alone with the same non-payload error.
    Breaker,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Starting => "starting",
            PauseReason::Systemic(systemic) => systemic.as_str(),
            PauseReason::Breaker => "breaker",
        }
    }
}

/// The worker takes no writes until `dependency` passes a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub dependency: Dependency,
    pub reason: PauseReason,
    /// The error that caused it, each cause once.
    pub detail: String,
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dependency = self.dependency.name();
        match self.reason {
            PauseReason::Starting => write!(f, "{dependency} not reached yet")?,
            PauseReason::Systemic(systemic) => write!(f, "{dependency} {}", describe(systemic))?,
            PauseReason::Breaker => write!(
                f,
                "breaker open: many deliveries failed the same way on {dependency}"
            )?,
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

fn describe(systemic: Systemic) -> &'static str {
    match systemic {
        Systemic::Unreachable => "unreachable",
        Systemic::ReadOnly => "is read-only",
        Systemic::Resources => "is out of resources",
        Systemic::Privileges => "refuses our privileges",
        Systemic::Schema => "schema does not match",
    }
}

/// What a failed store means: pause for the dependency, or a failure of
/// these deliveries.
pub enum StoreOutcome {
    Pause(Pause),
    Failed(Failed),
}

impl From<&StoreError> for StoreOutcome {
    fn from(error: &StoreError) -> Self {
        let detail = error_chain(error);
        let failure = |class| Failed {
            failure: Failure {
                class,
                reason: match error.sqlstate() {
                    Some(code) => format!("database error {code}: {detail}"),
                    None => format!("database error: {detail}"),
                },
            },
            signature: error.signature(),
            dependency: Dependency::Postgresql,
            lock_held: error.is_lock_wait(),
        };
        match error.class() {
            ErrorClass::Systemic(systemic) => StoreOutcome::Pause(Pause {
                dependency: Dependency::Postgresql,
                reason: PauseReason::Systemic(systemic),
                detail,
            }),
            ErrorClass::Transient => StoreOutcome::Failed(failure(FailureClass::Transient)),
            ErrorClass::Permanent => StoreOutcome::Failed(failure(FailureClass::Permanent)),
        }
    }
}

/// Redis errors when claims fail closed. Claims of every message go through
/// the same commands on keys of our own namespace, so almost every error is
/// about Redis; the few answers that can come from one key (a script busy,
/// a key of the wrong type) are this attempt's, and the breaker catches repeats.
pub fn redis_class(error: &redis::RedisError) -> ErrorClass {
    use redis::ErrorKind as Kind;
    use redis::ServerErrorKind as Server;
    match error.kind() {
        // Refused, reset, timed out; no node or sentinel to talk to.
        Kind::Io
        | Kind::ClusterConnectionNotFound
        | Kind::MasterNameNotFoundBySentinel
        | Kind::NoValidReplicasFoundBySentinel
        | Kind::EmptySentinelList
        | Kind::InvalidClientConfig => ErrorClass::Systemic(Systemic::Unreachable),
        // Loading its data, no master, cluster down or resharding, or a key
        // on another node (a cluster behind a single-node client).
        Kind::Server(
            Server::BusyLoading
            | Server::MasterDown
            | Server::ClusterDown
            | Server::TryAgain
            | Server::Moved
            | Server::Ask
            | Server::CrossSlot,
        ) => ErrorClass::Systemic(Systemic::Unreachable),
        // A replica: a failover in progress.
        Kind::Server(Server::ReadOnly) => ErrorClass::Systemic(Systemic::ReadOnly),
        // The ACL user may not log in or may not run the commands.
        Kind::AuthenticationFailed | Kind::Server(Server::NoPerm) => {
            ErrorClass::Systemic(Systemic::Privileges)
        }
        // maxmemory reached: no key can be written.
        Kind::Extension if error.code() == Some("OOM") => ErrorClass::Systemic(Systemic::Resources),
        // ERR, WRONGTYPE, BUSY, EXECABORT, a reply we could not read.
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    fn redis_error(kind: ErrorKind) -> RedisError {
        RedisError::from((kind, "test"))
    }

    #[test]
    fn redis_errors_are_decided() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(
            redis_class(&io),
            ErrorClass::Systemic(Systemic::Unreachable)
        );
        let table = [
            (
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                ErrorClass::Systemic(Systemic::ReadOnly),
            ),
            (
                ErrorKind::Server(ServerErrorKind::BusyLoading),
                ErrorClass::Systemic(Systemic::Unreachable),
            ),
            (
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                ErrorClass::Systemic(Systemic::Unreachable),
            ),
            (
                ErrorKind::Server(ServerErrorKind::NoPerm),
                ErrorClass::Systemic(Systemic::Privileges),
            ),
            (
                ErrorKind::AuthenticationFailed,
                ErrorClass::Systemic(Systemic::Privileges),
            ),
            (
                ErrorKind::Server(ServerErrorKind::ResponseError),
                ErrorClass::Transient,
            ),
            (ErrorKind::UnexpectedReturnType, ErrorClass::Transient),
        ];
        for (kind, class) in table {
            assert_eq!(redis_class(&redis_error(kind)), class, "{kind:?}");
        }
    }

    #[test]
    fn a_pause_says_why() {
        let pause = Pause {
            dependency: Dependency::Postgresql,
            reason: PauseReason::Systemic(Systemic::ReadOnly),
            detail: "cannot execute INSERT in a read-only transaction".into(),
        };
        assert_eq!(
            pause.to_string(),
            "PostgreSQL is read-only (cannot execute INSERT in a read-only transaction)"
        );
    }
}
