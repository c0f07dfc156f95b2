//! Test guest: guests/features, except that on reaching a record of user 13
//! it sleeps for an hour (`std::thread::sleep`: wasi:clocks/monotonic-clock
//! `subscribe-duration`, then wasi:io/poll `poll`) before going on. Epoch
//! interruption does not reach into a blocking host call, so the host must
//! not let a guest block it: the clock call must fail the batch at once (the
//! sandbox makes it trap with the reason), well within the call's deadline.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use std::time::Duration;

use common::MARKER_USER;

struct Sleep;

impl Guest for Sleep {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                if tx.user_id == MARKER_USER {
                    std::thread::sleep(Duration::from_secs(3600));
                }
                common::count(tx)
            })
            .collect())
    }
}

export!(Sleep);
