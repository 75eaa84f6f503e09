//! Redis and PostgreSQL over TLS, each a server of the test's own with a
//! certificate from a CA made for the test.

use std::time::Duration;

use wa_e2e::payloads::{mixed, mixed_each};
use wa_e2e::roles::{WorkerServers, parse};
use wa_e2e::servers::{PostgresTls, RedisTls};
use wa_e2e::sockets::nodelay_of_connections_to;
use wa_e2e::tls::{Ca, PemDir};
use wa_e2e::{TestEnv, Worker, eventually};
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
