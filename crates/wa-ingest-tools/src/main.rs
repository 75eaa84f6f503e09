//! `wa-ingest-tools`: the load generator and the benchmark, in a binary of
//! their own so that the production binary carries no HTTP client, no
//! histogram and no load code. Users type `wa-ingest loadgen ...` or
//! `wa-ingest bench ...`: `wa-ingest` runs this binary when it finds it
//! beside itself.

use std::process::ExitCode;

use clap::Subcommand;
use wa_core::telemetry::{CommandLine, exit_code, init_logging};

#[derive(Debug, Subcommand)]
enum Command {
    /// Send signed, realistic webhook traffic; check that all of it was stored.
    Loadgen(wa_loadgen::LoadgenArgs),
    /// Measure the pipeline against this machine's ceilings.
    Bench(Box<wa_bench::BenchArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = CommandLine::<Command>::parse_as(|command| {
        command
            .name("wa-ingest")
            .bin_name("wa-ingest")
            .version(env!("CARGO_PKG_VERSION"))
            .about("wa-ingest's tools: load generator and benchmark")
    });
    init_logging(cli.log.log_format);
    exit_code(match cli.command {
        Command::Loadgen(args) => wa_loadgen::run(args).await,
        Command::Bench(args) => wa_bench::run(*args).await,
    })
}
