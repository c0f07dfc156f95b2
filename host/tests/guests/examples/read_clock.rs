//! Test guest: guests/features, except that for a record of user 13 it reads
//! the wall clock (`SystemTime::now`, i.e. wasi:clocks/wall-clock `now`) and
//! emits it as the feature's `as_of_timestamp_millis` instead of the
//! transaction's event time. Guests must be pure functions of (record,
//! state), so the host must never give them its time: the clock call must
//! fail the batch (the sandbox makes it trap with the reason).

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::MARKER_USER;

struct ReadClock;

impl Guest for ReadClock {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                let marked = tx.user_id == MARKER_USER;
                let mut outcome = common::count(tx);
                if marked && let FeatureOutcome::Emit(feature) = &mut outcome {
                    feature.as_of_timestamp_millis = now_millis();
                }
                outcome
            })
            .collect())
    }
}

/// Milliseconds since the Unix epoch by the wall clock; -1 before 1970.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(-1, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

export!(ReadClock);
