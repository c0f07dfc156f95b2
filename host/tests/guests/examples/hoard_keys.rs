//! Test guest: guests/features, except that every call also creates a
//! million keyed-state entries of its own (keys no user has, distinct per
//! call). Without a total budget per partition the host's memory, and every
//! checkpoint, would grow by a million entries per batch. It behaves on the
//! probe a candidate module must pass (one record at event time 0), as a
//! module meant to do harm would, so the limit is met while the job runs.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use sluice::pipeline::keyed_state;

/// Entries each call creates.
const HOARD: i64 = 1_000_000;

struct HoardKeys;

impl Guest for HoardKeys {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        // Negative keys: users are never negative. Distinct per call, by the
        // batch's first event time.
        let first_time = batch.first().map_or(0, |tx| tx.transaction_timestamp_millis);
        let base = -(first_time * HOARD) - 1;
        for i in (0..HOARD).take_while(|_| first_time != 0) {
            keyed_state::set(base - i, i);
        }
        Ok(batch.into_iter().map(common::count).collect())
    }
}

export!(HoardKeys);
