//! A batching producer: records accumulate per partition and go out as one batch when the batch
//! is full or has lingered long enough, with many batches in flight, each to its partition's
//! leader ([`Leaders`]).
//!
//! Keyed records are placed with Kafka's murmur2 partitioner; records without a key go to one
//! partition per batch, rotating between batches (Kafka's sticky partitioner, simplified).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use futures_channel::oneshot;

use crate::client::partitioner::partition_for_key;
use crate::client::{Client, ClientError, Leaders};
use crate::native::messages::Acks;
use crate::record::{BatchBuilder, OwnedRecord};

#[derive(Clone, Copy, Debug)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// A batch is sent once its records reach about this many bytes.
    pub batch_bytes: usize,
    /// A batch that is not full is sent this long after its first record.
    pub linger: Duration,
    /// Batches in flight before `send` waits.
    pub inflight_batches_max: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            inflight_batches_max: 32,
        }
    }
}

/// Where a record landed. `offset` is `None` with acks=0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    pub offset: Option<u64>,
}

/// Resolves when the record's batch is acknowledged (or failed).
pub type Delivery = oneshot::Receiver<Result<Delivered, ClientError>>;

type Waiters = Vec<oneshot::Sender<Result<Delivered, ClientError>>>;

struct OpenBatch {
    builder: BatchBuilder,
    waiters: Waiters,
    /// Bumped each time the batch is sent, so a linger timer does not send a newer batch early.
    generation: u64,
}

#[derive(Default)]
struct State {
    partition_counts: HashMap<String, u32>,
    open: HashMap<(String, u32), OpenBatch>,
    next_sticky: u32,
    generation: u64,
}

struct Inner {
    leaders: Leaders,
    config: ProducerConfig,
    state: RefCell<State>,
    inflight: Cell<usize>,
    settled: Event,
}

#[derive(Clone)]
pub struct Producer {
    inner: Rc<Inner>,
}

impl Producer {
    /// A producer finding the cluster's leaders through `client`'s broker.
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        Self {
            inner: Rc::new(Inner {
                leaders: Leaders::new(client),
                config,
                state: RefCell::new(State::default()),
                inflight: Cell::new(0),
                settled: Event::new(),
            }),
        }
    }

    /// Queues a record, choosing its partition from its key. Waits only when too many batches
    /// are in flight.
    pub async fn send(&self, topic: &str, record: OwnedRecord) -> Result<Delivery, ClientError> {
        let partitions = self.partition_count(topic).await?;
        let partition = match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => self.inner.state.borrow().next_sticky % partitions,
        };
        self.send_to(topic, partition, record).await
    }

    /// Queues a record for a chosen partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        record: OwnedRecord,
    ) -> Result<Delivery, ClientError> {
        // The topic's leaders known and connected before its first batch: batches to one
        // partition then leave in the order they close.
        self.inner.leaders.warm(topic).await?;
        self.wait_for_inflight_below(self.inner.config.inflight_batches_max).await;
        let (waiter, delivery) = oneshot::channel();
        let key = (topic.to_string(), partition);
        let (full, start_linger) = {
            let mut state = self.inner.state.borrow_mut();
            state.generation += 1;
            let generation = state.generation;
            let batch = state.open.entry(key.clone()).or_insert_with(|| OpenBatch {
                builder: BatchBuilder::default(),
                waiters: Vec::new(),
                generation,
            });
            let first = batch.builder.is_empty();
            batch.builder.push(record);
            batch.waiters.push(waiter);
            let full = batch.builder.size_estimate() >= self.inner.config.batch_bytes;
            (full, first.then_some(batch.generation))
        };
        if full {
            self.send_batch(&key);
        } else if let Some(generation) = start_linger {
            let producer = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(producer.inner.config.linger).await;
                let due = producer
                    .inner
                    .state
                    .borrow()
                    .open
                    .get(&key)
                    .is_some_and(|b| b.generation == generation);
                if due {
                    producer.send_batch(&key);
                }
            })
            .detach();
        }
        Ok(delivery)
    }

    /// Sends every open batch and waits until all batches in flight are settled.
    pub async fn flush(&self) {
        let keys: Vec<(String, u32)> = self.inner.state.borrow().open.keys().cloned().collect();
        for key in keys {
            self.send_batch(&key);
        }
        self.wait_for_inflight_below(1).await;
    }

    async fn wait_for_inflight_below(&self, limit: usize) {
        loop {
            let listener = self.inner.settled.listen();
            if self.inner.inflight.get() < limit {
                return;
            }
            listener.await;
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(count) = self.inner.state.borrow().partition_counts.get(topic) {
            return Ok(*count);
        }
        let count = self.inner.leaders.bootstrap().partition_count(topic).await?;
        if count == 0 {
            return Err(ClientError::Protocol(format!("topic {topic} has no partitions")));
        }
        self.inner.state.borrow_mut().partition_counts.insert(topic.to_string(), count);
        Ok(count)
    }

    fn send_batch(&self, key: &(String, u32)) {
        let Some(batch) = self.inner.state.borrow_mut().open.remove(key) else {
            return;
        };
        {
            let mut state = self.inner.state.borrow_mut();
            state.next_sticky = state.next_sticky.wrapping_add(1);
        }
        self.inner.inflight.set(self.inner.inflight.get() + 1);
        let producer = self.clone();
        let (topic, partition) = key.clone();
        glommio::spawn_local(async move {
            let acks = producer.inner.config.acks;
            let (meta, payload) = batch.builder.build();
            let payload = bytes::Bytes::from_owner(payload);
            let send = |client: Client| {
                let (topic, meta, payload) = (topic.clone(), meta, payload.clone());
                async move { client.produce_encoded(&topic, partition, acks, meta, payload).await }
            };
            let result = producer.inner.leaders.with_leader(&topic, partition, send).await;
            for (index, waiter) in batch.waiters.into_iter().enumerate() {
                let delivered = result
                    .clone()
                    .map(|base| Delivered { partition, offset: base.map(|b| b + index as u64) });
                let _ = waiter.send(delivered);
            }
            producer.inner.inflight.set(producer.inner.inflight.get() - 1);
            producer.inner.settled.notify(usize::MAX);
        })
        .detach();
    }
}
