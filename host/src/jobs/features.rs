//! transactions-ml-features-job: the running count of transactions per user,
//! computed by the features guest over host-owned keyed state; every count
//! goes to Parquet (history for analysts and training) and the latest per
//! user to Redis (real-time inference).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clap::ValueEnum;
use serde::Serialize;

use crate::avro::{Decoder, transaction_from_value};
use crate::config::{KafkaArgs, Storage};
use crate::kafka::partitioner::partition_of;
use crate::model::{FeatureEvent, write_transaction_key};
use crate::registry::Registry;
use crate::runtime::{FeatureOutcome, FeaturesGuest, Runtime, WitTransaction};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::{Checkpoints, PartitionState};

use super::{Consuming, Error, FEATURES_PASSWORD_VAR, FEATURES_USER, Result, RunOptions, by_partition};

pub const JOB: &str = "transactions-ml-features-job";
/// The Parquet dataset of feature events.
pub const DATASET: &str = "transactions_features";

#[derive(Debug, Default, Serialize)]
pub struct FeaturesReport {
    pub records: u64,
    #[serde(flatten)]
    pub throughput: super::Throughput,
    pub features: u64,
    pub dead_lettered: u64,
    /// Records on another partition than their user's (see `OnMispartitioned`).
    pub mispartitioned: u64,
    pub files: u64,
    pub redis_updates: u64,
}

/// What to do with a record that is not on its user's partition (a producer
/// partitioned it with something other than murmur2 of the user id). Counts
/// are partition-local, so such a record would be counted apart from the
/// rest of its user's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OnMispartitioned {
    /// Stop before writing anything for the batch, naming the user and both
    /// partitions.
    #[default]
    Fail,
    /// Send the record to the dead-letter topic with that reason and count
    /// only the records on their user's partition.
    DeadLetter,
}

pub struct FeaturesJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub module: PathBuf,
    pub options: RunOptions,
    pub on_mispartitioned: OnMispartitioned,
}

