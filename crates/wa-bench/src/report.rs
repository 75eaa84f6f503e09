use std::fmt;

use serde::Serialize;

/// Every figure of one run, each ratio beside the ceiling it is taken against.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub receiver: HttpFigures,
    pub bare_handler: HttpFigures,
    pub receiver_p99_ms_at_half_rate: f64,
    /// CPU time of the receiver process per accepted webhook, microseconds.
    pub receiver_cpu_us_per_request: f64,
    pub receiver_peak_rss_bytes: u64,
    pub broker_publish_per_second: f64,
    pub broker_consume_ack_per_second: f64,
    pub worker_unique: WorkerFigures,
    pub worker_duplicates: WorkerFigures,
    /// The no-duplicates deliveries again, when every event is stored.
    pub worker_already_stored: WorkerFigures,
    pub worker_peak_rss_bytes: u64,
    pub worker_prefetch: u16,
    /// Outbox events released (all past the default reorder window), and how fast.
    pub relay_events: u64,
    pub relay_events_per_second: f64,
    /// CPU time of the relay process per released event, microseconds.
    pub relay_cpu_us_per_event: f64,
    pub relay_peak_rss_bytes: u64,
    /// HTTP delivery to one local endpoint that answers 200 at once.
    pub deliver: crate::deliver::DeliverFigures,
    pub ratios: Ratios,
    pub concurrency: usize,
    /// Figures of an earlier run (`--baseline`), to compare against.
    pub baseline: Option<Baseline>,
}

/// The figures of an earlier report that a change is judged against.
#[derive(Debug, Default, Serialize)]
pub struct Baseline {
    pub receiver_cpu_us_per_request: f64,
    pub worker_cpu_us_per_event: f64,
    pub relay_cpu_us_per_event: f64,
    pub relay_events_per_second: f64,
}

