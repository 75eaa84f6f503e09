use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
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
    let mut messages = Vec::new();
    let mut status_wamids = Vec::new();
    let mut status_names = Vec::new();
    let mut status_participants = Vec::new();
    let mut groups = Vec::new();
    let mut others = Vec::new();
    for key in text.lines().filter(|l| !l.is_empty()) {
        if let Some(wamid) = key
            .strip_prefix("msg:")
            .or_else(|| key.strip_prefix("echo:"))
        {
            messages.push(wamid.to_owned());
        } else if let Some(rest) = key.strip_prefix("status:") {
            // status:{wamid}:{status}[:{participant}]; none of them holds a ':'.
            let mut parts = rest.splitn(3, ':');
            let (Some(wamid), Some(status)) = (parts.next(), parts.next()) else {
                anyhow::bail!("malformed status key {key}");
            };
            status_wamids.push(wamid.to_owned());
            status_names.push(status.to_owned());
            status_participants.push(parts.next().unwrap_or("").to_owned());
        } else if key.starts_with("group:") {
            groups.push(key.to_owned());
        } else {
            others.push(key.to_owned());
        }
    }
    let pool = args.database.pool()?;
    let found_messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE wamid = ANY($1)")
            .bind(&messages)
            .fetch_one(&pool)
            .await
            .context("cannot query the database")?;
    let found_statuses: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_statuses s
         JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(wamid, status, participant)
              USING (wamid, status, participant)",
    )
    .bind(&status_wamids)
    .bind(&status_names)
    .bind(&status_participants)
    .fetch_one(&pool)
    .await?;
    let found_groups: i64 =
        sqlx::query_scalar("SELECT count(*) FROM group_events WHERE event_key = ANY($1)")
            .bind(&groups)
            .fetch_one(&pool)
            .await?;
    let found_others: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE event_key = ANY($1)")
            .bind(&others)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    let expected = messages.len() + status_wamids.len() + groups.len() + others.len();
    let found =
        usize::try_from(found_messages + found_statuses + found_groups + found_others).unwrap_or(0);
    Ok(CheckReport {
        expected,
        found,
        missing: expected.saturating_sub(found),
    })
}
