//! HTTP delivery (`wa-ingest deliver`) against real local receivers: what
//! each endpoint subscribed to, once per webhook-id, per conversation in
//! order, through failures, throttling, a gone endpoint, a slow one, a
//! deliverer killed again and again, and the SSRF guard.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use wa_e2e::deliver::{
    Deliverer, Hook, HookReceiver, Reply, add_endpoint, assert_in_order_per_conversation, events,
    release, verify_with_reference,
};
use wa_e2e::payloads::{PHONE_NUMBER_ID, envelope_for, status, text_message};
use wa_e2e::{Relay, TestEnv, Worker, eventually};

const OTHER_NUMBER: &str = "109999999999999";

/// The released events, as the outbox holds them.
async fn released(env: &TestEnv) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT event_id, event_type, COALESCE(payload ->> 'phone_number_id', '')
         FROM outbox WHERE published_at IS NOT NULL",
    )
    .fetch_all(&env.db)
    .await
    .expect("released events")
}

fn accepted_once(hooks: &[Hook], what: &str) -> HashSet<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for hook in hooks.iter().filter(|h| h.accepted()) {
        *counts.entry(hook.webhook_id.as_str()).or_default() += 1;
    }
    for (id, count) in &counts {
        assert_eq!(*count, 1, "{what}: {id} accepted {count} times");
    }
    counts.keys().map(|id| (*id).to_owned()).collect()
}

/// Per conversation, accepted events go in Meta-timestamp order.
fn assert_meta_time_order(hooks: &[Hook], what: &str) {
    let mut last: HashMap<&str, String> = HashMap::new();
    for hook in hooks.iter().filter(|h| h.accepted()) {
        assert_eq!(
            hook.event["late"], false,
            "{what}: {} was released late",
            hook.webhook_id
        );
        let timestamp = hook.event["timestamp"].as_str().unwrap_or("").to_owned();
        let previous = last.entry(hook.conversation()).or_default();
        assert!(
            timestamp >= *previous,
            "{what}: {} at {timestamp} after {previous}",
            hook.webhook_id
        );
        *previous = timestamp;
    }
}

