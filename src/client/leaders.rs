//! A cluster's brokers as one client sees them, found from one of them (the bootstrap): each
//! partition's requests go to a connection to its leader, learnt from Metadata and learnt again
//! when a broker answers NOT_LEADER_OR_FOLLOWER (as Kafka clients refresh their metadata), and
//! each group's requests to its coordinator, learnt from FindCoordinator and learnt again when a
//! broker answers NOT_COORDINATOR.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};
use crate::native::messages::ErrorCode;

/// How long a request refused because its partition's leader moved, is not known yet (a new
/// topic reaching every broker, a broker failing over: fencing takes its session timeout), is
/// on a disk that refuses writes (its broker is being fenced) or cannot be reached, is asked
/// again, and how long apart.
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_WAIT: Duration = Duration::from_millis(200);

pub struct Leaders {
    bootstrap: Client,
    /// Connections by the native address of the broker at the other end.
    connections: RefCell<HashMap<String, Client>>,
    /// The leader's native address, by topic and partition.
    leaders: RefCell<HashMap<(String, u32), String>>,
    /// Topics whose leaders are known and connected ([`Self::warm`]).
    warm: RefCell<HashSet<String>>,
    /// The coordinator's native address, by group.
    coordinators: RefCell<HashMap<String, String>>,
}

impl Leaders {
    pub fn new(bootstrap: Client) -> Self {
        Self {
            bootstrap,
            connections: RefCell::default(),
            leaders: RefCell::default(),
            warm: RefCell::default(),
            coordinators: RefCell::default(),
        }
    }

    /// The connection the client was given.
    pub fn bootstrap(&self) -> &Client {
        &self.bootstrap
    }

    /// Learns `topic`'s leaders and connects to each, once: requests sent afterwards find their
    /// connection without waiting, so requests to one partition go out in the order they are
    /// made (until a leader moves).
    pub async fn warm(&self, topic: &str) -> Result<(), ClientError> {
        if self.warm.borrow().contains(topic) {
            return Ok(());
        }
        self.learn(topic).await?;
        let addresses: HashSet<String> = (self.leaders.borrow().iter())
            .filter(|((t, _), _)| t == topic)
            .map(|(_, address)| address.clone())
            .collect();
        for address in addresses {
            self.connection(&address).await?;
        }
        self.warm.borrow_mut().insert(topic.to_string());
        Ok(())
    }

