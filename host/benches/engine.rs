//! The engine benchmark: one job's decode, logic and sinks over a file of
//! pre-encoded records, no broker (`sluice::jobs::engine`). The logic is the
//! job's wasm guest, or the same guest source compiled natively into this
//! binary behind the same interfaces (`RawFilter`, `FeatureLogic`): the
//! decode, the host's state and the sinks are the same code for both. The
//! wasm side also pays what running a guest costs: copying each batch into
//! and out of the component, the undo log and key limit of its keyed state,
//! and the failure policy's bookkeeping. `make bench` times this binary as a
//! whole process beside `../shared/bench/peer.py --input` on the same file.
//!
//!   engine backup|features wasm|native --input FILE [--module M.wasm]
//!
//! Settings come from the environment as sluice's do: SLUICE_REGISTRY_URL
//! (the records' writer schemas), SLUICE_REDIS_URL (features), and
//! `--output-url` for the Parquet objects. Prints one line of JSON.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use sluice::config::StorageArgs;
use sluice::jobs::engine::{Engine, read_input};
use sluice::redis_conn::RedisConn;
use sluice::registry::Registry;
use sluice::runtime::{
    Compiled, FeatureColumns, FeatureLogic, FeatureOutcome, FeaturesWorld, Limits, OutcomeKind, RawBatch, RawFilter,
    RawFilterWorld, Runtime, Settings, TransactionColumns, Verdict, outcomes_of,
};
use sluice::sinks::redis::RedisSink;
use sluice_guest_backup as backup_guest;
use sluice_guest_features as features_guest;

#[derive(Clone, Copy, ValueEnum)]
enum Job {
    Backup,
    Features,
}

#[derive(Clone, Copy, ValueEnum)]
enum Logic {
    /// The wasm component (`--module`), as the jobs run it.
    Wasm,
    /// The same guest source, compiled into this binary.
    Native,
}

#[derive(Parser)]
struct Args {
    job: Job,
    logic: Logic,
    /// Records, each a 4-byte big-endian length and a Confluent-framed value.
    #[arg(long)]
    input: PathBuf,
    /// The component, for `wasm`.
    #[arg(long)]
    module: Option<PathBuf>,
    /// The topic whose value schema the archive follows (backup).
    #[arg(long, default_value = "transactions")]
    topic: String,
    #[arg(long, env = "SLUICE_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    #[arg(long, env = "SLUICE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Keys go under this prefix (features).
    #[arg(long, default_value = "bench-engine")]
    redis_prefix: String,
    #[arg(long, default_value = "file://./data/bench-engine")]
    output_url: String,
    /// Records per micro-batch (features), as peer.py's --batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Records per Parquet object, as peer.py's --file-rows.
    #[arg(long, default_value_t = 100_000)]
    roll: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As sluice's own main does for the job.
    sluice::allocator::tune(match args.job {
        Job::Backup => sluice::allocator::Workload::Batches,
        Job::Features => sluice::allocator::Workload::KeyedState,
    });
    let storage = StorageArgs {
        output_url: args.output_url.clone(),
        s3_endpoint: std::env::var("SLUICE_S3_ENDPOINT").ok(),
        s3_path_style: true,
        s3_region: None,
        s3_ca_file: None,
    }
    .open()?;
    let values = read_input(&args.input)?;
    let module = match args.logic {
        Logic::Wasm => args
            .module
            .clone()
            .ok_or_else(|| anyhow::anyhow!("wasm needs --module"))?,
        Logic::Native => PathBuf::from("native"),
    };
    let engine = Engine {
        registry: Registry::new(&args.registry_url, None)?,
        storage,
        topic: args.topic.clone(),
        batch: args.batch,
        roll: args.roll,
        module: module.display().to_string(),
    };
    // The clock starts once the logic is ready: compiling a component is a
    // cost of the process (the whole-process rows of `make bench` count it),
    // not of the records; it is printed apart.
    let report = match (args.job, args.logic) {
        (Job::Backup, Logic::Wasm) => {
            let (mut guest, compiled) = timed(|| Ok(Compiled::<RawFilterWorld>::guest(&compile(&module)?)?))?;
            let started = Instant::now();
            (engine.backup(&values, &mut guest).await?, compiled, started.elapsed())
        }
        (Job::Backup, Logic::Native) => {
            let started = Instant::now();
            (
                engine.backup(&values, &mut NativeBackup).await?,
                Duration::ZERO,
                started.elapsed(),
            )
        }
        (Job::Features, logic) => {
            let connection = RedisConn::connect(&args.redis_url, None, Duration::from_secs(10)).await?;
            let redis = RedisSink::new(connection, &args.redis_prefix);
            match logic {
                Logic::Wasm => {
                    let (mut guest, compiled) = timed(|| Ok(Compiled::<FeaturesWorld>::guest(&compile(&module)?)?))?;
                    let started = Instant::now();
                    (
                        engine.features(&values, &mut guest, &redis).await?,
                        compiled,
                        started.elapsed(),
                    )
                }
                Logic::Native => {
                    let started = Instant::now();
                    (
                        engine.features(&values, &mut NativeFeatures, &redis).await?,
                        Duration::ZERO,
                        started.elapsed(),
                    )
                }
            }
        }
    };
    let (report, compiled, processing) = report;
    let mut line = serde_json::to_value(&report)?;
    line["compile_seconds"] = serde_json::json!(compiled.as_secs_f64());
    line["seconds"] = serde_json::json!(processing.as_secs_f64());
    line["records_per_s"] = serde_json::json!(report.records as f64 / processing.as_secs_f64().max(1e-9));
    println!("{line}");
    Ok(())
}

