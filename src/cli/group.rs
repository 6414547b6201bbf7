//! `spate group list|describe|delete|delete-offsets`: consumer groups as their coordinators see them, through
//! any broker of the cluster (a group's requests go to its coordinator; a list asks every live
//! broker for the groups it coordinates).

use clap::Subcommand;

use crate::cli::topic::connect;
use crate::cli::{run_client, BrokerAddress};
use crate::client::{Client, ClientError, Leaders};
use crate::native::messages::{ErrorCode, GroupSummary};

/// How long `group list` asks a broker again while it replays committed offsets.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List {
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Delete a group that has no members, with its committed offsets.
    Delete {
        name: String,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Remove a group's committed offsets of a topic (every partition, or those named) that no
    /// member consumes (Kafka's OffsetDelete): the group starts there again by its reset policy.
    DeleteOffsets {
        name: String,
        #[arg(long)]
        topic: String,
        /// The partitions (repeatable; default: every partition of the topic).
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<i32>,
        #[command(flatten)]
        broker: BrokerAddress,
    },
    /// Show a group's members and assignments, and per partition the committed offset, the
    /// high watermark and the lag between them.
    Describe {
        name: String,
        #[command(flatten)]
        broker: BrokerAddress,
    },
}

impl GroupCommand {
    pub fn run(self) -> Result<(), String> {
        run_client(|| async move {
            match self {
                GroupCommand::List { broker } => {
                    let client = connect(&broker).await?;
                    let metadata = client.metadata(Some(Vec::new()), false).await;
                    let metadata = metadata.map_err(|e| e.to_string())?;
                    let mut groups = Vec::new();
                    for broker in &metadata.brokers {
                        let address = crate::config::host_port(&broker.host, broker.port);
                        let asked = async {
                            match broker.node == metadata.node {
                                true => listed_when_loaded(&client).await,
                                false => {
                                    listed_when_loaded(&Client::connect(&address).await?).await
                                }
                            }
                        };
                        let listed = asked.await.map_err(|e| format!("broker {address}: {e}"))?;
                        groups.extend(listed);
                    }
                    groups.sort_by(|a, b| a.group.cmp(&b.group));
                    for group in groups {
                        println!("{:<32} {:<20} {}", group.group, group.state, group.protocol_type);
                    }
                }
                GroupCommand::Delete { name, broker } => {
                    let cluster = Leaders::new(connect(&broker).await?);
                    let deleted = cluster.with_coordinator(&name, |coordinator| {
                        let name = name.clone();
                        async move { coordinator.delete_group(&name).await }
                    });
                    deleted.await.map_err(|e| e.to_string())?;
                    println!("deleted group {name}");
                }
                GroupCommand::DeleteOffsets { name, topic, partitions, broker } => {
                    let client = connect(&broker).await?;
                    let partitions = match partitions.is_empty() {
                        false => partitions,
                        true => {
                            let described = client.describe_topic(&topic).await;
                            let described = described.map_err(|e| e.to_string())?;
                            let all = described.partitions.iter().map(|p| p.partition as i32);
                            all.collect()
                        }
                    };
                    let asked: Vec<(String, i32)> =
                        partitions.iter().map(|p| (topic.clone(), *p)).collect();
                    let cluster = Leaders::new(client);
                    let deleted = cluster.with_coordinator(&name, |coordinator| {
                        let (name, asked) = (name.clone(), asked.clone());
                        async move { coordinator.delete_offsets(&name, asked).await }
                    });
                    let mut failed = 0;
                    for (topic, partition, outcome) in deleted.await.map_err(|e| e.to_string())? {
                        match outcome {
                            Ok(()) => println!("{topic}-{partition}: removed"),
                            Err(e) => {
                                failed += 1;
                                println!("{topic}-{partition}: {e}");
                            }
                        }
                    }
                    if failed > 0 {
                        return Err(format!("{failed} partition(s) kept their offsets"));
                    }
                }
                GroupCommand::Describe { name, broker } => {
                    let cluster = Leaders::new(connect(&broker).await?);
                    let described = cluster.with_coordinator(&name, |coordinator| {
                        let name = name.clone();
                        async move { coordinator.describe_group(&name).await }
                    });
                    let group = described.await.map_err(|e| e.to_string())?;
                    println!(
                        "group {name} state {} protocol {} {}",
                        group.state, group.protocol_type, group.protocol
                    );
                    for member in &group.members {
                        let assigned: Vec<String> = member
                            .assignment
                            .iter()
                            .map(|(topic, partitions)| format!("{topic}{partitions:?}"))
                            .collect();
                        println!(
                            "  member {}  client {} {}{}  assigned {}",
                            member.member_id,
                            member.client_id,
                            member.client_host,
                            member
                                .instance_id
                                .as_ref()
                                .map_or(String::new(), |i| format!("  instance {i}")),
                            assigned.join(" ")
                        );
                    }
                    for offset in &group.offsets {
                        let lag = if offset.high_watermark < 0 {
                            "-".to_string()
                        } else {
                            (offset.high_watermark - offset.committed).max(0).to_string()
                        };
                        println!(
                            "  {:<24} partition {:>4}  committed {:>12}  high_watermark {:>12}  lag {lag:>10}",
                            offset.topic, offset.partition, offset.committed, offset.high_watermark
                        );
                    }
                }
            }
            Ok(())
        })
    }
}

/// A broker's groups, asked again while it replays a `__consumer_offsets` partition (it
/// answers COORDINATOR_NOT_AVAILABLE meanwhile), for up to [`LOAD_WAIT`].
async fn listed_when_loaded(client: &Client) -> Result<Vec<GroupSummary>, ClientError> {
    let deadline = std::time::Instant::now() + LOAD_WAIT;
    loop {
        match client.list_groups().await {
            Err(e)
                if e.code() == Some(ErrorCode::CoordinatorNotAvailable)
                    && std::time::Instant::now() < deadline =>
            {
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
            listed => return listed,
        }
    }
}