impl Baseline {
    /// Reads the figures from a report written with `--json`.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the baseline {}", path.display()))?;
        let report: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("the baseline {} is not JSON", path.display()))?;
        let figure = |pointer: &str| report.pointer(pointer).and_then(serde_json::Value::as_f64);
        Ok(Self {
            receiver_cpu_us_per_request: figure("/receiver_cpu_us_per_request").unwrap_or(0.0),
            worker_cpu_us_per_event: figure("/worker_unique/cpu_us_per_event").unwrap_or(0.0),
            relay_cpu_us_per_event: figure("/relay_cpu_us_per_event").unwrap_or(0.0),
            relay_events_per_second: figure("/relay_events_per_second").unwrap_or(0.0),
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct HttpFigures {
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkerFigures {
    pub deliveries: u64,
    pub unique_events: u64,
    pub seconds: f64,
    pub deliveries_per_second: f64,
    pub unique_events_per_second: f64,
    /// CPU time of the worker process, microseconds per delivery and per
    /// unique event stored.
    pub cpu_us_per_delivery: f64,
    pub cpu_us_per_event: f64,
    /// Seconds spent per batch stage (parse, claim, store, mark_done, settle),
    /// summed over concurrent batches.
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    /// Receiver rate over the lower of the bare-handler and broker-publish rates (target >= 0.8).
    pub receiver_vs_ceiling: f64,
    /// Worker deliveries/s (no duplicates) over broker consume+ack/s (target >= 0.5).
    pub worker_vs_consume_ceiling: f64,
    /// Unique events/s with every payload 3 times over without.
    pub duplicates_vs_unique: f64,
    /// Relay released events/s over the worker's stored events/s (target >= 1.0).
    pub relay_vs_worker: f64,
    /// Worker CPU per delivery whose events are all stored over per new one (target <= 0.25).
    pub stored_vs_new_delivery_cpu: f64,
}

impl Ratios {
    /// Every figure of a run as a ratio to its ceiling in the same run.
    pub fn of(report: &Report) -> Self {
        let ceiling = report
            .bare_handler
            .per_second
            .min(report.broker_publish_per_second);
        Self {
            receiver_vs_ceiling: report.receiver.per_second / ceiling,
            worker_vs_consume_ceiling: report.worker_unique.deliveries_per_second
                / report.broker_consume_ack_per_second,
            duplicates_vs_unique: report.worker_duplicates.unique_events_per_second
                / report.worker_unique.unique_events_per_second,
            relay_vs_worker: report.relay_events_per_second
                / report.worker_unique.unique_events_per_second,
            stored_vs_new_delivery_cpu: report.worker_already_stored.cpu_us_per_delivery
                / report.worker_unique.cpu_us_per_delivery,
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.receiver;
        let b = &self.bare_handler;
        writeln!(
            f,
            "{:<52} {:>12} {:>12} {:>12} {:>12} {:>14}",
            "", "req/s", "p50 ms", "p99 ms", "max ms", "CPU µs/req"
        )?;
        writeln!(
            f,
            "{:<52} {:>12.0} {:>12.2} {:>12.2} {:>12.2} {:>14.1}",
            "receiver (HMAC + confirmed publish)",
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            self.receiver_cpu_us_per_request
        )?;
        writeln!(
            f,
            "{:<52} {:>12.0} {:>12.2} {:>12.2} {:>12.2}",
            "bare handler (HTTP ceiling)", b.per_second, b.p50_ms, b.p99_ms, b.max_ms
        )?;
        writeln!(f, "{:<52} {:>12}", "receiver errors", r.errors)?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<52} {:>12.0}",
            "broker: confirmed publishes/s (quorum)", self.broker_publish_per_second
        )?;
        writeln!(
            f,
            "{:<52} {:>12.0}",
            "broker: consume + ack/s", self.broker_consume_ack_per_second
        )?;
        for (label, w) in [
            ("worker, no duplicates", &self.worker_unique),
            ("worker, every payload 3 times", &self.worker_duplicates),
            (
                "worker, every delivery already stored",
                &self.worker_already_stored,
            ),
        ] {
            writeln!(
                f,
                "{:<52} {:>12.0} deliveries/s {:>10.0} unique events/s ({} events in {:.2}s)",
                label,
                w.deliveries_per_second,
                w.unique_events_per_second,
                w.unique_events,
                w.seconds
            )?;
            writeln!(
                f,
                "{:<52} {:>12.1} µs/delivery {:>11.1} µs/unique event",
                "  worker CPU", w.cpu_us_per_delivery, w.cpu_us_per_event
            )?;
            let stages: Vec<String> = w
                .stage_seconds
                .iter()
                .map(|(stage, seconds)| format!("{stage} {seconds:.2}"))
                .collect();
            writeln!(
                f,
                "{:<52} {}",
                "  batch time by stage, s (summed)",
                stages.join(", ")
            )?;
        }
        writeln!(
            f,
            "{:<52} {:>12.0} events/s ({} downstream events, default reorder window)",
            "relay", self.relay_events_per_second, self.relay_events
        )?;
        writeln!(
            f,
            "{:<52} {:>12.1} µs/event",
            "  relay CPU", self.relay_cpu_us_per_event
        )?;
        if self.broker_publish_per_second > 0.0 && self.relay_events_per_second > 0.0 {
            // One confirmed publish per event: this share says whether the
            // relay or the broker is the limit on this machine.
            writeln!(
                f,
                "{:<52} {:>12.0} % of the broker's confirmed publishes/s",
                "  relay share of the broker ceiling",
                100.0 * self.relay_events_per_second / self.broker_publish_per_second
            )?;
        }
        let d = &self.deliver;
        writeln!(
            f,
            "{:<52} {:>12.0} events/s ({} events, {} conversations, {:.1} µs CPU per delivery)",
            "deliver (HTTP, local endpoint answering 200)",
            d.per_second,
            d.events,
            d.conversations,
            d.cpu_us_per_event
        )?;
        writeln!(f)?;
        let ratios = &self.ratios;
        writeln!(
            f,
            "{:<60} {:>10} {:>10} {:>8}",
            "target", "measured", "goal", ""
        )?;
        let rows = [
            (
                "receiver / min(bare handler, broker publish)".to_owned(),
                ratios.receiver_vs_ceiling,
                ">= 0.80",
                ratios.receiver_vs_ceiling >= 0.8,
            ),
            (
                format!("receiver p99 ms at {} concurrent", self.concurrency),
                r.p99_ms,
                "<= 25",
                r.p99_ms <= 25.0,
            ),
            (
                "receiver p99 ms at half its maximum rate".to_owned(),
                self.receiver_p99_ms_at_half_rate,
                "< 50",
                self.receiver_p99_ms_at_half_rate < 50.0,
            ),
            (
                "worker deliveries/s / broker consume+ack/s".to_owned(),
                ratios.worker_vs_consume_ceiling,
                ">= 0.50",
                ratios.worker_vs_consume_ceiling >= 0.5,
            ),
            (
                "relay events/s / worker stored events/s".to_owned(),
                ratios.relay_vs_worker,
                ">= 1.00",
                ratios.relay_vs_worker >= 1.0,
            ),
            (
                "worker CPU: already-stored delivery / new delivery".to_owned(),
                ratios.stored_vs_new_delivery_cpu,
                "<= 0.25",
                ratios.stored_vs_new_delivery_cpu <= 0.25,
            ),
            (
                format!("worker peak RSS MiB (prefetch {})", self.worker_prefetch),
                self.worker_peak_rss_bytes as f64 / MIB,
                "<= 64",
                self.worker_peak_rss_bytes as f64 / MIB <= 64.0,
            ),
            (
                "receiver peak RSS MiB".to_owned(),
                self.receiver_peak_rss_bytes as f64 / MIB,
                "<= 32",
                self.receiver_peak_rss_bytes as f64 / MIB <= 32.0,
            ),
        ];
        for (label, measured, goal, ok) in rows {
            writeln!(
                f,
                "{label:<60} {measured:>10.2} {goal:>10} {:>8}",
                verdict(ok)
            )?;
        }
        if let Some(before) = &self.baseline {
            writeln!(f)?;
            writeln!(
                f,
                "{:<60} {:>10} {:>10} {:>10}",
                "CPU per unit against the baseline", "before", "now", "now/before"
            )?;
            for (label, was, now, goal) in [
                (
                    "receiver µs per request (goal <= 0.67)",
                    before.receiver_cpu_us_per_request,
                    self.receiver_cpu_us_per_request,
                    Some(2.0 / 3.0),
                ),
                (
                    "worker µs per stored event (goal <= 0.67)",
                    before.worker_cpu_us_per_event,
                    self.worker_unique.cpu_us_per_event,
                    Some(2.0 / 3.0),
                ),
                (
                    "relay µs per released event",
                    before.relay_cpu_us_per_event,
                    self.relay_cpu_us_per_event,
                    None,
                ),
                (
                    "relay events/s",
                    before.relay_events_per_second,
                    self.relay_events_per_second,
                    None,
                ),
            ] {
                let ratio = now / was;
                let mark = goal.map_or("", |goal| verdict(ratio <= goal));
                writeln!(
                    f,
                    "{label:<60} {was:>10.1} {now:>10.1} {ratio:>10.2} {mark}"
                )?;
            }
        }
        Ok(())
    }
}
