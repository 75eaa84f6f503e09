//! What operators rely on: counters that match what happened, and a worker
//! that stops cleanly on SIGTERM.

use std::time::{Duration, Instant};

use wa_e2e::logs::error_lines;
use wa_e2e::payloads::{self, post_signed};
use wa_e2e::{Receiver, TestEnv, Worker, eventually, metric_sum};

async fn stored_rows(env: &TestEnv) -> (i64, i64) {
    (
        env.count("SELECT count(*) FROM messages").await,
        env.count("SELECT count(*) FROM message_statuses").await,
    )
}

async fn wait_rows(env: &TestEnv, expected: (i64, i64)) {
    eventually("rows stored", Duration::from_secs(60), || async {
        match stored_rows(env).await {
            rows if rows == expected => Ok(()),
            rows => Err(format!("{rows:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let worker = Worker::start(&env, &[]).await;
    let client = reqwest::Client::new();
    let url = receiver.url("/webhooks/whatsapp");

    // 30 payloads of 4 events; then each again once they are stored.
    let bodies = payloads::mixed_each("m", 30);
    for body in &bodies {
        assert_eq!(post_signed(&client, &url, body.clone()).await, 200);
    }
    wait_rows(&env, (30, 90)).await;
    for body in &bodies {
        assert_eq!(post_signed(&client, &url, body.clone()).await, 200);
    }
    // 3 unauthorized, 2 bad requests, 1 too large.
    for _ in 0..3 {
        let response = client
            .post(&url)
            .body(bodies[0].clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), 401);
    }
    for _ in 0..2 {
        assert_eq!(post_signed(&client, &url, b"not json".to_vec()).await, 400);
    }
    assert_eq!(
        post_signed(&client, &url, vec![b' '; 5 * 1024 * 1024]).await,
        413
    );

    let metrics = eventually(
        "the duplicates handled",
        Duration::from_secs(30),
        || async {
            // The gauge drops once the whole batch is settled, just after its acks.
            let metrics = worker.metrics().await;
            let acked = metric_sum(&metrics, "wa_deliveries_total", &[("outcome", "acked")]);
            let in_flight = metric_sum(&metrics, "wa_deliveries_in_flight", &[]);
            match (acked, in_flight) {
                (60.0, 0.0) => Ok(metrics),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let count = |name: &str, labels: &[(&str, &str)]| metric_sum(&metrics, name, labels);
    let expect = |name: &str, labels: &[(&str, &str)], value: f64| {
        assert_eq!(count(name, labels), value, "{name} {labels:?}");
    };
    let requests = |outcome: &str, value: f64| {
        expect("wa_webhook_requests_total", &[("outcome", outcome)], value);
    };
    requests("accepted", 60.0);
    requests("unauthorized", 3.0);
    requests("bad_request", 2.0);
    requests("too_large", 1.0);
    requests("unavailable", 0.0);
    expect("wa_publish_confirm_duration_seconds_count", &[], 60.0);
    let events = |labels: &[(&str, &str)], value: f64| expect("wa_events_total", labels, value);
    events(&[("outcome", "stored")], 120.0);
    events(&[("kind", "message"), ("outcome", "stored")], 30.0);
    events(&[("kind", "status"), ("outcome", "stored")], 90.0);
    // The copies came once their bodies were stored: found by the bodies'
    // markers (unparsed), or by their claims when one came before its marker.
    assert_eq!(
        count("wa_events_total", &[("outcome", "duplicate_delivery")])
            + count("wa_events_total", &[("outcome", "duplicate_claim")]),
        120.0
    );
    events(&[("outcome", "duplicate_db")], 0.0);
    expect("wa_claim_fail_open_total", &[], 0.0);
    expect("wa_ingest_delay_seconds_count", &[], 60.0);
    assert!(count("wa_batch_size_count", &[]) >= 1.0);
    expect("wa_deliveries_in_flight", &[], 0.0);
    receiver.stop().await;
    worker.stop().await;
}

/// `SCHED_OTHER` and `SCHED_BATCH` in Linux's numbering.
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

#[tokio::test]
async fn every_thread_of_a_role_runs_under_wa_sched_policy() {
    let env = TestEnv::new().await;
    for (setting, expected) in [(None, SCHED_BATCH), (Some("normal"), SCHED_OTHER)] {
        let mut command = env.worker_process(env!("CARGO_BIN_EXE_wa-ingest"));
        if let Some(setting) = setting {
            command.env("WA_SCHED_POLICY", setting);
        }
        let mut child = command.spawn().expect("start the wa-ingest binary");
        let pid = child.id().expect("running").to_string();
        // Once it consumes, lapin's I/O thread has joined the runtime's.
        let policies = eventually(
            "the worker's threads to start",
            Duration::from_secs(30),
            || async {
                match env.queue_consumers("inbound").await {
                    0 => Err("not consuming yet".to_owned()),
                    _ => Ok(thread_policies(&pid)),
                }
            },
        )
        .await;
        assert!(
            policies.iter().all(|&policy| policy == expected),
            "WA_SCHED_POLICY={setting:?}: every thread runs policy {expected}: {policies:?}"
        );
        child.kill().await.expect("kill the worker");
        // So that the next round does not count this worker's consumer.
        eventually(
            "the killed worker's consumer to go",
            Duration::from_secs(30),
            || async {
                match env.queue_consumers("inbound").await {
                    0 => Ok(()),
                    n => Err(format!("{n} consumers")),
                }
            },
        )
        .await;
    }
}

/// The scheduling policy of each thread of process `pid` (field 41 of
/// `/proc/{pid}/task/{tid}/stat`, counted after the parenthesised name).
fn thread_policies(pid: &str) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .map(|task| {
            let stat = std::fs::read_to_string(task.expect("a thread").path().join("stat"))
                .expect("the thread's stat");
            let (_, fields) = stat
                .rsplit_once(')')
                .expect("stat names the thread in parentheses");
            fields
                .split_whitespace()
                .nth(41 - 3)
                .and_then(|policy| policy.parse().ok())
                .expect("a policy field")
        })
        .collect()
}

/// Everything `child` writes to stdout and stderr, read as it comes (a full
/// pipe would stall it), once it has exited.
fn collect_output(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<String> {
    use tokio::io::AsyncReadExt;
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    tokio::spawn(async move {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        out + &err
    })
}

#[tokio::test]
async fn sigterm_mid_stream_loses_nothing_acks_what_it_stored_and_exits_within_the_grace_period() {
    let env = TestEnv::new().await;
    let total = 600;
    for i in 0..total {
        env.publish_inbound(&payloads::mixed(&format!("term{i}"), 1))
            .await;
    }
    let mut child = env
        .worker_process(env!("CARGO_BIN_EXE_wa-ingest"))
        .env("WA_BATCH_SIZE", "4")
        .env("WA_SHUTDOWN_GRACE", "10s")
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the wa-ingest binary");
    let output = collect_output(&mut child);

    eventually(
        "the worker to be mid-stream",
        Duration::from_secs(30),
        || async {
            match stored_rows(&env).await.0 {
                0 => Err("nothing stored yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let pid = child.id().expect("running").to_string();
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited within the grace period")
        .expect("exit status");
    let took = signalled.elapsed();
    assert!(status.success(), "clean exit: {status}");
    let stored_at_exit = stored_rows(&env).await;
    println!(
        "worker exited {took:?} after SIGTERM with {stored_at_exit:?} rows of ({total}, {})",
        total * 3
    );

    let output = output.await.expect("the worker's output");
    let errors = error_lines(&output);
    assert!(errors.is_empty(), "a clean stop logs no error: {errors:#?}");

    // Whatever it had not finished is still in the queue for the next worker,
    // and nothing it stored: every batch it finished was acked before its
    // channel closed, so the successor meets no event twice.
    let successor = Worker::start(&env, &[]).await;
    wait_rows(&env, (total, total * 3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_rows(&env).await, (total, total * 3));
    assert_eq!(env.queue_depth("dlq").await, 0);
    let metrics = successor.metrics().await;
    let again: f64 = ["duplicate_claim", "duplicate_delivery"]
        .iter()
        .map(|outcome| metric_sum(&metrics, "wa_events_total", &[("outcome", outcome)]))
        .sum();
    assert_eq!(
        again, 0.0,
        "events the stopped worker stored came back to its successor"
    );
    successor.stop().await;
}
