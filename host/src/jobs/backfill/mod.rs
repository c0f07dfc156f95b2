//! The backfill: the live features module replayed over the whole backup
//! archive, writing features Parquet only. It opens no Kafka or Redis
//! connection: the archive and the output are object storage.
//!
//! Each partition is replayed in offset order, as the live job reads it,
//! through the same counting code (`counting`), so its rows equal the live
//! rows. Partitions are independent: they run in parallel, one worker and
//! one guest instance each, and `--shard i/n` splits them across machines.
//!
//! Resumable and idempotent: a partition's work is cut into chunks of whole
//! archive objects (at least `rows_per_object` rows), a pure function of the
//! archive. After each chunk's features object is written, the partition's
//! keyed state is checkpointed under the offset it reflects
//! (`_checkpoints/_backfill/<topic>/`); a restarted run resumes from there
//! and cuts the same chunks, so it rewrites the same objects with the same
//! bytes. A row whose offset the state already reflects (an object archived
//! twice, overlapping objects) is skipped, so it is counted once.

mod archive;
mod progress;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Storage;
use crate::model::FeatureEvent;
use crate::runtime::{FeaturesGuest, FeaturesModule, Runtime, WitTransaction};
use crate::sinks::parquet::ParquetSink;
use crate::state::{Checkpoints, Handoff, PartitionState};

use self::archive::ArchiveObject;
use self::progress::Progress;
use super::counting::{OnMispartitioned, Placement, count, mispartitioned_refusal};
use super::features::{DATASET, checkpoint_name, feature_batch};
use super::{Error, Result};

/// Records per guest call, as the live job's default batch size.
const GUEST_BATCH: usize = 50_000;
/// Rejected records named in the log per partition (the rest are counted).
const LOGGED_REJECTS: u64 = 10;

/// One of `count` disjoint sets of partitions: partition `p` belongs to
/// shard `p % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn holds(&self, partition: i32) -> bool {
        partition as u32 % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `i/n` with `0 <= i < n`.
    fn from_str(raw: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{raw:?} is not a shard i/n with 0 <= i < n");
        let (index, count) = raw.split_once('/').ok_or_else(bad)?;
        let shard = Shard {
            index: index.trim().parse().map_err(|_| bad())?,
            count: count.trim().parse().map_err(|_| bad())?,
        };
        if shard.count == 0 || shard.index >= shard.count {
            return Err(bad());
        }
        Ok(shard)
    }
}

/// A backfill run, as `sluice backfill` configures it.
pub struct Backfill {
    pub module: PathBuf,
    /// The backup job's output root (it holds `<topic>/partition=P/…`).
    pub archive: Storage,
    /// Where the features dataset (and the progress checkpoints) go.
    pub output: Storage,
    pub topic: String,
    pub shard: Shard,
    /// Event-time bounds (milliseconds), `since <= t < until`.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Write the final state as this live group's hand-off checkpoint.
    pub handoff_group: Option<String>,
    /// Partitions replayed at once.
    pub parallelism: usize,
    /// Features rows per object at least (whole archive objects per chunk).
    pub rows_per_object: usize,
    pub on_mispartitioned: OnMispartitioned,
    /// Go on when the archive misses offsets between two objects.
    pub allow_gaps: bool,
    /// Forget earlier progress and replay from the archive's start.
    pub restart: bool,
}

/// What a run did, printed as JSON at the end.
#[derive(Debug, Default, Serialize)]
pub struct BackfillReport {
    /// Archive rows fed to the module by this run.
    pub records: u64,
    /// Users with a count in the replayed partitions.
    pub users: u64,
    /// Features objects written by this run.
    pub objects: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub partitions: Vec<i32>,
    pub archive_objects: u64,
    /// Archive rows an earlier run of the same backfill had done.
    pub already_done: u64,
    /// Rows whose partition and offset had been counted already.
    pub duplicates: u64,
    /// Rows outside `--since/--until`.
    pub outside_time_range: u64,
    /// Rows not on their user's partition, left out of the counts.
    pub mispartitioned: u64,
    /// Rows the module rejected (the live job dead-letters them).
    pub rejected: u64,
    pub module_sha256: String,
    pub handoff: Option<HandoffReport>,
    /// What the run connected to: object storage only.
    pub services: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct HandoffReport {
    pub group: String,
    /// Where the live job starts, per partition.
    pub offsets: BTreeMap<i32, i64>,
}

/// The settings a backfill's progress belongs to; resuming under other
/// settings would mix two backfills in one output.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RunSettings {
    archive: String,
    topic: String,
    module_sha256: String,
    since: Option<i64>,
    until: Option<i64>,
    rows_per_object: usize,
    mispartitioned_records: String,
}

