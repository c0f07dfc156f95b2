//! The jobs users run. A job wires a source, a guest and sinks; nothing else
//! knows about jobs.

pub mod backfill;
pub mod backup;
pub mod claims;
pub mod counting;
pub mod date_folders;
pub mod durable;
pub mod engine;
pub mod features;
mod open_events;
pub mod pipeline;
pub mod produce;
pub mod rebuild;
pub mod republish;
pub mod rolling;
pub mod serving;
pub mod setup;
pub mod status;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{KafkaArgs, RedisArgs};
use crate::dlq::DeadLetters;
use crate::kafka::reachability::Refusal;
use crate::kafka::starting_offsets::{OnDataLoss, Start};
use crate::kafka::{Commit, Consumed, Position, Source, producer};
use crate::redis_conn::RedisConn;

use self::claims::{Claims, ClaimsIn};
use self::durable::{CommitRequest, DurablePath, DurableReport, Outputs, Queued, Sinks};
use self::rolling::{Packed, RollPolicy, Rolling};

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
    /// With `until_caught_up`: fail once no broker answered for this long.
    pub kafka_patience: Duration,
    /// What to do when retention deleted records the group never read.
    pub on_data_loss: OnDataLoss,
    /// Where the claims that fence zombies live.
    pub claims_in: ClaimsIn,
    /// The features' real-time store, and claims when they live in Redis.
    pub redis: RedisArgs,
    /// Offsets at which a backfill left this group's state, per partition:
    /// where a partition the group never committed starts.
    pub handoffs: BTreeMap<i32, i64>,
    /// How often the progress line is logged.
    pub progress_every: Duration,
}

/// A micro-batch closes once no record arrived for this long (or at
/// `max_wait`): records are passed on as soon as a fetch has delivered them.
const MICRO_BATCH_IDLE: Duration = Duration::from_millis(2);

/// Rolls queued for the durable path at most; past this the consumer waits
/// for it, with fetching paused.
const MAX_QUEUED_ROLLS: u64 = 2;

/// Quiet spells (`--idle-ms` each) under `--until-caught-up` after which
/// open objects roll even if their partitions' ends look further on.
const QUIET_ROUNDS_TO_ROLL: u32 = 5;

/// How often an object waiting for the rest of a claimed range checks that
/// the range can complete.
const CLAIM_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What `Consuming::next` has for the job.
pub enum Step {
    /// Records arrived (`Consuming::arrived`): the real-time path's input.
    /// They also join their partitions' open objects.
    Arrived,
    /// Claimed ranges of one or more partitions that rolled: the durable
    /// path's input, one object per partition. The job makes its outputs
    /// and hands them on with `Consuming::write`.
    Roll(Roll),
    /// Nothing arrived for `idle`.
    Quiet,
}

/// The records of one roll: per partition, in offset order.
pub struct Roll {
    pub records: Vec<Packed>,
    /// The rebalance count they were fetched under.
    pub rebalances: u64,
}

