//! RabbitMQ, Redis and PostgreSQL over TLS, each a server of the test's own
//! with a certificate from a CA made for the test.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wa_broker::BrokerArgs;
use wa_e2e::payloads::{mixed, mixed_each, post_signed};
use wa_e2e::roles::{WorkerServers, parse};
use wa_e2e::servers::{PostgresTls, RabbitCluster, RedisTls};
use wa_e2e::sockets::nodelay_of_connections_to;
use wa_e2e::tls::{Ca, PemDir};
use wa_e2e::{Receiver, TestEnv, Worker, eventually};
use wa_store::DatabaseArgs;
use wa_worker::RedisArgs;
use wa_worker::claim::{Claim, ClaimConfig, Claims, FailMode};
use wa_worker::redis_link::RedisTarget;

fn claims(env: &TestEnv, redis_url: &str, extra: &[&str]) -> Claims {
    let mut args = vec!["--redis-url".to_owned(), redis_url.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let target = RedisTarget::from_args(&parse::<RedisArgs>(args)).expect("Redis settings");
    Claims::new(
        target,
        env.namespace.clone(),
        ClaimConfig {
            lease: Duration::from_secs(60),
            done_ttl: Duration::from_secs(24 * 3600),
            fail_mode: FailMode::Closed,
            timeout: Duration::from_secs(2),
        },
    )
}

#[tokio::test]
async fn claims_work_over_redis_tls_and_an_unknown_ca_is_refused_naming_the_variable() {
    let env = TestEnv::new().await;
    let ca = Ca::new("wa test Redis CA");
    let redis = RedisTls::start(&ca);
    let pem = PemDir::new();
    let ca_file = pem.write("redis-ca.pem", &ca.pem());

    // A worker whose claims fail closed: it stores nothing unless its
    // claims really go through the TLS connection.
    let servers = WorkerServers {
        redis_url: &redis.url(),
        ..WorkerServers::of(&env)
    };
    let worker = Worker::start_with(
        &env,
        servers,
        &["--redis-ca-file", &ca_file, "--claim-fail-mode", "closed"],
    )
    .await;
    worker.wait_ready().await;
    for i in 0..20 {
        let body = mixed(&format!("tlsredis{i}"), 1);
        env.publish_inbound(&body).await;
        env.publish_inbound(&body).await;
    }
    env.settled((20, 60)).await;
    worker.stop().await;

    // The worker left `done` markers: read back over TLS as duplicates.
    let verified = claims(&env, &redis.url(), &["--redis-ca-file", &ca_file]);
    let found = verified
        .claim("probe", &["msg:wamid.tlsredis0.in.0", "msg:never-stored"])
        .await
        .expect("claims over TLS");
    assert_eq!(found, vec![Claim::Done, Claim::Claimed]);

    // A server certificate from a CA the client does not trust is refused,
    // whether the CA file names another CA or none is given.
    let other = Ca::new("some other CA");
    let other_file = pem.write("other-ca.pem", &other.pem());
    for extra in [vec!["--redis-ca-file", other_file.as_str()], vec![]] {
        let refused = claims(&env, &redis.url(), &extra);
        let error = refused
            .claim("probe", &["msg:x"])
            .await
            .expect_err("an unknown CA is refused");
        let chain = wa_core::telemetry::error_chain(error.redis_error());
        eprintln!("refused: {chain}");
        assert!(chain.contains("WA_REDIS_CA_FILE"), "{chain}");
        assert!(chain.contains("REDIS_URL"), "{chain}");
        assert!(
            chain.to_lowercase().contains("certificate"),
            "the cause is the certificate: {chain}"
        );
    }
    // A CA file that is not there stops the worker at start, naming it.
    let missing = RedisTarget::from_args(&parse::<RedisArgs>(vec![
        "--redis-url".into(),
        redis.url(),
        "--redis-ca-file".into(),
        "/nonexistent/ca.pem".into(),
    ]));
    let message = missing.err().expect("missing file refused").to_string();
    assert!(
        message.contains("WA_REDIS_CA_FILE /nonexistent/ca.pem"),
        "{message}"
    );
}

/// Why a broker link with these options cannot connect (it must not).
async fn amqp_refusal(url: &str, options: &[&str]) -> String {
    let mut args = vec!["--amqp-url".to_owned(), url.to_owned()];
    args.extend(options.iter().map(|a| (*a).to_owned()));
    let args = parse::<BrokerArgs>(args);
    let stop = CancellationToken::new();
    let broker = args
        .start("wa test refused", args.topology(), stop.clone())
        .expect("broker settings");
    let refused = broker
        .connected_within(Duration::from_secs(3), &stop)
        .await
        .err()
        .expect("the broker refuses this connection");
    stop.cancel();
    format!("{refused:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_through_a_tls_only_rabbitmq_with_a_client_certificate_and_bad_tls_is_named() {
    let env = TestEnv::new().await;
    let ca = Ca::new("wa test RabbitMQ CA");
    let broker = tokio::task::block_in_place(|| RabbitCluster::start_tls(&ca));
    let url = broker.url(0);
    let pem = PemDir::new();
    let ca_file = pem.write("rabbitmq-ca.pem", &ca.pem());
    let client = ca.client("wa-ingest");
    let cert_file = pem.write("client.crt", &client.cert_pem);
    let key_file = pem.write("client.key", &client.key_pem);
    let tls = [
        "--amqp-ca-file",
        ca_file.as_str(),
        "--amqp-client-cert",
        cert_file.as_str(),
        "--amqp-client-key",
        key_file.as_str(),
    ];

    // The node has no plain listener, so every byte below went over TLS.
    let receiver = Receiver::start(&env, &url, &tls).await;
    let worker = Worker::start_with(
        &env,
        WorkerServers {
            amqp_url: &url,
            ..WorkerServers::of(&env)
        },
        &tls,
    )
    .await;
    worker.wait_ready().await;
    let http = reqwest::Client::new();
    let webhooks = receiver.url("/webhooks/whatsapp");
    for i in 0..20 {
        let body = mixed(&format!("tlsamqp{i}"), 1);
        for _ in 0..2 {
            assert_eq!(post_signed(&http, &webhooks, body.clone()).await, 200);
        }
    }
    eventually(
        "20 payloads stored once each",
        Duration::from_secs(60),
        || async {
            let rows = env.stored_rows().await;
            if rows == (20, 60) {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await;
    let connections =
        tokio::task::block_in_place(|| broker.connections(&["ssl", "peer_cert_subject", "name"]));
    eprintln!("connections: {connections:#?}");
    assert!(
        connections.len() >= 2,
        "the receiver's and the worker's: {connections:?}"
    );
    for connection in &connections {
        assert!(
            connection.starts_with("true\t") && connection.contains("CN=wa-ingest"),
            "TLS with the client certificate: {connection}"
        );
    }
    receiver.stop().await;
    worker.stop().await;

    // What an operator gets wrong, each named in the error.
    let other_ca = pem.write("other-ca.pem", &Ca::new("some other CA").pem());
    let client_only = [
        "--amqp-client-cert",
        cert_file.as_str(),
        "--amqp-client-key",
        key_file.as_str(),
    ];
    let wrong_ca = [&["--amqp-ca-file", other_ca.as_str()][..], &client_only].concat();
    for (case, options) in [
        ("the system's roots", &client_only[..]),
        ("another CA", &wrong_ca[..]),
    ] {
        let error = amqp_refusal(&url, options).await;
        eprintln!("{case}: {error}");
        assert!(error.contains("WA_AMQP_CA_FILE"), "{case}: {error}");
        assert!(error.contains("AMQP_URL amqps://"), "{case}: {error}");
        assert!(!error.contains("guest:guest"), "password hidden: {error}");
    }
    let error = amqp_refusal(&url, &["--amqp-ca-file", ca_file.as_str()]).await;
    eprintln!("no client certificate: {error}");
    assert!(error.contains("WA_AMQP_CLIENT_CERT"), "{error}");
}

#[tokio::test]
async fn the_worker_stores_over_postgres_tls_with_tcp_nodelay_on_every_connection() {
    let env = TestEnv::new().await;
    let ca = Ca::new("wa test PostgreSQL CA");
    let postgres = tokio::task::spawn_blocking(move || PostgresTls::start(&ca))
        .await
        .expect("PostgreSQL with TLS");
    let database_url = postgres.url("wa_tls");
    {
        use sqlx::migrate::MigrateDatabase;
        sqlx::Postgres::create_database(&database_url)
            .await
            .unwrap_or_else(|e| panic!("create the TLS database: {e}\n{}", postgres.log()));
    }
    // The pool exactly as the roles build it.
    let pool = parse::<DatabaseArgs>(vec!["--database-url".into(), database_url.clone()])
        .pool()
        .expect("pool");
    wa_store::migrate(&pool).await.expect("migrations over TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the session uses TLS");

    let servers = WorkerServers {
        database_url: &database_url,
        ..WorkerServers::of(&env)
    };
    let worker = Worker::start_with(&env, servers, &[]).await;
    worker.wait_ready().await;
    let bodies = mixed_each("tlspg", 200);
    env.publish_inbound_all(&bodies).await;
    eventually(
        "200 payloads stored over TLS",
        Duration::from_secs(60),
        || async {
            let stored: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM message_statuses)",
            )
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
            if stored == 800 {
                Ok(())
            } else {
                Err(stored.to_string())
            }
        },
    )
    .await;

    // Every connection to the server, the worker's pool and ours (all in
    // this process), has Nagle's algorithm off; a plain socket opened here
    // for comparison shows that the check reads the real option.
    let control = std::net::TcpStream::connect(("127.0.0.1", postgres.port)).expect("control");
    assert!(
        !control.nodelay().expect("nodelay"),
        "a fresh socket has it off"
    );
    let options = nodelay_of_connections_to(postgres.port);
    let off = options.iter().filter(|on| !**on).count();
    assert!(
        options.len() >= 3,
        "the pools' connections were found: {options:?}"
    );
    assert_eq!(
        off, 1,
        "only the control socket lacks TCP_NODELAY: {options:?}"
    );
    drop(control);

    worker.stop().await;
    pool.close().await;
}
