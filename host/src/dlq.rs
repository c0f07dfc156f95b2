//! The dead-letter topic: a record that cannot be decoded, or that a guest
//! rejects, is copied there unchanged (key, value, headers) with headers
//! naming the job, the reason and where it came from; the job goes on.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    job: &'static str,
    sent: u64,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: &str, source_topic: &str, job: &'static str) -> Self {
        Self {
            producer,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
            job,
            sent: 0,
        }
    }

    /// Records sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends one record and waits until the broker has it: the caller commits
    /// the record's offset only after this returns.
    pub async fn send(&mut self, record: &Consumed, reason: &str) -> Result<(), Error> {
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
        let mut message: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key);
        }
        if let Some(value) = &record.value {
            message = message.payload(value);
        }
        self.producer
            .send(message, SEND_TIMEOUT)
            .await
            .map_err(|(source, _)| Error {
                topic: self.topic.clone(),
                source,
            })?;
        self.sent += 1;
        Ok(())
    }
}
