//! Reading Kafka's consumer protocol: the subscription a member joins with and the assignment
//! bytes a group leader hands each member. The broker treats them as opaque when coordinating;
//! only descriptions and OffsetDelete's check decode them.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::Decodable;

/// (topic, partitions) of a consumer-protocol assignment; empty for bytes of another protocol.
pub fn assigned_partitions(assignment: &Bytes) -> Vec<(String, Vec<i32>)> {
    let mut buf = assignment.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    // Newer versions only add fields; read them as the newest this codec knows.
    let version = version.clamp(0, 3);
    ConsumerProtocolAssignment::decode(&mut buf, version)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|t| (t.topic.0.to_string(), t.partitions))
                .collect()
        })
        .unwrap_or_default()
}

/// The topics a consumer-protocol subscription names; `None` for bytes that are not one.
pub fn subscribed_topics(subscription: &Bytes) -> Option<Vec<String>> {
    let mut buf = subscription.clone();
    if buf.remaining() < 2 {
        return None;
    }
    // Newer versions only add fields; read them as the newest this codec knows.
    let version = buf.get_i16().clamp(0, 3);
    let decoded = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(decoded.topics.into_iter().map(|t| t.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn decodes_an_assignment_and_shrugs_at_garbage() {
        let mut assignment = ConsumerProtocolAssignment::default();
        let mut topic = TopicPartition::default();
        topic.topic = kafka_protocol::messages::TopicName("orders".into());
        topic.partitions = vec![0, 3];
        assignment.assigned_partitions = vec![topic];
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&0i16.to_be_bytes());
        assignment.encode(&mut bytes, 0).unwrap();
        assert_eq!(assigned_partitions(&bytes.freeze()), vec![("orders".to_string(), vec![0, 3])]);
        assert!(assigned_partitions(&Bytes::from_static(b"\x00\x00\xff")).is_empty());
        assert!(assigned_partitions(&Bytes::new()).is_empty());
    }

    #[test]
    fn decodes_a_subscription_and_shrugs_at_garbage() {
        let mut subscription = ConsumerProtocolSubscription::default();
        subscription.topics = vec!["orders".into(), "payments".into()];
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&1i16.to_be_bytes());
        subscription.encode(&mut bytes, 1).unwrap();
        let topics = subscribed_topics(&bytes.freeze());
        assert_eq!(topics, Some(vec!["orders".to_string(), "payments".to_string()]));
        assert_eq!(subscribed_topics(&Bytes::from_static(b"\x00\x01\xff")), None);
        assert_eq!(subscribed_topics(&Bytes::new()), None);
    }
}
