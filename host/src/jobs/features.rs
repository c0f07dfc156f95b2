//! transactions-ml-features-job: the running count of transactions per user,
//! computed by the features guest over host-owned keyed state; every count
//! goes to Parquet (history for analysts and training) and the latest per
//! user to Redis (real-time inference).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::avro::{Decoder, transaction_from_value};
use crate::config::{KafkaArgs, Storage};
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::lineage::module_metadata;
use crate::model::FeatureEvent;
use crate::registry::Registry;
use crate::runtime::{FeaturesWorld, Limits, Runtime, WitTransaction};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::{Checkpoints, PartitionState};

pub use super::counting::OnMispartitioned;
use super::counting::{Placement, count, mispartitioned_refusal};
use super::serving::Serving;
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
    /// Users written to Redis again because Redis had lost them (or never
    /// had them: a backfill's hand-off), from the keyed state.
    pub republished: u64,
    /// The module that computed the features at the end (each object's
    /// key-value metadata and each checkpoint name theirs).
    pub module_sha256: String,
    /// Modules swapped in while the job ran, with where each took over.
    pub swaps: Vec<SwapRecord>,
}

pub struct FeaturesJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub module: PathBuf,
    pub options: RunOptions,
    pub on_mispartitioned: OnMispartitioned,
    pub limits: Limits,
    pub swap: SwapOptions,
}

/// The partitions' keyed state this member holds, loaded from checkpoints
/// as partitions are assigned.
#[derive(Default)]
struct Held {
    states: HashMap<i32, PartitionState>,
    /// The offset of each partition's newest checkpoint known to exist.
    saved_at: HashMap<i32, i64>,
}

impl Held {
    /// Loads the state of every assigned partition not held yet, and
    /// publishes it to Redis when Redis lacks it (see `Serving`).
    async fn load_assigned(
        &mut self,
        consuming: &Consuming,
        checkpoints: &mut Checkpoints,
        serving: &mut Serving,
    ) -> Result<()> {
        for partition in consuming.assigned() {
            if self.states.contains_key(&partition) {
                continue;
            }
            let start = consuming
                .start_of(partition)
                .ok_or_else(|| Error::Other(format!("partition {partition} has no start")))?;
            let state = checkpoints.resume(partition, start.committed, start.offset).await?;
            if let Some(committed) = start.committed {
                self.saved_at.insert(partition, committed);
            }
            serving.loaded(partition, &state).await?;
            self.states.insert(partition, state);
        }
        Ok(())
    }
}

