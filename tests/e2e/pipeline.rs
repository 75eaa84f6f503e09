//! The whole pipeline: Meta's POSTs through the receiver to two workers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Barrier, Semaphore};
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::{Receiver, TestEnv, Worker, eventually};

#[tokio::test]
async fn every_payload_posted_three_times_at_once_is_stored_once() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let workers = [
        Worker::start(&env, &[]).await,
        Worker::start(&env, &[]).await,
    ];

    // 500 payloads of 1 message and 3 statuses, each POSTed 3 times at once.
    let unique = 500;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    let in_flight = Arc::new(Semaphore::new(64));
    let posts = (0..unique).flat_map(|i| {
        let body = payloads::mixed(&format!("e2e{i}"), 1);
        let gate = Arc::new(Barrier::new(3));
        (0..3).map(move |_| (body.clone(), gate.clone()))
    });
    let results = join_all(posts.map(|(body, gate)| {
        let (client, url, in_flight) = (client.clone(), url.clone(), in_flight.clone());
        async move {
            gate.wait().await;
            let _slot = in_flight.acquire().await.expect("semaphore");
            post_signed(&client, &url, body).await
        }
    }))
    .await;
    assert!(results.iter().all(|&s| s == 200), "every POST accepted");

    eventually("every event stored", Duration::from_secs(60), || async {
        let messages = env.count("SELECT count(*) FROM messages").await;
        let statuses = env.count("SELECT count(*) FROM message_statuses").await;
        if (messages, statuses) == (unique, unique * 3) {
            Ok(())
        } else {
            Err(format!("{messages} messages, {statuses} statuses"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.count("SELECT count(*) FROM messages").await, unique);
    assert_eq!(
        env.count("SELECT count(*) FROM message_statuses").await,
        unique * 3
    );
    assert_eq!(env.queue_depth("dlq").await, 0);
    receiver.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}
