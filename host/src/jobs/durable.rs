//! The durable path: a task of its own that makes each roll durable, in the
//! order rolls were made, while the consumer goes on fetching and the
//! real-time path goes on writing Redis.
//!
//! Per roll: the checkpoints its fence needs, the fence (a commit of its
//! first offsets), the dead letters, then per partition, the partitions side
//! by side, the Parquet objects and the checkpoint of the state as of the
//! range's end, then the commit of the ranges' ends. Commits are sent by the consumer's own task
//! (`Consuming::serve_commits`), between two polls, and only when no
//! rebalance happened since the roll's records were fetched: a roll of an
//! assignment that is gone is dropped (`Commit::Stale`), and so is every
//! roll after a fence the group refused, until the next assignment. Its
//! partitions are fetched again by whoever owns them, from the committed
//! offsets.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use futures::StreamExt;
use parquet::file::metadata::KeyValue;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dlq::DeadLetters;
use crate::kafka::{Commit, Consumed, Position};
use crate::sinks::parquet::ParquetSink;
use crate::state::{Checkpoints, Snapshot};

use super::claims::{Claims, Range};
use super::{Error, Result};

/// Pause before a commit that failed for a reason worth retrying is sent
/// again.
const COMMIT_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What the job made of one roll, for the durable path to write.
pub struct Outputs {
    pub partitions: Vec<PartitionOutputs>,
    /// The module that computed them, recorded in the checkpoints.
    pub module_sha256: String,
}

/// One partition's outputs of a roll: its range `[first, end)`.
pub struct PartitionOutputs {
    pub range: Range,
    /// Records left out, with the reason: sent once the range passed its fence.
    pub dead_letters: Vec<(Consumed, String)>,
    /// The Parquet objects of the range, each named by its first offset.
    pub objects: Vec<Object>,
    /// The state as of `range.first`, when no checkpoint of that name exists
    /// yet: the fence makes the group resume there, so it is saved first.
    pub checkpoint_at_first: Option<Snapshot>,
    /// The state as of `range.end` (its `next_offset`), saved after the
    /// object; more to save under other offsets may follow (the first
    /// offset of the next object, past an offset gap).
    pub checkpoints: Vec<Snapshot>,
    /// The range passes a backfill's hand-off mark: delete the mark.
    pub retire_handoff: bool,
}

/// One Parquet object of a roll.
pub struct Object {
    /// The Hive folder between the dataset and the partition, if any
    /// (`event_date=…`).
    pub folder: Option<String>,
    /// The first offset it covers, which names it.
    pub first: i64,
    pub batch: RecordBatch,
    pub metadata: Vec<KeyValue>,
}

/// A commit the durable path asks the consumer's task to send.
pub struct CommitRequest {
    pub positions: Vec<Position>,
    /// The rebalance count of the records the commit covers.
    pub rebalances: u64,
    pub reply: oneshot::Sender<std::result::Result<Commit, String>>,
}

/// What the durable path did, for the job's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct DurableReport {
    pub files: u64,
    pub dead_lettered: u64,
    pub checkpoints: CheckpointsReport,
    /// When the last commit of a roll's ends went through.
    pub last_commit_at: Option<Instant>,
}

/// The checkpoints the durable path wrote.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CheckpointsReport {
    pub written: u64,
    /// Of those, whole states (the rest are deltas).
    pub whole: u64,
    pub bytes: u64,
    /// Of those, in whole states.
    pub whole_bytes: u64,
    /// Spent encoding and storing them.
    pub seconds: f64,
}

impl CheckpointsReport {
    fn add(&mut self, whole: bool, bytes: usize, started: Instant) {
        let kind = if whole { "whole" } else { "delta" };
        metrics::counter!(crate::ops::metrics::CHECKPOINTS, "kind" => kind).increment(1);
        metrics::counter!(crate::ops::metrics::CHECKPOINT_BYTES).increment(bytes as u64);
        self.written += 1;
        self.whole += u64::from(whole);
        self.bytes += bytes as u64;
        if whole {
            self.whole_bytes += bytes as u64;
        }
        self.seconds += started.elapsed().as_secs_f64();
    }

