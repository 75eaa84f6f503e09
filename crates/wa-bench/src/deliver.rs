//! The deliverer's stage: events fanned out to one local endpoint that
//! answers 200 at once, delivered by a real `wa-ingest deliver` process;
//! events per second and the deliverer's CPU time per delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wa_store::seed::ReleasedEvent;

use crate::process::{Role, free_addr, micros_per};

/// What the stage measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeliverFigures {
    pub events: u64,
    pub conversations: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// The deliverer's user + system CPU time per delivered event.
    pub cpu_us_per_event: f64,
}

pub(crate) async fn measure(
    wa_ingest: &std::path::Path,
    pool: &sqlx::PgPool,
    database_url: &str,
    events: u64,
    conversations: u64,
) -> anyhow::Result<DeliverFigures> {
    let received = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint_addr = listener.local_addr()?;
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready("")
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    sqlx::query(
        "INSERT INTO delivery_endpoints (url, secrets, max_in_flight) VALUES ($1, ARRAY[$2], 64)",
    )
    .bind(format!("http://{endpoint_addr}/hook"))
    .bind("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    .execute(pool)
    .await?;
    // Released as the relay would: written, then marked published in one
    // statement, which fans them out.
    let per_conversation = events / conversations.max(1);
    let total = per_conversation * conversations;
    let mut events = Vec::new();
    for sequence in 1..=per_conversation {
        for c in 0..conversations {
            let event_id = format!("msg:bench.deliver.c{c}.s{sequence}");
            let contact_key = format!("bench-{c}");
            events.push(ReleasedEvent {
                payload: json!({ "id": event_id, "type": "message.created", "ordering_key": contact_key, "data": { "text": "hello" } }),
                event_id,
                event_type: "message.created".to_owned(),
                contact_key,
                sequence: i64::try_from(sequence).unwrap_or(0),
            });
        }
    }
    wa_store::seed::release(pool, &events).await?;

    let addr = free_addr()?;
    let env = HashMap::from([
        ("DATABASE_URL", database_url.to_owned()),
        ("METRICS_ADDR", addr.to_string()),
        ("WA_DELIVER_ALLOW", "127.0.0.0/8".to_owned()),
        ("WA_DELIVER_POLL", "20ms".to_owned()),
    ]);
    let deliverer = Role::start(wa_ingest, &["deliver"], &env, addr).await?;
    let started = Instant::now();
    let mut first = None;
    while received.load(Ordering::Relaxed) < total {
        if first.is_none() && received.load(Ordering::Relaxed) > 0 {
            first = Some(Instant::now());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the deliverer did not finish within 5 minutes ({} of {total})",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = first.unwrap_or(started).elapsed().as_secs_f64().max(0.001);
    // All of the process's CPU time, start-up included (a few ms).
    let cpu = deliverer.cpu();
    deliverer.stop().await;
    server.abort();
    Ok(DeliverFigures {
        events: total,
        conversations,
        seconds,
        per_second: total as f64 / seconds,
        cpu_us_per_event: micros_per(cpu, total),
    })
}
