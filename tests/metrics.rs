//! `/metrics` as Prometheus sees it: scraped while the load generator runs through both
//! listeners, every scrape parsed by Prometheus's own text parser (the Python client's,
//! `tests/kafka/parse_metrics.py`), and the counters held against what the load generator says
//! it sent; then `spate metrics`, the terminal summary, read from the same endpoint.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka_wire::{batch, produce_request, produced, Conn};
use common::scripts::{kafka_dir, pip_python, require, serial};
use common::{Broker, BINARY};
use kafka_protocol::messages::ApiKey;

/// One GET of `url` (`http://host:port/path`), on a connection of its own: the status line and
/// the body.
fn get(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) =
        rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

fn scrape(url: &str) -> String {
    let (status, body) = get(url);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

fn loadgen() -> PathBuf {
    let path = Path::new(BINARY).with_file_name("spate-loadgen");
    assert!(path.exists(), "{} is missing: `cargo build --workspace` builds it", path.display());
    path
}

/// What the load generator's `--json` says one side did: (records, bytes).
fn sent(json: &str, side: &str) -> (u64, u64) {
    let at = json.find(&format!("\"{side}\":{{")).unwrap_or_else(|| panic!("no {side} in {json}"));
    let field = |name: &str| -> u64 {
        let key = format!("\"{name}\":");
        let from = at + json[at..].find(&key).expect("the field") + key.len();
        let digits: String = json[from..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("a count")
    };
    (field("records"), field("bytes"))
}

/// Runs the load generator with `args` to the end, scraping `url` every 100 ms meanwhile.
fn run_scraping(url: &str, args: &[&str], scrapes: &mut Vec<String>) -> String {
    let mut child = Command::new(loadgen())
        .args(args)
        .args(["--json", "--cores", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spate-loadgen");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("the load generator").is_none() {
        assert!(Instant::now() < deadline, "the load generator ran past two minutes");
        scrapes.push(scrape(url));
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Every scrape parsed by the Python parser; the last one's samples, keyed
/// `name{"label": "value", ...}` (labels sorted).
fn parsed(dir: &Path, scrapes: &[String]) -> BTreeMap<String, f64> {
    let mut files = Vec::new();
    for (n, text) in scrapes.iter().enumerate() {
        let path = dir.join(format!("scrape-{n}.txt"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let output = Command::new(pip_python())
        .arg(kafka_dir().join("parse_metrics.py"))
        .args(&files)
        .output()
        .expect("run parse_metrics.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the parser refused a scrape:\n{stderr}");
    eprintln!("{stderr}");
    (stdout.lines())
        .filter_map(|line| line.rsplit_once('\t'))
        .map(|(key, value)| (key.to_string(), value.parse::<f64>().expect("a number")))
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        let near: Vec<&String> = samples.keys().filter(|k| k.starts_with(&key[..8])).collect();
        panic!("no sample {key}; the ones named alike: {near:?}")
    })
}

fn sum_of(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

#[test]
fn scrapes_during_a_load_parse_and_count_what_the_load_generator_sent() {
    let _serial = serial();
    let python = pip_python();
    require("prometheus_client (Python)", &python, &["-c", "import prometheus_client"]);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let url = broker.metrics_url();
    let mut scrapes = Vec::new();

    let native = run_scraping(
        &url,
        &["-b", &broker.addr, "--topic", "metered", "--partitions", "3", "--records", "150000"],
        &mut scrapes,
    );
    let kafka = run_scraping(
        &url,
        &[
            "--protocol",
            "kafka",
            "-b",
            &broker.kafka_addr,
            "--topic",
            "metered-kafka",
            "--partitions",
            "2",
            "--records",
            "60000",
            "--record-size",
            "200",
        ],
        &mut scrapes,
    );
    // One error each way: a Kafka produce to a partition the topic lacks, and a native
    // DeleteRecords past the end of a partition.
    let mut conn = Conn::open(&broker.kafka_addr);
    let mut request = produce_request("metered-kafka", 1, batch(-1, -1, -1, 1));
    request.topic_data[0].partition_data[0].index = 7;
    let response = conn.call(ApiKey::Produce, 7, &request);
    assert_ne!(produced(&response).0, 0, "a produce to partition 7 of 2 fails");
    drop(conn);
    let refused = Command::new(BINARY)
        .args(["topic", "delete-records", "metered", "--partition", "0", "--before", "999999999"])
        .args(["--broker", &broker.addr])
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // Connections end as the clients close them: wait for the gauge to say so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let text = scrape(&url);
        let closed = text.contains("spate_connections{listener=\"kafka\"} 0")
            && text.contains("spate_connections{listener=\"native\"} 0");
        if closed || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    scrapes.push(last);
    assert!(scrapes.len() >= 3, "scraped {} times", scrapes.len());
    let samples = parsed(dir.path(), &scrapes);

    let (native_records, native_bytes) = sent(&native, "produce");
    let (kafka_records, kafka_bytes) = sent(&kafka, "produce");
    let (native_read, _) = sent(&native, "consume");
    let topic =
        |name: &str, topic: &str| sample(&samples, &format!("{name}{{\"topic\": \"{topic}\"}}"));
    assert_eq!(topic("spate_topic_records_in_total", "metered"), native_records as f64);
    assert_eq!(topic("spate_topic_records_in_total", "metered-kafka"), kafka_records as f64);
    // Batches carry each record's framing besides the values the load generator counts.
    let native_in = topic("spate_topic_bytes_in_total", "metered");
    let kafka_in = topic("spate_topic_bytes_in_total", "metered-kafka");
    assert!(native_in >= native_bytes as f64 && kafka_in >= kafka_bytes as f64);
    // One consumer read each batch once: the Kafka batches went out as they came in; native
    // ones go out in their stored entries, header and padding included.
    assert_eq!(native_read, native_records, "the load generator read back what it wrote");
    assert_eq!(topic("spate_topic_bytes_out_total", "metered-kafka"), kafka_in);
    assert!(topic("spate_topic_bytes_out_total", "metered") >= native_in);
    let high_watermarks = sum_of(&samples, "spate_partition_high_watermark{\"partition\"");
    assert_eq!(high_watermarks, (native_records + kafka_records) as f64);
    assert_eq!(sample(&samples, "spate_partitions{}"), 5.0);
    assert!(topic("spate_topic_log_size_bytes", "metered") >= native_bytes as f64);

    // Requests: every one timed is counted, and the other way round.
    let requests = |listener: &str, api: &str| {
        sample(&samples, &format!("spate_{listener}_requests_total{{\"api\": \"{api}\"}}"))
    };
    let timed = |operation: &str| {
        let key = format!("spate_latency_seconds_count{{\"operation\": \"{operation}\"}}");
        sample(&samples, &key)
    };
    assert!(requests("native", "Produce") > 0.0 && requests("kafka", "Produce") > 0.0);
    assert_eq!(requests("native", "Produce"), timed("request.produce"));
    assert_eq!(requests("kafka", "Produce"), timed("kafka.produce"));
    assert_eq!(requests("kafka", "Fetch"), timed("kafka.fetch"));
    assert_eq!(sum_of(&samples, "spate_kafka_request_errors_total{\"api\": \"Produce\""), 1.0);
    let refused = "spate_native_request_errors_total{\"api\": \"DeleteRecords\"";
    assert_eq!(sum_of(&samples, refused), 1.0);
    assert!(sample(&samples, "spate_connections_accepted_total{\"listener\": \"native\"}") >= 2.0);
    assert!(sample(&samples, "spate_connections_accepted_total{\"listener\": \"kafka\"}") >= 2.0);
    assert!(sample(&samples, "process_resident_memory_bytes{}") > 0.0);
    assert!(sample(&samples, "process_open_fds{}") > 0.0);

    // The terminal summary reads the same endpoint.
    let summary = Command::new(BINARY).args(["metrics", "--url", &url, "--once"]).output().unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success(), "{text}{}", String::from_utf8_lossy(&summary.stderr));
    assert!(text.contains("metered-kafka") && text.contains("Produce"), "{text}");

    // Anything but GET /metrics gets an HTTP answer, not a hang or a closed socket.
    assert!(get(&url.replace("/metrics", "/nothing")).0.starts_with("HTTP/1.1 404"));
}

#[test]
fn a_second_broker_cannot_take_the_metrics_port() {
    let dir = tempfile::tempdir().unwrap();
    let first = Broker::start(&dir.path().join("first"), &[]);
    let address = first.metrics_url().replace("http://", "").replace("/metrics", "");
    let second = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listener", "127.0.0.1:0"])
        .args(["--metrics-listener", &address, "--cores", &common::cores(), "--data-dir"])
        .arg(dir.path().join("second"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("metrics listener on") && stderr.contains("already listening"),
        "{stderr}"
    );
}
