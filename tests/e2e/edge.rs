//! The receiver's deadlines, connection cap and body budget, one at a time,
//! with short settings; and the legitimate behaviour they must not change
//! (keep-alive, `Expect: 100-continue`).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use wa_e2e::edge::{connect, post_head, read_head, read_until_closed, signed_request};
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::{Receiver, TestEnv, eventually, metric_sum};

async fn closed(receiver: &Receiver, reason: &str) -> f64 {
    metric_sum(
        &receiver.metrics().await,
        "wa_receiver_connections_closed_total",
        &[("reason", reason)],
    )
}

async fn wait_closed(receiver: &Receiver, reason: &str, count: f64) {
    eventually(
        &format!("{count} connections closed for {reason}"),
        Duration::from_secs(10),
        || async {
            match closed(receiver, reason).await {
                seen if seen == count => Ok(()),
                seen => Err(seen.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_late_request_head_gets_408_and_a_silent_one_is_closed() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &["--header-timeout", "1s"]).await;

    let mut partial = connect(receiver.addr).await;
    partial
        .write_all(b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let mut silent = connect(receiver.addr).await;

    let (answer, was_closed) = read_until_closed(&mut partial, Duration::from_secs(10)).await;
    assert!(was_closed);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (answer, was_closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(was_closed);
    assert_eq!(answer, "", "nothing was asked, nothing is answered");
    wait_closed(&receiver, "header_timeout", 2.0).await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_body_below_the_minimum_rate_gets_408_and_the_connection_is_closed() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(
        &env,
        &env.amqp_url,
        &[
            "--body-timeout",
            "1s",
            "--body-min-rate",
            "500",
            "--body-max-duration",
            "3s",
        ],
    )
    .await;
    let body = payloads::mixed("slow", 1);
    let request = signed_request(&body, "");
    let head_len = request.len() - body.len();

    // Stops after the head and a few bytes: 1 s plus 10 bytes at 500 B/s.
    let mut stalled = connect(receiver.addr).await;
    stalled
        .write_all(&request[..head_len + 10])
        .await
        .expect("write");
    // Sends almost all of it at once, then stalls: the burst earns time,
    // but never more than the 3 s maximum.
    let mut burst = connect(receiver.addr).await;
    burst
        .write_all(&request[..request.len() - 1])
        .await
        .expect("write");

    for stream in [&mut stalled, &mut burst] {
        let (answer, was_closed) = read_until_closed(stream, Duration::from_secs(15)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(was_closed);
    }
    wait_closed(&receiver, "body_timeout", 2.0).await;
    assert_eq!(env.queue_depth("inbound").await, 0);

    // A body at normal speed is not affected.
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    assert_eq!(post_signed(&client, &url, body).await, 200);
    receiver.stop().await;
}

#[tokio::test]
async fn heads_that_cannot_be_signed_or_are_too_large_are_answered_before_their_body() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let limit = 4 * 1024 * 1024;

    // No signature: 401 without waiting for the 1 MiB announced.
    let mut unsigned = connect(receiver.addr).await;
    unsigned
        .write_all(post_head("content-length: 1048576\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut unsigned, Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // Over the limit by Content-Length: 413 at once, and no 100 Continue.
    let mut announced = connect(receiver.addr).await;
    let signature = format!("x-hub-signature-256: sha256={}\r\n", "0".repeat(64));
    announced
        .write_all(
            post_head(&format!(
                "content-length: {}\r\nexpect: 100-continue\r\n{signature}",
                limit + 1
            ))
            .as_bytes(),
        )
        .await
        .expect("write");
    let head = read_head(&mut announced, Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Over the limit by what arrives (chunked, no length announced): 413 as
    // soon as the limit is passed, while the client still has more to send.
    let mut chunked = connect(receiver.addr).await;
    chunked
        .write_all(post_head(&format!("transfer-encoding: chunked\r\n{signature}")).as_bytes())
        .await
        .expect("write");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    for _ in 0..(limit / (64 * 1024) + 1) {
        if chunked.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed
        }
    }
    let head = read_head(&mut chunked, Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(env.queue_depth("inbound").await, 0);
    receiver.stop().await;
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_answer_then_200() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let body = payloads::mixed("expect", 1);
    let request = signed_request(&body, "expect: 100-continue\r\n");
    let head_len = request.len() - body.len();

    let mut stream = connect(receiver.addr).await;
    stream.write_all(&request[..head_len]).await.expect("write");
    let interim = read_head(&mut stream, Duration::from_secs(5)).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(&request[head_len..]).await.expect("write");
    let answer = read_head(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(env.queue_depth("inbound").await, 1);
    receiver.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_serves_many_requests_and_closes_when_idle() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &["--keepalive-timeout", "1s"]).await;
    let mut stream = connect(receiver.addr).await;
    for i in 0..5 {
        let body = payloads::mixed(&format!("ka{i}"), 1);
        stream
            .write_all(&signed_request(&body, ""))
            .await
            .expect("write");
        let answer = read_head(&mut stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        // The body of the answer ("ok").
        let mut ok = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut ok)
            .await
            .expect("answer body");
    }
    assert_eq!(env.queue_depth("inbound").await, 5);
    let (rest, was_closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(was_closed, "closed once idle");
    assert_eq!(rest, "", "an idle connection is closed without an answer");
    wait_closed(&receiver, "keepalive_timeout", 1.0).await;
    receiver.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_waiting_connection_makes_room() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &["--max-connections", "8"]).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut stream = connect(receiver.addr).await;
        stream.write_all(b"POST /webhooks/wh").await.expect("write");
        idle.push(stream);
        // Accepted in this order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // /metrics itself needs a connection: it sheds the oldest one.
    wait_closed(&receiver, "shed", 1.0).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("room", 1)).await,
        200
    );
    let (_, first_closed) = read_until_closed(&mut idle[0], Duration::from_secs(5)).await;
    assert!(first_closed, "the oldest waiting connection was shed");
    assert_eq!(env.queue_depth("inbound").await, 1);
    receiver.stop().await;
}

#[tokio::test]
async fn at_the_cap_with_no_idle_connection_the_longest_unverified_body_makes_room() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &["--max-connections", "2"]).await;
    // Two requests inside slow bodies hold both slots.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(receiver.addr).await;
        let signature = format!("x-hub-signature-256: sha256={}\r\n", "0".repeat(64));
        stream
            .write_all(post_head(&format!("content-length: 100\r\n{signature}")).as_bytes())
            .await
            .expect("write");
        stream.write_all(b"{").await.expect("write");
        busy.push(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    assert_eq!(
        post_signed(&client, &url, payloads::mixed("room", 1)).await,
        200
    );
    let (answer, first_closed) = read_until_closed(&mut busy[0], Duration::from_secs(5)).await;
    assert!(first_closed, "the oldest unverified body was shed");
    assert_eq!(answer, "");
    assert_eq!(env.queue_depth("inbound").await, 1);
    // Reading /metrics takes a slot too: the signed request's kept-alive
    // connection, now idle, goes before the second body.
    assert_eq!(closed(&receiver, "shed").await, 2.0);
    let (_, second_closed) = read_until_closed(&mut busy[1], Duration::from_millis(300)).await;
    assert!(!second_closed, "the second body is still being read");
    receiver.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed_when_writes_stall() {
    let env = TestEnv::new().await;
    // A write may wait for the client as long as a head may take.
    let receiver = Receiver::start(&env, &env.amqp_url, &["--header-timeout", "1s"]).await;
    let stream = connect(receiver.addr).await;
    let (_unread, mut writer) = stream.into_split();
    // 150,000 pipelined requests: their answers (about 16 MB) fill both
    // socket buffers, and the receiver's write of the next answer stalls.
    let requests = tokio::spawn(async move {
        let batch = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        for _ in 0..150 {
            if writer.write_all(&batch).await.is_err() {
                break;
            }
        }
        writer
    });
    eventually(
        "the stalled connection to be closed",
        Duration::from_secs(60),
        || async {
            match closed(&receiver, "write_timeout").await {
                1.0 => Ok(()),
                seen => Err(seen.to_string()),
            }
        },
    )
    .await;
    requests.abort();
    receiver.stop().await;
}

#[tokio::test]
async fn six_3_mib_bodies_at_once_and_one_at_a_modest_pace_are_all_accepted() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let large = |tag: &str| {
        let mut body =
            format!(r#"{{"object":"whatsapp_business_account","entry":[],"tag":"{tag}","pad":""#)
                .into_bytes();
        body.resize(3 * 1024 * 1024 - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");
    // 6 x 3 MiB = 18 MiB fits the default 24 MiB body budget.
    let at_once = (0..6).map(|i| {
        let (client, url, body) = (client.clone(), url.clone(), large(&format!("fast{i}")));
        tokio::spawn(async move { post_signed(&client, &url, body).await })
    });
    // One written at about 1 MiB/s in 64 KiB pieces, as a slow link would.
    let paced = tokio::spawn({
        let addr = receiver.addr;
        let request = signed_request(&large("paced"), "");
        async move {
            let mut stream = connect(addr).await;
            for piece in request.chunks(64 * 1024) {
                stream.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(62)).await;
            }
            read_head(&mut stream, Duration::from_secs(30)).await
        }
    });
    for answer in futures_util::future::join_all(at_once).await {
        assert_eq!(answer.expect("task"), 200);
    }
    let paced = paced.await.expect("task");
    assert!(paced.starts_with("HTTP/1.1 200"), "{paced}");
    assert_eq!(env.queue_depth("inbound").await, 7);
    receiver.stop().await;
}
