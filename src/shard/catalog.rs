//! The topic catalog: which topics exist, their partition counts and settings, and which shard
//! owns each partition.
//!
//! Every shard holds the cluster's topics as the metadata it last published says
//! (`publish.rs`); before its first publication, the topics on its disk.
//!
//! On disk a topic with a replica on this broker is a directory `<data_dir>/<topic>/` holding
//! `topic.toml` (its id, partition count and setting overrides) and one directory per partition
//! this broker holds. A directory without `topic.toml` is the remains of an unfinished create or
//! delete and is ignored (and cleared on the next create). A `topic.toml` without an id is a
//! topic from before the cluster, which the broker brings into the cluster's metadata when it
//! joins (`publish.rs`).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cluster::metadata::validate_topic_name;
use crate::cluster::metadata::{parse_uuid_text, TopicId};
use crate::config::{TopicConfig, MIN_INSYNC_KEY};
use crate::types::{PartitionId, ShardId};

pub const TOPIC_FILE: &str = "topic.toml";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicFile {
    /// The topic's id in Kafka's text form; absent on a topic from before the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A topic from before the cluster, being brought into it under `id` (not yet known to be
    /// committed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub importing: bool,
    pub partitions: u32,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// `None` only for a topic on disk from before the cluster, not yet in its metadata.
    pub id: Option<TopicId>,
    pub partitions: u32,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub topics: BTreeMap<String, TopicInfo>,
}

/// A topic as this broker's disk holds it.
#[derive(Clone, Debug)]
pub struct DiskTopic {
    pub file: TopicFile,
    pub info: TopicInfo,
    /// The partitions with a directory here: the replicas this broker holds.
    pub held: Vec<PartitionId>,
}

/// The shard that owns a partition: consecutive partitions of a topic land on consecutive
/// shards, starting from a shard chosen by the topic's name.
pub fn owner_shard(topic: &str, partition: PartitionId, shards: usize) -> ShardId {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId(((hash % shards as u64 + u64::from(partition.0)) % shards as u64) as usize)
}

pub fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    data_dir.join(topic)
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: PartitionId) -> PathBuf {
    topic_dir(data_dir, topic).join(partition.to_string())
}

impl TopicInfo {
    pub fn resolve(file: TopicFile, defaults: &TopicConfig) -> Result<Self, String> {
        let config = defaults.with_overrides(&file.config).map_err(|e| e.to_string())?;
        let id = match &file.id {
            Some(text) => Some(TopicId(parse_uuid_text(text).map_err(|e| format!("id: {e}"))?)),
            None => None,
        };
        Ok(Self { id, partitions: file.partitions, overrides: file.config, config })
    }

    /// A cluster topic whose `overrides` do not resolve here (checked by the broker that took
    /// the change, against its own defaults or build): the settings it had (`kept`, else
    /// `defaults`) stay, but for `min.insync.replicas`, which follows the overrides (else
    /// `defaults`) whenever it reads on its own. The controller decides the topic's eligible
    /// leader replicas (KIP-966) by that value, so a leader here must hold its high watermark to
    /// it (docs/ARCHITECTURE.md, eligible leader replicas).
    pub fn unresolved(
        id: TopicId,
        partitions: u32,
        overrides: BTreeMap<String, String>,
        kept: Option<&TopicConfig>,
        defaults: &TopicConfig,
    ) -> Self {
        let mut config = kept.unwrap_or(defaults).clone();
        config.min_insync_replicas = match overrides.get(MIN_INSYNC_KEY) {
            None => defaults.min_insync_replicas,
            Some(value) => (TopicConfig::parse_min_insync(MIN_INSYNC_KEY, value).ok())
                .or(config.min_insync_replicas),
        };
        Self { id: Some(id), partitions, overrides, config }
    }
}

/// The partitions of `topic` this broker holds on disk.
/// What a partition's directory is renamed to before it is removed: no partition's name.
const REMOVED_SUFFIX: &str = ".removed";

/// The partitions of `topic` this broker holds on disk. A partition directory whose removal a
/// crash interrupted ([`remove_partition`]) is removed now.
pub fn partitions_on_disk(data_dir: &Path, topic: &str) -> io::Result<Vec<PartitionId>> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir(topic_dir(data_dir, topic))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|name| name.ends_with(REMOVED_SUFFIX)) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), "removing a partition removed before: {e}");
            }
            continue;
        }
        let index = name.to_str().and_then(|name| name.parse::<u32>().ok());
        if let (Some(index), true) = (index, entry.file_type()?.is_dir()) {
            held.push(PartitionId(index));
        }
    }
    held.sort_unstable();
    Ok(held)
}

