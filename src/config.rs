//! Broker and topic settings, named as Kafka names them.
//!
//! Every setting has a default, so `spate serve` runs with no file at all. A TOML file
//! (`--config`) and `--set key=value` flags override them, in that order; keys contain dots, so
//! they are quoted in TOML: `"log.retention.ms" = 3600000`. Topic-level overrides
//! (`retention.ms`, `segment.bytes`, ...) are resolved against the broker's `log.*` defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::record::codecs::Levels;
use crate::record::conform::{BatchRules, TimestampLimits};
use crate::record::entry::ENTRY_PAYLOAD_BYTES_MAX;
use crate::types::NodeId;

/// The native listener a client finds when it is given no address.
pub const NATIVE_PORT_DEFAULT: u16 = 9192;
/// Kafka's own port: clients find the broker where they expect Kafka.
pub const KAFKA_PORT_DEFAULT: u16 = 9092;
/// Where `/metrics` is served when no address is given (Redpanda's port for the same).
pub const METRICS_PORT_DEFAULT: u16 = 9644;
/// Data lands here when no directory is configured.
pub const DATA_DIR_DEFAULT: &str = "./spate-data";
/// Segments smaller than this would roll on nearly every write.
pub const SEGMENT_BYTES_MIN: u64 = 16 * 1024;
/// No machine Spate runs on has CPU ids beyond this; a larger one in `--cores` is a typo, and an
/// unbounded range would take the broker's memory before any CPU is checked.
pub const CPU_ID_MAX: usize = 4096;
/// O_DIRECT writes are issued in multiples of this.
pub const WRITE_ALIGN_BYTES: usize = 4096;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// `PLAINTEXT://host:port` (Kafka's listener syntax) or plain `host:port`.
fn strip_scheme(value: &str) -> &str {
    value.strip_prefix("PLAINTEXT://").unwrap_or(value)
}

fn invalid(key: &str, value: &str, why: &str) -> ConfigError {
    ConfigError(format!("invalid value {value:?} for {key}: {why}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CleanupPolicy {
    Delete,
}

/// How a topic stores produced batches (`compression.type`): as producers compressed them, or
/// recompressed into one codec (Kafka's broker-side compression).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 6] = [
        Compression::Producer,
        Compression::Uncompressed,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// As `compression.type` names it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Producer => "producer",
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec of a Kafka batch's attributes it stores batches in (`None`: the producer's).
    pub fn codec(self) -> Option<i16> {
        match self {
            Compression::Producer => None,
            Compression::Uncompressed => Some(0),
            Compression::Gzip => Some(1),
            Compression::Snappy => Some(2),
            Compression::Lz4 => Some(3),
            Compression::Zstd => Some(4),
        }
    }
}

/// Settings of one topic, with every default already applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// Segments whose newest record is older than this are deleted; -1 keeps them forever.
    pub retention_ms: i64,
    /// The partition is trimmed (whole segments) to stay under this size; -1 for no limit.
    pub retention_bytes: i64,
    /// A segment rolls when the next entry would take it past this size.
    pub segment_bytes: u64,
    /// A non-empty segment rolls when its first entry is this old.
    pub segment_ms: i64,
    /// The largest batch payload a producer may send.
    pub max_message_bytes: u32,
    pub cleanup_policy: CleanupPolicy,
    /// How long a compacted topic keeps delete markers (Kafka's `delete.retention.ms`). Kept and
    /// described; like Kafka's, it acts only on compacted topics, which are not supported yet.
    pub delete_retention_ms: i64,
    /// The in-sync replicas an `acks=all` produce needs (`min.insync.replicas`); `None` when not
    /// set: 2 for a replicated partition and 1 for a lone replica (DESIGN, "Cluster").
    pub min_insync_replicas: Option<u16>,
    /// Whether an out-of-sync replica may lead when no in-sync one is live
    /// (`unclean.leader.election.enable`), at the price of what only the in-sync replicas had.
    pub unclean_leader_election: bool,
    /// The codec batches are stored in (`compression.type`).
    pub compression: Compression,
    /// Levels batches are recompressed at: `compression.gzip.level` (-1: zlib's default),
    /// `compression.lz4.level` and `compression.zstd.level` (KIP-390).
    pub gzip_level: i32,
    pub lz4_level: i32,
    pub zstd_level: i32,
    /// `message.timestamp.type=LogAppendTime`: every batch takes the broker's clock at append
    /// as its timestamp, and producers' timestamps are not checked.
    pub log_append_time: bool,
    /// How far a producer's timestamp may be behind or ahead of the broker's clock
    /// (`message.timestamp.before.max.ms`, `.after.max.ms`, KIP-937; `None`: not set), and the
    /// deprecated `message.timestamp.difference.max.ms`, which stands in for either when it is
    /// not set (Kafka 3.6 to 3.9's rule; 4.0 dropped the setting).
    pub timestamp_before_max_ms: Option<i64>,
    pub timestamp_after_max_ms: Option<i64>,
    pub timestamp_difference_max_ms: i64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            max_message_bytes: 1_048_588,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DAY_MS,
            min_insync_replicas: None,
            unclean_leader_election: false,
            compression: Compression::Producer,
            gzip_level: -1,
            lz4_level: 9,
            zstd_level: 3,
            log_append_time: false,
            timestamp_before_max_ms: None,
            timestamp_after_max_ms: None,
            timestamp_difference_max_ms: i64::MAX,
        }
    }
}

/// Topic-level setting names and the broker-level names of their defaults.
pub const TOPIC_KEYS: &[(&str, &str)] = &[
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("cleanup.policy", "log.cleanup.policy"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("compression.type", "compression.type"),
    ("compression.gzip.level", "compression.gzip.level"),
    ("compression.lz4.level", "compression.lz4.level"),
    ("compression.zstd.level", "compression.zstd.level"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("message.timestamp.before.max.ms", "log.message.timestamp.before.max.ms"),
    ("message.timestamp.after.max.ms", "log.message.timestamp.after.max.ms"),
    ("message.timestamp.difference.max.ms", "log.message.timestamp.difference.max.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("unclean.leader.election.enable", "unclean.leader.election.enable"),
];

/// Where a dynamic broker setting may be set (KIP-226's update modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynamicScope {
    /// As the cluster-wide default (resource name `""`), or for one broker, which then holds
    /// it over the default.
    ClusterOrBroker,
    /// As the cluster-wide default only: the controller decides by it (eligible leader
    /// replicas, unclean elections), and one broker's own value would not be what it decides
    /// by. Kafka 4.0 made `min.insync.replicas` cluster-wide only for that reason (KIP-966).
    ClusterOnly,
}

/// Dynamic broker settings that are the broker's own rather than a topic setting's default
/// (Kafka's `DynamicConnectionQuota`): each shard reads its share of `max.connections` at every
/// accept.
const BROKER_OWN_DYNAMIC: &[&str] = &["max.connections"];

/// Whether broker setting `key` (Kafka's broker name) changes while the brokers run, and where.
/// The dynamic ones are the topic settings' defaults (Kafka's `DynamicLogConfig`, every first
/// broker synonym) and [`BROKER_OWN_DYNAMIC`]; the rest are read at start only. Kafka's later
/// synonyms (`log.retention.hours`, `log.roll.hours`, ...) are read-only in Kafka too.
pub fn dynamic_broker_setting(key: &str) -> Option<DynamicScope> {
    match key {
        "min.insync.replicas" | "unclean.leader.election.enable" => Some(DynamicScope::ClusterOnly),
        _ if topic_key_of(key).is_some() || BROKER_OWN_DYNAMIC.contains(&key) => {
            Some(DynamicScope::ClusterOrBroker)
        }
        _ => None,
    }
}

/// Whether every one of broker settings `keys` may change while the brokers run; refused with
/// the ones that may not (Kafka answers these INVALID_REQUEST).
pub fn check_dynamic<'a>(keys: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let static_only: Vec<&str> = keys.filter(|key| dynamic_broker_setting(key).is_none()).collect();
    if static_only.is_empty() {
        return Ok(());
    }
    Err(ConfigError(format!(
        "Cannot update these configs dynamically: [{}] (the topic settings' defaults are \
         dynamic, as log.retention.ms is; set the others in the broker's config file or flags \
         and restart it)",
        static_only.join(", ")
    )))
}

/// Whether dynamic broker settings `keys` may be set for one broker (`for_one_broker`), or
/// only cluster-wide; refused with the ones that may not (Kafka 4.0's controller answers
/// INVALID_CONFIG for `min.insync.replicas`).
pub fn check_level<'a>(
    keys: impl Iterator<Item = &'a str>,
    for_one_broker: bool,
) -> Result<(), ConfigError> {
    let cluster_only = |key: &&str| dynamic_broker_setting(key) == Some(DynamicScope::ClusterOnly);
    let refused: Vec<&str> = keys.filter(cluster_only).collect();
    if !for_one_broker || refused.is_empty() {
        return Ok(());
    }
    Err(ConfigError(format!(
        "Cannot update these configs for one broker, only as the cluster-wide default (the \
         broker resource named \"\"): [{}]",
        refused.join(", ")
    )))
}

