//! Test guest: a "version 2" of guests/features for hot-swap tests. It counts
//! as guests/features does, except that a transaction with `amount == 0.0` is
//! rejected with "zero amount" and not counted (a negative user id is still
//! rejected first, with the features guest's reason). The host must send
//! the rejected records to the dead-letter topic and tell the two versions
//! apart in lineage (different sha256).

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

struct FeaturesV2;

impl Guest for FeaturesV2 {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(batch
            .into_iter()
            .map(|tx| {
                if tx.user_id >= 0 && tx.amount == 0.0 {
                    FeatureOutcome::Reject("zero amount".into())
                } else {
                    common::count(tx)
                }
            })
            .collect())
    }
}

export!(FeaturesV2);
