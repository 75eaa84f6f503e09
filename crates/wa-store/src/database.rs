//! The PostgreSQL options of every role that reaches the database
//! (`DATABASE_URL`, the pool size and its acquire timeout), the pool they
//! build, the bounds its sessions ask of the server, and the bound on how
//! long the server may take to answer.

use std::time::Duration;

use wa_core::SecretUrl;
use wa_core::config::parse_duration;

use crate::StoreError;

/// How long after sqlx's check on release a pooled connection is taken
/// as alive without another.
const RECENTLY_CHECKED: Duration = Duration::from_secs(1);

/// How long the check of a pooled connection idle for longer may take. A
/// healthy server answers it in milliseconds. One that a failover left
/// frozen never does: past this the connection is closed and the pool
/// opens a new one within the same acquire, instead of the check using up
/// `WA_DB_ACQUIRE_TIMEOUT` and the acquire failing ("pool timed out").
const CHECK_WITHIN: Duration = Duration::from_secs(1);

/// Asks the server to give up a client that goes silent, as the client
/// gives up a silent server (vendor/sqlx-core): a keepalive probe after
/// 10 s idle, then every 5 s, and the connection ended after 4 unanswered
/// probes. A partition that leaves the server up (a NAT gateway or a
/// conntrack table losing its state) cuts a transaction that has reached
/// the server; without this, its backend sits idle in transaction, holding
/// the rows the client's retry needs, until the operating system's default
/// keepalive notices, after 2 hours. Sent as `SET` after connecting, not as
/// startup `options`, which PgBouncer refuses; ignored on a Unix socket.
const GIVE_UP_ON_A_SILENT_CLIENT: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 4";

/// The same bound for data the server sent and the client never
/// acknowledged (PostgreSQL 12 and later).
const GIVE_UP_ON_UNACKNOWLEDGED_DATA: &str = "SET tcp_user_timeout = 30000";

/// The worker's bound on a client that is alive but stopped: a process
/// frozen mid-transaction (a debugger, `docker pause`, a hang) still has a
/// kernel answering keepalives, and its locks would stop every write on the
/// same contacts until it went on. Its statements follow one another with
/// nothing else awaited in between, so 30 s idle is never work in progress.
/// Not for the relay: it holds its claim while it publishes, for as long as
/// a slow broker takes.
const END_TRANSACTIONS_IDLE_FOR_30S: &str = "SET idle_in_transaction_session_timeout = 30000";

/// The worker's bound on waiting for a lock another session holds: an
/// application updating its contacts, a transaction left open in `psql`, a
/// migration's table lock. Unbounded, the batches that need the row fill
/// the worker's slots and every other write waits behind them, with no
/// error to say why. A healthy worker's transactions hold rows for
/// milliseconds (a stuck one is ended within 30 s, above), so a wait of
/// 5 s is never for one of them.
const WAIT_FOR_A_LOCK_AT_MOST_5S: &str = "SET lock_timeout = 5000";

/// How long the server may take to answer one exchange of a role's work
/// (the worker's writes and probes, the relay's releases, the deliverer's
/// leases and records, the console's pages) before it is taken as
/// unreachable. A server that is frozen (its VM paused, its storage hung,
/// or left behind paused by a failover) has a kernel that still
/// acknowledges what is sent and answers keepalives, so neither keepalive
/// nor `TCP_USER_TIMEOUT` notices it, and the role would wait for good,
/// still saying it is ready. Their statements take milliseconds; the
/// worker waits 5 s at most for a lock, and the relay and the deliverer
/// skip what is locked.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// `exchange`, or an error that says the server is unreachable when it
/// takes longer than [`ANSWER_WITHIN`] to answer. The connection given up
/// this way is mid-exchange: the pool closes it when sqlx's check on its
/// return goes unanswered too (vendor/sqlx-core, 5 s), and a caller
/// holding it as a `PoolConnection` closes it at once.
pub async fn answered<T, E>(exchange: impl Future<Output = Result<T, E>>) -> Result<T, StoreError>
where
    StoreError: From<E>,
{
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::no_answer(ANSWER_WITHIN)),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wa_ingest"
    )]
    pub database_url: SecretUrl,
    /// Connections in the pool.
    #[arg(long, env = "WA_DB_POOL_SIZE", value_name = "WA_DB_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_pool_size: u32,
    /// How long to wait for a pooled connection before calling the database unreachable.
    #[arg(long, env = "WA_DB_ACQUIRE_TIMEOUT", value_name = "WA_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
}

