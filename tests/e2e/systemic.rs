//! An outage is not a message failure: a database that turns read-only, a
//! role that loses a privilege, or an unknown error that hits every
//! delivery pauses the worker, which probes and resumes by itself, instead
//! of walking good messages into the DLQ. A payload that fails alone still
//! goes there, and errors are logged once.

use std::net::SocketAddr;
use std::time::Duration;

use wa_broker::INBOUND_DELIVERY_LIMIT;
use wa_e2e::env::execute;
use wa_e2e::payloads::{self, envelope, text_message};
use wa_e2e::roles::{RelayedServer, WorkerServers, readyz, wait_ready};
use wa_e2e::{Relay, TcpRelay, TestEnv, TestRole, Worker, eventually, metric_sum};
use wa_store::failpoint::{self, Failpoint};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until the `/readyz` of the role at `ops_addr` answers 503 with
/// `reason` in its text.
async fn not_ready_because(ops_addr: SocketAddr, reason: &str) -> String {
    eventually(
        &format!("/readyz to say 503 because {reason}"),
        Duration::from_secs(30),
        || async {
            match readyz(ops_addr).await {
                (503, text) if text.contains(reason) => Ok(text),
                (status, text) => Err(format!("{status} {text}")),
            }
        },
    )
    .await
}

fn outcome(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(metrics, name, labels)
}

