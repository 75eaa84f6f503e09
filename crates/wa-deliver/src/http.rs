//! The HTTP side of a delivery: one POST through a pooled hyper client whose
//! resolver is the SSRF guard, bounded by a connect timeout, a total
//! timeout and a response body limit. Redirects are not followed: a 3xx is
//! a failed attempt.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::guard::{GuardedResolver, NetGuard};

/// Limits of one request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub response_limit: usize,
}

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Option<u16>,
    pub latency: Duration,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The signed request's headers.
pub struct Signed<'a> {
    pub webhook_id: &'a str,
    pub timestamp: i64,
    pub signature: String,
}

#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    guard: NetGuard,
    limits: HttpLimits,
}

impl Sender {
    pub fn new(guard: NetGuard, limits: HttpLimits) -> std::io::Result<Self> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver(guard.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(limits.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(https);
        Ok(Self {
            client,
            guard,
            limits,
        })
    }

    pub async fn post(&self, url: &str, signed: Signed<'_>, body: Bytes) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.limits.request_timeout,
            self.exchange(url, signed, body),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Failure::new(format!(
                "no answer within {:?} (WA_DELIVER_TIMEOUT)",
                self.limits.request_timeout
            )))
        });
        let latency = started.elapsed();
        match result {
            Ok((status, retry_after)) => Outcome {
                status: Some(status),
                latency,
                error: None,
                retry_after,
            },
            Err(failure) => Outcome {
                status: None,
                latency,
                error: Some(failure.0),
                retry_after: None,
            },
        }
    }

    async fn exchange(
        &self,
        url: &str,
        signed: Signed<'_>,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>), Failure> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| Failure::new(format!("bad URL: {e}")))?;
        // A literal address never reaches the guarded resolver: check it here.
        if let Some(host) = uri.host()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            && let Some(kind) = self.guard.refusal(ip)
        {
            return Err(Failure::new(format!(
                "{ip} is a {kind} address: refused (allow it with WA_DELIVER_ALLOW)"
            )));
        }
        let request = Request::post(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("wa-ingest/", env!("CARGO_PKG_VERSION"))),
            )
            .header("webhook-id", signed.webhook_id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", signed.signature)
            .body(Full::new(body))
            .map_err(|e| Failure::new(format!("cannot build the request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::new(error_chain(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read (and drop) the answer up to the limit so that the connection
        // can be reused; a longer one is cut, and its connection closed.
        let _ = Limited::new(response.into_body(), self.limits.response_limit)
            .collect()
            .await;
        Ok((status, retry_after))
    }
}

struct Failure(String);

impl Failure {
    fn new(text: String) -> Self {
        Self(text)
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    wa_core::telemetry::error_chain(error)
}

/// `Retry-After` as seconds or an HTTP date, at most a day.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(DAY));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(wait.min(DAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
