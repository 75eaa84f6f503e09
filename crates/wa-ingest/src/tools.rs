//! `wa-ingest loadgen|bench ...`: the tools are a separate binary,
//! `wa-ingest-tools`, so that the production binary links no HTTP client and
//! no load code. Like git's external subcommands, this one replaces itself
//! with that binary, found beside `wa-ingest`.

use std::ffi::OsString;
use std::process::ExitCode;

use wa_core::telemetry::LogFormat;

pub(crate) const TOOLS_BINARY: &str = "wa-ingest-tools";

/// Everything after the subcommand, `--help` included, goes to the tool.
#[derive(Debug, clap::Args)]
pub(crate) struct ToolArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

pub(crate) fn run(tool: &str, args: ToolArgs, log_format: LogFormat) -> ExitCode {
    let Some(binary) = wa_core::executable::find_companion(TOOLS_BINARY) else {
        let needed_for = format!("`wa-ingest {tool}`");
        eprintln!(
            "wa-ingest: {} (the container image's `tools` target has both)",
            wa_core::executable::missing_companion(TOOLS_BINARY, &needed_for)
        );
        return ExitCode::from(127);
    };
    let mut command = std::process::Command::new(&binary);
    command
        .arg(tool)
        .args(&args.args)
        .env("LOG_FORMAT", log_format.as_str());
    exec(command, &binary)
}

#[cfg(unix)]
fn exec(mut command: std::process::Command, binary: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // Only returns on failure; on success the tool takes this process over
    // (its exit code and signals are the user's).
    let error = command.exec();
    eprintln!("wa-ingest: cannot run {}: {error}", binary.display());
    ExitCode::from(126)
}

#[cfg(not(unix))]
fn exec(mut command: std::process::Command, binary: &std::path::Path) -> ExitCode {
    match command.status() {
        Ok(status) => ExitCode::from(status.code().map_or(1, |code| code as u8)),
        Err(error) => {
            eprintln!("wa-ingest: cannot run {}: {error}", binary.display());
            ExitCode::from(126)
        }
    }
}