#[tokio::test]
async fn three_endpoints_get_what_they_subscribed_to_once_in_order_through_a_30s_outage() {
    let env = TestEnv::new().await;
    let everything = HookReceiver::ok().await;
    let one_number = HookReceiver::ok().await;
    let recovering = HookReceiver::start(|since, _| {
        if since < Duration::from_secs(30) {
            Reply::status(500)
        } else {
            Reply::OK
        }
    })
    .await;
    add_endpoint(&env, &everything.url(), &[], &[]).await;
    add_endpoint(
        &env,
        &one_number.url(),
        &["message.created"],
        &[OTHER_NUMBER],
    )
    .await;
    add_endpoint(&env, &recovering.url(), &[], &[]).await;

    // Eight contacts on two business numbers: messages from them and the
    // statuses of messages to them, shuffled and each delivered twice.
    let phase = |tag: &str, base: i64| {
        let mut bodies = Vec::new();
        for c in 0..8 {
            let number = if c % 2 == 0 {
                PHONE_NUMBER_ID
            } else {
                OTHER_NUMBER
            };
            let contact = format!("4917{c:08}");
            for k in 0..4 {
                let ts = base + k * 10;
                let message = text_message(&format!("wamid.{tag}.c{c}.in{k}"), &contact, ts);
                let sent = status(
                    &format!("wamid.{tag}.c{c}.out{k}"),
                    "sent",
                    &contact,
                    ts + 1,
                );
                let delivered = status(
                    &format!("wamid.{tag}.c{c}.out{k}"),
                    "delivered",
                    &contact,
                    ts + 2,
                );
                bodies.push(envelope_for(number, &[message], &[]));
                bodies.push(envelope_for(number, &[], &[sent]));
                bodies.push(envelope_for(number, &[], &[delivered]));
            }
        }
        let mut twice: Vec<Vec<u8>> = bodies.iter().flat_map(|b| [b.clone(), b.clone()]).collect();
        twice.shuffle(&mut rand::rngs::StdRng::seed_from_u64(base as u64));
        twice
    };
    let worker = Worker::start(&env, &[]).await;
    let relay = Relay::start(&env, &["--reorder-window", "4s"]).await;
    let deliverer = Deliverer::start(&env, &[]).await;

    env.publish_inbound_all(&phase("before", 1_700_000_000))
        .await;
    // A status that does not advance its message's latest one (a `sent`
    // stored after its `delivered`) gives no event: count what was released.
    let settled = |messages: i64, statuses: i64| {
        let env = &env;
        let everything = &everything;
        async move {
            eventually("stored, released and delivered to the first endpoint", Duration::from_secs(60), || async {
                let stored = env.stored_rows().await;
                let unpublished = env.count("SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
                let released = released(env).await.len();
                let delivered = everything.accepted_ids();
                if stored == (messages, statuses) && unpublished == 0 && delivered == released {
                    Ok(released)
                } else {
                    Err(format!("stored {stored:?}, {unpublished} unreleased, {delivered} of {released} delivered"))
                }
            })
            .await
        }
    };
    let first_half = settled(32, 64).await;
    // The second half goes after the recovery.
    let wait = Duration::from_secs(31)
        .saturating_sub(recovering.hooks().first().map_or(Duration::ZERO, |h| h.at));
    tokio::time::sleep(wait).await;
    env.publish_inbound_all(&phase("after", 1_700_100_000))
        .await;
    let total = settled(64, 128).await;
    let all = released(&env).await;
    let expected_one_count = all
        .iter()
        .filter(|(_, kind, number)| kind == "message.created" && number == OTHER_NUMBER)
        .count();
    eventually(
        "the other endpoints have all they subscribed to",
        Duration::from_secs(60),
        || async {
            match (one_number.accepted_ids(), recovering.accepted_ids()) {
                (one, recovered) if one == expected_one_count && recovered == total => Ok(()),
                other => Err(format!("{other:?} of ({expected_one_count}, {total})")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = |keep: &dyn Fn(&(String, String, String)) -> bool| -> HashSet<String> {
        all.iter()
            .filter(|e| keep(e))
            .map(|e| e.0.clone())
            .collect()
    };
    let expected_all = ids(&|_| true);
    let expected_one =
        ids(&|(_, kind, number)| kind == "message.created" && number == OTHER_NUMBER);
    assert_eq!(expected_one.len(), 32);
    for (receiver, expected, what) in [
        (&everything, &expected_all, "all events"),
        (&one_number, &expected_one, "one number, no statuses"),
        (&recovering, &expected_all, "recovering"),
    ] {
        let hooks = receiver.hooks();
        assert_eq!(&accepted_once(&hooks, what), expected, "{what}");
        assert_eq!(
            assert_in_order_per_conversation(&hooks, what),
            0,
            "{what}: no repeats without a crash"
        );
        assert_meta_time_order(&hooks, what);
    }
    let failures = recovering
        .hooks()
        .iter()
        .filter(|h| h.status == 500)
        .count();
    assert!(failures > 0);
    let recorded_500s = env
        .count("SELECT count(*) FROM delivery_attempts WHERE status_code = 500 AND next_attempt_at IS NOT NULL")
        .await;
    assert_eq!(
        recorded_500s as usize, failures,
        "every failed attempt is recorded with its next attempt"
    );
    println!(
        "{total} events ({first_half} before the recovery); recovering endpoint: {failures} answers of 500 in its first 30 s, then all {total}"
    );

    deliverer.stop().await;
    relay.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn signatures_verify_with_the_reference_library_through_a_secret_rotation() {
    let env = TestEnv::new().await;
    let receiver = HookReceiver::ok().await;
    let endpoint = add_endpoint(&env, &receiver.url(), &[], &[]).await;
    let deliverer = Deliverer::start(&env, &[]).await;
    let delivered = |n: usize| {
        let receiver = &receiver;
        async move {
            eventually("deliveries", Duration::from_secs(30), || async {
                match receiver.accepted_ids() {
                    got if got == n => Ok(()),
                    got => Err(format!("{got} of {n}")),
                }
            })
            .await
        }
    };

    release(&env.db, &events("before", 4, 1, 5)).await;
    delivered(20).await;
    let new_secret = wa_deliver::sign::SigningSecret::generate().to_whsec();
    wa_deliver::store::rotate_secret(&env.db, endpoint.id, &new_secret)
        .await
        .expect("rotate");
    release(&env.db, &events("during", 4, 1, 5)).await;
    delivered(40).await;
    wa_deliver::store::finish_rotation(&env.db, endpoint.id)
        .await
        .expect("finish");
    release(&env.db, &events("after", 4, 1, 5)).await;
    delivered(60).await;
    deliverer.stop().await;

    let hooks = receiver.hooks();
    let phase = |tag: &str| -> Vec<&Hook> {
        hooks
            .iter()
            .filter(|h| h.webhook_id.starts_with(&format!("msg:{tag}.")))
            .collect()
    };
    let (before, during, after) = (phase("before"), phase("during"), phase("after"));
    assert_eq!((before.len(), during.len(), after.len()), (20, 20, 20));
    assert!(
        during.iter().all(|h| h.signature.split(' ').count() == 2),
        "two signatures while rotating"
    );
    let mut checks: Vec<(&str, &Hook)> = Vec::new();
    for hook in &before {
        checks.push((&endpoint.secret, hook));
    }
    for hook in &during {
        checks.push((&endpoint.secret, hook));
        checks.push((&new_secret, hook));
    }
    for hook in &after {
        checks.push((&new_secret, hook));
    }
    let passing = checks.len();
    // Negative controls: the old secret after the rotation, a wrong one, a changed body.
    let mut tampered = (*before[0]).clone();
    tampered.body = tampered
        .body
        .iter()
        .map(|b| if *b == b'1' { b'2' } else { *b })
        .collect();
    checks.push((&endpoint.secret, after[0]));
    checks.push((&new_secret, before[0]));
    checks.push((&endpoint.secret, &tampered));
    let verdicts = verify_with_reference(&checks);
    assert!(
        verdicts[..passing].iter().all(|v| *v),
        "the reference library accepts every signature: {verdicts:?}"
    );
    assert_eq!(
        &verdicts[passing..],
        &[false, false, false],
        "and refuses the wrong ones"
    );
    println!("{passing} signatures verified by the reference Python standardwebhooks, 3 refused");
}

#[tokio::test]
async fn retry_after_pauses_one_endpoint_gone_disables_and_a_slow_one_holds_up_no_other() {
    let env = TestEnv::new().await;
    let throttled = HookReceiver::start(|_, n| {
        if n == 0 {
            Reply {
                retry_after: Some(3),
                ..Reply::status(429)
            }
        } else {
            Reply::OK
        }
    })
    .await;
    let fast = HookReceiver::ok().await;
    let slow = HookReceiver::start(|_, _| Reply {
        delay: Duration::from_secs(5),
        ..Reply::OK
    })
    .await;
    let gone = HookReceiver::start(|_, _| Reply::status(410)).await;
    let throttled_endpoint = add_endpoint(&env, &throttled.url(), &[], &[]).await;
    // One conversation at a time, so that no request was already on its
    // way when the 429 came.
    let one_at_a_time = wa_deliver::store::EndpointChanges {
        max_in_flight: Some(1),
        ..Default::default()
    };
    wa_deliver::store::update(&env.db, throttled_endpoint.id, &one_at_a_time)
        .await
        .expect("update");
    for receiver in [&fast, &slow] {
        add_endpoint(&env, &receiver.url(), &[], &[]).await;
    }
    let gone_endpoint = add_endpoint(&env, &gone.url(), &[], &[]).await;
    let deliverer = Deliverer::start(&env, &["--request-timeout", "10s", "--lease", "30s"]).await;
    release(&env.db, &events("t", 3, 1, 3)).await;

    HookReceiver::both_accepted(
        "fast and throttled endpoints done",
        &fast,
        &throttled,
        (9, 9),
    )
    .await;
    let throttled_hooks = throttled.hooks();
    let fast_hooks = fast.hooks();
    assert_eq!(throttled_hooks[0].status, 429);
    let pause = throttled_hooks[1].arrived - throttled_hooks[0].arrived;
    assert!(
        pause >= Duration::from_millis(2900),
        "the endpoint waited {pause:?}, less than Retry-After"
    );
    let fast_done = fast_hooks
        .iter()
        .map(|h| h.arrived)
        .max()
        .expect("fast hooks");
    assert!(
        fast_done < throttled_hooks[1].arrived,
        "the fast endpoint did not wait for the throttled one"
    );
    let slow_hooks = slow.hooks();
    let slow_first_answer = slow_hooks.iter().map(|h| h.answered).min();
    assert!(
        slow_first_answer.is_none_or(|first| fast_done < first),
        "the fast endpoint finished before the slow one answered once"
    );
    println!(
        "429 with Retry-After: 3 -> next request to that endpoint after {:.2} s; fast endpoint done {:.2} s after its first request",
        pause.as_secs_f64(),
        (fast_done - fast_hooks[0].arrived).as_secs_f64()
    );

    let gone_state = wa_deliver::store::get(&env.db, gone_endpoint.id)
        .await
        .expect("read")
        .expect("endpoint");
    assert!(!gone_state.enabled);
    assert!(
        gone_state
            .disabled_reason
            .unwrap_or_default()
            .contains("410")
    );
    // Its conversations' requests already on their way when the first 410
    // came (at most one per conversation) are the last it gets.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_disable = gone.hooks().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        gone.hooks().len(),
        after_disable,
        "a disabled endpoint gets nothing more"
    );
    assert!(
        after_disable <= 3 && gone.hooks().iter().all(|h| h.status == 410),
        "{after_disable}"
    );
    let waiting = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(gone_endpoint.id)
    .fetch_one(&env.db)
    .await
    .expect("count");
    assert_eq!(waiting, 9, "its events stay pending");
    let status = wa_deliver::store::status(&env.db, gone_endpoint.id)
        .await
        .expect("read")
        .expect("endpoint");
    assert_eq!(status.backlog, 9);
    deliverer.stop().await;
}

/// Deliverers scale out without multiplying what one endpoint gets: its
/// `max_in_flight` and its `rate_limit` hold across all of them together.
#[tokio::test]
async fn three_deliverers_together_keep_an_endpoints_max_in_flight_and_rate_limit() {
    const MAX_IN_FLIGHT: i32 = 3;
    const RATE: i32 = 20;
    let env = TestEnv::new().await;
    // Slow answers, so that every place an endpoint has is taken.
    let slow = HookReceiver::start(|_, _| Reply {
        delay: Duration::from_millis(200),
        ..Reply::OK
    })
    .await;
    let paced = HookReceiver::ok().await;
    let narrow = add_endpoint(&env, &slow.url(), &[], &[]).await;
    let limited = add_endpoint(&env, &paced.url(), &[], &[]).await;
    for (endpoint, changes) in [
        (
            &narrow,
            wa_deliver::store::EndpointChanges {
                max_in_flight: Some(MAX_IN_FLIGHT),
                ..Default::default()
            },
        ),
        (
            &limited,
            wa_deliver::store::EndpointChanges {
                rate_limit: Some(Some(RATE)),
                ..Default::default()
            },
        ),
    ] {
        wa_deliver::store::update(&env.db, endpoint.id, &changes)
            .await
            .expect("update");
    }
    let deliverers = [
        Deliverer::start(&env, &[]).await,
        Deliverer::start(&env, &[]).await,
        Deliverer::start(&env, &[]).await,
    ];
    // 24 conversations of 4 events, to both endpoints.
    let all = events("limits", 24, 1, 4);
    release(&env.db, &all).await;
    HookReceiver::both_accepted("96 events at each endpoint", &slow, &paced, (96, 96)).await;
    for deliverer in deliverers {
        deliverer.stop().await;
    }

    let peak = most_at_once(&slow.hooks());
    let mut arrivals: Vec<Instant> = paced.hooks().iter().map(|h| h.arrived).collect();
    arrivals.sort();
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    // 96 requests in slots 1/20 s apart span 4.75 s; a request sent late
    // (a busy machine) can only shorten that by its own delay.
    let least = Duration::from_secs_f64(95.0 / f64::from(RATE)) - Duration::from_millis(500);
    println!(
        "3 deliverers: at most {peak} requests at once to the endpoint allowing {MAX_IN_FLIGHT}; 96 requests to the one allowing {RATE}/s spanned {:.2} s",
        span.as_secs_f64()
    );
    assert_eq!(
        peak, MAX_IN_FLIGHT as usize,
        "requests in flight at once across the deliverers"
    );
    assert!(
        span >= least,
        "96 requests at {RATE}/s took {span:?}, under {least:?}: the rate held per deliverer"
    );
}

/// The most requests a receiver was answering at once.
fn most_at_once(hooks: &[Hook]) -> usize {
    let mut changes: Vec<(Instant, i32)> = hooks
        .iter()
        .flat_map(|h| [(h.arrived, 1), (h.answered, -1)])
        .collect();
    // An answer at the same instant as an arrival ends first.
    changes.sort();
    let mut now = 0;
    let mut most = 0;
    for (_, change) in changes {
        now += change;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// A disabled endpoint: the deliverer leaves what is pending for it pending.
async fn disabled_endpoint(env: &TestEnv) -> wa_e2e::deliver::TestEndpoint {
    let endpoint = add_endpoint(env, "http://127.0.0.1:9/hook", &[], &[]).await;
    wa_deliver::store::disable(&env.db, endpoint.id, "kept pending")
        .await
        .expect("disable");
    endpoint
}

/// Waits until no delivery delivered more than the default retention (7
/// days) ago is left.
async fn wait_until_pruned(env: &TestEnv) {
    env.wait_for_count(
        "every delivery past its retention deleted",
        "SELECT count(*) FROM deliveries WHERE delivered_at < now() - interval '7 days'",
        0,
        Duration::from_secs(30),
    )
    .await;
}

/// Deliveries delivered longer than WA_DELIVER_RETENTION ago are deleted
/// with their attempts as soon as a deliverer starts (and every minute),
/// batch after batch until none is left; they were kept for good. Recent
/// ones stay, and so do pending ones however old.
#[tokio::test]
async fn delivered_events_past_their_retention_are_deleted_with_their_attempts() {
    const OLD: i64 = 25_000;
    let env = TestEnv::new().await;
    let endpoint = disabled_endpoint(&env).await;
    sqlx::query(
        "WITH seeded AS (
             INSERT INTO deliveries (endpoint_id, event_id, event_type, conversation, sequence,
                                     payload, state, created_at, delivered_at)
             SELECT $1, era || n, 'message.created', 'c' || n % 100, n, '{}',
                    CASE WHEN era = 'pending' THEN 'pending' ELSE 'delivered' END,
                    now() - interval '30 days',
                    CASE era WHEN 'old' THEN now() - interval '8 days'
                             WHEN 'recent' THEN now() - interval '6 days' END
             FROM (SELECT 'old' AS era, n FROM generate_series(1, $2) AS n
                   UNION ALL SELECT 'recent', n FROM generate_series(1, 5) AS n
                   UNION ALL SELECT 'pending', n FROM generate_series(1, 5) AS n) AS rows
             RETURNING id, event_id
         )
         INSERT INTO delivery_attempts (delivery_id, endpoint_id, event_id, status_code, latency_ms)
         SELECT id, $1, event_id, 200, 1.0 FROM seeded",
    )
    .bind(endpoint.id)
    .bind(OLD)
    .execute(&env.db)
    .await
    .expect("seed deliveries");
    let deliverer = Deliverer::start(&env, &[]).await;
    let rows = |table: &'static str, era: &'static str| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE event_id LIKE $1"
            )))
            .bind(format!("{era}%"))
            .fetch_one(&db)
            .await
            .expect("count")
        }
    };
    wait_until_pruned(&env).await;
    assert_eq!(
        rows("delivery_attempts", "old").await,
        0,
        "their attempts too"
    );
    for era in ["recent", "pending"] {
        assert_eq!(rows("deliveries", era).await, 5, "{era} deliveries stay");
        assert_eq!(
            rows("delivery_attempts", era).await,
            5,
            "{era} attempts stay"
        );
    }
    deliverer.stop().await;
}

/// A conversation whose delivered deliveries are pruned loses its lane
/// (one row per endpoint and contact, which was kept for good) when
/// nothing waits in it and no deliverer holds it; a lane with a pending
/// delivery, a held lane and one whose deliveries are recent stay.
#[tokio::test]
async fn a_conversation_whose_deliveries_are_pruned_loses_its_idle_lane() {
    let env = TestEnv::new().await;
    let endpoint = disabled_endpoint(&env).await;
    sqlx::query(
        "WITH deliveries AS (
             INSERT INTO deliveries (endpoint_id, event_id, event_type, conversation, sequence,
                                     payload, state, delivered_at)
             SELECT $1, conversation || n, 'message.created', conversation, n, '{}',
                    CASE WHEN pending THEN 'pending' ELSE 'delivered' END,
                    CASE WHEN pending THEN NULL
                         WHEN conversation = 'recent' THEN now() - interval '6 days'
                         ELSE now() - interval '8 days' END
             FROM (VALUES ('idle', 1, false), ('idle', 2, false), ('busy', 1, false),
                          ('busy', 2, true), ('held', 1, false), ('recent', 1, false))
                  AS seeded (conversation, n, pending)
             RETURNING 1
         )
         INSERT INTO delivery_lanes (endpoint_id, conversation, pending, leased_until, lease_owner)
         VALUES ($1, 'idle', 0, NULL, NULL), ($1, 'busy', 1, NULL, NULL),
                ($1, 'held', 0, now() + interval '1 hour', 'another deliverer'),
                ($1, 'recent', 0, NULL, NULL)",
    )
    .bind(endpoint.id)
    .execute(&env.db)
    .await
    .expect("seed deliveries and lanes");
    let deliverer = Deliverer::start(&env, &[]).await;
    wait_until_pruned(&env).await;
    deliverer.stop().await;
    let lanes: Vec<String> = sqlx::query_scalar(
        "SELECT conversation FROM delivery_lanes WHERE endpoint_id = $1 ORDER BY conversation",
    )
    .bind(endpoint.id)
    .fetch_all(&env.db)
    .await
    .expect("lanes");
    assert_eq!(lanes, ["busy", "held", "recent"], "lanes left");
}