/// Whether `value` is one broker setting `key` takes (one of [`BROKER_OWN_DYNAMIC`]).
fn check_broker_own(key: &str, value: &str) -> Result<(), ConfigError> {
    BrokerConfig::default().apply(key, value)
}

/// The topic setting whose default broker setting `key` is.
fn topic_key_of(broker_key: &str) -> Option<&'static str> {
    TOPIC_KEYS.iter().find(|(_, b)| *b == broker_key).map(|(topic_key, _)| *topic_key)
}

/// The broker setting that holds topic setting `key`'s default.
pub fn broker_key_of(topic_key: &str) -> Option<&'static str> {
    TOPIC_KEYS.iter().find(|(t, _)| *t == topic_key).map(|(_, broker_key)| *broker_key)
}

/// One change to a topic's setting overrides, as an administrator asks for it: Kafka's
/// IncrementalAlterConfigs operations (KIP-339); AlterConfigs is a `Set` of every override.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ConfigChange {
    Set {
        key: String,
        value: String,
    },
    /// The override goes: the broker's default holds again.
    Delete {
        key: String,
    },
    /// Values added to a list setting, or taken from it (its override, else its default).
    Append {
        key: String,
        value: String,
    },
    Subtract {
        key: String,
        value: String,
    },
}

/// Topic settings whose value is a comma-separated list: the only ones APPEND and SUBTRACT
/// apply to, as in Kafka.
const LIST_TOPIC_SETTINGS: &[&str] = &["cleanup.policy"];

impl ConfigChange {
    /// The setting it changes.
    pub fn key(&self) -> &str {
        match self {
            Self::Set { key, .. }
            | Self::Delete { key }
            | Self::Append { key, .. }
            | Self::Subtract { key, .. } => key,
        }
    }

    /// The same change of setting `key`.
    pub fn renamed(self, key: String) -> Self {
        match self {
            Self::Set { value, .. } => Self::Set { key, value },
            Self::Delete { .. } => Self::Delete { key },
            Self::Append { value, .. } => Self::Append { key, value },
            Self::Subtract { value, .. } => Self::Subtract { key, value },
        }
    }
}

/// Kafka's "no limit" for its long-valued settings.
const KAFKA_LONG_MAX: &str = "9223372036854775807";
/// Why the tiered-storage settings take one value.
const NO_TIERED_STORAGE: &str =
    "tiered storage is not supported; segments live on the broker's disk";
/// Why the compaction settings take one value.
const NO_COMPACTION: &str = "it acts only on compacted topics, and compaction is not supported yet";

/// Standard Kafka topic settings Spate takes at one value only, the value at which Kafka behaves
/// as Spate does: what it does, named as Kafka names it. Admin tools pass full config sets;
/// these values are accepted (and described), others are refused with what Spate does instead.
const FIXED_TOPIC_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "message.downconversion.enable",
        "false",
        "record batches are served as stored; fetches older than v4 are not served",
    ),
    (
        "message.format.version",
        "3.0-IV1",
        "records are stored as record batches (magic 2), Kafka's format since 0.11",
    ),
    (
        "flush.messages",
        KAFKA_LONG_MAX,
        "the log is synced as acknowledgements need it (acks=all waits for the sync), never \
         forced by a count",
    ),
    (
        "flush.ms",
        KAFKA_LONG_MAX,
        "the log is synced as acknowledgements need it (acks=all waits for the sync), never \
         forced by a timer",
    ),
    ("segment.jitter.ms", "0", "segments roll at segment.ms exactly"),
    ("leader.replication.throttled.replicas", "", "replication is not throttled"),
    ("follower.replication.throttled.replicas", "", "replication is not throttled"),
    ("min.cleanable.dirty.ratio", "0.5", NO_COMPACTION),
    ("min.compaction.lag.ms", "0", NO_COMPACTION),
    ("max.compaction.lag.ms", KAFKA_LONG_MAX, NO_COMPACTION),
    ("remote.storage.enable", "false", NO_TIERED_STORAGE),
    ("local.retention.ms", "-2", NO_TIERED_STORAGE),
    ("local.retention.bytes", "-2", NO_TIERED_STORAGE),
    ("remote.log.copy.disable", "false", NO_TIERED_STORAGE),
    ("remote.log.delete.on.disable", "false", NO_TIERED_STORAGE),
];

/// Standard Kafka topic settings Spate has no counterpart for, at any value, and why: refused
/// by name, never taken as unknown.
const UNSUPPORTED_TOPIC_SETTINGS: &[(&str, &str)] = &[
    ("preallocate", "segment files are allocated in steps ahead of the writes, whatever it says"),
    ("index.interval.bytes", "each segment's sparse index has a point per write of the log"),
    ("segment.index.bytes", "each segment's sparse index is sized by the segment"),
    (
        "file.delete.delay.ms",
        "a segment's file goes as soon as retention removes it and no read holds it",
    ),
];

/// The refusal of a setting topics do not have here: a standard Kafka one with the reason, or
/// an unknown one.
fn not_a_topic_setting(key: &str) -> ConfigError {
    match UNSUPPORTED_TOPIC_SETTINGS.iter().find(|(name, _)| *name == key) {
        Some((_, why)) => ConfigError(format!("{key} is not supported: {why}")),
        None => ConfigError(format!("unknown topic setting {key}")),
    }
}

/// Why a standard topic setting takes only its one value here, when it does.
pub fn fixed_topic_setting(key: &str) -> Option<&'static str> {
    FIXED_TOPIC_SETTINGS.iter().find(|(name, _, _)| *name == key).map(|(_, _, why)| *why)
}

/// The topic setting `acks=all` and the eligible leader replicas (KIP-966) go by.
pub const MIN_INSYNC_KEY: &str = "min.insync.replicas";

impl TopicConfig {
    /// A `min.insync.replicas` value as [`Self::set`] takes it, read alone (a refusal naming the
    /// setting `name`): where only that setting matters, without resolving a whole config.
    pub fn parse_min_insync(name: &str, value: &str) -> Result<u16, ConfigError> {
        let replicas: u16 = parse(name, value)?;
        if replicas == 0 {
            return Err(invalid(name, value, "must be at least 1"));
        }
        Ok(replicas)
    }

