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
    /// Show a topic's partitions, their offsets and owning shards, and its settings.
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
                TopicCommand::Create { name, partitions, configs, broker } => {
                    let client = connect(&broker).await?;
                    client
                        .create_topic(&name, partitions, configs)
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
                    for p in &topic.partitions {
                        println!(
                            "  partition {:>4}  shard {:>3}  log_start {:>12}  high_watermark {:>12}",
                            p.partition, p.shard, p.log_start, p.high_watermark
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