/// Lanes pruned while their conversations get new events: 4 pruners that
/// delete every delivery delivered 30 ms ago race the fan-out of 30 rounds
/// of events to the same 20 conversations, behind a barrier (70 to 130
/// lanes deleted in a run). A lane deleted under a release is made again by
/// it; a release that wins keeps the lane. Every event arrives once and in
/// order, no lane miscounts what waits in it, and no pruner fails (pruners
/// that waited for each other's lanes instead of passing them over
/// deadlocked in 3 runs of 4).
#[tokio::test]
async fn lanes_pruned_while_their_conversations_get_new_events_lose_none_of_them() {
    const CONVERSATIONS: usize = 20;
    const ROUNDS: i64 = 30;
    const PRUNERS: usize = 4;
    let env = TestEnv::new().await;
    let hooks = HookReceiver::ok().await;
    add_endpoint(&env, &hooks.url(), &[], &[]).await;
    let deliverer = Deliverer::start(&env, &[]).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(PRUNERS + 1));
    let stop_pruning = tokio_util::sync::CancellationToken::new();
    let pruners: Vec<_> = (0..PRUNERS)
        .map(|_| {
            let (db, start, stop) = (env.db.clone(), start.clone(), stop_pruning.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut pruned = 0;
                while !stop.is_cancelled() {
                    pruned += wa_deliver::store::prune_delivered(&db, Duration::from_millis(30))
                        .await
                        .expect("prune");
                }
                pruned
            })
        })
        .collect();
    start.wait().await;
    for round in 1..=ROUNDS {
        release(&env.db, &events("pruned", CONVERSATIONS, round, 1)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        if round == ROUNDS / 2 {
            // However the races went so far, the rounds after this one
            // certainly come to conversations whose lanes were pruned.
            eventually("an idle lane pruned", Duration::from_secs(30), || async {
                match env.count("SELECT count(*) FROM delivery_lanes").await {
                    left if left < CONVERSATIONS as i64 => Ok(()),
                    left => Err(format!("{left} lanes")),
                }
            })
            .await;
        }
    }
    let want = CONVERSATIONS * ROUNDS as usize;
    eventually("every event delivered", Duration::from_secs(60), || async {
        match hooks.accepted_ids() {
            got if got == want => Ok(()),
            got => Err(format!("{got} of {want}")),
        }
    })
    .await;
    stop_pruning.cancel();
    let mut pruned = 0;
    for pruner in pruners {
        pruned += pruner.await.expect("pruner");
    }
    deliverer.stop().await;
    let delivered = hooks.hooks();
    accepted_once(&delivered, "pruned lanes");
    assert_in_order_per_conversation(&delivered, "pruned lanes");
    let miscounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_lanes l
         WHERE pending <> (SELECT count(*) FROM deliveries d WHERE d.state = 'pending'
                           AND d.endpoint_id = l.endpoint_id AND d.conversation = l.conversation)",
    )
    .fetch_one(&env.db)
    .await
    .expect("lane counts");
    println!("{pruned} deliveries pruned while {want} events were released and delivered");
    assert!(pruned > 0, "the pruners deleted deliveries during the run");
    assert_eq!(miscounted, 0, "lanes whose pending count is wrong");
}

