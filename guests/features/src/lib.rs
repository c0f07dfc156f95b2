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

use sluice::pipeline::types::Feature;

/// One 64-bit value per key, as the `keyed-state` interface gives it.
pub trait KeyedState {
    fn get(&mut self, key: i64) -> Option<i64>;
    fn set(&mut self, key: i64, value: i64);
}

/// The host's keyed state, through the component's imports.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct HostState;

impl KeyedState for HostState {
    fn get(&mut self, key: i64) -> Option<i64> {
        sluice::pipeline::keyed_state::get(key)
    }

    fn set(&mut self, key: i64, value: i64) {
        sluice::pipeline::keyed_state::set(key, value);
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

/// One outcome per transaction, in order, counting into `state`.
pub fn process(batch: Vec<Transaction>, state: &mut impl KeyedState) -> Vec<FeatureOutcome> {
    batch.into_iter().map(|tx| count(tx, state)).collect()
}

fn count(tx: Transaction, state: &mut impl KeyedState) -> FeatureOutcome {
    if tx.user_id < 0 {
        return FeatureOutcome::Reject(format!("negative user_id {}", tx.user_id));
    }
    let key = i64::from(tx.user_id);
    let total = state.get(key).unwrap_or(0) + 1;
    let Ok(total_transactions_count) = i32::try_from(total) else {
        return FeatureOutcome::Reject(format!("count for user {} overflows int", tx.user_id));
    };
    state.set(key, total);
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