    /// Applies one topic-level setting (`retention.ms`, ...).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.set_named(key, value, key)
    }

    /// Applies topic-level setting `key`, a refusal naming it `name`: the broker setting that
    /// holds its default (`log.retention.ms`) when that is what the user wrote.
    pub fn set_named(&mut self, key: &str, value: &str, name: &str) -> Result<(), ConfigError> {
        match key {
            "retention.ms" => self.retention_ms = parse_limit(name, value)?,
            "retention.bytes" => self.retention_bytes = parse_limit(name, value)?,
            "segment.bytes" => {
                self.segment_bytes = parse_segment_bytes(name, value)?;
            }
            "segment.ms" => {
                let ms: i64 = parse(name, value)?;
                if ms < 1 {
                    return Err(invalid(name, value, "must be at least 1"));
                }
                self.segment_ms = ms;
            }
            // Kafka names this `max.message.bytes` on topics and `message.max.bytes` on brokers;
            // users mix them up, so both are accepted.
            "max.message.bytes" | "message.max.bytes" => {
                let bytes: u32 = parse(name, value)?;
                if bytes == 0 || bytes > ENTRY_PAYLOAD_BYTES_MAX {
                    let why = format!("must be between 1 and {ENTRY_PAYLOAD_BYTES_MAX}");
                    return Err(invalid(name, value, &why));
                }
                self.max_message_bytes = bytes;
            }
            "cleanup.policy" => match value {
                "delete" => self.cleanup_policy = CleanupPolicy::Delete,
                "compact" | "compact,delete" | "delete,compact" => {
                    return Err(invalid(name, value, "compaction is not supported yet"))
                }
                _ => return Err(invalid(name, value, "expected delete")),
            },
            "delete.retention.ms" => {
                let ms: i64 = parse(name, value)?;
                if ms < 0 {
                    return Err(invalid(name, value, "must be 0 or more"));
                }
                self.delete_retention_ms = ms;
            }
            MIN_INSYNC_KEY => self.min_insync_replicas = Some(Self::parse_min_insync(name, value)?),
            "compression.type" => {
                self.compression =
                    Compression::ALL.into_iter().find(|c| c.name() == value).ok_or_else(|| {
                        let names: Vec<&str> = Compression::ALL.map(Compression::name).to_vec();
                        invalid(name, value, &format!("expected one of {}", names.join(", ")))
                    })?
            }
            // Kafka's ranges (KIP-390): zlib's 1-9 or -1 for its default, LZ4's 1-17, zstd's.
            "compression.gzip.level" => {
                self.gzip_level = parse_within(name, value, -1..=9)?;
                if self.gzip_level == 0 {
                    return Err(invalid(name, value, "must be -1 or between 1 and 9"));
                }
            }
            "compression.lz4.level" => self.lz4_level = parse_within(name, value, 1..=17)?,
            "compression.zstd.level" => self.zstd_level = parse_within(name, value, -131072..=22)?,
            "message.timestamp.type" => match value {
                "CreateTime" => self.log_append_time = false,
                "LogAppendTime" => self.log_append_time = true,
                _ => return Err(invalid(name, value, "expected CreateTime or LogAppendTime")),
            },
            "message.timestamp.before.max.ms" => {
                self.timestamp_before_max_ms = Some(parse_within(name, value, 0..=i64::MAX)?)
            }
            "message.timestamp.after.max.ms" => {
                self.timestamp_after_max_ms = Some(parse_within(name, value, 0..=i64::MAX)?)
            }
            "message.timestamp.difference.max.ms" => {
                self.timestamp_difference_max_ms = parse_within(name, value, 0..=i64::MAX)?
            }
            // As Kafka's booleans: either case.
            "unclean.leader.election.enable" => match value.to_ascii_lowercase().as_str() {
                "true" => self.unclean_leader_election = true,
                "false" => self.unclean_leader_election = false,
                _ => return Err(invalid(name, value, "expected true or false")),
            },
            _ => match FIXED_TOPIC_SETTINGS.iter().find(|(fixed, _, _)| *fixed == key) {
                Some((_, accepted, _)) if value == *accepted => {}
                // Kafka's booleans, in either case.
                Some((_, accepted @ ("true" | "false"), _))
                    if value.eq_ignore_ascii_case(accepted) => {}
                Some((_, accepted, why)) => {
                    return Err(invalid(
                        name,
                        value,
                        &format!("only {accepted} is supported: {why}"),
                    ))
                }
                None => return Err(not_a_topic_setting(name)),
            },
        }
        Ok(())
    }

    /// What the topic does to produced batches (`record::conform`).
    pub fn batch_rules(&self) -> BatchRules {
        let difference = self.timestamp_difference_max_ms;
        // Kafka 4.0's default ahead: a producer's clock an hour fast is refused.
        let after_default = if difference == i64::MAX { 3_600_000 } else { difference };
        BatchRules {
            codec: self.compression.codec(),
            levels: Levels { gzip: self.gzip_level, lz4: self.lz4_level, zstd: self.zstd_level },
            log_append_time: self.log_append_time,
            limits: TimestampLimits {
                before_max_ms: self.timestamp_before_max_ms.unwrap_or(difference),
                after_max_ms: self.timestamp_after_max_ms.unwrap_or(after_default),
            },
            batch_bytes_max: self.max_message_bytes,
        }
    }

    /// The in-sync replicas `acks=all` needs on a partition of `replicas` replicas: as set (as
    /// Kafka, more than the replicas refuses every `acks=all` produce), else 2 when replicated.
    pub fn min_insync_for(&self, replicas: usize) -> usize {
        Self::min_insync_of(self.min_insync_replicas, replicas)
    }

    /// The same for `min.insync.replicas` set to `setting` (`None`: not set).
    pub fn min_insync_of(setting: Option<u16>, replicas: usize) -> usize {
        match setting {
            Some(set) => usize::from(set),
            None => replicas.clamp(1, 2),
        }
    }

    /// This config with `overrides` (topic-level names) applied.
    pub fn with_overrides(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        self.with_overrides_named(overrides, |key| key)
    }

    /// [`Self::with_overrides`], a refusal naming the setting as `name_of` says.
    fn with_overrides_named(
        &self,
        overrides: &BTreeMap<String, String>,
        name_of: impl Fn(&str) -> &str,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        for (key, value) in overrides {
            config.set_named(key, value, name_of(key))?;
        }
        Ok(config)
    }

    /// Topic overrides `current` with `changes` applied in order, checked against these
    /// defaults: an unknown setting, a bad value, or APPEND or SUBTRACT on a setting that is not
    /// a list is refused with the reason, and nothing is changed.
    pub fn altered_overrides(
        &self,
        current: &BTreeMap<String, String>,
        changes: &[ConfigChange],
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        self.altered_overrides_named(current, changes, |key| key)
    }

    /// [`Self::altered_overrides`], each refusal naming a setting as `name_of` says.
    fn altered_overrides_named(
        &self,
        current: &BTreeMap<String, String>,
        changes: &[ConfigChange],
        name_of: impl Fn(&str) -> &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut overrides = canonical_overrides(current.clone());
        let mut changed = BTreeMap::new();
        for change in changes {
            let key = canonical_topic_key(change.key());
            // Kafka refuses a request that names a setting twice; two spellings count as one.
            if let Some(first) = changed.insert(key, change.key()) {
                let (name, first, then) = (name_of(key), name_of(first), name_of(change.key()));
                return Err(ConfigError(format!(
                    "{name} is changed twice (as {first} and {then})"
                )));
            }
            // Named settings only, whatever the operation (Kafka refuses unknown names too).
            if self.value_of(key).is_none() {
                return Err(not_a_topic_setting(name_of(key)));
            }
            match change {
                ConfigChange::Set { value, .. } => {
                    overrides.insert(key.to_string(), value.clone());
                }
                ConfigChange::Delete { .. } => {
                    overrides.remove(key);
                }
                ConfigChange::Append { value: values, .. }
                | ConfigChange::Subtract { value: values, .. } => {
                    let append = matches!(change, ConfigChange::Append { .. });
                    if !LIST_TOPIC_SETTINGS.contains(&key) {
                        let operation = if append { "APPEND" } else { "SUBTRACT" };
                        let lists: Vec<&str> =
                            LIST_TOPIC_SETTINGS.iter().map(|list| name_of(list)).collect();
                        return Err(ConfigError(format!(
                            "{operation} applies only to list settings ({}), not to {}",
                            lists.join(", "),
                            name_of(key)
                        )));
                    }
                    let now = match overrides.get(key) {
                        Some(value) => value.clone(),
                        None => self.value_of(key).unwrap_or_default(),
                    };
                    let mut list = split_list(&now);
                    for value in split_list(values) {
                        if !append {
                            list.retain(|v| *v != value);
                        } else if !list.contains(&value) {
                            list.push(value);
                        }
                    }
                    overrides.insert(key.to_string(), list.join(","));
                }
            }
        }
        self.with_overrides_named(&overrides, name_of)?;
        Ok(overrides)
    }

    /// These defaults with dynamic broker settings (`settings`, Kafka's broker names) over
    /// them, and each setting that does not apply, with why: settings come from the metadata,
    /// checked by the broker that took them, and one this build refuses is skipped rather than
    /// stop the broker (Kafka's brokers skip them likewise).
    pub fn with_broker_settings(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> (Self, Vec<ConfigError>) {
        let mut config = self.clone();
        let mut skipped = Vec::new();
        for (key, value) in settings {
            let applied = match topic_key_of(key) {
                Some(topic_key) => config.set_named(topic_key, value, key),
                None if BROKER_OWN_DYNAMIC.contains(&key.as_str()) => Ok(()),
                None => Err(ConfigError(format!("{key} is not a dynamic broker setting"))),
            };
            if let Err(why) = applied {
                skipped.push(why);
            }
        }
        (config, skipped)
    }

    /// Dynamic broker settings `current` (of one broker with `for_one_broker`, else the
    /// cluster-wide defaults) with `changes` applied in order, checked against these static
    /// defaults: a setting that is not dynamic, or not at that level, a bad value, or APPEND or
    /// SUBTRACT on a setting that is not a list, is refused with the reason. A stored setting
    /// this build cannot use (a later build's, or a value it refuses) is kept as it is, and may
    /// be deleted: it never blocks a change of the others.
    pub fn altered_broker_settings(
        &self,
        current: &BTreeMap<String, String>,
        changes: &[ConfigChange],
        for_one_broker: bool,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let usable = |key: &str, value: &str| match topic_key_of(key) {
            Some(topic_key) => self.clone().set(topic_key, value).is_ok(),
            None => BROKER_OWN_DYNAMIC.contains(&key) && check_broker_own(key, value).is_ok(),
        };
        let (usable, mut unusable): (BTreeMap<String, String>, BTreeMap<String, String>) =
            current.clone().into_iter().partition(|(key, value)| usable(key, value));
        let (dropped, changes): (Vec<ConfigChange>, Vec<ConfigChange>) =
            changes.iter().cloned().partition(|change| {
                matches!(change, ConfigChange::Delete { key } if unusable.contains_key(key))
            });
        for change in &dropped {
            unusable.remove(change.key());
        }
        let keys = changes.iter().map(ConfigChange::key);
        check_dynamic(keys.clone())?;
        check_level(keys, for_one_broker)?;
        // The broker's own settings, each set or deleted in turn; the rest as topic defaults.
        let (own, changes): (Vec<ConfigChange>, Vec<ConfigChange>) =
            changes.into_iter().partition(|change| BROKER_OWN_DYNAMIC.contains(&change.key()));
        let (mut own_now, usable): (BTreeMap<String, String>, BTreeMap<String, String>) =
            usable.into_iter().partition(|(key, _)| BROKER_OWN_DYNAMIC.contains(&key.as_str()));
        for change in own {
            match change {
                ConfigChange::Set { key, value } => {
                    check_broker_own(&key, &value)?;
                    own_now.insert(key, value);
                }
                ConfigChange::Delete { key } => {
                    own_now.remove(&key);
                }
                ConfigChange::Append { key, .. } | ConfigChange::Subtract { key, .. } => {
                    return Err(ConfigError(format!(
                        "APPEND and SUBTRACT apply only to list settings, not to {key}"
                    )));
                }
            }
        }
        unusable.extend(own_now);
        // As topic overrides, whose rules (values, lists, a setting named twice) are the same.
        let as_topic_key = |key: &str| topic_key_of(key).unwrap_or_default().to_string();
        let overrides =
            usable.iter().map(|(key, value)| (as_topic_key(key), value.clone())).collect();
        let changes: Vec<ConfigChange> = (changes.into_iter())
            .map(|change| {
                let key = as_topic_key(change.key());
                change.renamed(key)
            })
            .collect();
        // Refusals name each setting as the user did, by its broker name.
        let altered = self.altered_overrides_named(&overrides, &changes, |key| {
            broker_key_of(key).unwrap_or(key)
        })?;
        // A setting changed now replaces what could not be used of it.
        let as_broker_key = |key: &str| broker_key_of(key).unwrap_or(key).to_string();
        let altered = altered.into_iter().map(|(key, value)| (as_broker_key(&key), value));
        unusable.extend(altered);
        Ok(unusable)
    }

    /// The value of topic-level setting `key`, as `entries` gives it.
    pub fn value_of(&self, key: &str) -> Option<String> {
        self.entries().into_iter().find(|(name, _)| name == key).map(|(_, value)| value)
    }

    /// Every topic-level setting as a name and value, for `describe`.
    pub fn entries(&self) -> Vec<(String, String)> {
        let limits = self.batch_rules().limits;
        vec![
            ("retention.ms".into(), self.retention_ms.to_string()),
            ("retention.bytes".into(), self.retention_bytes.to_string()),
            ("segment.bytes".into(), self.segment_bytes.to_string()),
            ("segment.ms".into(), self.segment_ms.to_string()),
            ("max.message.bytes".into(), self.max_message_bytes.to_string()),
            ("cleanup.policy".into(), "delete".into()),
            ("delete.retention.ms".into(), self.delete_retention_ms.to_string()),
            ("min.insync.replicas".into(), self.min_insync_replicas.unwrap_or(2).to_string()),
            ("unclean.leader.election.enable".into(), self.unclean_leader_election.to_string()),
            ("compression.type".into(), self.compression.name().into()),
            ("compression.gzip.level".into(), self.gzip_level.to_string()),
            ("compression.lz4.level".into(), self.lz4_level.to_string()),
            ("compression.zstd.level".into(), self.zstd_level.to_string()),
            (
                "message.timestamp.type".into(),
                if self.log_append_time { "LogAppendTime" } else { "CreateTime" }.into(),
            ),
            ("message.timestamp.before.max.ms".into(), limits.before_max_ms.to_string()),
            ("message.timestamp.after.max.ms".into(), limits.after_max_ms.to_string()),
            (
                "message.timestamp.difference.max.ms".into(),
                self.timestamp_difference_max_ms.to_string(),
            ),
        ]
        .into_iter()
        .chain(
            FIXED_TOPIC_SETTINGS
                .iter()
                .map(|(name, value, _)| (name.to_string(), value.to_string())),
        )
        .collect()
    }
}

