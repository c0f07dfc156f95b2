//! A consumer-group member that hands out batches of records and commits
//! offsets only when told to (after every output they cover is durable).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka consumer ({context}): {source}")]
    Kafka { context: String, source: KafkaError },
}

pub type Result<T> = std::result::Result<T, Error>;

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}

/// One record, owned, as it came off the topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_millis: Option<i64>,
    pub partition: i32,
    pub offset: i64,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Source {
    consumer: StreamConsumer,
    topic: String,
    /// Next offset to read per partition, from what this process consumed.
    next: HashMap<i32, i64>,
}

impl Source {
    /// Joins `group` and subscribes to `topic`; offsets are committed by
    /// `commit` only, reading starts at the earliest retained record when the
    /// group has no committed offset.
    pub fn subscribe(mut config: ClientConfig, group: &str, topic: &str) -> Result<Self> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = config.create().map_err(kafka("create"))?;
        consumer
            .subscribe(&[topic])
            .map_err(kafka(format!("subscribe to {topic}")))?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            next: HashMap::new(),
        })
    }

    /// Up to `max` records, returned as soon as `max` is reached or no record
    /// has arrived for `idle`. Empty when the topic is quiet.
    pub async fn next_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Consumed>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let message = match tokio::time::timeout(idle, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(message) => message.map_err(kafka("receive"))?,
            };
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            let record = Consumed {
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
                timestamp_millis: message.timestamp().to_millis(),
                partition: message.partition(),
                offset: message.offset(),
            };
            self.next.insert(record.partition, record.offset + 1);
            batch.push(record);
        }
        Ok(batch)
    }

    /// Commits, synchronously, the next offset to read of each partition.
    pub fn commit(&self, next_offsets: &HashMap<i32, i64>) -> Result<()> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in next_offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("offset list"))?;
        }
        self.consumer.commit(&list, CommitMode::Sync).map_err(kafka("commit"))
    }

    /// True when this member has partitions and has read each of them up to
    /// its high watermark.
    pub fn caught_up(&self) -> Result<bool> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        if assignment.count() == 0 {
            return Ok(false);
        }
        let committed = self
            .consumer
            .committed(METADATA_TIMEOUT)
            .map_err(kafka("committed offsets"))?;
        for element in assignment.elements() {
            let partition = element.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
                .map_err(kafka("watermarks"))?;
            let next = self.next.get(&partition).copied().or_else(|| {
                committed
                    .find_partition(&self.topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            });
            if next.unwrap_or(low) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
