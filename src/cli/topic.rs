//! `spate topic create|list|describe|alter|producers|delete-records|delete|reassign`.

use std::time::{Duration, Instant};

use clap::Subcommand;

use crate::cli::{run_client, BrokerAddress, ConfigChanges};
use crate::client::Client;
use crate::native::messages::{PartitionMetadata, Reassignment};
use crate::types::{NodeId, PartitionId};

/// How often `reassign --wait` looks again, and for how long at most.
const REASSIGN_POLL: Duration = Duration::from_millis(500);
const REASSIGN_WAIT_MAX: Duration = Duration::from_secs(600);

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
    /// Change a topic's settings at once, on every broker, without a restart (Kafka's
    /// IncrementalAlterConfigs): overrides set or taken away; the others stay as they are.
    Alter {
        name: String,
        #[command(flatten)]
        changes: ConfigChanges,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Show the idempotent producers each partition's leader remembers (Kafka's
    /// DescribeProducers): id, epoch, last sequence and newest timestamp.
    Producers {
        name: String,
        /// The partitions (repeatable; default: every partition).
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<u32>,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Delete a partition's records below an offset (Kafka's DeleteRecords): its log start
    /// moves there, durably, and reads below it are refused from then on.
    DeleteRecords {
        name: String,
        #[arg(long, short = 'p')]
        partition: u32,
        /// The new log start (default: the high watermark, deleting every record).
        #[arg(long)]
        before: Option<u64>,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Move partitions to other brokers (Kafka's AlterPartitionReassignments): the new replicas
    /// catch up and join the in-sync set, then the replicas not listed are removed.
    Reassign {
        name: String,
        /// The partitions to move (repeatable; default: every partition of the topic).
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<u32>,
        /// The brokers to hold each partition, the preferred leader first, e.g. --replicas 1,2,4.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Vec<i32>,
        /// Cancel the moves in progress: the partitions go back to the replicas they had.
        #[arg(long)]
        cancel: bool,
        /// Wait until every move is complete, showing the partitions as they go.
        #[arg(long)]
        wait: bool,
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
                        let mut moving = String::new();
                        for (what, set) in
                            [("adding", &p.adding), ("removing", &p.removing), ("eligible", &p.elr)]
                        {
                            if !set.is_empty() {
                                moving.push_str(&format!("  {what} {}", nodes(set)));
                            }
                        }
                        println!(
                            "  partition {:>4}  leader {leader:>4}  epoch {:>4}  replicas {:<9} \
                             isr {:<9} shard {:>3}  log_start {:>12}  high_watermark {:>12}{moving}",
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
                TopicCommand::Alter { name, changes, broker } => {
                    let validate_only = changes.validate_only;
                    let changes = changes.into_changes();
                    if changes.is_empty() {
                        return Err("nothing to change: give --config or --delete-config".into());
                    }
                    let count = changes.len();
                    let client = connect(&broker).await?;
                    (client.alter_topic_config(&name, changes, validate_only).await)
                        .map_err(|e| e.to_string())?;
                    match validate_only {
                        true => println!("{count} change(s) to topic {name} would be taken"),
                        false => println!("changed {count} setting(s) of topic {name}"),
                    }
                }
                TopicCommand::Producers { name, partitions, broker } => {
                    let client = connect(&broker).await?;
                    let partitions = match partitions.is_empty() {
                        false => partitions,
                        true => {
                            let topic = client.describe_topic(&name).await;
                            let topic = topic.map_err(|e| e.to_string())?;
                            topic.partitions.iter().map(|p| p.partition).collect()
                        }
                    };
                    let cluster = crate::client::Leaders::new(client);
                    for partition in partitions {
                        let asked = cluster.with_leader(&name, partition, |leader| {
                            let name = name.clone();
                            async move { leader.producers(&name, partition).await }
                        });
                        let producers =
                            asked.await.map_err(|e| format!("{name}-{partition}: {e}"))?;
                        for p in producers {
                            println!(
                                "{name}-{partition}  producer {}  epoch {}  last_sequence {}  \
                                 last_timestamp {}",
                                p.producer_id, p.epoch, p.last_sequence, p.last_timestamp
                            );
                        }
                    }
                }
                TopicCommand::DeleteRecords { name, partition, before, broker } => {
                    let cluster = crate::client::Leaders::new(connect(&broker).await?);
                    let deleted = cluster.with_leader(&name, partition, |leader| {
                        let name = name.clone();
                        async move { leader.delete_records(&name, partition, before).await }
                    });
                    let start = deleted.await.map_err(|e| e.to_string())?;
                    println!("{name}-{partition} starts at offset {start}");
                }
                TopicCommand::Delete { name, broker } => {
                    let client = connect(&broker).await?;
                    client.delete_topic(&name).await.map_err(|e| e.to_string())?;
                    println!("deleted topic {name}");
                }
                TopicCommand::Reassign { name, partitions, replicas, cancel, wait, broker } => {
                    let client = connect(&broker).await?;
                    reassign(&client, &name, partitions, replicas, cancel, wait).await?;
                }
            }
            Ok(())
        })
    }
}

/// `spate topic reassign`: the moves asked for, then (with `wait`) the partitions' progress
/// until none is moving.
async fn reassign(
    client: &Client,
    name: &str,
    partitions: Vec<u32>,
    replicas: Vec<i32>,
    cancel: bool,
    wait: bool,
) -> Result<(), String> {
    // Every partition, unless named; for a cancel, every partition being moved.
    let partitions: Vec<u32> = match partitions.is_empty() {
        false => partitions,
        true => {
            let topic = client.describe_topic(name).await.map_err(|e| e.to_string())?;
            let moving = |p: &&PartitionMetadata| !p.adding.is_empty() || !p.removing.is_empty();
            let named = topic.partitions.iter().filter(|p| !cancel || moving(p));
            named.map(|p| p.partition).collect()
        }
    };
    let target = (!cancel).then(|| replicas.iter().map(|r| NodeId(*r)).collect::<Vec<_>>());
    let moves = partitions
        .iter()
        .map(|p| Reassignment {
            topic: name.to_string(),
            partition: PartitionId(*p),
            target: target.clone(),
        })
        .collect();
    client.reassign(moves).await.map_err(|e| e.to_string())?;
    match &target {
        Some(target) => {
            println!("moving {} partition(s) of {name} to {target:?}", partitions.len())
        }
        None => println!("cancelled the moves of {} partition(s) of {name}", partitions.len()),
    }
    if !wait {
        return Ok(());
    }
    let deadline = Instant::now() + REASSIGN_WAIT_MAX;
    loop {
        let topic = client.describe_topic(name).await.map_err(|e| e.to_string())?;
        let moving: Vec<String> = (topic.partitions.iter())
            .filter(|p| partitions.contains(&p.partition))
            .filter(|p| !p.adding.is_empty() || !p.removing.is_empty())
            .map(|p| format!("{} (adding {:?}, in sync {:?})", p.partition, p.adding, p.isr))
            .collect();
        if moving.is_empty() {
            println!("every move is complete");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("still moving after {REASSIGN_WAIT_MAX:?}: {}", moving.join(", ")));
        }
        println!("moving: {}", moving.join(", "));
        glommio::timer::sleep(REASSIGN_POLL).await;
    }
}

pub async fn connect(broker: &BrokerAddress) -> Result<Client, String> {
    Client::connect(&broker.address()).await.map_err(|e| e.to_string())
}
