//! `GET` and `POST /webhooks/whatsapp`, plus the operator endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wa_core::SecretString;
use wa_core::broker::{Broker, Outgoing, headers};
use wa_core::telemetry::error_chain;

use crate::config::ReceiverConfig;
use crate::signature::{SIGNATURE_HEADER, SignatureVerifier};

/// Meta's challenge is a short number; anything longer is not echoed.
const MAX_CHALLENGE_LEN: usize = 1024;

pub(crate) struct AppState {
    verifier: SignatureVerifier,
    verify_token: SecretString,
    broker: Broker,
    in_flight: Semaphore,
    /// KiB of bodies that may be buffered at once.
    buffer_kib: Semaphore,
    body_limit: usize,
}

impl AppState {
    pub(crate) fn new(config: &ReceiverConfig, broker: Broker) -> Self {
        Self {
            verifier: SignatureVerifier::new(config.app_secret.secrets.clone()),
            verify_token: config.verify_token.clone(),
            broker,
            in_flight: Semaphore::new(config.max_in_flight as usize),
            buffer_kib: Semaphore::new(
                usize::try_from(config.body_buffer / 1024).unwrap_or(usize::MAX),
            ),
            body_limit: usize::try_from(config.body_limit).unwrap_or(usize::MAX),
        }
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let broker = state.broker.clone();
    let readiness = move || broker.check_connected();
    Router::new()
        .route(
            "/webhooks/whatsapp",
            get(verify)
                .post(receive)
                .route_layer(middleware::from_fn_with_state(state.clone(), admit)),
        )
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
        .merge(wa_core::ops::router(Arc::new(readiness)))
}

/// What became of a POST, as the metric label and the HTTP answer.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Accepted,
    Unauthorized,
    BadRequest,
    TooLarge,
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted => StatusCode::OK,
            Outcome::Unauthorized => StatusCode::UNAUTHORIZED,
            Outcome::BadRequest => StatusCode::BAD_REQUEST,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        metrics::counter!("wa_webhook_requests_total", "outcome" => self.label()).increment(1);
        let body = match self {
            Outcome::Accepted => "ok",
            Outcome::Unauthorized => "invalid signature",
            Outcome::BadRequest => "body is not JSON",
            Outcome::TooLarge => "body too large",
            Outcome::Unavailable => "cannot enqueue now, retry later",
        };
        (self.status(), body).into_response()
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

/// Takes a request slot and its share of the body buffer before the body is
/// read, so that a flood of large bodies is answered 503 instead of filling
/// memory. The permits are held until the answer.
async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.body_limit;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Outcome::TooLarge.into_response();
    }
    let kib = declared.unwrap_or(limit).min(limit).div_ceil(1024).max(1);
    let admitted = state.in_flight.try_acquire().and_then(|slot| {
        let buffer = state
            .buffer_kib
            .try_acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))?;
        Ok((slot, buffer))
    });
    let Ok(_permits) = admitted else {
        tracing::warn!("too many webhooks in flight; shedding load");
        return Outcome::Unavailable.into_response();
    };
    next.run(request).await
}

async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Outcome {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Outcome::TooLarge;
        }
        Err(rejection) => {
            tracing::debug!(error = %error_chain(&rejection), "could not read the request body");
            return Outcome::BadRequest;
        }
    };
    let signature = headers.get(SIGNATURE_HEADER);
    if let Err(error) = state
        .verifier
        .verify(signature.map(|v| v.as_bytes()), &body)
    {
        tracing::warn!(%error, bytes = body.len(), "webhook refused");
        return Outcome::Unauthorized;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        tracing::warn!(bytes = body.len(), "signed webhook body is not JSON");
        return Outcome::BadRequest;
    }
    enqueue(&state.broker, &body, signature.map(|v| v.as_bytes())).await
}

async fn enqueue(broker: &Broker, body: &Bytes, signature: Option<&[u8]>) -> Outcome {
    let message_id = hex::encode(Sha256::digest(body));
    let inbound = broker.topology().inbound();
    let started = Instant::now();
    let published = broker
        .publish(Outgoing {
            exchange: &inbound,
            routing_key: "",
            body,
            properties: properties(&message_id, signature),
        })
        .await;
    metrics::histogram!("wa_publish_confirm_duration_seconds")
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
