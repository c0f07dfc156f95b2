//! Test guest: guests/features, except that for a record of user 13 it draws
//! a random u64 from wasi:random/random (`get-random-u64`) and adds it to the
//! emitted feature's `as_of_timestamp_millis`. Guests must be deterministic,
//! so the host must never give them entropy: the call must fail the batch
//! (the sandbox makes it trap with the reason).

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

struct ReadRandom;

impl Guest for ReadRandom {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(common::count_marked(batch, || {
            i64::from_ne_bytes(wasip2::random::random::get_random_u64().to_ne_bytes())
        }))
    }
}

export!(ReadRandom);
