//! Why a delivery could not be handled, and what that decides: retry later
//! (transient) or dead-letter at once (permanent).

use std::fmt;

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
        Failure::permanent(error.to_string())
    }
}

impl From<&wa_store::StoreError> for Failure {
    fn from(error: &wa_store::StoreError) -> Self {
        let reason = match error.sqlstate() {
            Some(code) => format!("database error {code}: {error}"),
            None => format!("database error: {error}"),
        };
        if error.is_transient() {
            Failure::transient(reason)
        } else {
            Failure::permanent(reason)
        }
    }
}