/// A topic setting's one name: `message.max.bytes`, the broker's name that users give topics
/// too, is `max.message.bytes`.
pub fn canonical_topic_key(key: &str) -> &str {
    match key {
        "message.max.bytes" => "max.message.bytes",
        other => other,
    }
}

/// Topic overrides under their one name each (the topic-level name wins over another spelling),
/// so a later change or deletion finds them.
pub fn canonical_overrides(overrides: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut canonical = BTreeMap::new();
    for (key, value) in overrides {
        let name = canonical_topic_key(&key);
        if name == key || !canonical.contains_key(name) {
            canonical.insert(name.to_string(), value);
        }
    }
    canonical
}

/// A list setting's values, trimmed, without empty ones.
fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect()
}

/// Everything `spate serve` runs with.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// CPUs to pin one shard each to; `None` means one shard per online CPU.
    pub cores: Option<Vec<usize>>,
    pub native_listener: SocketAddr,
    /// Where Kafka clients connect (`listeners`).
    pub kafka_listener: SocketAddr,
    /// Where Prometheus scrapes `/metrics` (`metrics.listener`); `None` when it is `off`. Port
    /// 0 takes a free port, which the log names.
    pub metrics_listener: Option<SocketAddr>,
    /// `/metrics` reports each partition's own series (log size, offsets, group lag) besides
    /// the per-topic and per-group sums (`metrics.partition.series`).
    pub metrics_partition_series: bool,
    /// The host and port Metadata tells Kafka clients to use (`advertised.listeners`); `None`
    /// advertises the address each client connected to.
    pub kafka_advertised: Option<(String, u16)>,
    /// This broker's id in Kafka metadata (`node.id`, also read as `broker.id`).
    pub node_id: NodeId,
    /// The controller's voters (`controller.quorum.voters`), each at its native listener. Empty:
    /// this broker is a cluster of one, its own sole voter.
    pub quorum_voters: Vec<QuorumVoter>,
    /// The native address other brokers and native clients are told
    /// (`native.advertised.listener`); `None` advertises the native listener itself.
    pub native_advertised: Option<(String, u16)>,
    /// `broker.rack`: replicas of a partition go to distinct racks while there are racks left.
    pub rack: Option<String>,
    /// The controller fences a broker it has not heard from for this long.
    pub broker_session_timeout_ms: u64,
    /// How often a broker heartbeats to the controller.
    pub broker_heartbeat_interval_ms: u64,
    /// A follower that has not caught up with its leader for this long leaves the in-sync set
    /// (`replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// The controller moves leaders back to their preferred replicas on its own
    /// (`auto.leader.rebalance.enable`)...
    pub auto_leader_rebalance: bool,
    /// ...checking every `leader.imbalance.check.interval.seconds`...
    pub leader_imbalance_check_interval_secs: u64,
    /// ...for the brokers whose preferred partitions are led by others past this share
    /// (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u32,
    /// How long a follower's fetch waits at the leader for new entries
    /// (`replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u64,
    /// The most one follower's fetch takes of one partition (`replica.fetch.max.bytes`; one
    /// whole entry at least).
    pub replica_fetch_max_bytes: u32,
    /// The most one follower's fetch takes in all (`replica.fetch.response.max.bytes`).
    pub replica_fetch_response_max_bytes: u32,
    /// Defaults for topics; topics override them by their own names.
    pub topic_defaults: TopicConfig,
    pub num_partitions: u32,
    /// Replicas of a topic created without a replication factor (CreateTopics' -1, or
    /// auto-creation). Checked against the live brokers when a topic is created.
    pub default_replication_factor: u16,
    /// Replicas of each `__consumer_offsets` partition, when the broker creates it on first use
    /// (at most as many as the cluster has brokers: its voters, or more if more registered).
    pub offsets_topic_replication_factor: u16,
    pub auto_create_topics: bool,
    /// The largest request frame a client may send.
    pub socket_request_max_bytes: u32,
    pub retention_check_interval_ms: u64,
    /// The largest single O_DIRECT write of the segment writer, but for a follower's fetched
    /// entries received in place, each partition's of one fetch answer written whole (at most
    /// `replica.fetch.max.bytes`, or one larger entry; `log::in_place`).
    pub flush_write_bytes_max: usize,
    /// Recent entries each partition keeps in memory for consumers at the tail, at most.
    pub tail_cache_bytes: usize,
    /// Sealed segment files the broker keeps open, split evenly across its shards; past it the
    /// file read longest ago is closed and reopened on demand. Active segments (one per
    /// partition) are always open and not counted.
    pub segment_files_open_max: usize,
    /// What all the tail caches of one shard keep together: the shard's oldest cached entries
    /// leave first past it, so the memory does not grow with the partition count.
    pub tail_cache_shard_bytes: usize,
    /// What one shard keeps of the chunks read from its partitions' segments (and reads ahead
    /// in flight, at most half of it): the least recently used chunk leaves first past it.
    pub read_cache_shard_bytes: usize,
    /// The most read ahead of one sequential reader (eight of its fetches, within this); 0 turns
    /// reading ahead off.
    pub read_ahead_bytes: usize,
    /// How long the first rebalance of an empty group waits for more members.
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
    /// Committed offsets of a group without members are forgotten this long after the commit.
    pub offsets_retention_minutes: u64,
    /// Segment size of `__consumer_offsets`: sealed segments are what compaction drops.
    pub offsets_topic_segment_bytes: u64,
    /// Segment size of a controller voter's metadata log: sealed segments a snapshot covers
    /// are deleted.
    pub metadata_log_segment_bytes: u64,
    /// Bytes of metadata log entries a voter applies between two snapshots of its image
    /// (KRaft's `metadata.log.max.record.bytes.between.snapshots`).
    pub metadata_snapshot_bytes: u64,
    /// Connections the broker accepts at once, both listeners together; more are closed.
    pub max_connections: u32,
    /// Partitions this broker holds, every topic's (internal ones included) counted together:
    /// creating more is refused with POLICY_VIOLATION (KIP-578's name).
    pub max_broker_partitions: u32,
    /// A connection that sends nothing for this long (between requests or inside one) is closed.
    pub connections_max_idle_ms: u64,
    /// Produced bytes appended but not yet written, broker-wide, past which connections stop
    /// reading requests until the disk catches up.
    pub queued_max_request_bytes: usize,
    /// An idempotent producer that has not written to a partition for this long is forgotten
    /// there.
    pub producer_id_expiration_ms: u64,
    /// The settings given in the file or by flags, by their Kafka names: DescribeConfigs reports
    /// these as the broker's own (STATIC_BROKER_CONFIG) and every other as a default.
    pub explicit: BTreeSet<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            cores: None,
            native_listener: SocketAddr::from(([0, 0, 0, 0], NATIVE_PORT_DEFAULT)),
            kafka_listener: SocketAddr::from(([0, 0, 0, 0], KAFKA_PORT_DEFAULT)),
            metrics_listener: Some(SocketAddr::from(([0, 0, 0, 0], METRICS_PORT_DEFAULT))),
            metrics_partition_series: true,
            kafka_advertised: None,
            node_id: NodeId(0),
            quorum_voters: Vec::new(),
            native_advertised: None,
            rack: None,
            // A third of Kafka's (9 s and 2 s): a paused or cut-off leader is replaced three
            // times sooner. Measured (benches/false_fencing.sh, docs/PERFORMANCE.md): under
            // full acks=all load on three brokers sharing two CPUs, no broker was fenced falsely
            // even at 400 ms and 100 ms; these keep more than seven times that margin. A crashed
            // broker is fenced at once anyway (its heartbeat connection closes).
            broker_session_timeout_ms: 3_000,
            broker_heartbeat_interval_ms: 500,
            // Kafka's.
            replica_lag_time_max_ms: 30_000,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_secs: 300,
            leader_imbalance_per_broker_percentage: 10,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_fetch_response_max_bytes: 10 * 1024 * 1024,
            topic_defaults: TopicConfig::default(),
            num_partitions: 1,
            // Kafka's defaults. The offsets topic's 3 is capped by the cluster's size when the
            // topic is created (`Shard::ensure_offsets_topic`): a broker alone keeps its
            // groups' offsets on its own.
            default_replication_factor: 1,
            offsets_topic_replication_factor: 3,
            auto_create_topics: true,
            socket_request_max_bytes: 100 * 1024 * 1024,
            retention_check_interval_ms: 300_000,
            flush_write_bytes_max: 1024 * 1024,
            tail_cache_bytes: 8 * 1024 * 1024,
            // With max.broker.partitions' 12,000 active segments, within a 20,000-file hard limit.
            segment_files_open_max: 4096,
            // Sixteen partitions' full caches: more busy partitions share it.
            tail_cache_shard_bytes: 128 * 1024 * 1024,
            // Four consumer groups a few seconds apart at disk speed share one read here.
            read_cache_shard_bytes: 256 * 1024 * 1024,
            // Eight 1 MiB fetches; 4 MiB fetches get two fetches' worth.
            read_ahead_bytes: 8 * 1024 * 1024,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            offsets_retention_minutes: 10_080,
            offsets_topic_segment_bytes: 16 * 1024 * 1024,
            // Kafka's is 1 GiB; the metadata log is small, and this keeps what snapshots free
            // on disk within a few snapshots' worth.
            metadata_log_segment_bytes: 64 * 1024 * 1024,
            // Kafka's default.
            metadata_snapshot_bytes: 20 * 1024 * 1024,
            max_connections: 100_000,
            // 12,000: 10,000 user partitions (what a partition costs now, one open file and a
            // small preallocation, fits a 2-core, 20,000-file machine that many times) with room
            // for __consumer_offsets, whose 16 partitions are kept free until it exists.
            max_broker_partitions: 12_000,
            connections_max_idle_ms: 600_000,
            queued_max_request_bytes: 256 * 1024 * 1024,
            producer_id_expiration_ms: 86_400_000,
            explicit: BTreeSet::new(),
        }
    }
}

