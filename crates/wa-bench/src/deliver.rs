//! The deliverer's stage: events fanned out to one local endpoint that
//! answers 200 at once, delivered by a real `wa-ingest deliver` process;
//! events per second and the deliverer's CPU time per delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

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
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let mut sequences = Vec::new();
    let mut payloads = Vec::new();
    for sequence in 1..=per_conversation {
        for c in 0..conversations {
            let id = format!("msg:bench.deliver.c{c}.s{sequence}");
            payloads.push(json!({ "id": id, "type": "message.created", "ordering_key": format!("bench-{c}"), "data": { "text": "hello" } }));
            ids.push(id);
            keys.push(format!("bench-{c}"));
            sequences.push(i64::try_from(sequence).unwrap_or(0));
        }
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, contact_key, wamid, payload)
         SELECT id, 'message.created', key, id, payload
         FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) AS t(id, key, payload)",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE outbox SET published_at = now(), sequence = u.seq, late = false
         FROM UNNEST($1::text[], $2::int8[]) AS u(id, seq) WHERE outbox.event_id = u.id",
    )
    .bind(&ids)
    .bind(&sequences)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

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
