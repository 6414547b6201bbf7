//! Topic administration as a broker receives it: what it can check itself (the name, the
//! partition count, the settings, its disk), then the request forwarded to the cluster's active
//! controller (KIP-590), which places the replicas and commits the change; the broker answers
//! once it has published the change to its own shards, so a client that created a topic can use
//! it on this broker at once.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::cluster::decide::{Election, NewPartitions, NewTopic, Reassignment};
use crate::cluster::metadata::PARTITIONS_MAX;
use crate::cluster::node::{ControllerAnswer, ControllerRequest};
use crate::config::{canonical_overrides, ConfigChange, TopicConfig};
use crate::error::{BrokerError, ErrorKind};
use crate::log::segment::PARTITION_DISK_BYTES_AT_FIRST;
use crate::shard::call::ForwardToController;
use crate::shard::catalog::{self, TopicFile, TopicInfo};
use crate::shard::state::{is_internal_topic, Shard};
use crate::shard::CONTROLLER_SHARD;
use crate::types::{NodeId, PartitionId};

/// A topic as a client asks for it, before the broker checks it.
pub struct TopicRequest {
    pub name: String,
    pub partitions: u32,
    /// `None`: `default.replication.factor`.
    pub replication_factor: Option<u16>,
    /// Replicas per partition, the preferred leader first, instead of placing them.
    pub assignment: Option<Vec<Vec<NodeId>>>,
    pub overrides: BTreeMap<String, String>,
}

