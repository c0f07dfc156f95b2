//! A `generator` world guest whose every transaction is in XTS, the ISO 4217
//! code reserved for testing: swapped into a running producer, it shows in
//! the topic from the record index where it took over.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "generator", path: "../../../wit" });

struct GeneratorXts;

impl Guest for GeneratorXts {
    fn generate(_seed: u64, first_index: u64, count: u32, start_millis: i64) -> Vec<Transaction> {
        (first_index..first_index + u64::from(count))
            .map(|index| Transaction {
                user_id: 1 + (index % 100) as i32,
                transaction_timestamp_millis: start_millis + index as i64,
                amount: 1.0,
                currency: "XTS".into(),
                counterpart_id: 1_000_000,
            })
            .collect()
    }
}

export!(GeneratorXts);