impl BrokerConfig {
    /// Applies one broker-level setting, and remembers it as given.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.apply(key, value)?;
        let name = match key {
            "broker.id" => "node.id",
            "log.retention.hours" | "log.retention.minutes" => "log.retention.ms",
            "log.roll.hours" => "log.roll.ms",
            "log.dir" | "data.dir" => "log.dirs",
            "kafka.listener" => "listeners",
            "kafka.advertised.listener" => "advertised.listeners",
            other => other,
        };
        self.explicit.insert(name.to_string());
        Ok(())
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(topic_key) = topic_key_of(key) {
            return self.topic_defaults.set_named(topic_key, value, key);
        }
        match key {
            "log.dirs" | "log.dir" | "data.dir" => self.data_dir = PathBuf::from(value),
            "cores" => self.cores = Some(parse_cores(value)?),
            "native.listener" => {
                self.native_listener =
                    value.parse().map_err(|_| invalid(key, value, "expected host:port"))?
            }
            "listeners" | "kafka.listener" => {
                self.kafka_listener = strip_scheme(value).parse().map_err(|_| {
                    invalid(key, value, "expected host:port or PLAINTEXT://host:port")
                })?
            }
            "metrics.listener" => {
                self.metrics_listener = match value {
                    "off" => None,
                    address => Some(
                        address
                            .parse()
                            .map_err(|_| invalid(key, value, "expected host:port, or off"))?,
                    ),
                }
            }
            "metrics.partition.series" => self.metrics_partition_series = parse(key, value)?,
            "advertised.listeners" | "kafka.advertised.listener" => {
                self.kafka_advertised = Some(parse_host_port(key, value, strip_scheme(value))?)
            }
            "native.advertised.listener" => {
                self.native_advertised = Some(parse_host_port(key, value, value)?)
            }
            "node.id" | "broker.id" => {
                self.node_id = NodeId(parse(key, value)?);
                if self.node_id.0 < 0 {
                    return Err(invalid(key, value, "must be 0 or more"));
                }
            }
            "controller.quorum.voters" => self.quorum_voters = parse_voters(key, value)?,
            "broker.rack" => {
                self.rack = Some(value.to_string()).filter(|rack| !rack.trim().is_empty())
            }
            "broker.session.timeout.ms" => {
                self.broker_session_timeout_ms = parse_positive(key, value)?
            }
            "broker.heartbeat.interval.ms" => {
                self.broker_heartbeat_interval_ms = parse_positive(key, value)?
            }
            "replica.lag.time.max.ms" => self.replica_lag_time_max_ms = parse_positive(key, value)?,
            "auto.leader.rebalance.enable" => self.auto_leader_rebalance = parse(key, value)?,
            "leader.imbalance.check.interval.seconds" => {
                self.leader_imbalance_check_interval_secs = parse_positive(key, value)?
            }
            "leader.imbalance.per.broker.percentage" => {
                let percentage: u32 = parse(key, value)?;
                if percentage > 100 {
                    return Err(invalid(key, value, "a percentage, 0 to 100"));
                }
                self.leader_imbalance_per_broker_percentage = percentage;
            }
            "replica.fetch.wait.max.ms" => self.replica_fetch_wait_max_ms = parse(key, value)?,
            "replica.fetch.max.bytes" => self.replica_fetch_max_bytes = parse_positive(key, value)?,
            "replica.fetch.response.max.bytes" => {
                self.replica_fetch_response_max_bytes = parse_positive(key, value)?
            }
            "log.retention.hours" => {
                let hours: i64 = parse(key, value)?;
                self.topic_defaults.retention_ms = hours.saturating_mul(3_600_000);
            }
            "log.retention.minutes" => {
                let minutes: i64 = parse(key, value)?;
                self.topic_defaults.retention_ms = minutes.saturating_mul(60_000);
            }
            "log.roll.hours" => {
                let hours: i64 = parse(key, value)?;
                self.topic_defaults.segment_ms = hours.saturating_mul(3_600_000);
            }
            "num.partitions" => self.num_partitions = parse_positive(key, value)?,
            "default.replication.factor" => {
                self.default_replication_factor = parse_positive(key, value)?
            }
            "offsets.topic.replication.factor" => {
                self.offsets_topic_replication_factor = parse_positive(key, value)?
            }
            "auto.create.topics.enable" => self.auto_create_topics = parse(key, value)?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse(key, value)?,
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms = parse_positive(key, value)?
            }
            "log.flush.write.bytes.max" => {
                let bytes: usize = parse(key, value)?;
                if bytes == 0 || !bytes.is_multiple_of(WRITE_ALIGN_BYTES) {
                    let why = format!("must be a positive multiple of {WRITE_ALIGN_BYTES}");
                    return Err(invalid(key, value, &why));
                }
                self.flush_write_bytes_max = bytes;
            }
            "log.tail.cache.bytes" => self.tail_cache_bytes = parse(key, value)?,
            "log.tail.cache.shard.bytes" => self.tail_cache_shard_bytes = parse(key, value)?,
            "log.read.cache.shard.bytes" => self.read_cache_shard_bytes = parse(key, value)?,
            "log.read.ahead.bytes" => self.read_ahead_bytes = parse(key, value)?,
            "log.segment.files.open.max" => {
                self.segment_files_open_max = parse_positive(key, value)?
            }
            "group.initial.rebalance.delay.ms" => {
                self.group_initial_rebalance_delay_ms = parse(key, value)?
            }
            "group.min.session.timeout.ms" => {
                self.group_min_session_timeout_ms = parse(key, value)?
            }
            "group.max.session.timeout.ms" => {
                self.group_max_session_timeout_ms = parse(key, value)?
            }
            "offsets.retention.minutes" => self.offsets_retention_minutes = parse(key, value)?,
            "max.connections" => self.max_connections = parse_positive(key, value)?,
            "max.broker.partitions" => self.max_broker_partitions = parse_positive(key, value)?,
            "connections.max.idle.ms" => self.connections_max_idle_ms = parse_positive(key, value)?,
            "queued.max.request.bytes" => {
                self.queued_max_request_bytes = parse_positive(key, value)?
            }
            "producer.id.expiration.ms" => {
                self.producer_id_expiration_ms = parse_positive(key, value)?
            }
            "offsets.topic.segment.bytes" => {
                self.offsets_topic_segment_bytes = parse_segment_bytes(key, value)?;
            }
            "metadata.log.segment.bytes" => {
                self.metadata_log_segment_bytes = parse_segment_bytes(key, value)?;
            }
            "metadata.log.max.record.bytes.between.snapshots" => {
                self.metadata_snapshot_bytes = parse_positive(key, value)?
            }
            _ => return Err(ConfigError(format!("unknown setting {key}"))),
        }
        Ok(())
    }

    /// These settings with the broker's own dynamic settings of `settings` over them (the
    /// topic settings' defaults are [`TopicConfig::with_broker_settings`]'s), and each that
    /// does not apply, with why.
    pub fn with_own_dynamic(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> (Self, Vec<ConfigError>) {
        let mut config = self.clone();
        let own = settings.iter().filter(|(key, _)| BROKER_OWN_DYNAMIC.contains(&key.as_str()));
        let skipped = own.filter_map(|(key, value)| config.apply(key, value).err()).collect();
        (config, skipped)
    }

    /// Applies every key of a TOML document; values may be strings, integers or booleans.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table =
            text.parse().map_err(|e| ConfigError(format!("config file is not TOML: {e}")))?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError(format!("{key}: unsupported value {other}")));
                }
            };
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// Checks settings against each other once everything is applied, whatever order they
    /// came in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.topic_defaults.max_message_bytes >= self.socket_request_max_bytes {
            return Err(ConfigError(format!(
                "message.max.bytes ({}) must be below socket.request.max.bytes ({})",
                self.topic_defaults.max_message_bytes, self.socket_request_max_bytes
            )));
        }
        if self.broker_heartbeat_interval_ms >= self.broker_session_timeout_ms {
            return Err(ConfigError(format!(
                "broker.heartbeat.interval.ms ({}) must be below broker.session.timeout.ms ({})",
                self.broker_heartbeat_interval_ms, self.broker_session_timeout_ms
            )));
        }
        if self.quorum_voters.is_empty() {
            return Ok(());
        }
        // In a cluster other brokers and clients reach this one by what it registers: a
        // wildcard address cannot be reached.
        let native = self.native_endpoint();
        if is_wildcard(&native.0) {
            return Err(ConfigError(format!(
                "the native listener {} cannot be registered in a cluster: set \
                 native.advertised.listener to an address other brokers can reach",
                self.native_listener
            )));
        }
        let kafka = self.kafka_endpoint();
        if is_wildcard(&kafka.0) {
            return Err(ConfigError(format!(
                "the Kafka address {}:{} cannot be registered in a cluster: set \
                 advertised.listeners to an address clients can reach",
                kafka.0, kafka.1
            )));
        }
        if let Some(me) = self.quorum_voters.iter().find(|v| v.node == self.node_id) {
            if (me.host.as_str(), me.port) != (native.0.as_str(), native.1) {
                return Err(ConfigError(format!(
                    "controller.quorum.voters gives node {} the address {}:{}, but its native \
                     listener is advertised as {}:{} (compared as written: give both the same \
                     host name or address)",
                    self.node_id, me.host, me.port, native.0, native.1
                )));
            }
        }
        Ok(())
    }

    /// Whether this broker is one of several (`controller.quorum.voters` is set).
    pub fn in_cluster(&self) -> bool {
        !self.quorum_voters.is_empty()
    }

    /// Whether this broker is a controller voter: named among the voters, or alone.
    pub fn is_voter(&self) -> bool {
        !self.in_cluster() || self.quorum_voters.iter().any(|v| v.node == self.node_id)
    }

    /// The native address this broker registers.
    pub fn native_endpoint(&self) -> (String, u16) {
        let listener = self.native_listener;
        self.native_advertised.clone().unwrap_or((listener.ip().to_string(), listener.port()))
    }

    /// The Kafka address this broker registers.
    pub fn kafka_endpoint(&self) -> (String, u16) {
        let listener = self.kafka_listener;
        self.kafka_advertised.clone().unwrap_or((listener.ip().to_string(), listener.port()))
    }
}

