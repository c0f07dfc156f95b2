//! The feature logic the live features job and the backfill share, so both
//! give the same rows over the same records: the check that a user's records
//! are on its partition, and one guest call per partition's transactions whose
//! outcomes become feature events with their source partition and offset.

use clap::ValueEnum;

use crate::kafka::partitioner::partition_of;
use crate::model::{FeatureEvent, write_transaction_key};
use crate::runtime::{FeatureLogic, FeatureOutcome, TransactionColumns};
use crate::state::{Latest, PartitionState};

/// What to do with a record that is not on its user's partition (a producer
/// partitioned it with something other than murmur2 of the user id). Counts
/// are partition-local, so such a record would be counted apart from the
/// rest of its user's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OnMispartitioned {
    /// Stop before writing anything for the batch, naming the user and both
    /// partitions.
    #[default]
    Fail,
    /// Leave the record out of the counts: the live job sends it to the
    /// dead-letter topic with that reason; the backfill, which writes no
    /// Kafka, counts it in its report.
    DeadLetter,
}

/// Checks each user's records against the partition murmur2 of its key
/// gives, for a topic of `partitions` partitions.
pub struct Placement {
    partitions: i32,
    /// Reused for each record's key: no allocation per record.
    key: String,
    /// Users' home partitions, each in the slot its id picks (a
    /// partition's users recur, and formatting and hashing a key cost more
    /// than the rest of the check; a user whose slot another took is
    /// computed again).
    homes: Vec<Home>,
}

/// Slots of `Placement::homes`.
const HOME_SLOTS: usize = 4096;

#[derive(Clone, Copy)]
struct Home {
    user_id: i32,
    /// Negative for an empty slot.
    partition: i32,
}

impl Placement {
    pub fn new(partitions: i32) -> Self {
        Self {
            partitions,
            key: String::new(),
            homes: vec![
                Home {
                    user_id: 0,
                    partition: -1,
                };
                HOME_SLOTS
            ],
        }
    }

    /// `None` when `user_id`'s records belong on `partition`, else why not.
    pub fn misplaced(&mut self, user_id: i32, partition: i32, offset: i64) -> Option<String> {
        let home = self.home_of(user_id);
        (home != partition).then(|| {
            format!(
                "user {user_id} is on partition {partition} (offset {offset}) but murmur2 of its key puts it on \
                 partition {home}: a producer used another partitioner (librdkafka's default is consistent_random; \
                 use murmur2_random, Java's default)"
            )
        })
    }

    fn home_of(&mut self, user_id: i32) -> i32 {
        let slot = &mut self.homes[user_id as u32 as usize % HOME_SLOTS];
        if slot.partition >= 0 && slot.user_id == user_id {
            return slot.partition;
        }
        write_transaction_key(user_id, &mut self.key);
        let home = partition_of(self.key.as_bytes(), self.partitions);
        *slot = Home {
            user_id,
            partition: home,
        };
        home
    }
}

/// The error that stops a job under `OnMispartitioned::Fail`.
pub fn mispartitioned_refusal(reason: &str) -> super::Error {
    super::Error::Other(format!(
        "{reason}. Per-user counts are partition-local and would be wrong, so the job stops before counting this \
         partition's batch. Fix the producer and re-produce, or run with --on-mispartitioned=dead-letter to leave \
         such records out of the counts."
    ))
}

/// What the features guest made of one partition's transactions.
#[derive(Debug, Default)]
pub struct Counted {
    pub events: Vec<FeatureEvent>,
    /// Indexes of the inputs the guest rejected, with its reason.
    pub rejected: Vec<(usize, String)>,
}

/// The guest over `inputs` (records of `partition` at `offsets`, in offset
/// order) against the partition's keyed state, one call per batch under the
/// failure policy: a record the guest fails on alone is rejected with the
/// reason and leaves the state as if it had not been there.
pub fn count(
    guest: &mut impl FeatureLogic,
    state: &mut PartitionState,
    partition: i32,
    offsets: &[i64],
    inputs: &TransactionColumns,
) -> Counted {
    let outcomes = guest.process(&mut state.values, &mut state.changes.keys, inputs);
    let mut counted = Counted {
        events: Vec::with_capacity(outcomes.len()),
        rejected: Vec::new(),
    };
    for (index, (offset, outcome)) in offsets.iter().zip(outcomes).enumerate() {
        match outcome {
            // The serving view holds one entry per user of the partition's
            // own records: a feature of any other user is out of contract.
            Ok(FeatureOutcome::Emit(f)) if f.user_id != inputs.user_ids()[index] => counted.rejected.push((
                index,
                format!(
                    "the guest emitted a feature of user {} for a transaction of user {}",
                    f.user_id,
                    inputs.user_ids()[index]
                ),
            )),
            Ok(FeatureOutcome::Emit(f)) => {
                // What Redis serves for the user from now on (see `Latest`).
                state.set_latest(
                    f.user_id,
                    Latest {
                        total_transactions_count: f.total_transactions_count,
                        as_of_timestamp_millis: f.as_of_timestamp_millis,
                        source_offset: *offset,
                    },
                );
                counted.events.push(FeatureEvent {
                    user_id: f.user_id,
                    total_transactions_count: f.total_transactions_count,
                    as_of_timestamp_millis: f.as_of_timestamp_millis,
                    source_partition: partition,
                    source_offset: *offset,
                });
            }
            Ok(FeatureOutcome::Skip) => {}
            Ok(FeatureOutcome::Reject(reason)) => {
                counted.rejected.push((index, format!("rejected by guest: {reason}")))
            }
            Err(failure) => counted.rejected.push((index, failure.to_string())),
        }
    }
    state.settle_changes();
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_home_is_the_one_murmur2_gives() {
        let mut placement = Placement::new(6);
        let mut key = String::new();
        // Users that share a slot, each asked twice, in turn.
        let users = [7, 7 + HOME_SLOTS as i32, -7, 7 + 2 * HOME_SLOTS as i32];
        for _ in 0..2 {
            for user_id in users {
                write_transaction_key(user_id, &mut key);
                let home = partition_of(key.as_bytes(), 6);
                assert_eq!(placement.misplaced(user_id, home, 0), None, "user {user_id}");
                assert!(
                    placement.misplaced(user_id, (home + 1) % 6, 0).is_some(),
                    "user {user_id}"
                );
            }
        }
    }
}
