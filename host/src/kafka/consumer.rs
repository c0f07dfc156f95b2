//! A consumer-group member that hands out batches of records and commits
//! offsets only when told to.
//!
//! Rebalances use the eager protocol: every rebalance revokes the whole
//! assignment, and an assigned partition starts where `starting_offsets`
//! decides (the committed offset, checked against the retained range). A
//! batch being collected when a rebalance happens is thrown away: its
//! uncommitted records are fetched again by whoever owns their partition now.
//!
//! Commits are sent without waiting (`send_commit`) from the task that
//! polls, between two polls, so a commit always carries the generation of
//! the records it covers: a rebalance callback runs only inside a poll. The
//! broker's answer comes back through the same poll (`commit_callback`). A
//! commit the group refuses means this member lost its partitions: every
//! record fetched after it is dropped until the group assigns partitions
//! again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::reachability::Reachability;
use super::starting_offsets::{self, OnDataLoss, Start};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka consumer ({context}): {source}")]
    Kafka { context: String, source: KafkaError },
    /// Continuing would be silently wrong (data loss, a recreated topic).
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}

/// One record, owned, as it came off the topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_millis: Option<i64>,
    pub partition: i32,
    pub offset: i64,
}

/// What a commit achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// The group refused it: this member no longer owns the partitions.
    Fenced,
    /// Not sent: the partitions were rebalanced since the records it covers
    /// were fetched, so they may belong to another member now (the broker
    /// does not check which partitions a member commits).
    Stale,
}

/// Where the broker's answer to a commit sent with `Source::send_commit`
/// goes: `Err` for a failure worth retrying (the broker is unreachable, say).
pub type CommitReply = tokio::sync::oneshot::Sender<std::result::Result<Commit, String>>;

/// One partition's position in a commit: the next offset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while the broker is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long an assignment keeps asking an unreachable broker for offsets, in
/// all (it runs inside the rebalance callback).
const ASSIGN_PATIENCE: Duration = Duration::from_secs(60);

/// The current assignment as the rebalance callback decided it.
#[derive(Default)]
struct Assignment {
    starts: HashMap<i32, Start>,
    /// Why partitions of this assignment cannot be read exactly.
    refusals: Vec<String>,
    partition_count: Option<i32>,
}

/// Decides the start of every assigned partition, inside librdkafka's
/// rebalance callback, before any record of the assignment is fetched.
struct GroupContext {
    topic: String,
    on_data_loss: OnDataLoss,
    /// Where the backfill left the group's state, per partition: the start
    /// of a partition the group never committed.
    handoffs: BTreeMap<i32, i64>,
    rebalances: AtomicU64,
    assignment: Mutex<Assignment>,
    /// Records skipped because retention deleted them, by (partition,
    /// committed offset): a rebalance that plans the same skip again does
    /// not count it twice.
    skipped: Mutex<HashMap<(i32, i64), u64>>,
    /// Commits sent and not answered yet, oldest first, with their positions.
    commits: Mutex<VecDeque<(Vec<Position>, CommitReply)>>,
    /// Since when this member knows it lost its partitions (a refused
    /// commit); cleared by the next assignment.
    fenced_since: Mutex<Option<Instant>>,
    /// Assigned partitions whose last fetch reached their end (librdkafka's
    /// partition-EOF event) with no record of theirs since.
    at_end: Mutex<BTreeSet<i32>>,
    /// Partitions paused (`Source::pause`) and not resumed yet. librdkafka
    /// keeps a partition paused across a rebalance, so one revoked while
    /// paused is resumed when it is assigned again.
    paused: Mutex<BTreeSet<i32>>,
    /// Whether the brokers answer.
    reachability: Reachability,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.reachability.error(&error, reason);
    }
}

