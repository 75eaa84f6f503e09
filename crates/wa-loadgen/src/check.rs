use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use wa_payload::EventKey;
use wa_store::DatabaseArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The file `loadgen send --events-out` wrote.
    #[arg(long)]
    pub events: PathBuf,
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

/// Looks every event key up in the table that holds its kind.
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
    let found = wa_store::lookup::count_stored(&pool, &keys)
        .await
        .context("cannot query the database")?;
    pool.close().await;
    Ok(CheckReport {
        expected: keys.len(),
        found,
        missing: keys.len().saturating_sub(found),
    })
}
