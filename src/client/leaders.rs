//! A cluster's brokers as one client sees them, found from one of them (the bootstrap): each
//! partition's requests go to a connection to its leader, learnt from Metadata and learnt again
//! when a broker answers NOT_LEADER_OR_FOLLOWER (as Kafka clients refresh their metadata).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::native::messages::ErrorCode;

/// How often, and how long apart, a request refused by a broker that no longer leads its
/// partition (or one whose partition has no leader for the moment) is sent again.
const ATTEMPTS: usize = 10;
const RETRY_WAIT: Duration = Duration::from_millis(200);

pub struct Leaders {
    bootstrap: Client,
    /// Connections by the native address of the broker at the other end.
    connections: RefCell<HashMap<String, Client>>,
    /// The leader's native address, by topic and partition.
    leaders: RefCell<HashMap<(String, u32), String>>,
}

impl Leaders {
    pub fn new(bootstrap: Client) -> Self {
        Self { bootstrap, connections: RefCell::default(), leaders: RefCell::default() }
    }

    /// The connection the client was given.
    pub fn bootstrap(&self) -> &Client {
        &self.bootstrap
    }

    /// Runs `request` against `partition`'s leader, learning the leaders again and retrying
    /// (boundedly) when the broker asked does not lead it, it has no leader for the moment, or
    /// the connection to it is lost. A request sent again after a lost connection may have been
    /// applied the first time (a produce is then stored twice, as with a Kafka producer that
    /// retries without idempotence).
    pub async fn with_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        request: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                glommio::timer::sleep(RETRY_WAIT).await;
            }
            let (address, client) = match self.leader_of(topic, partition).await {
                Ok(found) => found,
                Err(e) if is_leader_change(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match request(client).await {
                Err(e) if is_leader_change(&e) => {
                    self.forget(topic);
                    if matches!(e, ClientError::Disconnected(_) | ClientError::Io(_)) {
                        self.connections.borrow_mut().remove(&address);
                    }
                    last = Some(e);
                }
                outcome => return outcome,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no leader".into())))
    }

    /// The connection to `partition`'s leader (and its address), learning where it is when not
    /// known.
    async fn leader_of(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(String, Client), ClientError> {
        let key = (topic.to_string(), partition);
        let known = self.leaders.borrow().get(&key).cloned();
        let address = match known {
            Some(address) => address,
            None => {
                self.learn(topic).await?;
                self.leaders.borrow().get(&key).cloned().ok_or_else(|| ClientError::Broker {
                    code: ErrorCode::NotLeaderOrFollower,
                    message: format!("{topic}-{partition} has no leader for the moment"),
                })?
            }
        };
        let open = self.connections.borrow().get(&address).cloned();
        if let Some(client) = open {
            return Ok((address, client));
        }
        let client = Client::connect(&address).await?;
        self.connections.borrow_mut().insert(address.clone(), client.clone());
        Ok((address, client))
    }

    /// Asks the bootstrap broker where `topic`'s partitions are led.
    async fn learn(&self, topic: &str) -> Result<(), ClientError> {
        let metadata = self.bootstrap.metadata(Some(vec![topic.to_string()]), false).await?;
        let described = metadata
            .topics
            .first()
            .ok_or_else(|| ClientError::Protocol(format!("no metadata for {topic}")))?;
        ClientError::from_body(&described.error)?;
        let mut leaders = self.leaders.borrow_mut();
        for partition in &described.partitions {
            let broker = metadata.brokers.iter().find(|b| Some(b.node) == partition.leader);
            if let Some(broker) = broker {
                let address = crate::config::host_port(&broker.host, broker.port);
                leaders.insert((topic.to_string(), partition.partition), address);
            }
        }
        Ok(())
    }

    fn forget(&self, topic: &str) {
        self.leaders.borrow_mut().retain(|(t, _), _| t != topic);
    }
}

/// A refusal that learning the leaders again and asking again can cure; a lost connection to
/// a broker that stopped is one too.
fn is_leader_change(error: &ClientError) -> bool {
    matches!(error.code(), Some(ErrorCode::NotLeaderOrFollower | ErrorCode::NotAvailable))
        || matches!(error, ClientError::Disconnected(_) | ClientError::Io(_))
}