/// A controller voter: a node id and the native listener it is reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumVoter {
    pub node: NodeId,
    pub host: String,
    pub port: u16,
}

/// `id@host:port,id@host:port,...`, ids distinct.
fn parse_voters(key: &str, value: &str) -> Result<Vec<QuorumVoter>, ConfigError> {
    let mut voters: Vec<QuorumVoter> = Vec::new();
    for part in value.split(',').map(str::trim) {
        let (id, address) =
            part.split_once('@').ok_or_else(|| invalid(key, value, "expected id@host:port,..."))?;
        let node = NodeId(parse(key, id)?);
        if node.0 < 0 {
            return Err(invalid(key, value, "node ids are 0 or more"));
        }
        if voters.iter().any(|v| v.node == node) {
            return Err(invalid(key, value, &format!("node {node} is named twice")));
        }
        let (host, port) = parse_host_port(key, value, address)?;
        if is_wildcard(&host) {
            return Err(invalid(key, value, &format!("{host} cannot be connected to")));
        }
        voters.push(QuorumVoter { node, host, port });
    }
    Ok(voters)
}

/// `host:port`, an IPv6 address in brackets (`[::1]:9192`), both present, the port above 0.
/// Returns the host without brackets.
fn parse_host_port(key: &str, value: &str, address: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) =
        address.rsplit_once(':').ok_or_else(|| invalid(key, value, "expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| invalid(key, value, "bad port"))?;
    if host.is_empty() || port == 0 {
        return Err(invalid(key, value, "a host and a port above 0 are needed"));
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inside) => {
            inside
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| invalid(key, value, "not an IPv6 address inside the brackets"))?;
            inside
        }
        None if host.contains([':', '[', ']']) => {
            return Err(invalid(key, value, "an IPv6 address goes in brackets: [::1]:9192"));
        }
        None => host,
    };
    if host.contains(['/', ' ', '@', ',']) {
        return Err(invalid(key, value, "not a host name or address"));
    }
    Ok((host.to_string(), port))
}

