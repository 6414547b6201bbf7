//! Settings as Kafka's admin clients read and change them: DescribeConfigs, each value with its
//! source and synonyms (KIP-226), and IncrementalAlterConfigs (KIP-339) and AlterConfigs for
//! topics and for the dynamic broker settings (the defaults of topic settings, cluster-wide or
//! for one broker), which go through the active controller and apply on every broker without a
//! restart. The other broker settings are static: read at start from the file and flags,
//! described read-only, and refused with the reason when a client tries to change them.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    alter_configs_response, AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::metadata::MetadataImage;
use crate::config::{
    broker_key_of, canonical_topic_key, check_dynamic, check_level, dynamic_broker_setting,
    fixed_topic_setting, host_port, BrokerConfig, ConfigChange, TopicConfig,
};
use crate::error::{BrokerError, ErrorKind};
use crate::kafka::codec;
use crate::kafka::handlers::has_field;
use crate::shard::catalog::TopicInfo;
use crate::shard::Shard;
use crate::types::NodeId;

/// Resource types (Kafka's `ConfigResource.Type`).
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// KIP-848's group resource (Kafka 4.0's admin clients describe it).
const RESOURCE_GROUP: i8 = 32;

/// Kafka 4.0's group settings, at Kafka's defaults: they govern KIP-848 consumer groups, which
/// Spate does not run; its classic groups take each member's own session timeout (within
/// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
const GROUP_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "consumer.session.timeout.ms",
        "45000",
        "For KIP-848 consumer groups, not run here: classic groups take each member's own.",
    ),
    (
        "consumer.heartbeat.interval.ms",
        "5000",
        "For KIP-848 consumer groups, not run here: classic members heartbeat as they choose.",
    ),
];

/// Where a value comes from (Kafka's `DescribeConfigsResponse.ConfigSource`).
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_DYNAMIC_BROKER_CONFIG: i8 = 2;
const SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;

/// Value types (Kafka's `ConfigDef.Type`, as DescribeConfigs v3 numbers them).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Every topic setting: its type and what it does here, for DescribeConfigs v3.
const TOPIC_SETTINGS: &[(&str, i8, &str)] = &[
    (
        "retention.ms",
        TYPE_LONG,
        "Segments whose newest record is older than this are deleted; -1 keeps them.",
    ),
    (
        "retention.bytes",
        TYPE_LONG,
        "Each partition is trimmed, by whole segments, to this size; -1 for no limit.",
    ),
    (
        "segment.bytes",
        TYPE_INT,
        "A segment rolls when the next batch would take it past this size.",
    ),
    ("segment.ms", TYPE_LONG, "A segment rolls when its first record is this old."),
    ("max.message.bytes", TYPE_INT, "The largest batch a producer may send."),
    (
        "cleanup.policy",
        TYPE_LIST,
        "delete: retention deletes old segments (compaction is not supported yet).",
    ),
    (
        "delete.retention.ms",
        TYPE_LONG,
        "How long a compacted topic keeps delete markers; acts only with compaction.",
    ),
    ("min.insync.replicas", TYPE_INT, "The in-sync replicas an acks=all produce needs."),
    (
        "unclean.leader.election.enable",
        TYPE_BOOLEAN,
        "Whether an out-of-sync replica may lead when no in-sync one is live.",
    ),
    (
        "compression.type",
        TYPE_STRING,
        "The codec batches are stored in: producer keeps each as its producer compressed it; \
         uncompressed, gzip, snappy, lz4 or zstd recompresses the others.",
    ),
    ("compression.gzip.level", TYPE_INT, "The gzip level batches are recompressed at."),
    ("compression.lz4.level", TYPE_INT, "The LZ4 level batches are recompressed at."),
    ("compression.zstd.level", TYPE_INT, "The zstd level batches are recompressed at."),
    (
        "message.timestamp.type",
        TYPE_STRING,
        "CreateTime: records keep their producers' timestamps; LogAppendTime: each batch takes \
         the broker's clock when it is appended.",
    ),
    (
        "message.timestamp.before.max.ms",
        TYPE_LONG,
        "With CreateTime, a batch with a record older than this behind the broker's clock is \
         refused.",
    ),
    (
        "message.timestamp.after.max.ms",
        TYPE_LONG,
        "With CreateTime, a batch with a record this far ahead of the broker's clock is \
         refused.",
    ),
    (
        "message.timestamp.difference.max.ms",
        TYPE_LONG,
        "Deprecated (KIP-937): bounds a record's timestamp both ways, as the two above.",
    ),
];

