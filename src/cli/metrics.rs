//! `spate metrics`: a readable summary of a broker's `/metrics` in a terminal, for people
//! without Prometheus. It reads the same text Prometheus scrapes; live, it shows rates between
//! two scrapes, `--once` the totals of one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// The broker's metrics endpoint (`metrics.listener`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9644/metrics")]
    pub url: String,
    /// Seconds between two refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// Print the totals of one scrape and exit.
    #[arg(long)]
    pub once: bool,
}

impl MetricsArgs {
    pub fn run(self) -> Result<(), String> {
        if !(0.1..=3600.0).contains(&self.interval) {
            return Err(format!("--interval {} is not within 0.1 to 3600 s", self.interval));
        }
        let first = Scrape::take(&self.url)?;
        if self.once {
            print!("{}", summary(&self.url, &first, None));
            return Ok(());
        }
        let mut previous = first;
        loop {
            std::thread::sleep(Duration::from_secs_f64(self.interval));
            let current = Scrape::take(&self.url)?;
            // Clear the screen and go home: one summary on screen, refreshed in place.
            print!("\x1b[2J\x1b[H{}", summary(&self.url, &current, Some(&previous)));
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            previous = current;
        }
    }
}

/// One sample: its name, labels and value.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape, parsed.
struct Scrape {
    at: Instant,
    samples: Vec<Sample>,
}

impl Scrape {
    fn take(url: &str) -> Result<Self, String> {
        let text = http_get(url)?;
        Ok(Scrape { at: Instant::now(), samples: parse(&text)? })
    }

    /// Every sample of `name`.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of an unlabelled sample (0 when absent).
    fn value(&self, name: &str) -> f64 {
        self.named(name).map(|s| s.value).sum()
    }

    /// Values of `name` by the value of its label `label`, summed over the others.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for sample in self.named(name) {
            let key = sample.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_default() += sample.value;
        }
        out
    }
}

/// `GET url` over HTTP/1.1, the body of a 200 answer.
fn http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or(format!("{url}: only http:// URLs are read"))?;
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None => (rest, "/metrics".to_string()),
    };
    let mut stream =
        std::net::TcpStream::connect(host).map_err(|e| format!("connecting to {host}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("asking {url}: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("reading {url}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or(format!("{url}: no HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("{url}: {status}"));
    }
    Ok(body.to_string())
}

/// The samples of the Prometheus text format (comments skipped).
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = || format!("a line the text format does not have: {line:?}");
        let (name, mut rest) = match line.find(['{', ' ']) {
            Some(at) => line.split_at(at),
            None => return Err(bad()),
        };
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            while !rest.starts_with('}') {
                let (key, after) = rest.split_once("=\"").ok_or_else(bad)?;
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => return Err(bad()),
                        },
                        Some((at, '"')) => break at,
                        Some((_, c)) => value.push(c),
                        None => return Err(bad()),
                    }
                };
                labels.insert(key.trim_start_matches(',').to_string(), value);
                rest = after[end + 1..].trim_start_matches(',');
            }
            rest = &rest[1..];
        }
        let value = rest.split_whitespace().next().ok_or_else(bad)?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number.parse().map_err(|_| bad())?,
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(samples)
}

/// The quantile `q` of a histogram's cumulative buckets, interpolated within its bucket as
/// Prometheus's `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(below.0);
            }
            let share = if count > below.1 { (rank - below.1) / (count - below.1) } else { 1.0 };
            return Some(below.0 + (bound - below.0) * share);
        }
        below = (bound, count);
    }
    None
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.2}", s * 1000.0))
}

