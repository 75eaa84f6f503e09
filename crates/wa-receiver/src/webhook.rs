//! `GET` and `POST /webhooks/whatsapp`, plus the operator endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wa_broker::{Broker, Outgoing, headers};
use wa_core::SecretString;
use wa_core::telemetry::error_chain;

use crate::body::{BodyBudget, BodyError, BodyRules, RateDeadline, read_body};
use crate::config::ReceiverConfig;
use crate::connection::{CloseReason, ConnState};
use crate::server::ConnContext;
use crate::signature::{SIGNATURE_HEADER, SignatureVerifier};
use crate::tls::ClientAuth;

/// Meta's challenge is a short number; anything longer is not echoed.
const MAX_CHALLENGE_LEN: usize = 1024;

pub(crate) struct AppState {
    verifier: SignatureVerifier,
    verify_token: SecretString,
    broker: Broker,
    /// The exchange webhooks are published to.
    inbound: String,
    /// Verified requests waiting for the broker.
    in_flight: Semaphore,
    budget: BodyBudget,
    body_rules: BodyRules,
    /// Set when the webhook route demands a client certificate.
    client_auth: Option<ClientAuth>,
    metrics: WebhookMetrics,
}

/// The webhook's metric handles, looked up once: `counter!` with a label
/// resolves its handle in the registry on every call.
struct WebhookMetrics {
    /// `wa_webhook_requests_total`, one per [`Outcome`] in [`Outcome::ALL`] order.
    requests: [metrics::Counter; Outcome::ALL.len()],
    publish_confirm: metrics::Histogram,
}

impl WebhookMetrics {
    fn register() -> Self {
        // The recorder must be installed before handles are taken from it.
        let _ = wa_core::ops::metrics_handle();
        Self {
            requests: Outcome::ALL.map(|outcome| {
                metrics::counter!("wa_webhook_requests_total", "outcome" => outcome.label())
            }),
            publish_confirm: metrics::histogram!("wa_publish_confirm_duration_seconds"),
        }
    }

    fn answer(&self, outcome: Outcome) -> Response {
        self.requests[outcome as usize].increment(1);
        outcome.into_response()
    }
}

impl AppState {
    pub(crate) fn new(
        config: &ReceiverConfig,
        broker: Broker,
        client_auth: Option<ClientAuth>,
    ) -> Self {
        Self {
            verifier: SignatureVerifier::new(config.app_secret.secrets.clone()),
            verify_token: config.verify_token.clone(),
            inbound: broker.topology().inbound(),
            broker,
            in_flight: Semaphore::new(config.max_in_flight as usize),
            budget: BodyBudget::new(config.body_buffer),
            body_rules: BodyRules {
                limit: usize::try_from(config.body_limit).unwrap_or(usize::MAX),
                initial: config.edge.body_timeout,
                min_rate: config.edge.body_min_rate,
                max_duration: config.edge.body_max_duration,
            },
            client_auth,
            metrics: WebhookMetrics::register(),
        }
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let broker = state.broker.clone();
    let readiness = move || broker.check_connected();
    let mut webhook = get(verify).post(receive);
    if state.client_auth.is_some() {
        // Only then: the layer costs every request a boxed service and future.
        webhook = webhook.route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_client_certificate,
        ));
    }
    Router::new()
        .route("/webhooks/whatsapp", webhook)
        .with_state(state)
        .merge(wa_core::ops::router(Arc::new(readiness)))
}

/// What became of a POST, as the metric label and the HTTP answer.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
enum Outcome {
    Accepted,
    Unauthorized,
    /// No client certificate, or not the required one (mTLS only).
    Forbidden,
    BadRequest,
    /// The body missed its deadline.
    Timeout,
    TooLarge,
    Unavailable,
}

