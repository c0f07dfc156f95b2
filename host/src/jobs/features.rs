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
use serde::Serialize;

use crate::avro::{Decoder, transaction_from_value};
use crate::config::{KafkaArgs, Storage};
use crate::kafka::Consumed;
use crate::model::FeatureEvent;
use crate::registry::Registry;
use crate::runtime::{FeatureOutcome, FeaturesGuest, Runtime, WitTransaction};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::{Checkpoints, PartitionState};

use super::{Consuming, FEATURES_PASSWORD_VAR, FEATURES_USER, Result, RunOptions, by_partition};

pub const JOB: &str = "transactions-ml-features-job";
/// The Parquet dataset of feature events.
pub const DATASET: &str = "transactions_features";

#[derive(Debug, Default, Serialize)]
pub struct FeaturesReport {
    pub records: u64,
    #[serde(flatten)]
    pub throughput: super::Throughput,
    pub features: u64,
    pub skipped_replayed: u64,
    pub dead_lettered: u64,
    pub files: u64,
    pub redis_updates: u64,
}

pub struct FeaturesJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub redis_url: String,
    pub redis_prefix: String,
    pub module: PathBuf,
    pub options: RunOptions,
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
        )?;
        let mut decoder = Decoder::new(&self.registry);
        let mut redis = RedisSink::connect(&self.redis_url, &self.redis_prefix).await?;
        let sink = ParquetSink::new(self.storage.clone(), DATASET);
        let checkpoints = Checkpoints::new(
            self.storage.clone(),
            &format!("{}/{}", self.options.group, self.kafka.topic),
        );
        let mut states: HashMap<i32, PartitionState> = HashMap::new();
        let mut report = FeaturesReport::default();
        while let Some(batch) = consuming.next_batch().await? {
            if consuming.assignment_changed() {
                // Partitions may have moved: state is reloaded from the
                // checkpoints, which the previous owners wrote last.
                states.clear();
            }
            decoder.prepare(batch.iter().map(|r| r.value.as_deref())).await?;
            let readers = decoder.readers();
            let mut events = Vec::new();
            let mut touched = Vec::new();
            for (partition, records) in by_partition(&batch) {
                let state = match states.entry(partition) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let state = checkpoints.load(partition).await?;
                        consuming.check_resume_point(partition, state.next_offset, &checkpoints.describe(partition))?;
                        entry.insert(state)
                    }
                };
                // Records the checkpoint already reflects (a replay after a
                // crash between checkpoint and commit) are not counted again.
                let received = records.len();
                let fresh: Vec<&Consumed> = records.into_iter().filter(|r| r.offset >= state.next_offset).collect();
                report.skipped_replayed += (received - fresh.len()) as u64;
                let Some(last) = fresh.last() else { continue };
                let next_offset = last.offset + 1;
                let first_offset = fresh[0].offset;

                let mut inputs = Vec::with_capacity(fresh.len());
                let mut input_records = Vec::with_capacity(fresh.len());
                for record in &fresh {
                    report.records += 1;
                    match readers
                        .decode(record.value.as_deref())
                        .and_then(|(_, v)| transaction_from_value(&v))
                    {
                        Ok(tx) => {
                            inputs.push(WitTransaction {
                                user_id: tx.user_id,
                                transaction_timestamp_millis: tx.transaction_timestamp_millis,
                                amount: tx.amount,
                                currency: tx.currency,
                                counterpart_id: tx.counterpart_id,
                            });
                            input_records.push(*record);
                        }
                        Err(e) => {
                            consuming.dead_letters.send(record, &e.to_string()).await?;
                            report.dead_lettered += 1;
                        }
                    }
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
                state.next_offset = next_offset;
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
                    crate::fault::point("mid-checkpoint");
                }
            }
            consuming.commit(&batch).await?;
        }
        report.throughput = consuming.throughput(report.records);
        Ok(report)
    }
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
