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

use super::durable::Outputs;
use super::{Consuming, Result, Roll, Step};

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

    /// What a roll's records become on the durable path.
    async fn roll(&mut self, consuming: &mut Consuming, roll: &Roll) -> Result<Outputs>;
}

/// Runs the pipeline until `Consuming::next` says stop; the durable path
/// has written every roll by then.
pub(super) async fn run(consuming: &mut Consuming, stages: &mut impl Stages) -> Result<()> {
    while let Some(step) = consuming.next().await? {
        stages.prepare(consuming).await?;
        match step {
            Step::Quiet => {}
            Step::Arrived => stages.arrived(consuming).await?,
            Step::Roll(roll) => {
                let outputs = stages.roll(consuming, &roll).await?;
                consuming.write(outputs, &roll).await?;
            }
        }
    }
    Ok(())
}