/// A setting as DescribeConfigs answers it.
pub(super) struct Described {
    pub(super) name: String,
    pub(super) value: String,
    pub(super) source: i8,
    read_only: bool,
    config_type: i8,
    documentation: Option<&'static str>,
    /// Where the value could come from, the one in force first (KIP-226).
    synonyms: Vec<(String, String, i8)>,
}

pub fn describe_configs(
    shard: &Shard,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    let synonyms = has_field(version, 1) && request.include_synonyms;
    let documentation = has_field(version, 3) && request.include_documentation;
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        let name = resource.resource_name.as_str();
        let described = match resource.resource_type {
            RESOURCE_TOPIC => match shard.topic(name) {
                Some(info) => Ok(describe_topic(shard, &info)),
                None => {
                    Err((ResponseError::UnknownTopicOrPartition.code(), format!("no topic {name}")))
                }
            },
            RESOURCE_BROKER => match broker_resource(shard, name) {
                Ok(None) => Ok(describe_cluster_defaults(&shard.metadata_image())),
                Ok(Some(_)) => Ok(describe_broker(shard)),
                Err(refused) => Err(refused),
            },
            RESOURCE_GROUP if name.is_empty() => {
                Err((ResponseError::InvalidRequest.code(), "Group name must not be empty".into()))
            }
            RESOURCE_GROUP => Ok(describe_group()),
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!(
                    "resource type {other} is not described (topics 2, brokers 4 and groups 32 \
                     are)"
                ),
            )),
        };
        match described {
            Ok(settings) => {
                let wanted = |name: &str| {
                    (resource.configuration_keys.as_ref())
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                };
                for setting in settings.into_iter().filter(|s| wanted(&s.name)) {
                    let mut config = DescribeConfigsResourceResult::default();
                    config.name = StrBytes::from_string(setting.name);
                    config.value = Some(StrBytes::from_string(setting.value));
                    config.config_source = setting.source;
                    config.read_only = setting.read_only;
                    if synonyms {
                        config.synonyms = (setting.synonyms.into_iter())
                            .map(|(name, value, source)| {
                                let mut synonym = DescribeConfigsSynonym::default();
                                synonym.name = StrBytes::from_string(name);
                                synonym.value = Some(StrBytes::from_string(value));
                                synonym.source = source;
                                synonym
                            })
                            .collect();
                    }
                    if has_field(version, 3) {
                        config.config_type = setting.config_type;
                    }
                    if documentation {
                        config.documentation = setting.documentation.map(StrBytes::from_static_str);
                    }
                    result.configs.push(config);
                }
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        result.resource_name = resource.resource_name;
        response.results.push(result);
    }
    response
}

/// The broker a broker resource names: this one (`Some`), or the cluster-wide defaults for
/// `""` (`None`); another broker's or no number is refused with Kafka's words.
fn broker_resource(shard: &Shard, name: &str) -> Result<Option<NodeId>, (i16, String)> {
    let me = shard.config.node_id;
    match name.parse::<i32>() {
        _ if name.is_empty() => Ok(None),
        Ok(id) if id == me.0 => Ok(Some(me)),
        Ok(id) => Err(invalid_request(format!(
            "Unexpected broker id, expected {me} or empty string, but received {id}"
        ))),
        Err(_) => Err(invalid_request(format!("Node id must be an integer, but it is: {name}"))),
    }
}

