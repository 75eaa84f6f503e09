//! `wa-ingest console`: the operator console. Server-rendered pages (no
//! JavaScript) on an operator address of their own: the pipeline at a
//! glance, the DLQ with its safe actions, and one conversation's messages
//! and statuses. Off unless started, and refusing to start without a token.

mod auth;
mod config;
mod conversation;
mod dlq_index;
mod handlers;
mod overview;
mod scrape;
mod subscribers;
mod views;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::Broker;

pub use auth::SESSION_COOKIE;
pub use config::{ConsoleConfig, MIN_TOKEN_LEN};

use crate::auth::Auth;
use crate::dlq_index::DlqIndex;
use crate::scrape::{Counters, Scrape};

/// What every handler shares.
pub(crate) struct Console {
    auth: Auth,
    broker: Broker,
    db: sqlx::PgPool,
    dlq: Arc<DlqIndex>,
    rates: RwLock<Rates>,
    refresh: Duration,
    secure_cookie: bool,
    scan_limit: usize,
    scrape_configured: bool,
}

/// The last scrape and the rates between it and the one before.
#[derive(Default)]
struct Rates {
    last: Option<Scrape>,
    per_second: Option<Counters>,
}

/// Serves the console on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: ConsoleConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let operators = config.operators().map_err(anyhow::Error::msg)?;
    let topology = config
        .broker
        .topology()
        .with_retry_tiers(&config.retry_tiers)
        .with_event_shards(config.event_shards);
    let broker = config
        .broker
        .start("wa-ingest console", topology, shutdown.clone())?;
    let db = config
        .database
        .pool()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let console = Arc::new(Console {
        auth: Auth::new(&operators, config.session_ttl),
        dlq: DlqIndex::new(broker.clone(), config.scan_limit, config.refresh),
        broker,
        db,
        rates: RwLock::new(Rates::default()),
        refresh: config.refresh,
        secure_cookie: config.secure_cookie,
        scan_limit: config.scan_limit,
        scrape_configured: !config.scrape.is_empty(),
    });
    if !config.scrape.is_empty() {
        tokio::spawn(sample_rates(
            console.clone(),
            config.scrape.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, operators = operators.len(), "console listening");
    axum::serve(
        listener,
        handlers::router(console).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("console server failed")
}

/// Scrapes the roles every refresh interval and keeps the rates between
/// the last two scrapes.
async fn sample_rates(console: Arc<Console>, urls: Vec<url::Url>, stop: CancellationToken) {
    let client = scrape::metrics_client();
    let mut ticks = tokio::time::interval(console.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let scrape = scrape::scrape_all(&client, &urls).await;
        let mut rates = console.rates.write().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = &rates.last
            && let (Some(then), Some(now)) = (previous.at, scrape.at)
            && previous.reached > 0
        {
            let seconds = now.duration_since(then).as_secs_f64();
            rates.per_second = Some(scrape.counters.rate_since(&previous.counters, seconds));
        }
        rates.last = Some(scrape);
    }
}