/// What every consumer job shares: group membership as the job's user,
/// micro-batches as records arrive (the real-time path), open objects that
/// roll, and the durable path (`durable`), a task of its own that writes
/// each roll's outputs and commits; stop on signal or once caught up.
///
/// The protocol, per roll: `next` claims each rolling partition's range
/// (`claims`), adopting a range an earlier claim fixed; the job makes the
/// roll's outputs and `write`s them; the durable path commits the ranges'
/// first offsets (the fence, which the group refuses to a member that lost
/// the partitions), writes the outputs, and commits the ranges' ends. This
/// task sends every commit (`serve_commits`), so none can pass a rebalance.
pub struct Consuming {
    source: Source,
    /// The brokers and this member's user, for messages.
    brokers: String,
    user: String,
    claims: Claims,
    stop: watch::Receiver<bool>,
    options: RunOptions,
    /// The last micro-batch, until the next call of `next`.
    arrived: Vec<Consumed>,
    /// Records fetched while waiting (for the durable path, a commit's
    /// answer): the next micro-batches, `batch_size` at a time, so an open
    /// object still rolls within a micro-batch of its rows.
    stash: VecDeque<Consumed>,
    /// Each partition's records since its last roll.
    rolling: Rolling,
    /// The rebalance count the open objects and the stash belong to.
    rolling_rebalances: u64,
    /// A refused fence cleared the open objects (see `assignment_changed`).
    fenced_reset: bool,
    /// Since when no record arrived, and the quiet spells since the last
    /// record.
    quiet_since: Option<Instant>,
    quiet_rounds: u32,
    /// Under `until_caught_up`: the group was asked whether it caught up
    /// since this member last read every partition to its end.
    ends_checked: bool,
    /// ... and what was open rolled since it last read them to their end.
    end_rolled: bool,
    /// When an object last checked that the claimed range it waits for can
    /// complete.
    claims_checked_at: Instant,
    /// Partitions of this assignment whose start needs no commit of its own
    /// any more: it was committed, or a roll of theirs went to the durable
    /// path (which commits past it).
    settled_starts: HashSet<i32>,
    /// The durable path: its queue, its count of finished rolls, its task
    /// and the commits it asks for.
    rolls: Option<mpsc::UnboundedSender<Queued>>,
    queued: u64,
    finished: watch::Receiver<u64>,
    durable: Option<JoinHandle<Result<DurableReport>>>,
    commits: mpsc::UnboundedReceiver<CommitRequest>,
    /// When the first batch arrived: the start of the job's busy span.
    first_batch_at: Option<Instant>,
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
    /// Joins the job's group as `user` (password from `password_var`) and
    /// starts the durable path over `sinks`. Claims in Redis use `redis`, the
    /// job's own connection if it has one.
    pub async fn start(
        kafka: &KafkaArgs,
        options: RunOptions,
        job: &'static str,
        user: &str,
        password_var: &str,
        sinks: Sinks,
        redis: Option<RedisConn>,
    ) -> Result<Self> {
        let credentials = kafka.credentials(user, password_var)?;
        let config = kafka.client_config(credentials.as_ref())?;
        let source = Source::subscribe(
            config.clone(),
            &options.group,
            &kafka.topic,
            options.session_timeout,
            options.fetch_wait,
            options.on_data_loss,
            options.handoffs.clone(),
        )?;
        let dead_letters = DeadLetters::new(producer::create(config.clone())?, &kafka.dlq_topic, &kafka.topic, job);
        let redis_for_claims = async || -> std::result::Result<_, claims::Error> {
            let connection = match redis {
                Some(connection) => connection,
                None => options.redis.connect().await?,
            };
            Ok((connection, options.redis.redis_prefix.clone()))
        };
        let claims = claims::open(
            options.claims_in,
            sinks.objects.storage(),
            &options.group,
            &kafka.topic,
            redis_for_claims,
        )
        .await?;
        tracing::info!(claims_in = claims.place(), "claims");
        let (rolls, queue) = mpsc::unbounded_channel();
        let (commit_requests, commits) = mpsc::unbounded_channel();
        let (finished_tx, finished) = watch::channel(0);
        let durable = DurablePath::new(sinks, claims.clone(), dead_letters, commit_requests, finished_tx);
        let durable = tokio::spawn(durable.run(queue));
        // Lag feeds the metrics and the progress line alike.
        crate::ops::lag::spawn(config.clone(), &options.group, &kafka.topic);
        crate::ops::progress::spawn("run", options.progress_every);
        tracing::info!(job, topic = %kafka.topic, group = %options.group, "consuming");
        Ok(Self {
            source,
            brokers: kafka.brokers.clone(),
            user: user.to_string(),
            claims,
            stop: stop_signal(),
            options,
            arrived: Vec::new(),
            stash: VecDeque::new(),
            rolling: Rolling::default(),
            rolling_rebalances: 0,
            fenced_reset: false,
            quiet_since: None,
            quiet_rounds: 0,
            ends_checked: false,
            end_rolled: false,
            claims_checked_at: Instant::now(),
            settled_starts: HashSet::new(),
            rolls: Some(rolls),
            queued: 0,
            finished,
            durable: Some(durable),
            commits,
            first_batch_at: None,
        })
    }

