//! A `generator` world guest for state at scale: transaction `index` is
//! user `1 + index % seed`, so the first `seed` records reach `seed`
//! distinct users and every later one updates one of them (`make bench`'s
//! state rows use a million). The seed is the number of users.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "generator", path: "../../../wit" });

struct GeneratorUsers;

impl Guest for GeneratorUsers {
    fn generate(seed: u64, first_index: u64, count: u32, start_millis: i64) -> Vec<Transaction> {
        let users = seed.max(1);
        (first_index..first_index + u64::from(count))
            .map(|index| Transaction {
                user_id: 1 + (index % users) as i32,
                transaction_timestamp_millis: start_millis + index as i64,
                amount: 1.0,
                currency: "EUR".into(),
                counterpart_id: 1_000_000,
            })
            .collect()
    }
}

export!(GeneratorUsers);
