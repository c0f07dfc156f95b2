//! Test guest: guests/features, except that on reaching a record of user 13
//! it spins forever (after counting the records before it in the batch).
//! The host must interrupt the call at its deadline (epoch interruption),
//! fail the batch and roll back the keyed-state writes the call made.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use core::hint::black_box;

use common::MARKER_USER;

struct LoopForever;

impl Guest for LoopForever {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                if tx.user_id == MARKER_USER {
                    spin();
                }
                common::count(tx)
            })
            .collect())
    }
}

/// Never returns; `black_box` keeps the optimiser from proving the loop empty.
fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

export!(LoopForever);
