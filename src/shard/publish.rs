//! How a broker follows the cluster's metadata with its shards and its disk (KRaft's metadata
//! publishers and `ReplicaManager.applyDelta`).
//!
//! Shard 0 applies the committed metadata log (as a voter or a follower: `cluster::applied`).
//! After each change its publisher, one round at a time:
//! 1. removes the topics on this broker's disk that the metadata no longer holds, or holds
//!    under another id (deleted, or deleted and created again while this broker was away):
//!    every shard closes their partitions, then the directory goes;
//! 2. brings the topics on its disk from before the cluster into the metadata, this broker
//!    their only replica, once it is registered and live (one whose name the cluster already
//!    uses stops the broker: neither copy may silently replace the other);
//! 3. writes `topic.toml` (id, partition count, overrides) for every topic with a replica here;
//! 4. hands every shard the new image: each takes the cluster's topics as its catalog, opens the
//!    partitions it owns that have a replica here, and marks those this broker leads.
//!
//! A broker serves clients once a publication has found it registered, live and with every
//! topic of its disk in the metadata (`wait_ready`): before that, its metadata may be an earlier
//! prefix of the log, which must not be presented as current.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::applied::AppliedMetadata;
use crate::cluster::decide::NewTopic;
use crate::cluster::metadata::{parse_uuid_text, uuid_text, MetadataImage, TopicId};
use crate::cluster::node::{ControllerAnswer, ControllerRequest};
use crate::config::{ConfigError, TopicConfig};
use crate::error::{BrokerError, ErrorKind};
use crate::shard::call::{Publish, RemoveTopic};
use crate::shard::catalog::{self, TopicFile, TopicInfo};
use crate::shard::replicas::Followed;
use crate::shard::state::{PartitionKey, Shard};
use crate::types::{LeaderEpoch, NodeId, PartitionId, ShardId};

/// How often the publisher looks again without a change (its broker's registration, say).
const RECHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a request waits for its broker to be ready before it is served anyway.
const READY_WAIT: Duration = Duration::from_secs(15);

/// What one publication hands every shard.
pub struct Published {
    pub image: Arc<MetadataImage>,
    /// The metadata log entry the image ends at.
    pub applied: u64,
    /// Topics on this broker's disk whose copy is not the metadata's (yet): from before the
    /// cluster, or deleted (and maybe created again) while this broker was away and not removed
    /// yet. Their partitions are neither opened nor led here.
    pub unsettled: BTreeSet<String>,
    /// The broker is registered under this process, live, and has every topic of its disk in
    /// the metadata: it serves clients, and leads what the image says it leads. (An image
    /// without this process's registration may be a stale prefix of the log, and a fenced
    /// broker leads nothing.)
    pub ready: bool,
}

impl Shard {
    /// Shard 0: publishes each change of `metadata` until the broker stops. `incarnation`:
    /// this process's registration, by which the publisher knows the broker has joined. A
    /// failure that would leave the broker serving other data than the cluster's is returned
    /// (the broker stops); a round that did not finish (a file not written, a replica not
    /// opened, a topic not brought in yet) is run again after a moment.
    pub async fn publish_metadata(
        self: &Rc<Self>,
        metadata: Rc<AppliedMetadata>,
        incarnation: u64,
    ) -> Result<(), String> {
        let mut published = None;
        while !self.stopping.get() {
            let changed = metadata.listen();
            let now = metadata.applied();
            if published != Some(now) {
                match self.publish_round(&metadata, incarnation).await {
                    Ok(Round::Complete) => published = Some(now),
                    Ok(Round::Unfinished) => published = None,
                    Err(Fatal(why)) => return Err(why),
                }
            }
            let stop = async {
                self.wait_for_stop().await;
            };
            let woken = async {
                changed.await;
            };
            let recheck = glommio::timer::sleep(RECHECK_INTERVAL);
            futures_lite::future::or(futures_lite::future::or(stop, woken), async {
                recheck.await;
            })
            .await;
        }
        Ok(())
    }

