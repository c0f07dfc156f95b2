//! transactions-ml-features-job guest: the running total of transactions per
//! user. The count lives in the host's keyed state (key = user id), so this
//! module holds nothing between batches and can be swapped at any boundary.
//!
//! It implements `features-columns`: a batch arrives a column per field, and
//! the outcomes go back the same way. The logic is generic over where the
//! state lives (`KeyedState`): in the component it is the host's, through the
//! `keyed-state` import; the engine benchmark compiles the same logic
//! natively over a map of its own.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]
// Its export takes the batch's six columns flattened to core arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "features-columns", path: "../../wit" });

use rustc_hash::FxHashMap;
pub use sluice::pipeline::types::{OutcomeKind, Span};

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
    fn process(batch: TransactionColumns) -> Result<FeatureColumns, String> {
        Ok(process(&batch, &mut HostState))
    }
}

/// One outcome per transaction, in order, counting into `state`: the
/// batch's users are read in one call, counted here, and the totals that
/// changed written back in one call.
pub fn process(batch: &TransactionColumns, state: &mut impl KeyedState) -> FeatureColumns {
    let records = batch.user_ids.len();
    let mut totals = Totals {
        known: FxHashMap::with_capacity_and_hasher(records, Default::default()),
        changed: Vec::new(),
    };
    // Each user once, in the order of first appearance.
    let mut users = Vec::new();
    for user_id in batch.user_ids.iter().filter(|u| **u >= 0) {
        let key = i64::from(*user_id);
        totals.known.entry(key).or_insert_with(|| {
            users.push(key);
            Total {
                value: 0,
                changed: false,
            }
        });
    }
    for (key, stored) in users.iter().zip(state.get_many(&users)) {
        if let (Some(total), Some(stored)) = (totals.known.get_mut(key), stored) {
            total.value = stored;
        }
    }
    let mut out = FeatureColumns {
        kinds: Vec::with_capacity(records),
        totals: Vec::with_capacity(records),
        as_of_timestamps_millis: Vec::with_capacity(records),
        reasons: Vec::new(),
    };
    for (user_id, time) in batch.user_ids.iter().zip(&batch.transaction_timestamps_millis) {
        count(*user_id, *time, &mut totals, &mut out);
    }
    let changed: Vec<(i64, i64)> = totals
        .changed
        .iter()
        .map(|key| (*key, totals.known[key].value))
        .collect();
    state.set_many(&changed);
    out
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

/// Counts one transaction of `user_id` at `time` into `totals`, and its
/// outcome into `out`.
fn count(user_id: i32, time: i64, totals: &mut Totals, out: &mut FeatureColumns) {
    let reject = |out: &mut FeatureColumns, reason: String| {
        out.kinds.push(OutcomeKind::Reject);
        out.reasons.push(reason);
    };
    if user_id < 0 {
        return reject(out, format!("negative user_id {user_id}"));
    }
    let key = i64::from(user_id);
    // Every non-negative key was read above.
    let known = totals.known.entry(key).or_insert(Total {
        value: 0,
        changed: false,
    });
    let total = known.value + 1;
    let Ok(total_transactions_count) = i32::try_from(total) else {
        return reject(out, format!("count for user {user_id} overflows int"));
    };
    known.value = total;
    if !known.changed {
        known.changed = true;
        totals.changed.push(key);
    }
    out.kinds.push(OutcomeKind::Emit);
    out.totals.push(total_transactions_count);
    out.as_of_timestamps_millis.push(time);
}

// The component's exports; a native build (the engine benchmark) calls
// `process` directly, and two guests' exports in one binary would clash.
#[cfg(target_arch = "wasm32")]
export!(Features);