impl Shard {
    /// Checks a new topic as far as this broker can: the name, the partition count, the
    /// settings against this broker's defaults, and its disk's room for the partitions (the
    /// others' disks are theirs to refuse). Answers the topic as it would be.
    pub async fn check_new_topic(&self, topic: &TopicRequest) -> Result<TopicInfo, BrokerError> {
        let TopicRequest { name, partitions, overrides, .. } = topic;
        catalog::validate_topic_name(name)
            .map_err(|e| BrokerError::new(ErrorKind::InvalidTopicName, e))?;
        if *partitions == 0 || *partitions > PARTITIONS_MAX {
            let why = format!("partitions must be between 1 and {PARTITIONS_MAX}");
            return Err(BrokerError::new(ErrorKind::InvalidPartitions, why));
        }
        let file = TopicFile {
            id: None,
            importing: false,
            partitions: *partitions,
            config: overrides.clone(),
        };
        let info = TopicInfo::resolve(file, &self.topic_defaults())
            .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, e))?;
        self.check_topic_config(&info.config, "max.message.bytes")?;
        if self.has_topic(name) {
            let why = format!("topic {name} exists");
            return Err(BrokerError::new(ErrorKind::TopicAlreadyExists, why));
        }
        self.check_disk_room(*partitions).await?;
        Ok(info)
    }

    /// Creates a topic through the active controller; answers it as checked here.
    pub(super) async fn create_topic_in_cluster(
        self: &Rc<Self>,
        topic: TopicRequest,
    ) -> Result<TopicInfo, BrokerError> {
        let checked = self.check_new_topic(&topic).await?;
        let TopicRequest { name, partitions, replication_factor, assignment, overrides } = topic;
        // One name per setting, so that a later change finds it.
        let overrides = canonical_overrides(overrides);
        let replication_factor =
            replication_factor.unwrap_or(self.config.default_replication_factor);
        let topic = NewTopic {
            name: name.clone(),
            partitions,
            replication_factor,
            assignment,
            config: overrides.into_iter().collect(),
        };
        self.change_metadata(ControllerRequest::CreateTopic { topic, id: None }).await?;
        tracing::info!(topic = %name, partitions, replication_factor, "created topic");
        Ok(checked)
    }

    /// What a topic's settings must meet beyond their own values: a batch of
    /// `max.message.bytes` must fit in a request this broker reads. A refusal names that setting
    /// as `named` (`message.max.bytes` for the brokers' default).
    pub(super) fn check_topic_config(
        &self,
        config: &TopicConfig,
        named: &str,
    ) -> Result<(), BrokerError> {
        if config.max_message_bytes >= self.config.socket_request_max_bytes {
            let why = format!(
                "{named} {} must be below the broker's socket.request.max.bytes {}",
                config.max_message_bytes, self.config.socket_request_max_bytes
            );
            return Err(BrokerError::new(ErrorKind::InvalidConfig, why));
        }
        Ok(())
    }

    /// Changes a topic's settings (IncrementalAlterConfigs; with `replace`, AlterConfigs, whose
    /// settings replace every override): checked here against this broker's defaults, then
    /// through the active controller, which applies them to the topic as its metadata has it
    /// (two changes at once both hold). Answered once this broker's shards have the change;
    /// the other brokers take it as they publish it. `validate_only`: checked, not made.
    pub async fn alter_topic_config(
        self: &Rc<Self>,
        name: &str,
        changes: Vec<ConfigChange>,
        replace: bool,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let Some(info) = self.topic(name) else {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        };
        if is_internal_topic(name) {
            // Its retention is what keeps committed offsets (it is never compacted by Kafka's
            // cleaner here, only by the coordinator's snapshots).
            let why = format!("{name} is internal: the broker keeps its settings");
            return Err(BrokerError::new(ErrorKind::InvalidConfig, why));
        }
        let defaults = self.topic_defaults();
        let current = if replace { BTreeMap::new() } else { info.overrides.clone() };
        let invalid =
            |e: crate::config::ConfigError| BrokerError::new(ErrorKind::InvalidConfig, e.0);
        let altered = defaults.altered_overrides(&current, &changes).map_err(invalid)?;
        let altered_config = defaults.with_overrides(&altered).map_err(invalid)?;
        self.check_topic_config(&altered_config, "max.message.bytes")?;
        if validate_only {
            return Ok(());
        }
        let request =
            ControllerRequest::AlterTopicConfig { name: name.to_string(), changes, replace };
        self.change_metadata(request).await?;
        let now = self.topic(name).map(|info| info.overrides);
        tracing::info!(topic = %name, overrides = ?now.unwrap_or(altered), "changed the topic's settings");
        Ok(())
    }

    /// Changes dynamic broker settings (IncrementalAlterConfigs of a broker resource; with
    /// `replace`, AlterConfigs, whose settings replace every one the resource has): of this
    /// broker (`node`, which must be this one: Kafka's admin clients send a broker's own
    /// resource to that broker) or with `None` the cluster-wide defaults. Checked here against
    /// this broker's static settings, then through the active controller, which applies them
    /// to the resource as its metadata has it. Answered once this broker's shards have the
    /// change; the other brokers take it as they publish it. `validate_only`: checked, not made.
    pub async fn alter_broker_config(
        self: &Rc<Self>,
        node: Option<NodeId>,
        changes: Vec<ConfigChange>,
        replace: bool,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let me = self.config.node_id;
        if node.is_some_and(|node| node != me) {
            let why = format!("this is broker {me}: another broker's settings are changed there");
            return Err(BrokerError::new(ErrorKind::InvalidRequest, why));
        }
        let invalid =
            |e: crate::config::ConfigError| BrokerError::new(ErrorKind::InvalidConfig, e.0);
        let image = self.metadata_image();
        let current = match replace {
            true => BTreeMap::new(),
            false => image.broker_configs.get(&node).cloned().unwrap_or_default(),
        };
        let statics = &self.config.topic_defaults;
        let altered = (statics.altered_broker_settings(&current, &changes, node.is_some()))
            .map_err(invalid)?;
        // The defaults this broker would resolve topics with: they must meet what topics do.
        let mut configs = image.broker_configs.clone();
        configs.insert(node, altered.clone());
        self.check_topic_config(&self.under_dynamic_settings(&configs).0, "message.max.bytes")?;
        if validate_only {
            return Ok(());
        }
        let request = ControllerRequest::AlterBrokerConfig { node, changes, replace };
        self.change_metadata(request).await?;
        let now = self.metadata_image().broker_configs.get(&node).cloned().unwrap_or_default();
        let resource =
            node.map_or("the cluster-wide defaults".to_string(), |n| format!("broker {n}"));
        tracing::info!(settings = ?now, "changed the dynamic broker settings of {resource}");
        Ok(())
    }

    pub(super) async fn add_partitions_in_cluster(
        self: &Rc<Self>,
        name: &str,
        count: u32,
        assignment: Option<Vec<Vec<NodeId>>>,
    ) -> Result<(), BrokerError> {
        let Some(info) = self.topic(name) else {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        };
        if count <= info.partitions || count > PARTITIONS_MAX {
            let why = format!(
                "topic {name} has {} partitions; a new count must be above that and at most \
                 {PARTITIONS_MAX}, not {count}",
                info.partitions
            );
            return Err(BrokerError::new(ErrorKind::InvalidPartitions, why));
        }
        self.check_disk_room(count - info.partitions).await?;
        let request = ControllerRequest::CreatePartitions(NewPartitions {
            name: name.to_string(),
            count,
            assignment,
        });
        self.change_metadata(request).await?;
        tracing::info!(topic = %name, from = info.partitions, to = count, "added partitions");
        Ok(())
    }

    /// Asks the active controller for leader elections (KIP-460) of `partitions`, every
    /// partition for `None`; answered once this broker's shards have the outcome, which the
    /// caller reads from the metadata.
    pub async fn elect_leaders(
        self: &Rc<Self>,
        election: Election,
        partitions: Option<Vec<(String, PartitionId)>>,
    ) -> Result<(), BrokerError> {
        self.change_metadata(ControllerRequest::ElectLeaders { election, partitions }).await
    }

    /// Asks the active controller to move partitions to other replicas, or back (KIP-455);
    /// answered once this broker's shards have the moves begun (or complete).
    pub async fn reassign_partitions(
        self: &Rc<Self>,
        moves: Vec<Reassignment>,
    ) -> Result<(), BrokerError> {
        for (name, count) in moves.iter().fold(BTreeMap::new(), |mut count, m| {
            *count.entry(m.topic.as_str()).or_insert(0u64) += 1;
            count
        }) {
            tracing::info!(topic = %name, partitions = count, "reassigning partitions");
        }
        self.change_metadata(ControllerRequest::Reassign(moves)).await
    }

    pub(super) async fn delete_topic_in_cluster(
        self: &Rc<Self>,
        name: &str,
    ) -> Result<(), BrokerError> {
        if self.topic(name).is_none() {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        }
        self.change_metadata(ControllerRequest::DeleteTopic { name: name.to_string() }).await?;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Asks the active controller for a change of the metadata; answered once this broker's
    /// shards have it (`forward_here`).
    async fn change_metadata(
        self: &Rc<Self>,
        request: ControllerRequest,
    ) -> Result<(), BrokerError> {
        let answer = self.forward_to_controller(request).await;
        match answer.map_err(|e| e.error)? {
            ControllerAnswer::MetadataChanged { .. } => Ok(()),
            other => Err(BrokerError::new(
                ErrorKind::NotAvailable,
                format!("the controller answered {other:?}"),
            )),
        }
    }

    /// A request to the active controller, from this broker (its membership, on shard 0, knows
    /// where the controller is).
    pub(super) async fn forward_to_controller(
        self: &Rc<Self>,
        request: ControllerRequest,
    ) -> Result<ControllerAnswer, crate::cluster::node::ControllerError> {
        // Boxed: `ask` -> `execute` -> forwarding -> `ask` is a cycle.
        let asked: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
            Box::pin(self.ask(CONTROLLER_SHARD, ForwardToController { request }));
        match asked.await {
            Ok(answer) => answer,
            Err(error) => Err(error.into()),
        }
    }

    /// Refuses `new` partitions this broker's disk has no room for at first: creating them
    /// must fail with a clear answer rather than fill the disk, which would stop every other
    /// client too. (Each broker's partition count is the controller's to bound:
    /// `max.broker.partitions`.)
    async fn check_disk_room(&self, new: u32) -> Result<(), BrokerError> {
        let needed = u64::from(new) * PARTITION_DISK_BYTES_AT_FIRST;
        let (_, free) = (self.disk_space().await)
            .map_err(|e| BrokerError::new(ErrorKind::StorageError, format!("free disk: {e}")))?;
        if needed > free {
            let why = format!(
                "{new} new partitions need {needed} bytes of disk at first; the data directory \
                 has {free} free"
            );
            return Err(BrokerError::new(ErrorKind::PolicyViolation, why));
        }
        Ok(())
    }
}
