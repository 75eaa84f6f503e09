//! The roles' own counters, read from their `/metrics`: what only the
//! processes know (requests received, duplicates, pauses).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Each scrape may take this long, and read this much.
/// A plain-HTTP client for the roles' `/metrics` (hyper, as the deliverer
/// uses: no second HTTP stack in the production binary).
pub(crate) type MetricsClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<axum::body::Bytes>,
>;

pub(crate) fn metrics_client() -> MetricsClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;
/// Addresses scraped per configured URL (a headless service of many pods).
const MAX_ADDRESSES_PER_URL: usize = 64;

/// The counters the overview turns into rates, summed over every target.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counters {
    pub(crate) received: f64,
    pub(crate) stored: f64,
    pub(crate) duplicates: f64,
    pub(crate) released: f64,
    pub(crate) dead_lettered: f64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.released += other.released;
        self.dead_lettered += other.dead_lettered;
    }

    /// Per second between two samples; a counter that went down (a process
    /// restarted) counts from zero.
    pub(crate) fn rate_since(&self, earlier: &Counters, seconds: f64) -> Counters {
        let rate = |now: f64, then: f64| {
            let delta = if now >= then { now - then } else { now };
            delta / seconds.max(0.001)
        };
        Counters {
            received: rate(self.received, earlier.received),
            stored: rate(self.stored, earlier.stored),
            duplicates: rate(self.duplicates, earlier.duplicates),
            released: rate(self.released, earlier.released),
            dead_lettered: rate(self.dead_lettered, earlier.dead_lettered),
        }
    }
}

/// A worker that says it is paused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pause {
    pub(crate) target: String,
    pub(crate) dependency: String,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    pub(crate) counters: Counters,
    pub(crate) paused: Vec<Pause>,
    /// Targets that answered, and those that did not (with why).
    pub(crate) reached: usize,
    pub(crate) failed: Vec<(String, String)>,
    pub(crate) at: Option<Instant>,
}

/// Reads every target once.
pub(crate) async fn scrape_all(client: &MetricsClient, urls: &[url::Url]) -> Scrape {
    let mut scrape = Scrape {
        at: Some(Instant::now()),
        ..Scrape::default()
    };
    let mut targets = Vec::new();
    for url in urls {
        match addresses(url).await {
            Ok(found) => targets.extend(found),
            Err(error) => scrape.failed.push((url.to_string(), error)),
        }
    }
    let results = futures_join(client, targets).await;
    for (target, result) in results {
        match result {
            Ok(text) => {
                scrape.reached += 1;
                let (counters, paused) = parse(&text);
                scrape.counters.add(&counters);
                scrape
                    .paused
                    .extend(paused.into_iter().map(|(dependency, reason)| Pause {
                        target: target.clone(),
                        dependency,
                        reason,
                    }));
            }
            Err(error) => scrape.failed.push((target, error)),
        }
    }
    scrape
}

/// One URL per address its host resolves to, so that every replica behind
/// a headless service (or a compose service name) is read.
async fn addresses(url: &url::Url) -> Result<Vec<url::Url>, String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().ok_or("no port")?;
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(vec![url.clone()]);
    }
    let resolved: Vec<SocketAddr> = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| "name lookup timed out".to_owned())?
    .map_err(|e| format!("name lookup failed: {e}"))?
    .collect();
    let mut urls = Vec::new();
    for addr in resolved.into_iter().take(MAX_ADDRESSES_PER_URL) {
        let mut target = url.clone();
        target
            .set_ip_host(addr.ip())
            .map_err(|()| "cannot set the address")?;
        if !urls.contains(&target) {
            urls.push(target);
        }
    }
    Ok(urls)
}

async fn futures_join(
    client: &MetricsClient,
    targets: Vec<url::Url>,
) -> Vec<(String, Result<String, String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let client = client.clone();
        tasks.spawn(async move {
            let result = fetch(&client, &target).await;
            (target.to_string(), result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

async fn fetch(client: &MetricsClient, url: &url::Url) -> Result<String, String> {
    use http_body_util::BodyExt;
    let uri: axum::http::Uri = url.as_str().parse().map_err(|e| format!("bad URL: {e}"))?;
    let read = async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_METRICS_BYTES);
        let body = limited
            .collect()
            .await
            .map_err(|_| "metrics larger than 4 MiB, or cut off".to_owned())?;
        Ok(body.to_bytes())
    };
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
    String::from_utf8(body.to_vec()).map_err(|_| "metrics are not UTF-8".into())
}

/// The counters and active pauses in one Prometheus text.
pub(crate) fn parse(text: &str) -> (Counters, Vec<(String, String)>) {
    let mut counters = Counters::default();
    let mut paused = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels_of(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let label = |key: &str| labels.get(key).map(String::as_str).unwrap_or("");
        match name {
            "wa_webhook_requests_total" if label("outcome") == "accepted" => {
                counters.received += value;
            }
            "wa_events_total" if label("outcome") == "stored" => counters.stored += value,
            "wa_events_total" if label("outcome").starts_with("duplicate") => {
                counters.duplicates += value;
            }
            "wa_relay_events_total" => counters.released += value,
            "wa_deliveries_total" if label("outcome") == "dead_lettered" => {
                counters.dead_lettered += value;
            }
            "wa_worker_paused" if value >= 1.0 => {
                paused.push((label("dependency").to_owned(), label("reason").to_owned()));
            }
            _ => {}
        }
    }
    (counters, paused)
}

fn labels_of(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_and_pauses_of_a_worker() {
        let text = "# TYPE wa_events_total counter\n\
            wa_events_total{kind=\"message\",outcome=\"stored\"} 7\n\
            wa_events_total{kind=\"status\",outcome=\"stored\"} 3\n\
            wa_events_total{kind=\"message\",outcome=\"duplicate_claim\"} 2\n\
            wa_worker_paused{dependency=\"postgresql\",reason=\"read_only\"} 1\n\
            wa_worker_paused{dependency=\"redis\",reason=\"unreachable\"} 0\n\
            wa_webhook_requests_total{outcome=\"accepted\"} 5\n";
        let (counters, paused) = parse(text);
        assert_eq!(counters.stored, 10.0);
        assert_eq!(counters.duplicates, 2.0);
        assert_eq!(counters.received, 5.0);
        assert_eq!(paused, vec![("postgresql".into(), "read_only".into())]);
    }

    #[test]
    fn a_restarted_counter_counts_from_zero() {
        let before = Counters {
            stored: 100.0,
            ..Counters::default()
        };
        let after = Counters {
            stored: 10.0,
            ..Counters::default()
        };
        assert_eq!(after.rate_since(&before, 2.0).stored, 5.0);
    }
}
