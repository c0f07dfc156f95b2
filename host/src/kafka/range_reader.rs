//! One partition's records in an offset range, read again with a consumer of
//! its own that joins no group. The features job keeps only the offsets of
//! its open objects (`jobs::rolling::Keep::Offsets`) and needs the records
//! themselves again only when a range an earlier member claimed ends before
//! what its real-time path counted, to recount the state as of that end.
//!
//! Blocking: run it with `spawn_blocking`.

use std::ops::Range;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::consumer::{Consumed, Error, Result, owned};

/// How long one poll waits.
const POLL: Duration = Duration::from_millis(100);

/// The records of `partition` of `topic` with offsets in `range`, in
/// offset order, read with `config` (the job's connection settings) as a
/// consumer of `group` that assigns itself the partition: it neither joins
/// the group nor commits, and needs no grant beyond the job's own. The
/// range must end just past a record that exists (a claimed range does);
/// `Err` if it does not arrive within `timeout`.
pub fn read_range(
    mut config: ClientConfig,
    group: &str,
    topic: &str,
    partition: i32,
    range: Range<i64>,
    timeout: Duration,
) -> Result<Vec<Consumed>> {
    let context = format!(
        "reading offsets {}..{} of {topic} partition {partition} again",
        range.start, range.end
    );
    let error = |source| Error::Kafka {
        context: context.clone(),
        source,
    };
    let consumer: BaseConsumer = config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .create()
        .map_err(error)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(range.start))
        .map_err(error)?;
    consumer.assign(&assignment).map_err(error)?;
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while Instant::now() < deadline {
        let Some(message) = consumer.poll(POLL) else { continue };
        let message = message.map_err(error)?;
        if message.offset() >= range.end {
            break;
        }
        records.push(owned(&message));
        if message.offset() + 1 == range.end {
            return Ok(records);
        }
    }
    Err(Error::Refused(format!(
        "{context}: offset {} did not arrive within {timeout:?}",
        range.end - 1
    )))
}
