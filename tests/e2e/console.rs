//! The operator console in a real headless Chromium: sign in, the overview
//! against the database and the broker, the DLQ's filters and actions, a
//! conversation; and what it refuses. Screenshots go to
//! target/console-screenshots/ (test artifacts).

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use wa_e2e::browser::Browser;
use wa_e2e::payloads::{PHONE_NUMBER_ID, envelope, text_message};
use wa_e2e::roles::CONSOLE_TOKEN;
use wa_e2e::{Console, TestEnv, Worker, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// A dead letter as a worker writes it, with its message id.
fn dead_letter(id: &str, class: &str, error: &str) -> BasicProperties {
    wa_e2e::dead_letter(class, error).with_message_id(id.into())
}

/// A webhook of one text message for another business number.
fn for_number(phone_number_id: &str, wamid: &str) -> Vec<u8> {
    let body = envelope(&[text_message(wamid, "15550009999", 1_700_000_100)], &[]);
    String::from_utf8(body)
        .expect("UTF-8")
        .replace(PHONE_NUMBER_ID, phone_number_id)
        .into_bytes()
}

async fn wait_for_depth(env: &TestEnv, queue: &str, depth: u32) {
    env.wait_for_depth(queue, depth).await;
}

async fn wamid_rows(env: &TestEnv, wamid: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE wamid = $1")
        .bind(wamid)
        .fetch_one(&env.db)
        .await
        .expect("count")
}

/// An HTTP subscriber for every event type, as `wa-ingest endpoints add` stores it.
async fn add_endpoint(env: &TestEnv) -> i64 {
    wa_deliver::store::add(
        &env.db,
        &wa_deliver::store::NewEndpoint {
            url: "https://hooks.example.com/wa?token=hidden".to_owned(),
            description: "the CRM".to_owned(),
            secret: wa_deliver::sign::SigningSecret::generate().to_whsec(),
            event_types: vec!["message.created".to_owned(), "message.status".to_owned()],
            phone_number_ids: Vec::new(),
            rate_limit: None,
            max_in_flight: 8,
        },
    )
    .await
    .expect("add endpoint")
}

/// What a deliverer leaves behind: one event delivered after a 503, one
/// waiting after a timeout (so a backlog of 1 and a success rate of 1/3).
async fn record_deliveries(env: &TestEnv, endpoint: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries (endpoint_id, event_id, event_type, conversation, sequence, payload, state, delivered_at)
         VALUES ({endpoint}, 'evt-delivered', 'message.created', '15550001234', 1, '{{}}', 'delivered', now()),
                ({endpoint}, 'evt-waiting', 'message.created', '15550001234', 2, '{{}}', 'pending', NULL);
         INSERT INTO delivery_lanes (endpoint_id, conversation, pending, next_attempt_at)
         VALUES ({endpoint}, '15550001234', 1, now() + interval '1 minute');
         INSERT INTO delivery_attempts (delivery_id, endpoint_id, event_id, status_code, latency_ms, error, next_attempt_at)
         SELECT id, {endpoint}, event_id, 503, 12.5, 'HTTP 503 from the receiver', now() FROM deliveries WHERE event_id = 'evt-delivered' AND endpoint_id = {endpoint};
         INSERT INTO delivery_attempts (delivery_id, endpoint_id, event_id, status_code, latency_ms, error, next_attempt_at)
         SELECT id, {endpoint}, event_id, 200, 8.0, NULL, NULL FROM deliveries WHERE event_id = 'evt-delivered' AND endpoint_id = {endpoint};
         INSERT INTO delivery_attempts (delivery_id, endpoint_id, event_id, status_code, latency_ms, error, next_attempt_at)
         SELECT id, {endpoint}, event_id, NULL, 10000.0, 'timed out after 10s', now() + interval '1 minute' FROM deliveries WHERE event_id = 'evt-waiting' AND endpoint_id = {endpoint};"
    )))
    .execute(&env.db)
    .await
    .expect("record deliveries");
}

