//! transactions-ml-features-job guest: the running total of transactions per
//! user. The count lives in the host's keyed state (key = user id), so this
//! module holds nothing between batches and can be swapped at any boundary.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../wit" });

use sluice::pipeline::keyed_state;
use sluice::pipeline::types::Feature;

struct Features;

impl Guest for Features {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch.into_iter().map(count).collect())
    }
}

fn count(tx: Transaction) -> FeatureOutcome {
    if tx.user_id < 0 {
        return FeatureOutcome::Reject(format!("negative user_id {}", tx.user_id));
    }
    let key = i64::from(tx.user_id);
    let total = keyed_state::get(key).unwrap_or(0) + 1;
    let Ok(total_transactions_count) = i32::try_from(total) else {
        return FeatureOutcome::Reject(format!("count for user {} overflows int", tx.user_id));
    };
    keyed_state::set(key, total);
    FeatureOutcome::Emit(Feature {
        user_id: tx.user_id,
        total_transactions_count,
        as_of_timestamp_millis: tx.transaction_timestamp_millis,
    })
}

export!(Features);
