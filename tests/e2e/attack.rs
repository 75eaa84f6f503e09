//! The real receiver binary, with its default edge settings, under the
//! attacks that took the old one down, while signed traffic goes on. The
//! deadlines are the server's: the bounds asserted here (closed within 60 s
//! of opening, a signed request answered within the header timeout) leave a
//! wide margin over the defaults (10 s head, 20 s body).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Barrier;
use tokio::time::Instant;
use wa_e2e::edge::{ReceiverProcess, post_head, trickle};
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::{TestEnv, eventually, metric_sum};

const BINARY: &str = env!("CARGO_BIN_EXE_wa-ingest");

/// What README.md promises for the receiver's resident memory at the default
/// settings: 32 MiB + 32 KiB x WA_MAX_CONNECTIONS (1024) + 2 x WA_BODY_BUFFER
/// (24 MiB).
const DOCUMENTED_PEAK_RSS: u64 = 112 * 1024 * 1024;

/// Server-enforced deadlines are asserted with this bound (defaults: 10 s
/// for a head, 20 s for a body that trickles).
const CLOSED_WITHIN: Duration = Duration::from_secs(60);

/// A head that announces 4 MiB, carries a well-formed (wrong) signature so
/// that the body is read, and then trickles 2 bytes a second.
fn slow_body_head() -> Vec<u8> {
    post_head(&format!(
        "content-length: 4194304\r\nx-hub-signature-256: sha256={}\r\n",
        "0".repeat(64)
    ))
    .into_bytes()
}

/// Half of a request head, then a byte every second: never complete.
fn unfinished_head() -> Vec<u8> {
    b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: receiver\r\nx-a: ".to_vec()
}

/// `count` connections that each send `first`, then `each` every second,
/// until the receiver closes them; each yields how long that took.
fn attackers(
    addr: std::net::SocketAddr,
    count: usize,
    first: Vec<u8>,
    each: &'static [u8],
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    (0..count)
        .map(|_| {
            tokio::spawn(trickle(
                addr,
                first.clone(),
                each,
                Duration::from_secs(1),
                CLOSED_WITHIN + Duration::from_secs(10),
            ))
        })
        .collect()
}

async fn wait_open(receiver: &ReceiverProcess, count: usize) {
    eventually(
        &format!("{count} connections open"),
        Duration::from_secs(30),
        || async {
            let open = metric_sum(
                &receiver.metrics().await,
                "wa_receiver_connections_open",
                &[],
            );
            if open >= count as f64 {
                Ok(())
            } else {
                Err(format!("{open} open"))
            }
        },
    )
    .await;
}

async fn closes(
    attackers: Vec<tokio::task::JoinHandle<Option<Duration>>>,
) -> Vec<Option<Duration>> {
    join_all(attackers)
        .await
        .into_iter()
        .map(|r| r.expect("attacker"))
        .collect()
}

/// Connections the receiver closed for `reason`, from its metrics.
fn closed_for(metrics: &str, reason: &str) -> f64 {
    metric_sum(
        metrics,
        "wa_receiver_connections_closed_total",
        &[("reason", reason)],
    )
}

