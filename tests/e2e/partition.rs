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
//! the worker must give up a write the server does not answer by itself,
//! and the relay, the deliverer and the console their work.

use std::time::Duration;

use wa_e2e::deliver::{
    Deliverer, HookReceiver, add_endpoint, assert_in_order_per_conversation, events, release,
};
use wa_e2e::env::PATIENT_RETRY_TIERS;
use wa_e2e::network::RemoteHost;
use wa_e2e::payloads;
use wa_e2e::roles::{Worker, all_stored_once_and_nothing_dead_lettered, parse};
use wa_e2e::servers::PostgresOnHost;
use wa_e2e::{Console, Relay, TcpRelay, TestEnv, eventually, metric_sum};
use wa_store::failpoint::{self, Failpoint};

#[tokio::test]
async fn a_transaction_cut_off_by_a_partition_is_ended_by_the_server_and_the_retry_stores_it() {
    let host = RemoteHost::create();
    let postgres = PostgresOnHost::start(&host);
    let env = TestEnv::on_postgres(&postgres.url()).await;
    let worker = a_worker_holding_a_write_before_its_commit(&env, "cut", &[]).await;

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
    // Tiers that outlast the hold: with the short ones alone, a write
    // behind it could spend its four attempts before the hold ended (a
    // quiet run had 4 of 20 at their third; a loaded CI run had 2 of 20
    // still missing after 90 s).
    let worker = a_worker_holding_a_write_before_its_commit(
        &env,
        "frozen",
        &["--retry-tiers", PATIENT_RETRY_TIERS],
    )
    .await;

    // Twenty writes that need the frozen transaction's rows (the same
    // contact): they go on once the server has ended it.
    env.publish_inbound_all(&payloads::mixed_each("behind", 20))
        .await;
    eventually(
        "the writes behind the frozen one stored",
        Duration::from_secs(90),
        || async {
            let stored = env
                .count("SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.behind%'")
                .await;
            match stored {
                20 => Ok(()),
                _ => Err(format!(
                    "{stored} of 20 stored, {} dead-lettered",
                    env.queue_depth("dlq").await
                )),
            }
        },
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
    let worker = a_worker_holding_a_write_before_its_commit(&env, "held", &[]).await;

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

/// A failover that leaves the old primary frozen, as the relay sees it:
/// the connections it has go silent (their client ends open, acknowledged,
/// never answered) and new ones reach the new primary. The relay gives up
/// each exchange not answered within 30 s and claims again on new
/// connections; unbounded, it waited on the old ones and released nothing
/// more. The connections given up are closed, not kept in the pool.
#[tokio::test]
async fn a_relay_left_with_a_frozen_servers_connections_gives_them_up_and_releases_on_new_ones() {
    let env = &TestEnv::new().await;
    let (postgres, database_url) = TcpRelay::in_front_of(&env.database_url);
    let worker = Worker::start(env, &[]).await;
    let relay = Relay::start(
        env,
        &["--database-url", &database_url, "--reorder-window", "0s"],
    )
    .await;
    let stored_and_released = |messages, limit| async move {
        let stored = "SELECT count(*) FROM messages";
        env.wait_for_count("the messages stored", stored, messages, limit)
            .await;
        let unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
        env.wait_for_count("their events released", unpublished, 0, limit)
            .await;
    };
    env.publish_inbound_all(&payloads::mixed_each("before", 10))
        .await;
    stored_and_released(10, Duration::from_secs(30)).await;

    postgres.strand();
    let frozen = std::time::Instant::now();
    env.publish_inbound_all(&payloads::mixed_each("after", 10))
        .await;
    stored_and_released(20, Duration::from_secs(90)).await;
    println!(
        "every event released {:?} after the server froze",
        frozen.elapsed()
    );
    all_closed_by_their_client(&postgres).await;
    relay.stop().await;
    worker.stop().await;
}

/// The relay's case above, for the deliverer: it leases and records on
/// new connections, and sends each event once and in order.
#[tokio::test]
async fn a_deliverer_left_with_a_frozen_servers_connections_gives_them_up_and_delivers_on_new_ones()
{
    let env = &TestEnv::new().await;
    let (postgres, database_url) = TcpRelay::in_front_of(&env.database_url);
    let receiver = &HookReceiver::ok().await;
    add_endpoint(env, &receiver.url(), &[], &[]).await;
    let deliverer = Deliverer::start(env, &["--database-url", &database_url]).await;
    let all_delivered = |expected, limit| {
        eventually("every event delivered", limit, move || async move {
            match receiver.accepted_ids() {
                n if n == expected => Ok(()),
                n => Err(format!("{n} of {expected}")),
            }
        })
    };
    release(&env.db, &events("before", 4, 1, 5)).await;
    all_delivered(20, Duration::from_secs(30)).await;

    postgres.strand();
    let frozen = std::time::Instant::now();
    release(&env.db, &events("after", 4, 1, 5)).await;
    all_delivered(40, Duration::from_secs(90)).await;
    println!(
        "every event delivered {:?} after the server froze",
        frozen.elapsed()
    );
    let repeats = assert_in_order_per_conversation(&receiver.hooks(), "across the freeze");
    println!("{repeats} sent again (delivered, not recorded before the freeze)");
    all_closed_by_their_client(&postgres).await;
    deliverer.stop().await;
}

/// The relay's case above, for the console: a page whose reads a frozen
/// server does not answer says so within 30 s, and the next one reads on
/// new connections. Unbounded, the page waited for good, and so did the
/// task its reads run in, which goes on when the browser gives up.
#[tokio::test]
async fn a_console_left_with_a_frozen_servers_connections_says_so_and_reads_on_new_ones() {
    let env = &TestEnv::new().await;
    let (postgres, database_url) = TcpRelay::in_front_of(&env.database_url);
    let console = Console::start(env, &["--database-url", &database_url]).await;
    let (client, cookie, _) = console.signed_in().await;
    let overview = || async {
        let page = client
            .get(console.url("/"))
            .header("cookie", &cookie)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the overview within 60 s");
        page.text().await.expect("its body")
    };
    let unanswered = "PostgreSQL: the database did not answer within 30s";
    assert!(overview().await.contains("count-messages"));

    // At once, so that the page's reads take connections just used, which
    // the pool does not check again.
    postgres.strand();
    let frozen = std::time::Instant::now();
    let during = overview().await;
    println!(
        "the page answered {:?} after the server froze",
        frozen.elapsed()
    );
    assert!(during.contains(unanswered), "{during}");
    // The next page reads: the pool checks each of its other stranded
    // connections (idle for over a second) when it next takes it, gives
    // the check a second, closes it without waiting on the server and
    // opens a new one within the same acquire.
    let after = overview().await;
    assert!(
        after.contains("count-messages") && !after.contains(unanswered),
        "{after}"
    );
    all_closed_by_their_client(&postgres).await;
    console.stop().await;
}

/// A role gives up the connections a frozen server left it with, and
/// closes them once sqlx's check on their return to the pool goes
/// unanswered too (vendor/sqlx-core), rather than keep them for good.
async fn all_closed_by_their_client(postgres: &TcpRelay) {
    eventually(
        "the frozen server's connections closed",
        Duration::from_secs(60),
        || async {
            match postgres.stranded_open() {
                0 => Ok(()),
                open => Err(format!("{open} open")),
            }
        },
    )
    .await;
}

/// A worker whose write of webhook `tag` (`payloads::mixed`) waits before
/// its commit, its transaction open on the server, until
/// `failpoint::disarm`.
async fn a_worker_holding_a_write_before_its_commit(
    env: &TestEnv,
    tag: &str,
    extra: &[&str],
) -> Worker {
    failpoint::arm(Failpoint::HoldBeforeCommit(format!("wamid.{tag}.")));
    let worker = Worker::start(env, extra).await;
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
