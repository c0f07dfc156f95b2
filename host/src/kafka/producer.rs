//! The producer settings the pipeline relies on.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

/// An idempotent producer (no duplicates from retries) that waits for all
/// in-sync replicas, partitioning keys with murmur2 as the Java client does,
/// so every client puts a user on the same partition.
pub fn create(mut config: ClientConfig) -> Result<FutureProducer, KafkaError> {
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
}
