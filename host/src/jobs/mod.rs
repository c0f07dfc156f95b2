//! The jobs users run. A job wires a source, a guest and sinks; nothing else
//! knows about jobs.

pub mod backfill;
pub mod backup;
pub mod claims;
pub mod counting;
pub mod features;
pub mod produce;
pub mod rebuild;
pub mod republish;
pub mod serving;
pub mod setup;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{KafkaArgs, RedisArgs};
use crate::dlq::DeadLetters;
use crate::kafka::starting_offsets::{OnDataLoss, Start};
use crate::kafka::{Commit, Consumed, Position, Source, producer};
use crate::redis_conn::RedisConn;

use self::claims::{Claims, Range};

/// The consumer user of each job, created by `sluice setup`.
pub const BACKUP_USER: &str = "transactions-backup-job-user";
pub const FEATURES_USER: &str = "transactions-ml-features-job-user";
/// Variables holding those users' passwords.
pub const BACKUP_PASSWORD_VAR: &str = "SLUICE_BACKUP_JOB_PASSWORD";
pub const FEATURES_PASSWORD_VAR: &str = "SLUICE_FEATURES_JOB_PASSWORD";

/// How a consumer job paces itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub group: String,
    /// Records per batch at most (one Parquet object per partition per batch).
    pub batch_size: usize,
    /// A batch closes early when no record arrived for this long.
    pub idle: Duration,
    /// A batch closes at this age at the latest: bounds end-to-end latency.
    pub max_wait: Duration,
    /// How long a member that died without leaving keeps its partitions.
    pub session_timeout: Duration,
    /// Stop once the group has read every partition of the topic to its end.
    pub until_caught_up: bool,
    /// What to do when retention deleted records the group never read.
    pub on_data_loss: OnDataLoss,
    /// Where claims live (and, for features, the real-time store).
    pub redis: RedisArgs,
    /// Offsets at which a backfill left this group's state, per partition:
    /// where a partition the group never committed starts.
    pub handoffs: BTreeMap<i32, i64>,
}

/// What every consumer job shares: group membership as the job's user,
/// batches, stop on signal or once caught up, the delivery protocol's
/// commits and the dead-letter topic.
///
/// The protocol, per batch: `next_batch` claims the batch's range per
/// partition (`claims`), adopting a range an earlier claim fixed; `fence`
/// commits its first offsets, which the group refuses to a member that lost
/// the partitions; only then does the job write its outputs. `done` flushes
/// the dead letters and marks the batch durable; its offsets are committed
/// with the next batch's fence, when the topic goes quiet, or at the stop.
pub struct Consuming {
    source: Source,
    claims: Claims,
    /// The Redis connection claims use, shared with the job's other writes.
    redis: RedisConn,
    stop: watch::Receiver<bool>,
    options: RunOptions,
    pub dead_letters: DeadLetters,
    /// Next offsets whose outputs are durable but not yet committed, and the
    /// rebalance count they belong to (a rebalance voids them).
    durable: HashMap<i32, i64>,
    durable_rebalances: u64,
    /// When the first batch arrived and the last one was committed: the
    /// job's busy span, without the group join and the final idle wait.
    first_batch_at: Option<Instant>,
    last_commit_at: Option<Instant>,
}

/// How long a job was busy and what it could not read, for its report.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Throughput {
    /// From the first batch received to the last batch committed.
    pub seconds: f64,
    pub records_per_s: f64,
    /// Records retention deleted before the group read them, skipped with
    /// `--on-data-loss=continue`.
    pub skipped_by_data_loss: u64,
}

impl Consuming {
    /// Joins the job's group as `user` (password from `password_var`).
    pub async fn start(
        kafka: &KafkaArgs,
        options: RunOptions,
        job: &'static str,
        user: &str,
        password_var: &str,
    ) -> Result<Self> {
        let credentials = kafka.credentials(user, password_var);
        let config = kafka.client_config(credentials.as_ref());
        let source = Source::subscribe(
            config.clone(),
            &options.group,
            &kafka.topic,
            options.session_timeout,
            options.on_data_loss,
            options.handoffs.clone(),
        )?;
        let dead_letters = DeadLetters::new(producer::create(config)?, &kafka.dlq_topic, &kafka.topic, job);
        let redis = options.redis.connect().await?;
        let claims = Claims::new(redis.clone(), &options.redis.redis_prefix, &options.group, &kafka.topic);
        tracing::info!(job, topic = %kafka.topic, group = %options.group, "consuming");
        Ok(Self {
            source,
            claims,
            redis,
            stop: stop_signal(),
            options,
            dead_letters,
            durable: HashMap::new(),
            durable_rebalances: 0,
            first_batch_at: None,
            last_commit_at: None,
        })
    }

