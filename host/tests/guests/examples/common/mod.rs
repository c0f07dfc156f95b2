//! What the hostile test guests share: the marker user and the per-record
//! logic of guests/features (keep the two in step).

// Not every example uses every item.
#![allow(dead_code)]

use crate::sluice::pipeline::keyed_state;
use crate::sluice::pipeline::types::{Feature, FeatureOutcome, Transaction};

/// The user whose records make a hostile guest misbehave.
pub const MARKER_USER: i32 = 13;

/// guests/features' running count of transactions per user.
pub fn count(tx: Transaction) -> FeatureOutcome {
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

/// Adds `delta` to the event time of an emitted feature, so that what a
/// hostile call obtained shows in the output (and cannot be optimised out).
pub fn shift_time(mut outcome: FeatureOutcome, delta: i64) -> FeatureOutcome {
    if let FeatureOutcome::Emit(feature) = &mut outcome {
        feature.as_of_timestamp_millis = feature.as_of_timestamp_millis.wrapping_add(delta);
    }
    outcome
}

/// guests/features over a batch, except that each record of the marker user
/// has what `obtain` returns (what a hostile call got) added to its time.
pub fn count_marked(batch: Vec<Transaction>, obtain: impl Fn() -> i64) -> Vec<FeatureOutcome> {
    batch
        .into_iter()
        .map(|tx| {
            let marked = tx.user_id == MARKER_USER;
            let outcome = count(tx);
            if marked { shift_time(outcome, obtain()) } else { outcome }
        })
        .collect()
}
