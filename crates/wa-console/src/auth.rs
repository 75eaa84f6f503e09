//! Who may use the console: a configured token buys a session (a random id
//! in an `HttpOnly`, `SameSite=Strict` cookie); every action also carries
//! the session's CSRF token in its form.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Operator;

pub const SESSION_COOKIE: &str = "wa_console_session";

/// Sessions kept at once; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 1024;

/// Failed logins allowed per minute, all clients together; more get 429.
const FAILED_LOGINS_PER_MINUTE: usize = 10;

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) operator: String,
    pub(crate) csrf: String,
    /// A short prefix of the session id, for the audit log.
    pub(crate) tag: String,
    expires: Instant,
    created: Instant,
}

pub(crate) struct Auth {
    /// SHA-256 of each token: compared in constant time, never kept in clear.
    tokens: Vec<(String, [u8; 32])>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<Vec<Instant>>,
    ttl: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoginError {
    Refused,
    TooMany,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub(crate) fn new(operators: &[Operator], ttl: Duration) -> Self {
        Self {
            tokens: operators
                .iter()
                .map(|o| (o.name.clone(), digest(o.token.expose())))
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
            ttl,
        }
    }

    /// A new session id for the operator whose token this is.
    pub(crate) fn login(&self, token: &str) -> Result<(String, Session), LoginError> {
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            failures.retain(|at| now.duration_since(*at) < Duration::from_secs(60));
            if failures.len() >= FAILED_LOGINS_PER_MINUTE {
                return Err(LoginError::TooMany);
            }
        }
        let offered = digest(token);
        // Every token is compared, so the time says nothing about which matched.
        let mut operator = None;
        for (name, expected) in &self.tokens {
            if same(&offered, expected) {
                operator = Some(name.clone());
            }
        }
        let Some(operator) = operator else {
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now);
            return Err(LoginError::Refused);
        };
        let id = random_hex();
        let session = Session {
            operator,
            csrf: random_hex(),
            tag: id[..8].to_owned(),
            expires: now + self.ttl,
            created: now,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with this id.
    pub(crate) fn session(&self, id: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn logout(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id in a `Cookie` header.
pub(crate) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wa_core::SecretString;

    fn auth() -> Auth {
        Auth::new(
            &[Operator {
                name: "alice".into(),
                token: SecretString::new("a".repeat(32)),
            }],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_token_opens_a_session_of_its_operator() {
        let auth = auth();
        let (id, session) = auth.login(&"a".repeat(32)).expect("login");
        assert_eq!(session.operator, "alice");
        assert_eq!(auth.session(&id).expect("session").csrf, session.csrf);
        auth.logout(&id);
        assert!(auth.session(&id).is_none());
    }

    #[test]
    fn wrong_tokens_are_refused_then_throttled() {
        let auth = auth();
        for _ in 0..FAILED_LOGINS_PER_MINUTE {
            assert_eq!(auth.login("wrong").err(), Some(LoginError::Refused));
        }
        assert_eq!(auth.login(&"a".repeat(32)).err(), Some(LoginError::TooMany));
    }
}