    /// The busy span and rate over `records`.
    pub fn throughput(&self, records: u64) -> Throughput {
        let skipped_by_data_loss = self.source.skipped_by_data_loss();
        match (self.first_batch_at, self.last_commit_at) {
            (Some(first), Some(last)) => {
                let seconds = last.duration_since(first).as_secs_f64();
                Throughput {
                    seconds,
                    records_per_s: records as f64 / seconds.max(1e-9),
                    skipped_by_data_loss,
                }
            }
            _ => Throughput {
                skipped_by_data_loss,
                ..Throughput::default()
            },
        }
    }

    /// The next claimed batch, or `None` once the job should stop: on
    /// SIGINT/SIGTERM, or when it was asked to stop once the group has
    /// caught up and it has. Call `fence` before writing any of its outputs.
    /// An empty batch is an idle tick (the topic is quiet): it comes about
    /// every `max_wait`, so a job can do its housekeeping between records.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Consumed>>> {
        while !*self.stop.borrow() {
            let batch = self
                .source
                .next_batch(
                    self.options.batch_size,
                    self.options.idle,
                    self.options.max_wait,
                    &self.stop,
                )
                .await?;
            if batch.is_empty() {
                self.commit_durable().await?;
                if self.options.until_caught_up {
                    match self.source.group_caught_up() {
                        Ok(true) => break,
                        Ok(false) => {}
                        // The broker may be away for a while; ask again later.
                        Err(e) => tracing::warn!(error = %e, "cannot tell whether caught up yet"),
                    }
                }
                return Ok(Some(Vec::new()));
            }
            self.first_batch_at.get_or_insert_with(Instant::now);
            let batch = self.agree(batch).await?;
            if batch.is_empty() {
                continue;
            }
            return Ok(Some(batch));
        }
        self.commit_durable().await?;
        Ok(None)
    }

    /// Commits the claimed batch's first offsets (with the durable positions
    /// of other partitions). The broker refuses this to a member that lost
    /// its partitions: then the batch must be dropped unwritten (`false`).
    /// Whatever a job needs to resume from a first offset (a checkpoint
    /// named by it) must exist before this call.
    pub async fn fence(&mut self, batch: &[Consumed]) -> Result<bool> {
        let mut positions = self.take_durable(batch);
        positions.extend(
            first_offsets(batch)
                .into_iter()
                .map(|(partition, offset)| Position { partition, offset }),
        );
        if self.commit(&positions).await? == Commit::Fenced {
            return Ok(false);
        }
        for position in positions {
            self.claims.forget_below(position.partition, position.offset).await?;
        }
        Ok(true)
    }

    /// Claims the batch's range of each partition and keeps what the agreed
    /// ranges hold: records past an agreed end wait for the next batch; a
    /// partition whose agreed end lies beyond its records waits whole until
    /// the next batch completes the range.
    async fn agree(&mut self, batch: Vec<Consumed>) -> Result<Vec<Consumed>> {
        let ranges: Vec<Range> = ranges(&batch);
        let agreed = self.claims.claim(&ranges).await?;
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut incomplete = Vec::new();
        for (range, end) in ranges.iter().zip(agreed) {
            if end != range.end {
                tracing::info!(
                    partition = range.partition,
                    first = range.first,
                    end,
                    "adopting the range an earlier claim fixed"
                );
            }
            // Short of the agreed end: wait for the rest, unless the batch
            // already saw past it (the range's last offsets are gone).
            if end > range.end && !self.source.claim_completed(range.partition) {
                incomplete.push((range.partition, end));
            }
            ends.insert(range.partition, end);
        }
        let (kept, held): (Vec<Consumed>, Vec<Consumed>) = batch
            .into_iter()
            .partition(|r| r.offset < ends[&r.partition] && !incomplete.iter().any(|(p, _)| *p == r.partition));
        if !held.is_empty() {
            self.source.hold_back(held, &incomplete);
        }
        Ok(kept)
    }

    /// Call once every output of `batch` is written: flushes its dead
    /// letters and marks its offsets durable (committed with the next claim,
    /// when the topic goes quiet, or at the stop).
    pub async fn done(&mut self, batch: &[Consumed]) -> Result<()> {
        self.dead_letters.flush().await?;
        self.durable_rebalances = self.source.rebalances();
        for range in ranges(batch) {
            self.durable.insert(range.partition, range.end);
        }
        Ok(())
    }

    /// Durable positions of partitions this batch does not claim. After a
    /// rebalance they are dropped: the partitions may belong to another
    /// member now, and the broker does not check which partitions a member
    /// commits. Their next owner resumes from the last commit, under the
    /// same claims.
    fn take_durable(&mut self, batch: &[Consumed]) -> Vec<Position> {
        if self.durable_rebalances != self.source.rebalances() {
            self.durable.clear();
        }
        let claimed: HashSet<i32> = batch.iter().map(|r| r.partition).collect();
        self.durable
            .drain()
            .filter(|(partition, _)| !claimed.contains(partition))
            .map(|(partition, offset)| Position { partition, offset })
            .collect()
    }

    async fn commit_durable(&mut self) -> Result<()> {
        let positions = self.take_durable(&[]);
        if self.commit(&positions).await? == Commit::Done {
            for position in positions {
                self.claims.forget_below(position.partition, position.offset).await?;
            }
        }
        Ok(())
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<Commit> {
        if positions.is_empty() {
            return Ok(Commit::Done);
        }
        crate::fault::point("before-commit");
        let outcome = self.source.commit(positions).await?;
        if outcome == Commit::Done {
            self.last_commit_at = Some(Instant::now());
        }
        Ok(outcome)
    }

    /// Where an assigned partition started: its committed offset and more.
    pub fn start_of(&self, partition: i32) -> Option<Start> {
        self.source.start(partition)
    }

    /// The Redis connection of this job (claims, and the features' writes).
    pub fn redis(&self) -> RedisConn {
        self.redis.clone()
    }

    /// The partitions assigned to this member, as of the last assignment.
    pub fn assigned(&self) -> Vec<i32> {
        self.source.assigned()
    }

    /// Partitions of the topic, as of the last assignment.
    pub fn partition_count(&self) -> Option<i32> {
        self.source.partition_count()
    }

    /// True once after each rebalance (see `Source::assignment_changed`).
    pub fn assignment_changed(&mut self) -> bool {
        self.source.assignment_changed()
    }
}

