//! WhatsApp groups end to end: per-participant receipts raced by workers,
//! group chats released in order per group, every group webhook field
//! stored and emitted once, and the membership they describe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use wa_broker::event_shard;
use wa_e2e::env::TEST_EVENT_SHARDS;
use wa_e2e::payloads::{
    Participant, envelope, fixture, group_receipt, group_text_message, groups_envelope,
};
use wa_e2e::sink::Received;
use wa_e2e::{Relay, Sink, TestEnv, Worker, eventually};
use wa_payload::status_rank;

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until `sql` counts `expected`, then until every queue a worker
/// reads is empty, so that nothing left can change the counts.
async fn settled(env: &TestEnv, sql: &'static str, expected: i64) {
    eventually(sql, LIMIT, || async {
        let now = env.count(sql).await;
        let queued = env.queued_for_workers().await;
        if now == expected && queued == 0 {
            Ok(())
        } else {
            Err(format!("{now} of {expected}, {queued} queued"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits for `expected` distinct downstream events, then a little longer
/// so that an extra one would show.
async fn events(sink: &Sink, expected: usize) -> Vec<Received> {
    eventually("the downstream events", LIMIT, || async {
        match sink.unique() {
            n if n == expected => Ok(()),
            n => Err(format!("{n} of {expected}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.received()
}

#[tokio::test]
async fn five_participants_receipts_sent_three_times_at_once_out_of_order_are_ten_rows_and_ten_events()
 {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let group = "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MToxMjAzNjM5OTk5OTk5OTk5OTk=";
    let wamid = "wamid.group.receipts";
    // Both spellings of the participant's number, BSUIDs on some.
    let participants = [
        Participant::RecipientParticipantId("15550000001"),
        Participant::ParticipantRecipientId("15550000002"),
        Participant::RecipientParticipantId("15550000003"),
        Participant::Bsuid {
            user_id: "US.40000000000000000004",
            phone: None,
        },
        Participant::Bsuid {
            user_id: "US.50000000000000000005",
            phone: Some("15550000005"),
        },
    ];
    let mut bodies = Vec::new();
    for (i, participant) in participants.iter().enumerate() {
        for (status, offset) in [("delivered", 0), ("read", 10)] {
            let ts = 1_750_000_000 + offset + i as i64;
            bodies.push(envelope(
                &[],
                &[group_receipt(wamid, status, group, *participant, ts)],
            ));
        }
    }
    // Out of order: every read before its delivered, the last participant
    // first; each receipt three times, all 30 at once.
    bodies.reverse();
    let deliveries: Vec<&Vec<u8>> = bodies.iter().flat_map(|b| [b, b, b]).collect();
    let workers = [
        Worker::start(&env, &["--batch-size", "4"]).await,
        Worker::start(&env, &["--batch-size", "4"]).await,
    ];
    // The state each event reports never goes backwards whatever the
    // release order, so a short window will do.
    let relay = Relay::start(&env, &["--reorder-window", "1s"]).await;
    env.publish_inbound_at_once(&deliveries).await;

    settled(&env, "SELECT count(*) FROM message_statuses", 10).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT participant, status FROM message_statuses WHERE wamid = $1 ORDER BY 1, 2",
    )
    .bind(wamid)
    .fetch_all(&env.db)
    .await
    .expect("receipts");
    let expected: Vec<(String, String)> = participants
        .iter()
        .flat_map(|p| {
            [
                (p.key().to_owned(), "delivered".to_owned()),
                (p.key().to_owned(), "read".to_owned()),
            ]
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(rows, expected, "one row per participant and status");

    // Every participant ends at read, whatever arrived last.
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT participant, status FROM message_participant_status WHERE wamid = $1 ORDER BY 1",
    )
    .bind(wamid)
    .fetch_all(&env.db)
    .await
    .expect("participant states");
    assert_eq!(states.len(), 5);
    assert!(states.iter().all(|(_, s)| s == "read"), "{states:?}");
    let (participants_seen, delivered, read): (i64, i64, i64) = sqlx::query_as(
        "SELECT participants, delivered, read FROM group_message_receipts WHERE wamid = $1",
    )
    .bind(wamid)
    .fetch_one(&env.db)
    .await
    .expect("derived group message state");
    assert_eq!((participants_seen, delivered, read), (5, 5, 5));
    // The message-level latest status is not taken over by one participant.
    assert_eq!(
        env.count("SELECT count(*) FROM message_latest_status")
            .await,
        0
    );

    // Ten events, each once, all ordered by the group; the state each one
    // reports per participant never goes backwards.
    let received = events(&sink, 10).await;
    assert_eq!(received.len(), 10, "{received:#?}");
    let ids: HashSet<&str> = received.iter().map(|e| e.id.as_str()).collect();
    for participant in &participants {
        for status in ["delivered", "read"] {
            let id = format!("status:{wamid}:{status}:{}", participant.key());
            assert!(ids.contains(id.as_str()), "{id} missing");
        }
    }
    let mut last_rank: HashMap<String, i16> = HashMap::new();
    for event in &received {
        assert_eq!(event.kind, "message.status");
        assert_eq!(event.ordering_key, format!("group:{group}"));
        assert_eq!(event.body["group_id"], group);
        let participant = event.body["data"]["participant"]
            .as_str()
            .expect("participant")
            .to_owned();
        let rank = status_rank(
            event.body["data"]["participant_status"]
                .as_str()
                .expect("participant_status"),
        );
        let previous = last_rank.insert(participant.clone(), rank).unwrap_or(0);
        assert!(rank >= previous, "{participant} went back: {event:?}");
    }
    assert_eq!(env.queue_depth("dlq").await, 0);
    relay.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn forty_group_messages_to_four_groups_reversed_and_doubled_arrive_in_meta_order_per_group() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let groups: Vec<String> = (0..4)
        .map(|g| format!("Y2FwaV9ncm91cDpncm91cC{g}"))
        .collect();
    let mut bodies = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for k in 0..10 {
            // Participants by phone number, by BSUID, or both.
            let (from, user) = match k % 3 {
                0 => (Some(format!("1555{g}{k:06}")), None),
                1 => (None, Some(format!("US.{g}{k:019}"))),
                _ => (
                    Some(format!("1555{g}{k:06}")),
                    Some(format!("US.{g}{k:019}")),
                ),
            };
            let message = group_text_message(
                &format!("wamid.group{g}.k{k:02}"),
                group,
                from.as_deref(),
                user.as_deref(),
                1_750_000_000 + k * 10 + g as i64,
            );
            bodies.push(envelope(&[message], &[]));
        }
    }
    // Latest first, each twice.
    let deliveries: Vec<Vec<u8>> = bodies
        .iter()
        .rev()
        .flat_map(|b| [b.clone(), b.clone()])
        .collect();
    let workers = [
        Worker::start(&env, &["--batch-size", "8"]).await,
        Worker::start(&env, &["--batch-size", "8"]).await,
    ];
    // The window is longer than it takes to store the 80 deliveries, so
    // every reversal is inside it.
    let relay = Relay::start(&env, &["--reorder-window", "5s"]).await;
    env.publish_inbound_all(&deliveries).await;

    settled(&env, "SELECT count(*) FROM messages", 40).await;
    assert_eq!(
        env.count("SELECT count(*) FROM messages WHERE group_id IS NOT NULL")
            .await,
        40
    );
    let received = events(&sink, 40).await;
    assert_eq!(received.len(), 40, "each event once");
    let mut per_group: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
    for event in &received {
        assert_eq!(event.kind, "message.created");
        assert!(!event.late, "{event:?}");
        assert_eq!(
            event.shard,
            event_shard(&event.ordering_key, TEST_EVENT_SHARDS)
        );
        per_group
            .entry(event.ordering_key.as_str())
            .or_default()
            .push(event);
    }
    assert_eq!(per_group.len(), 4);
    for (g, group) in groups.iter().enumerate() {
        let key = format!("group:{group}");
        let ids: Vec<&str> = per_group[key.as_str()]
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        let in_meta_order: Vec<String> = (0..10)
            .map(|k| format!("msg:wamid.group{g}.k{k:02}"))
            .collect();
        assert_eq!(ids, in_meta_order, "group {g}");
        let sequences: Vec<i64> = per_group[key.as_str()].iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=10).collect::<Vec<i64>>());
    }
    relay.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}

/// The group fixtures, built from Meta's "Webhooks for Groups API" page (the
/// table in crates/wa-payload/tests/fixtures.rs says which example each
/// follows), with the downstream type each must give.
const GROUP_FIXTURES: [(&str, &str); 15] = [
    ("group_lifecycle_create.json", "group.lifecycle"),
    ("group_lifecycle_create_failed.json", "group.lifecycle"),
    ("group_lifecycle_delete.json", "group.lifecycle"),
    (
        "group_participants_invite_link_join.json",
        "group.participants_updated",
    ),
    (
        "group_participants_join_request_created.json",
        "group.participants_updated",
    ),
    (
        "group_participants_join_request_revoked.json",
        "group.participants_updated",
    ),
    (
        "group_participants_join_request_approved.json",
        "group.participants_updated",
    ),
    (
        "group_participants_remove.json",
        "group.participants_updated",
    ),
    (
        "group_participants_remove_partial_failure.json",
        "group.participants_updated",
    ),
    (
        "group_participants_leave.json",
        "group.participants_updated",
    ),
    ("group_settings_update.json", "group.settings_updated"),
    (
        "group_settings_update_partial_failure.json",
        "group.settings_updated",
    ),
    ("group_status_update_suspend.json", "group.status_updated"),
    (
        "group_status_update_suspend_cleared.json",
        "group.status_updated",
    ),
    ("group_unknown_future_field.json", "group.updated"),
];

/// Everything the group fields leave behind, to compare before and after
/// a replay.
async fn group_state(env: &TestEnv) -> Vec<String> {
    let mut state = Vec::new();
    for sql in [
        "SELECT event_key || ' ' || stored_at::text FROM group_events ORDER BY 1",
        "SELECT group_id || ' ' || contact_key || ' ' || is_member::text || ' ' || event_key
         FROM group_members ORDER BY 1",
        "SELECT contact_key || ' ' || coalesce(wa_id, '-') || ' ' || coalesce(user_id, '-')
                || ' ' || coalesce(merged_into, '-') || ' ' || updated_at::text
         FROM contacts ORDER BY 1",
        "SELECT event_id || ' ' || created_at::text FROM outbox ORDER BY 1",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&env.db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        state.extend(rows);
    }
    state
}

#[tokio::test]
async fn every_group_field_is_stored_once_and_emitted_once_and_replays_change_nothing() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let bodies: Vec<Vec<u8>> = GROUP_FIXTURES.iter().map(|(f, _)| fixture(f)).collect();
    let worker = Worker::start(&env, &["--batch-size", "4"]).await;
    let relay = Relay::start(&env, &["--reorder-window", "2s"]).await;
    // Each fixture twice, at once.
    let doubled: Vec<Vec<u8>> = bodies.iter().flat_map(|b| [b.clone(), b.clone()]).collect();
    env.publish_inbound_all(&doubled).await;

    settled(&env, "SELECT count(*) FROM group_events", 15).await;
    let received = events(&sink, 15).await;
    assert_eq!(received.len(), 15, "each event once");
    let mut types: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, kind) in GROUP_FIXTURES {
        *types.entry(kind).or_default() += 1;
    }
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &received {
        *got.entry(event.kind.as_str()).or_default() += 1;
        assert!(event.id.starts_with("group:"), "{}", event.id);
        assert_eq!(
            event.ordering_key,
            "group:Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD"
        );
        assert!(event.body["data"]["item"].is_object());
    }
    assert_eq!(got, types);

    // Membership as the fixtures tell it, in Meta time: everyone who joined
    // was removed or left later. Jordan appears by number only, by BSUID
    // only and by both: one contact, one membership row.
    let members: Vec<(String, bool)> =
        sqlx::query_as("SELECT contact_key, is_member FROM group_members ORDER BY 1")
            .fetch_all(&env.db)
            .await
            .expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().all(|(_, member)| !member), "{members:?}");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM contacts WHERE merged_into IS NULL
             AND (wa_id = '14155550199' OR user_id = 'US.20715316698304557122')"
        )
        .await,
        1
    );

    // A replay of everything (Meta redelivering days later): nothing changes.
    let before = group_state(&env).await;
    env.publish_inbound_all(&bodies).await;
    let stored = || async {
        let metrics = worker.metrics().await;
        wa_e2e::metric_sum(&metrics, "wa_events_total", &[("kind", "group")])
    };
    eventually("the replay handled", LIMIT, || async {
        match stored().await {
            n if n >= 45.0 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    settled(&env, "SELECT count(*) FROM group_events", 15).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(group_state(&env).await, before);
    assert_eq!(sink.received().len(), 15);
    relay.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn membership_follows_meta_time_whatever_the_arrival_order() {
    let env = TestEnv::new().await;
    let group = "Y2FwaV9ncm91cDptZW1iZXJzaGlw";
    let join = |wa_id: &str, user_id: &str, ts: i64| {
        serde_json::json!({"timestamp": ts.to_string(), "group_id": group,
            "type": "group_participants_add", "reason": "invite_link",
            "added_participants": [{"wa_id": wa_id, "user_id": user_id}]})
    };
    let leave = |user_id: &str, ts: i64| {
        serde_json::json!({"timestamp": ts.to_string(), "group_id": group,
            "type": "group_participants_remove", "initiated_by": "participant",
            "removed_participants": [{"user_id": user_id}]})
    };
    let field = "group_participants_update";
    // Ana joins, leaves, joins again; Ben joins; Cy joins and leaves. The
    // leave of Cy arrives before the join.
    let deliveries = [
        groups_envelope(field, &[leave("US.3", 1_750_000_300)]),
        groups_envelope(field, &[join("15550000003", "US.3", 1_750_000_100)]),
        groups_envelope(field, &[join("15550000001", "US.1", 1_750_000_000)]),
        groups_envelope(field, &[join("15550000001", "US.1", 1_750_000_500)]),
        groups_envelope(field, &[leave("US.1", 1_750_000_200)]),
        groups_envelope(field, &[join("15550000002", "US.2", 1_750_000_050)]),
    ];
    let worker = Worker::start(&env, &[]).await;
    for body in &deliveries {
        env.publish_inbound(body).await;
    }
    settled(&env, "SELECT count(*) FROM group_events", 6).await;
    let members: Vec<(Option<String>, bool)> =
        sqlx::query_as("SELECT user_id, is_member FROM group_members ORDER BY user_id")
            .fetch_all(&env.db)
            .await
            .expect("members");
    assert_eq!(
        members,
        [
            (Some("US.1".to_owned()), true),
            (Some("US.2".to_owned()), true),
            (Some("US.3".to_owned()), false),
        ]
    );

    // Receipts from two of the members: read by 2 of 2.
    let wamid = "wamid.to.the.group";
    env.publish_inbound(&envelope(
        &[],
        &[
            group_receipt(
                wamid,
                "read",
                group,
                Participant::Bsuid {
                    user_id: "US.1",
                    phone: None,
                },
                1_750_000_600,
            ),
            group_receipt(
                wamid,
                "delivered",
                group,
                Participant::RecipientParticipantId("15550000002"),
                1_750_000_601,
            ),
        ],
    ))
    .await;
    settled(&env, "SELECT count(*) FROM message_statuses", 2).await;
    let (delivered, read, members): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT delivered, read, members FROM group_message_receipts WHERE wamid = $1",
    )
    .bind(wamid)
    .fetch_one(&env.db)
    .await
    .expect("derived state");
    assert_eq!((delivered, read, members), (2, 1, Some(2)));
    worker.stop().await;
}

#[tokio::test]
async fn a_membership_follows_the_person_when_their_two_records_merge() {
    let env = TestEnv::new().await;
    let group = "Y2FwaV9ncm91cDptZXJnZQ";
    let (wa_id, user_id) = ("15550000042", "US.42");
    let worker = Worker::start(&env, &[]).await;
    // Seen first by number (a 1:1 message), then joining the group by BSUID
    // only: two records, the membership on the BSUID's.
    let steps = [
        envelope(
            &[wa_e2e::payloads::text_message(
                "wamid.by.number",
                wa_id,
                1_750_000_050,
            )],
            &[],
        ),
        groups_envelope(
            "group_participants_update",
            &[
                serde_json::json!({"timestamp": "1750000100", "group_id": group,
                "type": "group_participants_add", "reason": "invite_link",
                "added_participants": [{"user_id": user_id}]}),
            ],
        ),
        // Then Meta shows both ids together: one person.
        envelope(
            &[group_text_message(
                "wamid.by.both",
                group,
                Some(wa_id),
                Some(user_id),
                1_750_000_200,
            )],
            &[],
        ),
    ];
    for (i, body) in steps.iter().enumerate() {
        env.publish_inbound(body).await;
        let stored = i as i64 + 1;
        eventually("the step stored", LIMIT, || async {
            let n = env.count("SELECT count(*) FROM messages").await
                + env.count("SELECT count(*) FROM group_events").await;
            if n == stored {
                Ok(())
            } else {
                Err(n.to_string())
            }
        })
        .await;
    }
    // The number's record was seen first and survives; the membership moved.
    let members: Vec<(String, bool)> =
        sqlx::query_as("SELECT contact_key, is_member FROM group_members")
            .fetch_all(&env.db)
            .await
            .expect("members");
    assert_eq!(members, [(wa_id.to_owned(), true)]);
    let merged: Option<String> =
        sqlx::query_scalar("SELECT merged_into FROM contacts WHERE contact_key = $1")
            .bind(user_id)
            .fetch_one(&env.db)
            .await
            .expect("tombstone");
    assert_eq!(merged.as_deref(), Some(wa_id));
    worker.stop().await;
}

#[tokio::test]
async fn unknown_status_values_are_stored_and_never_move_a_participant_back() {
    let env = TestEnv::new().await;
    let sink = Sink::start(&env).await;
    let worker = Worker::start(&env, &[]).await;
    let relay = Relay::start(&env, &["--reorder-window", "200ms"]).await;
    let group = "Y2FwaV9ncm91cDp1bmtub3du";
    let wamid = "wamid.to.the.group.unknown";
    let participant = Participant::RecipientParticipantId("15550000077");
    let mut unknown = group_receipt(wamid, "reacted", group, participant, 1_750_000_020);
    // An identity field Meta may add some day: kept in the raw item.
    unknown["recipient_participant_lid"] = serde_json::json!("LID.77");
    for receipt in [
        group_receipt(wamid, "read", group, participant, 1_750_000_010),
        unknown,
    ] {
        env.publish_inbound(&envelope(&[], &[receipt])).await;
    }
    settled(&env, "SELECT count(*) FROM message_statuses", 2).await;
    let state: String = sqlx::query_scalar(
        "SELECT status FROM message_participant_status WHERE wamid = $1 AND participant = $2",
    )
    .bind(wamid)
    .bind(participant.key())
    .fetch_one(&env.db)
    .await
    .expect("participant state");
    assert_eq!(state, "read");
    let lid: String = sqlx::query_scalar(
        "SELECT raw->>'recipient_participant_lid' FROM message_statuses WHERE status = 'reacted'",
    )
    .fetch_one(&env.db)
    .await
    .expect("the unknown receipt");
    assert_eq!(lid, "LID.77");
    let received = events(&sink, 2).await;
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|e| e.body["data"]["participant_status"] == "read"),
        "{received:#?}"
    );
    relay.stop().await;
    worker.stop().await;
}
