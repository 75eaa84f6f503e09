//! `wa-ingest dlq`: what is in the dead-letter queue, why, and sending it
//! back. Reading is non-destructive: messages are fetched unacked and given
//! back when the command ends, except those it replays (acked only after the
//! confirmed republish) or purges.

mod commands;
mod entry;
mod scan;

pub use commands::{DlqArgs, DlqCommand, ReplaySummary, run};
pub use entry::DlqEntry;
