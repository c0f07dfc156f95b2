//! Test guest: returns `Err("refuses every batch")` for every call, even an
//! empty or one-record batch, and touches no keyed state. The host must treat
//! the guest's error as a failed batch: nothing emitted, no offsets or state
//! committed for it, and the reason reported.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

struct AlwaysFails;

impl Guest for AlwaysFails {
    fn process(_batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Err("refuses every batch".into())
    }
}

export!(AlwaysFails);
