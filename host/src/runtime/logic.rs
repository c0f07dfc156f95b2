//! The consumer jobs' per-record logic as the host calls it, whichever way
//! it is compiled: a wasm guest, which is what the jobs run, or the same
//! source compiled natively, the engine benchmark's baseline
//! (`host/benches/engine.rs`). The jobs' processing is written against
//! these, so both run through the same host code.

use std::collections::{HashMap, HashSet};

use super::{FeatureOutcome, FeaturesGuest, Outcome, RawBatch, RawFilterGuest, TransactionColumns, Verdict};

/// The backup job's filter: one verdict per record, in order.
pub trait RawFilter {
    fn process(&mut self, batch: &RawBatch) -> Vec<Outcome<Verdict>>;
}

/// The features job's logic: one outcome per transaction, in order,
/// reading and writing the partition's keyed `state` and adding each key it
/// sets to `changed`.
pub trait FeatureLogic {
    fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        changed: &mut HashSet<i64>,
        batch: &TransactionColumns,
    ) -> Vec<Outcome<FeatureOutcome>>;
}

impl RawFilter for RawFilterGuest {
    fn process(&mut self, batch: &RawBatch) -> Vec<Outcome<Verdict>> {
        RawFilterGuest::process(self, batch)
    }
}

impl FeatureLogic for FeaturesGuest {
    fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        changed: &mut HashSet<i64>,
        batch: &TransactionColumns,
    ) -> Vec<Outcome<FeatureOutcome>> {
        FeaturesGuest::process(self, state, changed, batch)
    }
}