/// The dynamic broker settings that reach this broker, the one in force first: its own
/// (DYNAMIC_BROKER_CONFIG), then the cluster-wide ones (DYNAMIC_DEFAULT_BROKER_CONFIG).
fn dynamic_levels<'a>(
    shard: &Shard,
    image: &'a MetadataImage,
) -> [(i8, Option<&'a BTreeMap<String, String>>); 2] {
    let me = Some(shard.config.node_id);
    [
        (SOURCE_DYNAMIC_BROKER_CONFIG, image.broker_configs.get(&me)),
        (SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG, image.broker_configs.get(&None)),
    ]
}

/// A topic's settings: its own overrides, else the broker's defaults (dynamic, as set in its
/// file or flags, else Spate's), each with the chain it was chosen from.
pub(super) fn describe_topic(shard: &Shard, info: &TopicInfo) -> Vec<Described> {
    let broker = &shard.config;
    let image = shard.metadata_image();
    let dynamic = dynamic_levels(shard, &image);
    // Each level's values once, not per setting.
    let built_in: BTreeMap<String, String> = TopicConfig::default().entries().into_iter().collect();
    let broker_defaults: BTreeMap<String, String> =
        broker.topic_defaults.entries().into_iter().collect();
    (info.config.entries().into_iter())
        .map(|(name, value)| {
            let mut synonyms = Vec::new();
            if let Some(set) = info.overrides.get(&name) {
                synonyms.push((name.clone(), set.clone(), SOURCE_TOPIC_CONFIG));
            }
            if let Some(broker_key) = broker_key_of(&name) {
                // Every level, the one in force first: dynamic ones, the broker's own, Spate's.
                for (source, settings) in dynamic {
                    if let Some(set) = settings.and_then(|settings| settings.get(broker_key)) {
                        synonyms.push((broker_key.to_string(), set.clone(), source));
                    }
                }
                if broker.explicit.contains(broker_key) {
                    let value = broker_defaults.get(&name).cloned().unwrap_or_default();
                    synonyms.push((broker_key.to_string(), value, SOURCE_STATIC_BROKER_CONFIG));
                }
                let value = built_in.get(&name).cloned().unwrap_or_default();
                synonyms.push((broker_key.to_string(), value, SOURCE_DEFAULT_CONFIG));
            }
            let source = synonyms.first().map_or(SOURCE_DEFAULT_CONFIG, |s| s.2);
            let (config_type, documentation) = topic_setting(&name);
            Described {
                name,
                value,
                source,
                read_only: false,
                config_type,
                documentation,
                synonyms,
            }
        })
        .collect()
}

/// A topic setting's type and documentation.
/// The settings Spate takes at one value are documented by why.
fn topic_setting(name: &str) -> (i8, Option<&'static str>) {
    match TOPIC_SETTINGS.iter().find(|(n, _, _)| *n == name) {
        Some((_, config_type, doc)) => (*config_type, Some(doc)),
        None => (fixed_setting_type(name), fixed_topic_setting(name)),
    }
}

/// The types Kafka gives the settings Spate takes at one value.
fn fixed_setting_type(name: &str) -> i8 {
    match name {
        "message.downconversion.enable"
        | "remote.storage.enable"
        | "remote.log.copy.disable"
        | "remote.log.delete.on.disable" => TYPE_BOOLEAN,
        "leader.replication.throttled.replicas" | "follower.replication.throttled.replicas" => {
            TYPE_LIST
        }
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        "message.format.version" => TYPE_STRING,
        _ => TYPE_LONG,
    }
}

/// A group's settings: Kafka's defaults, read-only (see [`GROUP_SETTINGS`]).
fn describe_group() -> Vec<Described> {
    (GROUP_SETTINGS.iter())
        .map(|(name, value, documentation)| Described {
            name: name.to_string(),
            value: value.to_string(),
            source: SOURCE_DEFAULT_CONFIG,
            read_only: true,
            config_type: TYPE_INT,
            documentation: Some(documentation),
            synonyms: vec![(name.to_string(), value.to_string(), SOURCE_DEFAULT_CONFIG)],
        })
        .collect()
}

/// The broker's settings as it runs with them, each with the chain it was chosen from: the
/// dynamic ones (this broker's own, then the cluster-wide ones), its file or flags, Spate's
/// defaults. Read-only but for the dynamic ones.
fn describe_broker(shard: &Shard) -> Vec<Described> {
    let config = &shard.config;
    let image = shard.metadata_image();
    let dynamic = dynamic_levels(shard, &image);
    let defaults = broker_entries(&BrokerConfig::default(), &TopicConfig::default());
    let statics = broker_entries(config, &config.topic_defaults);
    let effective = BrokerConfig { max_connections: shard.max_connections(), ..(**config).clone() };
    (broker_entries(&effective, &shard.topic_defaults()).into_iter())
        .map(|(name, value, config_type)| {
            let mut synonyms = Vec::new();
            for (source, settings) in dynamic {
                if let Some(set) = settings.and_then(|settings| settings.get(&name)) {
                    synonyms.push((name.clone(), set.clone(), source));
                }
            }
            let level = |entries: &[(String, String, i8)]| {
                entries.iter().find(|(n, _, _)| *n == name).map(|(_, value, _)| value.clone())
            };
            if let Some(value) = level(&statics).filter(|_| config.explicit.contains(&name)) {
                synonyms.push((name.clone(), value, SOURCE_STATIC_BROKER_CONFIG));
            }
            if let Some(default) = level(&defaults) {
                synonyms.push((name.clone(), default, SOURCE_DEFAULT_CONFIG));
            }
            let source = synonyms.first().map_or(SOURCE_DEFAULT_CONFIG, |s| s.2);
            let read_only = dynamic_broker_setting(&name).is_none();
            let documentation = None;
            Described { name, value, source, read_only, config_type, documentation, synonyms }
        })
        .collect()
}

/// The cluster-wide dynamic settings (the broker resource `""`): only those set, as Kafka
/// describes them.
fn describe_cluster_defaults(image: &MetadataImage) -> Vec<Described> {
    let source = SOURCE_DYNAMIC_DEFAULT_BROKER_CONFIG;
    let settings = image.broker_configs.get(&None).into_iter().flatten();
    let types = broker_entries(&BrokerConfig::default(), &TopicConfig::default());
    (settings.map(|(name, value)| {
        let typed = types.iter().find(|(n, _, _)| n == name);
        let config_type = typed.map_or(TYPE_STRING, |(_, _, config_type)| *config_type);
        let synonyms = vec![(name.clone(), value.clone(), source)];
        Described {
            name: name.clone(),
            value: value.clone(),
            source,
            read_only: false,
            config_type,
            documentation: None,
            synonyms,
        }
    }))
    .collect()
}

/// The broker's settings, with `topic_defaults` as its topic defaults: name, value, type.
fn broker_entries(
    config: &BrokerConfig,
    topic_defaults: &TopicConfig,
) -> Vec<(String, String, i8)> {
    let mut entries: Vec<(String, String, i8)> = (topic_defaults.entries().into_iter())
        .filter_map(|(topic_key, value)| {
            let broker_key = broker_key_of(&topic_key)?;
            Some((broker_key.to_string(), value, topic_setting(&topic_key).0))
        })
        .collect();
    let mut add = |name: &str, value: String, config_type: i8| {
        entries.push((name.to_string(), value, config_type));
    };
    add("num.partitions", config.num_partitions.to_string(), TYPE_INT);
    add("default.replication.factor", config.default_replication_factor.to_string(), TYPE_INT);
    let offsets_replication = config.offsets_topic_replication_factor.to_string();
    add("offsets.topic.replication.factor", offsets_replication, TYPE_INT);
    add("max.broker.partitions", config.max_broker_partitions.to_string(), TYPE_INT);
    add("max.connections", config.max_connections.to_string(), TYPE_INT);
    add("auto.create.topics.enable", config.auto_create_topics.to_string(), TYPE_BOOLEAN);
    add("auto.leader.rebalance.enable", config.auto_leader_rebalance.to_string(), TYPE_BOOLEAN);
    let interval = config.leader_imbalance_check_interval_secs.to_string();
    add("leader.imbalance.check.interval.seconds", interval, TYPE_LONG);
    let imbalance = config.leader_imbalance_per_broker_percentage.to_string();
    add("leader.imbalance.per.broker.percentage", imbalance, TYPE_INT);
    add("socket.request.max.bytes", config.socket_request_max_bytes.to_string(), TYPE_INT);
    add("node.id", config.node_id.to_string(), TYPE_INT);
    // The cluster's settings as this broker runs with them (the voters empty for a cluster of
    // one, as Kafka shows an unset list).
    let voters: Vec<String> = (config.quorum_voters.iter())
        .map(|v| format!("{}@{}", v.node, host_port(&v.host, v.port)))
        .collect();
    add("controller.quorum.voters", voters.join(","), TYPE_LIST);
    let (native, kafka) = (config.native_endpoint(), config.kafka_endpoint());
    add("native.advertised.listener", host_port(&native.0, native.1), TYPE_STRING);
    let advertised = format!("PLAINTEXT://{}", host_port(&kafka.0, kafka.1));
    add("advertised.listeners", advertised, TYPE_LIST);
    add("broker.rack", config.rack.clone().unwrap_or_default(), TYPE_STRING);
    add("broker.session.timeout.ms", config.broker_session_timeout_ms.to_string(), TYPE_INT);
    let heartbeat = config.broker_heartbeat_interval_ms.to_string();
    add("broker.heartbeat.interval.ms", heartbeat, TYPE_INT);
    for (name, value, config_type) in [
        ("replica.lag.time.max.ms", config.replica_lag_time_max_ms, TYPE_LONG),
        ("replica.fetch.wait.max.ms", config.replica_fetch_wait_max_ms, TYPE_INT),
        ("replica.fetch.max.bytes", u64::from(config.replica_fetch_max_bytes), TYPE_INT),
        (
            "replica.fetch.response.max.bytes",
            u64::from(config.replica_fetch_response_max_bytes),
            TYPE_INT,
        ),
    ] {
        add(name, value.to_string(), config_type);
    }
    entries
}

/// A resource's outcome: done, or Kafka's error code and why.
type Outcome = Result<(), (i16, String)>;

/// IncrementalAlterConfigs (KIP-339): each topic's changes applied to its overrides as they
/// are, through the controller.
pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let asked = (request.resources.into_iter())
        .map(|resource| {
            let changes = (resource.configs.iter())
                .map(|config| {
                    let key = config.name.to_string();
                    let value = config.value.as_ref().map(|v| v.to_string());
                    match (config.config_operation, value) {
                        (OP_DELETE, _) => Ok(ConfigChange::Delete { key }),
                        (OP_SET, Some(value)) => Ok(ConfigChange::Set { key, value }),
                        (OP_APPEND, Some(value)) => Ok(ConfigChange::Append { key, value }),
                        (OP_SUBTRACT, Some(value)) => Ok(ConfigChange::Subtract { key, value }),
                        (OP_SET | OP_APPEND | OP_SUBTRACT, None) => {
                            Err(invalid_request(format!("{key}: a null value")))
                        }
                        (other, _) => {
                            Err(invalid_request(format!("{key}: unknown operation {other}")))
                        }
                    }
                })
                .collect();
            (resource.resource_type, resource.resource_name, changes)
        })
        .collect();
    let mut response = IncrementalAlterConfigsResponse::default();
    for (resource_type, resource_name, outcome) in
        alter_each(shard, asked, false, request.validate_only).await
    {
        let mut result = AlterConfigsResourceResponse::default();
        (result.error_code, result.error_message) = error_fields(outcome);
        (result.resource_type, result.resource_name) = (resource_type, resource_name);
        response.responses.push(result);
    }
    response
}

