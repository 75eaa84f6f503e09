//! `wa-ingest dlq`: what is in the dead-letter queue, why, and sending it
//! back. Reading is non-destructive: messages are fetched unacked and given
//! back when the command ends, except those it replays (acked only after the
//! confirmed republish) or purges. The same operations are a library
//! ([`snapshot`], [`inspect`], [`replay`], [`purge`]) for the console.

mod actions;
mod commands;
mod entry;
mod filter;
mod scan;

pub use actions::{
    Inspection, Pace, PurgeSummary, ReplayNote, ReplaySummary, Snapshot, counted, inspect, purge,
    replay, snapshot,
};
pub use commands::{DlqArgs, DlqCommand, Stats, one_line, run};
pub use entry::{DlqEntry, EventSummary};
pub use filter::{Filter, parse_since};
pub use scan::MAX_SCAN_BYTES;