/// The answers by which the group refuses a commit of a member that lost
/// its partitions.
fn refused(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::AssignmentLost
            | RDKafkaErrorCode::State
    )
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            // The plan asks the broker and may wait on it: off the workers.
            let assignment = crate::blocking::run(|| self.plan(consumer, list));
            tracing::info!(?partitions, "partitions assigned");
            if let Err(e) = consumer.assign(list) {
                tracing::error!(error = %e, "assign failed");
            }
            // librdkafka keeps a partition paused across a rebalance: one
            // paused for back pressure (`Source::pause`) must not stay
            // paused when it is assigned again. Resumed whether or not this
            // member remembers a pause: a pause librdkafka applied late (its
            // own, queued on a broker thread) would otherwise hold the
            // partition for good. A newly assigned partition has nothing
            // prefetched to drop.
            guard(&self.paused).retain(|p| !partitions.contains(p));
            if let Err(e) = consumer.resume(list) {
                tracing::error!(error = %e, "resume failed");
            }
            *self.lock() = assignment;
            guard(&self.at_end).clear();
            *guard(&self.fenced_since) = None;
            crate::ops::health::set_assigned(partitions);
        } else {
            if consumer.assignment_lost() {
                tracing::warn!(
                    ?partitions,
                    "partitions revoked: this member lost its partitions (its session expired)"
                );
            } else {
                tracing::info!(?partitions, "partitions revoked");
            }
            // The topic keeps its partitions when this member loses them: a
            // roll of records fetched before the revocation may still be
            // made (and then dropped, as stale) and needs the count.
            let mut assignment = self.lock();
            *assignment = Assignment {
                partition_count: assignment.partition_count,
                ..Assignment::default()
            };
            drop(assignment);
            if let Err(e) = consumer.unassign() {
                tracing::error!(error = %e, "unassign failed");
            }
            crate::ops::health::set_assigned(Vec::new());
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        metrics::counter!(crate::ops::metrics::REBALANCES).increment(1);
    }

    /// The answer to the oldest commit sent with the same positions.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let positions: Vec<Position> = offsets
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some(Position {
                    partition: e.partition(),
                    offset,
                }),
                _ => None,
            })
            .collect();
        let reply = {
            let mut commits = guard(&self.commits);
            let index = commits
                .iter()
                .position(|(sent, _)| same_positions(sent, &positions))
                .unwrap_or(0);
            commits.remove(index)
        };
        let Some((_, reply)) = reply else {
            tracing::warn!(?positions, "a commit answer matched no commit sent");
            return;
        };
        tracing::debug!(?positions, ok = result.is_ok(), "commit answered");
        if result.is_ok() {
            self.reachability.answered();
        }
        let answer = match result {
            Ok(()) => Ok(Commit::Done),
            Err(KafkaError::ConsumerCommit(code)) if refused(code) => {
                self.fenced(&code.to_string());
                Ok(Commit::Fenced)
            }
            Err(e) => Err(e.to_string()),
        };
        let _ = reply.send(answer);
    }
}

fn same_positions(a: &[Position], b: &[Position]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by_key(|p| p.partition);
    b.sort_by_key(|p| p.partition);
    a == b
}

