//! `wa-ingest bench`: the pipeline measured against this machine's own
//! ceilings, in one run, so that every figure is read as a ratio of numbers
//! taken minutes apart on the same machine under the same load. The receiver
//! and the worker run as real `wa-ingest` processes; their peak RSS is read
//! from /proc.

mod broker;
mod deliver;
mod postgres_tls;
mod process;
mod report;
mod soak;
mod stages;

use std::path::PathBuf;
use std::time::Duration;

use wa_broker::AmqpArgs;
use wa_core::config::parse_duration;
use wa_store::DatabaseArgs;
use wa_worker::RedisArgs;

pub use report::{Baseline, Report};

/// The servers a run uses; it makes a namespace and a database of its own
/// and removes them at the end.
#[derive(Debug, Clone, clap::Args)]
pub struct Servers {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The server to create the run's database on (its path is replaced).
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub servers: Servers,
    /// How long each HTTP load runs.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests in flight against the receiver and the bare handler.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Payloads (3 events each) the worker stores per run.
    #[arg(long, default_value_t = 20_000)]
    pub worker_payloads: usize,
    /// The worker's prefetch during the run.
    #[arg(long, default_value_t = 512)]
    pub prefetch: u16,
    /// Events the deliverer sends to a local endpoint.
    #[arg(long, default_value_t = 10_000)]
    pub deliver_events: u64,
    /// Run only the deliver stage (HTTP delivery to a local endpoint).
    #[arg(long, group = "only")]
    pub deliver_only: bool,
    /// Run only the worker stages (no duplicates, every payload 3 times,
    /// every delivery stored already).
    #[arg(long, group = "only")]
    pub worker_only: bool,
    /// Run only the receiver and its ceilings (bare handler, broker
    /// publishes): stages 1 to 3.
    #[arg(long, group = "only")]
    pub receiver_only: bool,
    /// Run only the worker without duplicates and the relay releasing what
    /// it stored: the relay's rate against the worker's, in a minute.
    #[arg(long, group = "only")]
    pub relay_only: bool,
    /// Only compare the worker with PostgreSQL in plaintext and over TLS
    /// (`sslmode` of DATABASE_URL when it is require or verify-*, else require).
    #[arg(long)]
    pub postgres_tls: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A report written earlier with --json: its CPU figures are printed
    /// beside this run's.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Internal: serve the bare handler on this address and nothing else.
    #[arg(long, hide = true)]
    pub serve_bare: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Hold the whole pipeline at a fixed rate for a while; check that
    /// nothing is lost or doubled and that no backlog or memory grows.
    Soak(soak::SoakArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Soak(soak)) = args.command {
        return soak::run(soak).await;
    }
    if let Some(addr) = args.serve_bare {
        return process::serve_bare(addr).await;
    }
    if args.postgres_tls {
        let report = stages::run_postgres_tls(&args).await?;
        println!("{report}");
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        return Ok(());
    }
    let baseline = args.baseline.as_deref().map(Baseline::read).transpose()?;
    let mut report = stages::run_all(&args).await?;
    report.baseline = baseline;
    println!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("written to {}", path.display());
    }
    Ok(())
}
