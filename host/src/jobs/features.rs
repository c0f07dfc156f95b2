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

use crate::avro::{Decoder, Readers};
use crate::config::{KafkaArgs, Storage};
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::kafka::Consumed;
use crate::lineage::module_metadata;
use crate::model::FeatureEvent;
use crate::registry::Registry;
use crate::runtime::{FeatureLogic, FeaturesGuest, FeaturesWorld, Runtime, TransactionColumns};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::{Checkpoints, PartitionState, Snapshot};

use super::claims::Range;
pub use super::counting::OnMispartitioned;
use super::counting::{Placement, count, mispartitioned_refusal};
use super::durable::{CheckpointsReport, Object, Outputs, PartitionOutputs, Sinks};
use super::open_events::OpenEvents;
use super::pipeline::{self, RunReport, Stages};
use super::serving::Serving;
use super::{Consuming, Error, FEATURES_PASSWORD_VAR, FEATURES_USER, Result, Roll, RunOptions, by_partition};

pub const JOB: &str = "transactions-ml-features-job";
/// The Parquet dataset of feature events.
pub const DATASET: &str = "transactions_features";

#[derive(Debug, Default, Serialize)]
pub struct FeaturesReport {
    #[serde(flatten)]
    pub run: RunReport,
    pub features: u64,
    /// Records on another partition than their user's (see `OnMispartitioned`).
    pub mispartitioned: u64,
    /// The keyed state's checkpoints: how many, how many whole, their bytes
    /// and the time spent writing them.
    pub checkpoints: CheckpointsReport,
    /// Time spent loading assigned partitions' state from checkpoints, and
    /// the users they held.
    pub restore_seconds: f64,
    pub restored_users: u64,
    pub redis_updates: u64,
    /// Users written to Redis again because Redis had lost them (or never
    /// had them: a backfill's hand-off), from the keyed state.
    pub republished: u64,
}

pub struct FeaturesJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub module: PathBuf,
    pub options: RunOptions,
    pub on_mispartitioned: OnMispartitioned,
    pub runtime: crate::runtime::Settings,
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
        checkpoints: &Checkpoints,
        serving: &mut Serving,
        report: &mut FeaturesReport,
    ) -> Result<()> {
        for partition in consuming.assigned() {
            if self.states.contains_key(&partition) {
                continue;
            }
            let start = consuming
                .start_of(partition)
                .ok_or_else(|| Error::Other(format!("partition {partition} has no start")))?;
            let started = std::time::Instant::now();
            let state = checkpoints.resume(partition, start.committed, start.offset).await?;
            report.restore_seconds += started.elapsed().as_secs_f64();
            report.restored_users += state.latest.len() as u64;
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
    events: OpenEvents,
    /// Dead letters, sent once the object's range passed the fence.
    left_out: Vec<(Consumed, String)>,
    /// The state as of the object's first offset, when no checkpoint of
    /// that name exists or is on its way: saved before the object's fence.
    at_first: Option<Snapshot>,
}

impl OpenOutputs {
    /// The outputs of the records below `end`; the rest stays open.
    fn take_below(&mut self, end: i64) -> (Vec<FeatureEvent>, Vec<(Consumed, String)>) {
        let letters_cut = self.left_out.partition_point(|(r, _)| r.offset < end);
        (self.events.take_below(end), take_front(&mut self.left_out, letters_cut))
    }
}

/// The first `n` items of `items`. Taking them all moves the vector out, so
/// an open object's peak capacity is not kept on until the next one fills it.
fn take_front<T>(items: &mut Vec<T>, n: usize) -> Vec<T> {
    if n == items.len() {
        std::mem::take(items)
    } else {
        items.drain(..n).collect()
    }
}

/// What the feature logic made of one partition's records.
pub(super) struct Processed {
    pub events: Vec<FeatureEvent>,
    pub left_out: Vec<(Consumed, String)>,
    pub mispartitioned: u64,
}

/// The writer schemas a batch needs, fetched (`Decoder::prepare`) and
/// resolved (`Decoder::readers`).
#[derive(Clone, Copy)]
pub(super) struct Decoding<'a> {
    pub decoder: &'a Decoder,
    pub readers: &'a Readers<'a>,
}

