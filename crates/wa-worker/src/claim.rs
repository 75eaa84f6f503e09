//! Claims in Redis: a short lease that says "someone is storing this event
//! now", turned into a long-lived `done` marker once it is stored.
//!
//! - claim: `SET {ns}:claim:{key} pending:{token} NX PX {lease} GET`, atomic;
//! - stored: compare-and-set to `done` with a long TTL;
//! - failed: compare-and-delete (`abandon`), so the retry can claim again at once;
//! - held by `done`: a duplicate; held by another `pending`: look again after
//!   the lease, never drop (the owner may have died before storing).
//!
//! - stored body: once every event of a body is stored, `SET
//!   {ns}:stored-body:{sha256 of the body} {event counts} PX {done ttl}`;
//!   a later copy of those bytes is found with one `MGET` for its whole batch
//!   and acked without being parsed. Missing or unreadable (Redis down): the
//!   copy takes the claims above, as any delivery.
//!
//! Every command and script touches one key, so none can span hash slots on
//! a Redis Cluster. On one server a call is one pipelined round trip for the
//! whole batch; on a cluster the commands go out together over the cluster
//! client's multiplexed connections, each to the master of its slot, and a
//! key whose node fails (a master lost, a failover in progress) fails alone:
//! failing open it is stored unguarded and PostgreSQL decides.

use std::time::Duration;

use futures_util::future::join_all;
use redis::{Cmd, RedisError, Script};
use tokio::sync::Mutex;
use wa_core::Namespace;

use crate::redis_link::{RedisLink, RedisTarget};
use crate::stored_body::{BodyDigest, EventTally};

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
    target: RedisTarget,
    namespace: Namespace,
    /// `{ns}:claim:` and `{ns}:stored-body:`, made once: a key per event is
    /// one allocation.
    claim_prefix: String,
    stored_body_prefix: String,
    config: ClaimConfig,
    connection: Mutex<Option<RedisLink>>,
    mark_done: Script,
    abandon: Script,
}

impl Claims {
    /// Connects lazily: a worker starts while Redis is down.
    pub fn new(target: RedisTarget, namespace: Namespace, config: ClaimConfig) -> Self {
        Self {
            target,
            claim_prefix: namespace.redis("claim:"),
            stored_body_prefix: namespace.redis("stored-body:"),
            namespace,
            config,
            connection: Mutex::new(None),
            mark_done: Script::new(MARK_DONE),
            abandon: Script::new(ABANDON),
        }
    }

    /// The Redis key of an event's claim.
    pub fn claim_key(&self, event_key: &str) -> String {
        [self.claim_prefix.as_str(), event_key].concat()
    }

    /// The Redis key of a body whose events are all stored.
    pub fn stored_body_key(&self, digest: &BodyDigest) -> String {
        let mut digits = [0u8; 64];
        [
            self.stored_body_prefix.as_str(),
            digest.hex_into(&mut digits),
        ]
        .concat()
    }

    /// The event counts of each body stored before (by its marker), `None`
    /// for the others, in one round trip. A Redis that does not answer
    /// knows no body: every delivery then takes the claims, which decide
    /// what failing open or closed means.
    #[tracing::instrument(name = "stored_bodies", skip_all, fields(bodies = digests.len()))]
    pub async fn stored_bodies(&self, digests: &[BodyDigest]) -> Vec<Option<EventTally>> {
        let keys: Vec<String> = digests.iter().map(|d| self.stored_body_key(d)).collect();
        // Only over a connection made already: while Redis is away, the
        // claims that follow wait for it (or fail open) once, not twice.
        let connection = self.connection.lock().await.clone();
        let replies: Vec<Result<Option<String>, RedisError>> = match connection {
            Some(mut connection @ RedisLink::Single(_)) => {
                // One command for the batch: the keys need not share a slot here.
                match redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<String>>>(&mut connection)
                    .await
                {
                    Ok(values) => values.into_iter().map(Ok).collect(),
                    Err(error) => vec![Err(error)],
                }
            }
            Some(RedisLink::Cluster(_)) => {
                let commands = keys.iter().map(|key| {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(key);
                    cmd
                });
                self.query_each(commands.collect()).await
            }
            None => Vec::new(),
        };
        if let Some(Err(error)) = replies.iter().find(|reply| reply.is_err()) {
            tracing::debug!(
                error = %wa_core::telemetry::error_chain(error),
                "cannot look up stored bodies; the claims decide"
            );
        }
        let mut found: Vec<Option<EventTally>> = replies
            .into_iter()
            .map(|reply| EventTally::decode(&reply.ok()??))
            .collect();
        found.resize(digests.len(), None);
        found
    }