    /// The next step, or `None` once the job should stop: on SIGINT/SIGTERM
    /// (after rolling what can roll and making it durable), or when it was
    /// asked to stop once the group has caught up and it has.
    pub async fn next(&mut self) -> Result<Option<Step>> {
        self.rolling.add(std::mem::take(&mut self.arrived));
        loop {
            self.check_durable().await?;
            self.serve_commits()?;
            match self.source.refused() {
                Some(Refusal::Login(reason)) => {
                    return Err(Error::Other(format!(
                        "the brokers ({}) refused the login of user {}: {reason}. Check the user's password",
                        self.brokers, self.user
                    )));
                }
                Some(Refusal::Certificate(reason)) => {
                    return Err(Error::Other(format!(
                        "the brokers' ({}) TLS certificate was not accepted: {reason}. Check --kafka-ca-file \
                         and that the certificate names the host in --brokers",
                        self.brokers
                    )));
                }
                None => {}
            }
            if self.options.until_caught_up
                && let Some(waited) = self.source.unreachable_for()
                && waited >= self.options.kafka_patience
            {
                return Err(Error::Other(format!(
                    "no broker of {} answered for {} s, so the group cannot catch up; giving up after \
                     --kafka-patience-ms (the log names the last error)",
                    self.brokers,
                    waited.as_secs()
                )));
            }
            if self.source.is_fenced() && !self.rolling.is_empty() {
                // Nothing open is this member's to write any more.
                self.rolling.clear();
                self.fenced_reset = true;
            }
            let stopping = *self.stop.borrow();
            if stopping {
                self.rolling.roll_all();
            }
            if let Some(roll) = self.roll().await? {
                return Ok(Some(Step::Roll(roll)));
            }
            if stopping {
                // Ranges still waiting for the rest of a claim are fetched
                // again by whoever resumes their partitions.
                self.rolling.clear();
                self.wait_for_durable(0, false).await?;
                return Ok(None);
            }
            self.check_claims_reachable()?;
            let micro = if self.stash.is_empty() {
                self.fetch().await?
            } else {
                let take = self.stash.len().min(self.options.batch_size);
                self.stash.drain(..take).collect()
            };
            if !micro.is_empty() {
                self.quiet_since = None;
                self.quiet_rounds = 0;
                self.ends_checked = false;
                self.end_rolled = false;
                self.first_batch_at.get_or_insert_with(Instant::now);
                self.arrived = micro;
                return Ok(Some(Step::Arrived));
            }
            if self.options.until_caught_up
                && !self.ends_checked
                && self.stash.is_empty()
                && self.source.read_to_the_end()
            {
                // Every assigned partition was read to its end: roll what is
                // open now rather than after a quiet spell (once: a range
                // waiting for the rest of a claim stays open), then ask once
                // whether the whole group is done. Other members'
                // partitions may still be on their way; quiet spells pace
                // the asking from then on.
                if !self.rolling.is_empty() && !self.end_rolled {
                    tracing::debug!("every assigned partition read to its end: rolling what is open");
                    self.end_rolled = true;
                    self.rolling.roll_all();
                    continue;
                }
                if self.rolling.is_empty() {
                    self.wait_for_durable(0, false).await?;
                    if !self.stash.is_empty() {
                        continue;
                    }
                    self.ends_checked = true;
                    match self.source.group_caught_up() {
                        Ok(true) => return Ok(None),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot tell whether caught up yet"),
                    }
                }
            }
            let quiet_since = *self.quiet_since.get_or_insert_with(Instant::now);
            if quiet_since.elapsed() < self.options.idle {
                continue;
            }
            self.quiet_since = Some(Instant::now());
            self.commit_handoff_starts().await?;
            if self.options.until_caught_up {
                if !self.rolling.is_empty() {
                    self.quiet_rounds += 1;
                    // The end of the topic (or a quiet that lasts: offsets
                    // past the last record, such as transaction markers,
                    // keep a partition's end ahead): what is open rolls now.
                    // A slow fetch is no end: read on.
                    if self.quiet_rounds >= QUIET_ROUNDS_TO_ROLL || self.open_objects_reached_the_end() {
                        self.quiet_rounds = 0;
                        self.rolling.roll_all();
                    }
                    continue;
                }
                self.wait_for_durable(0, false).await?;
                if !self.stash.is_empty() {
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

    /// The next micro-batch from the source; a rebalance since the last one
    /// voids the open objects and the stash (their partitions may have
    /// moved; their records are fetched again from the committed offsets).
    async fn fetch(&mut self) -> Result<Vec<Consumed>> {
        let micro = self
            .source
            .next_batch(
                self.options.batch_size,
                MICRO_BATCH_IDLE.min(self.options.max_wait),
                self.options.max_wait,
            )
            .await?;
        let bytes: usize = micro
            .iter()
            .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum();
        metrics::counter!(crate::ops::metrics::RECORDS_IN).increment(micro.len() as u64);
        crate::ops::progress::add(micro.len() as u64);
        metrics::counter!(crate::ops::metrics::BYTES_IN).increment(bytes as u64);
        if self.source.rebalances() != self.rolling_rebalances {
            self.rolling_rebalances = self.source.rebalances();
            self.rolling.clear();
            self.stash.clear();
            self.settled_starts.clear();
        }
        Ok(micro)
    }

    /// True when every open object holds its partition's records up to the
    /// partition's end (its high watermark): a quiet spell is the end of the
    /// topic, not a slow fetch. A partition whose end cannot be read counts
    /// as ended.
    fn open_objects_reached_the_end(&self) -> bool {
        self.rolling
            .ends()
            .into_iter()
            .all(|(partition, end)| match self.source.partition_end(partition) {
                Ok(high) => end >= high,
                Err(_) => true,
            })
    }

    /// The records of the last `Step::Arrived`.
    pub fn arrived(&self) -> &[Consumed] {
        &self.arrived
    }

    /// Hands a roll's outputs to the durable path. Waits (fetching paused)
    /// while the durable path is more than `MAX_QUEUED_ROLLS` behind.
    /// `rebalances` is the roll's (`Roll::rebalances`). A roll with no
    /// outputs (one `is_void` voided) is not queued.
    pub async fn write(&mut self, outputs: Outputs, rebalances: u64) -> Result<()> {
        if outputs.partitions.is_empty() {
            return Ok(());
        }
        let queued = Queued { outputs, rebalances };
        let sent = self.rolls.as_ref().is_some_and(|rolls| rolls.send(queued).is_ok());
        if !sent {
            self.check_durable().await?;
            return Err(Error::Other("the durable path stopped".into()));
        }
        self.queued += 1;
        self.wait_for_durable(MAX_QUEUED_ROLLS, true).await
    }

    /// Waits until the durable path has written every roll handed to it.
    pub async fn wait_for_durable_path(&mut self) -> Result<()> {
        self.wait_for_durable(0, false).await
    }

    /// True when the durable path will drop `roll` unwritten: a rebalance
    /// came since its records were fetched (`Commit::Stale`), or the group
    /// refused this member's commits (`Commit::Fenced`) and has not assigned
    /// partitions again. The rolls before it in that assignment may have
    /// been dropped too, so the checkpoints they would have written cannot
    /// be relied on.
    /// `rebalances` is the roll's (`Roll::rebalances`).
    pub fn is_void(&self, rebalances: u64) -> bool {
        rebalances != self.source.rebalances() || self.source.is_fenced()
    }

    /// Rolls not yet made durable.
    fn in_flight(&self) -> u64 {
        self.queued - *self.finished.borrow()
    }

    /// Waits until at most `at_most` rolls are in flight, serving the
    /// durable path's commits meanwhile; records that arrive are kept for
    /// the next micro-batch. With `pause`, fetching stops meanwhile (back
    /// pressure: librdkafka then drops what it prefetched and fetches it
    /// again on resume, so a wait for the durable path to finish does not
    /// pause).
    async fn wait_for_durable(&mut self, at_most: u64, pause: bool) -> Result<()> {
        if self.in_flight() <= at_most {
            return Ok(());
        }
        if pause {
            self.source.pause()?;
        }
        while self.in_flight() > at_most {
            self.check_durable().await?;
            self.serve_commits()?;
            self.fetch_while_waiting().await?;
        }
        if pause {
            self.source.resume()?;
        }
        Ok(())
    }

    /// One poll while waiting for an answer: it serves rebalances and
    /// commit answers, and what it fetched waits in the stash for `next`.
    async fn fetch_while_waiting(&mut self) -> Result<()> {
        let micro = self.fetch().await?;
        self.stash.extend(micro);
        Ok(())
    }

    /// Sends the commits the durable path asked for, unless the records
    /// they cover belong to an assignment that is gone.
    fn serve_commits(&mut self) -> Result<()> {
        while let Ok(request) = self.commits.try_recv() {
            if request.rebalances != self.source.rebalances() {
                let _ = request.reply.send(Ok(Commit::Stale));
                continue;
            }
            self.source.send_commit(&request.positions, request.reply)?;
        }
        Ok(())
    }

    /// The durable path's error, once it has stopped with one.
    async fn check_durable(&mut self) -> Result<()> {
        if !self.durable.as_ref().is_some_and(JoinHandle::is_finished) {
            return Ok(());
        }
        let handle = self.durable.take().expect("checked");
        match handle.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err(Error::Other("the durable path stopped early".into())),
            Err(e) => Err(Error::Other(format!("the durable path failed: {e}"))),
        }
    }

    /// Ends the durable path once `next` returned `None`; the job's
    /// throughput over `records`, and what the durable path did.
    pub async fn finish(mut self, records: u64) -> Result<(Throughput, DurableReport)> {
        self.rolls = None;
        let report = match self.durable.take() {
            Some(handle) => handle
                .await
                .map_err(|e| Error::Other(format!("the durable path failed: {e}")))??,
            None => DurableReport::default(),
        };
        let skipped_by_data_loss = self.source.skipped_by_data_loss();
        let throughput = match (self.first_batch_at, report.last_commit_at) {
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
        };
        Ok((throughput, report))
    }

    /// A partition that started at a backfill's hand-off and got no record
    /// has no commit of the group: commit the hand-off offset (its
    /// checkpoint is the backfill's), so the group's position says where
    /// it is, and `--until-caught-up` sees it caught up.
    async fn commit_handoff_starts(&mut self) -> Result<()> {
        let mut positions = Vec::new();
        for partition in self.source.assigned() {
            let Some(start) = self.source.start(partition) else {
                continue;
            };
            // The hand-off's checkpoint is named by the offset it starts at
            // (records skipped for data loss would make them differ).
            let from_handoff =
                start.committed == Some(start.offset) && self.options.handoffs.get(&partition) == Some(&start.offset);
            if from_handoff && self.rolling.first(partition).is_none() && !self.settled_starts.contains(&partition) {
                positions.push(Position {
                    partition,
                    offset: start.offset,
                });
            }
        }
        if positions.is_empty() {
            return Ok(());
        }
        let (reply, mut answer) = oneshot::channel();
        self.source.send_commit(&positions, reply)?;
        let rebalances = self.source.rebalances();
        let outcome = loop {
            match answer.try_recv() {
                Ok(outcome) => break outcome,
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => break Err("no answer".to_string()),
            }
            self.fetch_while_waiting().await?;
        };
        if outcome == Ok(Commit::Done) && rebalances == self.source.rebalances() {
            self.settled_starts.extend(positions.iter().map(|p| p.partition));
        }
        Ok(())
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
    async fn roll(&mut self) -> Result<Option<Roll>> {
        let ranges = self.rolling.due(&self.options.roll);
        if ranges.is_empty() {
            return Ok(None);
        }
        let agreed = self.claims.claim(&ranges).await?;
        let records = self.rolling.take(&ranges, &agreed);
        self.settled_starts.extend(records.iter().map(Packed::partition));
        Ok((!records.is_empty()).then_some(Roll {
            records,
            rebalances: self.rolling_rebalances,
        }))
    }

    /// A claimed range always ended at a record that existed; one reaching
    /// past the partition's end was made for another incarnation of the
    /// topic, and waiting for it would wait forever.
    fn check_claims_reachable(&mut self) -> Result<()> {
        let waiting = self.rolling.waiting();
        if waiting.is_empty() || self.claims_checked_at.elapsed() < CLAIM_CHECK_EVERY {
            return Ok(());
        }
        self.claims_checked_at = Instant::now();
        tracing::warn!(claimed = ?waiting, "waiting for the records of claimed ranges");
        for (partition, end) in waiting {
            let high = match self.source.partition_end(partition) {
                Ok(high) => high,
                Err(e) => {
                    tracing::warn!(error = %e, partition, "cannot read the partition's end; asking again later");
                    continue;
                }
            };
            if end > high {
                return Err(Error::Other(format!(
                    "partition {partition} of {topic}: a claim ends at offset {end}, beyond the partition's end \
                     {high}; it was made before the topic was recreated. Delete the group's claims \
                     ({claims}) to start over.",
                    topic = self.source.topic(),
                    claims = self.claims.describe(partition),
                )));
            }
        }
        Ok(())
    }

    /// Where an assigned partition started: its committed offset and more.
    pub fn start_of(&self, partition: i32) -> Option<Start> {
        self.source.start(partition)
    }

    /// The partitions assigned to this member, as of the last assignment.
    pub fn assigned(&self) -> Vec<i32> {
        self.source.assigned()
    }

    /// Partitions of the topic, as of the last assignment.
    pub fn partition_count(&self) -> Option<i32> {
        self.source.partition_count()
    }

    /// True once after each rebalance (see `Source::assignment_changed`),
    /// and once after a refused fence: state held for the partitions must be
    /// reloaded from their checkpoints.
    pub fn assignment_changed(&mut self) -> bool {
        let fenced = std::mem::take(&mut self.fenced_reset);
        self.source.assignment_changed() || fenced
    }
}

/// A receiver that turns true on SIGINT or SIGTERM: jobs finish the batch in
/// hand, commit, and return. The process's handlers are installed by the
/// first call and shared by every later one: a command that calls this as
/// it starts turns a signal during its start-up into a clean stop at its
/// first step, rather than the signal's default end of the process.
pub fn stop_signal() -> watch::Receiver<bool> {
    static STOP: std::sync::OnceLock<watch::Receiver<bool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(false);
        let (mut terminate, mut interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM/SIGINT: they end the process at once");
                return rx;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("stop requested: finishing the current batch");
            let _ = tx.send(true);
        });
        rx
    })
    .clone()
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
    Claims(#[from] claims::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;