    /// Runs `request` against `partition`'s leader, learning the leaders again and retrying
    /// (for up to 30 s) when the broker asked does not lead it, does not know the topic yet,
    /// it has no leader for the moment, its disk refuses writes (KAFKA_STORAGE_ERROR, which
    /// Kafka's clients retry too), or the connection to its leader is lost. A request sent
    /// again after a lost connection may have been applied the first time, and one sent again
    /// goes out after later ones: a produce is then stored twice, or out of order, as with a
    /// Kafka producer that retries without idempotence.
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
        let find = async || self.leader_of(topic, partition).await;
        self.retrying(find, request, may_pass, || self.forget(topic)).await
    }

    /// Runs `request` against `group`'s coordinator, finding it again and retrying (for up to
    /// 30 s) when the broker asked does not coordinate the group (any more), none can for the
    /// moment (its `__consumer_offsets` partition is being created or has no leader), or the
    /// connection to it is lost.
    pub async fn with_coordinator<T, F, Fut>(
        &self,
        group: &str,
        request: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let find = async || self.coordinator_of(group).await;
        let forget = || drop(self.coordinators.borrow_mut().remove(group));
        self.retrying(find, request, coordinator_may_pass, forget).await
    }

    /// Runs `request` on the connection `find` gives, for up to [`RETRY_FOR`] while its errors
    /// `pass`, forgetting what was found (`forget`) before each new try; a connection found
    /// lost is dropped.
    async fn retrying<T, F, Fut>(
        &self,
        find: impl AsyncFn() -> Result<(String, Client), ClientError>,
        request: F,
        pass: fn(&ClientError) -> bool,
        forget: impl Fn(),
    ) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let outcome = match find().await {
                Ok((address, client)) => match request(client).await {
                    Err(e) if is_lost(&e) => {
                        self.connections.borrow_mut().remove(&address);
                        Err(e)
                    }
                    outcome => outcome,
                },
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if pass(&e) && Instant::now() < deadline => {
                    forget();
                    glommio::timer::sleep(RETRY_WAIT).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// The connection to `group`'s coordinator (and its address), finding it when not known.
    async fn coordinator_of(&self, group: &str) -> Result<(String, Client), ClientError> {
        let known = self.coordinators.borrow().get(group).cloned();
        let address = match known {
            Some(address) => address,
            None => {
                let address =
                    self.ask_any(|broker| async move { broker.find_coordinator(group).await });
                let address = address.await?;
                self.coordinators.borrow_mut().insert(group.to_string(), address.clone());
                address
            }
        };
        let client = self.connection(&address).await?;
        Ok((address, client))
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
        let client = self.connection(&address).await?;
        Ok((address, client))
    }

    /// The connection to the broker at `address`, made once however many ask at a time.
    async fn connection(&self, address: &str) -> Result<Client, ClientError> {
        if let Some(open) = self.connections.borrow().get(address) {
            return Ok(open.clone());
        }
        let made = Client::connect(address).await?;
        // Another request may have connected meanwhile: one connection per broker.
        let mut connections = self.connections.borrow_mut();
        Ok(connections.entry(address.to_string()).or_insert(made).clone())
    }

    /// Asks where `topic`'s partitions are led.
    async fn learn(&self, topic: &str) -> Result<(), ClientError> {
        let topics = Some(vec![topic.to_string()]);
        let metadata = self.ask_any(|broker| {
            let topics = topics.clone();
            async move { broker.metadata(topics, false).await }
        });
        self.take(topic, metadata.await?)
    }

    /// Asks the bootstrap broker, or (if it cannot answer) any other broker this client is
    /// connected to.
    async fn ask_any<T, F, Fut>(&self, ask: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut askable = vec![self.bootstrap.clone()];
        askable.extend(self.connections.borrow().values().cloned());
        let mut last = None;
        for broker in askable {
            match ask(broker).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no broker to ask".into())))
    }

    fn take(
        &self,
        topic: &str,
        metadata: crate::native::messages::MetadataResponse,
    ) -> Result<(), ClientError> {
        let described = metadata
            .topics
            .first()
            .ok_or_else(|| ClientError::Protocol(format!("no metadata for {topic}")))?;
        ClientError::from_body(&described.error)?;
        let mut leaders = self.leaders.borrow_mut();
        for partition in &described.partitions {
            if let Some(address) = metadata.leader_address(partition) {
                leaders.insert((topic.to_string(), partition.partition), address);
            }
        }
        Ok(())
    }

    fn forget(&self, topic: &str) {
        self.leaders.borrow_mut().retain(|(t, _), _| t != topic);
        self.warm.borrow_mut().remove(topic);
    }
}

/// A group refusal that passes: the coordinator moved or is not known yet, a broker stopping
/// or out of reach.
fn coordinator_may_pass(error: &ClientError) -> bool {
    let passing = [ErrorCode::NotCoordinator, ErrorCode::CoordinatorNotAvailable];
    error.code().is_some_and(|code| passing.contains(&code)) || is_lost(error)
}

/// The connection is gone: the broker stopped, or the network failed.
fn is_lost(error: &ClientError) -> bool {
    matches!(error, ClientError::Disconnected(_) | ClientError::Io(_))
}

/// A refusal that passes: a leader moved or not known yet, a topic still reaching the broker
/// asked, a broker stopping or out of reach.
fn may_pass(error: &ClientError) -> bool {
    // Kafka's retriable errors a leader change brings: the in-sync set is short while a
    // follower catches up or a failed broker is fenced; a leader whose disk refuses writes
    // (KAFKA_STORAGE_ERROR, which Kafka's clients retry after learning the leaders anew) is
    // fenced and replaced.
    let passing = [
        ErrorCode::StorageError,
        ErrorCode::NotLeaderOrFollower,
        ErrorCode::NotAvailable,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::NotEnoughReplicas,
        ErrorCode::NotEnoughReplicasAfterAppend,
        ErrorCode::FencedLeaderEpoch,
        ErrorCode::UnknownLeaderEpoch,
    ];
    error.code().is_some_and(|code| passing.contains(&code)) || is_lost(error)
}
