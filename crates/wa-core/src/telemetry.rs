//! Structured logs. Log lines carry ids and counts, never message text, names
//! or phone numbers: those are personal data.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `--log-format` / `LOG_FORMAT`, global to a binary's subcommands.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
}

/// The command line of a wa-ingest binary: the log options and the
/// binary's own process options `P`, global to every command, then one
/// subcommand.
#[derive(Debug, clap::Parser)]
pub struct CommandLine<C: clap::Subcommand, P: clap::Args = NoProcessArgs> {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub process: P,
    #[command(subcommand)]
    pub command: C,
}

/// A binary without process options.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NoProcessArgs {}

impl<C: clap::Subcommand, P: clap::Args> CommandLine<C, P> {
    /// Parses the process's arguments once `describe` has named the binary
    /// (name, version, about); a bad command line is reported as clap does.
    pub fn parse_as(describe: impl FnOnce(clap::Command) -> clap::Command) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = describe(Self::command());
        let mut matches = command.clone().get_matches();
        Self::from_arg_matches_mut(&mut matches)
            .unwrap_or_else(|error| error.format(&mut command).exit())
    }
}

/// The exit code of a command's outcome; a failure is logged and printed
/// with its whole cause chain, as `wa-ingest: {error}`.
pub fn exit_code(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let error = error_chain(error.as_ref());
            tracing::error!(%error, "wa-ingest failed");
            eprintln!("wa-ingest: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl LogFormat {
    /// The value of `LOG_FORMAT` that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Pretty => "pretty",
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
/// Calling it twice (tests) keeps the first one.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// An error with its whole cause chain, for a structured log field: each
/// cause once. Our error types display only their own layer and return the
/// cause as `source()`, but some libraries also print their source in their
/// own text (sqlx: `error returned from database: {source}`): a cause whose
/// text the line already shows is left out.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{layer}")]
    struct Layer {
        layer: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn chain(layers: &[&'static str]) -> Layer {
        layers
            .iter()
            .rev()
            .fold(None, |source, layer| {
                Some(Layer {
                    layer,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn every_cause_is_shown_once() {
        assert_eq!(
            error_chain(&chain(&["could not store", "connection reset"])),
            "could not store: connection reset"
        );
    }

    #[test]
    fn a_cause_already_in_the_text_is_left_out() {
        // What sqlx does: the outer text quotes its source.
        let repeated = chain(&["error returned from database: disk full", "disk full", ""]);
        assert_eq!(
            error_chain(&repeated),
            "error returned from database: disk full"
        );
    }
}
