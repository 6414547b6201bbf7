//! `spate cluster status`: the brokers, the voters and the active controller, as a voter sees
//! them.

use clap::Subcommand;

use crate::cli::topic::connect;
use crate::cli::{run_client, BrokerAddress};
use crate::native::messages::ClusterStatus;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Print the brokers (id, addresses, rack, live or fenced, epoch), the controller voters and
    /// the active controller, and the partitions without a leader. Ask a controller voter.
    Status {
        #[command(flatten)]
        broker: BrokerAddress,
    },
}

impl ClusterCommand {
    pub fn run(self) -> Result<(), String> {
        run_client(|| async move {
            match self {
                ClusterCommand::Status { broker } => {
                    let client = connect(&broker).await?;
                    let status = client.cluster_status().await.map_err(|e| e.to_string())?;
                    print!("{}", render(&status));
                }
            }
            Ok(())
        })
    }
}

fn render(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let voters: Vec<String> = status.voters.iter().map(|v| v.to_string()).collect();
    let leader = status.leader.map_or("none elected".to_string(), |l| l.to_string());
    out.push_str(&format!(
        "controller voters {}  active controller {leader}  term {}  (as node {} sees it, \
         metadata applied to entry {})\n",
        voters.join(","),
        status.term,
        status.node,
        status.applied
    ));
    for b in &status.brokers {
        let state = match (b.fenced, b.shut_down) {
            (false, _) => "live",
            (true, true) => "shut down",
            (true, false) => "fenced",
        };
        let (kafka, native) = (&b.endpoints.kafka, &b.endpoints.native);
        out.push_str(&format!(
            "broker {:>4}  {:<9}  epoch {:>6}  kafka {}:{}  native {}:{}  rack {}\n",
            b.node,
            state,
            b.broker_epoch,
            kafka.0,
            kafka.1,
            native.0,
            native.1,
            b.rack.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "topics {}  offline partitions {}\n",
        status.topics, status.offline_partitions
    ));
    out
}