/// The receiver's metrics once it counts `total` connections closed for
/// `reasons` (or after 5 s): a close is counted just after its socket is
/// shut, so the last counts may land a moment after the client saw it.
async fn metrics_once_closed(receiver: &ReceiverProcess, reasons: &[&str], total: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = receiver.metrics().await;
        let closed: f64 = reasons.iter().map(|r| closed_for(&metrics, r)).sum();
        if closed >= total as f64 || Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_unfinished_heads_do_not_stop_signed_webhooks() {
    let env = TestEnv::new().await;
    let receiver = ReceiverProcess::start(BINARY, &env, &[]).await;
    let addr = receiver.addr;
    let traffic_for = Duration::from_secs(30);

    let slow_bodies = attackers(addr, 32, slow_body_head(), b"{}");
    let unfinished_heads = attackers(addr, 300, unfinished_head(), b"a");
    // Let the attack take hold before the signed traffic starts.
    wait_open(&receiver, 332).await;

    let gate = Arc::new(Barrier::new(8));
    let url = receiver.url("/webhooks/whatsapp");
    let senders = (0..8).map(|s| {
        let (url, gate) = (url.clone(), gate.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            gate.wait().await;
            let started = Instant::now();
            let (mut accepted, mut other) = (0u32, Vec::new());
            // Bounded by time and by count.
            for i in 0..20_000 {
                if started.elapsed() >= traffic_for {
                    break;
                }
                let body = payloads::mixed(&format!("attack{s}x{i}"), 1);
                match post_signed(&client, &url, body).await {
                    200 => accepted += 1,
                    status => other.push(status),
                }
            }
            (accepted, other)
        })
    });
    let results: Vec<(u32, Vec<u16>)> = join_all(senders)
        .await
        .into_iter()
        .map(|r| r.expect("sender"))
        .collect();
    let accepted: u32 = results.iter().map(|(a, _)| a).sum();
    let refused: Vec<u16> = results.iter().flat_map(|(_, o)| o.clone()).collect();
    let sent = accepted as usize + refused.len();

    let slow = closes(slow_bodies).await;
    let heads = closes(unfinished_heads).await;
    let peak = receiver.peak_rss();
    let metrics = metrics_once_closed(&receiver, &["body_timeout", "header_timeout"], 332).await;
    let closed = |reason: &str| closed_for(&metrics, reason);
    let slowest = |closes: &[Option<Duration>]| closes.iter().flatten().max().copied();
    println!(
        "signed webhooks: {sent} sent, {accepted} answered 200, others {refused:?}; \
         slow bodies closed after at most {:?}, unfinished heads after at most {:?}; \
         closed: body_timeout {}, header_timeout {}; receiver peak RSS {:.1} MiB (documented bound {:.0} MiB)",
        slowest(&slow),
        slowest(&heads),
        closed("body_timeout"),
        closed("header_timeout"),
        mib(peak),
        mib(DOCUMENTED_PEAK_RSS),
    );

    assert!(sent >= 100, "the signed traffic ran: {sent} requests");
    assert!(
        accepted as usize * 100 >= sent * 99,
        "at least 99% of {sent} signed webhooks answered 200: {accepted}"
    );
    assert_eq!(
        env.queue_depth("inbound").await,
        accepted,
        "every 200 is in the queue"
    );
    for (what, closes) in [("slow body", &slow), ("unfinished head", &heads)] {
        let open = closes.iter().filter(|c| c.is_none()).count();
        assert_eq!(open, 0, "{open} {what} connections still open");
        assert!(
            closes.iter().flatten().all(|c| *c <= CLOSED_WITHIN),
            "every {what} connection closed by the server within {CLOSED_WITHIN:?}"
        );
    }
    assert_eq!(closed("body_timeout"), 32.0);
    assert_eq!(closed("header_timeout"), 300.0);
    assert!(
        peak <= DOCUMENTED_PEAK_RSS,
        "peak RSS {:.1} MiB over the documented {:.0} MiB",
        mib(peak),
        mib(DOCUMENTED_PEAK_RSS)
    );
    assert!(receiver.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_up_to_the_cap_does_not_lock_out_a_signed_request() {
    let env = TestEnv::new().await;
    let receiver = ReceiverProcess::start(BINARY, &env, &[]).await;
    let addr = receiver.addr;
    let cap: usize = 1024; // the default WA_MAX_CONNECTIONS
    let header_timeout = Duration::from_secs(10); // the default WA_HEADER_TIMEOUT

    let flood = attackers(addr, cap, b"POST /webhooks/whats".to_vec(), b"");
    wait_open(&receiver, cap).await;

    let client = reqwest::Client::builder()
        .timeout(header_timeout)
        .build()
        .expect("client");
    let started = Instant::now();
    let status = post_signed(
        &client,
        &receiver.url("/webhooks/whatsapp"),
        payloads::mixed("through-the-flood", 1),
    )
    .await;
    let took = started.elapsed();

    let closes = closes(flood).await;
    let metrics = metrics_once_closed(&receiver, &["shed", "header_timeout"], cap).await;
    let closed = |reason: &str| closed_for(&metrics, reason);
    let peak = receiver.peak_rss();
    println!(
        "signed request during a flood of {cap} unfinished heads: {status} after {took:?}; \
         flood closed after at most {:?} (shed {}, header_timeout {}); receiver peak RSS {:.1} MiB",
        closes.iter().flatten().max(),
        closed("shed"),
        closed("header_timeout"),
        mib(peak),
    );
    assert_eq!(
        status, 200,
        "answered within the header timeout ({header_timeout:?})"
    );
    assert_eq!(env.queue_depth("inbound").await, 1);
    assert!(closed("shed") >= 1.0, "a flood connection made room");
    assert!(
        closes.iter().all(|c| c.is_some_and(|c| c <= CLOSED_WITHIN)),
        "every flood connection closed by the server within {CLOSED_WITHIN:?}"
    );
    assert_eq!(closed("shed") + closed("header_timeout"), cap as f64);
    assert!(peak <= DOCUMENTED_PEAK_RSS);
    assert!(receiver.stop().await.success());
}
