//! Test guest: guests/features, except that a batch holding a record of user
//! 13 gets one outcome fewer than it has records (the last one is dropped).
//! The host must reject the reply (outcomes are matched to records by
//! position), fail the batch and roll back the keyed-state writes the call
//! made.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use common::MARKER_USER;

struct WrongCount;

impl Guest for WrongCount {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        let poisoned = batch.iter().any(|tx| tx.user_id == MARKER_USER);
        let mut outcomes: Vec<FeatureOutcome> = batch.into_iter().map(common::count).collect();
        if poisoned {
            outcomes.pop();
        }
        Ok(outcomes)
    }
}

export!(WrongCount);
