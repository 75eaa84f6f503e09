//! The receiver against a real broker: handshake, signatures, body checks,
//! exact bytes in the queue, load, a broker outage and shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use tokio::sync::Barrier;
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::roles::{APP_SECRET, ROTATED_SECRET, VERIFY_TOKEN};
use wa_e2e::{Receiver, TcpRelay, TestEnv, eventually};

async fn handshake(receiver: &Receiver, token: &str) -> (u16, String) {
    let url = receiver.url(&format!(
        "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
    ));
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let body = response.text().await.expect("body");
    if status == 200 {
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
    (status, body)
}

async fn post(receiver: &Receiver, body: &[u8], signature: Option<String>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(receiver.url("/webhooks/whatsapp"))
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Hub-Signature-256", signature);
    }
    request.send().await.expect("POST").status().as_u16()
}

#[tokio::test]
async fn handshake_echoes_the_challenge_only_for_the_right_token() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    assert_eq!(
        handshake(&receiver, VERIFY_TOKEN).await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(handshake(&receiver, "wrong-token").await.0, 403);
    let no_mode = reqwest::get(receiver.url(&format!(
        "/webhooks/whatsapp?hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
    )))
    .await
    .expect("GET");
    assert_eq!(no_mode.status().as_u16(), 403);
    receiver.stop().await;
}

#[tokio::test]
async fn only_correctly_signed_bodies_are_accepted() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let body = payloads::mixed("sig", 1);

    let valid = wa_receiver::sign(APP_SECRET, &body);
    assert_eq!(
        post(&receiver, &body, Some(valid.clone())).await,
        200,
        "valid"
    );

    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    assert_eq!(
        post(&receiver, &tampered, Some(valid)).await,
        401,
        "tampered body"
    );

    let wrong = wa_receiver::sign("not-the-secret", &body);
    assert_eq!(
        post(&receiver, &body, Some(wrong)).await,
        401,
        "wrong secret"
    );
    assert_eq!(post(&receiver, &body, None).await, 401, "missing header");
    assert_eq!(
        post(&receiver, &body, Some("sha256=zz".into())).await,
        401,
        "garbage header"
    );

    let rotated = wa_receiver::sign(ROTATED_SECRET, &body);
    assert_eq!(
        post(&receiver, &body, Some(rotated)).await,
        200,
        "second rotated secret"
    );

    assert_eq!(
        env.queue_depth("inbound").await,
        2,
        "exactly the two accepted bodies"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn signed_non_json_or_non_utf8_is_400_and_oversized_is_413() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;

    let not_json = b"entry=1&object=whatsapp".to_vec();
    let signature = wa_receiver::sign(APP_SECRET, &not_json);
    assert_eq!(post(&receiver, &not_json, Some(signature)).await, 400);
    // JSON is UTF-8 throughout, inside strings too.
    let not_utf8 = b"{\"object\":\"whatsapp_business_account\",\"entry\":[\"\xff\"]}".to_vec();
    let signature = wa_receiver::sign(APP_SECRET, &not_utf8);
    assert_eq!(post(&receiver, &not_utf8, Some(signature)).await, 400);

    // The default limit (4 MiB) takes Meta's largest (3 MB) payloads...
    let padding = "x".repeat(3_000_000);
    let large = format!(r#"{{"object":"whatsapp_business_account","entry":[],"pad":"{padding}"}}"#);
    let signature = wa_receiver::sign(APP_SECRET, large.as_bytes());
    assert_eq!(
        post(&receiver, large.as_bytes(), Some(signature)).await,
        200
    );

    // ...and refuses what is beyond it.
    let huge = vec![b' '; 5 * 1024 * 1024];
    let signature = wa_receiver::sign(APP_SECRET, &huge);
    assert_eq!(post(&receiver, &huge, Some(signature)).await, 413);

    assert_eq!(env.queue_depth("inbound").await, 1);
    receiver.stop().await;
}

#[tokio::test]
async fn the_queue_holds_the_posted_bytes_unchanged() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    // Odd spacing, key order and escapes: any re-encoding would show.
    let body =
        "{ \"entry\":[ ],\n  \"object\" : \"whatsapp_business_account\", \"t\":\"caf\\u00e9 ☕\" }"
            .as_bytes()
            .to_vec();
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    assert_eq!(post_signed(&client, &url, body.clone()).await, 200);

    let messages = env.drain("inbound").await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.delivery.data, body);
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(hex::encode(Sha256::digest(&body)))
    );
    assert_eq!(properties.delivery_mode(), &Some(2));
    let headers = properties.headers().as_ref().expect("headers");
    assert!(headers.inner().contains_key("x-wa-received-at"));
    assert!(headers.inner().contains_key("x-hub-signature-256"));
    receiver.stop().await;
}

