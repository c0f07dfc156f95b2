//! The records the pipeline speaks about, as the host sees them. Field names
//! match schemas/*.avsc so serde maps them to Avro directly.

use serde::{Deserialize, Serialize};

/// Subject of the transaction value schema under TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Subject of the ML feature event schema.
pub const FEATURES_SUBJECT: &str = "transactions-ml-features-value";

/// The Avro schemas the pipeline registers, embedded so the binary needs no
/// checkout to run `sluice setup`.
pub const TRANSACTION_SCHEMA: &str = include_str!("../../schemas/transaction.avsc");
pub const FEATURES_SCHEMA: &str = include_str!("../../schemas/transaction_features.avsc");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub user_id: i32,
    pub transaction_timestamp_millis: i64,
    pub amount: f32,
    pub currency: String,
    pub counterpart_id: i32,
}

/// The Kafka key of a transaction: the user id as UTF-8 decimal, so every
/// client (and `kcat -K`) reads it and all of a user's records share a
/// partition.
pub fn transaction_key(user_id: i32) -> String {
    let mut key = String::new();
    write_transaction_key(user_id, &mut key);
    key
}

/// `transaction_key` into a reused buffer (per-record checks, no allocation).
pub fn write_transaction_key(user_id: i32, key: &mut String) {
    use std::fmt::Write;
    key.clear();
    // Writing to a String cannot fail.
    let _ = write!(key, "{user_id}");
}

/// One ML feature event with its lineage: the source record it was computed
/// at. The lineage makes every event identifiable (a replay rewrites the
/// same event) and fences Redis writes.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEvent {
    pub user_id: i32,
    pub total_transactions_count: i32,
    pub as_of_timestamp_millis: i64,
    pub source_partition: i32,
    pub source_offset: i64,
}
