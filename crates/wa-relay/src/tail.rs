//! `wa-ingest events tail`: prints downstream events as JSON lines, for
//! operators and demos. It is a consumer like any other: with single active
//! consumer queues it receives a shard's events only while no other
//! consumer of that shard is active, and it acks what it prints.

use futures_util::StreamExt;
use futures_util::stream::select_all;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use wa_broker::BrokerArgs;
use wa_broker::{Broker, Topology};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Print events from the shard queues as JSON lines.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Shard queues to read (must match the relay's WA_EVENT_SHARDS).
    #[arg(
        long,
        env = "WA_EVENT_SHARDS",
        value_name = "WA_EVENT_SHARDS",
        default_value_t = crate::DEFAULT_EVENT_SHARDS
    )]
    pub event_shards: u16,
    /// Only this shard.
    #[arg(long)]
    pub shard: Option<u16>,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let EventsCommand::Tail(args) = args.command;
    let stop = wa_core::shutdown::on_signal();
    let topology = args.broker.topology().with_event_shards(args.event_shards);
    let broker_stop = CancellationToken::new();
    let broker = args.broker.start(
        "wa-ingest events tail",
        topology.clone(),
        broker_stop.clone(),
    )?;
    let result = tail(&broker, &topology, &args, &stop).await;
    broker_stop.cancel();
    result
}

async fn tail(
    broker: &Broker,
    topology: &Topology,
    args: &TailArgs,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let session = broker
        .connected_within(std::time::Duration::from_secs(15), stop)
        .await?;
    let channel = session.connection().create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let shards: Vec<u16> = match args.shard {
        Some(shard) => vec![shard],
        None => (0..args.event_shards).collect(),
    };
    let mut consumers = Vec::new();
    for shard in shards {
        let consumer = channel
            .basic_consume(
                topology.event_queue(shard).as_str().into(),
                format!("wa-ingest-tail-{shard}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push(consumer);
    }
    let mut deliveries = select_all(consumers);
    let mut printed = 0;
    while args.limit.is_none_or(|limit| printed < limit) {
        let delivery = tokio::select! {
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        println!("{}", String::from_utf8_lossy(&delivery.data));
        delivery.ack(BasicAckOptions::default()).await?;
        printed += 1;
    }
    // Closed here, before the connection: left to lapin's close on drop, it
    // races the connection's close (in the worker, lapin logged the loser
    // as a connection error).
    let _ = channel.close(200, "tail done".into()).await;
    Ok(())
}