/// `host:port` as the settings take it back ([`parse_host_port`]): an IPv6 host in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// An address that means "every interface": fine to listen on, impossible to connect to.
fn is_wildcard(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// A number that must be at least 1.
fn parse_positive<T>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Default + PartialEq,
{
    let parsed: T = parse(key, value)?;
    if parsed == T::default() {
        return Err(invalid(key, value, "must be at least 1"));
    }
    Ok(parsed)
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| invalid(key, value, "not a valid number or boolean"))
}

/// A segment size, at least [`SEGMENT_BYTES_MIN`].
fn parse_segment_bytes(key: &str, value: &str) -> Result<u64, ConfigError> {
    let bytes: u64 = parse(key, value)?;
    if bytes < SEGMENT_BYTES_MIN {
        return Err(invalid(key, value, &format!("below {SEGMENT_BYTES_MIN}")));
    }
    Ok(bytes)
}

/// A size or duration limit where -1 means none.
fn parse_limit(key: &str, value: &str) -> Result<i64, ConfigError> {
    let limit: i64 = parse(key, value)?;
    if limit < -1 {
        return Err(invalid(key, value, "must be -1 (no limit) or positive"));
    }
    Ok(limit)
}

/// A number within `range`.
fn parse_within<T>(
    key: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let number: T = parse(key, value)?;
    if !range.contains(&number) {
        let why = format!("must be between {} and {}", range.start(), range.end());
        return Err(invalid(key, value, &why));
    }
    Ok(number)
}

