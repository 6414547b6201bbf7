//! The error codes of each Kafka response, counted where Kafka's own `errorCounts()` counts them
//! (top level, per topic, per partition, per group), for the errors-by-API metric.
//!
//! Kafka's counting is followed even where it skips a code the response carries (Metadata's
//! top-level code, a CreateTopics topic's config code), so the metric reads like Kafka's.

use std::iter::once;

use kafka_protocol::messages::{
    AlterConfigsResponse, AlterPartitionReassignmentsResponse, ApiVersionsResponse,
    CreatePartitionsResponse, CreateTopicsResponse, DeleteGroupsResponse, DeleteRecordsResponse,
    DeleteTopicsResponse, DescribeClusterResponse, DescribeConfigsResponse, DescribeGroupsResponse,
    DescribeLogDirsResponse, DescribeProducersResponse, ElectLeadersResponse, FetchResponse,
    FindCoordinatorResponse, HeartbeatResponse, IncrementalAlterConfigsResponse,
    InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse,
    ListOffsetsResponse, ListPartitionReassignmentsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse,
    ProduceResponse, SyncGroupResponse,
};
use kafka_protocol::ResponseError;

/// The error codes a response carries, one call per place a code other than NONE appears.
pub trait ErrorCodes {
    fn error_codes(&self, each: &mut dyn FnMut(i16));
}

/// Passes on the codes that are errors: successes are counted as requests, not here.
fn report(each: &mut dyn FnMut(i16), codes: impl IntoIterator<Item = i16>) {
    for code in codes {
        if code != 0 {
            each(code);
        }
    }
}

/// Responses with a single code for the whole request.
macro_rules! top_level {
    ($($response:ty),* $(,)?) => {$(
        impl ErrorCodes for $response {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                report(each, [self.error_code]);
            }
        }
    )*};
}

top_level!(
    ApiVersionsResponse,
    DescribeClusterResponse,
    HeartbeatResponse,
    InitProducerIdResponse,
    JoinGroupResponse,
    ListGroupsResponse,
    ListPartitionReassignmentsResponse,
    SyncGroupResponse,
);

impl ErrorCodes for MetadataResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        for topic in &self.topics {
            report(each, topic.partitions.iter().map(|p| p.error_code));
            report(each, [topic.error_code]);
        }
    }
}

impl ErrorCodes for ProduceResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.responses.iter().flat_map(|t| &t.partition_responses);
        report(each, partitions.map(|p| p.error_code));
    }
}

impl ErrorCodes for FetchResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.responses.iter().flat_map(|t| &t.partitions);
        report(each, once(self.error_code).chain(partitions.map(|p| p.error_code)));
    }
}

impl ErrorCodes for ListOffsetsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, partitions.map(|p| p.error_code));
    }
}

impl ErrorCodes for CreateTopicsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.topics.iter().map(|t| t.error_code));
    }
}

impl ErrorCodes for DeleteTopicsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.responses.iter().map(|t| t.error_code));
    }
}

impl ErrorCodes for CreatePartitionsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.results.iter().map(|t| t.error_code));
    }
}

impl ErrorCodes for ElectLeadersResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.replica_election_results.iter().flat_map(|t| &t.partition_result);
        report(each, once(self.error_code).chain(partitions.map(|p| p.error_code)));
    }
}

impl ErrorCodes for AlterPartitionReassignmentsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.responses.iter().flat_map(|t| &t.partitions);
        report(each, once(self.error_code).chain(partitions.map(|p| p.error_code)));
    }
}

impl ErrorCodes for OffsetForLeaderEpochResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, partitions.map(|p| p.error_code));
    }
}

impl ErrorCodes for DescribeConfigsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.results.iter().map(|r| r.error_code));
    }
}

impl ErrorCodes for IncrementalAlterConfigsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.responses.iter().map(|r| r.error_code));
    }
}

impl ErrorCodes for AlterConfigsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.responses.iter().map(|r| r.error_code));
    }
}

/// From v4 a response has one coordinator per key asked for, and the top-level code is unused.
impl ErrorCodes for FindCoordinatorResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        if self.coordinators.is_empty() {
            report(each, [self.error_code]);
        } else {
            report(each, self.coordinators.iter().map(|c| c.error_code));
        }
    }
}

impl ErrorCodes for LeaveGroupResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, once(self.error_code).chain(self.members.iter().map(|m| m.error_code)));
    }
}

impl ErrorCodes for OffsetCommitResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, partitions.map(|p| p.error_code));
    }
}

/// From v8 a response answers per group, and the top-level code and topics are unused.
impl ErrorCodes for OffsetFetchResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        if self.groups.is_empty() {
            let partitions = self.topics.iter().flat_map(|t| &t.partitions);
            report(each, once(self.error_code).chain(partitions.map(|p| p.error_code)));
        } else {
            report(each, self.groups.iter().map(|g| g.error_code));
            let topics = self.groups.iter().flat_map(|g| &g.topics);
            report(each, topics.flat_map(|t| &t.partitions).map(|p| p.error_code));
        }
    }
}

impl ErrorCodes for DescribeGroupsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.groups.iter().map(|g| g.error_code));
    }
}

impl ErrorCodes for DeleteGroupsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, self.results.iter().map(|g| g.error_code));
    }
}

impl ErrorCodes for DescribeLogDirsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        report(each, once(self.error_code).chain(self.results.iter().map(|d| d.error_code)));
    }
}

impl ErrorCodes for DeleteRecordsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, partitions.map(|p| p.error_code));
    }
}

impl ErrorCodes for DescribeProducersResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, partitions.map(|p| p.error_code));
    }
}

impl ErrorCodes for OffsetDeleteResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        let partitions = self.topics.iter().flat_map(|t| &t.partitions);
        report(each, once(self.error_code).chain(partitions.map(|p| p.error_code)));
    }
}

/// Kafka's name of an error code (`NOT_LEADER_OR_FOLLOWER`), or the number for one Kafka does not
/// define.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => code.to_string(),
        // The crate has no public name accessor; the derived Debug is the variant's name, Kafka's
        // name in CamelCase.
        Some(error) => {
            let mut name = String::new();
            for (i, c) in format!("{error:?}").char_indices() {
                if i > 0 && c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    fn codes(response: &dyn ErrorCodes) -> Vec<i16> {
        let mut codes = Vec::new();
        response.error_codes(&mut |code| codes.push(code));
        codes
    }

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "9999");
    }

    #[test]
    fn codes_are_collected_where_kafka_counts_them() {
        let mut produce = ProduceResponse::default();
        let mut topic = TopicProduceResponse::default();
        for (index, error_code) in [(0, 6), (1, 0)] {
            let mut partition = PartitionProduceResponse::default();
            partition.index = index;
            partition.error_code = error_code;
            topic.partition_responses.push(partition);
        }
        produce.responses.push(topic);
        assert_eq!(codes(&produce), [6]);

        let mut fetch = FetchResponse::default();
        fetch.error_code = 71;
        let mut partition = PartitionData::default();
        partition.error_code = 1;
        let mut topic = FetchableTopicResponse::default();
        topic.partitions.push(partition);
        fetch.responses.push(topic);
        assert_eq!(codes(&fetch), [71, 1]);
    }
}
