//! Failovers of real clusters the test starts itself: the RabbitMQ node
//! holding the inbound queue's leader, and a Redis Cluster master, each lost
//! in the middle of Meta's traffic.

use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use wa_e2e::roles::WorkerServers;
use wa_e2e::servers::{RabbitCluster, RedisCluster};
use wa_e2e::stream::{Stream, every_accepted_payload_is_stored, stored_exactly_once};
use wa_e2e::{Receiver, TestEnv, Worker, eventually, metric_sum};

const PAYLOADS: usize = 3_000;

async fn ready(addr: std::net::SocketAddr) -> bool {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_rabbitmq_node_of_the_queue_leader_loses_nothing_and_doubles_nothing() {
    let started = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(|| RabbitCluster::start(3))
        .await
        .expect("cluster");
    eprintln!("3-node RabbitMQ cluster up in {:?}", started.elapsed());
    let mut env = TestEnv::on_broker(&cluster.url(0)).await;
    let inbound = env.queue("inbound");
    let leader = cluster
        .leader_of(&inbound)
        .unwrap_or_else(|why| panic!("no leader for {inbound}: {why}"));
    // Every role starts on the leader's node, so losing it forces them all
    // to walk to the next node of AMQP_URL.
    let nodes = cluster.urls_from(leader);
    let receiver = Receiver::start(&env, &nodes, &[]).await;
    let servers = WorkerServers {
        amqp_url: &nodes,
        ..WorkerServers::of(&env)
    };
    let workers = [
        Worker::start_with(&env, servers, &[]).await,
        Worker::start_with(
            &env,
            WorkerServers {
                amqp_url: &nodes,
                ..WorkerServers::of(&env)
            },
            &[],
        )
        .await,
    ];
    for worker in &workers {
        worker.wait_ready().await;
    }

    let stream = Stream::new("rmq", PAYLOADS);
    let url = receiver.url("/webhooks/whatsapp");
    let send = stream.send_twice(&url, Duration::from_millis(8));
    let disrupt = async {
        stream.reached(0.25).await;
        let stopped = Instant::now();
        tokio::task::block_in_place(|| cluster.kill(leader));
        eprintln!("killed node {leader}, the leader of {inbound}");
        let survivors_lead = eventually(
            "a new leader on a surviving node",
            Duration::from_secs(60),
            || async {
                let found = tokio::task::block_in_place(|| cluster.leader_of(&inbound))?;
                if found == leader {
                    Err("still the lost node".to_owned())
                } else {
                    Ok(found)
                }
            },
        )
        .await;
        eventually(
            "receiver and workers reconnected",
            Duration::from_secs(60),
            || async {
                let mut all = ready(receiver.addr).await;
                for worker in &workers {
                    all &= ready(worker.ops_addr).await;
                }
                if all {
                    Ok(())
                } else {
                    Err("not ready".to_owned())
                }
            },
        )
        .await;
        eprintln!(
            "leader moved to node {survivors_lead}; roles ready again {:?} after the loss",
            stopped.elapsed()
        );
        stream.reached(0.5).await;
        tokio::task::block_in_place(|| cluster.restart(leader));
        eprintln!("node {leader} restarted and rejoined");
        survivors_lead
    };
    let (first, survivors_lead) = tokio::join!(send, disrupt);
    eprintln!(
        "first pass: {} of {PAYLOADS} payloads accepted, {} answers not 200",
        first.accepted.iter().filter(|a| **a).count(),
        first.refused
    );

    // The test's own connection may have been on the lost node.
    env.amqp = Connection::connect(
        &cluster.url(survivors_lead),
        ConnectionProperties::default(),
    )
    .await
    .expect("a surviving node");
    every_accepted_payload_is_stored(&env, &stream, &first).await;
    let redelivered = stream.redeliver_refused(&url, &first).await;
    eprintln!("redelivered {redelivered} refused payloads");
    stored_exactly_once(&env, PAYLOADS).await;

    receiver.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_redis_cluster_master_loses_nothing_and_doubles_nothing() {
    let started = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    eprintln!(
        "Redis Cluster (3 masters, 3 replicas) up in {:?}",
        started.elapsed()
    );
    let env = TestEnv::new().await;
    let seeds = cluster.seed_urls();
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let servers = WorkerServers {
            redis_url: &seeds,
            ..WorkerServers::of(&env)
        };
        // The default command time limit (the suite's workers use 500 ms):
        // a batch's claims go out as single-key commands to three masters.
        let worker = Worker::start_with(
            &env,
            servers,
            &["--redis-cluster", "true", "--redis-timeout", "2s"],
        )
        .await;
        worker.wait_ready().await;
        workers.push(worker);
    }

    let stream = Stream::new("rcl", PAYLOADS);
    let url = receiver.url("/webhooks/whatsapp");
    let send = stream.send_twice(&url, Duration::from_millis(5));
    let disrupt = async {
        stream.reached(0.3).await;
        let mut before = 0.0;
        for worker in &workers {
            before += metric_sum(&worker.metrics().await, "wa_claim_fail_open_total", &[]);
        }
        eprintln!("claims failed open before the failover: {before}");
        let master = cluster.masters()[0];
        tokio::task::block_in_place(|| cluster.kill(master));
        let lost = Instant::now();
        tokio::task::block_in_place(|| cluster.wait_failed_over());
        eprintln!(
            "killed master {master}; its replica took over after {:?}",
            lost.elapsed()
        );
    };
    let (first, ()) = tokio::join!(send, disrupt);
    assert_eq!(first.refused, 0, "the broker was up: every POST accepted");
    stored_exactly_once(&env, PAYLOADS).await;

    let mut fail_open = 0.0;
    for worker in &workers {
        fail_open += metric_sum(&worker.metrics().await, "wa_claim_fail_open_total", &[]);
    }
    let markers = cluster.count_keys(&format!("{}:claim:*", env.namespace));
    eprintln!(
        "claims failed open during the failover: {fail_open}; claim keys in the cluster: {markers}"
    );
    assert!(markers > 0, "claims went to the cluster");
    for worker in workers {
        worker.stop().await;
    }
    receiver.stop().await;
}
