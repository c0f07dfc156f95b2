//! The one pipeline both consumer jobs run: the stages they share, in
//! order, with what each job plugs in.
//!
//! | stage | module |
//! |---|---|
//! | source: group membership, micro-batches | `kafka/consumer.rs`, `Consuming` |
//! | decode | `avro.rs`, called by the job's stages |
//! | guest | `runtime/`, called by the job's stages |
//! | real-time sink | `Stages::arrived` (features: `serving.rs`, Redis) |
//! | rolling Parquet writer | `rolling.rs` (when), `Stages::roll` (what), `durable.rs` (the write) |
//! | checkpoint | `state.rs`, written by `durable.rs` |
//! | commit | `durable.rs` asks, `Consuming::serve_commits` sends |

use serde::Serialize;

use crate::hot_swap::SwapRecord;
use crate::ops::metrics::BATCH_SECONDS;

use super::durable::{DurableReport, Outputs};
use super::{Consuming, Result, Roll, Step, Throughput};

/// What every consumer job reports, flattened into the job's own report.
#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub records: u64,
    #[serde(flatten)]
    pub throughput: Throughput,
    pub dead_lettered: u64,
    pub files: u64,
    /// The module in use at the end (each object's key-value metadata names
    /// the module that wrote it).
    pub module_sha256: String,
    /// Modules swapped in while the job ran, with where each took over.
    pub swaps: Vec<SwapRecord>,
}

/// What a job plugs into the pipeline.
pub(super) trait Stages {
    /// Before each step: what follows from the assignment (state to load,
    /// a serving store to check).
    async fn prepare(&mut self, _consuming: &mut Consuming) -> Result<()> {
        Ok(())
    }

    /// The real-time path over the records that just arrived
    /// (`Consuming::arrived`).
    async fn arrived(&mut self, _consuming: &mut Consuming) -> Result<()> {
        Ok(())
    }

    /// What a roll's records become on the durable path. The records are
    /// the job's to drop as it goes: each partition's are freed once its
    /// outputs are made, rather than held beside every output of the roll.
    async fn roll(&mut self, consuming: &mut Consuming, roll: Roll) -> Result<Outputs>;

    /// Records received so far.
    fn records(&self) -> u64;

    /// The module in use and the swaps so far.
    fn module(&self) -> (String, Vec<SwapRecord>);
}

/// Runs the pipeline until `Consuming::next` says stop, then waits for the
/// durable path to have written every roll.
pub(super) async fn run(mut consuming: Consuming, stages: &mut impl Stages) -> Result<(RunReport, DurableReport)> {
    while let Some(step) = consuming.next().await? {
        stages.prepare(&mut consuming).await?;
        match step {
            Step::Quiet => {}
            Step::Arrived => {
                let started = std::time::Instant::now();
                stages.arrived(&mut consuming).await?;
                metrics::histogram!(BATCH_SECONDS, "path" => "realtime").record(started.elapsed().as_secs_f64());
            }
            Step::Roll(roll) => {
                let started = std::time::Instant::now();
                let rebalances = roll.rebalances;
                let outputs = stages.roll(&mut consuming, roll).await?;
                metrics::histogram!(BATCH_SECONDS, "path" => "roll").record(started.elapsed().as_secs_f64());
                consuming.write(outputs, rebalances).await?;
            }
        }
    }
    let (throughput, durable) = consuming.finish(stages.records()).await?;
    let (module_sha256, swaps) = stages.module();
    let report = RunReport {
        records: stages.records(),
        throughput,
        dead_lettered: durable.dead_lettered,
        files: durable.files,
        module_sha256,
        swaps,
    };
    Ok((report, durable))
}
