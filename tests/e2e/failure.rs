//! Failure handling: retries with growing delays, the DLQ and its command,
//! and database outages that must not put anything in the DLQ (failovers
//! behind DNS are in `failover.rs`).

use std::time::{Duration, Instant};

use wa_broker::headers;
use wa_e2e::payloads::{self, envelope, text_message};
use wa_e2e::roles::{RelayedServer, all_stored_once_and_nothing_dead_lettered, parse};
use wa_e2e::{TestEnv, Worker, dead_letter, eventually, metric_sum};

const LIMIT: Duration = Duration::from_secs(30);

async fn dlq(env: &TestEnv, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec![
        "--namespace".to_owned(),
        env.namespace.to_string(),
        "--amqp-url".to_owned(),
        env.amqp_url.clone(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    wa_dlq::run(parse::<wa_dlq::DlqArgs>(argv)).await
}

async fn messages(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM messages").await
}

async fn wait_for_depth(env: &TestEnv, queue: &str, depth: u32) {
    env.wait_for_depth(queue, depth).await;
}

/// Puts `count` payloads (tagged `tag`) straight into the DLQ, dead-lettered
/// as `class`, and waits until the queue counts them all.
async fn fill_dlq(env: &TestEnv, tag: &str, count: u32, class: &str) {
    let bodies = payloads::mixed_each(tag, count as usize);
    env.publish_all_with(
        "",
        &env.queue("dlq"),
        &bodies,
        dead_letter(class, "injected"),
    )
    .await;
    wait_for_depth(env, "dlq", count).await;
}

#[tokio::test]
async fn a_persisting_transient_failure_is_retried_then_dead_lettered_then_replayed_once() {
    let env = TestEnv::new().await;
    // Every insert fails as a serialization failure would: transient.
    for statement in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(statement)
            .execute(&env.db)
            .await
            .expect("inject failure");
    }
    let body = envelope(
        &[text_message("wamid.flaky", "15550003", 1_700_000_000)],
        &[],
    );
    env.publish_inbound(&body).await;
    let worker = Worker::start(&env, &["--quick-retries", "2"]).await;
    wait_for_depth(&env, "dlq", 1).await;

    let metrics = worker.metrics().await;
    // One tier per attempt (100 ms, 200 ms, 300 ms), then the DLQ.
    assert_eq!(
        metric_sum(&metrics, "wa_deliveries_total", &[("outcome", "retried")]),
        3.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "wa_deliveries_total",
            &[("outcome", "dead_lettered")]
        ),
        1.0
    );
    let dead = env.drain("dlq").await;
    let properties = &dead[0].delivery.properties;
    assert_eq!(headers::int(properties, headers::ATTEMPTS), 4);
    assert_eq!(
        headers::text(properties, headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert!(headers::text(properties, headers::ERROR).is_some_and(|e| e.contains("40001")));
    let time = |name| {
        chrono::DateTime::parse_from_rfc3339(&headers::text(properties, name).expect(name))
            .expect("RFC 3339")
    };
    let waited = time(headers::LAST_FAILURE_AT) - time(headers::FIRST_FAILURE_AT);
    assert!(
        waited >= chrono::Duration::milliseconds(600),
        "tiers were waited: {waited}"
    );
    assert_eq!(
        dead[0].delivery.data, body,
        "the DLQ keeps the original body"
    );
    assert_eq!(messages(&env).await, 0);

    // Lift the failure; put the same dead letter back twice and replay both.
    sqlx::query("DROP TRIGGER refuse ON messages")
        .execute(&env.db)
        .await
        .expect("lift");
    let dlq_queue = env.queue("dlq");
    for _ in 0..2 {
        env.publish_with("", &dlq_queue, &body, properties.clone())
            .await;
    }
    dlq(&env, &["replay"]).await.expect("replay");
    eventually("the replayed message stored", LIMIT, || async {
        match messages(&env).await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    wait_for_depth(&env, "inbound", 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages(&env).await, 1, "replaying twice stores once");
    assert_eq!(env.queue_depth("dlq").await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn replay_dry_run_changes_nothing_and_limit_and_rate_hold() {
    let env = TestEnv::new().await;
    let dlq_queue = env.queue("dlq");
    for i in 0..12 {
        let class = if i < 10 { "transient" } else { "permanent" };
        let body = payloads::mixed(&format!("dead{i}"), 1);
        env.publish_with("", &dlq_queue, &body, dead_letter(class, "injected"))
            .await;
    }

    dlq(&env, &["replay", "--dry-run"]).await.expect("dry run");
    wait_for_depth(&env, "dlq", 12).await;
    wait_for_depth(&env, "inbound", 0).await;
    // A dry run holds what it counts: one that stops at the scan limit says so.
    let capped = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-ingest"))
        .args(["dlq", "--scan-limit", "5", "replay", "--dry-run"])
        .env("AMQP_URL", &env.amqp_url)
        .env("WA_NAMESPACE", env.namespace.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run wa-ingest dlq");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&capped.stdout),
        String::from_utf8_lossy(&capped.stderr),
    );
    assert!(capped.status.success(), "{stderr}");
    assert!(
        stdout.contains("would replay at least 5 message(s)"),
        "{stdout}"
    );
    assert!(stderr.contains("more may match"), "{stderr}");
    wait_for_depth(&env, "dlq", 12).await;

    dlq(&env, &["list", "--class", "permanent", "--json"])
        .await
        .expect("list");
    dlq(&env, &["stats"]).await.expect("stats");

    dlq(&env, &["replay", "--class", "transient", "--limit", "3"])
        .await
        .expect("limited replay");
    wait_for_depth(&env, "inbound", 3).await;
    wait_for_depth(&env, "dlq", 9).await;

    let started = Instant::now();
    dlq(&env, &["replay", "--class", "transient", "--rate", "5"])
        .await
        .expect("paced replay");
    let elapsed = started.elapsed();
    // 7 messages at 5/s: the first goes at once, then one every 200 ms.
    println!(
        "replayed 7 messages in {elapsed:?}: {:.1}/s",
        7.0 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed >= Duration::from_millis(1150),
        "rate limit held: {elapsed:?}"
    );
    wait_for_depth(&env, "inbound", 10).await;
    wait_for_depth(&env, "dlq", 2).await;

    assert!(
        dlq(&env, &["purge"]).await.is_err(),
        "purge refuses without --yes"
    );
    wait_for_depth(&env, "dlq", 2).await;
    dlq(&env, &["purge", "--older-than", "1h", "--yes"])
        .await
        .expect("purge old");
    wait_for_depth(&env, "dlq", 2).await;
    dlq(&env, &["purge", "--yes"]).await.expect("purge all");
    wait_for_depth(&env, "dlq", 0).await;
}

#[tokio::test]
async fn replay_drains_a_quorum_dlq_of_two_thousand_and_a_limit_moves_exactly_that_many() {
    let env = TestEnv::new().await;
    let total = 2000;
    fill_dlq(&env, "drain", total, "transient").await;

    // A read-only command first: it holds every message and gives them back
    // as it ends, which the quorum queue counts a moment later.
    dlq(&env, &["stats"]).await.expect("stats");
    dlq(&env, &["replay", "--limit", "500"])
        .await
        .expect("limited replay");
    wait_for_depth(&env, "inbound", 500).await;
    wait_for_depth(&env, "dlq", total - 500).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.queue_depth("inbound").await, 500, "exactly 500 moved");

    dlq(&env, &["list", "--limit", "3"]).await.expect("list");
    // The scan limit bounds what a run holds, not what it replays: 1,500
    // messages drain with a limit of 1,000.
    dlq(&env, &["--scan-limit", "1000", "replay"])
        .await
        .expect("replay");
    wait_for_depth(&env, "inbound", total).await;
    wait_for_depth(&env, "dlq", 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.queue_depth("dlq").await, 0, "nothing left behind");
    assert_eq!(env.queue_depth("inbound").await, total);
}

#[tokio::test]
async fn purge_drains_the_dlq_past_its_scan_limit() {
    let env = TestEnv::new().await;
    fill_dlq(&env, "purge", 300, "permanent").await;
    // Purged messages are not held, so the scan limit bounds only what is kept.
    dlq(&env, &["--scan-limit", "100", "purge", "--yes"])
        .await
        .expect("purge");
    wait_for_depth(&env, "dlq", 0).await;
}

#[tokio::test]
async fn a_twenty_second_database_outage_puts_nothing_in_the_dlq() {
    let env = TestEnv::new().await;
    let (worker, relay) = Worker::start_relayed(&env, RelayedServer::PostgreSql, &[]).await;

    let total = 60;
    for i in 0..20 {
        env.publish_inbound(&payloads::mixed(&format!("pg{i}"), 1))
            .await;
    }
    eventually("the first third stored", LIMIT, || async {
        match messages(&env).await {
            20 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    relay.cut();
    for i in 20..total {
        env.publish_inbound(&payloads::mixed(&format!("pg{i}"), 1))
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let ready = reqwest::get(format!("http://{}/readyz", worker.ops_addr))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status().as_u16(),
        503,
        "not ready while PostgreSQL is away"
    );
    assert_eq!(
        messages(&env).await,
        20,
        "the relay really cut the database"
    );
    relay.restore();

    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, total).await;
    worker.stop().await;
}

/// What a restart or failover does to a pool: every connection to the
/// database closed at once, three times while webhooks flow, each time
/// with connections that had just been used. Each event is stored once
/// and nothing goes to the DLQ.
#[tokio::test]
async fn every_database_connection_dropped_mid_stream_loses_and_dead_letters_nothing() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    let total = 60;
    let mut dropped = 0;
    for i in 0..total {
        env.publish_inbound(&payloads::mixed(&format!("drop{i}"), 1))
            .await;
        if i % 20 == 10 {
            dropped += env
                .count(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped > 0, "the worker's connections were dropped");
    all_stored_once_and_nothing_dead_lettered(&env, worker.ops_addr, total).await;
    worker.stop().await;
}
