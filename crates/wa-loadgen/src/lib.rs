//! `wa-ingest loadgen`: signed, realistic webhook traffic (several message
//! types, statuses out of order, batches, business-scoped ids), each payload
//! sent several times concurrently as Meta does, and the check that every
//! unique event it sent was stored.

mod check;
mod generate;
mod send;

pub use check::{CheckArgs, CheckReport, check};
pub use generate::Generator;
pub use send::{Job, LoadReport, SendArgs, fire, send};

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    pub command: LoadgenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LoadgenCommand {
    /// POST signed payloads to a receiver and print a summary.
    Send(SendArgs),
    /// Count how many of the events a run sent are in the database.
    Check(CheckArgs),
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.command {
        LoadgenCommand::Send(args) => {
            let report = send(&args).await?;
            print_and_judge(&report, report.rejected, "request(s) were not answered 200")
        }
        LoadgenCommand::Check(args) => {
            let report = check(&args).await?;
            print_and_judge(&report, report.missing as u64, "event(s) are missing")
        }
    }
}

/// Prints the report; the command fails when `failures` is not zero.
fn print_and_judge(
    report: &impl std::fmt::Display,
    failures: u64,
    what: &str,
) -> anyhow::Result<()> {
    println!("{report}");
    match failures {
        0 => Ok(()),
        failures => anyhow::bail!("{failures} {what}"),
    }
}