/// Reads every topic under `data_dir`. Blocking: called before the shards start.
pub fn load(data_dir: &Path, defaults: &TopicConfig) -> io::Result<BTreeMap<String, DiskTopic>> {
    let mut topics = BTreeMap::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if validate_topic_name(&name).is_err() || !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path().join(TOPIC_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let invalid = |e: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
        };
        let file: TopicFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let info = TopicInfo::resolve(file.clone(), defaults).map_err(invalid)?;
        let held = partitions_on_disk(data_dir, &name)?;
        topics.insert(name, DiskTopic { file, info, held });
    }
    Ok(topics)
}

/// Creates a new topic's directory and writes its file durably. A directory already there
/// without a `topic.toml` is the remains of an interrupted create or delete, so the new topic
/// starts empty; one with a `topic.toml` is a live topic and is refused, never cleared.
/// Blocking: run off the shard.
pub fn create_topic(data_dir: &Path, name: &str, file: &TopicFile) -> io::Result<()> {
    check_name(name)?;
    let dir = topic_dir(data_dir, name);
    if dir.join(TOPIC_FILE).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already holds a topic", dir.display()),
        ));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    replace_topic_file(data_dir, name, file)
}

/// Replaces an existing topic's `topic.toml` atomically (write aside, fsync, rename, fsync the
/// directory), touching nothing else in the topic's directory: its partitions hold
/// acknowledged data. Blocking: run off the shard.
pub fn replace_topic_file(data_dir: &Path, name: &str, file: &TopicFile) -> io::Result<()> {
    let dir = topic_dir(data_dir, name);
    let text = toml::to_string(file).map_err(io::Error::other)?;
    let tmp = dir.join("topic.toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(TOPIC_FILE))?;
    std::fs::File::open(&dir)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// A name safe to make a directory of: every disk operation on a topic checks it again, so a
/// name that slipped past the checks before (the metadata log is input too) cannot point a
/// removal at the data directory or outside it.
fn check_name(name: &str) -> io::Result<()> {
    validate_topic_name(name).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// The size of the file system holding `dir`, and the bytes free on it for an unprivileged
/// writer. Blocking: run off the shard.
pub fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` points to
    // writable memory the size of a `statvfs`, which the call fills when it returns 0.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    let total = stats.f_blocks.saturating_mul(stats.f_frsize);
    Ok((total, stats.f_bavail.saturating_mul(stats.f_frsize)))
}

/// Removes a partition's directory (a replica moved off this broker): renamed first, durably,
/// to a name no scan takes for a partition, then removed; a crash midway leaves a directory the
/// next start removes ([`partitions_on_disk`]), never a partition with holes. Blocking: run off
/// the shard.
pub fn remove_partition(data_dir: &Path, topic: &str, partition: PartitionId) -> io::Result<()> {
    check_name(topic)?;
    let dir = partition_dir(data_dir, topic, partition);
    let removed = topic_dir(data_dir, topic).join(format!("{partition}{REMOVED_SUFFIX}"));
    match std::fs::remove_dir_all(&removed) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match std::fs::rename(&dir, &removed) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    std::fs::File::open(topic_dir(data_dir, topic))?.sync_all()?;
    std::fs::remove_dir_all(&removed)
}

/// Removes a topic: first its file (so a crash midway leaves an ignored directory), then the
/// rest. Blocking: run off the shard.
pub fn remove_topic(data_dir: &Path, name: &str) -> io::Result<()> {
    check_name(name)?;
    let dir = topic_dir(data_dir, name);
    match std::fs::remove_file(dir.join(TOPIC_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::File::open(&dir)?.sync_all()?;
    std::fs::remove_dir_all(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metadata::uuid_text;

    /// A topic whose settings do not resolve here keeps its old ones, but takes the
    /// `min.insync.replicas` the controller decides its eligible replicas by.
    #[test]
    fn unresolved_settings_keep_the_old_but_follow_min_insync() {
        let defaults = TopicConfig::default();
        let mut kept = defaults.clone();
        kept.set("retention.ms", "1000").expect("retention");
        kept.set(MIN_INSYNC_KEY, "1").expect("min.insync.replicas");
        let overrides = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let unknown = ("a.setting.of.a.later.build", "1");
        let raised = overrides(&[unknown, (MIN_INSYNC_KEY, "3"), ("retention.ms", "5000")]);
        assert!(defaults.with_overrides(&raised).is_err(), "it does not resolve here");
        let info = TopicInfo::unresolved(TopicId(7), 3, raised.clone(), Some(&kept), &defaults);
        assert_eq!(info.config.min_insync_replicas, Some(3));
        assert_eq!(info.config.retention_ms, kept.retention_ms, "the rest stays as it was");
        assert_eq!((info.id, info.partitions, info.overrides), (Some(TopicId(7)), 3, raised));
        // The override deleted: the defaults' value, as the controller has it.
        let deleted = overrides(&[unknown]);
        let info = TopicInfo::unresolved(TopicId(7), 3, deleted, Some(&kept), &defaults);
        assert_eq!(info.config.min_insync_replicas, defaults.min_insync_replicas);
        // A value that does not read here either: the one it had.
        let unreadable = overrides(&[unknown, (MIN_INSYNC_KEY, "many")]);
        let info = TopicInfo::unresolved(TopicId(7), 3, unreadable, Some(&kept), &defaults);
        assert_eq!(info.config.min_insync_replicas, Some(1));
    }

    #[test]
    fn partitions_spread_over_every_shard() {
        for shards in 1..=8 {
            let mut owners: Vec<usize> =
                (0..shards as u32).map(|p| owner_shard("t", PartitionId(p), shards).0).collect();
            owners.sort_unstable();
            assert_eq!(owners, (0..shards).collect::<Vec<_>>());
        }
    }

    /// A replica moved off the broker goes whole; one whose removal a crash interrupted (its
    /// directory renamed, not yet removed) is no partition, and goes at the next scan.
    #[test]
    fn removed_partitions_go_whole_even_across_a_crash() {
        let data = tempfile::tempdir().expect("tempdir");
        for p in 0..3 {
            let dir = partition_dir(data.path(), "t", PartitionId(p));
            std::fs::create_dir_all(&dir).expect("partition dir");
            std::fs::write(dir.join("00000000000000000000.log"), b"entries").expect("segment");
        }
        remove_partition(data.path(), "t", PartitionId(1)).expect("removed");
        assert_eq!(
            partitions_on_disk(data.path(), "t").expect("scan"),
            [PartitionId(0), PartitionId(2)]
        );
        remove_partition(data.path(), "t", PartitionId(1)).expect("removing it again is nothing");
        // A crash after the rename.
        let interrupted = topic_dir(data.path(), "t").join(format!("2{REMOVED_SUFFIX}"));
        std::fs::rename(partition_dir(data.path(), "t", PartitionId(2)), &interrupted)
            .expect("renamed");
        assert_eq!(partitions_on_disk(data.path(), "t").expect("scan"), [PartitionId(0)]);
        assert!(!interrupted.exists(), "the interrupted removal finished");
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v2_eu-1").is_ok());
        let metadata_log = crate::cluster::voter_log::METADATA_DIR;
        assert!(validate_topic_name(metadata_log).is_err(), "the metadata log's directory");
        for bad in ["", ".", "..", "a/b", "../etc", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topics_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = TopicFile {
            id: Some(uuid_text(7)),
            importing: false,
            partitions: 3,
            config: BTreeMap::from([("retention.ms".into(), "1000".into())]),
        };
        create_topic(dir.path(), "orders", &file).unwrap();
        std::fs::create_dir_all(dir.path().join("half-deleted")).unwrap();
        std::fs::create_dir_all(partition_dir(dir.path(), "orders", PartitionId(2))).unwrap();
        let topics = load(dir.path(), &TopicConfig::default()).unwrap();
        assert_eq!(topics.len(), 1);
        let info = &topics["orders"].info;
        assert_eq!((info.id, info.partitions), (Some(TopicId(7)), 3));
        assert_eq!(topics["orders"].file, file);
        assert_eq!(topics["orders"].held, [PartitionId(2)], "the partitions held here");
        assert_eq!(info.config.retention_ms, 1000);
        remove_topic(dir.path(), "orders").unwrap();
        assert!(load(dir.path(), &TopicConfig::default()).unwrap().is_empty());
    }

    /// Regression: growing a topic rewrote its file by clearing the whole topic directory first,
    /// deleting the existing partitions' acknowledged records.
    #[test]
    fn replacing_a_topic_file_keeps_its_partitions_and_a_live_topic_is_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let file = TopicFile { id: None, importing: false, partitions: 2, config: BTreeMap::new() };
        create_topic(dir.path(), "grow", &file).unwrap();
        let segment =
            partition_dir(dir.path(), "grow", PartitionId(0)).join("00000000000000000000.log");
        std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
        std::fs::write(&segment, b"acknowledged").unwrap();

        replace_topic_file(dir.path(), "grow", &TopicFile { partitions: 4, ..file.clone() })
            .unwrap();
        assert_eq!(std::fs::read(&segment).unwrap(), b"acknowledged");
        assert_eq!(load(dir.path(), &TopicConfig::default()).unwrap()["grow"].info.partitions, 4);

        let refused = create_topic(dir.path(), "grow", &file).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&segment).unwrap(), b"acknowledged");
    }
}