/// What a failover to a standby or a maintenance switch looks like to the
/// worker: new sessions are read-only and the old ones are gone. Touches
/// this test's own database only.
async fn set_read_only(env: &TestEnv, read_only: bool) {
    let database = env.database_name();
    let mut admin = env.admin().await;
    let value = if read_only { "on" } else { "off" };
    execute(
        &mut admin,
        format!("ALTER DATABASE {database} SET default_transaction_read_only = {value}"),
    )
    .await;
    if read_only {
        execute(
            &mut admin,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn a_database_read_only_for_twenty_seconds_mid_stream_dead_letters_only_the_poison() {
    let env = TestEnv::new().await;
    // A prefetch that lets the whole stream in, so that the poison payload
    // reaches the worker during the fault.
    let worker = Worker::start(&env, &["--prefetch", "1024"]).await;
    worker.wait_ready().await;

    // 400 payloads, a poison payload (JSON, but not a WhatsApp envelope),
    // then the 400 again, over about half a minute.
    let bodies = payloads::mixed_each("ro", 400);
    let poison = br#"{"object":"page","entry":[]}"#.to_vec();
    let mut stream = bodies.clone();
    stream.push(poison.clone());
    stream.extend(bodies.iter().cloned());
    let publishing = async {
        for body in &stream {
            env.publish_inbound(body).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let fault = async {
        eventually("the stream under way", LIMIT, || async {
            match env.stored_rows().await.0 {
                n if n >= 50 => Ok(()),
                n => Err(n.to_string()),
            }
        })
        .await;
        set_read_only(&env, true).await;
        let reason = not_ready_because(worker.ops_addr, "read-only").await;
        let stored_during_fault = env.stored_rows().await.0;
        let faulted = tokio::time::Instant::now();
        eventually(
            "the poison dead-lettered during the fault",
            LIMIT,
            || async {
                match env.queue_depth("dlq").await {
                    1 => Ok(()),
                    n => Err(n.to_string()),
                }
            },
        )
        .await;
        assert_eq!(worker.readyz().await.0, 503, "still paused");
        tokio::time::sleep_until(faulted + Duration::from_secs(20)).await;
        assert_eq!(
            env.stored_rows().await.0,
            stored_during_fault,
            "nothing is written while the database is read-only"
        );
        assert_eq!(worker.readyz().await.0, 503, "still not ready");
        // Back to read-write without touching the sessions: the worker's
        // own probe must see the change.
        set_read_only(&env, false).await;
        reason
    };
    let ((), reason) = tokio::join!(publishing, fault);
    println!("/readyz during the fault: {reason}");

    env.settled((400, 1200)).await;
    let dead = env.drain("dlq").await;
    assert_eq!(dead.len(), 1, "the DLQ holds the poison payload only");
    assert_eq!(dead[0].delivery.data, poison);
    let metrics = worker.metrics().await;
    let deliveries = |label| outcome(&metrics, "wa_deliveries_total", &[("outcome", label)]);
    assert_eq!(deliveries("dead_lettered"), 1.0);
    assert_eq!(deliveries("retried"), 0.0);
    assert_eq!(deliveries("acked"), 800.0);
    assert_eq!(
        outcome(&metrics, "wa_events_total", &[("outcome", "stored")]),
        1600.0
    );
    assert!(
        outcome(
            &metrics,
            "wa_worker_pauses_total",
            &[("dependency", "postgresql")]
        ) >= 1.0
    );
    assert_eq!(outcome(&metrics, "wa_worker_paused", &[]), 0.0);
    assert_eq!(worker.readyz().await.0, 200);
    worker.stop().await;
}

#[tokio::test]
async fn a_role_without_insert_privilege_pauses_until_the_grant_and_dead_letters_nothing() {
    let env = TestEnv::new().await;
    let role = TestRole::create(&env).await;
    let servers = WorkerServers {
        database_url: &role.database_url,
        ..WorkerServers::of(&env)
    };
    // Held deliveries are handed back every 5 s of the 20 s pause.
    let worker = Worker::start_with(&env, servers, &["--pause-hold-limit", "5s"]).await;
    worker.wait_ready().await;

    let bodies = payloads::mixed_each("grant", 300);
    env.publish_inbound_all(&bodies[..100]).await;
    env.settled((100, 300)).await;

    let mut db = env.db.acquire().await.expect("connection");
    let revoke = format!(
        "REVOKE INSERT ON ALL TABLES IN SCHEMA public FROM {}",
        role.name
    );
    execute(&mut db, revoke).await;
    let revoked = tokio::time::Instant::now();
    env.publish_inbound_all(&bodies[100..]).await;
    env.publish_inbound_all(&bodies).await;
    let reason = not_ready_because(worker.ops_addr, "privileges").await;
    println!("/readyz while INSERT is revoked: {reason}");
    tokio::time::sleep_until(revoked + Duration::from_secs(20)).await;
    assert_eq!(
        env.stored_rows().await,
        (100, 300),
        "nothing written without INSERT"
    );
    let grant = format!(
        "GRANT INSERT ON ALL TABLES IN SCHEMA public TO {}",
        role.name
    );
    execute(&mut db, grant).await;

    env.settled((300, 900)).await;
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = worker.metrics().await;
    let deliveries = |label| outcome(&metrics, "wa_deliveries_total", &[("outcome", label)]);
    assert_eq!(deliveries("dead_lettered"), 0.0);
    assert_eq!(deliveries("retried"), 0.0);
    assert!(deliveries("handed_back") > 0.0, "held past the hold limit");
    assert_eq!(
        outcome(&metrics, "wa_events_total", &[("outcome", "stored")]),
        1200.0
    );
    assert_eq!(
        outcome(
            &metrics,
            "wa_worker_pauses_total",
            &[("reason", "privileges")]
        ),
        1.0
    );
    worker.stop().await;
    drop(db);
    drop(role);
}

#[tokio::test]
async fn a_burst_of_an_unknown_error_trips_the_breaker_and_spends_no_more_attempts() {
    let env = TestEnv::new().await;
    failpoint::arm(Failpoint::EveryWrite);
    // One batch at a time, so the count of deliveries failed before the
    // trip is exact: threshold - 1.
    let worker = Worker::start(
        &env,
        &[
            "--breaker-threshold",
            "5",
            "--batch-size",
            "8",
            "--concurrency",
            "1",
        ],
    )
    .await;
    // The first probe meets an error about the attempt, not the
    // dependency: the database is up, and the worker starts.
    worker.wait_ready().await;
    let bodies = payloads::mixed_each("burst", 40);
    env.publish_inbound_all(&bodies).await;

    let reason = not_ready_because(worker.ops_addr, "breaker").await;
    println!("/readyz with the breaker open: {reason}");
    assert!(reason.contains(failpoint::INJECTED_SQLSTATE), "{reason}");
    // The probe meets the same error: it stays paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker.readyz().await.0, 503);
    assert_eq!(env.stored_rows().await, (0, 0));

    failpoint::disarm();
    env.settled((40, 120)).await;
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = worker.metrics().await;
    let deliveries = |label| outcome(&metrics, "wa_deliveries_total", &[("outcome", label)]);
    assert_eq!(deliveries("retried"), 4.0, "failed before the trip");
    assert_eq!(deliveries("dead_lettered"), 0.0);
    assert_eq!(
        outcome(&metrics, "wa_worker_pauses_total", &[("reason", "breaker")]),
        1.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_same_unknown_error_on_one_payload_alone_walks_the_retry_tiers_to_the_dlq() {
    let env = TestEnv::new().await;
    failpoint::arm(Failpoint::EventKeyContains("wamid.lonely".into()));
    let lonely = envelope(
        &[text_message("wamid.lonely", "15550007", 1_700_000_000)],
        &[],
    );
    env.publish_inbound(&lonely).await;
    let good = payloads::mixed_each("good", 20);
    env.publish_inbound_all(&good).await;
    // A breaker that trips at 3 distinct deliveries: one payload failing
    // four times is one delivery.
    let worker = Worker::start(
        &env,
        &[
            "--breaker-threshold",
            "3",
            "--quick-retries",
            "1",
            "--batch-linger",
            "100ms",
        ],
    )
    .await;

    env.settled((20, 60)).await;
    eventually("the lonely payload dead-lettered", LIMIT, || async {
        match env.queue_depth("dlq").await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    let dead = env.drain("dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, lonely);
    let properties = &dead[0].delivery.properties;
    use wa_broker::headers;
    assert_eq!(
        headers::text(properties, headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert_eq!(headers::int(properties, headers::ATTEMPTS), 4);
    assert!(
        headers::text(properties, headers::ERROR)
            .is_some_and(|e| e.contains(failpoint::INJECTED_SQLSTATE))
    );
    let metrics = worker.metrics().await;
    let deliveries = |label| outcome(&metrics, "wa_deliveries_total", &[("outcome", label)]);
    assert_eq!(deliveries("retried"), 3.0, "one per tier");
    assert_eq!(deliveries("dead_lettered"), 1.0);
    assert_eq!(
        outcome(&metrics, "wa_worker_pauses_total", &[("reason", "breaker")]),
        0.0
    );
    failpoint::disarm();
    worker.stop().await;
}

#[tokio::test]
async fn a_long_pause_hands_deliveries_back_without_using_up_the_delivery_limit() {
    let env = TestEnv::new().await;
    failpoint::arm(Failpoint::EveryWrite);
    let worker = Worker::start(
        &env,
        &[
            "--breaker-threshold",
            "2",
            "--pause-hold-limit",
            "100ms",
            "--concurrency",
            "1",
        ],
    )
    .await;
    worker.wait_ready().await;
    let bodies = payloads::mixed_each("held", 5);
    env.publish_inbound_all(&bodies).await;

    // Every delivery goes round more often than the quorum queue's delivery
    // limit allows for returned messages: a requeue would have
    // dead-lettered them.
    let rounds = (INBOUND_DELIVERY_LIMIT + 20) as f64 * bodies.len() as f64;
    eventually("deliveries handed back", LIMIT, || async {
        let metrics = worker.metrics().await;
        match outcome(
            &metrics,
            "wa_deliveries_total",
            &[("outcome", "handed_back")],
        ) {
            n if n >= rounds => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    assert_eq!(env.queue_depth("dlq").await, 0);

    failpoint::disarm();
    env.settled((5, 15)).await;
    worker.assert_nothing_dead_lettered(&env).await;
    worker.stop().await;
}

/// A payload the database refuses for good: a CHECK constraint on this
/// test's own database turns `wamid` away (23514, a permanent error of this
/// payload alone).
async fn refused_payload(env: &TestEnv, wamid: &str) -> Vec<u8> {
    let mut connection = env.db.acquire().await.expect("a connection");
    execute(
        &mut connection,
        format!("ALTER TABLE messages ADD CONSTRAINT refused CHECK (wamid <> '{wamid}')"),
    )
    .await;
    envelope(&[text_message(wamid, "15550008", 1_700_000_000)], &[])
}

#[tokio::test]
async fn a_database_error_is_logged_with_its_message_once() {
    let logs = wa_e2e::logs::capture();
    let env = TestEnv::new().await;
    env.publish_inbound(&refused_payload(&env, "wamid.refused").await)
        .await;
    let worker = Worker::start(&env, &[]).await;
    eventually("the payload dead-lettered", LIMIT, || async {
        match env.queue_depth("dlq").await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    worker.stop().await;

    // PostgreSQL's text for 23514, as the server sends it.
    let server_text = r#"violates check constraint "refused""#;
    let lines = logs.lines();
    for message in ["could not store batch", "delivery moved"] {
        let line = lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"));
        let error = line["error"].as_str().expect("an error field");
        println!("{message}: {error}");
        assert_eq!(error.matches(server_text).count(), 1, "{error}");
        assert_eq!(
            error.matches("error returned from database").count(),
            1,
            "{error}"
        );
    }
}

/// The relay's `/readyz` said 200 while it released nothing for want of
/// its database: it now says 503 until PostgreSQL answers its releases.
#[tokio::test]
async fn the_relay_is_ready_only_while_postgresql_answers_its_releases() {
    let env = TestEnv::new().await;
    let (postgres, database_url) = TcpRelay::in_front_of(&env.database_url);
    postgres.cut();
    let relay = Relay::start(&env, &["--database-url", &database_url]).await;
    let reason = not_ready_because(relay.ops_addr, "PostgreSQL").await;
    println!("/readyz before PostgreSQL was reached: {reason}");

    postgres.restore();
    wait_ready(relay.ops_addr).await;
    postgres.cut();
    not_ready_because(relay.ops_addr, "PostgreSQL").await;
    postgres.restore();
    wait_ready(relay.ops_addr).await;
    relay.stop().await;
}

#[tokio::test]
async fn the_worker_is_ready_only_once_it_has_reached_postgresql() {
    let env = TestEnv::new().await;
    let (relay, database_url) = TcpRelay::in_front_of(&env.database_url);
    relay.cut();
    let servers = WorkerServers {
        database_url: &database_url,
        ..WorkerServers::of(&env)
    };
    let worker = Worker::start_with(&env, servers, &[]).await;
    // Connected to RabbitMQ (its check comes first), not to PostgreSQL.
    let reason = not_ready_because(worker.ops_addr, "PostgreSQL").await;
    println!("/readyz before PostgreSQL was reached: {reason}");
    env.publish_inbound(&payloads::mixed("early", 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(worker.readyz().await.0, 503);
    assert_eq!(env.stored_rows().await, (0, 0));

    relay.restore();
    worker.wait_ready().await;
    env.settled((1, 3)).await;
    assert_eq!(env.queue_depth("dlq").await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_batch_retried_one_by_one_counts_each_event_once() {
    let env = TestEnv::new().await;
    // One batch: a payload of 4 events, the same again, and a payload the
    // database refuses, which sends the batch round one delivery at a time.
    let good = payloads::mixed("dup", 1);
    env.publish_inbound(&good).await;
    env.publish_inbound(&good).await;
    env.publish_inbound(&refused_payload(&env, "wamid.refused").await)
        .await;
    let worker = Worker::start(&env, &["--batch-linger", "200ms"]).await;
    env.settled((1, 3)).await;
    eventually("the refused payload dead-lettered", LIMIT, || async {
        match env.queue_depth("dlq").await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    let metrics = worker.metrics().await;
    let events = |label| outcome(&metrics, "wa_events_total", &[("outcome", label)]);
    assert_eq!(events("stored"), 4.0);
    assert_eq!(events("duplicate_claim") + events("duplicate_db"), 4.0);
    assert_eq!(events("duplicate_batch"), 0.0, "counted once, not per pass");
    assert_eq!(outcome(&metrics, "wa_events_total", &[]), 8.0);
    worker.stop().await;
}

#[tokio::test]
async fn with_claims_failing_closed_an_unreachable_redis_pauses_the_worker() {
    let env = TestEnv::new().await;
    let (worker, relay) =
        Worker::start_relayed(&env, RelayedServer::Redis, &["--claim-fail-mode", "closed"]).await;
    env.publish_inbound(&payloads::mixed("before", 1)).await;
    env.settled((1, 3)).await;

    relay.cut();
    env.publish_inbound(&payloads::mixed("during", 1)).await;
    let reason = not_ready_because(worker.ops_addr, "Redis").await;
    println!("/readyz while Redis is away: {reason}");
    assert_eq!(env.stored_rows().await, (1, 3), "nothing stored unclaimed");

    relay.restore();
    env.settled((2, 6)).await;
    assert_eq!(worker.readyz().await.0, 200);
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = worker.metrics().await;
    assert_eq!(
        outcome(
            &metrics,
            "wa_worker_pauses_total",
            &[("dependency", "redis"), ("reason", "unreachable")]
        ),
        1.0
    );
    assert_eq!(
        outcome(&metrics, "wa_deliveries_total", &[("outcome", "retried")]),
        0.0
    );
    worker.stop().await;
}
