//! A consumer-group member that hands out batches of records and commits
//! offsets only when told to (after every output they cover is durable).
//!
//! Rebalances use the eager protocol: every rebalance revokes the whole
//! assignment, and a partition assigned again is fetched from its committed
//! offset. A batch being collected when a rebalance happens is therefore
//! thrown away: its uncommitted records are fetched again by whoever owns
//! their partition now, so no record is processed by two members.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
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
/// Pause between attempts while the broker is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Counts rebalances, so the job can tell that its assignment changed.
#[derive(Default)]
struct GroupContext {
    rebalances: Arc<AtomicU64>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            tracing::info!(partitions = ?partitions(list), "partitions revoked");
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(partitions = ?partitions(list), "partitions assigned");
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

pub struct Source {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
    /// Next offset to read per partition, from what this process consumed.
    next: HashMap<i32, i64>,
    rebalances: Arc<AtomicU64>,
    /// Rebalance count the caller last saw (see `assignment_changed`).
    seen_rebalances: u64,
}

impl Source {
    /// Joins `group` and subscribes to `topic`; offsets are committed by
    /// `commit` only, reading starts at the earliest retained record when the
    /// group has no committed offset.
    pub fn subscribe(mut config: ClientConfig, group: &str, topic: &str, session_timeout: Duration) -> Result<Self> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Eager rebalancing; see the module comment.
            .set("partition.assignment.strategy", "roundrobin")
            // How long a member that died without leaving keeps its partitions.
            .set("session.timeout.ms", session_timeout.as_millis().to_string());
        let context = GroupContext::default();
        let rebalances = context.rebalances.clone();
        let consumer: StreamConsumer<GroupContext> = config.create_with_context(context).map_err(kafka("create"))?;
        consumer
            .subscribe(&[topic])
            .map_err(kafka(format!("subscribe to {topic}")))?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            next: HashMap::new(),
            rebalances,
            seen_rebalances: 0,
        })
    }

    /// True once after each rebalance: partitions may have moved, so state
    /// held for them must be reloaded from their checkpoints.
    pub fn assignment_changed(&mut self) -> bool {
        let now = self.rebalances.load(Ordering::SeqCst);
        let changed = now != self.seen_rebalances;
        self.seen_rebalances = now;
        changed
    }

    /// Up to `max` records, returned when `max` is reached, when no record
    /// has arrived for `idle`, or once the batch is `max_wait` old. Empty
    /// when the topic is quiet. A rebalance during collection discards the
    /// records collected so far (see the module comment).
    pub async fn next_batch(&mut self, max: usize, idle: Duration, max_wait: Duration) -> Result<Vec<Consumed>> {
        let mut batch = Vec::new();
        let started = Instant::now();
        let mut generation = self.rebalances.load(Ordering::SeqCst);
        while batch.len() < max && started.elapsed() < max_wait {
            let received = tokio::time::timeout(idle, self.consumer.recv()).await;
            // Rebalance callbacks run inside `recv`. Records collected before
            // one may belong to partitions that moved: drop them (they are
            // fetched again from the committed offsets). A message `recv`
            // returned after the rebalance is already from the new assignment.
            let now = self.rebalances.load(Ordering::SeqCst);
            if now != generation {
                tracing::info!(
                    discarded = batch.len(),
                    "rebalance during batch: its records are fetched again"
                );
                batch.clear();
                self.next.clear();
                generation = now;
            }
            let message = match received {
                Err(_elapsed) => break,
                Ok(Ok(message)) => message,
                // The client reconnects by itself (broker restarts, network
                // blips); errors here are reports, not the end of the stream.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
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

    /// Commits, synchronously, the next offset to read of each partition,
    /// retrying while the broker is unreachable. Returns false when the
    /// commit was refused because the group rebalanced meanwhile: the
    /// partitions' new owners replay from the last committed offsets, which
    /// the deterministic outputs make harmless.
    pub async fn commit(&mut self, next_offsets: &HashMap<i32, i64>) -> Result<bool> {
        if next_offsets.is_empty() {
            return Ok(true);
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in next_offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(kafka("offset list"))?;
        }
        loop {
            match self.consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => return Ok(true),
                Err(KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::AssignmentLost,
                )) => {
                    tracing::warn!("commit refused: the group rebalanced; the new owners replay from the last commit");
                    return Ok(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "commit failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// The high watermark (next offset to be written) of a partition.
    pub fn end_offset(&self, partition: i32) -> Result<i64> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            .map_err(kafka("watermarks"))?;
        Ok(high)
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
