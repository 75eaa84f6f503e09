//! Rows held by a session that is not a worker's: an application updating
//! its contacts, an operator's transaction left open in `psql`, a migration
//! waiting for its lock. A worker waits for such a row at most
//! `lock_timeout` (`wa_store::database`), so only the deliveries that need
//! it are held back, through the retry tiers, and the rest are stored.

use std::time::Duration;

use sqlx::Connection;
use wa_e2e::TestEnv;
use wa_e2e::payloads;
use wa_e2e::roles::{Worker, all_stored_once_and_nothing_dead_lettered};

#[tokio::test]
async fn a_contact_held_by_another_session_holds_back_only_the_deliveries_that_need_it() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    worker.wait_ready().await;
    env.publish_inbound(&payloads::mixed("first", 1)).await;
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 1).await;

    // The contact `payloads::mixed` writes to.
    let holder = hold(
        &env,
        "BEGIN; SELECT 1 FROM contacts WHERE wa_id = '15550000000' FOR UPDATE",
    )
    .await;

    // Webhooks of the held contact among as many of other contacts, in
    // the same batches.
    let bodies: Vec<Vec<u8>> = (0..40)
        .flat_map(|i| {
            [
                payloads::mixed(&format!("held{i}"), 1),
                payloads::mixed_from(&format!("free{i}"), 1, 16_660_000_000 + i),
            ]
        })
        .collect();
    let published = std::time::Instant::now();
    env.publish_inbound_all(&bodies).await;
    env.wait_for_count(
        "the other contacts' webhooks stored",
        "SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.free%'",
        40,
        Duration::from_secs(90),
    )
    .await;
    println!(
        "the other contacts' 40 webhooks stored {:?} after publishing",
        published.elapsed()
    );
    assert_eq!(
        env.count("SELECT count(*) FROM messages WHERE wamid LIKE 'wamid.held%'")
            .await,
        0,
        "the held contact's webhooks wait for its row"
    );

    // Let go: the held ones come back from the retry tiers and are stored.
    let_go(holder).await;
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 81).await;
    worker.stop().await;
}

/// A table held (`LOCK TABLE`, a migration's `ALTER TABLE`, `VACUUM FULL`)
/// holds back every write. The deliveries that fail alone trip the breaker,
/// and the worker pauses, its probe waiting for the table too, instead of
/// walking every delivery through the retry tiers to the DLQ.
#[tokio::test]
async fn a_table_held_by_another_session_pauses_the_worker_until_it_is_let_go() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    worker.wait_ready().await;
    let holder = hold(&env, "BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE").await;

    let bodies: Vec<Vec<u8>> = (0..40)
        .map(|i| payloads::mixed_from(&format!("w{i}"), 1, 16_660_000_000 + i))
        .collect();
    env.publish_inbound_all(&bodies).await;
    worker.wait_paused("postgresql", "breaker").await;
    // Its probes wait for the table too and fail: still paused.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        worker.paused("postgresql", "breaker").await,
        1.0,
        "still paused"
    );

    let_go(holder).await;
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, 40).await;
    assert_eq!(worker.paused("postgresql", "breaker").await, 0.0, "resumed");
    worker.stop().await;
}

/// A session of the test's own that has run `statements` (a `BEGIN` and
/// what it holds), its transaction left open.
async fn hold(env: &TestEnv, statements: &'static str) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("a session of our own");
    sqlx::raw_sql(statements)
        .execute(&mut holder)
        .await
        .expect("the rows held");
    holder
}

async fn let_go(mut holder: sqlx::PgConnection) {
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("the rows let go");
}