/// The summary of `now`: totals, or rates since `before` when given.
fn summary(url: &str, now: &Scrape, before: Option<&Scrape>) -> String {
    let mut out = String::new();
    let elapsed = before.map(|b| now.at.duration_since(b.at).as_secs_f64().max(1e-3));
    // A counter as a total, or as a rate per second since the previous scrape.
    let counter = |name: &str, label: &str| -> BTreeMap<String, f64> {
        let current = now.by(name, label);
        match (before, elapsed) {
            (Some(before), Some(seconds)) => {
                let earlier = before.by(name, label);
                let rate = |(k, v): (String, f64)| {
                    let delta = (v - earlier.get(&k).copied().unwrap_or(0.0)).max(0.0);
                    (k, delta / seconds)
                };
                current.into_iter().map(rate).collect()
            }
            _ => current,
        }
    };
    let per = if before.is_some() { "/s" } else { "" };
    let broker = now.named("spate_broker_info").next();
    let label = |l: &str| broker.and_then(|b| b.labels.get(l).cloned()).unwrap_or_default();
    let _ = writeln!(
        out,
        "spate {} broker {} ({} shards), {url}{}",
        label("version"),
        label("node_id"),
        label("shards"),
        if before.is_some() { ", rates per second" } else { ", totals" }
    );
    let connections = now.by("spate_connections", "listener");
    let _ = writeln!(
        out,
        "connections  kafka {}  native {}",
        connections.get("kafka").copied().unwrap_or(0.0),
        connections.get("native").copied().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "partitions   {} held, {} led, {} under-replicated, {} under min ISR, {} offline",
        now.value("spate_partitions"),
        now.value("spate_partitions_led"),
        now.value("spate_partitions_under_replicated"),
        now.value("spate_partitions_under_min_isr"),
        now.value("spate_partitions_offline"),
    );
    let _ = writeln!(
        out,
        "process      {} resident, {} open files, {:.1} s CPU; queued {} of {}",
        bytes(now.value("process_resident_memory_bytes")),
        now.value("process_open_fds"),
        now.value("process_cpu_seconds_total"),
        bytes(now.value("spate_queued_bytes")),
        bytes(now.value("spate_queued_bytes_max")),
    );

    let records_in = counter("spate_topic_records_in_total", "topic");
    let bytes_in = counter("spate_topic_bytes_in_total", "topic");
    let bytes_out = counter("spate_topic_bytes_out_total", "topic");
    let size = now.by("spate_topic_log_size_bytes", "topic");
    let _ = writeln!(
        out,
        "\n{:<32} {:>14} {:>12} {:>12} {:>12}",
        "topic",
        format!("records in{per}"),
        format!("in{per}"),
        format!("out{per}"),
        "on disk"
    );
    for (topic, on_disk) in &size {
        let _ = writeln!(
            out,
            "{topic:<32} {:>14.0} {:>12} {:>12} {:>12}",
            records_in.get(topic).copied().unwrap_or(0.0),
            bytes(bytes_in.get(topic).copied().unwrap_or(0.0)),
            bytes(bytes_out.get(topic).copied().unwrap_or(0.0)),
            bytes(*on_disk),
        );
    }

    let _ = writeln!(out, "\n{:<30} {:>12} {:>12}", "requests", format!("count{per}"), "errors");
    for listener in ["kafka", "native"] {
        let requests = counter(&format!("spate_{listener}_requests_total"), "api");
        let errors = counter(&format!("spate_{listener}_request_errors_total"), "api");
        for (api, count) in requests.iter().filter(|(_, n)| **n > 0.0) {
            let failed = errors.get(api).copied().unwrap_or(0.0);
            let _ =
                writeln!(out, "{:<30} {count:>12.1} {failed:>12.1}", format!("{listener} {api}"));
        }
    }

    let _ = writeln!(out, "\n{:<26} {:>10} {:>10} {:>10}", "latency (ms)", "count", "p50", "p99");
    let mut histograms: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in now.named("spate_latency_seconds_bucket") {
        let (Some(operation), Some(le)) = (sample.labels.get("operation"), sample.labels.get("le"))
        else {
            continue;
        };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        histograms.entry(operation.clone()).or_default().push((bound, sample.value));
    }
    for (operation, buckets) in
        histograms.iter_mut().filter(|(_, b)| b.last().is_some_and(|l| l.1 > 0.0))
    {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = buckets.last().map_or(0.0, |l| l.1);
        let (p50, p99) = (quantile(buckets, 0.5), quantile(buckets, 0.99));
        let _ =
            writeln!(out, "{operation:<26} {count:>10} {:>10} {:>10}", millis(p50), millis(p99));
    }

    // One row per group and topic it lags on; a group with no lag here gets a row of its own.
    let members = now.by("spate_group_members", "group");
    if !members.is_empty() {
        let _ = writeln!(out, "\n{:<32} {:>8} {:<32} {:>12}", "group", "members", "topic", "lag");
        for (group, count) in &members {
            let lags = (now.named("spate_group_topic_lag"))
                .filter(|s| s.labels.get("group") == Some(group))
                .map(|s| (s.labels.get("topic").cloned().unwrap_or_default(), s.value));
            let mut first = true;
            for (topic, lag) in lags {
                let (name, count) = match first {
                    true => (group.as_str(), count.to_string()),
                    false => ("", String::new()),
                };
                let _ = writeln!(out, "{name:<32} {count:>8} {topic:<32} {lag:>12}");
                first = false;
            }
            if first {
                let _ = writeln!(out, "{group:<32} {count:>8}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_parses_with_escaped_labels() {
        let text = "# HELP x y\nplain 3\nlabelled{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5\n\
                    h_bucket{le=\"+Inf\"} 7\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(
            samples[0],
            Sample { name: "plain".into(), labels: BTreeMap::new(), value: 3.0 }
        );
        assert_eq!(samples[1].labels["b"], "q\"uo\\te\n");
        assert_eq!(samples[1].value, 2.5);
        assert!(parse("no_value\n").is_err());
        assert!(parse("broken{a=\"1} 2\n").is_err());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.001, 0.0), (0.01, 50.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
        let near = |q: f64, expected: f64| {
            let found = quantile(&buckets, q).unwrap();
            assert!((found - expected).abs() < 1e-9, "quantile {q}: {found}, not {expected}");
        };
        near(0.5, 0.01);
        near(0.75, 0.055);
        near(0.25, 0.0055);
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn a_groups_lag_shares_its_row() {
        let text = "spate_group_members{group=\"readers\"} 2\n\
                    spate_group_members{group=\"idle\"} 0\n\
                    spate_group_topic_lag{group=\"readers\",topic=\"orders\"} 42\n";
        let now = Scrape { at: Instant::now(), samples: parse(text).unwrap() };
        let shown = summary("http://x/metrics", &now, None);
        let rows: Vec<Vec<&str>> = (shown.lines())
            .skip_while(|l| !l.starts_with("group"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows, vec![vec!["idle", "0"], vec!["readers", "2", "orders", "42"]], "{shown}");
    }
}