    /// One round: strays removed, old topics brought in, topic files written, shards told.
    async fn publish_round(
        self: &Rc<Self>,
        metadata: &AppliedMetadata,
        incarnation: u64,
    ) -> Result<Round, Fatal> {
        // Read together: the publication must not claim entries its image does not hold.
        let (image, applied) = (metadata.image(), metadata.applied());
        let me = self.config.node_id;
        // Registered under this process, live: the image holds every entry up to this
        // broker's registration, so a topic of its disk that the image lacks was deleted.
        // (Before, it may only not be applied yet: nothing is removed then.)
        let live = image
            .brokers
            .get(&me)
            .is_some_and(|b| b.incarnation == incarnation && !b.fenced && !b.shut_down);
        let mut complete = true;
        if live {
            let strays: Vec<String> = (self.disk_topics.borrow().iter())
                .filter(|(name, file)| {
                    file.id.is_some() && !file.importing && !is_the_images(file, &image, name)
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in strays {
                if let Err(e) = self.remove_stray_topic(&name).await {
                    tracing::error!(topic = %name, "removing a topic the cluster no longer has: {e}");
                    complete = false;
                }
            }
            complete &= self.import_old_topics(&image).await?;
        }
        complete &= self.write_topic_files(&image).await;
        let unsettled = self.unsettled_topics(&image);
        let importing = self.disk_topics.borrow().values().any(|f| f.id.is_none() || f.importing);
        let ready = live && !importing;
        complete &= ready;
        let published = Published { image, applied, unsettled, ready };
        let published = Arc::new(published);
        for shard in (0..self.count).map(ShardId) {
            let publish = Publish { published: published.clone() };
            match self.ask(shard, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => {
                    tracing::error!(%shard, "publishing metadata: {e}");
                    complete = false;
                }
            }
        }
        if complete {
            complete &= self.remove_topics_moved_off(&published.image).await;
        }
        self.published_everywhere.set(applied);
        self.published_signal.notify(usize::MAX);
        Ok(if complete { Round::Complete } else { Round::Unfinished })
    }

    /// The topics whose copy on this broker's disk is not the image's: from before the cluster
    /// (or being brought in), of another id (a deleted topic not removed yet), or with a replica
    /// here and no file written yet. Their partitions are neither opened nor led.
    fn unsettled_topics(&self, image: &MetadataImage) -> BTreeSet<String> {
        let me = self.config.node_id;
        let on_disk = self.disk_topics.borrow();
        let mut unsettled: BTreeSet<String> = (on_disk.iter())
            .filter(|(name, file)| file.importing || !is_the_images(file, image, name))
            .map(|(name, _)| name.clone())
            .collect();
        for topic in image.topics.values() {
            let here = topic.partitions.values().any(|p| p.replicas.contains(&me));
            if here && !on_disk.contains_key(&topic.name) {
                unsettled.insert(topic.name.clone());
            }
        }
        unsettled
    }

    /// A topic on this broker's disk that the cluster deleted (or deleted and created again
    /// under a new id): its partitions are closed on every shard, then its directory goes.
    async fn remove_stray_topic(self: &Rc<Self>, name: &str) -> Result<(), BrokerError> {
        for shard in (0..self.count).map(ShardId) {
            self.ask(shard, RemoveTopic { name: name.to_string() }).await??;
        }
        let (data_dir, dir_name) = (self.config.data_dir.clone(), name.to_string());
        glommio::executor()
            .spawn_blocking(move || catalog::remove_topic(&data_dir, &dir_name))
            .await
            .map_err(|e| BrokerError::new(ErrorKind::StorageError, e.to_string()))?;
        self.disk_topics.borrow_mut().remove(name);
        tracing::info!(topic = %name, "removed a topic the cluster no longer has");
        Ok(())
    }

    /// Removes the directories of the topics of the image none of whose replicas is on this
    /// broker any more (every one moved off: the shards have removed them); answers whether all
    /// went.
    async fn remove_topics_moved_off(&self, image: &MetadataImage) -> bool {
        let me = self.config.node_id;
        let moved_off: Vec<String> = (self.disk_topics.borrow().iter())
            .filter(|(name, file)| {
                let topic = image.topic_named(name).map(|(_, topic)| topic);
                !file.importing
                    && is_the_images(file, image, name)
                    && topic
                        .is_some_and(|t| !t.partitions.values().any(|p| p.replicas.contains(&me)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut all_removed = true;
        for name in moved_off {
            let (data_dir, dir_name) = (self.config.data_dir.clone(), name.clone());
            let removed = glommio::executor()
                .spawn_blocking(move || catalog::remove_topic(&data_dir, &dir_name))
                .await;
            match removed {
                Ok(()) => {
                    self.disk_topics.borrow_mut().remove(&name);
                    tracing::info!(topic = %name, "removed the topic's directory: none of its replicas is here any more");
                }
                Err(e) => {
                    tracing::error!(topic = %name, "removing a topic moved off this broker: {e}");
                    all_removed = false;
                }
            }
        }
        all_removed
    }

    /// Brings the topics on disk from before the cluster into its metadata, this broker the
    /// only replica of every partition, with their settings. Each gets an id chosen here and
    /// written to its `topic.toml` (marked `importing`) before the controller is asked, so a
    /// lost answer or a crash asks again for the same topic: it is brought in once the image
    /// holds it under that id. One whose name the image holds under another id stops the broker
    /// (neither copy may silently replace the other). Answers whether all are in.
    async fn import_old_topics(self: &Rc<Self>, image: &MetadataImage) -> Result<bool, Fatal> {
        let old: Vec<(String, TopicFile)> = (self.disk_topics.borrow().iter())
            .filter(|(_, file)| file.id.is_none() || file.importing)
            .map(|(name, file)| (name.clone(), file.clone()))
            .collect();
        let mut all_in = true;
        for (name, file) in old {
            let theirs = image.topic_ids.get(&name).map(|id| uuid_text(id.0));
            let outcome = match (file.id.clone(), theirs) {
                (Some(ours), Some(theirs)) if ours == theirs => {
                    let done = TopicFile { importing: false, ..file };
                    self.write_topic_file(&name, done, false).await.map(|()| {
                        tracing::info!(topic = %name, id = %ours, "brought into the cluster");
                    })
                }
                (_, Some(_)) => {
                    return Err(Fatal(format!(
                        "topic {name} in {} predates the cluster, which has a topic {name} of \
                         its own: move the directory away (or remove it) to join",
                        self.config.data_dir.display()
                    )));
                }
                (None, None) => {
                    let id = uuid_text(uuid::Uuid::new_v4().as_u128());
                    let chosen = TopicFile { id: Some(id), importing: true, ..file };
                    self.write_topic_file(&name, chosen, false).await
                }
                (Some(id), None) => {
                    self.ask_to_bring_in(&name, &file, &id).await;
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                tracing::error!(topic = %name, "bringing the topic into the cluster: {e}");
            }
            all_in = false;
        }
        Ok(all_in)
    }

    /// Asks the controller to create topic `name` as this broker's disk holds it, under `id`.
    /// Asked directly, not through `forward_here`, which waits for this very publisher; the
    /// next rounds see whether it was committed.
    async fn ask_to_bring_in(&self, name: &str, file: &TopicFile, id: &str) {
        let Ok(id) = parse_uuid_text(id) else {
            tracing::error!(topic = %name, "an unreadable id {id:?} in its topic.toml");
            return;
        };
        let Some(membership) = self.membership.borrow().clone() else { return };
        let me = self.config.node_id;
        let topic = NewTopic {
            name: name.to_string(),
            partitions: file.partitions,
            replication_factor: 1,
            assignment: Some(vec![vec![me]; file.partitions as usize]),
            config: file.config.clone().into_iter().collect(),
        };
        let request = ControllerRequest::CreateTopic { topic, id: Some(TopicId(id)) };
        match membership.ask_controller(request).await {
            Ok(ControllerAnswer::MetadataChanged { .. }) => {}
            Ok(other) => {
                tracing::warn!(topic = %name, "bringing in: the controller answered {other:?}")
            }
            Err(e) => {
                tracing::warn!(topic = %name, "bringing the topic into the cluster: {}", e.error)
            }
        }
    }

    /// Writes `topic.toml` for every topic with a replica on this broker whose file is missing
    /// or says otherwise than the metadata; answers whether all are written.
    async fn write_topic_files(&self, image: &MetadataImage) -> bool {
        let me = self.config.node_id;
        let mut all_written = true;
        for (id, topic) in &image.topics {
            if !topic.partitions.values().any(|p| p.replicas.contains(&me)) {
                continue;
            }
            let file = TopicFile {
                id: Some(uuid_text(id.0)),
                importing: false,
                partitions: u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX),
                config: topic.config.clone(),
            };
            let existing = self.disk_topics.borrow().get(&topic.name).cloned();
            let outcome = match existing {
                Some(on_disk) if on_disk == file => continue,
                // Another topic under this name (one from before the cluster, brought in first;
                // or a deleted one, removed first), or one being brought in: never written over.
                Some(on_disk) if on_disk.id != file.id || on_disk.importing => continue,
                Some(_) => self.write_topic_file(&topic.name, file, false).await,
                None => self.write_topic_file(&topic.name, file, true).await,
            };
            if let Err(e) = outcome {
                tracing::error!(topic = %topic.name, "writing its topic file: {e}");
                all_written = false;
            }
        }
        all_written
    }

    /// Writes a topic's `topic.toml` off the shard's thread: a new topic's in a fresh
    /// directory, an existing one's by replacing only that file (its partitions hold
    /// acknowledged records).
    async fn write_topic_file(
        &self,
        name: &str,
        file: TopicFile,
        new: bool,
    ) -> std::io::Result<()> {
        let (data_dir, dir_name, written) =
            (self.config.data_dir.clone(), name.to_string(), file.clone());
        glommio::executor()
            .spawn_blocking(move || match new {
                true => catalog::create_topic(&data_dir, &dir_name, &written),
                false => catalog::replace_topic_file(&data_dir, &dir_name, &written),
            })
            .await?;
        self.disk_topics.borrow_mut().insert(name.to_string(), file);
        Ok(())
    }

    /// Every shard: takes a publication. The cluster's topics become the catalog; the
    /// partitions this shard owns with a replica here are opened, and marked led or not.
    pub(super) async fn take_publication(
        &self,
        published: Arc<Published>,
    ) -> Result<(), BrokerError> {
        let me = self.config.node_id;
        let image = &published.image;
        let unsettled = &published.unsettled;
        let new_settings = self.dynamic_settings_of(image);
        let new_defaults = new_settings.as_ref().map(|(defaults, _)| defaults.as_ref());
        let catalog = self.catalog_of(image, unsettled, new_defaults);
        let mut failed = None;
        let mut to_lead = Vec::new();
        let mut followed = BTreeMap::new();
        for (id, topic) in &image.topics {
            if unsettled.contains(&topic.name) {
                continue;
            }
            let Some(info) = catalog.get(&topic.name) else { continue };
            for (partition, state) in &topic.partitions {
                if !state.replicas.contains(&me) || self.owner(&topic.name, *partition) != self.id {
                    continue;
                }
                let replicated = state.replicas.len() > 1;
                // An open partition takes its topic's settings as the metadata has them now.
                let opened = self.open_partition(&topic.name, *partition, info).await;
                match opened.inspect(|opened| opened.log().reconfigure(&info.config)) {
                    Ok(opened) if published.ready && state.leader == Some(me) => {
                        let view = self.replica_view(state, info);
                        if !opened.lead_as_recorded(state.leader_epoch, &view) {
                            to_lead.push((opened, state.leader_epoch, view));
                        }
                    }
                    Ok(opened) if replicated => {
                        opened.follow();
                        if let (true, Some(leader)) = (published.ready, state.leader) {
                            let key = (topic.name.clone(), *partition);
                            followed.insert(key, Followed { leader, epoch: state.leader_epoch });
                        }
                    }
                    Ok(opened) => opened.stop_leading(),
                    Err(e) => {
                        tracing::error!(topic = %topic.name, %partition, topic_id = %uuid_text(id.0), "opening a replica: {e}");
                        failed = Some(e);
                    }
                }
            }
        }
        // Replicas moved off this broker (a reassignment completed, KIP-455): closed, and their
        // data removed. Only from an image that is current (`ready`): an earlier prefix of the
        // log may not list a replica assigned here since.
        if published.ready {
            let moved_off: Vec<PartitionKey> = (self.partitions.borrow().keys())
                .filter(|(name, partition)| {
                    let state = (image.topic_named(name))
                        .and_then(|(_, topic)| topic.partitions.get(partition));
                    !unsettled.contains(name) && state.is_some_and(|s| !s.replicas.contains(&me))
                })
                .cloned()
                .collect();
            for key in moved_off {
                if let Err(e) = self.remove_replica_here(&key).await {
                    tracing::error!(topic = %key.0, partition = %key.1, "removing a replica moved off this broker: {e}");
                    failed = Some(e);
                }
            }
        }
        // Partitions open here that the metadata does not have this broker lead.
        for ((name, partition), open) in self.partitions.borrow().iter() {
            let leads = published.ready
                && !unsettled.contains(name)
                && image
                    .topic_named(name)
                    .and_then(|(_, topic)| topic.partitions.get(partition))
                    .is_some_and(|state| state.leader == Some(me));
            if !leads {
                open.stop_leading();
            }
        }
        // Each new leadership's epoch is recorded in its log, all at once: a failover moves many.
        // One that cannot be recorded leaves the partition unled, and the round unfinished: the
        // publisher tries again.
        let leading = to_lead.into_iter().map(|(partition, epoch, view)| {
            glommio::spawn_local(async move {
                let led = partition.lead(epoch, &view).await;
                if let Err(e) = &led {
                    let log = partition.log();
                    tracing::error!(topic = %log.topic, partition = %log.partition, %epoch, "not leading: the epoch could not be recorded: {e}");
                }
                led
            })
        });
        for started in leading.collect::<Vec<_>>() {
            if let Err(e) = started.await {
                failed = Some(std::io::Error::other(e.to_string()));
            }
        }
        *self.followed.borrow_mut() = followed;
        *self.catalog.borrow_mut() = catalog::Catalog { topics: catalog };
        *self.image.borrow_mut() = image.clone();
        if let Some((defaults, max_connections)) = new_settings {
            *self.topic_defaults.borrow_mut() = defaults;
            self.max_connections.set(max_connections);
        }
        self.published.set(published.applied);
        if published.ready && !self.ready.replace(true) && self.id == ShardId(0) {
            tracing::info!(
                applied = published.applied,
                "caught up with the cluster's metadata: serving clients"
            );
        }
        self.published_signal.notify(usize::MAX);
        match failed {
            Some(e) => Err(BrokerError::new(ErrorKind::StorageError, e.to_string())),
            None => Ok(()),
        }
    }

    /// The topic defaults and `max.connections` `image` gives this broker, when its dynamic
    /// broker settings differ from the last image's ([`Self::under_dynamic_settings`]). A
    /// setting that does not apply here is skipped, and said once.
    fn dynamic_settings_of(&self, image: &MetadataImage) -> Option<(Rc<TopicConfig>, u32)> {
        let levels = [None, Some(self.config.node_id)];
        let before = self.image.borrow();
        if levels
            .iter()
            .all(|level| image.broker_configs.get(level) == before.broker_configs.get(level))
        {
            return None;
        }
        drop(before);
        let (mut defaults, max_connections, mut skipped) =
            self.under_dynamic_settings(&image.broker_configs);
        // A change is checked only by the broker that took it, against its own settings.
        if let Err(refused) = self.check_topic_config(&defaults, "message.max.bytes") {
            skipped.push(ConfigError(refused.message));
            defaults.max_message_bytes = self.config.topic_defaults.max_message_bytes;
        }
        if self.id == ShardId(0) {
            let [cluster, mine] = levels.map(|level| image.broker_configs.get(&level));
            tracing::info!(
                ?cluster,
                ?mine,
                "dynamic broker settings, cluster-wide and this broker's"
            );
            for why in skipped {
                tracing::error!("a dynamic broker setting is skipped: {why}");
            }
        }
        Some((Rc::new(defaults), max_connections))
    }

    /// This broker's topic defaults and `max.connections` under the dynamic broker settings of
    /// `configs`: its static settings, the cluster-wide dynamic ones over them, its own over
    /// those (KIP-226's order); and each dynamic setting that does not apply, with why.
    pub(super) fn under_dynamic_settings(
        &self,
        configs: &BTreeMap<Option<NodeId>, BTreeMap<String, String>>,
    ) -> (TopicConfig, u32, Vec<ConfigError>) {
        let mut defaults = self.config.topic_defaults.clone();
        let mut own = (*self.config).clone();
        let mut skipped = Vec::new();
        for level in [None, Some(self.config.node_id)] {
            let Some(settings) = configs.get(&level) else { continue };
            let (topic_skipped, own_skipped);
            (defaults, topic_skipped) = defaults.with_broker_settings(settings);
            (own, own_skipped) = own.with_own_dynamic(settings);
            skipped.extend(topic_skipped.into_iter().chain(own_skipped));
        }
        (defaults, own.max_connections, skipped)
    }

    /// The cluster's topics as this shard's catalog, with the topics of the disk from before
    /// the cluster as they are. An entry that has not changed is kept, settings resolved once;
    /// every entry is resolved again against `new_defaults` when the defaults change.
    fn catalog_of(
        &self,
        image: &MetadataImage,
        unsettled: &BTreeSet<String>,
        new_defaults: Option<&TopicConfig>,
    ) -> BTreeMap<String, TopicInfo> {
        let defaults = self.topic_defaults();
        let defaults = new_defaults.unwrap_or(&defaults);
        let before = self.catalog.borrow();
        let mut topics = BTreeMap::new();
        for name in unsettled {
            let from_before_the_cluster = before.topics.get(name).filter(|info| info.id.is_none());
            if let (Some(info), false) =
                (from_before_the_cluster, image.topic_ids.contains_key(name))
            {
                topics.insert(name.clone(), info.clone());
            }
        }
        for (id, topic) in &image.topics {
            let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
            if let Some(kept) = before.topics.get(&topic.name).filter(|kept| {
                new_defaults.is_none()
                    && kept.id == Some(*id)
                    && kept.partitions == partitions
                    && kept.overrides == topic.config
            }) {
                topics.insert(topic.name.clone(), kept.clone());
                continue;
            }
            let file =
                TopicFile { id: None, importing: false, partitions, config: topic.config.clone() };
            let info = match TopicInfo::resolve(file, defaults) {
                Ok(info) => TopicInfo { id: Some(*id), ..info },
                Err(why) => {
                    // Checked by the broker that took the request, against its own defaults:
                    // the settings it had here stay (a new topic's are the defaults), all but
                    // min.insync.replicas.
                    let before = before.topics.get(&topic.name).filter(|kept| kept.id == Some(*id));
                    tracing::error!(topic = %topic.name, "its settings do not resolve here, kept as they were but for min.insync.replicas: {why}");
                    let kept = before.map(|kept| &kept.config);
                    TopicInfo::unresolved(*id, partitions, topic.config.clone(), kept, defaults)
                }
            };
            topics.insert(topic.name.clone(), info);
        }
        topics
    }

    /// Shard 0: waits until every shard has metadata log entry `index`, or `deadline`.
    pub(super) async fn wait_published_everywhere(&self, index: u64, deadline: Instant) {
        self.wait_for_publication(deadline, || self.published_everywhere.get() >= index).await;
    }

    /// Waits until `done` holds, checked at each publication on this shard, or `deadline`, or
    /// the shard stopping; answers whether it holds.
    pub(super) async fn wait_for_publication(
        &self,
        deadline: Instant,
        done: impl Fn() -> bool,
    ) -> bool {
        loop {
            let listener = self.published_signal.listen();
            if done() {
                return true;
            }
            let late = deadline.saturating_duration_since(Instant::now());
            if late.is_zero() || self.stopping.get() {
                return false;
            }
            futures_lite::future::or(listener, glommio::timer::sleep(late)).await;
        }
    }

    /// Waits until the broker serves clients: it has joined the cluster and caught up with its
    /// metadata. Bounded from the shard's start: a broker that cannot join within
    /// `READY_WAIT` serves with what it has rather than hold every request (the answers then
    /// say what it knows: no leaders for what it has not learnt).
    pub async fn wait_ready(&self) {
        if !self.ready.get() {
            self.wait_for_publication(self.started + READY_WAIT, || self.ready.get()).await;
        }
    }

    /// Whether this broker has joined its cluster and caught up with the metadata: before, its
    /// image may be an earlier prefix of the log, not to be answered as current.
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// The cluster's metadata as this shard last published it.
    pub fn metadata_image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The leader epoch of partition `partition` of `topic` in this shard's metadata.
    pub fn partition_leader_epoch(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Option<LeaderEpoch> {
        let image = self.image.borrow();
        Some(image.topic_named(topic)?.1.partitions.get(&partition)?.leader_epoch)
    }

    /// The leader of partition `partition` of `topic` in this shard's metadata (`Some(None)`:
    /// the partition exists and has no leader now); `None` when the metadata has no such
    /// partition.
    pub fn partition_leader(&self, topic: &str, partition: PartitionId) -> Option<Option<NodeId>> {
        let image = self.image.borrow();
        Some(image.topic_named(topic)?.1.partitions.get(&partition)?.leader)
    }
}

/// Whether the topic file `file` (of topic `name` on this broker's disk) is of the topic the
/// image holds under that name: the same id.
fn is_the_images(file: &TopicFile, image: &MetadataImage, name: &str) -> bool {
    let theirs = image.topic_ids.get(name);
    match (&file.id, theirs) {
        (Some(ours), Some(theirs)) => parse_uuid_text(ours).is_ok_and(|ours| ours == theirs.0),
        _ => false,
    }
}

/// A publication failure the broker cannot go on with.
struct Fatal(String);

/// How a round ended.
enum Round {
    Complete,
    /// Something is left for the next round.
    Unfinished,
}
