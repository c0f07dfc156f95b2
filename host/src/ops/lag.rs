//! Consumer lag of the partitions this member holds, from the broker: the
//! group's committed offsets and each partition's high watermark, not the
//! client's statistics. A thread of its own, with a consumer of its own
//! that never joins the group (it only reads offsets, and the records at
//! the committed offsets for their timestamps), so the job's polling never
//! waits for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{health, metrics};

/// How often lag is measured.
pub const EVERY: Duration = Duration::from_secs(5);
/// How long one broker request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the records at the committed offsets.
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// Measures lag every `EVERY` for as long as the process runs.
pub fn spawn(mut config: ClientConfig, group: &str, topic: &str) {
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // It reads one record a lagging partition: no prefetch of megabytes
        // (librdkafka's defaults queue up to 64 MiB) beside the job's own.
        .set("queued.min.messages", "1")
        .set("queued.max.messages.kbytes", "64")
        .set("fetch.message.max.bytes", "65536");
    let topic = topic.to_string();
    let spawned = std::thread::Builder::new().name("sluice-lag".into()).spawn(move || {
        let consumer: BaseConsumer = match config.create() {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::warn!(error = %e, "lag metrics: cannot create a consumer; no lag will be reported");
                return;
            }
        };
        loop {
            if let Err(e) = measure(&consumer, &topic) {
                tracing::debug!(error = %e, "lag metrics: measuring failed; trying again later");
            }
            std::thread::sleep(EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "lag metrics: cannot start their thread");
    }
}

fn measure(consumer: &BaseConsumer, topic: &str) -> rdkafka::error::KafkaResult<()> {
    let partitions = health::assigned_partitions();
    if partitions.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    // Where each partition's unconsumed records start, and how many there are.
    let mut behind: HashMap<i32, (i64, i64)> = HashMap::new();
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, TIMEOUT)?;
        let from = committed
            .find_partition(topic, *partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low)
            .max(low);
        behind.insert(*partition, (from, (high - from).max(0)));
    }
    super::progress::set_lag(behind.values().map(|(_, records)| records).sum());
    let ages = oldest_ages(consumer, topic, &behind)?;
    for partition in partitions {
        let (_, records) = behind[&partition];
        let label = partition.to_string();
        ::metrics::gauge!(metrics::LAG_RECORDS, "partition" => label.clone()).set(records as f64);
        let seconds = if records == 0 {
            0.0
        } else {
            ages.get(&partition).copied().unwrap_or(f64::NAN)
        };
        ::metrics::gauge!(metrics::LAG_SECONDS, "partition" => label).set(seconds);
    }
    Ok(())
}

/// The age, in seconds, of the record at each lagging partition's
/// committed offset (its timestamp is when it was produced).
fn oldest_ages(
    consumer: &BaseConsumer,
    topic: &str,
    behind: &HashMap<i32, (i64, i64)>,
) -> rdkafka::error::KafkaResult<HashMap<i32, f64>> {
    let mut list = TopicPartitionList::new();
    for (partition, (from, records)) in behind {
        if *records > 0 {
            list.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
        }
    }
    let mut ages = HashMap::new();
    if list.count() == 0 {
        return Ok(ages);
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + RECORD_WAIT;
    while ages.len() < list.count() && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if let Some(produced) = message.timestamp().to_millis() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            ages.entry(message.partition())
                .or_insert(((now - produced).max(0)) as f64 / 1000.0);
        }
    }
    consumer.unassign()?;
    Ok(ages)
}
