//! The `sluice` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{GuestArgs, KafkaArgs, RedisArgs, RegistryArgs, StorageArgs, SwapArgs};
use crate::jobs::backfill::Shard;
use crate::jobs::claims::ClaimsIn;
use crate::jobs::features::OnMispartitioned;
use crate::jobs::{self, RunOptions};
use crate::kafka::starting_offsets::OnDataLoss;
use crate::logging::LogFormat;
use crate::ops::progress::ProgressArgs;
use crate::registry::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka records through sandboxed WebAssembly components, to Parquet and Redis"
)]
pub struct Cli {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How log lines look on stderr: `text` (coloured only on a terminal)
    /// or `json`, one object a line.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// A TOML configuration file (docs/configuration.md): keys named as
    /// the flags, which, like `SLUICE_*` variables, win over it.
    #[arg(long, env = crate::settings::CONFIG_VAR, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Job {
    /// transactions-job-backup: every record to Parquet.
    Backup,
    /// transactions-ml-features-job: per-user counts to Parquet and Redis.
    Features,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the topics, register the schemas, create the job users and ACLs.
    Setup {
        /// Partitions of the transactions topic (docs/data.md, "Partitioning").
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// A consumer group the backup job's user may use; repeat for
        /// several (granting adds, so earlier grants stay).
        #[arg(long = "backup-group", default_value = jobs::backup::JOB)]
        backup_groups: Vec<String>,
        /// A consumer group the features job's user may use; repeat for
        /// several (a hand-off's new group, say).
        #[arg(long = "features-group", default_value = jobs::features::JOB)]
        features_groups: Vec<String>,
    },
    /// Run the transactions-producer with a generator module.
    Produce {
        /// The generator component (.wasm).
        #[arg(long)]
        module: PathBuf,
        /// Records to produce.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Records per second (unlimited when unset).
        #[arg(long)]
        rate: Option<f64>,
        /// Seed of the fake-data stream; the same seed and index give the same records.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Index of the first record in the seeded stream.
        #[arg(long, default_value_t = 0)]
        first_index: u64,
        /// Event time of record 0 of the stream, in Unix milliseconds (each
        /// later record is 1 ms later); the time the command starts when
        /// unset. For test data of past days.
        #[arg(long)]
        start_millis: Option<i64>,
        /// Records per guest call.
        #[arg(long, default_value_t = 1_000)]
        batch: u32,
        #[command(flatten)]
        guest: GuestArgs,
        #[command(flatten)]
        swap: SwapArgs,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Run a consumer job with a guest module.
    Run {
        /// Which job: the archive to Parquet, or the per-user features.
        #[arg(long, value_enum)]
        job: Job,
        /// The job's component (.wasm).
        #[arg(long)]
        module: PathBuf,
        /// Consumer group; defaults to the job's name.
        #[arg(long)]
        group: Option<String>,
        /// Records per micro-batch at most (what the real-time path takes at once).
        #[arg(long, env = "SLUICE_BATCH_SIZE", default_value_t = 10_000)]
        batch_size: usize,
        /// The topic counts as quiet after this many milliseconds without a
        /// record (--until-caught-up rolls open objects then).
        #[arg(long, env = "SLUICE_IDLE_MS", default_value_t = 200)]
        idle_ms: u64,
        /// A micro-batch closes at this age (milliseconds) at the latest.
        #[arg(long, env = "SLUICE_MAX_WAIT_MS", default_value_t = 10)]
        max_wait_ms: u64,
        /// How long the broker may hold a fetch with no records yet
        /// (milliseconds; librdkafka's fetch.wait.max.ms): a broker that holds
        /// fetches for the whole wait adds up to this to the real-time path.
        #[arg(long, env = "SLUICE_FETCH_WAIT_MS", default_value_t = 50)]
        fetch_wait_ms: u64,
        /// A partition's Parquet object rolls once it holds this many records.
        #[arg(long, env = "SLUICE_ROLL_ROWS", default_value_t = 1_000_000)]
        roll_rows: usize,
        /// ... or this many bytes of consumed keys and values (MiB).
        #[arg(long, env = "SLUICE_ROLL_MB", default_value_t = 64)]
        roll_mb: usize,
        /// ... or once its first record arrived this many milliseconds ago.
        #[arg(long, env = "SLUICE_ROLL_INTERVAL_MS", default_value_t = 300_000)]
        roll_interval_ms: u64,
        /// Consumer session timeout: how soon partitions of a member that
        /// died move to the others.
        #[arg(long, env = "SLUICE_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
        session_timeout_ms: u64,
        /// Exit once the group has read every partition of the topic to its
        /// end (waiting for partitions that members which died still hold).
        #[arg(long)]
        until_caught_up: bool,
        /// With --until-caught-up: give up, failing, once no broker has
        /// answered for this long (a service run waits on, not ready).
        #[arg(long, env = "SLUICE_KAFKA_PATIENCE_MS", default_value_t = 120_000)]
        kafka_patience_ms: u64,
        /// When the committed offset is no longer in the topic (retention
        /// deleted records the group never read): fail, or skip them, counting
        /// and logging what was skipped.
        #[arg(long, value_enum, default_value_t = OnDataLoss::Fail)]
        on_data_loss: OnDataLoss,
        /// features: a record that is not on its user's partition (murmur2 of
        /// the key) stops the job, or goes to the dead-letter topic.
        #[arg(long, value_enum, default_value_t = OnMispartitioned::Fail)]
        on_mispartitioned: OnMispartitioned,
        /// Where the claims that fence zombies live: next to the outputs when
        /// the store creates an object only once (probed at start), else in
        /// Redis (`auto`); or either by name.
        #[arg(long, env = "SLUICE_CLAIMS_IN", value_enum, default_value_t = ClaimsIn::Auto)]
        claims_in: ClaimsIn,
        /// backup: the timestamp field (a long of Unix milliseconds, or a
        /// timestamp) whose UTC date names each archive object's
        /// `event_date=` folder; `none` for no date folders.
        #[arg(long, env = "SLUICE_DATE_FOLDERS_BY", default_value = "transaction_timestamp_millis")]
        date_folders_by: String,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        guest: GuestArgs,
        #[command(flatten)]
        swap: SwapArgs,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Replay the backup archive through a features module: the same rows as
    /// the live job, to Parquet only (no Kafka, no Redis).
    Backfill {
        /// The features component (.wasm) to replay the archive through.
        #[arg(long)]
        module: PathBuf,
        /// The backup archive's root: the backup job's --output-url.
        #[arg(long)]
        from: String,
        /// Only the partitions p with p % n == i, for one of n workers.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
        /// Only transactions at or after this event time (RFC 3339, or
        /// milliseconds since the epoch); counts start at zero there.
        #[arg(long, value_parser = parse_event_time)]
        since: Option<i64>,
        /// Only transactions before this event time.
        #[arg(long, value_parser = parse_event_time)]
        until: Option<i64>,
        /// Write the final state as this consumer group's hand-off
        /// checkpoint under --output-url, where the live features job of
        /// that group continues from it.
        #[arg(long)]
        handoff_group: Option<String>,
        /// Partitions replayed at once (default: the machine's cores).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Features rows per output object, at least (whole archive objects
        /// per object; part of the backfill's identity, fixed across resumes).
        #[arg(long, default_value_t = 1_000_000)]
        rows_per_object: usize,
        /// A record that is not on its user's partition stops the backfill,
        /// or is left out of the counts and counted in the report.
        #[arg(long, value_enum, default_value_t = OnMispartitioned::Fail)]
        on_mispartitioned: OnMispartitioned,
        /// Count on when the archive misses offsets between two objects.
        #[arg(long)]
        allow_gaps: bool,
        /// Forget earlier progress: delete this output's backfill progress and
        /// features of the shard's partitions, and replay from the start.
        #[arg(long)]
        restart: bool,
        /// Serve Prometheus metrics and health here (loopback only, unless
        /// `SLUICE_ADMIN_TOKEN` guards it).
        #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        guest: GuestArgs,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Rebuild one partition's features state from the topic's start: deletes
    /// its checkpoints and feature objects and resets the group's offset to 0.
    /// Run it with the job stopped; it refuses when the topic no longer holds
    /// the partition's first records.
    RebuildState {
        /// The partition whose state is rebuilt.
        #[arg(long)]
        partition: i32,
        /// Consumer group of the features job.
        #[arg(long, default_value = jobs::features::JOB)]
        group: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Write every user's latest features from the features job's
    /// checkpoints to Redis (the running job also does this by itself when
    /// Redis loses keys). Fenced: never moves a value backwards.
    Republish {
        /// Consumer group of the features job.
        #[arg(long, default_value = jobs::features::JOB)]
        group: String,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Where the pipeline stands: the topic, each job group's members,
    /// committed offsets and lag, the newest checkpoints and objects, the
    /// modules that wrote them, Redis's feature keys, the datasets' sizes.
    Status {
        /// Consumer group of the backup job.
        #[arg(long, env = "SLUICE_BACKUP_GROUP", default_value = jobs::backup::JOB)]
        backup_group: String,
        /// Consumer group of the features job.
        #[arg(long, env = "SLUICE_FEATURES_GROUP", default_value = jobs::features::JOB)]
        features_group: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Print the effective configuration of every command (flags, then
    /// `SLUICE_*` variables, then the --config file, then defaults), each
    /// value with where it came from; secrets and URL passwords redacted.
    Config {
        /// Print the configuration reference (docs/configuration.md) instead.
        #[arg(long)]
        reference: bool,
    },
    /// Serve the embedded schema registry (Confluent REST subset).
    Registry {
        /// Where the registry listens: loopback only, unless
        /// --registry-allow-remote, as it has no authentication and anyone
        /// who reaches it can register schemas.
        #[arg(
            long = "registry-listen",
            visible_alias = "listen",
            env = "SLUICE_REGISTRY_LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: SocketAddr,
        /// Listen beyond loopback (behind a network that only trusted
        /// clients reach).
        #[arg(
            long = "registry-allow-remote",
            visible_alias = "allow-remote",
            env = "SLUICE_REGISTRY_ALLOW_REMOTE"
        )]
        allow_remote: bool,
        /// Where schemas and ids are kept across restarts.
        #[arg(
            long = "registry-data-file",
            visible_alias = "data-file",
            env = "SLUICE_REGISTRY_DATA_FILE",
            default_value = ".sluice/registry.json"
        )]
        data_file: PathBuf,
    },
}

impl Command {
    /// What the command's memory follows (`allocator`).
    pub fn workload(&self) -> crate::allocator::Workload {
        match self {
            Command::Run { job: Job::Features, .. } => crate::allocator::Workload::KeyedState,
            _ => crate::allocator::Workload::Batches,
        }
    }
}

/// An event time: milliseconds since the epoch, or RFC 3339
/// (`2026-11-01T00:00:00Z`).
fn parse_event_time(raw: &str) -> Result<i64, String> {
    if let Ok(millis) = raw.parse::<i64>() {
        return Ok(millis);
    }
    let time = humantime::parse_rfc3339_weak(raw)
        .map_err(|e| format!("{raw:?} is neither milliseconds nor an RFC 3339 time: {e}"))?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{raw:?} is before 1970"))?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| format!("{raw:?} is too far in the future"))
}

/// Runs a parsed command line; prints the command's report on stdout.
pub async fn run(cli: Cli, layers: &crate::settings::Layers) -> anyhow::Result<()> {
    let registry = || Registry::new(&cli.registry.registry_url, cli.registry.registry_ca_file.as_deref());
    match cli.command {
        Command::Setup {
            partitions,
            backup_groups,
            features_groups,
        } => {
            let setup = jobs::setup::Setup {
                kafka: cli.kafka.clone(),
                registry: registry()?,
                partitions,
                backup_groups,
                features_groups,
            };
            for line in setup.run().await? {
                println!("{line}");
            }
        }
        Command::Produce {
            module,
            count,
            rate,
            seed,
            first_index,
            start_millis,
            batch,
            guest,
            swap,
            progress,
        } => {
            if swap.admin_listen.is_some() {
                crate::ops::metrics::install("produce");
            }
            let produce = jobs::produce::Produce {
                kafka: cli.kafka.clone(),
                registry: registry()?,
                module,
                count,
                rate,
                seed,
                first_index,
                start_millis,
                batch: batch.max(1),
                runtime: guest.runtime(),
                swap: swap.options()?,
                progress_every: progress.every(),
            };
            println!("{}", serde_json::to_string(&produce.run().await?)?);
        }
        Command::Run {
            job,
            module,
            group,
            batch_size,
            idle_ms,
            max_wait_ms,
            roll_rows,
            roll_mb,
            roll_interval_ms,
            fetch_wait_ms,
            session_timeout_ms,
            until_caught_up,
            kafka_patience_ms,
            on_data_loss,
            on_mispartitioned,
            claims_in,
            date_folders_by,
            storage,
            redis,
            guest,
            swap,
            progress,
        } => {
            // A member is not ready until it holds partitions: from the
            // moment the admin endpoint answers, not once it joins.
            crate::ops::health::expect_assignment();
            // SIGTERM from here on, start-up included, is a clean stop.
            jobs::stop_signal();
            let default_group = match job {
                Job::Backup => jobs::backup::JOB,
                Job::Features => jobs::features::JOB,
            };
            if swap.admin_listen.is_some() {
                crate::ops::metrics::install(match job {
                    Job::Backup => "backup",
                    Job::Features => "features",
                });
            }
            let options = RunOptions {
                group: group.unwrap_or_else(|| default_group.to_string()),
                batch_size: batch_size.max(1),
                idle: Duration::from_millis(idle_ms.max(1)),
                max_wait: Duration::from_millis(max_wait_ms.max(1)),
                roll: jobs::rolling::RollPolicy {
                    rows: roll_rows.max(1),
                    bytes: roll_mb.max(1).saturating_mul(1 << 20),
                    interval: Duration::from_millis(roll_interval_ms.max(1)),
                },
                fetch_wait: Duration::from_millis(fetch_wait_ms.max(1)),
                session_timeout: Duration::from_millis(session_timeout_ms),
                until_caught_up,
                kafka_patience: Duration::from_millis(kafka_patience_ms),
                on_data_loss,
                claims_in,
                redis,
                handoffs: Default::default(),
                progress_every: progress.every(),
            };
            let storage = storage.open()?;
            let report = match job {
                Job::Backup => {
                    let job = jobs::backup::BackupJob {
                        kafka: cli.kafka.clone(),
                        registry: registry()?,
                        storage,
                        module,
                        options,
                        runtime: guest.runtime(),
                        swap: swap.options()?,
                        date_folders_by: Some(date_folders_by).filter(|f| f != "none"),
                    };
                    serde_json::to_string(&job.run().await?)?
                }
                Job::Features => {
                    let job = jobs::features::FeaturesJob {
                        kafka: cli.kafka.clone(),
                        registry: registry()?,
                        storage,
                        module,
                        options,
                        on_mispartitioned,
                        runtime: guest.runtime(),
                        swap: swap.options()?,
                    };
                    serde_json::to_string(&job.run().await?)?
                }
            };
            println!("{report}");
        }
        Command::Backfill {
            module,
            from,
            shard,
            since,
            until,
            handoff_group,
            parallelism,
            rows_per_object,
            on_mispartitioned,
            allow_gaps,
            restart,
            admin_listen,
            storage,
            guest,
            progress,
        } => {
            if let Some(addr) = admin_listen {
                crate::ops::metrics::install("backfill");
                let token = crate::secret::from_env(crate::config::ADMIN_TOKEN_VAR)?;
                crate::ops::listen(addr, token).await.map_err(anyhow::Error::msg)?;
            }
            let archive = StorageArgs {
                output_url: from,
                ..storage.clone()
            };
            let backfill = jobs::backfill::Backfill {
                module,
                archive: archive.open()?,
                output: storage.open()?,
                topic: cli.kafka.topic.clone(),
                shard,
                since,
                until,
                handoff_group,
                parallelism: parallelism.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                rows_per_object,
                on_mispartitioned,
                allow_gaps,
                restart,
                runtime: guest.runtime(),
                progress_every: progress.every(),
            };
            println!("{}", serde_json::to_string(&backfill.run().await?)?);
        }
        Command::RebuildState {
            partition,
            group,
            storage,
        } => {
            let rebuild = jobs::rebuild::RebuildState {
                kafka: cli.kafka.clone(),
                storage: storage.open()?,
                group,
                partition,
            };
            println!("{}", serde_json::to_string(&rebuild.run().await?)?);
        }
        Command::Republish { group, storage, redis } => {
            let republish = jobs::republish::Republish {
                storage: storage.open()?,
                redis,
                group,
                topic: cli.kafka.topic.clone(),
            };
            println!("{}", serde_json::to_string(&republish.run().await?)?);
        }
        Command::Status {
            backup_group,
            features_group,
            json,
            storage,
            redis,
        } => {
            let status = jobs::status::Status {
                kafka: cli.kafka.clone(),
                storage: storage.open()?,
                redis,
                backup_group,
                features_group,
            };
            let report = status.run().await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.human());
            }
        }
        Command::Config { reference } => {
            if reference {
                // The built-in defaults, not what the environment makes of them.
                print!("{}", crate::settings::reference(&crate::settings::command()));
            } else {
                print!("{}", layers.effective());
            }
        }
        Command::Registry {
            listen,
            allow_remote,
            data_file,
        } => {
            if !listen.ip().is_loopback() && !allow_remote {
                anyhow::bail!(
                    "the embedded registry has no authentication, so it listens on loopback only, not on {listen}; \
                     pass --registry-allow-remote to serve it beyond loopback"
                );
            }
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, data = %data_file.display(), "schema registry listening");
            crate::registry::embedded::serve(listener, data_file).await?;
        }
    }
    Ok(())
}