/// The real binary, as a deployment runs it.
fn wa_ingest(env: &TestEnv) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-ingest"));
    command
        .env("DATABASE_URL", &env.database_url)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn add_with_cli(env: &TestEnv, url: &str, allow: Option<&str>) -> std::process::Output {
    let mut command = wa_ingest(env);
    command.args(["endpoints", "add", "--url", url]);
    if let Some(allow) = allow {
        command.env("WA_DELIVER_ALLOW", allow);
    }
    command.output().await.expect("run wa-ingest endpoints add")
}

#[tokio::test]
async fn a_deliverer_sigkilled_every_2s_during_2000_events_to_2_endpoints_loses_nothing() {
    let env = TestEnv::new().await;
    let first = HookReceiver::ok().await;
    let second = HookReceiver::ok().await;
    for receiver in [&first, &second] {
        let added = add_with_cli(&env, &receiver.url(), Some("127.0.0.0/8")).await;
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
        let stdout = String::from_utf8_lossy(&added.stdout);
        let mut lines = stdout.lines();
        assert!(
            lines.next().is_some_and(|id| id.parse::<i64>().is_ok()),
            "{stdout}"
        );
        assert!(
            lines
                .next()
                .is_some_and(|secret| secret.starts_with("whsec_")),
            "{stdout}"
        );
    }
    let spawn = || {
        wa_ingest(&env)
            .arg("deliver")
            .env("WA_DELIVER_ALLOW", "127.0.0.0/8")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("WA_DELIVER_POLL", "50ms")
            .env("WA_DELIVER_RETRY_SCHEDULE", "1s")
            .env("WA_DELIVER_TIMEOUT", "1s")
            .env("WA_DELIVER_CONNECT_TIMEOUT", "1s")
            .env("WA_DELIVER_LEASE", "4s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wa-ingest deliver")
    };
    // 40 conversations of 50 events, released in 20 batches while the
    // deliverer dies every 2 s.
    let all = events("k", 40, 1, 50);
    let releasing = {
        let batches: Vec<Vec<wa_e2e::deliver::Event>> =
            all.chunks(100).map(<[_]>::to_vec).collect();
        let db = env.db.clone();
        tokio::spawn(async move {
            for batch in batches {
                release(&db, &batch).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = Instant::now();
    let mut child = spawn();
    let mut kills = 0;
    while first.accepted_ids() < 2000 || second.accepted_ids() < 2000 {
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "not delivered in 400 s: {} and {}",
            first.accepted_ids(),
            second.accepted_ids()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        if first.accepted_ids() < 2000 || second.accepted_ids() < 2000 {
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
            kills += 1;
            child = spawn();
        }
    }
    releasing.await.expect("released");
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;

    let expected: HashSet<String> = all.iter().map(|e| e.id.clone()).collect();
    let mut repeats = Vec::new();
    for (receiver, what) in [(&first, "first endpoint"), (&second, "second endpoint")] {
        let hooks = receiver.hooks();
        let got: HashSet<String> = hooks
            .iter()
            .filter(|h| h.accepted())
            .map(|h| h.webhook_id.clone())
            .collect();
        assert_eq!(got, expected, "{what}: every event, none lost");
        repeats.push(assert_in_order_per_conversation(&hooks, what));
    }
    assert!(kills >= 3, "the deliverer was killed {kills} times");
    println!(
        "2000 events to 2 endpoints in {:.1} s, deliverer SIGKILLed {kills} times; repeats (same webhook-id): {repeats:?}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn ssrf_loopback_and_metadata_addresses_are_refused_unless_allow_listed() {
    let env = TestEnv::new().await;
    let by_ip = HookReceiver::ok().await;
    let by_name = HookReceiver::ok().await;
    let ip_endpoint = add_endpoint(&env, &by_ip.url(), &[], &[]).await;
    let name_url = format!("http://localhost:{}/hook", by_name.addr.port());
    let name_endpoint = add_endpoint(&env, &name_url, &[], &[]).await;
    let metadata = add_endpoint(&env, "http://169.254.169.254/latest/meta-data/", &[], &[]).await;
    release(&env.db, &events("s", 1, 1, 2)).await;

    let refused = |endpoint: i64| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT error FROM delivery_attempts WHERE endpoint_id = $1 AND error LIKE '%refused%' LIMIT 1",
            )
            .bind(endpoint)
            .fetch_optional(&db)
            .await
            .expect("attempts")
        }
    };
    let guarded = Deliverer::start_guarded(&env, &[]).await;
    for endpoint in [ip_endpoint.id, name_endpoint.id, metadata.id] {
        let error = eventually("a refused attempt", Duration::from_secs(20), || async {
            refused(endpoint).await.ok_or_else(|| "none yet".to_owned())
        })
        .await;
        assert!(error.contains("WA_DELIVER_ALLOW"), "{error}");
        println!("endpoint {endpoint}: {error}");
    }
    assert!(
        by_ip.hooks().is_empty() && by_name.hooks().is_empty(),
        "nothing reached loopback"
    );
    guarded.stop().await;

    // Allow-listed, loopback is reached by address and by name; metadata
    // stays refused.
    let allowed = Deliverer::start(&env, &[]).await;
    HookReceiver::both_accepted("loopback endpoints delivered", &by_ip, &by_name, (2, 2)).await;
    allowed.stop().await;
    let metadata_delivered = env
        .count("SELECT count(*) FROM deliveries d JOIN delivery_endpoints e ON e.id = d.endpoint_id WHERE e.url LIKE '%169.254%' AND d.state = 'delivered'")
        .await;
    assert_eq!(metadata_delivered, 0);

    // Saving an endpoint checks too.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/x",
        "http://[::ffff:127.0.0.1]:9/x",
    ] {
        let output = add_with_cli(&env, url, None).await;
        assert!(!output.status.success(), "{url} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("WA_DELIVER_ALLOW"), "{url}: {stderr}");
    }
    let output = add_with_cli(&env, "http://127.0.0.1:9/hook", Some("127.0.0.0/8")).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn cli(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let output = wa_ingest(env)
        .arg("endpoints")
        .args(args)
        .output()
        .await
        .expect("run wa-ingest endpoints");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_endpoints_commands_manage_inspect_and_replay() {
    let env = TestEnv::new().await;
    let receiver = HookReceiver::ok().await;
    let added = add_with_cli(&env, &receiver.url(), Some("127.0.0.0/8")).await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let id = String::from_utf8_lossy(&added.stdout)
        .lines()
        .next()
        .expect("id")
        .to_owned();
    let (ok, _, stderr) = cli(
        &env,
        &[
            "update",
            &id,
            "--events",
            "message.created,group.*",
            "--max-in-flight",
            "2",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&env, &["update", &id, "--events", "message.deleted"]).await;
    assert!(!ok && stderr.contains("unknown event type"), "{stderr}");

    let deliverer = Deliverer::start(&env, &[]).await;
    release(&env.db, &events("cli", 2, 1, 2)).await;
    eventually("delivered", Duration::from_secs(30), || async {
        match receiver.accepted_ids() {
            4 => Ok(()),
            n => Err(format!("{n} of 4")),
        }
    })
    .await;

    // The deliverer records an attempt after its answer arrives, so the
    // receiver may have all four before the last attempt is written.
    eventually(
        "four attempts recorded",
        Duration::from_secs(30),
        || async {
            let (ok, stdout, stderr) = cli(&env, &["attempts", &id, "--json"]).await;
            assert!(ok, "{stderr}");
            let attempts: serde_json::Value = serde_json::from_str(&stdout).expect("attempts JSON");
            let attempts = attempts.as_array().expect("array");
            let settled = attempts
                .iter()
                .filter(|a| a["status_code"] == 200 && a["next_attempt_at"].is_null())
                .count();
            if attempts.len() == 4 && settled == 4 {
                Ok(())
            } else {
                Err(format!(
                    "{} attempts, {settled} settled: {stdout}",
                    attempts.len()
                ))
            }
        },
    )
    .await;

    // Replay sends the same four again, same webhook-ids, in order.
    let (ok, stdout, stderr) = cli(&env, &["replay", &id, "--since", "1h"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "4");
    eventually("replayed", Duration::from_secs(30), || async {
        match receiver.hooks().len() {
            8 => Ok(()),
            n => Err(format!("{n} of 8 requests")),
        }
    })
    .await;
    let hooks = receiver.hooks();
    let first: HashSet<&str> = hooks[..4].iter().map(|h| h.webhook_id.as_str()).collect();
    let again: HashSet<&str> = hooks[4..].iter().map(|h| h.webhook_id.as_str()).collect();
    assert_eq!(first, again);

    let list = eventually("replays settled", Duration::from_secs(30), || async {
        let (ok, stdout, stderr) = cli(&env, &["list", "--json"]).await;
        assert!(ok, "{stderr}");
        let list: serde_json::Value = serde_json::from_str(&stdout).expect("list JSON");
        if list[0]["backlog"] == 0 {
            Ok(list)
        } else {
            Err(stdout)
        }
    })
    .await;
    assert_eq!(list[0]["delivered"], 4);
    assert_eq!(list[0]["max_in_flight"], 2);
    assert!(list[0].get("secrets").is_none(), "secrets are never listed");

    let (ok, _, _) = cli(&env, &["disable", &id, "--reason", "maintenance"]).await;
    assert!(ok);
    let (_, stdout, _) = cli(&env, &["show", &id]).await;
    assert!(
        stdout.contains("enabled:          false") && stdout.contains("maintenance"),
        "{stdout}"
    );
    let (ok, _, _) = cli(&env, &["enable", &id]).await;
    assert!(ok);
    let (ok, stdout, _) = cli(&env, &["rotate-secret", &id]).await;
    assert!(ok && stdout.trim().starts_with("whsec_"), "{stdout}");
    let (_, stdout, _) = cli(&env, &["show", &id]).await;
    assert!(stdout.contains("secrets:          2"), "{stdout}");
    let (ok, _, _) = cli(&env, &["rotate-secret", &id, "--finish"]).await;
    assert!(ok);
    let (ok, _, stderr) = cli(&env, &["remove", &id]).await;
    assert!(!ok && stderr.contains("--yes"), "{stderr}");
    let (ok, _, _) = cli(&env, &["remove", &id, "--yes"]).await;
    assert!(ok);
    let (ok, _, stderr) = cli(&env, &["show", &id]).await;
    assert!(
        !ok && stderr.contains(&format!("no endpoint {id}")),
        "{stderr}"
    );
    deliverer.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_the_limit_is_disabled_and_keeps_its_events() {
    let env = TestEnv::new().await;
    let broken = HookReceiver::start(|_, _| Reply::status(500)).await;
    let endpoint = add_endpoint(&env, &broken.url(), &[], &[]).await;
    let deliverer = Deliverer::start(
        &env,
        &["--retry-schedule", "300ms", "--disable-after", "2s"],
    )
    .await;
    release(&env.db, &events("down", 2, 1, 3)).await;
    let reason = eventually("the endpoint disabled", Duration::from_secs(30), || async {
        let state = wa_deliver::store::get(&env.db, endpoint.id)
            .await
            .expect("read")
            .expect("endpoint");
        match (state.enabled, state.disabled_reason) {
            (false, Some(reason)) => Ok(reason),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        reason.contains("WA_DELIVER_DISABLE_AFTER") && reason.contains("HTTP 500"),
        "{reason}"
    );
    let status = wa_deliver::store::status(&env.db, endpoint.id)
        .await
        .expect("read")
        .expect("endpoint");
    assert_eq!(status.backlog, 6, "its events stay pending");
    // Reported: logged at error level and counted.
    let metrics = deliverer.metrics().await;
    let label = endpoint.id.to_string();
    assert_eq!(
        wa_e2e::metric_sum(
            &metrics,
            "wa_deliver_endpoint_disabled_total",
            &[("endpoint", &label)]
        ),
        1.0
    );
    assert!(
        wa_e2e::metric_sum(
            &metrics,
            "wa_deliver_attempts_total",
            &[("endpoint", &label), ("outcome", "http_error")]
        ) >= 2.0
    );
    deliverer.stop().await;
}

/// The deliverer's hot path is one statement: recording a success hands over
/// the conversation's next delivery, none after the last (the deliverer then
/// asks again), and none once another deliverer holds the lease, while the
/// success itself is still recorded once.
#[tokio::test]
async fn recording_a_success_hands_over_the_next_delivery_while_the_lease_is_held() {
    use wa_deliver::store::{self, AttemptRecord, Recorded};

    let env = TestEnv::new().await;
    let endpoint = add_endpoint(&env, "http://127.0.0.1:9/hook", &[], &[]).await;
    let first_three = events("handover", 1, 1, 3);
    release(&env.db, &first_three).await;
    let conversation = first_three[0].conversation.clone();
    let owner = uuid::Uuid::new_v4();
    let lease = Duration::from_secs(60);
    let claimed = store::claim_lanes(&env.db, endpoint.id, owner, lease, 10, 10)
        .await
        .expect("claim");
    assert_eq!(claimed, vec![conversation.clone()]);
    let success = AttemptRecord {
        status_code: Some(200),
        latency: Duration::from_millis(1),
        error: None,
    };

    let mut head = store::head(&env.db, endpoint.id, &conversation)
        .await
        .expect("head")
        .expect("a pending delivery");
    let mut handed_over = vec![head.event_id.clone()];
    let last = loop {
        match store::record_success(&env.db, &head, &success, owner, lease)
            .await
            .expect("record a success")
        {
            Recorded::Held(Some(next)) => {
                handed_over.push(next.event_id.clone());
                head = next;
            }
            last => break last,
        }
    };
    assert!(matches!(last, Recorded::Held(None)), "{last:?}");
    let expected: Vec<String> = first_three.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        handed_over, expected,
        "each delivery once, in sequence order"
    );

    release(&env.db, &events("handover", 1, 4, 2)).await;
    let fourth = store::head(&env.db, endpoint.id, &conversation)
        .await
        .expect("head")
        .expect("the fourth");
    sqlx::query(
        "UPDATE delivery_lanes SET lease_owner = 'another deliverer' WHERE endpoint_id = $1",
    )
    .bind(endpoint.id)
    .execute(&env.db)
    .await
    .expect("another deliverer takes the lease");
    let after_loss = store::record_success(&env.db, &fourth, &success, owner, lease)
        .await
        .expect("record a success");
    assert!(matches!(after_loss, Recorded::LeaseLost), "{after_loss:?}");
    let fifth = store::head(&env.db, endpoint.id, &conversation)
        .await
        .expect("head")
        .expect("the fifth");
    assert_eq!(
        fifth.event_id, "msg:handover.c0.s5",
        "the fourth is recorded as delivered"
    );
    let (pending, delivered): (i32, i64) = sqlx::query_as(
        "SELECT l.pending, (SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND state = 'delivered')
         FROM delivery_lanes l WHERE l.endpoint_id = $1",
    )
    .bind(endpoint.id)
    .fetch_one(&env.db)
    .await
    .expect("counts");
    assert_eq!((pending, delivered), (1, 4));
}