impl FeaturesJob {
    pub async fn run(self) -> Result<FeaturesReport> {
        let runtime = Runtime::new(Default::default())?;
        let mut guest = FeaturesGuest::load(&runtime, &self.module)?;
        let mut consuming = Consuming::start(
            &self.kafka,
            self.options.clone(),
            JOB,
            FEATURES_USER,
            FEATURES_PASSWORD_VAR,
        )
        .await?;
        let mut decoder = Decoder::new(&self.registry);
        let mut redis = RedisSink::connect(&self.options.redis.redis_url, &self.options.redis.redis_prefix).await?;
        let sink = ParquetSink::new(self.storage.clone(), DATASET);
        let mut checkpoints = Checkpoints::new(
            self.storage.clone(),
            &checkpoint_name(&self.options.group, &self.kafka.topic),
        );
        let mut states: HashMap<i32, PartitionState> = HashMap::new();
        // The offset of each partition's newest checkpoint known to exist.
        let mut saved_at: HashMap<i32, i64> = HashMap::new();
        let mut report = FeaturesReport::default();
        // Reused for each record's key (the partitioning check).
        let mut key = String::new();
        while let Some(batch) = consuming.next_batch().await? {
            if consuming.assignment_changed() {
                // Partitions may have moved: state is reloaded from the
                // checkpoints, which the previous owners wrote last.
                states.clear();
                saved_at.clear();
            }
            decoder.prepare(batch.iter().map(|r| r.value.as_deref())).await?;
            let readers = decoder.readers();
            let partitions = consuming
                .partition_count()
                .ok_or_else(|| Error::Other(format!("the partition count of {} is unknown", self.kafka.topic)))?;
            // Before the fence commits the batch's first offsets, each
            // partition's state as of its first offset must be checkpointed
            // under that offset: a fresh partition, an offset gap or skipped
            // records leave the last checkpoint under another name.
            for (partition, records) in by_partition(&batch) {
                let first_offset = records[0].offset;
                let state = match states.entry(partition) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let start = consuming
                            .start_of(partition)
                            .ok_or_else(|| Error::Other(format!("partition {partition} has no start")))?;
                        let state = checkpoints.resume(partition, start.committed, start.offset).await?;
                        if let Some(committed) = start.committed {
                            saved_at.insert(partition, committed);
                        }
                        entry.insert(state)
                    }
                };
                if first_offset < state.next_offset {
                    return Err(Error::Other(format!(
                        "partition {partition}: the state already reflects offsets below {} but the batch starts at \
                         {first_offset}; refusing to count records twice",
                        state.next_offset
                    )));
                }
                if saved_at.get(&partition) != Some(&first_offset) {
                    state.next_offset = first_offset;
                    checkpoints.save(partition, state).await?;
                    saved_at.insert(partition, first_offset);
                }
            }
            if !consuming.fence(&batch).await? {
                continue;
            }
            let mut events = Vec::new();
            let mut touched = Vec::new();
            for (partition, records) in by_partition(&batch) {
                let first_offset = records[0].offset;
                let Some(state) = states.get_mut(&partition) else {
                    continue;
                };
                // The fence committed the first offset: older checkpoints are stale.
                checkpoints.forget_below(partition, first_offset).await?;

                let mut inputs = Vec::with_capacity(records.len());
                let mut input_records = Vec::with_capacity(records.len());
                for record in &records {
                    report.records += 1;
                    let decoded = readers
                        .decode(record.value.as_deref())
                        .and_then(|(_, v)| transaction_from_value(&v));
                    let tx = match decoded {
                        Ok(tx) => tx,
                        Err(e) => {
                            consuming.dead_letters.send(record, &e.to_string()).await?;
                            report.dead_lettered += 1;
                            continue;
                        }
                    };
                    write_transaction_key(tx.user_id, &mut key);
                    let home = partition_of(key.as_bytes(), partitions);
                    if home != partition {
                        let reason = format!(
                            "user {} is on partition {partition} (offset {}) but murmur2 of its key puts it on \
                             partition {home}: a producer used another partitioner (librdkafka's default is \
                             consistent_random; use murmur2_random, Java's default)",
                            tx.user_id, record.offset
                        );
                        report.mispartitioned += 1;
                        match self.on_mispartitioned {
                            OnMispartitioned::Fail => {
                                return Err(Error::Other(format!(
                                    "{reason}. Per-user counts are partition-local and would be wrong, so the job \
                                     stops before counting this partition's batch. Fix the producer and re-produce, or run with \
                                     --on-mispartitioned=dead-letter to send such records to the dead-letter topic \
                                     and count only the records on their user's partition."
                                )));
                            }
                            OnMispartitioned::DeadLetter => {
                                consuming.dead_letters.send(record, &reason).await?;
                                report.dead_lettered += 1;
                                continue;
                            }
                        }
                    }
                    inputs.push(WitTransaction {
                        user_id: tx.user_id,
                        transaction_timestamp_millis: tx.transaction_timestamp_millis,
                        amount: tx.amount,
                        currency: tx.currency,
                        counterpart_id: tx.counterpart_id,
                    });
                    input_records.push(*record);
                }
                let outcomes = guest.process(&mut state.values, &inputs)?;
                crate::fault::point("after-guest");
                let mut partition_events = Vec::with_capacity(outcomes.len());
                for (record, outcome) in input_records.iter().zip(outcomes) {
                    match outcome {
                        FeatureOutcome::Emit(f) => partition_events.push(FeatureEvent {
                            user_id: f.user_id,
                            total_transactions_count: f.total_transactions_count,
                            as_of_timestamp_millis: f.as_of_timestamp_millis,
                            source_partition: partition,
                            source_offset: record.offset,
                        }),
                        FeatureOutcome::Skip => {}
                        FeatureOutcome::Reject(reason) => {
                            consuming
                                .dead_letters
                                .send(record, &format!("rejected by guest: {reason}"))
                                .await?;
                            report.dead_lettered += 1;
                        }
                    }
                }
                state.next_offset = records[records.len() - 1].offset + 1;
                touched.push(partition);
                if !partition_events.is_empty() {
                    sink.write(partition, first_offset, &feature_batch(&partition_events))
                        .await?;
                    crate::fault::point("after-upload");
                    report.files += 1;
                }
                report.features += partition_events.len() as u64;
                events.extend(partition_events);
            }
            report.redis_updates += redis.write_latest(&events).await? as u64;
            crate::fault::point("after-redis");
            for partition in touched {
                if let Some(state) = states.get(&partition) {
                    checkpoints.save(partition, state).await?;
                    saved_at.insert(partition, state.next_offset);
                    crate::fault::point("mid-checkpoint");
                }
            }
            consuming.done(&batch).await?;
        }
        report.throughput = consuming.throughput(report.records);
        Ok(report)
    }
}

/// The checkpoints' folder name of a group's state of a topic.
pub fn checkpoint_name(group: &str, topic: &str) -> String {
    format!("{group}/{topic}")
}

/// The Parquet schema of feature events: the Avro feature event plus its
/// source partition and offset.
pub fn feature_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int32, false),
        Field::new("total_transactions_count", DataType::Int32, false),
        Field::new("as_of_timestamp_millis", DataType::Int64, false),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
    ]))
}

pub fn feature_batch(events: &[FeatureEvent]) -> RecordBatch {
    let columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(events.iter().map(|e| e.user_id))),
        Arc::new(Int32Array::from_iter_values(
            events.iter().map(|e| e.total_transactions_count),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.as_of_timestamp_millis),
        )),
        Arc::new(Int32Array::from_iter_values(events.iter().map(|e| e.source_partition))),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.source_offset))),
    ];
    // Columns are built from the schema's own fields, so this cannot fail.
    RecordBatch::try_new(feature_schema(), columns).expect("columns match the feature schema")
}
