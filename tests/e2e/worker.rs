//! The worker against real servers: races between workers, a claim left by
//! a dead owner, statuses out of order, Redis and broker outages, and bad
//! payloads.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Barrier;
use wa_e2e::payloads::{self, envelope, status, text_message};
use wa_e2e::roles::{RelayedServer, WorkerServers};
use wa_e2e::{TestEnv, Worker, metric_sum};

async fn stored_total(workers: &[Worker]) -> f64 {
    // One process, one recorder: any worker's /metrics shows them all.
    metric_sum(
        &workers[0].metrics().await,
        "wa_events_total",
        &[("outcome", "stored")],
    )
}

#[tokio::test]
async fn fifty_copies_raced_by_four_workers_store_each_event_once() {
    let env = TestEnv::new().await;
    // 5 messages and 15 statuses: 20 unique events.
    let body = payloads::mixed("race", 5);
    let publishing = (0..50).map(|_| env.publish_inbound(&body));
    join_all(publishing).await;

    let gate = Arc::new(Barrier::new(4));
    let starts = (0..4).map(|_| {
        let gate = gate.clone();
        let env = &env;
        async move {
            gate.wait().await;
            Worker::start(env, &["--batch-size", "8", "--prefetch", "16"]).await
        }
    });
    let workers: Vec<Worker> = join_all(starts).await;
    env.settled((5, 15)).await;

    assert_eq!(env.stored_rows().await, (5, 15));
    assert_eq!(stored_total(&workers).await, 20.0);
    assert_eq!(
        env.count("SELECT count(*) FROM message_latest_status WHERE status = 'read'")
            .await,
        5
    );
    assert_eq!(env.count("SELECT count(*) FROM contacts").await, 5);
    assert_eq!(env.queue_depth("dlq").await, 0);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn a_claim_left_pending_by_a_dead_owner_is_stored_after_its_lease() {
    let env = TestEnv::new().await;
    let wamid = "wamid.orphaned";
    let mut redis = env.redis().await;
    let claim = format!("{}:claim:msg:{wamid}", env.namespace);
    // The owner took the lease and died before storing.
    let _: () = redis::cmd("SET")
        .arg(&claim)
        .arg("pending:crashed-owner")
        .arg("PX")
        .arg(1500)
        .query_async(&mut redis)
        .await
        .expect("plant claim");

    env.publish_inbound(&envelope(
        &[text_message(wamid, "15550001", 1_700_000_000)],
        &[],
    ))
    .await;
    let worker = Worker::start(&env, &[]).await;
    env.settled((1, 0)).await;

    let marker: Option<String> = redis::cmd("GET")
        .arg(&claim)
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(marker.as_deref(), Some("done"));
    let metrics = worker.metrics().await;
    assert!(metric_sum(&metrics, "wa_events_total", &[("outcome", "deferred")]) >= 1.0);
    assert_eq!(
        metric_sum(&metrics, "wa_events_total", &[("outcome", "stored")]),
        1.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn statuses_arriving_read_delivered_sent_leave_read_as_latest() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    let wamid = "wamid.out.of.order";
    for (i, name) in ["read", "delivered", "sent"].iter().enumerate() {
        env.publish_inbound(&envelope(
            &[],
            &[status(wamid, name, "15550002", 1_700_000_010 - i as i64)],
        ))
        .await;
        env.settled((0, i as i64 + 1)).await;
    }
    let latest: String =
        sqlx::query_scalar("SELECT status FROM message_latest_status WHERE wamid = $1")
            .bind(wamid)
            .fetch_one(&env.db)
            .await
            .expect("latest status");
    assert_eq!(latest, "read");
    worker.stop().await;
}

#[tokio::test]
async fn with_redis_unreachable_duplicates_still_make_one_row_each() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: every claim fails, and the workers fail open.
    let no_redis = || WorkerServers {
        redis_url: "redis://127.0.0.1:1/",
        ..WorkerServers::of(&env)
    };
    let body = payloads::mixed("noredis", 3);
    join_all((0..20).map(|_| env.publish_inbound(&body))).await;
    let workers = vec![
        Worker::start_with(&env, no_redis(), &["--batch-size", "4"]).await,
        Worker::start_with(&env, no_redis(), &["--batch-size", "4"]).await,
    ];
    env.settled((3, 9)).await;
    assert_eq!(env.stored_rows().await, (3, 9));
    let metrics = workers[0].metrics().await;
    assert!(
        metric_sum(&metrics, "wa_claim_fail_open_total", &[]) > 0.0,
        "fail-open is counted"
    );
    assert_eq!(
        metric_sum(&metrics, "wa_events_total", &[("outcome", "stored")]),
        12.0
    );
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn the_worker_consumes_again_after_the_broker_connection_drops() {
    let env = TestEnv::new().await;
    let (worker, relay) = Worker::start_relayed(&env, RelayedServer::RabbitMq, &[]).await;
    env.publish_inbound(&payloads::mixed("first", 1)).await;
    env.settled((1, 3)).await;

    relay.cut();
    env.publish_inbound(&payloads::mixed("while-down", 1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.restore();
    env.publish_inbound(&payloads::mixed("after", 1)).await;
    env.settled((3, 9)).await;
    worker.stop().await;
}

#[tokio::test]
async fn bad_payloads_go_to_the_dlq_at_once_and_spare_the_good_ones() {
    let env = TestEnv::new().await;
    env.publish_inbound(b"this is not JSON").await;
    env.publish_inbound(br#"{"object":"page","entry":[]}"#)
        .await;
    env.publish_inbound(&payloads::mixed("good", 2)).await;
    let worker = Worker::start(&env, &["--batch-linger", "200ms"]).await;
    env.settled((2, 6)).await;

    let dead = env.drain("dlq").await;
    assert_eq!(dead.len(), 2);
    for message in &dead {
        let headers = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .expect("headers");
        let get = |key: &str| headers.inner().get(key).cloned();
        assert_eq!(
            get("x-wa-error-class"),
            Some(lapin::types::AMQPValue::LongString("permanent".into()))
        );
        assert_eq!(
            get("x-wa-attempts"),
            Some(lapin::types::AMQPValue::LongLongInt(1))
        );
        assert!(get("x-wa-error").is_some() && get("x-wa-first-failure-at").is_some());
        assert!(get("x-wa-dead-lettered-by").is_some());
    }
    let metrics = worker.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "wa_deliveries_total", &[("outcome", "retried")]),
        0.0
    );
    worker.stop().await;
}

/// What a user typed can hold U+0000 or half an emoji (a client that cut a
/// surrogate pair), which PostgreSQL refuses in `jsonb` and `text`. The
/// webhook is stored whole, with U+FFFD in their place, and not one of its
/// events goes to the DLQ: until the parser read them so, all of it went
/// there as permanent, the good message beside them included.
#[tokio::test]
async fn a_text_with_nul_or_half_an_emoji_is_stored_with_the_rest_of_its_webhook() {
    let env = TestEnv::new().await;
    let user = "15550009";
    let mut nul = text_message("wamid.odd.nul", user, 1_700_000_000);
    nul["text"] = serde_json::json!({ "body": "nul \u{0000} inside" });
    let mut half = text_message("wamid.odd.half", user, 1_700_000_001);
    half["text"] = serde_json::json!({ "body": "half an emoji HALF" });
    let good = text_message("wamid.odd.good", user, 1_700_000_002);
    let read = status("wamid.odd.out", "read", user, 1_700_000_003);
    // A Rust string cannot hold a lone surrogate; its JSON escape can.
    let body = String::from_utf8(envelope(&[nul, half, good], &[read]))
        .expect("JSON is UTF-8")
        .replace("HALF", r"\ud83d")
        .replace(
            &format!("\"User {user}\""),
            &format!(r#""User\u0000 {user}""#),
        );
    assert!(body.contains(r"\u0000 inside") && body.contains(r"User\u0000"));
    env.publish_inbound(body.as_bytes()).await;
    env.publish_inbound(body.as_bytes()).await;
    let worker = Worker::start(&env, &[]).await;
    env.settled((3, 1)).await;
    assert_eq!(env.queue_depth("dlq").await, 0);

    let texts: Vec<(String, String)> =
        sqlx::query_as("SELECT wamid, raw->'text'->>'body' FROM messages ORDER BY wamid")
            .fetch_all(&env.db)
            .await
            .expect("the messages");
    let texts: Vec<(&str, &str)> = texts
        .iter()
        .map(|(w, t)| (w.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            ("wamid.odd.good", "message wamid.odd.good"),
            ("wamid.odd.half", "half an emoji \u{fffd}"),
            ("wamid.odd.nul", "nul \u{fffd} inside"),
        ]
    );
    let name: String = sqlx::query_scalar("SELECT profile_name FROM contacts WHERE wa_id = $1")
        .bind(user)
        .fetch_one(&env.db)
        .await
        .expect("the contact");
    assert_eq!(name, format!("User\u{fffd} {user}"));
    worker.stop().await;
}

/// The marker a worker leaves once every event of `body` is stored.
async fn stored_body_marker(env: &TestEnv, body: &[u8]) -> Option<String> {
    let key = format!(
        "{}:stored-body:{}",
        env.namespace,
        wa_worker::stored_body::BodyDigest::of(body).hex_into(&mut [0; 64])
    );
    redis::cmd("GET")
        .arg(&key)
        .query_async(&mut env.redis().await)
        .await
        .expect("GET")
}

#[tokio::test]
async fn a_copy_of_a_stored_body_is_acked_by_its_marker_without_a_claim() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    // 1 message and 3 statuses.
    let body = payloads::mixed("marked", 1);
    env.publish_inbound(&body).await;
    env.settled((1, 3)).await;
    wa_e2e::eventually(
        "the body marked stored",
        Duration::from_secs(30),
        || async {
            match stored_body_marker(&env, &body).await {
                Some(marker) => Ok(marker),
                None => Err("no marker".to_owned()),
            }
        },
    )
    .await;
    assert_eq!(
        stored_body_marker(&env, &body).await.as_deref(),
        Some("message=1 status=3")
    );

    env.publish_inbound(&body).await;
    env.publish_inbound(&body).await;
    let metrics = wa_e2e::eventually("both copies acked", Duration::from_secs(30), || async {
        let metrics = worker.metrics().await;
        let acked = metric_sum(&metrics, "wa_deliveries_total", &[("outcome", "acked")]);
        if acked == 3.0 {
            Ok(metrics)
        } else {
            Err(format!("{acked} acked"))
        }
    })
    .await;
    let events = |outcome| metric_sum(&metrics, "wa_events_total", &[("outcome", outcome)]);
    assert_eq!(events("stored"), 4.0);
    assert_eq!(
        events("duplicate_delivery"),
        8.0,
        "counted by kind, unparsed"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "wa_events_total",
            &[("kind", "status"), ("outcome", "duplicate_delivery")]
        ),
        6.0
    );
    assert_eq!(events("duplicate_claim"), 0.0, "no claim round trip");
    env.settled((1, 3)).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_body_is_marked_stored_only_once_all_its_events_are() {
    let env = TestEnv::new().await;
    let wamid = "wamid.held.elsewhere";
    let mut redis = env.redis().await;
    // Another owner holds the message's claim; the status is free.
    let _: () = redis::cmd("SET")
        .arg(format!("{}:claim:msg:{wamid}", env.namespace))
        .arg("pending:other-owner")
        .arg("PX")
        .arg(1500)
        .query_async(&mut redis)
        .await
        .expect("plant claim");
    let body = envelope(
        &[text_message(wamid, "15550001", 1_700_000_000)],
        &[status("wamid.sent.here", "sent", "15550001", 1_700_000_000)],
    );
    env.publish_inbound(&body).await;
    let worker = Worker::start(&env, &[]).await;
    wa_e2e::eventually(
        "the free status stored",
        Duration::from_secs(30),
        || async {
            match env.stored_rows().await {
                (0, 1) => Ok(()),
                rows => Err(format!("{rows:?}")),
            }
        },
    )
    .await;
    // Deferred for its held message: a copy now must take the claims.
    assert_eq!(stored_body_marker(&env, &body).await, None);

    env.settled((1, 1)).await;
    wa_e2e::eventually(
        "the body marked stored",
        Duration::from_secs(30),
        || async {
            match stored_body_marker(&env, &body).await {
                Some(marker) if marker == "message=1 status=1" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    worker.stop().await;
}

/// `errors`, `conversation` and `pricing` are the item's own (read from it
/// in SQL), JSON `null` where the item has none or says `null`; the item is
/// stored whole, and its downstream event carries it as stored.
#[tokio::test]
async fn a_status_row_holds_its_items_errors_conversation_and_pricing() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    let mut priced = status("wamid.cols.1", "sent", "15550003", 1_700_000_100);
    priced["conversation"] = serde_json::json!({ "id": "c1", "origin": { "type": "service" } });
    priced["pricing"] = serde_json::json!({ "billable": true, "category": "service" });
    let mut failed = status("wamid.cols.2", "failed", "15550003", 1_700_000_101);
    failed["errors"] = serde_json::json!([{ "code": 131047, "title": "Re-engagement message" }]);
    let mut nulls = status("wamid.cols.3", "sent", "15550003", 1_700_000_102);
    nulls["pricing"] = serde_json::Value::Null;
    let items = [priced, failed, nulls];
    env.publish_inbound(&envelope(&[], &items)).await;
    env.settled((0, 3)).await;

    for item in &items {
        let wamid = item["id"].as_str().expect("id");
        let (errors, conversation, pricing, raw): (
            Option<serde_json::Value>,
            Option<serde_json::Value>,
            Option<serde_json::Value>,
            serde_json::Value,
        ) = sqlx::query_as(
            "SELECT errors, conversation, pricing, raw FROM message_statuses WHERE wamid = $1",
        )
        .bind(wamid)
        .fetch_one(&env.db)
        .await
        .expect("the status row");
        let own = |key: &str| Some(item.get(key).cloned().unwrap_or_default());
        assert_eq!(errors, own("errors"), "{wamid} errors");
        assert_eq!(conversation, own("conversation"), "{wamid} conversation");
        assert_eq!(pricing, own("pricing"), "{wamid} pricing");
        assert_eq!(&raw, item, "{wamid} raw");
    }
    let sql_nulls = env
        .count(
            "SELECT count(*) FROM message_statuses
             WHERE errors IS NULL OR conversation IS NULL OR pricing IS NULL",
        )
        .await;
    assert_eq!(sql_nulls, 0, "an absent field is JSON null, not SQL NULL");
    let events_with_their_item = env
        .count(
            "SELECT count(*) FROM outbox o JOIN message_statuses s
             ON o.event_id = 'status:' || s.wamid || ':' || s.status
             WHERE o.payload->'data'->'item' = s.raw",
        )
        .await;
    assert_eq!(events_with_their_item, 3, "each event carries its item");
    worker.stop().await;
}

/// A batch acks its plain acks with one multiple ack, once every earlier
/// delivery on its channel is settled (`crates/wa-worker/src/ack.rs`). A
/// worker process SIGKILLed again and again while batches are in flight,
/// with poison payloads and copies among the good ones, must still lose
/// nothing: an ack that ran ahead of a store would leave rows missing for
/// good, since the broker would not deliver those messages again.
#[tokio::test]
async fn a_worker_sigkilled_again_and_again_with_batches_in_flight_loses_nothing() {
    let env = TestEnv::new().await;
    let good = payloads::mixed_each("killed", 1500);
    let mut bodies = Vec::new();
    let mut poison = 0u32;
    for (i, body) in good.iter().enumerate() {
        bodies.push(body.clone());
        if i % 10 == 0 {
            bodies.push(body.clone());
        }
        if i % 50 == 0 {
            bodies.push(b"not json".to_vec());
            poison += 1;
        }
    }
    env.publish_inbound_all(&bodies).await;
    let spawn = || {
        env.worker_process(env!("CARGO_BIN_EXE_wa-ingest"))
            .env("WA_BATCH_SIZE", "8")
            .env("WA_PREFETCH", "64")
            .env("WA_CONCURRENCY", "4")
            // A killed worker's claims stay pending this long.
            .env("WA_CLAIM_LEASE", "2s")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn wa-ingest worker")
    };
    let started = std::time::Instant::now();
    let mut child = spawn();
    let mut kills = 0;
    while env.stored_rows().await != (1500, 4500) || env.queued_for_workers().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not stored in 180 s: rows {:?}, queued {}",
            env.stored_rows().await,
            env.queued_for_workers().await
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        if kills < 6 {
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
            kills += 1;
            child = spawn();
        }
    }
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    assert_eq!(env.stored_rows().await, (1500, 4500));
    assert_eq!(env.queued_for_workers().await, 0);
    // A move to the DLQ confirmed just before a kill is moved again.
    assert!(env.queue_depth("dlq").await >= poison);
    assert!(kills >= 2, "the worker was killed {kills} times");
    println!(
        "{} deliveries stored in {:.1} s, worker SIGKILLed {kills} times",
        bodies.len(),
        started.elapsed().as_secs_f64()
    );
}
