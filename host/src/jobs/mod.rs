//! The jobs users run. A job wires a source, a guest and sinks; nothing else
//! knows about jobs.

pub mod backup;
pub mod features;
pub mod produce;
pub mod setup;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::dlq::DeadLetters;
use crate::kafka::{Consumed, Source, producer};

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
    /// Stop once every assigned partition is read to its end.
    pub until_caught_up: bool,
}

/// What every consumer job shares: group membership as the job's user,
/// batches, stop on signal or once caught up, offset commits and the
/// dead-letter topic.
pub struct Consuming {
    source: Source,
    stop: watch::Receiver<bool>,
    options: RunOptions,
    pub dead_letters: DeadLetters,
    /// When the first batch arrived and the last one was committed: the
    /// job's busy span, without the group join and the final idle wait.
    first_batch_at: Option<Instant>,
    last_commit_at: Option<Instant>,
}

/// How long a job was busy, for its report.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Throughput {
    /// From the first batch received to the last batch committed.
    pub seconds: f64,
    pub records_per_s: f64,
}

impl Consuming {
    /// Joins the job's group as `user` (password from `password_var`).
    pub fn start(
        kafka: &KafkaArgs,
        options: RunOptions,
        job: &'static str,
        user: &str,
        password_var: &str,
    ) -> Result<Self> {
        let credentials = kafka.credentials(user, password_var);
        let config = kafka.client_config(credentials.as_ref());
        let source = Source::subscribe(config.clone(), &options.group, &kafka.topic, options.session_timeout)?;
        let dead_letters = DeadLetters::new(producer::create(config)?, &kafka.dlq_topic, &kafka.topic, job);
        tracing::info!(job, topic = %kafka.topic, group = %options.group, "consuming");
        Ok(Self {
            source,
            stop: stop_signal(),
            options,
            dead_letters,
            first_batch_at: None,
            last_commit_at: None,
        })
    }

    /// The busy span and rate over `records`.
    pub fn throughput(&self, records: u64) -> Throughput {
        match (self.first_batch_at, self.last_commit_at) {
            (Some(first), Some(last)) => {
                let seconds = last.duration_since(first).as_secs_f64();
                Throughput {
                    seconds,
                    records_per_s: records as f64 / seconds.max(1e-9),
                }
            }
            _ => Throughput::default(),
        }
    }

    /// The next batch, or `None` once the job should stop: on SIGINT/SIGTERM,
    /// or when it was asked to stop at the end of the topic and got there.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Consumed>>> {
        while !*self.stop.borrow() {
            let batch = self
                .source
                .next_batch(self.options.batch_size, self.options.idle, self.options.max_wait)
                .await?;
            if !batch.is_empty() {
                self.first_batch_at.get_or_insert_with(Instant::now);
                return Ok(Some(batch));
            }
            if self.options.until_caught_up {
                match self.source.caught_up() {
                    Ok(true) => break,
                    Ok(false) => {}
                    // The broker may be away for a while; ask again later.
                    Err(e) => tracing::warn!(error = %e, "cannot tell whether caught up yet"),
                }
            }
        }
        Ok(None)
    }

    /// Commits the batch's offsets; call once all its outputs are durable.
    pub async fn commit(&mut self, batch: &[Consumed]) -> Result<()> {
        crate::fault::point("before-commit");
        self.source.commit(&next_offsets(batch)).await?;
        self.last_commit_at = Some(Instant::now());
        Ok(())
    }

    /// Refuses to resume a partition from a checkpoint beyond the
    /// partition's end: the topic was recreated (offsets restarted) or the
    /// checkpoint belongs to another cluster, and trusting it would skip
    /// records silently.
    pub fn check_resume_point(&self, partition: i32, next_offset: i64, checkpoint: &str) -> Result<()> {
        let end = self.source.end_offset(partition)?;
        if next_offset > end {
            return Err(Error::Other(format!(
                "the checkpoint of partition {partition} resumes at offset {next_offset} but the partition ends at \
                 {end}: the topic was recreated or the checkpoint belongs to another cluster. Refusing to skip \
                 records; remove {checkpoint} to rebuild that partition's state from the topic."
            )));
        }
        Ok(())
    }

    /// True once after each rebalance (see `Source::assignment_changed`).
    pub fn assignment_changed(&mut self) -> bool {
        self.source.assignment_changed()
    }
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

/// The next offset to commit per partition: one past the last record.
pub fn next_offsets(batch: &[Consumed]) -> HashMap<i32, i64> {
    let mut next = HashMap::new();
    for record in batch {
        let entry = next.entry(record.partition).or_insert(record.offset + 1);
        *entry = (*entry).max(record.offset + 1);
    }
    next
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
