use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use wa_core::config::parse_duration;
use wa_payload::EventKey;
use wa_store::DatabaseArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The file `loadgen send --events-out` wrote.
    #[arg(long)]
    pub events: PathBuf,
    /// While events are missing, look again every second for up to this
    /// long: the workers may still be draining what `send` enqueued.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub expected: usize,
    pub found: usize,
    pub missing: usize,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {} events: {} stored, {} missing",
            self.expected, self.found, self.missing
        )
    }
}

/// Looks every event key up in the table that holds its kind, again until
/// all are there or `--wait` is over.
pub async fn check(args: &CheckArgs) -> anyhow::Result<CheckReport> {
    let text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("cannot read {}", args.events.display()))?;
    let keys = text
        .lines()
        .filter(|line| !line.is_empty())
        .map(EventKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let pool = args.database.pool()?;
    let deadline = Instant::now() + args.wait;
    let found = loop {
        let found = wa_store::lookup::count_stored(&pool, &keys)
            .await
            .context("cannot query the database")?;
        let now = Instant::now();
        if found >= keys.len() || now >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_secs(1).min(deadline - now)).await;
    };
    pool.close().await;
    Ok(CheckReport {
        expected: keys.len(),
        found,
        missing: keys.len().saturating_sub(found),
    })
}
