//! Test guest: guests/features, except that for a record of user 13 it reads
//! the environment variable HOME (`std::env::var`: wasi:cli/environment
//! `get-environment`) and adds its length (0 if unset) to the emitted
//! feature's `as_of_timestamp_millis`. The host passes guests no
//! environment: the call must fail the batch (the sandbox makes it trap with
//! the reason), or at most find HOME unset, so the output is exactly that of
//! guests/features; it must never see the host's environment.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

struct ReadEnv;

impl Guest for ReadEnv {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(common::count_marked(batch, || {
            let home = std::env::var("HOME").map_or(0, |home| home.len());
            i64::try_from(home).unwrap_or(i64::MAX)
        }))
    }
}

export!(ReadEnv);
