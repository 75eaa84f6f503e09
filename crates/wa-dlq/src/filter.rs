use chrono::{DateTime, Utc};
use wa_core::config::parse_duration;

use crate::entry::DlqEntry;

/// Which DLQ messages a listing, a replay or the console means. Every field
/// left empty matches everything.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only the messages with this id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Only this error class (`transient`, `permanent`, `unknown`).
    #[arg(long)]
    pub class: Option<String>,
    /// Only messages whose error text contains this (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Only messages that first failed at or after this time (RFC 3339, or an
    /// age such as `30m` or `2h`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Only messages with an event for this business phone number id.
    #[arg(long)]
    pub phone_number_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        (self.ids.is_empty() || self.ids.contains(&entry.id))
            && self.class.as_ref().is_none_or(|c| *c == entry.class)
            && self
                .error
                .as_ref()
                .is_none_or(|text| entry.error.to_lowercase().contains(&text.to_lowercase()))
            && self.since.is_none_or(|since| {
                entry
                    .first_failure_at
                    .or(entry.last_failure_at)
                    .is_some_and(|at| at >= since)
            })
            && self
                .phone_number_id
                .as_ref()
                .is_none_or(|id| entry.phone_number_ids.contains(id))
    }
}

/// An RFC 3339 time, or an age (`2h`) counted back from now.
pub fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = parse_duration(value)
        .map_err(|_| format!("{value:?} is neither an RFC 3339 time nor an age like 2h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(age).map_err(|e| e.to_string())?)
}