impl Outcome {
    /// Every outcome, in declaration order (the index of each is `outcome as usize`).
    const ALL: [Outcome; 7] = [
        Outcome::Accepted,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::BadRequest,
        Outcome::Timeout,
        Outcome::TooLarge,
        Outcome::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::Timeout => "timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted => StatusCode::OK,
            Outcome::Unauthorized => StatusCode::UNAUTHORIZED,
            Outcome::Forbidden => StatusCode::FORBIDDEN,
            Outcome::Timeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::BadRequest => StatusCode::BAD_REQUEST,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The HTTP answer only: [`WebhookMetrics::answer`] counts it too.
impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let body = match self {
            Outcome::Accepted => "ok",
            Outcome::Unauthorized => "invalid signature",
            Outcome::Forbidden => "client certificate required",
            Outcome::Timeout => "body too slow",
            Outcome::BadRequest => "body is not JSON",
            Outcome::TooLarge => "body too large",
            Outcome::Unavailable => "cannot enqueue now, retry later",
        };
        let mut response = (self.status(), body).into_response();
        if matches!(self, Outcome::Timeout | Outcome::TooLarge) {
            // What is left of the body is not worth reading.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

async fn verify(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mode = params.get("hub.mode").map(String::as_str);
    let token = params.get("hub.verify_token").map(String::as_bytes);
    let challenge = params.get("hub.challenge");
    let token_ok = token.is_some_and(|t| same_secret(t, state.verify_token.expose().as_bytes()));
    match (mode, challenge) {
        (Some("subscribe"), Some(challenge))
            if token_ok && challenge.len() <= MAX_CHALLENGE_LEN =>
        {
            tracing::info!("webhook verification handshake accepted");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                challenge.clone(),
            )
                .into_response()
        }
        _ => {
            tracing::warn!("webhook verification handshake refused");
            (StatusCode::FORBIDDEN, "verification failed").into_response()
        }
    }
}

/// Compares digests so the time taken says nothing about the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    Sha256::digest(given) == Sha256::digest(expected)
}

/// With WA_TLS_CLIENT_CA, the webhook route answers only clients whose
/// certificate the handshake verified (and that carry WA_TLS_CLIENT_CN).
async fn require_client_certificate(
    State(state): State<Arc<AppState>>,
    connection: Option<Extension<ConnContext>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &state.client_auth {
        let admitted = connection.is_some_and(|Extension(c)| auth.admits(&c.identity));
        if !admitted {
            tracing::warn!("webhook route refused: no acceptable client certificate");
            return state.metrics.answer(Outcome::Forbidden);
        }
    }
    next.run(request).await
}

/// Checks what the head says before reading a byte of the body (a missing
/// or malformed signature, an announced length over the limit), then reads
/// the body under its deadline and budget while hashing it, and only once
/// the signature holds checks the JSON and publishes.
///
/// Its span is at debug level: at the default level a span per request
/// cost a tenth of the receiver's CPU (the JSON log format writes out its
/// fields as they are recorded), and every warning below names what it is
/// about itself.
#[tracing::instrument(
    name = "webhook",
    level = "debug",
    skip_all,
    fields(bytes = tracing::field::Empty, message_id = tracing::field::Empty)
)]
async fn receive(
    State(state): State<Arc<AppState>>,
    connection: Option<Extension<ConnContext>>,
    request: Request,
) -> Response {
    let outcome = receive_outcome(&state, connection, request).await;
    state.metrics.answer(outcome)
}

async fn receive_outcome(
    state: &AppState,
    connection: Option<Extension<ConnContext>>,
    request: Request,
) -> Outcome {
    let head_done = tokio::time::Instant::now();
    let (parts, body) = request.into_parts();
    let rules = &state.body_rules;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > rules.limit as u64) {
        return Outcome::TooLarge;
    }
    let signature = parts.headers.get(SIGNATURE_HEADER);
    let mut check = match state.verifier.start(signature.map(|v| v.as_bytes())) {
        Ok(check) => check,
        Err(error) => {
            tracing::warn!(%error, "webhook refused before its body");
            return Outcome::Unauthorized;
        }
    };
    let declared = declared.and_then(|length| usize::try_from(length).ok());
    let deadline = RateDeadline::new(head_done, rules);
    let sheddable = connection
        .as_ref()
        .map(|c| SheddableWhileReading::new(&c.state));
    let body = match read_body(body, declared, rules, deadline, &state.budget, &mut check).await {
        Ok(body) => body,
        Err(error) => return body_failure(error, connection.as_ref()),
    };
    drop(sheddable);
    tracing::Span::current().record("bytes", body.bytes.len());
    if let Err(error) = check.finish() {
        tracing::warn!(%error, bytes = body.bytes.len(), "webhook refused");
        return Outcome::Unauthorized;
    }
    if !is_json(&body.bytes) {
        tracing::warn!(bytes = body.bytes.len(), "signed webhook body is not JSON");
        return Outcome::BadRequest;
    }
    let Ok(_in_flight) = state.in_flight.try_acquire() else {
        tracing::warn!("too many webhooks waiting for the broker; shedding load");
        return Outcome::Unavailable;
    };
    enqueue(state, &body.bytes, signature.map(|v| v.as_bytes())).await
}