    fn merge(&mut self, other: &Self) {
        self.written += other.written;
        self.whole += other.whole;
        self.bytes += other.bytes;
        self.whole_bytes += other.whole_bytes;
        self.seconds += other.seconds;
    }
}

/// Where the durable path writes.
pub struct Sinks {
    pub objects: ParquetSink,
    /// The keyed state's checkpoints, for a job that has keyed state.
    pub checkpoints: Option<Checkpoints>,
}

/// A roll on its way to the durable path, with the rebalance count of its
/// records.
pub(super) struct Queued {
    pub outputs: Outputs,
    pub rebalances: u64,
}

/// The durable path's task, fed by `Consuming`.
pub(super) struct DurablePath {
    sinks: Sinks,
    claims: Claims,
    dead_letters: DeadLetters,
    commits: mpsc::UnboundedSender<CommitRequest>,
    /// Rolls made durable (or dropped) so far.
    finished: watch::Sender<u64>,
    /// The rebalance count of a fence the group refused: rolls of that
    /// assignment are dropped unwritten.
    refused: Option<u64>,
    report: DurableReport,
}

impl DurablePath {
    pub(super) fn new(
        sinks: Sinks,
        claims: Claims,
        dead_letters: DeadLetters,
        commits: mpsc::UnboundedSender<CommitRequest>,
        finished: watch::Sender<u64>,
    ) -> Self {
        Self {
            sinks,
            claims,
            dead_letters,
            commits,
            finished,
            refused: None,
            report: DurableReport::default(),
        }
    }

    /// Writes rolls until the consumer closes the queue.
    pub(super) async fn run(mut self, mut rolls: mpsc::UnboundedReceiver<Queued>) -> Result<DurableReport> {
        while let Some(roll) = rolls.recv().await {
            self.write(roll).await?;
            self.finished.send_modify(|n| *n += 1);
        }
        Ok(self.report)
    }

    async fn write(&mut self, roll: Queued) -> Result<()> {
        let Queued {
            mut outputs,
            rebalances,
        } = roll;
        if self.refused == Some(rebalances) {
            return Ok(());
        }
        if let Some(checkpoints) = &mut self.sinks.checkpoints {
            checkpoints.set_module(&outputs.module_sha256);
            for partition in &mut outputs.partitions {
                if let Some(snapshot) = partition.checkpoint_at_first.take() {
                    let (started, whole) = (Instant::now(), snapshot.base.is_none());
                    let bytes = checkpoints.write(partition.range.partition, snapshot).await?;
                    self.report.checkpoints.add(whole, bytes, started);
                }
            }
        }
        let firsts = outputs.partitions.iter().map(|p| Position {
            partition: p.range.partition,
            offset: p.range.first,
        });
        match self.commit(firsts.collect(), rebalances).await? {
            Commit::Done => {}
            Commit::Fenced => {
                self.refused = Some(rebalances);
                return Ok(());
            }
            Commit::Stale => {
                tracing::info!("a rebalance came before this roll's fence: its partitions are fetched again");
                return Ok(());
            }
        }
        for partition in &outputs.partitions {
            self.claims
                .forget_below(partition.range.partition, partition.range.first)
                .await?;
        }
        let ends: Vec<Position> = outputs
            .partitions
            .iter()
            .map(|p| Position {
                partition: p.range.partition,
                offset: p.range.end,
            })
            .collect();
        // Dead letters first (one producer, in partition order), then each
        // partition's objects and checkpoints, the partitions side by side:
        // nothing orders one partition's writes after another's, only all
        // of them before the commit of the ends.
        for partition in &outputs.partitions {
            for (record, reason) in &partition.dead_letters {
                self.dead_letters.send(record, reason).await?;
            }
            self.report.dead_lettered += partition.dead_letters.len() as u64;
        }
        // As many at once as there are cores: each encodes its objects on
        // the blocking pool and holds them until they are stored. Every
        // write runs to its end before an error is returned, so none is
        // cut off mid-upload.
        let sinks = &self.sinks;
        let written: Vec<Result<PartitionWritten>> = futures::stream::iter(outputs.partitions)
            .map(|partition| write_partition(sinks, partition))
            .buffer_unordered(side_by_side())
            .collect()
            .await;
        for partition in written {
            let partition = partition?;
            self.report.files += partition.files;
            self.report.checkpoints.merge(&partition.checkpoints);
        }
        self.dead_letters.flush().await?;
        crate::fault::point("before-commit");
        match self.commit(ends.clone(), rebalances).await? {
            Commit::Done => {
                self.report.last_commit_at = Some(Instant::now());
                for end in ends {
                    self.claims.forget_below(end.partition, end.offset).await?;
                }
            }
            Commit::Fenced => self.refused = Some(rebalances),
            // Written but not committed: whoever owns the partitions now
            // writes the same outputs again under the same claims.
            Commit::Stale => {}
        }
        Ok(())
    }

