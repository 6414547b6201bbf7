//! The Kafka APIs and versions this broker serves, and the ApiVersions answer that advertises
//! them.
//!
//! Ranges are as wide as the codec decodes and the clients need. Produce and Fetch are
//! advertised from v0 although only v3+ and v4+ (record batches) are decoded: librdkafka before
//! 2.11 enables features by exact old versions (compression needs Produce v0; LZ4 also needs
//! FindCoordinator v0), and every client that sends record batches uses the newer versions.
//! The group APIs start at v0 for the same reason (OffsetCommit and OffsetFetch decode from v2
//! and v1, which every client here uses); JoinGroup stops at v7 and OffsetCommit at v8, before
//! the KIP-848 fields.
//! Metadata goes to v12 (topic ids, and topics asked for by id). Fetch stops at v12: later
//! versions address topics by id, which the fetch path does not resolve yet. ListOffsets goes
//! to v10: the max-timestamp query (v7, KIP-734), the local log start (v8, the log start here)
//! and the latest tiered offset (v9, none here); v10's timeout is for remote reads.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (API, lowest advertised, lowest decoded, highest).
const SUPPORTED: &[(ApiKey, i16, i16, i16)] = &[
    (ApiKey::Produce, 0, 3, 9),
    (ApiKey::Fetch, 0, 4, 12),
    (ApiKey::ListOffsets, 1, 1, 10),
    (ApiKey::Metadata, 0, 0, 12),
    (ApiKey::ApiVersions, 0, 0, 3),
    (ApiKey::CreateTopics, 2, 2, 5),
    (ApiKey::DeleteTopics, 1, 1, 5),
    (ApiKey::CreatePartitions, 0, 0, 3),
    (ApiKey::DescribeConfigs, 1, 1, 4),
    (ApiKey::AlterConfigs, 0, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 1, 4),
    (ApiKey::DescribeProducers, 0, 0, 0),
    (ApiKey::DeleteRecords, 0, 0, 2),
    (ApiKey::InitProducerId, 0, 0, 4),
    (ApiKey::FindCoordinator, 0, 0, 3),
    (ApiKey::JoinGroup, 0, 0, 7),
    (ApiKey::SyncGroup, 0, 0, 5),
    (ApiKey::Heartbeat, 0, 0, 4),
    (ApiKey::LeaveGroup, 0, 0, 4),
    (ApiKey::OffsetCommit, 0, 2, 8),
    (ApiKey::OffsetFetch, 0, 1, 7),
    (ApiKey::ListGroups, 0, 0, 4),
    (ApiKey::DescribeGroups, 0, 0, 5),
    (ApiKey::DeleteGroups, 0, 0, 2),
    (ApiKey::OffsetDelete, 0, 0, 0),
    (ApiKey::DescribeCluster, 0, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 2, 4),
    (ApiKey::ElectLeaders, 0, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0, 0),
];

/// Whether `version` of `api` can be decoded and answered.
pub fn is_served(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(key, _, decoded_from, max)| key == api && (decoded_from..=max).contains(&version))
}

/// The highest ApiVersions version served; a request above it gets the KIP-511 v0 answer.
pub fn api_versions_max() -> i16 {
    SUPPORTED.iter().find(|s| s.0 == ApiKey::ApiVersions).map_or(0, |s| s.3)
}

/// The ApiVersions response body; `error_code` is 35 (UNSUPPORTED_VERSION) for KIP-511.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, _, max)| {
            let mut version = ApiVersion::default();
            version.api_key = key as i16;
            version.min_version = min;
            version.max_version = max;
            version
        })
        .collect();
    response
}

/// The APIs and ranges, for logs and docs: `Produce 0-9, Fetch 4-12, ...`.
pub fn describe() -> String {
    SUPPORTED
        .iter()
        .map(|&(key, min, _, max)| format!("{key:?} {min}-{max}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_version_is_one_the_codec_decodes() {
        for &(key, _, decoded_from, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(codec.min <= decoded_from && max <= codec.max, "{key:?}");
        }
        assert!(is_served(ApiKey::Produce, 7));
        assert!(!is_served(ApiKey::Produce, 2));
        assert!(!is_served(ApiKey::Fetch, 13));
        assert!(!is_served(ApiKey::Fetch, 3));
        assert_eq!(api_versions_max(), 3);
    }
}
