//! One contact across identities: a user seen by phone number, then by
//! phone number and BSUID, then by BSUID alone is one contact record with
//! one ordering key, and concurrent batches never split or duplicate it.

use std::time::Duration;

use serde_json::json;
use wa_e2e::payloads::envelope;
use wa_e2e::{Relay, Sink, TestEnv, Worker, eventually};

const LIMIT: Duration = Duration::from_secs(60);

/// A text message from a user named by `from`, `from_user_id`, or both.
fn message(wamid: &str, wa_id: Option<&str>, user_id: Option<&str>, ts: i64) -> serde_json::Value {
    let mut message = json!({"id": wamid, "timestamp": ts.to_string(), "type": "text",
                             "text": {"body": wamid}});
    if let Some(wa_id) = wa_id {
        message["from"] = json!(wa_id);
    }
    if let Some(user_id) = user_id {
        message["from_user_id"] = json!(user_id);
    }
    message
}

async fn wait_count(env: &TestEnv, sql: &'static str, expected: i64) {
    env.wait_for_count(sql, sql, expected, LIMIT).await;
}

#[tokio::test]
async fn a_user_seen_by_number_then_both_then_bsuid_is_one_contact_with_one_ordering_key() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let worker = Worker::start(&env, &[]).await;
    let relay = Relay::start(&env, &["--reorder-window", "200ms"]).await;
    let (wa_id, user_id) = ("15550001234", "US.13491208655302741918");
    let outbound = "wamid.business.to.user";
    // Meta switches from the number to the BSUID; each arrives after the
    // previous one is stored, as a user's messages do.
    let steps = [
        envelope(&[message("wamid.1", Some(wa_id), None, 1_750_000_001)], &[]),
        envelope(
            &[message(
                "wamid.2",
                Some(wa_id),
                Some(user_id),
                1_750_000_002,
            )],
            &[],
        ),
        // A status of the business's message, addressed by BSUID only.
        envelope(
            &[],
            &[
                json!({"id": outbound, "status": "delivered", "timestamp": "1750000003",
                     "recipient_user_id": user_id}),
            ],
        ),
        envelope(
            &[message("wamid.3", None, Some(user_id), 1_750_000_004)],
            &[],
        ),
    ];
    for (i, body) in steps.iter().enumerate() {
        env.publish_inbound(body).await;
        eventually("the step stored", LIMIT, || async {
            let stored = env.count("SELECT count(*) FROM messages").await
                + env.count("SELECT count(*) FROM message_statuses").await;
            match stored {
                n if n == i as i64 + 1 => Ok(()),
                n => Err(n.to_string()),
            }
        })
        .await;
    }

    let contacts: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT contact_key, wa_id, user_id FROM contacts")
            .fetch_all(&env.db)
            .await
            .expect("contacts");
    assert_eq!(
        contacts,
        [(
            wa_id.to_owned(),
            Some(wa_id.to_owned()),
            Some(user_id.to_owned())
        )]
    );
    assert_eq!(
        env.count("SELECT count(DISTINCT contact_key) FROM messages")
            .await,
        1
    );
    let status_key: String = sqlx::query_scalar("SELECT contact_key FROM message_statuses")
        .fetch_one(&env.db)
        .await
        .expect("status contact");
    assert_eq!(status_key, wa_id);

    eventually("four events", LIMIT, || async {
        match sink.unique() {
            4 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    let received = sink.received();
    let order: Vec<(&str, &str, i64)> = received
        .iter()
        .map(|e| (e.id.as_str(), e.ordering_key.as_str(), e.sequence))
        .collect();
    assert_eq!(
        order,
        [
            ("msg:wamid.1", wa_id, 1),
            ("msg:wamid.2", wa_id, 2),
            (&format!("status:{outbound}:delivered") as &str, wa_id, 3),
            ("msg:wamid.3", wa_id, 4),
        ]
    );
    assert!(received.iter().all(|e| e.contact == wa_id));
    relay.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn two_records_of_one_person_merge_into_the_first_seen_when_meta_shows_both_ids() {
    let env = TestEnv::new().await;
    let worker = Worker::start(&env, &[]).await;
    let (wa_id, user_id) = ("15550005678", "US.99999999999999999999");
    // First by number only, then (a new thread) by BSUID only: two records.
    env.publish_inbound(&envelope(
        &[message("wamid.a", Some(wa_id), None, 1_750_000_010)],
        &[],
    ))
    .await;
    wait_count(&env, "SELECT count(*) FROM contacts", 1).await;
    env.publish_inbound(&envelope(
        &[message("wamid.b", None, Some(user_id), 1_750_000_020)],
        &[],
    ))
    .await;
    wait_count(&env, "SELECT count(*) FROM contacts", 2).await;
    // Then Meta shows both together.
    env.publish_inbound(&envelope(
        &[message(
            "wamid.c",
            Some(wa_id),
            Some(user_id),
            1_750_000_030,
        )],
        &[],
    ))
    .await;
    wait_count(
        &env,
        "SELECT count(*) FROM contacts WHERE merged_into IS NOT NULL",
        1,
    )
    .await;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', contact_key, coalesce(wa_id, '-'), coalesce(user_id, '-'),
                          coalesce(merged_into, '-'))
         FROM contacts ORDER BY contact_key",
    )
    .fetch_all(&env.db)
    .await
    .expect("contacts");
    // The record seen first survives with both ids; the other is a tombstone.
    assert_eq!(
        rows,
        [
            format!("{wa_id} {wa_id} {user_id} -"),
            format!("{user_id} - - {wa_id}"),
        ]
    );
    let key: String =
        sqlx::query_scalar("SELECT contact_key FROM messages WHERE wamid = 'wamid.c'")
            .fetch_one(&env.db)
            .await
            .expect("message");
    assert_eq!(key, wa_id);
    let metrics = worker.metrics().await;
    assert_eq!(
        wa_e2e::metric_sum(&metrics, "wa_contacts_total", &[("change", "merged")]),
        1.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn concurrent_batches_naming_the_same_people_three_ways_make_one_record_each() {
    let env = TestEnv::new().await;
    let people = 20;
    let mut bodies = Vec::new();
    for p in 0..people {
        let wa_id = format!("1555{p:07}");
        let user_id = format!("US.{p:020}");
        for (k, (wa, user)) in [
            (Some(wa_id.as_str()), None),
            (None, Some(user_id.as_str())),
            (Some(wa_id.as_str()), Some(user_id.as_str())),
        ]
        .into_iter()
        .enumerate()
        {
            let wamid = format!("wamid.p{p}.{k}");
            bodies.push(envelope(
                &[message(&wamid, wa, user, 1_750_000_000 + k as i64)],
                &[],
            ));
        }
    }
    // Every body twice, all at once, raced by three workers that store
    // each delivery in a transaction of its own (a lost race would fail the
    // delivery instead of being retried within a batch).
    let deliveries: Vec<&Vec<u8>> = bodies.iter().flat_map(|b| [b, b]).collect();
    let one_by_one = ["--batch-size", "1", "--concurrency", "8"];
    let workers = [
        Worker::start(&env, &one_by_one).await,
        Worker::start(&env, &one_by_one).await,
        Worker::start(&env, &one_by_one).await,
    ];
    env.publish_inbound_at_once(&deliveries).await;
    wait_count(&env, "SELECT count(*) FROM messages", people * 3).await;
    // Every person is one live record holding both ids, whatever the order.
    assert_eq!(
        env.count("SELECT count(*) FROM contacts WHERE merged_into IS NULL")
            .await,
        people
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM contacts WHERE merged_into IS NULL
             AND substr(wa_id, 5)::int = substr(user_id, 4)::int"
        )
        .await,
        people
    );
    // Each person's messages carry one or two keys (two only when the
    // number and the BSUID were first seen apart and merged later), and the
    // tombstones point to live records.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM contacts t JOIN contacts s ON s.contact_key = t.merged_into
             WHERE s.merged_into IS NULL"
        )
        .await,
        env.count("SELECT count(*) FROM contacts WHERE merged_into IS NOT NULL")
            .await
    );
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = workers[0].metrics().await;
    let changes: Vec<(&str, f64)> = ["created", "linked", "merged", "conflict"]
        .into_iter()
        .map(|c| {
            (
                c,
                wa_e2e::metric_sum(&metrics, "wa_contacts_total", &[("change", c)]),
            )
        })
        .collect();
    println!("contact changes under the race: {changes:?}");
    // Every record created was either merged away or is a person's.
    assert_eq!(changes[0].1 - changes[2].1, people as f64);
    for worker in workers {
        worker.stop().await;
    }
}
