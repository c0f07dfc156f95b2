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
pub mod rolling;
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
use self::rolling::{RollPolicy, Rolling};

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
    /// Records per micro-batch at most: what the real-time path takes at once.
    pub batch_size: usize,
    /// The topic counts as quiet after this long without a record (the
    /// job's housekeeping; `until_caught_up` rolls and checks then).
    pub idle: Duration,
    /// A micro-batch closes at this age at the latest: bounds the real-time
    /// path's latency.
    pub max_wait: Duration,
    /// When a partition's Parquet object rolls (the durable path).
    pub roll: RollPolicy,
    /// How long the broker may hold a fetch that has no records yet: part
    /// of the real-time path's latency.
    pub fetch_wait: Duration,
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

/// A micro-batch closes once no record arrived for this long (or at
/// `max_wait`): records are passed on as soon as a fetch has delivered them.
const MICRO_BATCH_IDLE: Duration = Duration::from_millis(2);

/// What `Consuming::next` has for the job.
pub enum Step {
    /// Records arrived (`Consuming::arrived`): the real-time path's input.
    /// They also join their partitions' open objects.
    Arrived,
    /// Claimed ranges of one or more partitions that rolled: the durable
    /// path's input, one object per partition. Call `fence` before writing
    /// any of its outputs, and `done` once they are durable.
    Roll(Vec<Consumed>),
    /// Nothing arrived for `idle`.
    Quiet,
}

/// What every consumer job shares: group membership as the job's user,
/// micro-batches as records arrive (the real-time path), open objects that
/// roll (the durable path), stop on signal or once caught up, the delivery
/// protocol's commits and the dead-letter topic.
///
/// The protocol, per roll: `next` claims each rolling partition's range
/// (`claims`), adopting a range an earlier claim fixed; `fence` commits its
/// first offsets, which the group refuses to a member that lost the
/// partitions; only then does the job write its durable outputs. `done`
/// flushes the dead letters and commits the ranges' ends.
pub struct Consuming {
    source: Source,
    claims: Claims,
    /// The Redis connection claims use, shared with the job's other writes.
    redis: RedisConn,
    stop: watch::Receiver<bool>,
    options: RunOptions,
    pub dead_letters: DeadLetters,
    /// The last micro-batch, until the next call of `next`.
    arrived: Vec<Consumed>,
    /// Each partition's records since its last roll.
    rolling: Rolling,
    /// The rebalance count the open objects belong to.
    rolling_rebalances: u64,
    /// Since when no record arrived, and when the last `Quiet` step was.
    quiet_since: Option<Instant>,
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
            options.fetch_wait,
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
            arrived: Vec::new(),
            rolling: Rolling::default(),
            rolling_rebalances: 0,
            quiet_since: None,
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

    /// The next step, or `None` once the job should stop: on SIGINT/SIGTERM
    /// (after rolling what can roll), or when it was asked to stop once the
    /// group has caught up and it has.
    pub async fn next(&mut self) -> Result<Option<Step>> {
        self.rolling.add(std::mem::take(&mut self.arrived));
        loop {
            let stopping = *self.stop.borrow();
            if stopping {
                self.rolling.roll_all();
            }
            if let Some(batch) = self.roll().await? {
                return Ok(Some(Step::Roll(batch)));
            }
            if stopping {
                // Ranges still waiting for the rest of a claim are fetched
                // again by whoever resumes their partitions.
                self.rolling.clear();
                self.commit_durable().await?;
                return Ok(None);
            }
            let micro = self
                .source
                .next_batch(
                    self.options.batch_size,
                    MICRO_BATCH_IDLE.min(self.options.max_wait),
                    self.options.max_wait,
                    &self.stop,
                )
                .await?;
            if self.source.rebalances() != self.rolling_rebalances {
                // Open objects may hold partitions that moved: their records
                // are fetched again from the committed offsets.
                self.rolling_rebalances = self.source.rebalances();
                self.rolling.clear();
            }
            if !micro.is_empty() {
                self.quiet_since = None;
                self.first_batch_at.get_or_insert_with(Instant::now);
                self.arrived = micro;
                return Ok(Some(Step::Arrived));
            }
            let quiet_since = *self.quiet_since.get_or_insert_with(Instant::now);
            if quiet_since.elapsed() < self.options.idle {
                continue;
            }
            self.quiet_since = Some(Instant::now());
            self.commit_durable().await?;
            if self.options.until_caught_up {
                if !self.rolling.is_empty() {
                    // The end of the topic: what is open rolls now.
                    self.rolling.roll_all();
                    continue;
                }
                match self.source.group_caught_up() {
                    Ok(true) => return Ok(None),
                    Ok(false) => {}
                    // The broker may be away for a while; ask again later.
                    Err(e) => tracing::warn!(error = %e, "cannot tell whether caught up yet"),
                }
            }
            return Ok(Some(Step::Quiet));
        }
    }

    /// The records of the last `Step::Arrived`.
    pub fn arrived(&self) -> &[Consumed] {
        &self.arrived
    }

    /// Rolls every open object at the next chance (before a module swap,
    /// so each object is one module's).
    pub fn roll_all(&mut self) {
        self.rolling.roll_all();
    }

    /// The first offset of a partition's open object, if one is open.
    pub fn open_first(&self, partition: i32) -> Option<i64> {
        self.rolling.first(partition)
    }

    /// True when no record waits in an open object (the last micro-batch
    /// joins them at the next `next`).
    pub fn nothing_open(&self) -> bool {
        self.rolling.is_empty()
    }

    /// Claims the ranges due to roll; the records of the agreed ranges.
    async fn roll(&mut self) -> Result<Option<Vec<Consumed>>> {
        let ranges = self.rolling.due(&self.options.roll);
        if ranges.is_empty() {
            return Ok(None);
        }
        let agreed = self.claims.claim(&ranges).await?;
        let batch = self.rolling.take(&ranges, &agreed);
        Ok((!batch.is_empty()).then_some(batch))
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

    /// Call once every output of `batch` is written: flushes its dead
    /// letters and commits its ranges' ends.
    pub async fn done(&mut self, batch: &[Consumed]) -> Result<()> {
        self.dead_letters.flush().await?;
        self.durable_rebalances = self.source.rebalances();
        for range in ranges(batch) {
            self.durable.insert(range.partition, range.end);
        }
        self.commit_durable().await
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
        match outcome {
            Commit::Done => self.last_commit_at = Some(Instant::now()),
            // This member lost its partitions: nothing open is its to write.
            Commit::Fenced => self.rolling.clear(),
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
