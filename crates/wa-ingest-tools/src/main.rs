//! `wa-ingest-tools`: the load generator and the benchmark, in a binary of
//! their own so that the production binary carries no HTTP client, no
//! histogram and no load code. Users type `wa-ingest loadgen ...` or
//! `wa-ingest bench ...`: `wa-ingest` runs this binary when it finds it
//! beside itself.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wa_core::telemetry::{LogFormat, error_chain, init_logging};

#[derive(Debug, Parser)]
#[command(
    name = "wa-ingest",
    bin_name = "wa-ingest",
    version,
    about = "wa-ingest's tools: load generator and benchmark"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send signed, realistic webhook traffic; check that all of it was stored.
    Loadgen(wa_loadgen::LoadgenArgs),
    /// Measure the pipeline against this machine's ceilings.
    Bench(Box<wa_bench::BenchArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Loadgen(args) => wa_loadgen::run(args).await,
        Command::Bench(args) => wa_bench::run(*args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error = error_chain(error.as_ref());
            tracing::error!(%error, "wa-ingest-tools failed");
            eprintln!("wa-ingest: {error}");
            ExitCode::FAILURE
        }
    }
}
