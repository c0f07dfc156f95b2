//! Kafka I/O through librdkafka: the batching consumer, the producer, topic
//! administration and SCRAM users / ACLs.

pub mod admin;
pub mod consumer;
pub mod partitioner;
pub mod producer;
pub mod reachability;
pub mod security;
pub mod starting_offsets;

pub use consumer::{Commit, Consumed, Position, Source};