/// What every partition worker shares.
struct Context {
    runtime: Runtime,
    module: FeaturesModule,
    archive: Storage,
    output: Storage,
    sink: ParquetSink,
    progress: Progress,
    topic: String,
    since: i64,
    until: i64,
    rows_per_object: usize,
    on_mispartitioned: OnMispartitioned,
}

/// What one partition's replay did.
#[derive(Debug, Default)]
struct PartitionOutcome {
    partition: i32,
    state: PartitionState,
    records: u64,
    objects: u64,
    duplicates: u64,
    outside_time_range: u64,
    mispartitioned: u64,
    rejected: u64,
}

impl Backfill {
    pub async fn run(self) -> Result<BackfillReport> {
        let started = Instant::now();
        if self.handoff_group.is_some() && (self.since.is_some() || self.until.is_some()) {
            return Err(Error::Other(
                "--handoff-group needs the whole archive: a state bounded by --since/--until does not match the \
                 offsets a live job would continue from"
                    .into(),
            ));
        }
        let module_sha256 = sha256_file(&self.module)?;
        let runtime = Runtime::new(Default::default())?;
        let module = FeaturesModule::compile(&runtime, &self.module)?;
        let settings = RunSettings {
            archive: self.archive.url.clone(),
            topic: self.topic.clone(),
            module_sha256: module_sha256.clone(),
            since: self.since,
            until: self.until,
            rows_per_object: self.rows_per_object,
            mispartitioned_records: format!("{:?}", self.on_mispartitioned),
        };
        let mut partitions = archive::survey(&self.archive, &self.topic, self.shard).await?;
        if partitions.is_empty() {
            return Err(Error::Other(format!(
                "no archive objects of topic {} (shard {}/{}) under {}",
                self.topic, self.shard.index, self.shard.count, self.archive.url
            )));
        }
        self.check_gaps(&partitions)?;
        self.claim_output(&settings, partitions.keys().copied()).await?;

        // Rows an earlier run finished, from each partition's progress.
        let mut total = 0;
        let mut already_done = 0;
        let progress_checkpoints = Checkpoints::new(self.output.clone(), &progress_name(&self.topic));
        for (partition, objects) in &partitions {
            let done_to = match progress_checkpoints.offsets(*partition).await?.last() {
                Some(offset) => *offset,
                None => i64::MIN,
            };
            for object in objects {
                let rows = object.lineage.rows() as u64;
                total += rows;
                if object.lineage.consumed.end <= done_to {
                    already_done += rows;
                }
            }
        }
        let archive_objects = partitions.values().map(|o| o.len() as u64).sum();
        let (progress, _reporter) = Progress::start(total, already_done);
        let context = Arc::new(Context {
            runtime,
            module,
            archive: self.archive.clone(),
            output: self.output.clone(),
            sink: ParquetSink::new(self.output.clone(), DATASET),
            progress: progress.clone(),
            topic: self.topic.clone(),
            since: self.since.unwrap_or(i64::MIN),
            until: self.until.unwrap_or(i64::MAX),
            rows_per_object: self.rows_per_object.max(1),
            on_mispartitioned: self.on_mispartitioned,
        });
        tracing::info!(
            partitions = ?partitions.keys().collect::<Vec<_>>(),
            archive_objects,
            records = total,
            already_done,
            module_sha256 = %module_sha256,
            "backfill starting"
        );
        let outcomes: Vec<PartitionOutcome> = futures::stream::iter(std::mem::take(&mut partitions))
            .map(|(partition, objects)| {
                let context = context.clone();
                async move {
                    tokio::spawn(replay_partition(context, partition, objects))
                        .await
                        .map_err(|e| Error::Other(format!("partition {partition}: worker failed: {e}")))?
                }
            })
            .buffer_unordered(self.parallelism.max(1))
            .try_collect()
            .await?;
        progress.finish();

        let mut report = BackfillReport {
            archive_objects,
            already_done,
            module_sha256: module_sha256.clone(),
            services: vec!["object storage"],
            ..BackfillReport::default()
        };
        let mut outcomes = outcomes;
        outcomes.sort_by_key(|o| o.partition);
        for o in &outcomes {
            report.partitions.push(o.partition);
            report.records += o.records;
            report.users += o.state.values.len() as u64;
            report.objects += o.objects;
            report.duplicates += o.duplicates;
            report.outside_time_range += o.outside_time_range;
            report.mispartitioned += o.mispartitioned;
            report.rejected += o.rejected;
        }
        if let Some(group) = &self.handoff_group {
            report.handoff = Some(self.hand_off(group, &outcomes, &module_sha256).await?);
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.records_per_s = report.records as f64 / report.seconds.max(1e-9);
        Ok(report)
    }

    /// Refuses an archive that misses offsets between two of a partition's
    /// objects (deleted objects, a backup that skipped data), unless allowed.
    fn check_gaps(&self, partitions: &BTreeMap<i32, Vec<ArchiveObject>>) -> Result<()> {
        let mut found = Vec::new();
        for (partition, objects) in partitions {
            for gap in archive::gaps(objects) {
                found.push(format!("partition {partition}: offsets {}..{}", gap.start, gap.end));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        let shown = found.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        if self.allow_gaps {
            tracing::warn!(gaps = found.len(), first = %shown, "the archive misses offsets; counting without them (--allow-gaps)");
            return Ok(());
        }
        Err(Error::Other(format!(
            "the archive under {} misses offsets that no object consumed ({} gaps: {shown}). Counts past a gap would \
             be too low. Restore the missing objects, or run with --allow-gaps to count without them.",
            self.archive.url,
            found.len()
        )))
    }

    /// Records the run's settings next to its progress, refusing to resume
    /// progress made under other settings; `--restart` deletes the progress
    /// and the features objects of the shard's partitions first.
    async fn claim_output(&self, settings: &RunSettings, partitions: impl Iterator<Item = i32>) -> Result<()> {
        let path = self
            .output
            .path(&format!("_checkpoints/{}/run.json", progress_name(&self.topic)));
        let storage_error = |e: object_store::Error| Error::Other(format!("{path}: {e}"));
        if self.restart {
            for partition in partitions {
                let progress = self.output.path(&format!(
                    "_checkpoints/{}/partition={partition}",
                    progress_name(&self.topic)
                ));
                let features = self.output.path(&format!("{DATASET}/partition={partition}"));
                self.output.delete_under(&progress).await?;
                self.output.delete_under(&features).await?;
            }
        } else {
            match self.output.store.get(&path).await {
                Ok(found) => {
                    let bytes = found.bytes().await.map_err(storage_error)?;
                    let earlier: RunSettings =
                        serde_json::from_slice(&bytes).map_err(|e| Error::Other(format!("{path}: {e}")))?;
                    if &earlier != settings {
                        return Err(Error::Other(format!(
                            "{} already holds a backfill of topic {} with other settings ({earlier:?}); this run's \
                             are {settings:?}. Use another --output-url, or --restart to replace it.",
                            self.output.url, self.topic
                        )));
                    }
                }
                Err(object_store::Error::NotFound { .. }) => self.refuse_foreign_features(partitions).await?,
                Err(e) => return Err(storage_error(e)),
            }
        }
        let bytes = serde_json::to_vec_pretty(settings).map_err(|e| Error::Other(e.to_string()))?;
        self.output
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    /// A first backfill into an output whose features dataset already holds
    /// objects of its partitions (a live job's) would add a second row for
    /// the same records under other names: refused.
    async fn refuse_foreign_features(&self, partitions: impl Iterator<Item = i32>) -> Result<()> {
        for partition in partitions {
            let folder = self.output.path(&format!("{DATASET}/partition={partition}"));
            let mut listing = self.output.store.list(Some(&folder));
            if let Some(object) = listing.next().await {
                let object = object.map_err(|e| Error::Other(format!("listing {folder}: {e}")))?;
                return Err(Error::Other(format!(
                    "{} already holds features of partition {partition} that no backfill of these settings wrote \
                     ({}); the backfill's rows would duplicate them. Use another --output-url, or --restart to \
                     replace them.",
                    self.output.url, object.location
                )));
            }
        }
        Ok(())
    }

    /// Writes each replayed partition's final state as `group`'s hand-off
    /// checkpoint, under the output's live checkpoints.
    async fn hand_off(&self, group: &str, outcomes: &[PartitionOutcome], module_sha256: &str) -> Result<HandoffReport> {
        let mut checkpoints = Checkpoints::new(self.output.clone(), &checkpoint_name(group, &self.topic));
        let mut offsets = BTreeMap::new();
        for outcome in outcomes {
            let handoff = Handoff {
                offset: outcome.state.next_offset,
                archive: self.archive.url.clone(),
                module_sha256: module_sha256.to_string(),
            };
            checkpoints
                .save_handoff(outcome.partition, &outcome.state, &handoff)
                .await?;
            offsets.insert(outcome.partition, outcome.state.next_offset);
        }
        tracing::info!(group, ?offsets, "hand-off checkpoints written");
        Ok(HandoffReport {
            group: group.to_string(),
            offsets,
        })
    }
}

/// The progress checkpoints' name of a topic's backfill.
fn progress_name(topic: &str) -> String {
    format!("_backfill/{topic}")
}

fn sha256_file(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::Other(format!("reading module {}: {e}", path.display())))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Replays one partition's archive objects from its last progress
/// checkpoint, chunk by chunk.
async fn replay_partition(
    context: Arc<Context>,
    partition: i32,
    objects: Vec<ArchiveObject>,
) -> Result<PartitionOutcome> {
    let mut progress = Checkpoints::new(context.output.clone(), &progress_name(&context.topic));
    let state = progress.latest(partition).await?.unwrap_or_default();
    if state.next_offset > 0 {
        tracing::info!(
            partition,
            offset = state.next_offset,
            "resuming from the backfill's checkpoint"
        );
    }
    let mut outcome = PartitionOutcome {
        partition,
        state,
        ..PartitionOutcome::default()
    };
    let mut guest = Some(context.module.instantiate(&context.runtime)?);
    let pending: Vec<ArchiveObject> = objects
        .into_iter()
        .filter(|o| o.lineage.consumed.end > outcome.state.next_offset)
        .collect();
    for chunk in chunks(pending, context.rows_per_object) {
        let mut fetched = Vec::with_capacity(chunk.len());
        for object in chunk {
            let bytes = context
                .archive
                .store
                .get(&object.path)
                .await
                .map_err(|e| Error::Other(format!("reading {}: {e}", object.path)))?
                .bytes()
                .await
                .map_err(|e| Error::Other(format!("reading {}: {e}", object.path)))?;
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
                .write(partition, first_offset, &feature_batch(&events), Vec::new())
                .await?;
            outcome.objects += 1;
        }
        crate::fault::point("backfill-after-object");
        progress.save(partition, &outcome.state).await?;
        progress.forget_below(partition, outcome.state.next_offset).await?;
        context.progress.add(rows);
    }
    Ok(outcome)
}

/// Whole archive objects, in order, cut after at least `rows` rows.
fn chunks(objects: Vec<ArchiveObject>, rows: usize) -> Vec<Vec<ArchiveObject>> {
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

/// Feeds one chunk's rows to the guest and returns their feature events;
/// advances the outcome's state past every offset the chunk consumed.
fn replay_chunk(
    context: &Context,
    guest: &mut FeaturesGuest,
    outcome: &mut PartitionOutcome,
    fetched: Vec<(ArchiveObject, bytes::Bytes)>,
) -> Result<Vec<FeatureEvent>> {
    let partition = outcome.partition;
    let mut next_offset = outcome.state.next_offset;
    let mut offsets: Vec<i64> = Vec::new();
    let mut inputs: Vec<WitTransaction> = Vec::new();
    for (object, bytes) in fetched {
        let rows = archive::transactions(&object.path, bytes, &object.lineage)?;
        let mut placement = Placement::new(object.lineage.partitions);
        for (offset, row) in rows.offsets.into_iter().zip(rows.rows) {
            if offset < next_offset {
                outcome.duplicates += 1;
                continue;
            }
            next_offset = offset + 1;
            if row.transaction_timestamp_millis < context.since || row.transaction_timestamp_millis >= context.until {
                outcome.outside_time_range += 1;
                continue;
            }
            if let Some(reason) = placement.misplaced(row.user_id, partition, offset) {
                outcome.mispartitioned += 1;
                match context.on_mispartitioned {
                    OnMispartitioned::Fail => return Err(mispartitioned_refusal(&reason)),
                    OnMispartitioned::DeadLetter => continue,
                }
            }
            offsets.push(offset);
            inputs.push(row);
        }
        next_offset = next_offset.max(object.lineage.consumed.end);
    }
    let mut events = Vec::with_capacity(inputs.len());
    for (offsets, inputs) in offsets.chunks(GUEST_BATCH).zip(inputs.chunks(GUEST_BATCH)) {
        let counted = count(guest, &mut outcome.state, partition, offsets, inputs)?;
        for (index, reason) in counted.rejected {
            outcome.rejected += 1;
            if outcome.rejected <= LOGGED_REJECTS {
                tracing::warn!(partition, offset = offsets[index], %reason, "record rejected by the module");
            }
        }
        events.extend(counted.events);
    }
    outcome.records += inputs.len() as u64;
    outcome.state.next_offset = next_offset;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::ArchiveLineage;

    fn object(consumed: std::ops::Range<i64>, rows: &[i64]) -> ArchiveObject {
        ArchiveObject {
            path: format!("t/partition=0/t+0+{:020}.parquet", consumed.start).into(),
            lineage: ArchiveLineage::new("t", 0, 1, consumed, rows),
        }
    }

    #[test]
    fn shards_split_partitions_without_overlap() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().expect("shard")).collect();
        for partition in 0..12 {
            assert_eq!(shards.iter().filter(|s| s.holds(partition)).count(), 1);
        }
        for bad in ["3/3", "1/0", "x/2", "2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
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
