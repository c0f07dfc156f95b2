//! Test guest: guests/features, except that it panics with "poison user 13"
//! on reaching a record of user 13 (after counting the records before it in
//! the batch). A panic is a trap: the host must fail the batch, roll back the
//! keyed-state writes the call made, and not reuse the trapped instance.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use common::MARKER_USER;

struct TrapOnUser;

impl Guest for TrapOnUser {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                if tx.user_id == MARKER_USER {
                    panic!("poison user {MARKER_USER}");
                }
                common::count(tx)
            })
            .collect())
    }
}

export!(TrapOnUser);