    /// Asks the consumer's task to commit `positions`; retries failures
    /// worth retrying (an unreachable broker) until the group answers.
    async fn commit(&self, positions: Vec<Position>, rebalances: u64) -> Result<Commit> {
        loop {
            let (reply, answer) = oneshot::channel();
            let request = CommitRequest {
                positions: positions.clone(),
                rebalances,
                reply,
            };
            if self.commits.send(request).is_err() {
                return Err(Error::Other("the consumer stopped before a commit was sent".into()));
            }
            match answer.await {
                Ok(Ok(commit)) => {
                    let result = match commit {
                        Commit::Done => "done",
                        Commit::Stale => "stale",
                        Commit::Fenced => "fenced",
                    };
                    metrics::counter!(crate::ops::metrics::COMMITS, "result" => result).increment(1);
                    return Ok(commit);
                }
                Ok(Err(reason)) => {
                    tracing::warn!(%reason, "commit failed; retrying");
                    tokio::time::sleep(COMMIT_RETRY_PAUSE).await;
                }
                Err(_) => return Err(Error::Other("the consumer stopped before a commit was answered".into())),
            }
        }
    }
}

/// Partitions whose objects are written at once: the cores.
fn side_by_side() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// What `write_partition` wrote.
#[derive(Default)]
struct PartitionWritten {
    files: u64,
    checkpoints: CheckpointsReport,
}

/// One partition's objects and checkpoints, past the fence; its dead
/// letters are sent before.
async fn write_partition(sinks: &Sinks, outputs: PartitionOutputs) -> Result<PartitionWritten> {
    let Range { partition, first, .. } = outputs.range;
    let mut written = PartitionWritten::default();
    if let Some(checkpoints) = &sinks.checkpoints {
        if outputs.retire_handoff {
            checkpoints.retire_handoff(partition).await?;
        }
        // The fence committed the first offset: older checkpoints are stale.
        checkpoints.forget_below(partition, first).await?;
    }
    for object in outputs.objects {
        let path = sinks
            .objects
            .write(
                object.folder.as_deref(),
                partition,
                object.first,
                &object.batch,
                object.metadata,
            )
            .await?;
        crate::fault::point("after-upload");
        written.files += 1;
        tracing::debug!(%path, rows = object.batch.num_rows(), "object written");
    }
    if let Some(checkpoints) = &sinks.checkpoints {
        for snapshot in outputs.checkpoints {
            let (started, whole) = (Instant::now(), snapshot.base.is_none());
            let bytes = checkpoints.write(partition, snapshot).await?;
            written.checkpoints.add(whole, bytes, started);
        }
        crate::fault::point("mid-checkpoint");
    }
    Ok(written)
}
