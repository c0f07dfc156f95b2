//! One partition's replay: its archive objects, in offset order, cut into
//! chunks of whole objects (a pure function of the archive), each chunk fed
//! to the features guest and written as one features object, then the
//! partition's state checkpointed under the offset it reflects.

use std::sync::Arc;

use object_store::ObjectStoreExt;

use crate::config::Storage;
use crate::lineage::module_metadata;
use crate::model::FeatureEvent;
use crate::runtime::{FeaturesGuest, FeaturesModule, TransactionColumns};
use crate::sinks::parquet::ParquetSink;
use crate::state::{Checkpoints, PartitionState};

use super::archive::{ArchiveObject, ObjectRows};
use super::progress::Progress;
use super::{Error, Result, progress_name};
use crate::jobs::counting::{OnMispartitioned, Placement, count, mispartitioned_refusal};
use crate::jobs::features::feature_batch;

/// Records per guest call, as the live job's default batch size.
const GUEST_BATCH: usize = 50_000;
/// Rejected records named in the log per partition (the rest are counted).
const LOGGED_REJECTS: u64 = 10;

/// What every partition worker shares.
pub(super) struct Context {
    pub module: Arc<FeaturesModule>,
    pub archive: Storage,
    pub output: Storage,
    pub sink: ParquetSink,
    pub progress: Progress,
    pub topic: String,
    /// Event-time bounds, `since <= t < until`.
    pub since: i64,
    pub until: i64,
    pub rows_per_object: usize,
    pub on_mispartitioned: OnMispartitioned,
    pub module_sha256: String,
}

/// What one partition's replay did.
#[derive(Debug, Default)]
pub(super) struct PartitionOutcome {
    pub partition: i32,
    pub state: PartitionState,
    pub records: u64,
    pub objects: u64,
    pub duplicates: u64,
    pub outside_time_range: u64,
    pub mispartitioned: u64,
    pub rejected: u64,
    pub undecodable: u64,
}

/// Replays one partition's archive objects from its last progress
/// checkpoint, chunk by chunk.
pub(super) async fn replay_partition(
    context: Arc<Context>,
    partition: i32,
    objects: Vec<ArchiveObject>,
) -> Result<PartitionOutcome> {
    let progress =
        Checkpoints::new(context.output.clone(), &progress_name(&context.topic)).with_module(&context.module_sha256);
    let state = progress.latest(partition).await?.unwrap_or_default();
    if state.next_offset > 0 {
        tracing::info!(
            partition,
            offset = state.next_offset,
            "resuming from the backfill's checkpoint"
        );
        // A run killed between a checkpoint and its clean-up left older ones.
        progress.forget_below(partition, state.next_offset).await?;
    }
    let mut outcome = PartitionOutcome {
        partition,
        state,
        ..PartitionOutcome::default()
    };
    let mut guest = Some(FeaturesModule::guest(&context.module)?);
    // Chunks are cut over every object, done or not, so a resumed run cuts
    // the same chunks as an uninterrupted one; a chunk whose objects the
    // state already reflects is skipped either way.
    for chunk in chunks(objects, context.rows_per_object) {
        if chunk
            .iter()
            .all(|o| o.lineage.consumed.end <= outcome.state.next_offset)
        {
            continue;
        }
        let mut fetched = Vec::with_capacity(chunk.len());
        for object in chunk {
            let read_error = |e: object_store::Error| Error::Other(format!("reading {}: {e}", object.path));
            let bytes = context
                .archive
                .store
                .get(&object.path)
                .await
                .map_err(read_error)?
                .bytes()
                .await
                .map_err(read_error)?;
            fetched.push((object, bytes));
        }
        let rows: u64 = fetched.iter().map(|(o, _)| o.lineage.rows() as u64).sum();
        let first_offset = fetched[0].0.lineage.consumed.start.max(outcome.state.next_offset);
        // Decoding and the guest are CPU work: off the async workers.
        let work_context = context.clone();
        let mut work_guest = guest.take().ok_or_else(|| Error::Other("guest lost".into()))?;
        let mut work_outcome = std::mem::take(&mut outcome);
        let (returned_guest, returned_outcome, events) = tokio::task::spawn_blocking(move || {
            let events = replay_chunk(&work_context, &mut work_guest, &mut work_outcome, fetched);
            (work_guest, work_outcome, events)
        })
        .await
        .map_err(|e| Error::Other(format!("partition {partition}: worker failed: {e}")))?;
        guest = Some(returned_guest);
        outcome = returned_outcome;
        let events = events?;
        if !events.is_empty() {
            context
                .sink
                .write(
                    None,
                    partition,
                    first_offset,
                    &feature_batch(&events),
                    vec![module_metadata(&context.module_sha256)],
                )
                .await?;
            outcome.objects += 1;
        }
        crate::fault::point("backfill-after-object");
        progress.save(partition, &mut outcome.state).await?;
        progress.forget_below(partition, outcome.state.next_offset).await?;
        context.progress.add(rows);
    }
    Ok(outcome)
}