/// Decodes one partition's records, checks their placement and counts them
/// through the guest over `state`: the same for the real-time path and for
/// the recount of a range an earlier claim cut short.
pub(super) fn process(
    records: &[&Consumed],
    partition: i32,
    state: &mut PartitionState,
    guest: &mut impl FeatureLogic,
    decoding: Decoding<'_>,
    placement: &mut Placement,
    on_mispartitioned: OnMispartitioned,
) -> Result<Processed> {
    let mut processed = Processed {
        events: Vec::new(),
        left_out: Vec::new(),
        mispartitioned: 0,
    };
    let mut inputs = TransactionColumns::with_capacity(records.len());
    let mut input_records = Vec::with_capacity(records.len());
    let values: Vec<Option<&[u8]>> = records.iter().map(|r| r.value.as_deref()).collect();
    let transactions = decoding.readers.transactions(decoding.decoder, &values);
    for (record, decoded) in records.iter().zip(transactions) {
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
        if let Err(too_large) = inputs.push(
            tx.user_id,
            tx.transaction_timestamp_millis,
            tx.amount,
            &tx.currency,
            tx.counterpart_id,
        ) {
            processed.left_out.push(((*record).clone(), too_large.to_string()));
            continue;
        }
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
    /// Read here (state of assigned partitions, recounts); the durable path
    /// writes them.
    checkpoints: Checkpoints,
    decoder: Decoder,
    serving: Serving,
    held: Held,
    open: HashMap<i32, OpenOutputs>,
    /// Hand-offs not yet superseded by a commit of this process.
    handoffs: BTreeMap<i32, i64>,
    report: FeaturesReport,
}

impl FeaturesJob {
    pub async fn run(self) -> Result<FeaturesReport> {
        let runtime = Runtime::new(&self.runtime)?;
        let (swap, guest) = HotSwap::<FeaturesWorld>::start(runtime, &self.module, &self.swap).await?;
        let name = checkpoint_name(&self.options.group, &self.kafka.topic);
        let checkpoints = Checkpoints::new(self.storage.clone(), &name).with_module(swap.sha256());
        let mut options = self.options.clone();
        options.handoffs = checkpoints.handoffs().await?;
        if !options.handoffs.is_empty() {
            tracing::info!(handoffs = ?options.handoffs, "a backfill left state for this group");
        }
        let handoffs = options.handoffs.clone();
        let sinks = Sinks {
            objects: ParquetSink::new(self.storage.clone(), DATASET),
            checkpoints: Some(Checkpoints::new(self.storage.clone(), &name).with_module(swap.sha256())),
        };
        let redis = self.options.redis.connect().await?;
        let consuming = Consuming::start(
            &self.kafka,
            options,
            JOB,
            FEATURES_USER,
            FEATURES_PASSWORD_VAR,
            sinks,
            Some(redis.clone()),
        )
        .await?;
        let serving = Serving::new(
            RedisSink::new(redis, &self.options.redis.redis_prefix),
            &name,
            self.options.redis.check_interval(),
        );
        let mut run = Run {
            decoder: Decoder::new(&self.registry),
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
        let (common, durable) = pipeline::run(consuming, &mut run).await?;
        Ok(FeaturesReport {
            run: common,
            checkpoints: durable.checkpoints,
            republished: run.serving.republished,
            ..run.report
        })
    }
}

impl Stages for Run {
    async fn prepare(&mut self, consuming: &mut Consuming) -> Result<()> {
        if consuming.assignment_changed() {
            // Partitions may have moved: state is reloaded from the
            // checkpoints, which the previous owners wrote last.
            self.held = Held::default();
            self.open.clear();
        }
        self.held
            .load_assigned(consuming, &self.checkpoints, &mut self.serving, &mut self.report)
            .await?;
        self.serving.check(&self.held.states).await?;
        Ok(())
    }

    async fn arrived(&mut self, consuming: &mut Consuming) -> Result<()> {
        // A staged module takes over once every open object has rolled, so
        // that each object is one module's.
        if self.swap.is_staged() {
            if consuming.nothing_open() {
                self.swap.swap_staged(&mut self.guest);
            } else {
                consuming.roll_all();
            }
        }
        self.realtime(consuming).await
    }

    async fn roll(&mut self, consuming: &mut Consuming, roll: Roll) -> Result<Outputs> {
        self.outputs_of(consuming, roll).await
    }

    fn records(&self) -> u64 {
        self.report.run.records
    }

    fn module(&self) -> (String, Vec<SwapRecord>) {
        (self.swap.sha256().to_string(), self.swap.swaps())
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
        // This micro-batch's events, for Redis.
        let mut fresh = Vec::new();
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
            let open = self.open.entry(partition).or_default();
            // These records open a new object: before its fence commits its
            // first offset, the state as of that offset must be checkpointed
            // under it (a fresh partition, an offset gap or skipped records
            // leave the last checkpoint under another name).
            if consuming.open_first(partition).is_none() && self.held.saved_at.get(&partition) != Some(&first) {
                state.next_offset = first;
                open.at_first = Some(state.snapshot());
                self.held.saved_at.insert(partition, first);
            }
            self.swap.took_over(partition, first);
            let processed = process(
                &records,
                partition,
                state,
                &mut self.guest,
                Decoding {
                    decoder: &self.decoder,
                    readers: &readers,
                },
                &mut placement,
                self.job.on_mispartitioned,
            )?;
            crate::fault::point("after-guest");
            state.next_offset = records[records.len() - 1].offset + 1;
            self.report.run.records += records.len() as u64;
            self.report.features += processed.events.len() as u64;
            self.report.mispartitioned += processed.mispartitioned;
            open.events.extend(&processed.events);
            open.left_out.extend(processed.left_out);
            fresh.extend(processed.events);
        }
        self.report.redis_updates += self.serving.write_latest(&fresh).await? as u64;
        crate::fault::point("after-redis");
        Ok(())
    }

    /// The durable outputs of a roll: each partition's dead letters, its
    /// features object and its state as of the range's end.
    async fn outputs_of(&mut self, consuming: &mut Consuming, roll: Roll) -> Result<Outputs> {
        let Roll { records, rebalances } = roll;
        let mut outputs = Outputs {
            partitions: Vec::new(),
            module_sha256: self.swap.sha256().to_string(),
        };
        // Each partition's records are dropped at the end of its turn.
        for packed in records {
            let (Some(first), Some(last)) = (packed.first_offset(), packed.last_offset()) else {
                continue;
            };
            let partition = packed.partition();
            let range = Range {
                partition,
                first,
                end: last + 1,
            };
            let open = self.open.entry(partition).or_default();
            let (events, dead_letters) = open.take_below(range.end);
            let checkpoint_at_first = open.at_first.take();
            let objects: Vec<Object> = (!events.is_empty())
                .then(|| Object {
                    folder: None,
                    first: range.first,
                    batch: feature_batch(&events),
                    metadata: vec![module_metadata(self.swap.sha256())],
                })
                .into_iter()
                .collect();
            let ahead = self
                .held
                .states
                .get(&partition)
                .is_some_and(|state| state.next_offset != range.end);
            let mut checkpoints = Vec::new();
            if ahead {
                // An earlier claim ended this range before the records the
                // real-time path counted since: recount it from the state as
                // of its first offset.
                // What the durable path holds may be the base it needs.
                consuming.wait_for_durable_path().await?;
                if consuming.is_void(rebalances) {
                    // The durable path dropped the rolls before this one, so
                    // the checkpoint to recount from may not exist; it
                    // drops this one too, and the partition is fetched
                    // again from the committed offset.
                    tracing::info!(partition, "a rebalance or a refused commit voids this roll");
                    return Ok(Outputs {
                        partitions: Vec::new(),
                        ..outputs
                    });
                }
                let mut state = match &checkpoint_at_first {
                    Some(snapshot) => self.checkpoints.state_of(partition, snapshot).await?,
                    None => {
                        self.checkpoints
                            .resume(partition, Some(range.first), range.first)
                            .await?
                    }
                };
                let records = packed.unpack();
                let records: Vec<&Consumed> = records.iter().collect();
                self.recount(consuming, partition, &mut state, &records).await?;
                state.next_offset = range.end;
                checkpoints.push(state.snapshot());
                self.held.saved_at.insert(partition, range.end);
                // The next object starts past an offset gap: its first offset
                // needs the checkpoint before its fence, too.
                if let Some(next) = consuming.open_first(partition).filter(|next| *next != range.end) {
                    state.next_offset = next;
                    self.open.entry(partition).or_default().at_first = Some(state.snapshot());
                    self.held.saved_at.insert(partition, next);
                }
            } else if let Some(state) = self.held.states.get_mut(&partition) {
                checkpoints.push(state.snapshot());
                self.held.saved_at.insert(partition, range.end);
            }
            outputs.partitions.push(PartitionOutputs {
                range,
                dead_letters,
                objects,
                checkpoint_at_first,
                checkpoints,
                retire_handoff: self.handoffs.remove(&partition).is_some(),
            });
        }
        Ok(outputs)
    }

    /// Counts `records` (a range from `state.next_offset`) into `state`.
    async fn recount(
        &mut self,
        consuming: &Consuming,
        partition: i32,
        state: &mut PartitionState,
        records: &[&Consumed],
    ) -> Result<()> {
        self.decoder.prepare(records.iter().map(|r| r.value.as_deref())).await?;
        let readers = self.decoder.readers();
        let mut placement = Placement::new(partition_count(consuming, &self.job.kafka.topic)?);
        process(
            records,
            partition,
            state,
            &mut self.guest,
            Decoding {
                decoder: &self.decoder,
                readers: &readers,
            },
            &mut placement,
            self.job.on_mispartitioned,
        )?;
        Ok(())
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