/// `make` with how long it took.
fn timed<T>(make: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let made = make()?;
    Ok((made, started.elapsed()))
}

/// Compiles as sluice's commands do by default: through the module cache.
fn compile<W: sluice::runtime::World>(module: &std::path::Path) -> anyhow::Result<std::sync::Arc<Compiled<W>>> {
    let runtime = Runtime::new(&Settings {
        limits: Limits::default(),
        module_cache: sluice::runtime::default_module_cache_dir(),
    })?;
    Ok(Compiled::<W>::compile(&runtime, module)?)
}

/// The backup guest's source, compiled natively. The batch crosses as it
/// crosses into the component: its buffers copied into the guest's own types.
struct NativeBackup;

impl RawFilter for NativeBackup {
    fn process(&mut self, batch: &RawBatch) -> Vec<sluice::runtime::Outcome<Verdict>> {
        let part = batch.part(batch.entries());
        let span = |s: sluice::runtime::Span| backup_guest::Span {
            start: s.start,
            len: s.len,
        };
        let input = backup_guest::RawBatch {
            partition: part.partition,
            bytes: part.bytes.to_vec(),
            entries: part
                .entries
                .iter()
                .map(|e| backup_guest::RawEntry {
                    key: e.key.map(span),
                    value: e.value.map(span),
                    timestamp_millis: e.timestamp_millis,
                    offset: e.offset,
                })
                .collect(),
            headers: part
                .headers
                .iter()
                .map(|h| backup_guest::RawHeader {
                    offset: h.offset,
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        };
        backup_guest::process(&input)
            .into_iter()
            .map(|verdict| {
                Ok(match verdict {
                    backup_guest::Verdict::Keep => Verdict::Keep,
                    backup_guest::Verdict::Drop => Verdict::Drop,
                    backup_guest::Verdict::Reject(reason) => Verdict::Reject(reason),
                })
            })
            .collect()
    }
}

/// The features guest's source, compiled natively, over the partition's
/// keyed state as the host's `keyed-state` gives it to the component.
struct NativeFeatures;

struct MapState<'a> {
    values: &'a mut HashMap<i64, i64>,
    changed: &'a mut HashSet<i64>,
}

impl features_guest::KeyedState for MapState<'_> {
    fn get_many(&mut self, keys: &[i64]) -> Vec<Option<i64>> {
        keys.iter().map(|key| self.values.get(key).copied()).collect()
    }

    fn set_many(&mut self, entries: &[(i64, i64)]) {
        for (key, value) in entries {
            self.values.insert(*key, *value);
            self.changed.insert(*key);
        }
    }
}

impl FeatureLogic for NativeFeatures {
    fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        changed: &mut HashSet<i64>,
        batch: &TransactionColumns,
    ) -> Vec<sluice::runtime::Outcome<FeatureOutcome>> {
        // The copies a call makes of the columns into the guest's memory,
        // and of its outcomes out of it.
        let part = batch.part(0..batch.len());
        let input = features_guest::TransactionColumns {
            user_ids: part.user_ids.to_vec(),
            transaction_timestamps_millis: part.timestamps_millis.to_vec(),
            amounts: part.amounts.to_vec(),
            currencies: part.currencies.to_string(),
            currency_spans: part
                .currency_spans
                .iter()
                .map(|s| features_guest::Span {
                    start: s.start,
                    len: s.len,
                })
                .collect(),
            counterpart_ids: part.counterpart_ids.to_vec(),
        };
        let mut state = MapState { values: state, changed };
        let output = features_guest::process(&input, &mut state);
        let columns = FeatureColumns {
            kinds: output
                .kinds
                .iter()
                .map(|kind| match kind {
                    features_guest::OutcomeKind::Emit => OutcomeKind::Emit,
                    features_guest::OutcomeKind::Skip => OutcomeKind::Skip,
                    features_guest::OutcomeKind::Reject => OutcomeKind::Reject,
                })
                .collect(),
            totals: output.totals,
            as_of_timestamps_millis: output.as_of_timestamps_millis,
            reasons: output.reasons,
        };
        match outcomes_of(columns, part.user_ids) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(reason) => panic!("the native features logic disagrees with itself: {reason}"),
        }
    }
}
