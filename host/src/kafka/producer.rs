//! The producer settings the pipeline relies on, and the delivery counting
//! of the transactions-producer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{FutureProducer, ProducerContext, ThreadedProducer};

/// An idempotent producer (no duplicates from retries) that waits for all
/// in-sync replicas, partitioning keys with murmur2 as the Java client does,
/// so every client puts a user on the same partition.
pub fn create(config: ClientConfig) -> Result<FutureProducer, KafkaError> {
    with_pipeline_settings(config).create()
}

/// The same producer, polled by its own thread, that counts deliveries in
/// its context instead of handing out a future per record: the
/// transactions-producer enqueues records as fast as it makes them and
/// learns of failures from `Deliveries::failure`.
pub fn create_counting(config: ClientConfig) -> Result<ThreadedProducer<Deliveries>, KafkaError> {
    with_pipeline_settings(config).create_with_context(Deliveries::default())
}

fn with_pipeline_settings(mut config: ClientConfig) -> ClientConfig {
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// What became of the records a `ThreadedProducer` was given.
#[derive(Default)]
pub struct Deliveries {
    delivered: AtomicU64,
    failed: Mutex<Option<KafkaError>>,
}

impl Deliveries {
    /// Records the broker acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// The first delivery that failed, if one did. An idempotent producer
    /// only gives up on a record after its retries and timeout, and then
    /// the order of what follows is not guaranteed: the run stops.
    pub fn failure(&self) -> Option<KafkaError> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::AcqRel);
                metrics::counter!(crate::ops::metrics::RECORDS_OUT, "sink" => "kafka").increment(1);
                crate::ops::progress::add(1);
            }
            Err((e, _)) => {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                failed.get_or_insert_with(|| e.clone());
            }
        }
    }
}