impl FeaturesJob {
    pub async fn run(self) -> Result<FeaturesReport> {
        let runtime = Runtime::new(self.limits)?;
        let (mut swap, mut guest) = HotSwap::<FeaturesWorld>::start(runtime, &self.module, &self.swap).await?;
        let name = checkpoint_name(&self.options.group, &self.kafka.topic);
        let mut checkpoints = Checkpoints::new(self.storage.clone(), &name).with_module(swap.sha256());
        let mut options = self.options.clone();
        options.handoffs = checkpoints.handoffs().await?;
        // Hand-offs not yet superseded by a commit of this process.
        let mut handoffs = options.handoffs.clone();
        if !options.handoffs.is_empty() {
            tracing::info!(handoffs = ?options.handoffs, "a backfill left state for this group");
        }
        let mut consuming = Consuming::start(&self.kafka, options, JOB, FEATURES_USER, FEATURES_PASSWORD_VAR).await?;
        let mut decoder = Decoder::new(&self.registry);
        let mut serving = Serving::new(
            RedisSink::new(consuming.redis(), &self.options.redis.redis_prefix),
            &name,
            self.options.redis.check_interval(),
        );
        let sink = ParquetSink::new(self.storage.clone(), DATASET);
        let mut held = Held::default();
        let mut report = FeaturesReport::default();
        while let Some(batch) = consuming.next_batch().await? {
            if consuming.assignment_changed() {
                // Partitions may have moved: state is reloaded from the
                // checkpoints, which the previous owners wrote last.
                held = Held::default();
            }
            held.load_assigned(&consuming, &mut checkpoints, &mut serving).await?;
            serving.check(&held.states).await?;
            if batch.is_empty() {
                continue;
            }
            decoder.prepare(batch.iter().map(|r| r.value.as_deref())).await?;
            let readers = decoder.readers();
            let partitions = consuming
                .partition_count()
                .ok_or_else(|| Error::Other(format!("the partition count of {} is unknown", self.kafka.topic)))?;
            let mut placement = Placement::new(partitions);
            // Before the fence commits the batch's first offsets, each
            // partition's state as of its first offset must be checkpointed
            // under that offset: a fresh partition, an offset gap or skipped
            // records leave the last checkpoint under another name.
            for (partition, records) in by_partition(&batch) {
                let first_offset = records[0].offset;
                let state = held
                    .states
                    .get_mut(&partition)
                    .ok_or_else(|| Error::Other(format!("partition {partition} is not assigned to this member")))?;
                if first_offset < state.next_offset {
                    return Err(Error::Other(format!(
                        "partition {partition}: the state already reflects offsets below {} but the batch starts at \
                         {first_offset}; refusing to count records twice",
                        state.next_offset
                    )));
                }
                if held.saved_at.get(&partition) != Some(&first_offset) {
                    state.next_offset = first_offset;
                    checkpoints.save(partition, state).await?;
                    held.saved_at.insert(partition, first_offset);
                }
            }
            // A batch boundary: a staged module takes over here (after the
            // checkpoints above, which hold the state the old one left).
            if swap.swap_staged(&mut guest) {
                checkpoints.set_module(swap.sha256());
            }
            if !consuming.fence(&batch).await? {
                continue;
            }
            for partition in by_partition(&batch).keys() {
                if handoffs.remove(partition).is_some() {
                    checkpoints.retire_handoff(*partition).await?;
                }
            }
            let mut events = Vec::new();
            let mut touched = Vec::new();
            for (partition, records) in by_partition(&batch) {
                let first_offset = records[0].offset;
                let Some(state) = held.states.get_mut(&partition) else {
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
                    if let Some(reason) = placement.misplaced(tx.user_id, partition, record.offset) {
                        report.mispartitioned += 1;
                        match self.on_mispartitioned {
                            OnMispartitioned::Fail => return Err(mispartitioned_refusal(&reason)),
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
                swap.took_over(partition, first_offset);
                let offsets: Vec<i64> = input_records.iter().map(|r| r.offset).collect();
                let counted = count(&mut guest, state, partition, &offsets, &inputs);
                crate::fault::point("after-guest");
                for (index, reason) in &counted.rejected {
                    consuming.dead_letters.send(input_records[*index], reason).await?;
                    report.dead_lettered += 1;
                }
                let partition_events = counted.events;
                state.next_offset = records[records.len() - 1].offset + 1;
                touched.push(partition);
                if !partition_events.is_empty() {
                    let metadata = vec![module_metadata(swap.sha256())];
                    sink.write(partition, first_offset, &feature_batch(&partition_events), metadata)
                        .await?;
                    crate::fault::point("after-upload");
                    report.files += 1;
                }
                report.features += partition_events.len() as u64;
                events.extend(partition_events);
            }
            report.redis_updates += serving.write_latest(&events).await? as u64;
            crate::fault::point("after-redis");
            for partition in touched {
                if let Some(state) = held.states.get(&partition) {
                    checkpoints.save(partition, state).await?;
                    held.saved_at.insert(partition, state.next_offset);
                    crate::fault::point("mid-checkpoint");
                }
            }
            consuming.done(&batch).await?;
        }
        report.throughput = consuming.throughput(report.records);
        report.republished = serving.republished;
        report.module_sha256 = swap.sha256().to_string();
        report.swaps = swap.swaps();
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
