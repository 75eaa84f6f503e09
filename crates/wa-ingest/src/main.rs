//! `wa-ingest`: one binary, one subcommand per role. Every option is also an
//! environment variable (see `wa-ingest <command> --help`). The tools
//! (`loadgen`, `bench`) live in `wa-ingest-tools`, which this binary runs.

use std::process::ExitCode;

use clap::Subcommand;
use tokio::net::TcpListener;
use wa_core::scheduling::SchedArgs;
use wa_core::telemetry::{CommandLine, exit_code, init_logging};

mod migrate;
mod tools;

/// mimalloc instead of glibc's malloc: the hot paths allocate small, short
/// lived buffers from many tokio threads, where glibc spent a quarter of the
/// worker's CPU and a fifth of the receiver's (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive Meta's webhooks: verify, enqueue with a confirm, answer 200.
    Receiver(wa_receiver::ReceiverConfig),
    /// Store every event of every enqueued webhook exactly once.
    Worker(wa_worker::WorkerConfig),
    /// Create the database if needed and apply the schema migrations.
    Migrate(migrate::MigrateArgs),
    /// Release downstream events from the outbox, per contact or group in order.
    Relay(wa_relay::RelayConfig),
    /// Deliver downstream events to HTTP endpoints, signed, per conversation in order.
    Deliver(wa_deliver::DeliverConfig),
    /// Manage the HTTP endpoints that `deliver` sends events to.
    Endpoints(wa_deliver::EndpointsArgs),
    /// Read downstream events (`events tail`).
    Events(wa_relay::tail::EventsArgs),
    /// Inspect, replay and purge the dead-letter queue.
    Dlq(wa_dlq::DlqArgs),
    /// Serve the operator console (pipeline, DLQ, conversations) on CONSOLE_ADDR.
    Console(wa_console::ConsoleConfig),
    /// Send signed, realistic webhook traffic; check that all of it was
    /// stored (runs wa-ingest-tools).
    #[command(disable_help_flag = true)]
    Loadgen(tools::ToolArgs),
    /// Measure the pipeline against this machine's ceilings (runs
    /// wa-ingest-tools).
    #[command(disable_help_flag = true)]
    Bench(tools::ToolArgs),
}

fn main() -> ExitCode {
    let cli = CommandLine::<Command, SchedArgs>::parse_as(|command| {
        command.name("wa-ingest").version(env!("CARGO_PKG_VERSION")).about(
            "WhatsApp Cloud API webhook ingestion: every message and status stored exactly once",
        )
    });
    match cli.command {
        Command::Loadgen(args) => tools::run("loadgen", args, cli.log.log_format),
        Command::Bench(args) => tools::run("bench", args, cli.log.log_format),
        role => {
            init_logging(cli.log.log_format);
            // Before the runtime starts its threads, so that they inherit it.
            let policy = cli.process.sched_policy;
            if let Err(error) = policy.apply_to_current_thread() {
                tracing::warn!(%error, policy = policy.as_str(), "could not set WA_SCHED_POLICY; threads keep the inherited policy");
            }
            run_role(role)
        }
    }
}

#[tokio::main]
async fn run_role(command: Command) -> ExitCode {
    exit_code(run(command).await)
}

/// Binds a role's listener; the error names the variable that chose the address.
async fn listen(addr: std::net::SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {variable} {addr}"))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Receiver(config) => {
            let listener = listen(config.listen_addr, "LISTEN_ADDR").await?;
            let ops = match config.ops_addr {
                Some(addr) => Some(listen(addr, "WA_OPS_ADDR").await?),
                None => None,
            };
            wa_receiver::run_with_ops(listener, ops, config, wa_core::shutdown::on_signal()).await
        }
        Command::Worker(config) => {
            let listener = listen(config.metrics.metrics_addr, "METRICS_ADDR").await?;
            wa_worker::run(listener, config, wa_core::shutdown::on_signal()).await
        }
        Command::Relay(config) => {
            let listener = listen(config.metrics.metrics_addr, "METRICS_ADDR").await?;
            wa_relay::run(listener, config, wa_core::shutdown::on_signal()).await
        }
        Command::Deliver(config) => {
            let listener = listen(config.metrics.metrics_addr, "METRICS_ADDR").await?;
            wa_deliver::run(listener, config, wa_core::shutdown::on_signal()).await
        }
        Command::Endpoints(args) => wa_deliver::cli::run(args).await,
        Command::Events(args) => wa_relay::tail::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Dlq(args) => wa_dlq::run(args).await,
        Command::Console(config) => {
            // Checked before binding, so a missing token is named before anything listens.
            config.validate().map_err(anyhow::Error::msg)?;
            let listener = listen(config.console_addr, "CONSOLE_ADDR").await?;
            wa_console::run(listener, config, wa_core::shutdown::on_signal()).await
        }
        Command::Loadgen(_) | Command::Bench(_) => {
            unreachable!("the tools run in wa-ingest-tools, before the runtime starts")
        }
    }
}