/// A lock that a panic elsewhere cannot poison for good.
fn guard<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GroupContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        // A panic while holding it cannot leave a half-made assignment.
        guard(&self.assignment)
    }

    fn fenced(&self, reason: &str) {
        tracing::warn!(
            reason,
            "commit refused: this member lost its partitions; dropping what it fetches until the group assigns \
             partitions again"
        );
        guard(&self.fenced_since).get_or_insert_with(Instant::now);
    }

    /// Sets each partition's start offset in `list` and records the plan.
    fn plan(&self, consumer: &BaseConsumer<Self>, list: &mut TopicPartitionList) -> Assignment {
        let mut assignment = Assignment::default();
        // One deadline for every request of the plan: it runs inside the
        // rebalance callback, which must end well inside max.poll.interval.ms.
        let deadline = Instant::now() + ASSIGN_PATIENCE;
        let committed = match patiently(deadline, "committed offsets", || {
            consumer.committed_offsets(list.clone(), METADATA_TIMEOUT)
        }) {
            Ok(c) => c,
            Err(e) => {
                assignment
                    .refusals
                    .push(format!("cannot read the group's committed offsets: {e}"));
                return assignment;
            }
        };
        match patiently(deadline, "metadata", || {
            consumer.fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
        }) {
            Ok(metadata) => {
                assignment.partition_count = metadata.topics().first().map(|t| t.partitions().len() as i32);
            }
            Err(e) => assignment
                .refusals
                .push(format!("cannot read the metadata of {}: {e}", self.topic)),
        }
        for element in list.elements_for_topic(&self.topic) {
            let partition = element.partition();
            let group_commit = committed
                .find_partition(&self.topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let watermarks = patiently(deadline, "watermarks", || {
                consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            });
            let decided = watermarks
                .map_err(|e| format!("partition {partition}: cannot read its offsets: {e}"))
                .and_then(|w| {
                    let handoff = self.handoffs.get(&partition).copied();
                    starting_offsets::decide(&self.topic, partition, group_commit, handoff, w, self.on_data_loss)
                });
            match decided {
                Ok(start) => {
                    if let (Some(committed), skipped @ 1..) = (start.committed, start.skipped) {
                        self.skipped
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert((partition, committed), skipped as u64);
                    }
                    assignment.starts.insert(partition, start);
                }
                Err(refusal) => assignment.refusals.push(refusal),
            }
        }
        for mut element in list.elements_for_topic(&self.topic) {
            if let Some(start) = assignment.starts.get(&element.partition()) {
                let _ = element.set_offset(Offset::Offset(start.offset));
            }
        }
        assignment
    }
}

/// Retries a broker request while the broker is unreachable, until `deadline`.
fn patiently<T>(
    deadline: Instant,
    what: &str,
    mut request: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    loop {
        match request() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, what, "retrying");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
}

pub struct Source {
    consumer: StreamConsumer<GroupContext>,
    context: Arc<GroupContext>,
    topic: String,
    /// Rebalance count the caller last saw (see `assignment_changed`).
    seen_rebalances: u64,
    /// Rebalance count `next_batch` last saw.
    batch_rebalances: u64,
    session_timeout: Duration,
}

/// How long a member whose commits were refused waits at least for the
/// group to assign it partitions again before it exits: a rejoin can take
/// a few request timeouts (librdkafka's is 10 s per request) on a loaded
/// broker, longer than three short sessions.
const MIN_REJOIN_WAIT: Duration = Duration::from_secs(60);

/// Watermark requests the caught-up check has in flight at once, each on a
/// thread of its own: a topic's partitions in a few round trips, not one
/// round trip (or one thread) per partition.
const WATERMARK_REQUESTS_AT_ONCE: usize = 16;

/// librdkafka's prefetch budget (`queued.max.messages.kbytes`).
const PREFETCH_KIB: u32 = 16 * 1024;