/// Whole archive objects, in order, cut after at least `rows` rows.
pub(super) fn chunks(objects: Vec<ArchiveObject>, rows: usize) -> Vec<Vec<ArchiveObject>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut current_rows = 0;
    for object in objects {
        current_rows += object.lineage.rows();
        current.push(object);
        if current_rows >= rows {
            chunks.push(std::mem::take(&mut current));
            current_rows = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Feeds one chunk's rows to the guest, a decoded batch at a time, and
/// returns their feature events; advances the outcome's state past every
/// offset the chunk consumed.
fn replay_chunk(
    context: &Context,
    guest: &mut FeaturesGuest,
    outcome: &mut PartitionOutcome,
    fetched: Vec<(ArchiveObject, bytes::Bytes)>,
) -> Result<Vec<FeatureEvent>> {
    let partition = outcome.partition;
    let mut next_offset = outcome.state.next_offset;
    let mut pending = Pending {
        inputs: TransactionColumns::with_capacity(GUEST_BATCH),
        offsets: Vec::with_capacity(GUEST_BATCH),
        events: Vec::with_capacity(fetched.iter().map(|(o, _)| o.lineage.rows()).sum()),
    };
    for (object, bytes) in fetched {
        // Rows the state already reflects are duplicates (an object
        // archived twice, overlapping objects): counted once.
        let duplicates = object.lineage.row_offsets().filter(|o| *o < next_offset).count();
        outcome.duplicates += duplicates as u64;
        let mut placement = Placement::new(object.lineage.partitions);
        let mut rows = ObjectRows::open(&object.path, bytes, &object.lineage)?;
        loop {
            let mut keep = |offset: i64, user_id: i32, time: i64| -> Result<bool> {
                if offset < next_offset {
                    return Ok(false);
                }
                if time < context.since || time >= context.until {
                    outcome.outside_time_range += 1;
                    return Ok(false);
                }
                if let Some(reason) = placement.misplaced(user_id, partition, offset) {
                    outcome.mispartitioned += 1;
                    return match context.on_mispartitioned {
                        OnMispartitioned::Fail => Err(mispartitioned_refusal(&reason)),
                        OnMispartitioned::DeadLetter => Ok(false),
                    };
                }
                Ok(true)
            };
            let more = rows.next_into(&mut pending.inputs, &mut pending.offsets, &mut keep)?;
            if pending.inputs.len() >= GUEST_BATCH {
                pending.count(guest, outcome);
            }
            if !more {
                break;
            }
        }
        if object.lineage.consumed.end > next_offset {
            outcome.undecodable += rows.undecodable;
        }
        next_offset = next_offset.max(object.lineage.consumed.end);
    }
    pending.count(guest, outcome);
    outcome.state.next_offset = next_offset;
    Ok(pending.events)
}

/// Transactions decoded and not yet counted, and the events of those
/// counted.
struct Pending {
    inputs: TransactionColumns,
    offsets: Vec<i64>,
    events: Vec<FeatureEvent>,
}

impl Pending {
    /// One guest call over the pending transactions.
    fn count(&mut self, guest: &mut FeaturesGuest, outcome: &mut PartitionOutcome) {
        if self.inputs.is_empty() {
            return;
        }
        let partition = outcome.partition;
        let counted = count(guest, &mut outcome.state, partition, &self.offsets, &self.inputs);
        for (index, reason) in counted.rejected {
            outcome.rejected += 1;
            if outcome.rejected <= LOGGED_REJECTS {
                tracing::warn!(partition, offset = self.offsets[index], %reason, "record rejected by the module");
            }
        }
        outcome.records += self.inputs.len() as u64;
        self.events.extend(counted.events);
        self.inputs.clear();
        self.offsets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::backfill::archive;
    use crate::lineage::ArchiveLineage;

    pub(crate) fn object(consumed: std::ops::Range<i64>, rows: &[i64]) -> ArchiveObject {
        ArchiveObject {
            path: format!("t/partition=0/t+0+{:020}.parquet", consumed.start).into(),
            lineage: ArchiveLineage::new("t", 0, 1, consumed, rows, &[]),
        }
    }

    #[test]
    fn chunks_are_whole_objects_of_at_least_the_asked_rows() {
        let objects = vec![
            object(0..3, &[0, 1, 2]),
            object(3..5, &[3, 4]),
            object(5..9, &[5, 6, 8]),
            object(9..10, &[9]),
        ];
        let sizes: Vec<Vec<i64>> = chunks(objects, 4)
            .iter()
            .map(|c| c.iter().map(|o| o.lineage.consumed.start).collect())
            .collect();
        assert_eq!(sizes, vec![vec![0, 3], vec![5, 9]]);
    }

    #[test]
    fn gaps_are_offsets_no_object_consumed() {
        let objects = vec![object(0..10, &[0]), object(5..12, &[6]), object(15..20, &[15])];
        assert_eq!(archive::gaps(&objects), vec![12..15]);
    }
}
