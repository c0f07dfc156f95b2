//! Test guest: guests/features, except that on reaching a record of user 13
//! it allocates 1 MiB buffers (filled with a non-zero byte, so the pages are
//! really written) and keeps them all, without end. Linear memory grows until
//! the host's memory cap refuses a `memory.grow`: the host must cap memory
//! per store, turn the failed growth into a failed batch, and roll back the
//! keyed-state writes the call made.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

use core::hint::black_box;

use common::MARKER_USER;

struct GrowMemory;

impl Guest for GrowMemory {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                if tx.user_id == MARKER_USER {
                    hoard();
                }
                common::count(tx)
            })
            .collect())
    }
}

/// Never returns: it ends when an allocation fails (an abort, i.e. a trap) or
/// the host traps the growth.
fn hoard() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(vec![0xA5; 1 << 20]);
        black_box(&mut kept);
    }
}

export!(GrowMemory);