#[tokio::test]
async fn every_200_is_a_message_in_the_queue_under_load() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    let gate = Arc::new(Barrier::new(64));
    let workers = (0..64).map(|w| {
        let (client, url, gate) = (client.clone(), url.clone(), gate.clone());
        tokio::spawn(async move {
            gate.wait().await;
            let mut accepted = 0;
            // 64 x 16 = 1,024 requests, at most 64 in flight.
            for i in 0..16 {
                let body = payloads::mixed(&format!("load{w}x{i}"), 2);
                if post_signed(&client, &url, body).await == 200 {
                    accepted += 1;
                }
            }
            accepted
        })
    });
    let accepted: u32 = join_all(workers)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .sum();
    assert_eq!(
        accepted, 1024,
        "the broker is up: every request is accepted"
    );
    assert_eq!(env.queue_depth("inbound").await, accepted);
    receiver.stop().await;
}

#[tokio::test]
async fn a_broker_outage_gives_503_never_200_and_heals_by_itself() {
    let env = TestEnv::new().await;
    let (relay, relayed) = TcpRelay::in_front_of(&env.amqp_url);
    let receiver = Receiver::start(&env, &relayed, &[]).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("before", 1)).await,
        200
    );

    relay.cut();
    let mut during = Vec::new();
    for i in 0..20 {
        during.push(post_signed(&client, &url, payloads::mixed(&format!("during{i}"), 1)).await);
    }
    assert!(during.iter().all(|&status| status == 503), "{during:?}");
    let ready = reqwest::get(receiver.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);

    relay.restore();
    let mut n = 0;
    eventually(
        "a 200 after the broker is back",
        Duration::from_secs(20),
        || {
            n += 1;
            let (client, url) = (client.clone(), url.clone());
            async move {
                match post_signed(&client, &url, payloads::mixed(&format!("after{n}"), 1)).await {
                    200 => Ok(()),
                    other => Err(other.to_string()),
                }
            }
        },
    )
    .await;
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("settled", 1)).await,
        200
    );
    // One before, one or more after: exactly the 200s, none of the 503s.
    assert_eq!(env.queue_depth("inbound").await, 2 + 1);
    receiver.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                post_signed(&client, &url, payloads::mixed(&format!("sd{i}"), 1)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    receiver.stop().await;
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let accepted = statuses.iter().filter(|&&s| s == 200).count();
    // Requests either completed (200, and enqueued) or never got in (no
    // answer); none was cut off after acceptance.
    assert!(statuses.iter().all(|&s| s == 200 || s == 0), "{statuses:?}");
    assert_eq!(env.queue_depth("inbound").await as usize, accepted);
}

#[tokio::test]
async fn announced_lengths_take_no_body_budget_but_arrived_bytes_do() {
    use tokio::io::AsyncWriteExt;
    use wa_e2e::edge::{connect, post_head};
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &["--body-buffer", "8388608"]).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    let signature = format!("x-hub-signature-256: sha256={}\r\n", "0".repeat(64));
    let announce = |length: usize| post_head(&format!("content-length: {length}\r\n{signature}"));
    let buffered = || async {
        let metrics = reqwest::get(receiver.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        wa_e2e::metric_sum(&metrics, "wa_receiver_body_buffer_bytes", &[])
    };

    // Eight clients announce 4 MiB each (32 MiB, four times the budget) and
    // send nothing: they hold no budget, signed webhooks go through.
    let mut announcers = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(receiver.addr).await;
        stream
            .write_all(announce(4 * 1024 * 1024).as_bytes())
            .await
            .expect("write");
        announcers.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("small", 1)).await,
        200
    );

    // Two that really send 3.5 MiB of 4 MiB hold the whole budget (their
    // buffers grow to the 4 MiB announced): now a body gets 503.
    let mut senders = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(receiver.addr).await;
        stream
            .write_all(announce(4 * 1024 * 1024).as_bytes())
            .await
            .expect("write");
        stream
            .write_all(&vec![b' '; 3 * 1024 * 1024 + 512 * 1024])
            .await
            .expect("write");
        senders.push(stream);
    }
    eventually(
        "the budget to be taken",
        Duration::from_secs(10),
        || async {
            match buffered().await {
                full if full >= 8.0 * 1024.0 * 1024.0 => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("squeezed", 1)).await,
        503
    );

    // Their connections gone, the budget is back.
    drop(senders);
    eventually("the budget to be free", Duration::from_secs(10), || async {
        match buffered().await {
            0.0 => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("after", 1)).await,
        200
    );
    assert_eq!(env.queue_depth("inbound").await, 2);
    drop(announcers);
    receiver.stop().await;
}