impl Source {
    /// Joins `group` and subscribes to `topic`; offsets are committed by
    /// `commit` only.
    pub fn subscribe(
        mut config: ClientConfig,
        group: &str,
        topic: &str,
        session_timeout: Duration,
        fetch_wait: Duration,
        on_data_loss: OnDataLoss,
        handoffs: BTreeMap<i32, i64>,
    ) -> Result<Self> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Starts are decided at assignment; an offset that falls out of
            // the retained range while reading is an error, never a jump.
            .set("auto.offset.reset", "error")
            // An event when a fetch reaches a partition's end: how a
            // catch-up run knows it read everything without an idle wait.
            .set("enable.partition.eof", "true")
            // Eager rebalancing; see the module comment.
            .set("partition.assignment.strategy", "roundrobin")
            // How long a member that died without leaving keeps its partitions.
            .set("session.timeout.ms", session_timeout.as_millis().to_string())
            // The real-time path waits on fetches: a broker that holds a
            // fetch until its wait passes (nisshi does) delays every record
            // by up to this (`--fetch-wait-ms`).
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            // What librdkafka prefetches ahead of the job, 64 MiB by default:
            // a quarter of that still holds more than a second of a
            // catch-up, and keeps a job's memory to its state.
            .set("queued.max.messages.kbytes", PREFETCH_KIB.to_string());
        let context = GroupContext {
            topic: topic.to_string(),
            on_data_loss,
            handoffs,
            rebalances: AtomicU64::new(0),
            assignment: Mutex::new(Assignment::default()),
            skipped: Mutex::new(HashMap::new()),
            commits: Mutex::new(VecDeque::new()),
            fenced_since: Mutex::new(None),
            at_end: Mutex::new(BTreeSet::new()),
            paused: Mutex::new(BTreeSet::new()),
            reachability: Reachability::default(),
        };
        let consumer: StreamConsumer<GroupContext> = config.create_with_context(context).map_err(kafka("create"))?;
        let context = consumer.context().clone();
        consumer
            .subscribe(&[topic])
            .map_err(kafka(format!("subscribe to {topic}")))?;
        Ok(Self {
            consumer,
            context,
            topic: topic.to_string(),
            seen_rebalances: 0,
            batch_rebalances: 0,
            session_timeout,
        })
    }

    /// True once after each rebalance: partitions may have moved, so state
    /// held for them must be reloaded from their checkpoints.
    pub fn assignment_changed(&mut self) -> bool {
        let now = self.context.rebalances.load(Ordering::SeqCst);
        let changed = now != self.seen_rebalances;
        self.seen_rebalances = now;
        changed
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Rebalances seen so far (by librdkafka's callback).
    pub fn rebalances(&self) -> u64 {
        self.context.rebalances.load(Ordering::SeqCst)
    }

    /// Where an assigned partition started (its committed offset and more).
    pub fn start(&self, partition: i32) -> Option<Start> {
        self.context.lock().starts.get(&partition).copied()
    }

    /// The partitions assigned to this member, ascending.
    pub fn assigned(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.context.lock().starts.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Partitions of the topic, as of the last assignment (kept when the
    /// assignment is revoked).
    pub fn partition_count(&self) -> Option<i32> {
        self.context.lock().partition_count
    }

    /// Records skipped so far because retention deleted them before the
    /// group read them (`--on-data-loss=continue`).
    pub fn skipped_by_data_loss(&self) -> u64 {
        guard(&self.context.skipped).values().sum()
    }

    fn refusals(&self) -> Result<()> {
        let assignment = self.context.lock();
        if assignment.refusals.is_empty() {
            return Ok(());
        }
        Err(Error::Refused(assignment.refusals.join("\n")))
    }

    /// Up to `max` records, returned when `max` is reached, when no record
    /// has arrived for `idle`, or once the batch is `max_wait` old; empty
    /// when the topic is quiet. A rebalance during collection discards the
    /// records collected so far (see the module comment).
    pub async fn next_batch(&mut self, max: usize, idle: Duration, max_wait: Duration) -> Result<Vec<Consumed>> {
        let mut batch: Vec<Consumed> = Vec::new();
        let started = Instant::now();
        loop {
            self.refusals()?;
            if batch.len() >= max || started.elapsed() >= max_wait {
                break;
            }
            let fenced_since = *guard(&self.context.fenced_since);
            if let Some(since) = fenced_since
                && since.elapsed() > (self.session_timeout * 3).max(MIN_REJOIN_WAIT)
            {
                return Err(Error::Refused(
                    "this member's commits were refused and the group has not assigned partitions again; \
                     exiting so a restart rejoins cleanly"
                        .into(),
                ));
            }
            let received = tokio::time::timeout(idle, self.consumer.recv())
                .await
                .map(|r| r.map(|message| owned(&message)));
            // Rebalance callbacks run inside `recv`. Records collected before
            // one may belong to partitions that moved: drop them (they are
            // fetched again from the committed offsets). A message `recv`
            // returned after the rebalance is already from the new assignment.
            let now = self.context.rebalances.load(Ordering::SeqCst);
            if now != self.batch_rebalances {
                if !batch.is_empty() {
                    tracing::info!(
                        discarded = batch.len(),
                        "rebalance during batch: its records are fetched again"
                    );
                }
                batch.clear();
                self.batch_rebalances = now;
                self.refusals()?;
            }
            let message = match received {
                Err(_elapsed) => break,
                Ok(Ok(message)) => {
                    self.context.reachability.answered();
                    guard(&self.context.at_end).remove(&message.partition);
                    message
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.context.reachability.answered();
                    guard(&self.context.at_end).insert(partition);
                    continue;
                }
                Ok(Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange),
                ))) => {
                    return Err(Error::Refused(format!(
                        "{}: the next offset to read is no longer in the topic ({code}): retention deleted records \
                         before this job read them. Nothing after the last commit was written; a restart refuses \
                         them with a count, or skips and counts them with --on-data-loss=continue.",
                        self.topic
                    )));
                }
                // librdkafka skips records it cannot read past these errors:
                // committing after them would lose those records silently.
                Ok(Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::BadMessage
                    | RDKafkaErrorCode::BadCompression
                    | RDKafkaErrorCode::NotImplemented
                    | RDKafkaErrorCode::MessageSizeTooLarge),
                ))) => {
                    return Err(Error::Refused(format!(
                        "{}: the client could not read a record set ({code}) and would skip it; refusing to commit \
                         past unread records. Nothing after the last commit was written.",
                        self.topic
                    )));
                }
                // The client reconnects by itself (broker restarts, network
                // blips); errors here are reports, not the end of the stream.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            if fenced_since.is_some() {
                continue;
            }
            batch.push(message);
        }
        Ok(batch)
    }

    /// True when this member has partitions and its fetches reached the end
    /// of every one of them, with no record since: a catch-up has read all
    /// there was (as of those fetches) and need not wait for a quiet spell.
    pub fn read_to_the_end(&self) -> bool {
        let assigned = self.assigned();
        let at_end = guard(&self.context.at_end);
        !assigned.is_empty() && assigned.iter().all(|p| at_end.contains(p))
    }

    /// The end (high watermark) of a partition, asked of the broker.
    pub fn partition_end(&self, partition: i32) -> Result<i64> {
        let (_, high) =
            crate::blocking::run(|| self.consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT))
                .map_err(kafka("watermarks"))?;
        Ok(high)
    }

    /// Stops fetching the assigned partitions (records already returned
    /// stay returned; `resume` fetches on from the next one).
    pub fn pause(&self) -> Result<()> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        guard(&self.context.paused).extend(assignment.elements().iter().map(|e| e.partition()));
        self.consumer.pause(&assignment).map_err(kafka("pause"))
    }

    /// Resumes the paused partitions that are assigned; one revoked
    /// meanwhile stays marked, and is resumed when it is assigned again
    /// (a resume now would leave it paused).
    pub fn resume(&self) -> Result<()> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        let mut resume = TopicPartitionList::new();
        {
            let mut paused = guard(&self.context.paused);
            for element in assignment.elements() {
                if paused.remove(&element.partition()) {
                    resume.add_partition(element.topic(), element.partition());
                }
            }
        }
        if resume.count() == 0 {
            return Ok(());
        }
        self.consumer.resume(&resume).map_err(kafka("resume"))
    }

    /// Sends a commit of `positions` without waiting; `reply` gets the
    /// answer through a later poll (`next_batch`). Sent from the polling
    /// task, it carries the generation of everything fetched since the last
    /// rebalance. A member whose assignment librdkafka knows to be lost gets
    /// `Fenced` at once.
    pub fn send_commit(&mut self, positions: &[Position], reply: CommitReply) -> Result<()> {
        if positions.is_empty() {
            let _ = reply.send(Ok(Commit::Done));
            return Ok(());
        }
        if self.consumer.assignment_lost() {
            self.context.fenced("librdkafka reports the assignment lost");
            let _ = reply.send(Ok(Commit::Fenced));
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for position in positions {
            list.add_partition_offset(&self.topic, position.partition, Offset::Offset(position.offset))
                .map_err(kafka("offset list"))?;
        }
        guard(&self.context.commits).push_back((positions.to_vec(), reply));
        tracing::debug!(?positions, "commit sent");
        if let Err(e) = commit_answered_by_poll(&self.consumer, &list) {
            // Not sent: answered here instead of by the callback.
            let (_, reply) = guard(&self.context.commits).pop_back().expect("just queued");
            let answer = match e {
                KafkaError::ConsumerCommit(code) if refused(code) => {
                    self.context.fenced(&code.to_string());
                    Ok(Commit::Fenced)
                }
                e => Err(e.to_string()),
            };
            let _ = reply.send(answer);
        }
        Ok(())
    }

    /// Why the brokers refused this member for good, once they did.
    pub fn refused(&self) -> Option<crate::kafka::reachability::Refusal> {
        self.context.reachability.refused()
    }

    /// How long no broker has answered, while none does.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.context.reachability.unreachable_for()
    }

    /// True while this member knows it lost its partitions (a refused
    /// commit) and the group has not assigned partitions again.
    pub fn is_fenced(&self) -> bool {
        guard(&self.context.fenced_since).is_some()
    }

    /// True when the group has consumed every partition of the topic to its
    /// high watermark: each partition's committed offset is at its end,
    /// whoever owns it. A partition held by a member whose
    /// session has not expired yet keeps this false until that member
    /// commits or its partitions move.
    pub fn group_caught_up(&self) -> Result<bool> {
        // Requests to the broker: off the workers.
        crate::blocking::run(|| self.group_caught_up_here())
    }

    fn group_caught_up_here(&self) -> Result<bool> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(kafka("metadata"))?;
        let mut list = TopicPartitionList::new();
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                list.add_partition(&self.topic, partition.id());
            }
        }
        if list.count() == 0 {
            return Ok(false);
        }
        let committed = self
            .consumer
            .committed_offsets(list.clone(), METADATA_TIMEOUT)
            .map_err(kafka("committed offsets"))?;
        // One request per partition, each a round trip: up to
        // `WATERMARK_REQUESTS_AT_ONCE` at a time.
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        let mut watermarks: Vec<Result<(i64, i64)>> = Vec::with_capacity(partitions.len());
        for group in partitions.chunks(WATERMARK_REQUESTS_AT_ONCE) {
            std::thread::scope(|scope| {
                let asked: Vec<_> = group
                    .iter()
                    .map(|&partition| {
                        scope.spawn(move || {
                            self.consumer
                                .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
                                .map_err(kafka("watermarks"))
                        })
                    })
                    .collect();
                watermarks.extend(
                    asked
                        .into_iter()
                        .map(|a| a.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
                );
            });
        }
        for (partition, watermarks) in partitions.into_iter().zip(watermarks) {
            let (low, high) = watermarks?;
            let next = committed
                .find_partition(&self.topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if next.unwrap_or(low) < high {
                self.context.reachability.answered();
                return Ok(false);
            }
        }
        self.context.reachability.answered();
        Ok(true)
    }
}

