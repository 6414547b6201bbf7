//! Produce a few keyed records and read them back with the Rust client library.
//!
//! Start a broker (`cargo run --release -- serve`), then: `cargo run --example produce_and_consume`
//! (or pass the broker's address as the first argument).

use spate::client::{Client, Producer, ProducerConfig};
use spate::native::messages::{Acks, ErrorCode, OFFSET_EARLIEST};
use spate::record::OwnedRecord;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(spate::client::default_address);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make()?;
    executor.run(async move {
        let client = Client::connect(&address).await?;
        match client.create_topic("example", 3, vec![]).await {
            Err(e) if e.code() != Some(ErrorCode::TopicAlreadyExists) => return Err(e.into()),
            _ => {}
        }

        // The producer batches per partition and places keyed records with Kafka's murmur2.
        let producer =
            Producer::new(client.clone(), ProducerConfig { acks: Acks::All, ..Default::default() });
        let mut deliveries = Vec::new();
        for (key, value) in [("alice", "pizza"), ("bob", "salad"), ("alice", "soup")] {
            let record = OwnedRecord {
                key: Some(key.as_bytes().to_vec()),
                value: Some(value.as_bytes().to_vec()),
                headers: vec![(b"source".to_vec(), b"example".to_vec())],
                timestamp: spate::now_ms(),
            };
            deliveries.push(producer.send("example", record).await?);
        }
        producer.flush().await;
        for delivery in deliveries {
            let delivered = delivery.await??;
            println!(
                "stored in partition {} at offset {:?}",
                delivered.partition, delivered.offset
            );
        }

        // Read every partition from its start; records are read in place from the fetched bytes.
        for partition in 0..3 {
            let start = client.list_offset("example", partition, OFFSET_EARLIEST).await? as u64;
            let fetched = client.fetch("example", partition, start, 1 << 20, 0).await?;
            for batch in fetched.batches()? {
                for record in batch.records() {
                    println!(
                        "partition {partition} offset {}: {} = {}",
                        record.offset,
                        String::from_utf8_lossy(record.key().unwrap_or_default()),
                        String::from_utf8_lossy(record.value().unwrap_or_default()),
                    );
                }
            }
        }
        Ok(())
    })
}