/// Parses a CPU list like `0-3`, `0,2` or `0-1,4-5`.
pub fn parse_cores(value: &str) -> Result<Vec<usize>, ConfigError> {
    let mut cores = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || invalid("cores", value, "expected a list like 0-3 or 0,2");
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| bad())?;
                let last: usize = last.trim().parse().map_err(|_| bad())?;
                if first > last || last > CPU_ID_MAX {
                    return Err(bad());
                }
                cores.extend(first..=last);
            }
            None => {
                let cpu: usize = part.parse().map_err(|_| bad())?;
                if cpu > CPU_ID_MAX {
                    return Err(bad());
                }
                cores.push(cpu);
            }
        }
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err(invalid("cores", value, "no CPU listed"));
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_reach_topic_defaults() {
        let mut config = BrokerConfig::default();
        config
            .apply_toml(
                r#"
                "log.retention.ms" = 1000
                "log.segment.bytes" = "65536"
                "message.max.bytes" = 2048
                "auto.create.topics.enable" = false
                "num.partitions" = 3
                "producer.id.expiration.ms" = 3600000
                "#,
            )
            .unwrap();
        assert_eq!(config.topic_defaults.retention_ms, 1000);
        assert_eq!(config.topic_defaults.segment_bytes, 65536);
        assert_eq!(config.topic_defaults.max_message_bytes, 2048);
        assert!(!config.auto_create_topics);
        assert_eq!(config.num_partitions, 3);
        assert_eq!(config.producer_id_expiration_ms, 3_600_000);
    }

    #[test]
    fn topic_overrides_apply_over_defaults() {
        let defaults = TopicConfig { retention_ms: 5, ..TopicConfig::default() };
        let overrides = BTreeMap::from([("retention.bytes".to_string(), "100".to_string())]);
        let resolved = defaults.with_overrides(&overrides).unwrap();
        assert_eq!(resolved.retention_ms, 5);
        assert_eq!(resolved.retention_bytes, 100);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut config = BrokerConfig::default();
        let err = config.set("log.segment.bytes", "12").unwrap_err();
        assert!(err.0.contains("log.segment.bytes") || err.0.contains("segment.bytes"), "{err}");
        assert!(config.set("no.such.setting", "1").unwrap_err().0.contains("unknown"));
        assert!(config.set("retention.ms", "-5").is_err());
        assert!(config.set("cleanup.policy", "compact").is_err());
        assert!(config.set("producer.id.expiration.ms", "0").unwrap_err().0.contains("at least 1"));
    }

    /// The full config set admin tools pass at CreateTopics: Kafka's standard topic settings
    /// at what Spate does are taken (and described back), others refused with the reason.
    #[test]
    fn standard_topic_settings_are_taken_at_what_spate_does_or_refused_clearly() {
        let taken = BTreeMap::from([
            ("compression.type".to_string(), "producer".to_string()),
            ("message.timestamp.type".to_string(), "CreateTime".to_string()),
            ("min.insync.replicas".to_string(), "1".to_string()),
            ("unclean.leader.election.enable".to_string(), "false".to_string()),
            ("delete.retention.ms".to_string(), "3600000".to_string()),
            ("segment.jitter.ms".to_string(), "0".to_string()),
            ("remote.storage.enable".to_string(), "false".to_string()),
            ("max.compaction.lag.ms".to_string(), KAFKA_LONG_MAX.to_string()),
        ]);
        let config = TopicConfig::default().with_overrides(&taken).expect("taken");
        let described: BTreeMap<String, String> = config.entries().into_iter().collect();
        for (key, value) in &taken {
            assert_eq!(described.get(key), Some(value), "{key} described");
        }
        for (key, value, why) in [
            ("compression.type", "brotli", "one of producer, uncompressed, gzip"),
            ("compression.gzip.level", "0", "-1 or between 1 and 9"),
            ("compression.zstd.level", "23", "between -131072 and 22"),
            ("message.timestamp.type", "AppendTime", "CreateTime or LogAppendTime"),
            ("min.insync.replicas", "0", "at least 1"),
            ("unclean.leader.election.enable", "yes", "true or false"),
            ("delete.retention.ms", "-1", "0 or more"),
            ("segment.jitter.ms", "1000", "roll at segment.ms exactly"),
            ("remote.storage.enable", "true", "tiered storage is not supported"),
            ("message.timestamp.after.max.ms", "-1", "between 0 and"),
            // No value at all: refused by name with the reason, not as unknown.
            ("preallocate", "false", "preallocate is not supported: segment files"),
            ("file.delete.delay.ms", "60000", "not supported"),
        ] {
            let refused = TopicConfig::default().set(key, value).unwrap_err().0;
            assert!(refused.contains(key) && refused.contains(why), "{refused}");
        }
        let unknown = TopicConfig::default().set("retention.hours", "1").unwrap_err().0;
        assert_eq!(unknown, "unknown topic setting retention.hours");
        // Broker-level defaults under Kafka's broker names.
        let mut broker = BrokerConfig::default();
        broker.set("log.message.timestamp.type", "CreateTime").expect("taken");
        broker.set("log.cleaner.delete.retention.ms", "5").expect("taken");
        assert_eq!(broker.topic_defaults.delete_retention_ms, 5);
        broker.set("compression.type", "gzip").expect("a codec");
        broker.set("log.message.timestamp.before.max.ms", "60000").expect("a limit");
        let rules = broker.topic_defaults.batch_rules();
        assert_eq!((rules.codec, rules.limits.before_max_ms), (Some(1), 60_000));
        assert_eq!(rules.limits.after_max_ms, 3_600_000, "Kafka 4.0's default");
        // The deprecated difference stands in for a limit not set (Kafka 3.6's rule).
        broker.set("log.message.timestamp.difference.max.ms", "1000").expect("a limit");
        let limits = broker.topic_defaults.batch_rules().limits;
        assert_eq!((limits.before_max_ms, limits.after_max_ms), (60_000, 1000));
    }

    #[test]
    fn changes_apply_in_order_and_refuse_what_is_not_a_setting_or_a_list() {
        let defaults = TopicConfig::default();
        let current: BTreeMap<String, String> =
            [("retention.ms".to_string(), "1000".to_string())].into();
        let set =
            |key: &str, value: &str| ConfigChange::Set { key: key.into(), value: value.into() };
        let changes = [
            ConfigChange::Delete { key: "retention.ms".into() },
            set("message.max.bytes", "2048"),
            set("segment.bytes", "65536"),
            ConfigChange::Append { key: "cleanup.policy".into(), value: "delete".into() },
        ];
        let altered = defaults.altered_overrides(&current, &changes).expect("taken");
        let expected: BTreeMap<String, String> = [
            ("cleanup.policy", "delete"),
            ("max.message.bytes", "2048"),
            ("segment.bytes", "65536"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        assert_eq!(altered, expected, "one override per setting, by its topic name");
        let refused = |changes: &[ConfigChange]| {
            defaults.altered_overrides(&current, changes).expect_err("refused").0
        };
        assert!(refused(&[set("no.such", "1")]).contains("unknown topic setting no.such"));
        let delete_unknown = [ConfigChange::Delete { key: "no.such".into() }];
        assert!(refused(&delete_unknown).contains("unknown"));
        assert!(refused(&[set("retention.ms", "soon")]).contains("retention.ms"));
        let append = [ConfigChange::Append { key: "retention.ms".into(), value: "5".into() }];
        assert!(refused(&append).contains("APPEND applies only to list settings"));
        // Subtracting the only cleanup policy leaves none, which is no policy Spate has.
        let subtract =
            [ConfigChange::Subtract { key: "cleanup.policy".into(), value: "delete".into() }];
        assert!(refused(&subtract).contains("cleanup.policy"));
        let compact =
            [ConfigChange::Append { key: "cleanup.policy".into(), value: "compact".into() }];
        assert!(refused(&compact).contains("compaction is not supported yet"));
    }

    #[test]
    fn dynamic_broker_settings_are_the_topic_defaults_at_their_level() {
        let defaults = TopicConfig { retention_ms: 1000, ..TopicConfig::default() };
        let set =
            |key: &str, value: &str| ConfigChange::Set { key: key.into(), value: value.into() };
        let current: BTreeMap<String, String> =
            [("log.roll.ms".to_string(), "60000".to_string())].into();
        let changes = [
            set("log.retention.ms", "5000"),
            set("message.max.bytes", "2048"),
            set("min.insync.replicas", "2"),
            ConfigChange::Delete { key: "log.roll.ms".into() },
        ];
        let altered = defaults.altered_broker_settings(&current, &changes, false).expect("taken");
        let expected: BTreeMap<String, String> = [
            ("log.retention.ms", "5000"),
            ("message.max.bytes", "2048"),
            ("min.insync.replicas", "2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        assert_eq!(altered, expected, "kept by their broker names");
        let (effective, skipped) = defaults.with_broker_settings(&altered);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!((effective.retention_ms, effective.max_message_bytes), (5000, 2048));
        assert_eq!(effective.min_insync_replicas, Some(2));
        assert_eq!(effective.segment_bytes, defaults.segment_bytes);

        let refused = |changes: &[ConfigChange], for_one_broker: bool| {
            (defaults.altered_broker_settings(&current, changes, for_one_broker))
                .expect_err("refused")
                .0
        };
        // Static settings, Kafka's read-only synonyms among them, and unknown names.
        for key in ["num.partitions", "log.retention.hours", "no.such"] {
            let why = refused(&[set(key, "1")], false);
            assert!(why.contains("Cannot update these configs dynamically") && why.contains(key));
        }
        // The broker's own max.connections, for one broker too; a positive number.
        let connections = [set("max.connections", "5")];
        let altered = defaults.altered_broker_settings(&current, &connections, true);
        assert_eq!(altered.expect("taken")["max.connections"], "5");
        let (own, skipped) = BrokerConfig::default().with_own_dynamic(&expected);
        assert!(
            skipped.is_empty() && own.max_connections == BrokerConfig::default().max_connections
        );
        let limit: BTreeMap<String, String> = [("max.connections".into(), "5".into())].into();
        assert_eq!(BrokerConfig::default().with_own_dynamic(&limit).0.max_connections, 5);
        assert!(refused(&[set("max.connections", "0")], false).contains("max.connections"));
        let why = refused(&[set("min.insync.replicas", "2")], true);
        assert!(why.contains("cluster-wide default") && why.contains("min.insync.replicas"));
        assert!(
            refused(&[set("log.retention.ms", "soon")], false).contains("for log.retention.ms:")
        );
        let append = [ConfigChange::Append { key: "log.roll.ms".into(), value: "5".into() }];
        let why = refused(&append, true);
        assert!(why.contains("(log.cleanup.policy), not to log.roll.ms"), "{why}");
        // Every refusal names the setting as the user wrote it, not as the topic's setting.
        let twice = [set("log.roll.ms", "60000"), set("log.roll.ms", "70000")];
        let why = refused(&twice, false);
        assert!(why.starts_with("log.roll.ms is changed twice (as log.roll.ms and"), "{why}");
        let why = BrokerConfig::default().set("log.segment.bytes", "tiny").expect_err("refused");
        assert!(why.0.contains("for log.segment.bytes:"), "{why:?}");

        // What the metadata holds but this build does not take is skipped, the rest applies.
        let stored: BTreeMap<String, String> =
            [("log.retention.ms", "soon"), ("log.roll.ms", "60000"), ("num.partitions", "3")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        let (effective, skipped) = defaults.with_broker_settings(&stored);
        assert_eq!((effective.retention_ms, effective.segment_ms), (1000, 60000));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].0.contains("for log.retention.ms:"), "{skipped:?}");
        // ...and never blocks a change: kept, replaced when set, gone when deleted.
        let changes = [set("log.segment.bytes", "65536")];
        let altered = defaults.altered_broker_settings(&stored, &changes, false).expect("taken");
        assert_eq!(altered.len(), 4, "{altered:?}");
        let changes = [
            ConfigChange::Delete { key: "num.partitions".into() },
            set("log.retention.ms", "5000"),
        ];
        let altered = defaults.altered_broker_settings(&stored, &changes, false).expect("taken");
        let expected: BTreeMap<String, String> =
            [("log.retention.ms", "5000"), ("log.roll.ms", "60000")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        assert_eq!(altered, expected);
    }

    #[test]
    fn the_shipped_tuning_profiles_are_valid() {
        for profile in [
            include_str!("../tuning/profiles/throughput.toml"),
            include_str!("../tuning/profiles/latency.toml"),
        ] {
            let mut config = BrokerConfig::default();
            config.apply_toml(profile).unwrap();
            config.validate().unwrap();
        }
    }

    #[test]
    fn core_lists_parse() {
        assert_eq!(parse_cores("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cores("0,2").unwrap(), vec![0, 2]);
        assert_eq!(parse_cores("4-5, 0").unwrap(), vec![0, 4, 5]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("0-18446744073709551615").is_err());
        assert!(parse_cores("5000").is_err());
    }

    #[test]
    fn cluster_settings_parse_strictly_and_are_checked_together_in_any_order() {
        let voters = "1@10.0.0.1:9192, 2@[fd00::2]:9192,3@broker-3:9192";
        let parsed = parse_voters("controller.quorum.voters", voters).expect("voters");
        assert_eq!(parsed[1], QuorumVoter { node: NodeId(2), host: "fd00::2".into(), port: 9192 });
        let refused = [
            "1@10.0.0.1",
            "1@10.0.0.1:0",
            "1@fd00::2:9192",
            "1@[fd00::2:9192",
            "1@[not-v6]:9192",
            "1@0.0.0.0:9192",
            "x@10.0.0.1:9192",
            "1@a:1,1@b:2",
            "",
        ];
        for bad in refused {
            assert!(parse_voters("controller.quorum.voters", bad).is_err(), "{bad:?} taken");
        }
        // Voters first or node id first: the same check once all is read.
        let text_voters_first =
            "\"controller.quorum.voters\" = \"1@10.0.0.1:9192,2@10.0.0.2:9192\"\n\
            \"native.advertised.listener\" = \"10.0.0.1:9192\"\n\
            \"advertised.listeners\" = \"PLAINTEXT://10.0.0.1:9092\"\n\"node.id\" = 1\n";
        let mut config = BrokerConfig::default();
        config.apply_toml(text_voters_first).expect("settings");
        config.validate().expect("a consistent voter");
        assert!(config.in_cluster() && config.is_voter());
        config.set("native.advertised.listener", "10.0.0.9:9192").expect("setting");
        let mismatch = config.validate().unwrap_err().to_string();
        assert!(mismatch.contains("gives node 1 the address 10.0.0.1:9192"), "{mismatch}");
        // In a cluster, wildcard addresses cannot be registered.
        let mut wildcard = BrokerConfig::default();
        wildcard.set("controller.quorum.voters", "1@10.0.0.1:9192").expect("setting");
        assert!(wildcard
            .validate()
            .unwrap_err()
            .to_string()
            .contains("native.advertised.listener"));
        wildcard.set("native.advertised.listener", "10.0.0.1:9192").expect("setting");
        wildcard.set("node.id", "1").expect("setting");
        wildcard.set("advertised.listeners", "PLAINTEXT://0.0.0.0:9092").expect("setting");
        assert!(wildcard.validate().unwrap_err().to_string().contains("advertised.listeners"));
        // What the settings print reads back as they take it.
        let printed = host_port("fd00::2", 9192);
        assert_eq!(parse_host_port("k", &printed, &printed), Ok(("fd00::2".into(), 9192)));
        // Alone, a broker is its own voter whatever its listeners.
        assert!(BrokerConfig::default().validate().is_ok() && BrokerConfig::default().is_voter());
    }
}
