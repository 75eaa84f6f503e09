//! The parser's whole fixture corpus (`crates/wa-payload/tests/fixtures`:
//! every shape Meta documents, and the odd ones users and other senders
//! cause) through a real worker into a real database. The parser's own
//! tests say what each body means; this one says PostgreSQL takes all of
//! it: nothing dead-lettered, one row per event key, and a second round of
//! the same bodies changes nothing.

use std::collections::BTreeSet;

use wa_e2e::payloads::fixtures;
use wa_e2e::{TestEnv, Worker};
use wa_payload::{Event, parse_payload};

/// The corpus, each body checked to be a webhook: one the parser refuses
/// (none today) belongs in the DLQ tests instead.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let bodies = fixtures();
    for (name, body) in &bodies {
        parse_payload(body).unwrap_or_else(|e| panic!("{name} is no webhook: {e}"));
    }
    bodies
}

/// The rows the corpus must leave: distinct wamids of messages and echoes
/// (one `messages` row each), and distinct keys of statuses, group items
/// and everything else.
#[derive(Debug, PartialEq)]
struct Rows {
    messages: i64,
    statuses: i64,
    groups: i64,
    others: i64,
}

fn expected_rows(bodies: &[(String, Vec<u8>)]) -> Rows {
    let (mut wamids, mut statuses, mut groups, mut others) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for (_, body) in bodies {
        for event in parse_payload(body).expect("parsed above") {
            match event {
                Event::Message(message) => wamids.insert(message.wamid),
                Event::Status(status) => statuses.insert(status.key),
                Event::Group(group) => groups.insert(group.key),
                Event::Other(other) => others.insert(other.key),
            };
        }
    }
    let count = |set: BTreeSet<String>| i64::try_from(set.len()).expect("a small corpus");
    Rows {
        messages: count(wamids),
        statuses: count(statuses),
        groups: count(groups),
        others: count(others),
    }
}

async fn stored_rows(env: &TestEnv) -> Rows {
    Rows {
        messages: env.count("SELECT count(*) FROM messages").await,
        statuses: env.count("SELECT count(*) FROM message_statuses").await,
        groups: env.count("SELECT count(*) FROM group_events").await,
        others: env.count("SELECT count(*) FROM webhook_events").await,
    }
}

#[tokio::test]
async fn every_fixture_twice_is_stored_once_and_nothing_is_dead_lettered() {
    let env = TestEnv::new().await;
    let bodies = corpus();
    let expected = expected_rows(&bodies);
    println!("{} bodies, expected rows {expected:?}", bodies.len());
    let twice: Vec<Vec<u8>> = bodies
        .iter()
        .flat_map(|(_, body)| [body.clone(), body.clone()])
        .collect();
    env.publish_inbound_all(&twice).await;
    let worker = Worker::start(&env, &["--batch-size", "16"]).await;
    env.settled((expected.messages, expected.statuses)).await;
    assert_eq!(stored_rows(&env).await, expected);
    assert_eq!(env.queue_depth("dlq").await, 0, "dead-lettered");

    // A third copy of each, once every claim is done: nothing new.
    let once: Vec<Vec<u8>> = bodies.into_iter().map(|(_, body)| body).collect();
    env.publish_inbound_all(&once).await;
    env.settled((expected.messages, expected.statuses)).await;
    assert_eq!(stored_rows(&env).await, expected);
    assert_eq!(env.queue_depth("dlq").await, 0, "dead-lettered");
    worker.assert_nothing_dead_lettered(&env).await;
    worker.stop().await;
}
