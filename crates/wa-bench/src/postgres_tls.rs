//! `wa-ingest bench --postgres-tls`: the worker storing the same load with
//! its PostgreSQL connections in plaintext and over TLS, alternated within
//! one run, so the cost of TLS is a ratio of figures from the same minute.

use anyhow::Context;
use serde::Serialize;

use crate::report::WorkerFigures;
use crate::stages::Run;

/// Rounds of each kind, alternated (plaintext first).
const ROUNDS: usize = 2;

#[derive(Debug, Default, Serialize)]
pub(crate) struct TlsReport {
    pub plaintext: Vec<WorkerFigures>,
    pub tls: Vec<WorkerFigures>,
    /// The worker's TLS sessions on the bench database (at most, of a TLS round).
    pub tls_connections_seen: i64,
    /// ... and in the plaintext rounds (0).
    pub plaintext_tls_sessions: i64,
    /// Unique events/s over TLS / in plaintext, totals of all rounds (target >= 0.90).
    pub tls_vs_plaintext: f64,
}

impl std::fmt::Display for TlsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (label, runs) in [("plaintext", &self.plaintext), ("TLS", &self.tls)] {
            for (round, w) in runs.iter().enumerate() {
                writeln!(
                    f,
                    "worker, PostgreSQL {label:<9} round {}: {:>8.0} unique events/s ({} events in {:.2}s)",
                    round + 1,
                    w.unique_events_per_second,
                    w.unique_events,
                    w.seconds
                )?;
            }
        }
        writeln!(
            f,
            "worker sessions using TLS: {} in a TLS round, {} in the plaintext rounds",
            self.tls_connections_seen, self.plaintext_tls_sessions
        )?;
        writeln!(
            f,
            "TLS / plaintext (unique events/s, all rounds): {:.3} (goal >= 0.90: {})",
            self.tls_vs_plaintext,
            if self.tls_vs_plaintext >= 0.9 {
                "met"
            } else {
                "MISSED"
            }
        )
    }
}

/// `url` with `sslmode` set to `mode` (replacing any given).
pub(crate) fn with_sslmode(url: &url::Url, mode: &str) -> String {
    let mut url = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "sslmode")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("sslmode", mode);
    url.to_string()
}

/// Runs the comparison on the bench database (`run.database_url`, in
/// plaintext). The TLS rounds use the configured `DATABASE_URL`'s `sslmode`
/// when it names a verifying one, else `require`; the plaintext rounds
/// `disable`.
pub(crate) async fn compare(run: &Run<'_>) -> anyhow::Result<TlsReport> {
    let args = run.args;
    let mut url = args.servers.database.database_url.url().clone();
    url.set_path(url::Url::parse(run.database_url)?.path());
    let chosen = url
        .query_pairs()
        .find(|(key, _)| key == "sslmode")
        .map(|(_, value)| value.into_owned());
    let tls_url = match chosen.as_deref() {
        Some("verify-ca" | "verify-full" | "require") => url.to_string(),
        _ => with_sslmode(&url, "require"),
    };
    let plain_url = with_sslmode(&url, "disable");
    declare_topology(run).await?;
    let namespace = run.namespace;
    let mut report = TlsReport::default();
    for round in 0..ROUNDS {
        for tls in [false, true] {
            let label = if tls { "TLS" } else { "plaintext" };
            eprintln!(
                "[postgres-tls] round {}/{ROUNDS}, {label}: {} payloads of 3 events",
                round + 1,
                args.worker_payloads
            );
            let tag = format!("{namespace}{label}{round}");
            let database_url = if tls { &tls_url } else { &plain_url };
            let measured = run
                .drain_with_worker(&tag, 1, database_url)
                .await
                .with_context(|| format!("worker round over {label}"))?;
            if tls {
                anyhow::ensure!(
                    measured.tls_sessions > 0,
                    "the TLS round's worker had no TLS session: does the server have ssl = on?"
                );
                report.tls_connections_seen =
                    report.tls_connections_seen.max(measured.tls_sessions);
                report.tls.push(measured.figures);
            } else {
                report.plaintext_tls_sessions += measured.tls_sessions;
                report.plaintext.push(measured.figures);
            }
        }
    }
    let rate = |runs: &[WorkerFigures]| {
        let events: u64 = runs.iter().map(|w| w.unique_events).sum();
        let seconds: f64 = runs.iter().map(|w| w.seconds).sum();
        events as f64 / seconds.max(0.001)
    };
    report.tls_vs_plaintext = rate(&report.tls) / rate(&report.plaintext);
    Ok(report)
}

/// The queues the worker consumes, declared before anything is published
/// (the full bench's receiver stage does it there).
pub(crate) async fn declare_topology(run: &Run<'_>) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(&run.first_node, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    run.topology.declare(&channel).await?;
    connection.close(200, "declared".into()).await?;
    Ok(())
}
