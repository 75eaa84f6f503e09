//! TLS in the receiver, and Meta's client certificate (mTLS): only a client
//! with a certificate from the configured CA and the configured common name
//! can send a webhook; probes and scrapers still reach `/healthz` (over TLS
//! without a certificate, or over the plain ops listener).

use wa_e2e::payloads;
use wa_e2e::roles::VERIFY_TOKEN;
use wa_e2e::tls::{Ca, PemDir, client_config, request};
use wa_e2e::{Receiver, TestEnv};

const META_CN: &str = "client.webhooks.fbclientcerts.com";

/// A receiver terminating TLS with a certificate from `pki`, plus `extra`
/// options; the PEM folder lives as long as the test holds it.
async fn tls_receiver(env: &TestEnv, pki: &Ca, files: &PemDir, extra: &[&str]) -> Receiver {
    let server = pki.server();
    let cert = files.write("server.pem", &server.cert_pem);
    let key = files.write("server.key", &server.key_pem);
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Receiver::start_with_ops(env, &args).await
}

fn signed_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("x-hub-signature-256", payloads::signature(body)),
    ]
}

#[tokio::test]
async fn mutual_tls_admits_only_the_configured_ca_and_common_name() {
    let env = TestEnv::new().await;
    let pki = Ca::new("wa-ingest test server CA");
    let client_ca = Ca::new("test stand-in for Meta's client CA");
    let other_ca = Ca::new("someone else's CA");
    let files = PemDir::new();
    let ca = files.write("client-ca.pem", &client_ca.pem());
    let receiver = tls_receiver(
        &env,
        &pki,
        &files,
        &["--tls-client-ca", &ca, "--tls-client-cn", META_CN],
    )
    .await;
    let addr = receiver.addr;
    let post = |config| async move {
        let body = payloads::mixed(&uuid_tag(), 1);
        let headers = signed_headers(&body);
        request(addr, config, "POST", "/webhooks/whatsapp", body, &headers).await
    };

    let meta = client_ca.client(META_CN);
    assert_eq!(
        post(client_config(&pki, Some(&meta))).await.map(|r| r.0),
        Ok(200),
        "the right CA and common name"
    );

    let anonymous = post(client_config(&pki, None)).await;
    assert_eq!(anonymous.map(|r| r.0), Ok(403), "no client certificate");

    let wrong_cn = client_ca.client("client.example.com");
    assert_eq!(
        post(client_config(&pki, Some(&wrong_cn)))
            .await
            .map(|r| r.0),
        Ok(403),
        "the right CA, the wrong common name"
    );

    let stranger = other_ca.client(META_CN);
    let refused = post(client_config(&pki, Some(&stranger))).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA fails the handshake: {refused:?}"
    );

    // The verification handshake demands the certificate too.
    let verify = format!(
        "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42"
    );
    let get = |config| request(receiver.addr, config, "GET", &verify, Vec::new(), &[]);
    assert_eq!(
        get(client_config(&pki, Some(&meta))).await,
        Ok((200, "42".to_owned()))
    );
    assert_eq!(get(client_config(&pki, None)).await.map(|r| r.0), Ok(403));

    // Probes: over TLS without a certificate, and over the plain ops listener.
    let healthz = request(
        receiver.addr,
        client_config(&pki, None),
        "GET",
        "/healthz",
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(healthz.map(|r| r.0), Ok(200));
    let ops = receiver.ops_addr.expect("ops listener");
    let plain = reqwest::get(format!("http://{ops}/healthz"))
        .await
        .expect("plain /healthz");
    assert_eq!(plain.status().as_u16(), 200);
    let not_here = reqwest::get(format!("http://{ops}/webhooks/whatsapp"))
        .await
        .expect("plain webhook route");
    assert_eq!(
        not_here.status().as_u16(),
        404,
        "the ops listener serves no webhooks"
    );
    // Plain HTTP on the TLS port gets nowhere.
    let plain_on_tls = reqwest::get(receiver.url("/healthz")).await;
    assert!(plain_on_tls.is_err() || !plain_on_tls.expect("answer").status().is_success());

    assert_eq!(
        env.queue_depth("inbound").await,
        1,
        "only the webhook with Meta's certificate"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn tls_without_client_certificates_serves_webhooks_to_any_client() {
    let env = TestEnv::new().await;
    let pki = Ca::new("wa-ingest test server CA");
    let files = PemDir::new();
    let receiver = tls_receiver(&env, &pki, &files, &[]).await;
    let body = payloads::mixed("tls", 1);
    let headers = signed_headers(&body);
    let answer = request(
        receiver.addr,
        client_config(&pki, None),
        "POST",
        "/webhooks/whatsapp",
        body,
        &headers,
    )
    .await;
    assert_eq!(answer, Ok((200, "ok".to_owned())));
    assert_eq!(env.queue_depth("inbound").await, 1);
    receiver.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_receiver_naming_the_variable() {
    let env = TestEnv::new().await;
    let files = PemDir::new();
    let junk = files.write("junk.pem", "not a certificate");
    let config: wa_receiver::ReceiverConfig = wa_e2e::roles::parse(
        [
            "--namespace",
            env.namespace.as_str(),
            "--app-secret",
            "s",
            "--verify-token",
            "t",
            "--tls-cert",
            &junk,
            "--tls-key",
            &junk,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let error = wa_receiver::run(listener, config, Default::default())
        .await
        .expect_err("refuses to start");
    assert!(format!("{error:#}").contains("WA_TLS_CERT"), "{error:#}");
}

fn uuid_tag() -> String {
    format!("tls{}", rand::random::<u32>())
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_the_header_timeout() {
    let env = TestEnv::new().await;
    let pki = Ca::new("wa-ingest test server CA");
    let files = PemDir::new();
    let receiver = tls_receiver(&env, &pki, &files, &["--header-timeout", "1s"]).await;
    let mut silent = wa_e2e::edge::connect(receiver.addr).await;
    let (_, closed) =
        wa_e2e::edge::read_until_closed(&mut silent, std::time::Duration::from_secs(10)).await;
    assert!(closed, "closed by the handshake deadline");
    assert_eq!(
        wa_e2e::metric_sum(
            &receiver.metrics().await,
            "wa_receiver_connections_closed_total",
            &[("reason", "tls_handshake_timeout")]
        ),
        1.0
    );
    receiver.stop().await;
}
