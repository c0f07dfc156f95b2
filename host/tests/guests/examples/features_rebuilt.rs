//! Test guest: the behaviour of guests/features exactly (the same outcomes,
//! the same reject reasons, the same keyed-state writes), written and built
//! differently so that its bytes, and so its sha256, differ. The host must
//! accept it as a drop-in replacement and record the new module's sha256 in
//! lineage from the batch it first processed. It implements the first world,
//! `features`, where guests/features implements `features-columns`: a swap
//! between the two crosses worlds.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

use sluice::pipeline::keyed_state;
use sluice::pipeline::types::Feature;

struct FeaturesRebuilt;

impl Guest for FeaturesRebuilt {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for tx in &batch {
            outcomes.push(outcome_of(tx.user_id, tx.transaction_timestamp_millis));
        }
        Ok(outcomes)
    }
}

/// One record's outcome, from the only two fields the count needs.
#[inline(never)]
fn outcome_of(user_id: i32, event_time_millis: i64) -> FeatureOutcome {
    if user_id < 0 {
        return FeatureOutcome::Reject(format!("negative user_id {user_id}"));
    }
    let key = i64::from(user_id);
    let total = keyed_state::get(key).map_or(1, |seen| seen + 1);
    match i32::try_from(total) {
        Ok(total_transactions_count) => {
            keyed_state::set(key, total);
            FeatureOutcome::Emit(Feature {
                user_id,
                total_transactions_count,
                as_of_timestamp_millis: event_time_millis,
            })
        }
        Err(_) => FeatureOutcome::Reject(format!("count for user {user_id} overflows int")),
    }
}

export!(FeaturesRebuilt);
