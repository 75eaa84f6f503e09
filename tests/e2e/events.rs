//! Downstream events: one per new message or status advance, in per-contact
//! Meta-timestamp order, through the outbox and several relays.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use wa_broker::event_shard;
use wa_e2e::env::TEST_EVENT_SHARDS;
use wa_e2e::logs::error_lines;
use wa_e2e::payloads::{envelope, status, text_message};
use wa_e2e::{Relay, Sink, TestEnv, Worker, eventually};

#[tokio::test]
async fn a_thousand_shuffled_messages_give_one_ordered_event_each_despite_a_relay_crash() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let (contacts, per_contact) = (20, 50);
    let mut bodies = Vec::new();
    for c in 0..contacts {
        for k in 0..per_contact {
            let message = text_message(
                &format!("wamid.ev.c{c:02}.k{k:02}"),
                &format!("4915{c:08}"),
                1_700_000_000 + k * 10,
            );
            bodies.push(envelope(&[message], &[]));
        }
    }
    // Meta's order is not the users': shuffle, and deliver everything 3 times.
    let mut deliveries: Vec<Vec<u8>> = bodies
        .iter()
        .flat_map(|b| [b.clone(), b.clone(), b.clone()])
        .collect();
    deliveries.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));

    let workers = [
        Worker::start(&env, &[]).await,
        Worker::start(&env, &[]).await,
    ];
    // The window is longer than it takes to deliver and store everything,
    // so every out-of-order gap is inside it.
    let window = ["--reorder-window", "8s", "--batch-contacts", "5"];
    let crashing = Relay::start(&env, &window).await;
    let surviving = Relay::start(&env, &window).await;
    env.publish_inbound_all(&deliveries).await;

    eventually("the first events", Duration::from_secs(60), || async {
        match sink.unique() {
            0 => Err("none yet".to_owned()),
            n => Ok(n),
        }
    })
    .await;
    crashing.kill();

    let expected = (contacts * per_contact) as usize;
    eventually("one event per message", Duration::from_secs(60), || async {
        match sink.unique() {
            n if n == expected => Ok(()),
            n => Err(format!("{n} of {expected}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = sink.received();
    let ids: HashSet<&str> = received.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), expected);
    assert!(ids.iter().all(|id| id.starts_with("msg:wamid.ev.")));
    assert!(received.iter().all(|e| e.kind == "message.created"));
    // Only a crash may repeat an id, and only what one release held.
    let repeated = received.len() - ids.len();
    println!(
        "{} events, {} republished after the relay crash",
        received.len(),
        repeated
    );
    assert!(repeated <= 1000, "{repeated}");

    // Per contact, first occurrences arrive in Meta-timestamp order, on the
    // contact's shard, none late.
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, &str> = HashMap::new();
    for event in &received {
        assert_eq!(event.shard, event_shard(&event.contact, TEST_EVENT_SHARDS));
        if !seen.insert(event.id.as_str()) {
            continue;
        }
        assert!(!event.late, "{event:?}");
        if let Some(previous) = last.insert(event.contact.as_str(), event.timestamp.as_str()) {
            assert!(
                previous < event.timestamp.as_str(),
                "{previous} then {event:?}"
            );
        }
    }
    assert_eq!(last.len(), contacts as usize);
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
    surviving.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn statuses_arriving_read_sent_delivered_give_one_status_event() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let worker = Worker::start(&env, &[]).await;
    let relay = Relay::start(&env, &["--reorder-window", "100ms"]).await;
    let wamid = "wamid.business.reply";
    for (i, name) in ["read", "sent", "delivered"].iter().enumerate() {
        env.publish_inbound(&envelope(
            &[],
            &[status(wamid, name, "4915000001", 1_700_000_010 - i as i64)],
        ))
        .await;
        eventually("the status stored", Duration::from_secs(30), || async {
            match env.count("SELECT count(*) FROM message_statuses").await {
                n if n == i as i64 + 1 => Ok(()),
                n => Err(n.to_string()),
            }
        })
        .await;
    }
    eventually("the status event", Duration::from_secs(30), || async {
        match sink.unique() {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = sink.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].id, format!("status:{wamid}:read"));
    assert_eq!(received[0].kind, "message.status");
    assert_eq!(received[0].sequence, 1);
    relay.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn events_tail_prints_each_event_once_acks_it_and_stops_without_an_error() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    let relay = Relay::start(&env, &["--reorder-window", "200ms"]).await;
    let count = 12;
    let bodies: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let message = text_message(
                &format!("wamid.tail.{i:02}"),
                &format!("4916{i:08}"),
                1_700_000_000,
            );
            envelope(&[message], &[])
        })
        .collect();
    env.publish_inbound_all(&bodies).await;

    let shards = TEST_EVENT_SHARDS.to_string();
    let limit = count.to_string();
    let tail = env
        .process(
            env!("CARGO_BIN_EXE_wa-ingest"),
            &[
                "events",
                "tail",
                "--event-shards",
                &shards,
                "--limit",
                &limit,
            ],
        )
        .env("LOG_FORMAT", "json")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), tail)
        .await
        .expect("the tail stopped at its limit")
        .expect("run wa-ingest events tail");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let ids: HashSet<String> = stdout
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            event["id"].as_str().expect("an event id").to_owned()
        })
        .collect();
    assert_eq!(stdout.lines().count(), count, "{stdout}");
    assert_eq!(ids.len(), count, "each event once: {stdout}");
    assert!(ids.iter().all(|id| id.starts_with("msg:wamid.tail.")));
    let errors = error_lines(&stderr);
    assert!(errors.is_empty(), "a clean stop logs no error: {errors:#?}");
    // What it printed it acked: nothing is left for the next consumer.
    for shard in 0..TEST_EVENT_SHARDS {
        assert_eq!(env.queue_depth(&format!("events.{shard}")).await, 0);
    }
    relay.stop().await;
    worker.stop().await;
}

/// Published events past WA_OUTBOX_RETENTION are deleted as soon as a
/// relay starts and then every minute, batch after batch until none is
/// left: one batch a minute (10,000 rows) fell behind any rate above about
/// 170 events a second for good. Those within their retention stay.
#[tokio::test]
async fn a_relay_deletes_every_published_event_past_its_retention_batch_after_batch() {
    const OLD: i64 = 25_000;
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, contact_key, wamid, payload, created_at, published_at, sequence)
         SELECT 'msg:old' || n, 'message.created', 'c' || n % 100, 'old' || n, '{}'::jsonb, now() - interval '2 days',
                now() - interval '2 days' + n * interval '1 ms', n
         FROM generate_series(1, $1) AS n
         UNION ALL
         SELECT 'msg:recent' || n, 'message.created', 'c' || n, 'recent' || n, '{}'::jsonb, now(), now(), n
         FROM generate_series(1, 5) AS n",
    )
    .bind(OLD)
    .execute(&env.db)
    .await
    .expect("seed the outbox");
    let relay = Relay::start(&env, &[]).await;
    let published = |era: &'static str| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND event_id LIKE $1",
            )
            .bind(format!("msg:{era}%"))
            .fetch_one(&db)
            .await
            .expect("count")
        }
    };
    eventually(
        "every event past its retention deleted",
        Duration::from_secs(30),
        || async {
            match published("old").await {
                0 => Ok(()),
                left => Err(format!("{left} of {OLD} left")),
            }
        },
    )
    .await;
    assert_eq!(
        published("recent").await,
        5,
        "events within their retention stay"
    );
    relay.stop().await;
}
