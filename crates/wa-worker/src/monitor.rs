//! Queue depths as gauges (`wa_queue_messages{queue="inbound"|"dlq"}`), for
//! dashboards, alerts (DLQ not empty, backlog growing) and autoscaling.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use wa_broker::Broker;

pub(crate) async fn watch_queue_depths(broker: Broker, every: Duration, stop: CancellationToken) {
    let queues = [
        ("inbound", broker.topology().inbound()),
        ("dlq", broker.topology().dlq()),
    ];
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let Some(session) = broker.current() else {
            continue;
        };
        // A channel of its own: a failed passive declare closes its channel.
        let Ok(channel) = session.connection().create_channel().await else {
            continue;
        };
        for (label, queue) in &queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if let Ok(state) = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                metrics::gauge!("wa_queue_messages", "queue" => *label)
                    .set(f64::from(state.message_count()));
            }
        }
        let _ = channel.close(200, "depths read".into()).await;
    }
}