/// What a pool's sessions ask of the server beyond the bound on silent
/// clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sessions {
    /// Every role but the worker.
    Plain,
    /// The worker's: transactions idle for 30 s are ended, and a lock is
    /// waited for 5 s at most.
    Writing,
}

impl DatabaseArgs {
    /// A lazily connecting pool: a role starts (and reports not ready) while
    /// PostgreSQL is down, instead of failing at start.
    pub fn pool(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        self.pool_of(Sessions::Plain)
    }

    /// The worker's pool: as [`DatabaseArgs::pool`], and the server ends a
    /// transaction of it that sits idle for 30 s, freeing its rows, and
    /// ends a wait of it for a lock after 5 s (`55P03`).
    pub fn writer_pool(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        self.pool_of(Sessions::Writing)
    }

    fn pool_of(&self, sessions: Sessions) -> Result<sqlx::PgPool, sqlx::Error> {
        // TLS as the URL says (`sslmode`, `sslrootcert`; sqlx's default
        // `prefer` uses it when the server offers it). TCP_NODELAY is set
        // by the patched sqlx-core (vendor/sqlx-core), so TLS costs no stall.
        let options: sqlx::postgres::PgConnectOptions = self.database_url.expose().parse()?;
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.db_pool_size)
            .acquire_timeout(self.db_acquire_timeout)
            .after_connect(move |connection, _meta| Box::pin(bound(connection, sessions)))
            // sqlx pings every connection it takes back (a Sync round trip)
            // and, by default, every one it hands out again: two extra round
            // trips per statement on a busy path. A connection back within
            // the last second was fine then; one idle longer (through a
            // failover, say) is still checked before use.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for <= RECENTLY_CHECKED {
                        return Ok(true);
                    }
                    match tokio::time::timeout(CHECK_WITHIN, sqlx::Connection::ping(connection))
                        .await
                    {
                        Ok(checked) => checked.map(|()| true),
                        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("a pooled connection's check was not answered within {CHECK_WITHIN:?}"),
                        ))),
                    }
                })
            })
            .connect_lazy_with(options))
    }
}

/// Refused settings (a server on a system without `TCP_USER_TIMEOUT`
/// accepts only 0, and a proxy may forbid them) are logged and the
/// connection used without them: they bound a rare failure, and a role that
/// could not connect at all would be worse.
async fn bound(connection: &mut sqlx::PgConnection, sessions: Sessions) -> Result<(), sqlx::Error> {
    ask_the_server(connection, GIVE_UP_ON_A_SILENT_CLIENT).await?;
    if connection
        .server_version_num()
        .is_some_and(|version| version >= 120_000)
    {
        ask_the_server(connection, GIVE_UP_ON_UNACKNOWLEDGED_DATA).await?;
    }
    if sessions == Sessions::Writing {
        ask_the_server(connection, END_TRANSACTIONS_IDLE_FOR_30S).await?;
        ask_the_server(connection, WAIT_FOR_A_LOCK_AT_MOST_5S).await?;
    }
    Ok(())
}

async fn ask_the_server(
    connection: &mut sqlx::PgConnection,
    settings: &'static str,
) -> Result<(), sqlx::Error> {
    match sqlx::raw_sql(settings).execute(&mut *connection).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(refused)) => {
            tracing::warn!(
                settings,
                error = %refused,
                "the server refused a bound on sessions: a partition, a frozen client \
                 or another session's lock may hold writes back for long"
            );
            Ok(())
        }
        Err(error) => Err(error),
    }
}