async fn endpoint_state(env: &TestEnv, id: i64) -> (bool, Option<String>) {
    sqlx::query_as("SELECT enabled, disabled_reason FROM delivery_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&env.db)
        .await
        .expect("endpoint")
}

#[tokio::test]
async fn an_operator_works_the_console_in_a_real_browser() {
    let env = TestEnv::new().await;
    // Stored traffic: three contacts' messages, no relay (so the outbox holds them).
    let worker = Worker::start(&env, &[]).await;
    let stored: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            envelope(
                &[
                    text_message(
                        &format!("wamid.chat.{i}.a"),
                        "15550001234",
                        1_700_000_000 + i,
                    ),
                    text_message(
                        &format!("wamid.chat.{i}.b"),
                        &format!("1555000200{i}"),
                        1_700_000_000 + i,
                    ),
                ],
                &[],
            )
        })
        .collect();
    env.publish_inbound_all(&stored).await;
    env.publish_inbound_all(&[
        for_number("999", "wamid.other.1"),
        for_number("999", "wamid.other.2"),
    ])
    .await;
    env.settled((8, 0)).await;
    // The DLQ: two transient (new messages), two permanent, one for another number.
    let dlq = env.queue("dlq");
    let transient = [
        (
            "t1",
            envelope(
                &[text_message("wamid.dead.1", "15550007777", 1_700_000_500)],
                &[],
            ),
        ),
        (
            "t2",
            envelope(
                &[text_message("wamid.dead.2", "15550007777", 1_700_000_501)],
                &[],
            ),
        ),
    ];
    for (id, body) in &transient {
        env.publish_with(
            "",
            &dlq,
            body,
            dead_letter(id, "transient", "deadlock detected (40P01)"),
        )
        .await;
    }
    env.publish_with(
        "",
        &dlq,
        b"not json at all",
        dead_letter("p1", "permanent", "not JSON: expected value"),
    )
    .await;
    env.publish_with(
        "",
        &dlq,
        &for_number("555000111", "wamid.dead.other"),
        dead_letter(
            "p2",
            "permanent",
            "value too long for type character varying",
        ),
    )
    .await;
    wait_for_depth(&env, "dlq", 4).await;

    // The console reads the worker's metrics every second.
    let scrape = format!("http://{}/metrics", worker.ops_addr);
    let console = Console::start(&env, &["--console-scrape", &scrape, "--refresh", "1s"]).await;
    let browser = Browser::start().await;

    // Not signed in: any page leads to the sign-in form; a wrong token is refused.
    browser.goto(&console.url("/dlq")).await;
    assert_eq!(browser.path().await, "/login");
    browser.fill("token", "wrong-token-wrong-token-wrong").await;
    browser.click("sign-in").await;
    assert!(browser.text("login-error").await.contains("not valid"));
    browser.screenshot("login").await;
    browser.fill("token", CONSOLE_TOKEN).await;
    browser.click("sign-in").await;
    assert_eq!(browser.path().await, "/");
    assert_eq!(browser.text("operator").await, "alice");
    // Rates need two scrapes.
    eventually("the rates", LIMIT, || async {
        browser.goto(&console.url("/")).await;
        if browser.has("rate-stored").await {
            Ok(())
        } else {
            Err("no rates yet".to_owned())
        }
    })
    .await;
    assert!(
        browser
            .text("paused")
            .await
            .contains("every worker scraped is running")
    );

    // The overview's numbers are the database's and the broker's.
    let number = |text: String| text.trim().to_owned();
    for (id, query) in [
        ("count-messages", "SELECT count(*) FROM messages"),
        ("count-statuses", "SELECT count(*) FROM message_statuses"),
        ("count-contacts", "SELECT count(*) FROM contacts"),
        (
            "outbox-backlog",
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        ),
    ] {
        let shown = number(browser.text(id).await);
        assert_eq!(shown, env.count(query).await.to_string(), "{id}");
    }
    assert_eq!(number(browser.text("outbox-backlog").await), "8");
    for (id, queue) in [("depth-inbound", "inbound"), ("depth-events-0", "events.0")] {
        let shown = number(browser.text(id).await);
        assert_eq!(shown, env.queue_depth(queue).await.to_string(), "{id}");
    }
    assert_eq!(number(browser.text("depth-dlq").await), "4");
    let errors = browser.text("errors").await;
    assert!(
        errors.contains("transient") && errors.contains("permanent"),
        "{errors}"
    );
    browser.screenshot("overview").await;

    // The DLQ: filters by class, error text and phone number id.
    browser.goto(&console.url("/dlq")).await;
    assert_eq!(browser.text("match-count").await, "4");
    browser.select("class", "permanent").await;
    browser.click("apply").await;
    assert_eq!(browser.text("match-count").await, "2");
    browser.select("class", "").await;
    browser.fill("error", "DEADLOCK").await;
    browser.click("apply").await;
    assert_eq!(browser.text("match-count").await, "2");
    browser.fill("error", "").await;
    browser.fill("phone_number_id", "555000111").await;
    browser.click("apply").await;
    assert_eq!(browser.text("match-count").await, "1");
    browser.fill("phone_number_id", "").await;
    browser.fill("since", "1h").await;
    browser.click("apply").await;
    assert_eq!(browser.text("match-count").await, "4");
    browser.screenshot("dlq").await;

    // An entry: headers and events, no payload until asked for.
    browser.goto(&console.url("/dlq/t1")).await;
    assert!(browser.text("detail").await.contains("deadlock detected"));
    assert!(browser.text("events").await.contains("msg:wamid.dead.1"));
    assert!(
        !browser.source().await.contains("message wamid.dead.1"),
        "no message text before the click"
    );
    browser.click("show-payload").await;
    assert!(
        browser
            .text("payload")
            .await
            .contains("message wamid.dead.1")
    );
    browser.screenshot("dlq-entry").await;

    // Replay it: stored once.
    browser.click("replay-one").await;
    assert!(
        browser.text("outcome").await.contains("Replayed t1"),
        "{}",
        browser.text("outcome").await
    );
    wait_for_depth(&env, "dlq", 3).await;
    eventually("the replayed message stored", LIMIT, || async {
        match wamid_rows(&env, "wamid.dead.1").await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    // Replay the filtered set: the dry-run count first, then the replay.
    browser.goto(&console.url("/dlq?class=transient")).await;
    assert_eq!(browser.text("match-count").await, "1");
    browser.click("replay-filtered").await;
    assert!(
        browser
            .text("dry-run")
            .await
            .contains("Dry run: 1 message(s) match"),
        "{}",
        browser.text("dry-run").await
    );
    assert_eq!(env.queue_depth("dlq").await, 3, "a dry run changes nothing");
    browser.click("confirm").await;
    assert!(
        browser
            .text("outcome")
            .await
            .contains("Replayed 1 message(s)")
    );
    eventually("the filtered replay stored", LIMIT, || async {
        match wamid_rows(&env, "wamid.dead.2").await {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    // Every replayed message is stored once.
    env.settled((10, 0)).await;
    assert_eq!(wamid_rows(&env, "wamid.dead.1").await, 1);
    worker.stop().await;

    // Purge with confirmation.
    wait_for_depth(&env, "dlq", 2).await;
    browser.goto(&console.url("/dlq")).await;
    browser.fill("older_than", "0s").await;
    browser.click("purge").await;
    assert!(
        browser
            .text("dry-run")
            .await
            .contains("Dry run: 2 message(s)"),
        "{}",
        browser.text("dry-run").await
    );
    wait_for_depth(&env, "dlq", 2).await;
    browser.screenshot("dlq-purge-confirm").await;
    browser.click("confirm").await;
    assert!(
        browser
            .text("outcome")
            .await
            .contains("Purged 2 message(s)")
    );
    wait_for_depth(&env, "dlq", 0).await;

    // A conversation: text hidden until revealed.
    browser.goto(&console.url("/conversation")).await;
    browser.fill("who", "15550001234").await;
    browser.click("look-up").await;
    assert_eq!(browser.text("message-count").await, "3");
    assert!(!browser.source().await.contains("message wamid.chat.0.a"));
    assert!(browser.text("messages").await.contains("hidden"));
    browser.click("reveal").await;
    assert!(
        browser
            .text("messages")
            .await
            .contains("message wamid.chat.0.a")
    );
    browser.screenshot("conversation").await;

    // Subscribers: an endpoint, disabled and enabled again from its page.
    let endpoint = add_endpoint(&env).await;
    record_deliveries(&env, endpoint).await;
    browser.goto(&console.url("/")).await;
    assert_eq!(browser.text("delivery-backlog").await, "1");
    browser.goto(&console.url("/subscribers")).await;
    let row = browser.text(&format!("endpoint-{endpoint}")).await;
    assert!(
        row.contains("https://hooks.example.com/wa") && !row.contains("whsec_"),
        "{row}"
    );
    assert!(
        !browser.source().await.contains("whsec_"),
        "no secret on the page"
    );
    assert!(
        !browser.source().await.contains("token=hidden"),
        "no URL query on the page"
    );
    assert!(
        browser
            .text(&format!("state-{endpoint}"))
            .await
            .contains("enabled")
    );
    browser.screenshot("subscribers").await;
    browser
        .goto(&console.url(&format!("/subscribers/{endpoint}")))
        .await;
    let attempts = browser.text("attempts").await;
    assert!(
        attempts.contains("503") && attempts.contains("HTTP 503 from the receiver"),
        "{attempts}"
    );
    browser.fill("reason", "receiver moving").await;
    browser.click("disable").await;
    assert!(
        browser
            .text("outcome")
            .await
            .contains("disabled (receiver moving)")
    );
    assert_eq!(
        endpoint_state(&env, endpoint).await,
        (false, Some("receiver moving".to_owned()))
    );
    browser.click("back").await;
    assert!(browser.text("state").await.contains("receiver moving"));
    browser.click("enable").await;
    assert!(browser.text("outcome").await.contains("enabled"));
    assert_eq!(endpoint_state(&env, endpoint).await, (true, None));
    browser.click("back").await;
    browser.fill("since", "1h").await;
    browser.click("replay").await;
    assert!(
        browser
            .text("outcome")
            .await
            .contains("Queued 1 delivered event(s)"),
        "{}",
        browser.text("outcome").await
    );
    browser
        .goto(&console.url(&format!("/subscribers/{endpoint}")))
        .await;
    browser.screenshot("subscriber").await;

    // Readable on a phone: the same page at 390 px wide.
    browser.resize(390, 844).await;
    browser.goto(&console.url("/")).await;
    browser.screenshot("overview-phone").await;
    browser.close().await;
    console.stop().await;
}

#[tokio::test]
async fn the_console_refuses_requests_without_the_token_or_the_csrf_token() {
    let env = TestEnv::new().await;
    let console = Console::start(&env, &[]).await;
    let (client, cookie, csrf) = console.signed_in().await;
    let status = |response: reqwest::Response| response.status().as_u16();

    // No session: pages redirect to the sign-in form, actions are refused.
    let page = client.get(console.url("/dlq")).send().await.expect("GET");
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let action = client
        .post(console.url("/dlq/purge"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("older_than", "0s"),
            ("confirm", "yes"),
            ("cutoff", &chrono::Utc::now().to_rfc3339()),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(status(action), 401);

    // A session without the CSRF token, or with another one: refused.
    for form in [
        vec![("older_than", "0s")],
        vec![
            ("csrf", "0".repeat(64).leak() as &str),
            ("older_than", "0s"),
        ],
    ] {
        let refused = client
            .post(console.url("/dlq/purge"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .expect("POST");
        assert_eq!(status(refused), 403);
    }
    // An endpoint action without the CSRF token: refused, nothing changed.
    let endpoint = add_endpoint(&env).await;
    let refused = client
        .post(console.url(&format!("/subscribers/{endpoint}/disable")))
        .header("cookie", &cookie)
        .form(&[("reason", "no token")])
        .send()
        .await
        .expect("POST");
    assert_eq!(status(refused), 403);
    assert_eq!(endpoint_state(&env, endpoint).await, (true, None));
    // The right token, but sent from another site: refused.
    let cross = client
        .post(console.url("/dlq/purge"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str()), ("older_than", "0s")])
        .send()
        .await
        .expect("POST");
    assert_eq!(status(cross), 403);
    // With both: the dry run answers.
    let allowed = client
        .post(console.url("/dlq/purge"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("older_than", "0s")])
        .send()
        .await
        .expect("POST");
    assert_eq!(allowed.status().as_u16(), 200);
    let headers = allowed.headers().clone();
    assert!(
        allowed
            .text()
            .await
            .expect("body")
            .contains("Dry run: 0 message(s)")
    );
    // Safe headers on every page.
    let csp = headers["content-security-policy"].to_str().expect("CSP");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");

    // A token shorter than 24 characters is refused at start, naming the variable.
    let short = wa_e2e::roles::parse::<wa_console::ConsoleConfig>(vec![
        "--console-token".into(),
        "short".into(),
    ]);
    let error = short.validate().expect_err("a short token is refused");
    assert!(error.contains("WA_CONSOLE_TOKEN"), "{error}");
    console.stop().await;
}

/// Failed sign-ins throttle the client that fails, not the operator: ten
/// wrong tokens from 127.0.0.2 make its next try wait (429, even with the
/// right token), and the operator at 127.0.0.1 still signs in.
#[tokio::test]
async fn failed_sign_ins_throttle_the_failing_client_and_not_the_others() {
    let env = TestEnv::new().await;
    let console = Console::start(&env, &[]).await;
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(std::net::IpAddr::from(address))
            .build()
            .expect("client")
    };
    let guesser = from([127, 0, 0, 2]);
    let sign_in = |client: &reqwest::Client, token: &str| {
        client
            .post(console.url("/login"))
            .form(&[("token", token)])
            .send()
    };
    for _ in 0..10 {
        let refused = sign_in(&guesser, "not-the-token-not-the-token")
            .await
            .expect("POST");
        assert_eq!(refused.status().as_u16(), 401);
    }
    let throttled = sign_in(&guesser, CONSOLE_TOKEN).await.expect("POST");
    assert_eq!(
        throttled.status().as_u16(),
        429,
        "the guessing client waits"
    );
    let operator = sign_in(&from([127, 0, 0, 1]), CONSOLE_TOKEN)
        .await
        .expect("POST");
    assert_eq!(operator.status().as_u16(), 303, "another client signs in");
    assert!(operator.headers().contains_key("set-cookie"));
    console.stop().await;
}

/// Render times with 10,000 messages in the DLQ: printed, not asserted.
#[tokio::test]
async fn console_pages_with_ten_thousand_dead_letters() {
    let env = TestEnv::new().await;
    let dlq = env.queue("dlq");
    let bodies: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            envelope(
                &[text_message(
                    &format!("wamid.bulk.{i}"),
                    &format!("1555{:07}", i % 500),
                    1_700_000_000 + i,
                )],
                &[],
            )
        })
        .collect();
    let started = Instant::now();
    for (i, chunk) in bodies.chunks(1000).enumerate() {
        let class = if i % 2 == 0 { "transient" } else { "permanent" };
        env.publish_all_with(
            "",
            &dlq,
            chunk,
            dead_letter("bulk", class, "injected for the render test"),
        )
        .await;
    }
    wait_for_depth(&env, "dlq", 10_000).await;
    println!("published 10,000 dead letters in {:?}", started.elapsed());

    let console = Console::start(&env, &[]).await;
    let (client, cookie, _) = console.signed_in().await;
    let get = |path: &str| {
        let request = client.get(console.url(path)).header("cookie", &cookie);
        async move {
            let started = Instant::now();
            let response = request.send().await.expect("GET");
            assert_eq!(response.status().as_u16(), 200);
            let body = response.text().await.expect("body");
            (started.elapsed(), body)
        }
    };
    // The first look reads the whole DLQ (every later page uses that read).
    let (cold, body) = get("/dlq").await;
    assert!(body.contains("id=\"dlq-size\">10000<"), "all 10,000 read");
    println!("console: first DLQ page (reads 10,000 messages) {cold:?}");
    for path in [
        "/",
        "/dlq",
        "/dlq?class=permanent",
        "/dlq?error=injected&page=3",
        "/dlq/bulk",
        "/conversation?who=15550000001",
    ] {
        let mut times = Vec::new();
        for _ in 0..7 {
            times.push(get(path).await.0);
        }
        times.sort();
        println!(
            "console render {path:<32} median {:>7.1} ms  max {:>7.1} ms (7 requests, 10,000 in the DLQ)",
            times[3].as_secs_f64() * 1000.0,
            times[6].as_secs_f64() * 1000.0
        );
    }
    console.stop().await;
}

/// The value of the hidden field `name` of a page's form.
fn hidden_field(page: &str, name: &str) -> String {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no hidden field {name} in {page}"))
        .to_owned()
}

/// A DLQ larger than WA_DLQ_SCAN_LIMIT: a dry run that stops at the limit
/// says that at least that many match, and the confirmed action takes no
/// more than the dry run counted (a purge confirmed for 10 of 25 deleted
/// all 25 for good).
#[tokio::test]
async fn confirmed_dlq_actions_take_no_more_than_their_dry_run_counted() {
    let env = TestEnv::new().await;
    let bodies: Vec<Vec<u8>> = (0..25)
        .map(|i| for_number(PHONE_NUMBER_ID, &format!("wamid.capped.{i}")))
        .collect();
    env.publish_all_with(
        "",
        &env.queue("dlq"),
        &bodies,
        dead_letter("capped", "transient", "injected"),
    )
    .await;
    wait_for_depth(&env, "dlq", 25).await;
    let console = Console::start(&env, &["--scan-limit", "10"]).await;
    let (client, cookie, csrf) = console.signed_in().await;
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let request = client
            .post(console.url(path))
            .header("cookie", &cookie)
            .form(&form);
        async move {
            let response = request.send().await.expect("POST");
            assert_eq!(response.status().as_u16(), 200, "{path}");
            response.text().await.expect("body")
        }
    };

    let dry_purge = post(
        "/dlq/purge",
        vec![("csrf", csrf.clone()), ("older_than", "0s".into())],
    )
    .await;
    assert!(
        dry_purge.contains("at least 10 message(s) last failed before"),
        "{dry_purge}"
    );
    let purged = post(
        "/dlq/purge",
        vec![
            ("csrf", csrf.clone()),
            ("confirm", "yes".into()),
            ("cutoff", hidden_field(&dry_purge, "cutoff")),
            ("expected", hidden_field(&dry_purge, "expected")),
        ],
    )
    .await;
    assert!(purged.contains("Purged 10 message(s)"), "{purged}");
    wait_for_depth(&env, "dlq", 15).await;

    let dry_replay = post("/dlq/replay", vec![("csrf", csrf.clone())]).await;
    assert!(
        dry_replay.contains("at least 10 message(s) match"),
        "{dry_replay}"
    );
    let replayed = post(
        "/dlq/replay",
        vec![
            ("csrf", csrf.clone()),
            ("confirm", "yes".into()),
            ("expected", hidden_field(&dry_replay, "expected")),
        ],
    )
    .await;
    assert!(replayed.contains("Replayed 10 message(s)"), "{replayed}");
    wait_for_depth(&env, "dlq", 5).await;
    wait_for_depth(&env, "inbound", 10).await;
    console.stop().await;
}
