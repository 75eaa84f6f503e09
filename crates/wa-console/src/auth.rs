//! Who may use the console: a configured token buys a session (a random id
//! in an `HttpOnly`, `SameSite=Strict` cookie); every action also carries
//! the session's CSRF token in its form.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Operator;

pub const SESSION_COOKIE: &str = "wa_console_session";

/// Sessions kept at once; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 1024;

/// Failed sign-ins allowed per minute from one client; more from it get
/// 429 while every other client still signs in.
const FAILED_LOGINS_PER_CLIENT: usize = 10;

/// Failed sign-ins allowed per minute from all clients together: a ceiling
/// on guessing from many addresses. Locking everyone out takes failures
/// from at least ten clients.
const FAILED_LOGINS_IN_ALL: usize = 100;

const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);

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
    failures: Mutex<FailedLogins>,
    ttl: Duration,
}

/// The failed sign-ins of the last minute, per client and in all.
#[derive(Default)]
struct FailedLogins {
    all: VecDeque<Instant>,
    /// At most [`FAILED_LOGINS_PER_CLIENT`] each; a client whose failures
    /// all passed is forgotten once the map outgrows what the ceiling
    /// lets fail in a minute.
    by_client: HashMap<IpAddr, VecDeque<Instant>>,
}

impl FailedLogins {
    fn throttled(&mut self, client: IpAddr, now: Instant) -> bool {
        forget_before(&mut self.all, now);
        let mine = self.by_client.get_mut(&client).map_or(0, |failures| {
            forget_before(failures, now);
            failures.len()
        });
        mine >= FAILED_LOGINS_PER_CLIENT || self.all.len() >= FAILED_LOGINS_IN_ALL
    }

    /// Only after [`Self::throttled`] said no, which keeps every queue
    /// within its limit.
    fn record(&mut self, client: IpAddr, now: Instant) {
        self.all.push_back(now);
        self.by_client.entry(client).or_default().push_back(now);
        if self.by_client.len() > FAILED_LOGINS_IN_ALL {
            self.by_client
                .retain(|_, failures| failures.back().is_some_and(|at| recent(*at, now)));
        }
    }
}

fn recent(at: Instant, now: Instant) -> bool {
    now.duration_since(at) < FAILED_LOGIN_WINDOW
}

fn forget_before(failures: &mut VecDeque<Instant>, now: Instant) {
    while failures.front().is_some_and(|at| !recent(*at, now)) {
        failures.pop_front();
    }
}

/// Whom a failed sign-in counts against: the address, or for IPv6 its /64
/// (one subscriber's network, whose addresses its holder may use at will).
fn client_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
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
            failures: Mutex::new(FailedLogins::default()),
            ttl,
        }
    }

    /// A new session id for the operator whose token this is, unless the
    /// client at `address` (or everyone) failed too often in the last minute.
    pub(crate) fn login(
        &self,
        token: &str,
        address: IpAddr,
    ) -> Result<(String, Session), LoginError> {
        let now = Instant::now();
        let client = client_of(address);
        if self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .throttled(client, now)
        {
            return Err(LoginError::TooMany);
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
                .record(client, now);
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

    const OPERATOR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + n))
    }

    #[test]
    fn a_token_opens_a_session_of_its_operator() {
        let auth = auth();
        let (id, session) = auth.login(&"a".repeat(32), OPERATOR).expect("login");
        assert_eq!(session.operator, "alice");
        assert_eq!(auth.session(&id).expect("session").csrf, session.csrf);
        auth.logout(&id);
        assert!(auth.session(&id).is_none());
    }

    #[test]
    fn a_client_that_keeps_failing_is_throttled_and_no_other() {
        let auth = auth();
        for _ in 0..FAILED_LOGINS_PER_CLIENT {
            assert_eq!(
                auth.login("wrong", client(1)).err(),
                Some(LoginError::Refused)
            );
        }
        assert_eq!(
            auth.login(&"a".repeat(32), client(1)).err(),
            Some(LoginError::TooMany),
            "the failing client, even with the right token"
        );
        auth.login(&"a".repeat(32), OPERATOR)
            .expect("another client signs in");
    }

    #[test]
    fn failures_from_many_clients_reach_a_ceiling() {
        let auth = auth();
        let clients = u32::try_from(FAILED_LOGINS_IN_ALL / FAILED_LOGINS_PER_CLIENT).unwrap();
        for n in 0..clients {
            for _ in 0..FAILED_LOGINS_PER_CLIENT {
                assert_eq!(
                    auth.login("wrong", client(n)).err(),
                    Some(LoginError::Refused)
                );
            }
        }
        assert_eq!(
            auth.login(&"a".repeat(32), OPERATOR).err(),
            Some(LoginError::TooMany)
        );
        let remembered = auth.failures.lock().unwrap().by_client.len();
        assert_eq!(remembered, clients as usize);
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_network: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other_network: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_of(one), client_of(same_network));
        assert_ne!(client_of(one), client_of(other_network));
        assert_eq!(client_of(mapped), client(7));
    }
}