/// AlterConfigs, the older form: each topic's settings given replace all its overrides.
pub async fn alter_configs(
    shard: &Rc<Shard>,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let asked = (request.resources.into_iter())
        .map(|resource| {
            let changes = (resource.configs.iter())
                .map(|config| {
                    let key = config.name.to_string();
                    match config.value.as_ref() {
                        Some(value) => Ok(ConfigChange::Set { key, value: value.to_string() }),
                        None => Err(invalid_request(format!("{key}: a null value"))),
                    }
                })
                .collect();
            (resource.resource_type, resource.resource_name, changes)
        })
        .collect();
    let mut response = AlterConfigsResponse::default();
    for (resource_type, resource_name, outcome) in
        alter_each(shard, asked, true, request.validate_only).await
    {
        let mut result = alter_configs_response::AlterConfigsResourceResponse::default();
        (result.error_code, result.error_message) = error_fields(outcome);
        (result.resource_type, result.resource_name) = (resource_type, resource_name);
        response.responses.push(result);
    }
    response
}

/// One resource of an alter request: its type, its name, and its changes as read (or why they
/// could not be).
type Asked = (i8, StrBytes, Result<Vec<ConfigChange>, (i16, String)>);

/// Each resource's changes made in turn, with its outcome; a resource named twice is refused at
/// each mention, as Kafka does.
async fn alter_each(
    shard: &Rc<Shard>,
    asked: Vec<Asked>,
    replace: bool,
    validate_only: bool,
) -> Vec<(i8, StrBytes, Outcome)> {
    let mut seen = BTreeSet::new();
    let repeated: BTreeSet<(i8, String)> = (asked.iter())
        .map(|(resource_type, name, _)| (*resource_type, name.to_string()))
        .filter(|key| !seen.insert(key.clone()))
        .collect();
    let mut outcomes = Vec::with_capacity(asked.len());
    for (resource_type, name, changes) in asked {
        let outcome = match changes {
            _ if repeated.contains(&(resource_type, name.to_string())) => {
                Err(invalid_request("the resource is named twice".into()))
            }
            Ok(changes) => {
                alter(shard, resource_type, name.as_str(), changes, replace, validate_only).await
            }
            Err(refused) => Err(refused),
        };
        outcomes.push((resource_type, name, outcome));
    }
    outcomes
}