/// Whether `body` is one JSON text. JSON is UTF-8 as a whole (RFC 8259,
/// section 8.1), and serde checks no bytes inside the strings it skips: the
/// whole body is checked first, which for ASCII costs a fraction of the skip.
fn is_json(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
}

/// Marks the connection sheddable at the cap while its unverified body
/// arrives, and not after (also when the read ends early).
struct SheddableWhileReading<'a>(&'a Arc<ConnState>);

impl<'a> SheddableWhileReading<'a> {
    fn new(state: &'a Arc<ConnState>) -> Self {
        state.body_reading();
        Self(state)
    }
}

impl Drop for SheddableWhileReading<'_> {
    fn drop(&mut self) {
        self.0.body_read();
    }
}

fn body_failure(error: BodyError, connection: Option<&Extension<ConnContext>>) -> Outcome {
    match error {
        BodyError::TooLarge(_) => Outcome::TooLarge,
        BodyError::TooSlow(bytes) => {
            tracing::warn!(bytes, "webhook body too slow; closing the connection");
            if let Some(Extension(connection)) = connection {
                connection.state.set_close_reason(CloseReason::BodyTimeout);
            }
            Outcome::Timeout
        }
        BodyError::BudgetExhausted => {
            tracing::warn!("body buffer budget exhausted; shedding load");
            Outcome::Unavailable
        }
        BodyError::Read(error) => {
            tracing::debug!(error = %error_chain(&error), "could not read the request body");
            Outcome::BadRequest
        }
    }
}

async fn enqueue(state: &AppState, body: &Bytes, signature: Option<&[u8]>) -> Outcome {
    let mut message_id = [0u8; 64];
    let message_id = body_digest_hex(body, &mut message_id);
    tracing::Span::current().record("message_id", message_id);
    let started = Instant::now();
    let published = state
        .broker
        .publish(Outgoing {
            exchange: &state.inbound,
            routing_key: "",
            body,
            properties: properties(message_id, signature),
        })
        .await;
    state
        .metrics
        .publish_confirm
        .record(started.elapsed().as_secs_f64());
    match published {
        Ok(()) => {
            tracing::debug!(%message_id, bytes = body.len(), "webhook enqueued");
            Outcome::Accepted
        }
        Err(error) => {
            tracing::warn!(%message_id, error = %error_chain(&error), "webhook not enqueued");
            Outcome::Unavailable
        }
    }
}

/// The body's SHA-256 in lowercase hex, written into `out` (no allocation:
/// `hex::encode` builds its string a char at a time).
fn body_digest_hex<'a>(body: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(Sha256::digest(body), out).expect("64 hex digits for 32 bytes");
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

/// The message id is the body's SHA-256, so a redelivered notification keeps
/// its id; the signature header travels along so the body can be re-verified.
fn properties(message_id: &str, signature: Option<&[u8]>) -> BasicProperties {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut table = FieldTable::default();
    table.insert(
        headers::RECEIVED_AT.into(),
        AMQPValue::LongLongInt(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
    );
    if let Some(signature) = signature {
        table.insert(
            headers::SIGNATURE.into(),
            AMQPValue::LongString(LongString::from(signature.to_vec())),
        );
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
        .with_timestamp(now.as_secs())
        .with_headers(table)
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn a_json_text_is_utf8_throughout() {
        assert!(is_json(
            "{\"entry\":[{\"text\":\"ol\\u00e1 é\"}]}".as_bytes()
        ));
        assert!(
            !is_json(b"{\"text\":\"\xff\xfe\"}"),
            "bytes that are not UTF-8 in a string"
        );
        assert!(
            !is_json(b"{\"text\":\"\xc3\"}"),
            "a cut sequence in a string"
        );
        assert!(!is_json(b"\xef\xbb\xbf{}"), "a byte order mark");
        assert!(!is_json(b"{\"a\":1} {}"), "two texts");
        assert!(!is_json(b""));
    }
}