    /// Claims every key for `token` in one round trip. Fails only when Redis
    /// is unreachable and claims fail closed.
    #[tracing::instrument(name = "claim", skip_all, fields(events = keys.len()))]
    pub async fn claim(&self, token: &str, keys: &[&str]) -> Result<Vec<Claim>, ClaimsUnavailable> {
        let owner = pending(token);
        let lease_ms = millis(self.config.lease);
        let commands: Vec<Cmd> = keys
            .iter()
            .map(|key| {
                let claim_key = self.claim_key(key);
                // Sized once: argument by argument, the buffers grew five times.
                let mut cmd = Cmd::with_capacity(7, claim_key.len() + owner.len() + 32);
                cmd.arg("SET")
                    .arg(claim_key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .arg("GET");
                cmd
            })
            .collect();
        let replies = self.query_each::<Option<String>>(commands).await;
        let mut claims = Vec::with_capacity(keys.len());
        let mut unguarded = 0;
        for reply in replies {
            claims.push(match reply {
                Ok(previous) => match previous.as_deref() {
                    None => Claim::Claimed,
                    Some("done") => Claim::Done,
                    Some(_) => Claim::HeldByOther,
                },
                Err(error) if self.config.fail_mode == FailMode::Open => {
                    if unguarded == 0 {
                        tracing::warn!(
                            error = %wa_core::telemetry::error_chain(&error),
                            "Redis unreachable: failing open, PostgreSQL deduplicates"
                        );
                    }
                    unguarded += 1;
                    Claim::Unguarded
                }
                Err(error) => return Err(ClaimsUnavailable(error)),
            });
        }
        if unguarded > 0 {
            metrics::counter!("wa_claim_fail_open_total").increment(unguarded);
        }
        Ok(claims)
    }

    /// Turns our pending claims into `done` markers, and marks the bodies
    /// whose events are all stored now (the caller says which: only after
    /// the commit). A failure here costs nothing but an early duplicate
    /// filter: the lease expires and the database still refuses the second row.
    #[tracing::instrument(name = "mark_done", skip_all, fields(events = keys.len(), bodies = bodies.len()))]
    pub async fn mark_done(&self, token: &str, keys: &[&str], bodies: &[(BodyDigest, EventTally)]) {
        let done_ms = millis(self.config.done_ttl);
        let done_ms_text = done_ms.to_string();
        let marking = bodies.iter().map(|(digest, tally)| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.stored_body_key(digest))
                .arg(tally.encode())
                .arg("PX")
                .arg(done_ms);
            cmd
        });
        let (claims, marked) = futures_util::join!(
            self.run_script(&self.mark_done, token, keys, Some(&done_ms_text)),
            self.query_each::<()>(marking.collect())
        );
        if let Err(error) = claims {
            tracing::warn!(
                error = %wa_core::telemetry::error_chain(&error),
                events = keys.len(),
                "could not mark claims done"
            );
        }
        if let Some(Err(error)) = marked.iter().find(|reply| reply.is_err()) {
            tracing::warn!(
                error = %wa_core::telemetry::error_chain(error),
                bodies = bodies.len(),
                "could not mark bodies stored"
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
        let mut connection = self.connection().await?;
        if let RedisLink::Cluster(_) = connection {
            // One invocation per key, sent together: each goes to its own
            // slot's master, and EVALSHA falls back to loading the script
            // on a node that does not have it (a promoted replica, say).
            let runs = keys.iter().map(|key| {
                let mut invocation = script.key(self.claim_key(key));
                invocation.arg(&owner);
                if let Some(extra) = extra {
                    invocation.arg(extra);
                }
                let mut connection = connection.clone();
                async move { invocation.invoke_async::<()>(&mut connection).await }
            });
            let results: Vec<Result<(), RedisError>> = join_all(runs).await;
            self.forget_broken_cluster(&results).await;
            return results.into_iter().collect();
        }
        let mut pipe = redis::pipe();
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
        match pipe.query_async::<()>(&mut connection).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A restarted or flushed Redis forgot the script: load it, once.
                script.load_async(&mut connection).await?;
                pipe.query_async::<()>(&mut connection).await
            }
            other => other,
        }
    }

    /// Runs the commands and returns one reply per command, in order: one
    /// pipeline on a single server, concurrent single-key commands on a
    /// cluster (a pipeline there must stay within one slot).
    async fn query_each<T: redis::FromRedisValue>(
        &self,
        commands: Vec<Cmd>,
    ) -> Vec<Result<T, RedisError>> {
        let count = commands.len();
        if count == 0 {
            return Vec::new();
        }
        let mut connection = match self.connection().await {
            Ok(connection) => connection,
            Err(error) => return (0..count).map(|_| Err(error.clone())).collect(),
        };
        match connection {
            RedisLink::Cluster(_) => {
                let replies = join_all(commands.into_iter().map(|cmd| {
                    let mut connection = connection.clone();
                    async move { cmd.query_async::<T>(&mut connection).await }
                }))
                .await;
                self.forget_broken_cluster(&replies).await;
                replies
            }
            RedisLink::Single(_) => {
                let mut pipe = redis::pipe();
                for cmd in commands {
                    pipe.add_command(cmd);
                }
                match pipe.query_async::<Vec<T>>(&mut connection).await {
                    Ok(replies) => replies.into_iter().map(Ok).collect(),
                    Err(error) => (0..count).map(|_| Err(error.clone())).collect(),
                }
            }
        }
    }

    /// After a failover the cluster client can keep routing to the lost
    /// master until its own repair succeeds; a command that could not reach
    /// a node drops the connection, so the next batch reads the slot map
    /// afresh from the seeds (at most once per batch; failing open meanwhile).
    async fn forget_broken_cluster<T>(&self, replies: &[Result<T, RedisError>]) {
        let unreachable = replies.iter().any(|reply| {
            reply.as_ref().is_err_and(|error| {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
            })
        });
        if unreachable {
            *self.connection.lock().await = None;
        }
    }

    async fn connection(&self) -> Result<RedisLink, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.target.connect().await?;
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
