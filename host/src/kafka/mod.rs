//! Kafka I/O through librdkafka: the batching consumer, the producer, topic
//! administration and SCRAM users / ACLs.

pub mod admin;
pub mod consumer;
pub mod producer;
pub mod security;

pub use consumer::{Consumed, Source};
