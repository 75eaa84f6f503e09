//! Claims in Redis: a short lease that says "someone is storing this event
//! now", turned into a long-lived `done` marker once it is stored.
//!
//! - claim: `SET {ns}:claim:{key} pending:{token} NX PX {lease} GET`, atomic;
//! - stored: compare-and-set to `done` with a long TTL;
//! - failed: compare-and-delete (`abandon`), so the retry can claim again at once;
//! - held by `done`: a duplicate; held by another `pending`: look again after
//!   the lease, never drop (the owner may have died before storing).
//!
//! Every call is one pipelined round trip for the whole batch, with one key
//! per command so that it also works on Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::Mutex;
use wa_core::{Namespace, SecretUrl};

const MARK_DONE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
  return redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
end
return 0";

const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Go on without claims: PostgreSQL's unique constraints still store each
    /// event once; only the early duplicate filter is lost.
    Open,
    /// Stop and wait for Redis.
    Closed,
}

#[derive(Debug, Clone)]
pub struct ClaimConfig {
    pub lease: Duration,
    pub done_ttl: Duration,
    pub fail_mode: FailMode,
    pub timeout: Duration,
}

/// What a claim attempt found for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours to store.
    Claimed,
    /// Redis was unreachable and we fail open: store it, PostgreSQL decides.
    Unguarded,
    /// Already stored.
    Done,
    /// Another owner's lease is pending: look again later.
    HeldByOther,
}

#[derive(Debug, thiserror::Error)]
#[error("Redis is unreachable and claims fail closed")]
pub struct ClaimsUnavailable(#[source] RedisError);

impl ClaimsUnavailable {
    pub fn redis_error(&self) -> &RedisError {
        &self.0
    }
}

pub struct Claims {
    url: SecretUrl,
    namespace: Namespace,
    config: ClaimConfig,
    connection: Mutex<Option<ConnectionManager>>,
    mark_done: Script,
    abandon: Script,
}

impl Claims {
    /// Connects lazily: a worker starts while Redis is down.
    pub fn new(url: SecretUrl, namespace: Namespace, config: ClaimConfig) -> Self {
        Self {
            url,
            namespace,
            config,
            connection: Mutex::new(None),
            mark_done: Script::new(MARK_DONE),
            abandon: Script::new(ABANDON),
        }
    }

    /// The Redis key of an event's claim.
    pub fn claim_key(&self, event_key: &str) -> String {
        self.namespace.redis(&format!("claim:{event_key}"))
    }

    /// Claims every key for `token` in one round trip. Fails only when Redis
    /// is unreachable and claims fail closed.
    #[tracing::instrument(name = "claim", skip_all, fields(events = keys.len()))]
    pub async fn claim(&self, token: &str, keys: &[&str]) -> Result<Vec<Claim>, ClaimsUnavailable> {
        let owner = pending(token);
        let lease_ms = millis(self.config.lease);
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(self.claim_key(key))
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .arg("GET");
        }
        match self.query::<Vec<Option<String>>>(&pipe).await {
            Ok(previous) => Ok(previous
                .into_iter()
                .map(|previous| match previous.as_deref() {
                    None => Claim::Claimed,
                    Some("done") => Claim::Done,
                    Some(_) => Claim::HeldByOther,
                })
                .collect()),
            Err(error) if self.config.fail_mode == FailMode::Open => {
                metrics::counter!("wa_claim_fail_open_total").increment(keys.len() as u64);
                tracing::warn!(
                    error = %wa_core::telemetry::error_chain(&error),
                    events = keys.len(),
                    "Redis unreachable: failing open, PostgreSQL deduplicates"
                );
                Ok(vec![Claim::Unguarded; keys.len()])
            }
            Err(error) => Err(ClaimsUnavailable(error)),
        }
    }

    /// Turns our pending claims into `done` markers. A failure here costs
    /// nothing but an early duplicate filter: the lease expires and the
    /// database still refuses the second row.
    #[tracing::instrument(name = "mark_done", skip_all, fields(events = keys.len()))]
    pub async fn mark_done(&self, token: &str, keys: &[&str]) {
        let done_ms = millis(self.config.done_ttl).to_string();
        if let Err(error) = self
            .run_script(&self.mark_done, token, keys, Some(&done_ms))
            .await
        {
            tracing::warn!(
                error = %wa_core::telemetry::error_chain(&error),
                events = keys.len(),
                "could not mark claims done"
            );
        }
    }

    /// Gives up our pending claims after a failed store (compare-and-delete)
    /// so that a retry can claim them at once.
    #[tracing::instrument(name = "abandon_claims", skip_all, fields(events = keys.len()))]
    pub async fn abandon(&self, token: &str, keys: &[&str]) {
        if let Err(error) = self.run_script(&self.abandon, token, keys, None).await {
            tracing::warn!(
                error = %wa_core::telemetry::error_chain(&error),
                events = keys.len(),
                "could not abandon claims"
            );
        }
    }

    /// Succeeds when Redis takes a write now (a replica answers PING but
    /// refuses writes): sets a short-lived key of our namespace.
    pub async fn probe(&self) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        redis::cmd("SET")
            .arg(self.namespace.redis("probe"))
            .arg("probe")
            .arg("PX")
            .arg(1000)
            .query_async::<()>(&mut connection)
            .await
    }

    async fn run_script(
        &self,
        script: &Script,
        token: &str,
        keys: &[&str],
        extra: Option<&str>,
    ) -> Result<(), RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let owner = pending(token);
        let build = |pipe: &mut redis::Pipeline| {
            for key in keys {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(1)
                    .arg(self.claim_key(key))
                    .arg(&owner);
                if let Some(extra) = extra {
                    cmd.arg(extra);
                }
                cmd.ignore();
            }
        };
        let mut pipe = redis::pipe();
        build(&mut pipe);
        match self.query::<()>(&pipe).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A restarted or flushed Redis forgot the script: load it, once.
                let mut connection = self.connection().await?;
                script.load_async(&mut connection).await?;
                self.query::<()>(&pipe).await
            }
            other => other,
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut connection = self.connection().await?;
        pipe.query_async(&mut connection).await
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let client = redis::Client::open(self.url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connection = client.get_connection_manager_with_config(config).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

fn pending(token: &str) -> String {
    format!("pending:{token}")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
