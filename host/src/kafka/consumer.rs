//! A consumer-group member that hands out batches of records and commits
//! offsets only when told to.
//!
//! Rebalances use the eager protocol: every rebalance revokes the whole
//! assignment, and an assigned partition starts where `starting_offsets`
//! decides (the committed offset, checked against the retained range). A
//! batch being collected when a rebalance happens is thrown away: its
//! uncommitted records are fetched again by whoever owns their partition now.
//!
//! Records the caller holds back (past a claimed range's end, or a range to
//! complete) wait in a carry-over for the next batch, and a partition with a
//! claimed end gets exactly that range before its batch closes. A commit the
//! group refuses means this member lost its partitions: everything it holds
//! is dropped until the group assigns partitions again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

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
}

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
/// How often a wait for a claimed range checks that the range can complete.
const CLAIM_CHECK_EVERY: Duration = Duration::from_secs(10);

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
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let assignment = self.plan(consumer, list);
            tracing::info!(?partitions, "partitions assigned");
            if let Err(e) = consumer.assign(list) {
                tracing::error!(error = %e, "assign failed");
            }
            *self.lock() = assignment;
        } else {
            if consumer.assignment_lost() {
                tracing::warn!(
                    ?partitions,
                    "partitions revoked: this member lost its partitions (its session expired)"
                );
            } else {
                tracing::info!(?partitions, "partitions revoked");
            }
            *self.lock() = Assignment::default();
            if let Err(e) = consumer.unassign() {
                tracing::error!(error = %e, "unassign failed");
            }
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

impl GroupContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        // A panic while holding it cannot leave a half-made assignment.
        self.assignment
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// Claimed ranges to complete before a batch closes: partition -> end.
    claimed: HashMap<i32, i64>,
    /// Partitions whose claimed range the last batch completed.
    completed: HashSet<i32>,
    /// Records that belong to the next batch (past a claimed segment's end).
    carry: VecDeque<Consumed>,
    /// Since when this member knows it lost its partitions.
    fenced_since: Option<Instant>,
    session_timeout: Duration,
}

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
            .set("enable.partition.eof", "false")
            // Eager rebalancing; see the module comment.
            .set("partition.assignment.strategy", "roundrobin")
            // How long a member that died without leaving keeps its partitions.
            .set("session.timeout.ms", session_timeout.as_millis().to_string())
            // The real-time path waits on fetches: a broker that holds a
            // fetch until its wait passes (nisshi does) delays every record
            // by up to this (`--fetch-wait-ms`).
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string());
        let context = GroupContext {
            topic: topic.to_string(),
            on_data_loss,
            handoffs,
            rebalances: AtomicU64::new(0),
            assignment: Mutex::new(Assignment::default()),
            skipped: Mutex::new(HashMap::new()),
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
            claimed: HashMap::new(),
            completed: HashSet::new(),
            carry: VecDeque::new(),
            fenced_since: None,
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

    /// Partitions of the topic, as of the last assignment.
    pub fn partition_count(&self) -> Option<i32> {
        self.context.lock().partition_count
    }

    /// Records skipped so far because retention deleted them before the
    /// group read them (`--on-data-loss=continue`).
    pub fn skipped_by_data_loss(&self) -> u64 {
        self.context
            .skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }

    fn refusals(&self) -> Result<()> {
        let assignment = self.context.lock();
        if assignment.refusals.is_empty() {
            return Ok(());
        }
        Err(Error::Refused(assignment.refusals.join("\n")))
    }

    /// Forgets everything held since the last rebalance.
    fn on_rebalance(&mut self) {
        self.carry.clear();
        self.claimed.clear();
        self.completed.clear();
        self.fenced_since = None;
    }

    /// True when the last batch completed a claimed range of `partition`:
    /// every record below its end that the partition holds is in the batch
    /// (the last offsets may be gone, leaving the batch short of the end).
    pub fn claim_completed(&self, partition: i32) -> bool {
        self.completed.contains(&partition)
    }

    /// Gives records back for the next batch, in order, ahead of any carried
    /// ones; `claimed` ends make the next batch complete those ranges.
    pub fn hold_back(&mut self, records: Vec<Consumed>, claimed: &[(i32, i64)]) {
        for record in records.into_iter().rev() {
            self.carry.push_front(record);
        }
        self.claimed.extend(claimed.iter().copied());
    }

    /// Up to `max` records, returned when `max` is reached, when no record
    /// has arrived for `idle`, or once the batch is `max_wait` old; a claimed
    /// range held back is always completed first (meanwhile the other
    /// partitions' records wait for the next batch once the batch is full or
    /// old). Empty when the topic is quiet, or when `stop` turns true while
    /// a claimed range is incomplete. A rebalance during collection discards
    /// the records collected so far (see the module comment).
    pub async fn next_batch(
        &mut self,
        max: usize,
        idle: Duration,
        max_wait: Duration,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Vec<Consumed>> {
        let mut batch: Vec<Consumed> = Vec::new();
        // Partitions whose further records belong to the next batch.
        let mut closed: HashSet<i32> = HashSet::new();
        self.completed.clear();
        for record in std::mem::take(&mut self.carry) {
            self.admit(record, &mut batch, &mut closed, false);
        }
        let started = Instant::now();
        let mut checked_at = Instant::now();
        loop {
            self.refusals()?;
            let full = batch.len() >= max || started.elapsed() >= max_wait;
            if self.claimed.is_empty() && full {
                break;
            }
            if !self.claimed.is_empty() {
                if *stop.borrow() {
                    // The collected records are uncommitted: fetched again later.
                    self.carry.clear();
                    self.claimed.clear();
                    return Ok(Vec::new());
                }
                if checked_at.elapsed() > CLAIM_CHECK_EVERY {
                    checked_at = Instant::now();
                    tracing::warn!(claimed = ?self.claimed, "waiting for the records of claimed ranges");
                    self.check_claims_reachable()?;
                }
            }
            if let Some(since) = self.fenced_since
                && since.elapsed() > self.session_timeout * 3
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
                closed.clear();
                self.batch_rebalances = now;
                self.on_rebalance();
                self.refusals()?;
            }
            let message = match received {
                Err(_elapsed) if self.claimed.is_empty() => break,
                Err(_elapsed) => continue,
                Ok(Ok(message)) => message,
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
            if self.fenced_since.is_some() {
                continue;
            }
            self.admit(message, &mut batch, &mut closed, full);
        }
        Ok(batch)
    }

    /// A claimed range always ended at a record that existed; one reaching
    /// past the partition's end was made for another incarnation of the
    /// topic, and waiting for it would wait forever.
    fn check_claims_reachable(&self) -> Result<()> {
        for (&partition, &end) in &self.claimed {
            let high = match self.consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT) {
                Ok((_, high)) => high,
                Err(e) => {
                    tracing::warn!(error = %e, partition, "cannot read the partition's end; asking again later");
                    continue;
                }
            };
            if end > high {
                return Err(Error::Refused(format!(
                    "partition {partition} of {}: a claim ends at offset {end}, beyond the partition's end {high}; \
                     it was made before the topic was recreated. Delete the group's claims \
                     (<redis prefix>:claims:<group>:{}:{partition}) to start over.",
                    self.topic, self.topic
                )));
            }
        }
        Ok(())
    }

    /// Adds a record to the batch, or to the carry-over when it lies past a
    /// claimed range's end, or when the batch is `full` and only claimed
    /// ranges are still being completed.
    fn admit(&mut self, record: Consumed, batch: &mut Vec<Consumed>, closed: &mut HashSet<i32>, full: bool) {
        let partition = record.partition;
        let Some(&end) = self.claimed.get(&partition) else {
            if full || closed.contains(&partition) {
                self.carry.push_back(record);
            } else {
                batch.push(record);
            }
            return;
        };
        if record.offset >= end {
            self.claimed.remove(&partition);
            self.completed.insert(partition);
            closed.insert(partition);
            self.carry.push_back(record);
            return;
        }
        if record.offset + 1 >= end {
            self.claimed.remove(&partition);
            self.completed.insert(partition);
            closed.insert(partition);
        }
        batch.push(record);
    }

    /// Commits, synchronously, `positions`, retrying while the broker is
    /// unreachable. A refusal by the group (a rebalance, an expired session)
    /// means this member lost its partitions: it returns `Fenced` and drops
    /// everything it holds until the group assigns partitions again.
    pub async fn commit(&mut self, positions: &[Position]) -> Result<Commit> {
        if positions.is_empty() {
            return Ok(Commit::Done);
        }
        let mut list = TopicPartitionList::new();
        for position in positions {
            list.add_partition_offset(&self.topic, position.partition, Offset::Offset(position.offset))
                .map_err(kafka("offset list"))?;
        }
        loop {
            if self.consumer.assignment_lost() {
                return Ok(self.fenced("librdkafka reports the assignment lost"));
            }
            match self.consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => return Ok(Commit::Done),
                Err(KafkaError::ConsumerCommit(
                    code @ (RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::FencedInstanceId
                    | RDKafkaErrorCode::AssignmentLost
                    | RDKafkaErrorCode::State),
                )) => return Ok(self.fenced(&code.to_string())),
                Err(e) => {
                    tracing::warn!(error = %e, "commit failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    fn fenced(&mut self, reason: &str) -> Commit {
        tracing::warn!(
            reason,
            "commit refused: this member lost its partitions; dropping what it holds until the group assigns \
             partitions again"
        );
        self.carry.clear();
        self.claimed.clear();
        self.fenced_since.get_or_insert_with(Instant::now);
        Commit::Fenced
    }

    /// True when the group has consumed every partition of the topic to its
    /// high watermark: each partition's committed offset is at its end,
    /// whoever owns it. A partition held by a member whose
    /// session has not expired yet keeps this false until that member
    /// commits or its partitions move.
    pub fn group_caught_up(&self) -> Result<bool> {
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
        for element in list.elements() {
            let partition = element.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
                .map_err(kafka("watermarks"))?;
            let next = committed
                .find_partition(&self.topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if next.unwrap_or(low) < high {
                return Ok(false);
            }
        }
        Ok(true)
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
