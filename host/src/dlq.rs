//! The dead-letter topic: a record that cannot be decoded, or that a guest
//! rejects, is copied there unchanged (key, value, headers) with headers
//! naming the job, the reason and where it came from; the job goes on.
//!
//! A batch's dead letters are queued as they are found and awaited together
//! (`flush`) before the batch's offsets are committed, so a batch full of bad
//! records costs one round of deliveries, not one round trip per record.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::kafka::Consumed;

pub const HEADER_JOB: &str = "sluice.job";
pub const HEADER_REASON: &str = "sluice.reason";
pub const HEADER_SOURCE_TOPIC: &str = "sluice.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "sluice.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "sluice.source.offset";

#[derive(Debug, thiserror::Error)]
#[error("dead-letter topic {topic}: {source}")]
pub struct Error {
    topic: String,
    source: rdkafka::error::KafkaError,
}

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    job: &'static str,
    sent: u64,
    /// Queued deliveries not yet confirmed.
    in_flight: Vec<DeliveryFuture>,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: &str, source_topic: &str, job: &'static str) -> Self {
        Self {
            producer,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
            job,
            sent: 0,
            in_flight: Vec::new(),
        }
    }

    /// Records confirmed so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn error(&self, source: KafkaError) -> Error {
        Error {
            topic: self.topic.clone(),
            source,
        }
    }

    /// Waits until the broker has every queued dead letter: the caller
    /// commits the records' offsets only after this returns.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let deliveries = std::mem::take(&mut self.in_flight);
        for delivery in futures::future::join_all(deliveries).await {
            match delivery {
                Ok(Ok(_)) => self.sent += 1,
                Ok(Err((source, _))) => return Err(self.error(source)),
                Err(_canceled) => return Err(self.error(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Queues one record for the dead-letter topic; `flush` confirms it.
    pub async fn send(&mut self, record: &Consumed, reason: &str) -> Result<(), Error> {
        metrics::counter!(crate::ops::metrics::DEAD_LETTERS, "reason" => reason_class(reason)).increment(1);
        tracing::warn!(
            job = self.job,
            partition = record.partition,
            offset = record.offset,
            reason,
            "dead-lettered"
        );
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 5);
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let headers = headers
            .insert(Header {
                key: HEADER_JOB,
                value: Some(self.job),
            })
            .insert(Header {
                key: HEADER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(&offset),
            });
        let topic = self.topic.clone();
        let mut message: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key);
        }
        if let Some(value) = &record.value {
            message = message.payload(value);
        }
        loop {
            match self.producer.send_result(message) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    return Ok(());
                }
                // The producer's queue is full: let deliveries drain, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    message = returned;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    self.flush().await?;
                }
                Err((source, _)) => return Err(self.error(source)),
            }
        }
    }
}

/// A reason's kind, for a metric's label: the words before its first colon
/// ("rejected by guest: zero amount" is "rejected by guest"), so the label
/// takes few values whatever the details.
fn reason_class(reason: &str) -> String {
    let class = reason.split(':').next().unwrap_or(reason).trim();
    class.chars().take(48).collect()
}
