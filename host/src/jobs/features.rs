//! transactions-ml-features-job: the running count of transactions per user,
//! computed by the features guest over host-owned keyed state; every count
//! goes to Parquet (history for analysts and training) and the latest per
//! user to Redis (real-time inference).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::avro::{Decoder, Readers, transaction_from_value};
use crate::config::{KafkaArgs, Storage};
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::kafka::Consumed;
use crate::lineage::module_metadata;
use crate::model::FeatureEvent;
use crate::registry::Registry;
use crate::runtime::{FeaturesGuest, FeaturesWorld, Limits, Runtime, WitTransaction};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::{Checkpoints, PartitionState};

pub use super::counting::OnMispartitioned;
use super::counting::{Placement, count, mispartitioned_refusal};
use super::serving::Serving;
use super::{Consuming, Error, FEATURES_PASSWORD_VAR, FEATURES_USER, Result, RunOptions, Step, by_partition};

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

/// What the real-time path made of an open object's records, until it
/// rolls: the feature events it emitted and the records it left out.
#[derive(Default)]
struct OpenOutputs {
    events: Vec<FeatureEvent>,
    /// Dead letters, sent once the object's range passed the fence.
    left_out: Vec<(Consumed, String)>,
}

impl OpenOutputs {
    /// The outputs of the records below `end`; the rest stays open.
    fn take_below(&mut self, end: i64) -> (Vec<FeatureEvent>, Vec<(Consumed, String)>) {
        let events_cut = self.events.partition_point(|e| e.source_offset < end);
        let letters_cut = self.left_out.partition_point(|(r, _)| r.offset < end);
        (
            self.events.drain(..events_cut).collect(),
            self.left_out.drain(..letters_cut).collect(),
        )
    }
}

/// What the feature logic made of one partition's records.
struct Processed {
    events: Vec<FeatureEvent>,
    left_out: Vec<(Consumed, String)>,
    mispartitioned: u64,
}

