//! transactions-ml-features-job guest: the running total of transactions per
//! user. The count lives in the host's keyed state (key = user id), so this
//! module holds nothing between batches and can be swapped at any boundary.
//!
//! The logic is generic over where that state lives (`KeyedState`): in the
//! component it is the host's, through the `keyed-state` import; the engine
//! benchmark compiles the same logic natively over a map of its own.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../wit" });

use rustc_hash::FxHashMap;
use sluice::pipeline::types::Feature;

/// One 64-bit value per key, as the `keyed-state` interface gives it, read
/// and written a batch at a time.
pub trait KeyedState {
    fn get_many(&mut self, keys: &[i64]) -> Vec<Option<i64>>;
    fn set_many(&mut self, entries: &[(i64, i64)]);
}

/// The host's keyed state, through the component's imports.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct HostState;

impl KeyedState for HostState {
    fn get_many(&mut self, keys: &[i64]) -> Vec<Option<i64>> {
        sluice::pipeline::keyed_state::get_many(keys)
    }

    fn set_many(&mut self, entries: &[(i64, i64)]) {
        sluice::pipeline::keyed_state::set_many(entries);
    }
}

// Only the component's exports construct it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Features;

impl Guest for Features {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(process(batch, &mut HostState))
    }
}

/// One outcome per transaction, in order, counting into `state`: the
/// batch's keys are read in one call, counted here, and the totals that
/// changed written back in one call.
pub fn process(batch: Vec<Transaction>, state: &mut impl KeyedState) -> Vec<FeatureOutcome> {
    let keys: Vec<i64> = batch
        .iter()
        .filter(|tx| tx.user_id >= 0)
        .map(|tx| i64::from(tx.user_id))
        .collect();
    let mut totals = Totals {
        known: FxHashMap::with_capacity_and_hasher(keys.len(), Default::default()),
        changed: Vec::new(),
    };
    for (key, stored) in keys.iter().zip(state.get_many(&keys)) {
        totals.known.entry(*key).or_insert(Total {
            value: stored.unwrap_or(0),
            changed: false,
        });
    }
    let outcomes = batch.into_iter().map(|tx| count(tx, &mut totals)).collect();
    let changed: Vec<(i64, i64)> = totals
        .changed
        .iter()
        .map(|key| (*key, totals.known[key].value))
        .collect();
    state.set_many(&changed);
    outcomes
}

/// The batch's totals by key, and the keys whose total changed, in the
/// order they first changed (so the state is written in a fixed order).
struct Totals {
    known: FxHashMap<i64, Total>,
    changed: Vec<i64>,
}

struct Total {
    value: i64,
    changed: bool,
}

fn count(tx: Transaction, totals: &mut Totals) -> FeatureOutcome {
    if tx.user_id < 0 {
        return FeatureOutcome::Reject(format!("negative user_id {}", tx.user_id));
    }
    let key = i64::from(tx.user_id);
    // Every non-negative key was read above.
    let known = totals.known.entry(key).or_insert(Total {
        value: 0,
        changed: false,
    });
    let total = known.value + 1;
    let Ok(total_transactions_count) = i32::try_from(total) else {
        return FeatureOutcome::Reject(format!("count for user {} overflows int", tx.user_id));
    };
    known.value = total;
    if !known.changed {
        known.changed = true;
        totals.changed.push(key);
    }
    FeatureOutcome::Emit(Feature {
        user_id: tx.user_id,
        total_transactions_count,
        as_of_timestamp_millis: tx.transaction_timestamp_millis,
    })
}

// The component's exports; a native build (the engine benchmark) calls
// `process` directly, and two guests' exports in one binary would clash.
#[cfg(target_arch = "wasm32")]
export!(Features);
