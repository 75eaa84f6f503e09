//! Sessions the server has to end by itself, because their client will not.
//!
//! A partition that leaves PostgreSQL up, such as a NAT gateway or a
//! node's conntrack table losing its state, cuts a connection whose
//! transaction has already reached the server. The worker gives up its end
//! within 30 s (vendor/sqlx-core) and retries; the server must give up its
//! end too, or its backend sits "idle in transaction", holding the rows the
//! retry needs, until the operating system's keepalive notices, after 2
//! hours. Every connection the roles open asks the server for the same
//! 30-s bound (`wa_store::database`).
//!
//! A worker frozen mid-transaction (a debugger, `docker pause`, a hang)
//! still has a kernel that answers keepalives: the worker's sessions also
//! have the server end a transaction that sits idle for 30 s.
//!
//! The other way round, a server frozen (a VM paused, storage hung; here
//! SIGSTOP) has a kernel that still acknowledges and answers keepalives:
//! the worker must give up a write the server does not answer by itself.

use std::time::Duration;

use wa_e2e::network::RemoteHost;
use wa_e2e::payloads;
use wa_e2e::roles::{Worker, all_stored_once_and_nothing_dead_lettered, parse};
use wa_e2e::servers::PostgresOnHost;
use wa_e2e::{TestEnv, eventually, metric_sum};
use wa_store::failpoint::{self, Failpoint};

#[tokio::test]
async fn a_transaction_cut_off_by_a_partition_is_ended_by_the_server_and_the_retry_stores_it() {
    let host = RemoteHost::create();
    let postgres = PostgresOnHost::start(&host);
    let env = TestEnv::on_postgres(&postgres.url()).await;
    let worker = a_worker_holding_a_write_before_its_commit(&env, "cut").await;

    // The commit goes out into the partition and is never answered.
    host.pull_link();
    failpoint::disarm();
    eventually(
        "the worker giving up its end",
        Duration::from_secs(90),
        || async {
            let metrics = worker.metrics().await;
            match metric_sum(
                &metrics,
                "wa_worker_pauses_total",
                &[("dependency", "postgresql")],
            ) {
                0.0 => Err("not paused".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    host.restore_link();
    worker.wait_ready().await;

    // The retry, and everything after it, needs the rows the cut
    // transaction locked (the same contact, at least).
    env.publish_inbound_all(&payloads::mixed_each("after", 20))
        .await;
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 21).await;
    assert_eq!(env.count(IDLE_IN_TRANSACTION).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_frozen_in_its_transaction_is_ended_by_the_server_and_the_writes_behind_it_go_on()
{
    let env = TestEnv::new().await;
    let worker = a_worker_holding_a_write_before_its_commit(&env, "frozen").await;

    // Twenty writes that need the frozen transaction's rows (the same
    // contact): they go on once the server has ended it.
    env.publish_inbound_all(&payloads::mixed_each("behind", 20))
        .await;
    env.wait_for_count(
        "the writes behind the frozen one stored",
        "SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.behind%'",
        20,
        Duration::from_secs(90),
    )
    .await;
    // The frozen write, thawed, finds its session ended and is retried.
    failpoint::disarm();
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 21).await;
    assert_eq!(env.count(IDLE_IN_TRANSACTION).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_frozen_server_pauses_the_worker_and_nothing_is_lost_when_it_thaws() {
    let host = RemoteHost::create();
    let postgres = PostgresOnHost::start(&host);
    let env = TestEnv::on_postgres(&postgres.url()).await;
    let worker = a_worker_holding_a_write_before_its_commit(&env, "held").await;

    // The commit goes to a server whose kernel takes it in and which never
    // answers. Nothing else is sent meanwhile: a new write would take a
    // pooled connection, and the pool's check on taking it would pause the
    // worker within 3 s, which is the pool's bound, not this one. Nor may
    // the test ask the frozen server anything (its own pool included).
    postgres.freeze();
    failpoint::disarm();
    let frozen = std::time::Instant::now();
    worker.wait_paused("postgresql", "unreachable").await;
    println!("paused {:?} after the server froze", frozen.elapsed());
    // Its probes get no answer either: it stays paused.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(worker.readyz().await.0, 503, "not ready while frozen");

    postgres.thaw();
    env.publish_inbound_all(&payloads::mixed_each("after", 20))
        .await;
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 21).await;
    worker.stop().await;
}

/// A worker whose write of webhook `tag` (`payloads::mixed`) waits before
/// its commit, its transaction open on the server, until
/// `failpoint::disarm`.
async fn a_worker_holding_a_write_before_its_commit(env: &TestEnv, tag: &str) -> Worker {
    failpoint::arm(Failpoint::HoldBeforeCommit(format!("wamid.{tag}.")));
    let worker = Worker::start(env, &[]).await;
    worker.wait_ready().await;
    env.publish_inbound(&payloads::mixed(tag, 1)).await;
    env.wait_for_count(
        "the write waiting before its commit",
        IDLE_IN_TRANSACTION,
        1,
        Duration::from_secs(60),
    )
    .await;
    worker
}

/// The settings behind the tests above (and `contention.rs`), as the
/// roles' sessions see them.
#[tokio::test]
async fn the_roles_sessions_carry_their_bounds_and_only_the_workers_bound_their_waits() {
    let env = TestEnv::new().await;
    let database: wa_store::DatabaseArgs =
        parse(vec!["--database-url".to_owned(), env.database_url.clone()]);
    let bounds = [
        "tcp_keepalives_idle=10",
        "tcp_keepalives_interval=5",
        "tcp_keepalives_count=4",
        "tcp_user_timeout=30000",
    ];
    let plain = [
        &bounds[..],
        &["idle_in_transaction_session_timeout=0", "lock_timeout=0"],
    ]
    .concat();
    let writing = [
        &bounds[..],
        &["idle_in_transaction_session_timeout=30s", "lock_timeout=5s"],
    ]
    .concat();
    for (pool, expected) in [
        (database.pool().expect("a pool"), plain),
        (database.writer_pool().expect("a pool"), writing),
    ] {
        assert_eq!(session_settings(&pool, &expected).await, expected);
        pool.close().await;
    }
}

/// `name=value` of each setting named in `expected` (`name=...`), as a
/// session of `pool` sees it.
async fn session_settings(pool: &sqlx::PgPool, expected: &[&str]) -> Vec<String> {
    let mut settings = Vec::new();
    for setting in expected {
        let (name, _) = setting.split_once('=').expect("name=value");
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(pool)
            .await
            .expect("the setting");
        settings.push(format!("{name}={value}"));
    }
    settings
}

const IDLE_IN_TRANSACTION: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE state = 'idle in transaction' AND datname = current_database()";
