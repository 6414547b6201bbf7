//! `spate serve`: builds the broker's configuration from defaults, a file and flags, then runs.

use std::path::PathBuf;

use clap::Args;

use crate::config::BrokerConfig;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file of settings, by Kafka's names ("log.retention.ms" = 3600000).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where partitions live [default: ./spate-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// CPUs to run one pinned shard each on, e.g. 0-3 or 0,2 [default: every online CPU]
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Native protocol listener [default: 0.0.0.0:9192]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Kafka protocol listener [default: 0.0.0.0:9092]
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_listener: Option<String>,
    /// Prometheus `/metrics` listener; port 0 takes a free one, `off` serves none
    /// [default: 0.0.0.0:9644]
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics_listener: Option<String>,
    /// The host:port Kafka clients are told to connect to [default: the address they used]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised: Option<String>,
    /// Override one setting, e.g. --set log.retention.ms=60000 (repeatable; applied after --config).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::parse_key_value)]
    pub settings: Vec<(String, String)>,
    /// Also write each latency histogram at shutdown as an HdrHistogram `.hgrm` file here.
    #[arg(long, value_name = "DIR")]
    pub histogram_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// Defaults, then the file, then `--set`, then the dedicated flags.
    pub fn broker_config(&self) -> Result<BrokerConfig, String> {
        let mut config = BrokerConfig::default();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            config.apply_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        for (key, value) in &self.settings {
            config.set(key, value).map_err(|e| format!("--set {key}={value}: {e}"))?;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(cores) = &self.cores {
            config.set("cores", cores).map_err(|e| format!("--cores: {e}"))?;
        }
        if let Some(listen) = &self.listen {
            config.set("native.listener", listen).map_err(|e| format!("--listen: {e}"))?;
        }
        if let Some(listen) = &self.kafka_listener {
            config.set("listeners", listen).map_err(|e| format!("--kafka-listener: {e}"))?;
        }
        if let Some(listen) = &self.metrics_listener {
            config
                .set("metrics.listener", listen)
                .map_err(|e| format!("--metrics-listener: {e}"))?;
        }
        if let Some(advertised) = &self.advertised {
            config
                .set("advertised.listeners", advertised)
                .map_err(|e| format!("--advertised: {e}"))?;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    pub fn run(self) -> Result<(), String> {
        let config = self.broker_config()?;
        abort_on_panic();
        crate::broker::run(config, self.histogram_dir)
    }
}

/// A panic on any shard ends the whole process, like a crash. The other shards would otherwise
/// wait for it at the start and stop barriers forever, and a half-alive broker serves some
/// partitions but not others; everything acknowledged is already on disk, so recovery after a
/// restart is the same as after `kill -9`.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("spate: a shard panicked; aborting the process");
        std::process::abort();
    }));
}
