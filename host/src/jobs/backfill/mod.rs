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
//! (`_checkpoints/_backfill/<topic>/`, `replay`); a restarted run resumes
//! from there and cuts the same chunks, so it rewrites the same objects with
//! the same bytes. A row whose offset the state already reflects (an object
//! archived twice, overlapping objects) is skipped, so it is counted once.
//! `output` guards what the backfill may write and hands the final state off
//! to a live group.

mod archive;
mod output;
mod progress;
mod replay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::Storage;
use crate::runtime::{FeaturesModule, Runtime};
use crate::sinks::parquet::ParquetSink;
use crate::state::Checkpoints;

use self::archive::ArchiveObject;
use self::output::{Output, Settings};
use self::progress::Progress;
use self::replay::{Context, PartitionOutcome, replay_partition};
use super::counting::OnMispartitioned;
use super::features::DATASET;
use super::{Error, Result};

/// One of `count` disjoint sets of partitions: partition `p` belongs to
/// shard `p % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
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
    /// The backup job's output root (it holds `<topic>/[event_date=D/]partition=P/…`).
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
    /// The guest sandbox's limits and the module cache.
    pub runtime: crate::runtime::Settings,
    /// How often the progress line is logged without a terminal.
    pub progress_every: std::time::Duration,
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
    /// Rows with a null among the transaction's fields (the live job
    /// dead-letters such records).
    pub undecodable: u64,
    /// Records the backup job consumed but did not archive (it dead-lettered
    /// them or its guest dropped them): the backfill cannot count them.
    pub not_archived: u64,
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

impl Backfill {
    pub async fn run(self) -> Result<BackfillReport> {
        let started = Instant::now();
        self.refuse_inexact_handoff()?;
        let runtime = Runtime::new(&self.runtime)?;
        let module = FeaturesModule::compile(&runtime, &self.module)?;
        let module_sha256 = module.file().sha256.clone();
        let settings = Settings {
            archive: self.archive.url.clone(),
            topic: self.topic.clone(),
            module_sha256: module_sha256.clone(),
            since: self.since,
            until: self.until,
            rows_per_object: self.rows_per_object,
            mispartitioned_records: format!("{:?}", self.on_mispartitioned),
        };
        let mut report = BackfillReport {
            module_sha256: module_sha256.clone(),
            services: vec!["object storage"],
            ..BackfillReport::default()
        };
        let partitions = archive::survey(&self.archive, &self.topic, self.shard).await?;
        if partitions.is_empty() {
            let message = format!(
                "no archive objects of topic {} (shard {}/{}) under {}",
                self.topic, self.shard.index, self.shard.count, self.archive.url
            );
            if self.shard.count == 1 {
                return Err(Error::Other(message));
            }
            // More shards than archived partitions: this one has nothing to do.
            tracing::warn!("{message}");
            return Ok(report);
        }
        self.check_archive(&partitions)?;
        let output = Output {
            storage: self.output.clone(),
            topic: self.topic.clone(),
        };
        for partition in partitions.keys() {
            output.claim(*partition, &settings, self.restart).await?;
        }

        // Rows an earlier run finished, from each partition's progress.
        let mut total = 0;
        let mut already_done = 0;
        let progress_checkpoints = Checkpoints::new(self.output.clone(), &progress_name(&self.topic));
        for (partition, objects) in &partitions {
            let done_to = progress_checkpoints.offsets(*partition).await?.last().copied();
            for object in objects {
                let rows = object.lineage.rows() as u64;
                total += rows;
                report.not_archived += object.lineage.excluded_records();
                if done_to.is_some_and(|done| object.lineage.consumed.end <= done) {
                    already_done += rows;
                }
            }
        }
        if report.not_archived > 0 {
            tracing::warn!(
                records = report.not_archived,
                "the backup job consumed records it did not archive (dead-lettered, or dropped by its guest); the \
                 backfill cannot count them, the live job counts those it can decode"
            );
        }
        report.archive_objects = partitions.values().map(|o| o.len() as u64).sum();
        report.already_done = already_done;
        let partition_count = partitions
            .values()
            .flatten()
            .map(|o| o.lineage.partitions)
            .max()
            .unwrap_or_default();
        let (progress, _reporter) = Progress::start(total, already_done, self.progress_every);
        let context = Arc::new(Context {
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
            module_sha256: module_sha256.clone(),
        });
        tracing::info!(
            partitions = ?partitions.keys().collect::<Vec<_>>(),
            archive_objects = report.archive_objects,
            records = total,
            already_done,
            module_sha256 = %module_sha256,
            "backfill starting"
        );
        let mut outcomes: Vec<PartitionOutcome> = futures::stream::iter(partitions)
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
            report.undecodable += o.undecodable;
        }
        if let Some(group) = &self.handoff_group {
            report.handoff = Some(
                self.hand_off(&output, group, outcomes, partition_count, &module_sha256)
                    .await?,
            );
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.records_per_s = report.records as f64 / report.seconds.max(1e-9);
        Ok(report)
    }

    /// A hand-off must be the state of every record: not of a time window,
    /// nor of an archive with holes.
    fn refuse_inexact_handoff(&self) -> Result<()> {
        if self.handoff_group.is_none() {
            return Ok(());
        }
        if self.since.is_some() || self.until.is_some() {
            return Err(Error::Other(
                "--handoff-group needs the whole archive: a state bounded by --since/--until does not match the \
                 offsets a live job would continue from"
                    .into(),
            ));
        }
        if self.allow_gaps {
            return Err(Error::Other(
                "--handoff-group cannot be combined with --allow-gaps: a live job would continue from counts that \
                 miss the gaps' records"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses an archive that misses offsets between two of a partition's
    /// objects (deleted objects, a backup that skipped data), unless allowed;
    /// says where each partition's archive starts when not at offset 0
    /// (retention may have deleted records before the backup job read them).
    fn check_archive(&self, partitions: &BTreeMap<i32, Vec<ArchiveObject>>) -> Result<()> {
        let mut found = Vec::new();
        for (partition, objects) in partitions {
            if let Some(first) = objects.first().map(|o| o.lineage.consumed.start)
                && first > 0
            {
                tracing::warn!(
                    partition,
                    first_offset = first,
                    "the archive of this partition starts after offset 0: earlier records are not in it"
                );
            }
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

    /// Hands each of the shard's partitions off to `group`: the replayed
    /// ones at their final state, partitions of the topic the archive holds
    /// nothing of at offset 0 with no counts (so the live job reads them
    /// from the start, or refuses if retention deleted it).
    async fn hand_off(
        &self,
        output: &Output,
        group: &str,
        mut outcomes: Vec<PartitionOutcome>,
        partition_count: i32,
        module_sha256: &str,
    ) -> Result<HandoffReport> {
        for partition in (0..partition_count).filter(|p| self.shard.holds(*p)) {
            if !outcomes.iter().any(|o| o.partition == partition) {
                outcomes.push(PartitionOutcome {
                    partition,
                    ..PartitionOutcome::default()
                });
            }
        }
        let mut offsets = BTreeMap::new();
        for outcome in &outcomes {
            output
                .hand_off(
                    group,
                    outcome.partition,
                    &outcome.state,
                    &self.archive.url,
                    module_sha256,
                )
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