/// The range of each partition in a batch: its first offset and one past
/// its last.
fn ranges(batch: &[Consumed]) -> Vec<Range> {
    let mut ranges: BTreeMap<i32, Range> = BTreeMap::new();
    for record in batch {
        let range = ranges.entry(record.partition).or_insert(Range {
            partition: record.partition,
            first: record.offset,
            end: record.offset + 1,
        });
        range.first = range.first.min(record.offset);
        range.end = range.end.max(record.offset + 1);
    }
    ranges.into_values().collect()
}

/// The first offset of each partition in a batch.
fn first_offsets(batch: &[Consumed]) -> BTreeMap<i32, i64> {
    ranges(batch).into_iter().map(|r| (r.partition, r.first)).collect()
}

/// A receiver that turns true on SIGINT or SIGTERM: jobs finish the batch in
/// hand, commit, and return.
pub fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("stop requested: finishing the current batch");
        let _ = tx.send(true);
    });
    rx
}

/// Splits a batch by partition, keeping offset order inside each.
pub fn by_partition(batch: &[Consumed]) -> BTreeMap<i32, Vec<&Consumed>> {
    let mut groups: BTreeMap<i32, Vec<&Consumed>> = BTreeMap::new();
    for record in batch {
        groups.entry(record.partition).or_default().push(record);
    }
    groups
}

/// Everything a job can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    RegistryUnavailable(#[from] crate::avro::RegistryUnavailable),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
    #[error(transparent)]
    HotSwap(#[from] crate::hot_swap::Error),
    #[error(transparent)]
    Consumer(#[from] crate::kafka::consumer::Error),
    #[error(transparent)]
    Admin(#[from] crate::kafka::admin::Error),
    #[error(transparent)]
    Security(#[from] crate::kafka::security::Error),
    #[error("kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    DeadLetters(#[from] crate::dlq::Error),
    #[error(transparent)]
    Parquet(#[from] crate::sinks::parquet::Error),
    #[error(transparent)]
    Redis(#[from] crate::sinks::redis::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;
