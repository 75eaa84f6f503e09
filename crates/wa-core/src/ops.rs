//! The operator endpoints every role serves: `/healthz` (the process runs),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_size".into()),
                        SIZE_BUCKETS,
                    )
                })
                .expect("static bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness): keep it.
            let _ = metrics::set_global_recorder(recorder);
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A recorder built with `build_recorder` keeps every histogram sample until
/// upkeep folds it into the buckets, which otherwise happens only when
/// `/metrics` is rendered: a role nobody scrapes grew by 8 bytes a sample
/// (the receiver's RSS +30 % in a 10-minute soak). Upkeep runs on a thread
/// of its own so that it needs no runtime and outlives none.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread: histograms drain only when /metrics is scraped");
    }
}

/// Something that can say whether a role may take traffic.
pub trait Readiness: Send + Sync + 'static {
    /// `Err` carries a short reason shown in the `/readyz` body.
    fn ready(&self) -> Result<(), String>;
}

impl<F> Readiness for F
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    fn ready(&self) -> Result<(), String> {
        self()
    }
}

/// `/healthz`, `/readyz` and `/metrics`, to merge into a role's router or to
/// serve on their own.
pub fn router(readiness: Arc<dyn Readiness>) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.ready() {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Serves [`router`] on `listener` until `stop`, for roles whose only HTTP
/// endpoints are the operator ones.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Arc<dyn Readiness>,
    stop: tokio_util::sync::CancellationToken,
) {
    if let Err(error) = axum::serve(listener, router(readiness))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %crate::telemetry::error_chain(&error), "ops server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without upkeep, a role that nobody scrapes keeps every histogram
    /// sample; the recorder starts its own.
    #[test]
    fn the_recorder_drains_histograms_without_a_scrape() {
        let _handle = metrics_handle();
        // A new thread takes its name once it runs: look until it has.
        let mut threads = Vec::new();
        for _ in 0..200 {
            threads = std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect();
            if threads.iter().any(|name| name == "metrics-upkeep") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("no metrics-upkeep thread among {threads:?}");
    }
}
