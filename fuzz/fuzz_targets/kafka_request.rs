//! A Kafka request frame as the Kafka server reads it: prefix, API and version check, the
//! codec's decode, then what a produce does with each partition's records (batch validation)
//! and what a cross-protocol read would do with a stored batch (decompress and walk records).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spate::record::kafka_batch::validate_produced;
use spate::kafka::codec::{decode_request, Request, RequestPrefix};
use spate::record::convert::for_each_record;
use spate::kafka::versions::is_served;

fuzz_target!(|data: &[u8]| {
    let Some(prefix) = RequestPrefix::read(data) else { return };
    let Ok(api) = kafka_protocol::messages::ApiKey::try_from(prefix.api_key) else { return };
    if !is_served(api, prefix.api_version) {
        return;
    }
    let Ok(request) = decode_request(api, Bytes::copy_from_slice(data)) else { return };
    if let Request::Produce(produce) = request.body {
        for topic in produce.topic_data {
            for partition in topic.partition_data {
                let records = partition.records.unwrap_or_default();
                if validate_produced(&records, 1 << 20).is_ok() {
                    let _ = for_each_record(&records, |_| {});
                }
            }
        }
    }
});