/// An outcome as a response's error code and message.
fn error_fields(outcome: Outcome) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((code, message)) => (code, Some(StrBytes::from_string(message))),
    }
}

/// One resource's changes.
async fn alter(
    shard: &Rc<Shard>,
    resource_type: i8,
    name: &str,
    changes: Vec<ConfigChange>,
    replace: bool,
    validate_only: bool,
) -> Outcome {
    // Kafka refuses a request naming a setting twice; two spellings of a topic's one count as
    // one (a broker's settings have one spelling each).
    let mut keys = BTreeSet::new();
    let canonical = |key| match resource_type {
        RESOURCE_TOPIC => canonical_topic_key(key),
        _ => key,
    };
    let named = changes.iter().map(|change| canonical(change.key()));
    if let Some(twice) = named.clone().find(|key| !keys.insert(*key)) {
        return Err(invalid_request(format!("{twice} is changed twice")));
    }
    match resource_type {
        RESOURCE_TOPIC => {
            let altered = shard.alter_topic_config(name, changes, replace, validate_only).await;
            altered.map_err(|e: BrokerError| (codec::error_code(e.kind), e.message))
        }
        RESOURCE_BROKER => {
            let node = broker_resource(shard, name)?;
            // As Kafka answers: a setting that is not dynamic gets INVALID_REQUEST from the
            // broker reached, one that is cluster-wide only INVALID_CONFIG from the controller.
            let current = shard.metadata_image().broker_configs.get(&node).cloned();
            // A stored setting this build does not know may still be deleted.
            let stored = |key: &str| current.as_ref().is_some_and(|c| c.contains_key(key));
            let named = changes.iter().map(ConfigChange::key).filter(|key| !stored(key));
            check_dynamic(named).map_err(|refused| invalid_request(refused.0))?;
            let keys = changes.iter().map(ConfigChange::key);
            check_level(keys, node.is_some()).map_err(|refused| invalid_config(refused.0))?;
            let altered = shard.alter_broker_config(node, changes, replace, validate_only).await;
            // Kafka's receiving broker answers a value it refuses INVALID_REQUEST too
            // (KAFKA-13609 keeps it so for compatibility).
            altered.map_err(|e: BrokerError| match e.kind {
                ErrorKind::InvalidConfig => invalid_request(e.message),
                kind => (codec::error_code(kind), e.message),
            })
        }
        RESOURCE_GROUP => Err(invalid_request(
            "group settings govern KIP-848 consumer groups, which Spate does not run; its \
             classic groups take their members' own timeouts"
                .into(),
        )),
        other => Err(invalid_request(format!("resource type {other} has no settings to change"))),
    }
}

fn invalid_request(why: String) -> (i16, String) {
    (ResponseError::InvalidRequest.code(), why)
}

fn invalid_config(why: String) -> (i16, String) {
    (ResponseError::InvalidConfig.code(), why)
}