/// Decodes one partition's records, checks their placement and counts them
/// through the guest over `state`: the same for the real-time path and for
/// the recount of a range an earlier claim cut short.
fn process(
    records: &[&Consumed],
    partition: i32,
    state: &mut PartitionState,
    guest: &mut FeaturesGuest,
    readers: &Readers<'_>,
    placement: &mut Placement,
    on_mispartitioned: OnMispartitioned,
) -> Result<Processed> {
    let mut processed = Processed {
        events: Vec::new(),
        left_out: Vec::new(),
        mispartitioned: 0,
    };
    let mut inputs = Vec::with_capacity(records.len());
    let mut input_records = Vec::with_capacity(records.len());
    for record in records {
        let decoded = readers
            .decode(record.value.as_deref())
            .and_then(|(_, v)| transaction_from_value(&v));
        let tx = match decoded {
            Ok(tx) => tx,
            Err(e) => {
                processed.left_out.push(((*record).clone(), e.to_string()));
                continue;
            }
        };
        if let Some(reason) = placement.misplaced(tx.user_id, partition, record.offset) {
            processed.mispartitioned += 1;
            match on_mispartitioned {
                OnMispartitioned::Fail => return Err(mispartitioned_refusal(&reason)),
                OnMispartitioned::DeadLetter => {
                    processed.left_out.push(((*record).clone(), reason));
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
    let offsets: Vec<i64> = input_records.iter().map(|r| r.offset).collect();
    let counted = count(guest, state, partition, &offsets, &inputs);
    for (index, reason) in counted.rejected {
        processed.left_out.push((input_records[index].clone(), reason));
    }
    // In offset order, as the dead letters of one object are sent.
    processed.left_out.sort_by_key(|(r, _)| r.offset);
    processed.events = counted.events;
    Ok(processed)
}

/// One run of the features job: the real-time path per micro-batch, the
/// durable path per roll.
struct Run {
    job: FeaturesJob,
    swap: HotSwap<FeaturesWorld>,
    guest: FeaturesGuest,
    checkpoints: Checkpoints,
    decoder: Decoder,
    serving: Serving,
    sink: ParquetSink,
    held: Held,
    open: HashMap<i32, OpenOutputs>,
    /// Hand-offs not yet superseded by a commit of this process.
    handoffs: BTreeMap<i32, i64>,
    report: FeaturesReport,
}

impl FeaturesJob {
    pub async fn run(self) -> Result<FeaturesReport> {
        let runtime = Runtime::new(self.limits)?;
        let (swap, guest) = HotSwap::<FeaturesWorld>::start(runtime, &self.module, &self.swap).await?;
        let name = checkpoint_name(&self.options.group, &self.kafka.topic);
        let checkpoints = Checkpoints::new(self.storage.clone(), &name).with_module(swap.sha256());
        let mut options = self.options.clone();
        options.handoffs = checkpoints.handoffs().await?;
        if !options.handoffs.is_empty() {
            tracing::info!(handoffs = ?options.handoffs, "a backfill left state for this group");
        }
        let handoffs = options.handoffs.clone();
        let mut consuming = Consuming::start(&self.kafka, options, JOB, FEATURES_USER, FEATURES_PASSWORD_VAR).await?;
        let serving = Serving::new(
            RedisSink::new(consuming.redis(), &self.options.redis.redis_prefix),
            &name,
            self.options.redis.check_interval(),
        );
        let mut run = Run {
            decoder: Decoder::new(&self.registry),
            sink: ParquetSink::new(self.storage.clone(), DATASET),
            job: self,
            swap,
            guest,
            checkpoints,
            serving,
            held: Held::default(),
            open: HashMap::new(),
            handoffs,
            report: FeaturesReport::default(),
        };
        while let Some(step) = consuming.next().await? {
            if consuming.assignment_changed() {
                // Partitions may have moved: state is reloaded from the
                // checkpoints, which the previous owners wrote last.
                run.held = Held::default();
                run.open.clear();
            }
            run.held
                .load_assigned(&consuming, &mut run.checkpoints, &mut run.serving)
                .await?;
            run.serving.check(&run.held.states).await?;
            match step {
                Step::Quiet => {}
                Step::Arrived => {
                    // A staged module takes over once every open object has
                    // rolled, so that each object is one module's.
                    if run.swap.is_staged() {
                        if consuming.nothing_open() {
                            if run.swap.swap_staged(&mut run.guest) {
                                run.checkpoints.set_module(run.swap.sha256());
                            }
                        } else {
                            consuming.roll_all();
                        }
                    }
                    run.realtime(&consuming).await?;
                }
                Step::Roll(batch) => run.durable(&mut consuming, batch).await?,
            }
        }
        let mut report = run.report;
        report.throughput = consuming.throughput(report.records);
        report.republished = run.serving.republished;
        report.module_sha256 = run.swap.sha256().to_string();
        report.swaps = run.swap.swaps();
        Ok(report)
    }
}

impl Run {
    /// The real-time path: counts the records that just arrived and writes
    /// each user's new count to Redis, fenced by source offset.
    async fn realtime(&mut self, consuming: &Consuming) -> Result<()> {
        let micro = consuming.arrived();
        self.decoder.prepare(micro.iter().map(|r| r.value.as_deref())).await?;
        let readers = self.decoder.readers();
        let mut placement = Placement::new(partition_count(consuming, &self.job.kafka.topic)?);
        let mut events = Vec::new();
        for (partition, records) in by_partition(micro) {
            let first = records[0].offset;
            let state = self
                .held
                .states
                .get_mut(&partition)
                .ok_or_else(|| Error::Other(format!("partition {partition} is not assigned to this member")))?;
            if first < state.next_offset {
                return Err(Error::Other(format!(
                    "partition {partition}: the state already reflects offsets below {} but records arrive from \
                     {first}; refusing to count records twice",
                    state.next_offset
                )));
            }
            // These records open a new object: before its fence commits its
            // first offset, the state as of that offset must be checkpointed
            // under it (a fresh partition, an offset gap or skipped records
            // leave the last checkpoint under another name).
            if consuming.open_first(partition).is_none() && self.held.saved_at.get(&partition) != Some(&first) {
                state.next_offset = first;
                self.checkpoints.save(partition, state).await?;
                self.held.saved_at.insert(partition, first);
            }
            self.swap.took_over(partition, first);
            let processed = process(
                &records,
                partition,
                state,
                &mut self.guest,
                &readers,
                &mut placement,
                self.job.on_mispartitioned,
            )?;
            crate::fault::point("after-guest");
            state.next_offset = records[records.len() - 1].offset + 1;
            self.report.records += records.len() as u64;
            self.report.features += processed.events.len() as u64;
            self.report.mispartitioned += processed.mispartitioned;
            let open = self.open.entry(partition).or_default();
            open.events.extend(processed.events.iter().cloned());
            open.left_out.extend(processed.left_out);
            events.extend(processed.events);
        }
        self.report.redis_updates += self.serving.write_latest(&events).await? as u64;
        crate::fault::point("after-redis");
        Ok(())
    }

    /// The durable path of a roll: past the fence, each partition's dead
    /// letters, its features object and the checkpoint of its state as of
    /// the range's end; then the commit.
    async fn durable(&mut self, consuming: &mut Consuming, batch: Vec<Consumed>) -> Result<()> {
        if !consuming.fence(&batch).await? {
            self.open.clear();
            return Ok(());
        }
        for partition in by_partition(&batch).keys() {
            if self.handoffs.remove(partition).is_some() {
                self.checkpoints.retire_handoff(*partition).await?;
            }
        }
        for (partition, records) in by_partition(&batch) {
            let first = records[0].offset;
            let end = records[records.len() - 1].offset + 1;
            // The fence committed the first offset: older checkpoints are stale.
            self.checkpoints.forget_below(partition, first).await?;
            let (events, left_out) = self.open.entry(partition).or_default().take_below(end);
            for (record, reason) in &left_out {
                consuming.dead_letters.send(record, reason).await?;
            }
            self.report.dead_lettered += left_out.len() as u64;
            if !events.is_empty() {
                let metadata = vec![module_metadata(self.swap.sha256())];
                self.sink
                    .write(partition, first, &feature_batch(&events), metadata)
                    .await?;
                crate::fault::point("after-upload");
                self.report.files += 1;
            }
            let ahead = self
                .held
                .states
                .get(&partition)
                .is_some_and(|state| state.next_offset != end);
            if ahead {
                // An earlier claim ended this range before the records the
                // real-time path counted since: recount it from the
                // checkpoint of its first offset.
                let mut state = self.recount(consuming, partition, first, &records).await?;
                state.next_offset = end;
                self.checkpoints.save(partition, &state).await?;
                self.held.saved_at.insert(partition, end);
                // The next object starts past an offset gap: its first offset
                // needs the checkpoint before its fence, too.
                if let Some(next) = consuming.open_first(partition).filter(|next| *next != end) {
                    state.next_offset = next;
                    self.checkpoints.save(partition, &state).await?;
                    self.held.saved_at.insert(partition, next);
                }
            } else if let Some(state) = self.held.states.get(&partition) {
                self.checkpoints.save(partition, state).await?;
                self.held.saved_at.insert(partition, end);
            }
            crate::fault::point("mid-checkpoint");
        }
        consuming.done(&batch).await
    }

    /// The state of `partition` after `records` (a range from `first`),
    /// from the checkpoint of `first`.
    async fn recount(
        &mut self,
        consuming: &Consuming,
        partition: i32,
        first: i64,
        records: &[&Consumed],
    ) -> Result<PartitionState> {
        let mut state = self.checkpoints.resume(partition, Some(first), first).await?;
        self.decoder.prepare(records.iter().map(|r| r.value.as_deref())).await?;
        let readers = self.decoder.readers();
        let mut placement = Placement::new(partition_count(consuming, &self.job.kafka.topic)?);
        process(
            records,
            partition,
            &mut state,
            &mut self.guest,
            &readers,
            &mut placement,
            self.job.on_mispartitioned,
        )?;
        Ok(state)
    }
}

fn partition_count(consuming: &Consuming, topic: &str) -> Result<i32> {
    consuming
        .partition_count()
        .ok_or_else(|| Error::Other(format!("the partition count of {topic} is unknown")))
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
