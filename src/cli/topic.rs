//! `spate topic create|list|describe|delete`.

use clap::Subcommand;

use crate::cli::{run_client, BrokerAddress};
use crate::client::Client;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        /// Replicas of each partition, on distinct brokers (default: the broker's
        /// default.replication.factor).
        #[arg(long, short = 'r')]
        replication_factor: Option<u16>,
        /// A topic setting, e.g. --config retention.ms=60000 (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::parse_key_value)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// List topics.
    List {
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Show a topic's partitions (leader, replicas, in-sync replicas, offsets and owning shard)
    /// and its settings.
    Describe {
        name: String,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        broker: BrokerAddress,
    },
}

impl TopicCommand {
    pub fn run(self) -> Result<(), String> {
        run_client(|| async move {
            match self {
                TopicCommand::Create { name, partitions, replication_factor, configs, broker } => {
                    let client = connect(&broker).await?;
                    client
                        .create_replicated_topic(&name, partitions, replication_factor, configs)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("created topic {name} with {partitions} partition(s)");
                }
                TopicCommand::List { broker } => {
                    let client = connect(&broker).await?;
                    let metadata = client.metadata(None, false).await.map_err(|e| e.to_string())?;
                    for topic in metadata.topics {
                        println!("{}", topic.name);
                    }
                }
                TopicCommand::Describe { name, broker } => {
                    let client = connect(&broker).await?;
                    let topic = client.describe_topic(&name).await.map_err(|e| e.to_string())?;
                    println!("topic {} partitions {}", topic.name, topic.partitions.len());
                    for (key, value) in &topic.configs {
                        println!("  config {key}={value}");
                    }
                    let nodes = |nodes: &[crate::types::NodeId]| {
                        nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                    };
                    for p in &topic.partitions {
                        let leader = p.leader.map_or("none".to_string(), |l| l.to_string());
                        println!(
                            "  partition {:>4}  leader {leader:>4}  epoch {:>4}  replicas {:<9} \
                             isr {:<9} shard {:>3}  log_start {:>12}  high_watermark {:>12}",
                            p.partition,
                            p.leader_epoch,
                            nodes(&p.replicas),
                            nodes(&p.isr),
                            p.shard,
                            p.log_start,
                            p.high_watermark
                        );
                    }
                }
                TopicCommand::Delete { name, broker } => {
                    let client = connect(&broker).await?;
                    client.delete_topic(&name).await.map_err(|e| e.to_string())?;
                    println!("deleted topic {name}");
                }
            }
            Ok(())
        })
    }
}

pub async fn connect(broker: &BrokerAddress) -> Result<Client, String> {
    Client::connect(&broker.address()).await.map_err(|e| e.to_string())
}
