//! The `spate` command: `serve` runs the broker; `topic`, `produce` and `consume` are clients of
//! a running broker, like Kafka's console tools; `cluster status` shows the cluster; `metrics`
//! summarizes a broker's `/metrics`; `tune disk` measures a data directory's device.

pub mod cluster;
pub mod console;
pub mod group;
pub mod metrics;
pub mod serve;
pub mod topic;
pub mod tune;

use std::future::Future;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "spate",
    version,
    about = "A thread-per-core, io_uring message broker in the Kafka mould"
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG directive); RUST_LOG wins.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// The cluster: brokers, controller voters, the active controller.
    Cluster {
        #[command(subcommand)]
        action: cluster::ClusterCommand,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        action: topic::TopicCommand,
    },
    /// List consumer groups; describe one: members, assignments, committed offsets and lag.
    Group {
        #[command(subcommand)]
        action: group::GroupCommand,
    },
    /// Read records from stdin, one per line, and produce them.
    Produce(console::ProduceArgs),
    /// Print records of a topic.
    Consume(console::ConsumeArgs),
    /// A live summary of a broker's /metrics: traffic by topic, requests, latency, groups.
    Metrics(metrics::MetricsArgs),
    /// Measure this machine and recommend settings.
    Tune {
        #[command(subcommand)]
        what: tune::TuneCommand,
    },
}

/// Settings changed by a client subcommand (`topic alter`, `cluster config`), in the order of
/// Kafka's IncrementalAlterConfigs: those set, then those taken away.
#[derive(Args, Debug, Clone)]
pub struct ConfigChanges {
    /// Set a setting, e.g. --config retention.ms=60000 (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// Take a setting away: the next level holds again (repeatable).
    #[arg(long = "delete-config", value_name = "KEY")]
    pub delete_configs: Vec<String>,
    /// Check the change without making it.
    #[arg(long)]
    pub validate_only: bool,
}

impl ConfigChanges {
    pub fn into_changes(self) -> Vec<crate::config::ConfigChange> {
        use crate::config::ConfigChange;
        let set = (self.configs.into_iter()).map(|(key, value)| ConfigChange::Set { key, value });
        let deleted = self.delete_configs.into_iter().map(|key| ConfigChange::Delete { key });
        set.chain(deleted).collect()
    }
}

/// Where a client subcommand finds the broker.
#[derive(Args, Debug, Clone)]
pub struct BrokerAddress {
    /// The broker's native listener [default: the local broker `spate serve` starts]
    #[arg(long, short = 'b', value_name = "HOST:PORT")]
    pub broker: Option<String>,
}

impl BrokerAddress {
    pub fn address(&self) -> String {
        self.broker.clone().unwrap_or_else(crate::client::default_address)
    }
}

/// Runs a client future on a single glommio executor on this thread.
pub fn run_client<F, Fut, T>(make: F) -> Result<T, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| format!("starting the client executor: {e}"))?;
    executor.run(make())
}

/// Parses `key=value`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) =
        text.split_once('=').ok_or_else(|| format!("expected key=value, got {text:?}"))?;
    Ok((key.trim().to_string(), value.trim().to_string()))
}
