use std::fmt;

use serde::Serialize;

/// Every figure of one run, each ratio beside the ceiling it is taken against.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub receiver: HttpFigures,
    pub bare_handler: HttpFigures,
    pub receiver_p99_ms_at_half_rate: f64,
    pub receiver_peak_rss_bytes: u64,
    pub broker_publish_per_second: f64,
    pub broker_consume_ack_per_second: f64,
    pub worker_unique: WorkerFigures,
    pub worker_duplicates: WorkerFigures,
    pub worker_peak_rss_bytes: u64,
    pub worker_prefetch: u16,
    /// Outbox events released with no reorder window, and how fast.
    pub relay_events: u64,
    pub relay_events_per_second: f64,
    /// HTTP delivery to one local endpoint that answers 200 at once.
    pub deliver: crate::deliver::DeliverFigures,
    pub ratios: Ratios,
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
    /// Unique events/s with every payload 3 times over without (target >= 0.8).
    pub duplicates_vs_unique: f64,
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
            "{:<52} {:>12} {:>12} {:>12} {:>12}",
            "", "req/s", "p50 ms", "p99 ms", "max ms"
        )?;
        writeln!(
            f,
            "{:<52} {:>12.0} {:>12.2} {:>12.2} {:>12.2}",
            "receiver (HMAC + confirmed publish)", r.per_second, r.p50_ms, r.p99_ms, r.max_ms
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
            "{:<52} {:>12.0} events/s ({} downstream events, no reorder window)",
            "relay", self.relay_events_per_second, self.relay_events
        )?;
        let d = &self.deliver;
        writeln!(
            f,
            "{:<52} {:>12.0} events/s ({} events, {} conversations, {:.0} us CPU per delivery)",
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
        writeln!(
            f,
            "{:<60} {:>10.2} {:>10} {:>8}",
            "receiver / min(bare handler, broker publish)",
            ratios.receiver_vs_ceiling,
            ">= 0.80",
            verdict(ratios.receiver_vs_ceiling >= 0.8)
        )?;
        writeln!(
            f,
            "{:<60} {:>10.2} {:>10} {:>8}",
            "receiver p99 ms at half its maximum rate",
            self.receiver_p99_ms_at_half_rate,
            "< 50",
            verdict(self.receiver_p99_ms_at_half_rate < 50.0)
        )?;
        writeln!(
            f,
            "{:<60} {:>10.2} {:>10} {:>8}",
            "worker deliveries/s / broker consume+ack/s",
            ratios.worker_vs_consume_ceiling,
            ">= 0.50",
            verdict(ratios.worker_vs_consume_ceiling >= 0.5)
        )?;
        writeln!(
            f,
            "{:<60} {:>10.2} {:>10} {:>8}",
            "unique events/s with x3 duplicates / without",
            ratios.duplicates_vs_unique,
            ">= 0.80",
            verdict(ratios.duplicates_vs_unique >= 0.8)
        )?;
        let worker_mib = self.worker_peak_rss_bytes as f64 / MIB;
        let receiver_mib = self.receiver_peak_rss_bytes as f64 / MIB;
        writeln!(
            f,
            "{:<60} {:>10.1} {:>10} {:>8}",
            format!("worker peak RSS MiB (prefetch {})", self.worker_prefetch),
            worker_mib,
            "<= 64",
            verdict(worker_mib <= 64.0)
        )?;
        write!(
            f,
            "{:<60} {:>10.1} {:>10} {:>8}",
            "receiver peak RSS MiB",
            receiver_mib,
            "<= 32",
            verdict(receiver_mib <= 32.0)
        )
    }
}
