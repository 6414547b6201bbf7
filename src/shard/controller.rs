//! The controller role, played by shard 0: topic creation, growth and deletion, one at a time
//! (under the admin lock), each written to the catalog's files and then broadcast to every shard
//! before it is answered. The Raft controller of the cluster takes this role over.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::cluster::metadata::PARTITIONS_MAX;
use crate::error::{BrokerError, ErrorKind};
use crate::group::offsets::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::log::segment::PARTITION_DISK_BYTES_AT_FIRST;
use crate::shard::call::ApplyTopic;
use crate::shard::catalog::{self, TopicFile, TopicInfo};
use crate::shard::state::{is_internal_topic, Shard};
use crate::types::ShardId;

/// How the controller writes a topic's `topic.toml`.
enum TopicFileWrite {
    /// A new topic: its directory is made afresh (clearing the remains of an unfinished create
    /// or delete).
    NewTopic,
    /// An existing topic (more partitions): only the file is replaced; the partition
    /// directories beside it hold acknowledged records.
    Replace,
}

impl Shard {
    pub(super) async fn create_topic_as_controller(
        self: &Rc<Self>,
        name: String,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        catalog::validate_topic_name(&name)
            .map_err(|e| BrokerError::new(ErrorKind::InvalidTopicName, e))?;
        if partitions == 0 || partitions > PARTITIONS_MAX {
            let why = format!("partitions must be between 1 and {PARTITIONS_MAX}");
            return Err(BrokerError::new(ErrorKind::InvalidPartitions, why));
        }
        let file = TopicFile { partitions, config: overrides };
        let info = TopicInfo::resolve(file.clone(), &self.config.topic_defaults)
            .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, e))?;
        if info.config.max_message_bytes >= self.config.socket_request_max_bytes {
            let why = format!(
                "max.message.bytes {} must be below the broker's socket.request.max.bytes {}",
                info.config.max_message_bytes, self.config.socket_request_max_bytes
            );
            return Err(BrokerError::new(ErrorKind::InvalidConfig, why));
        }
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        if self.topic(&name).is_some() {
            return Err(BrokerError::new(
                ErrorKind::TopicAlreadyExists,
                format!("topic {name} exists"),
            ));
        }
        self.check_room_for(&name, partitions).await?;
        self.write_topic_file(&name, file, TopicFileWrite::NewTopic).await?;
        self.broadcast(&name, Some(info)).await?;
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(())
    }

    /// Writes a topic's `topic.toml` off the shard's thread: a new topic's in a fresh directory,
    /// an existing topic's by replacing only that file.
    async fn write_topic_file(
        &self,
        name: &str,
        file: TopicFile,
        write: TopicFileWrite,
    ) -> Result<(), BrokerError> {
        let data_dir = self.config.data_dir.clone();
        let file_name = name.to_string();
        glommio::executor()
            .spawn_blocking(move || match write {
                TopicFileWrite::NewTopic => catalog::create_topic(&data_dir, &file_name, &file),
                TopicFileWrite::Replace => {
                    catalog::replace_topic_file(&data_dir, &file_name, &file)
                }
            })
            .await
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ErrorKind::TopicAlreadyExists
                } else {
                    ErrorKind::StorageError
                };
                BrokerError::new(code, format!("writing topic {name}: {e}"))
            })
    }

    pub(super) async fn add_partitions_as_controller(
        self: &Rc<Self>,
        name: String,
        count: u32,
    ) -> Result<(), BrokerError> {
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        let Some(mut info) = self.topic(&name) else {
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
        self.check_room_for(&name, count - info.partitions).await?;
        let file = TopicFile { partitions: count, config: info.overrides.clone() };
        self.write_topic_file(&name, file, TopicFileWrite::Replace).await?;
        let old = info.partitions;
        info.partitions = count;
        self.broadcast(&name, Some(info)).await?;
        tracing::info!(topic = %name, from = old, to = count, "added partitions");
        Ok(())
    }

    /// Refuses `new` partitions the broker cannot hold: past `max.broker.partitions` (every
    /// topic's partitions counted), or past what the disk has room for at first. Creating them
    /// must fail with a clear answer rather than fill the disk or the file table, which would
    /// stop every other client too. Runs under the admin lock, so two creates cannot both pass.
    ///
    /// The internal `__consumer_offsets` is exempt, and its partitions are kept free for it
    /// until it exists: a broker full of user topics must still take a group's first commit.
    async fn check_room_for(&self, topic: &str, new: u32) -> Result<(), BrokerError> {
        if is_internal_topic(topic) {
            return Ok(());
        }
        let (held, offsets_created) = {
            let catalog = self.catalog.borrow();
            let held: u64 = catalog.topics.values().map(|t| u64::from(t.partitions)).sum();
            (held, catalog.topics.contains_key(OFFSETS_TOPIC))
        };
        let reserved = if offsets_created { 0 } else { u64::from(OFFSETS_PARTITIONS) };
        let limit = self.config.max_broker_partitions;
        if held + reserved + u64::from(new) > u64::from(limit) {
            let why = format!(
                "the broker holds {held} partitions (and keeps {reserved} for {OFFSETS_TOPIC}); \
                 {new} more would pass max.broker.partitions={limit}"
            );
            return Err(BrokerError::new(ErrorKind::PolicyViolation, why));
        }
        let needed = u64::from(new) * PARTITION_DISK_BYTES_AT_FIRST;
        let data_dir = self.config.data_dir.clone();
        let free = glommio::executor()
            .spawn_blocking(move || catalog::free_disk_bytes(&data_dir))
            .await
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

    pub(super) async fn delete_topic_as_controller(
        self: &Rc<Self>,
        name: String,
    ) -> Result<(), BrokerError> {
        let _permit = self.admin_lock.acquire_permit(1).await.map_err(|e| {
            BrokerError::new(ErrorKind::NotAvailable, format!("controller is stopping: {e}"))
        })?;
        if self.topic(&name).is_none() {
            return Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {name}")));
        }
        self.broadcast(&name, None).await?;
        let data_dir = self.config.data_dir.clone();
        let dir_name = name.clone();
        glommio::executor()
            .spawn_blocking(move || catalog::remove_topic(&data_dir, &dir_name))
            .await
            .map_err(|e| {
                BrokerError::new(ErrorKind::StorageError, format!("removing topic {name}: {e}"))
            })?;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Tells every shard about a topic change and waits until each has applied it.
    async fn broadcast(
        self: &Rc<Self>,
        name: &str,
        info: Option<TopicInfo>,
    ) -> Result<(), BrokerError> {
        for shard in (0..self.count).map(ShardId) {
            let apply = ApplyTopic { name: name.to_string(), info: info.clone() };
            // Boxed: `ask` -> `execute` -> controller -> `broadcast` -> `ask` is a cycle.
            let applied: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
                Box::pin(self.ask(shard, apply));
            applied.await??;
        }
        Ok(())
    }
}