/// Sends a commit without waiting, its answer routed to the consumer's own
/// queue. librdkafka answers a plain asynchronous commit only to an
/// `offset_commit_cb`, which rdkafka's event API does not set, so that
/// answer would never come; `rd_kafka_commit_queue` with the main queue
/// (which rdkafka redirects to the consumer queue) delivers it as an
/// offset-commit event to a later poll, and so to `commit_callback`.
#[allow(unsafe_code)]
fn commit_answered_by_poll(consumer: &StreamConsumer<GroupContext>, list: &TopicPartitionList) -> KafkaResult<()> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live consumer's handle and `list` a valid list,
    // which librdkafka copies. The commit keeps its own reference to the
    // main queue, so the handle is released at once.
    let err = unsafe {
        let queue = rdkafka_sys::rd_kafka_queue_get_main(rk);
        let err = rdkafka_sys::rd_kafka_commit_queue(rk, list.ptr(), queue, None, std::ptr::null_mut());
        rdkafka_sys::rd_kafka_queue_destroy(queue);
        err
    };
    match RDKafkaErrorCode::from(err) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::ConsumerCommit(code)),
    }
}

fn owned<M: Message>(message: &M) -> Consumed {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_millis: message.timestamp().to_millis(),
        partition: message.partition(),
        offset: message.offset(),
    }
}
