//! Open objects: each partition's records since its last roll, and when
//! they roll. A partition's object rolls when it holds `--roll-rows`
//! records or `--roll-bytes` bytes of consumed keys and values, or when its
//! first record arrived `--roll-interval-ms` ago; on demand, every open
//! object rolls at once (a stop, a quiet topic under `--until-caught-up`, a
//! module swap). The range a roll proposes is then claimed (`claims`): a
//! claim an earlier member made for the same first offset wins, so a roll
//! takes exactly the claimed range and leaves the rest open, or waits until
//! the claimed range is complete. Wall-clock rolling is safe because the
//! claim, not the clock, fixes what an object named by its first offset
//! holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::kafka::Consumed;

use super::claims::Range;

/// When a partition's open object rolls.
#[derive(Debug, Clone, Copy)]
pub struct RollPolicy {
    /// Records an object holds at least before it rolls.
    pub rows: usize,
    /// Bytes of consumed keys and values (the Avro records: about the
    /// size of the Parquet object before compression).
    pub bytes: usize,
    /// Age of an object's first record at which it rolls.
    pub interval: Duration,
}

/// One partition's open object.
struct Open {
    /// In offset order.
    records: Vec<Consumed>,
    bytes: usize,
    /// When its first record arrived.
    since: Instant,
    /// The end an earlier claim fixed for the first offset: the object
    /// rolls exactly there once its records up to that end have arrived.
    claimed_end: Option<i64>,
}

impl Open {
    fn end(&self) -> i64 {
        self.records.last().map_or(0, |r| r.offset + 1)
    }
}

fn size(record: &Consumed) -> usize {
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len)
}

#[derive(Default)]
pub struct Rolling {
    open: BTreeMap<i32, Open>,
    /// Roll every open object that is not waiting for a claimed range.
    roll_all: bool,
}

impl Rolling {
    /// Adds records as they arrived (each partition's in offset order).
    pub fn add(&mut self, records: Vec<Consumed>) {
        let now = Instant::now();
        for record in records {
            let open = self.open.entry(record.partition).or_insert_with(|| Open {
                records: Vec::new(),
                bytes: 0,
                since: now,
                claimed_end: None,
            });
            open.bytes += size(&record);
            open.records.push(record);
        }
    }

    /// Forgets every open object: its records are fetched again by whoever
    /// resumes the partition (after a rebalance, a refused fence, a stop).
    pub fn clear(&mut self) {
        self.open.clear();
        self.roll_all = false;
    }

    /// The first offset of a partition's open object.
    pub fn first(&self, partition: i32) -> Option<i64> {
        self.open.get(&partition)?.records.first().map(|r| r.offset)
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The objects waiting for the rest of a range an earlier claim fixed:
    /// partition and the claimed end.
    pub fn waiting(&self) -> Vec<(i32, i64)> {
        self.open
            .iter()
            .filter_map(|(&partition, open)| Some((partition, open.claimed_end?)))
            .collect()
    }

    /// Each open object's partition and end (one past its last offset).
    pub fn ends(&self) -> Vec<(i32, i64)> {
        self.open
            .iter()
            .map(|(&partition, open)| (partition, open.end()))
            .collect()
    }

    /// Rolls every open object at the next chance.
    pub fn roll_all(&mut self) {
        self.roll_all = true;
    }

    /// The ranges due to roll now, to be claimed.
    pub fn due(&self, policy: &RollPolicy) -> Vec<Range> {
        let mut due = Vec::new();
        for (&partition, open) in &self.open {
            let Some(first) = open.records.first().map(|r| r.offset) else {
                continue;
            };
            let end = match open.claimed_end {
                // Complete once a record at or past its last offset arrived.
                Some(claimed) if open.end() >= claimed => claimed,
                Some(_) => continue,
                None if self.roll_all
                    || open.records.len() >= policy.rows
                    || open.bytes >= policy.bytes
                    || open.since.elapsed() >= policy.interval =>
                {
                    open.end()
                }
                None => continue,
            };
            due.push(Range { partition, first, end });
        }
        due
    }

    /// Takes the records of each claimed range below the end its claim
    /// agreed (`agreed`, one per range): the batch to write. A range whose
    /// agreed end lies beyond the records that arrived waits for the rest.
    pub fn take(&mut self, ranges: &[Range], agreed: &[i64]) -> Vec<Consumed> {
        let mut batch = Vec::new();
        for (range, &end) in ranges.iter().zip(agreed) {
            let Some(open) = self.open.get_mut(&range.partition) else {
                continue;
            };
            if end != range.end {
                tracing::info!(
                    partition = range.partition,
                    first = range.first,
                    end,
                    "adopting the range an earlier claim fixed"
                );
            }
            if end > open.end() {
                open.claimed_end = Some(end);
                continue;
            }
            let cut = open.records.partition_point(|r| r.offset < end);
            let taken: Vec<Consumed> = open.records.drain(..cut).collect();
            open.bytes -= taken.iter().map(size).sum::<usize>();
            open.claimed_end = None;
            open.since = Instant::now();
            batch.extend(taken);
            if open.records.is_empty() {
                self.open.remove(&range.partition);
            }
        }
        // Done once what is left waits for claimed ranges.
        if self.open.values().all(|o| o.claimed_end.is_some()) {
            self.roll_all = false;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Consumed {
        Consumed {
            key: Some(b"k".to_vec()),
            value: Some(vec![0; 9]),
            headers: Vec::new(),
            timestamp_millis: None,
            partition,
            offset,
        }
    }

    fn policy(rows: usize) -> RollPolicy {
        RollPolicy {
            rows,
            bytes: usize::MAX,
            interval: Duration::from_secs(3600),
        }
    }

    #[test]
    fn rolls_by_rows_bytes_and_on_demand() {
        let mut rolling = Rolling::default();
        rolling.add(
            (0..5)
                .map(|o| record(0, o))
                .chain((0..2).map(|o| record(1, o)))
                .collect(),
        );
        let due = rolling.due(&policy(5));
        assert_eq!(
            due,
            vec![Range {
                partition: 0,
                first: 0,
                end: 5
            }]
        );
        let bytes = RollPolicy {
            bytes: 20,
            ..policy(100)
        };
        assert_eq!(rolling.due(&bytes).len(), 2, "10 bytes a record");
        rolling.roll_all();
        assert_eq!(rolling.due(&policy(100)).len(), 2);
    }

    #[test]
    fn an_earlier_claim_cuts_the_object_or_makes_it_wait() {
        let mut rolling = Rolling::default();
        rolling.add((10..20).map(|o| record(0, o)).collect());
        let due = rolling.due(&policy(10));
        // An earlier claim of offset 10 ended at 14: the rest stays open.
        let batch = rolling.take(&due, &[14]);
        assert_eq!(batch.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10, 11, 12, 13]);
        rolling.roll_all();
        let due = rolling.due(&policy(100));
        assert_eq!(
            due,
            vec![Range {
                partition: 0,
                first: 14,
                end: 20
            }]
        );
        // An earlier claim of offset 14 ended at 25: wait for the rest.
        assert!(rolling.take(&due, &[25]).is_empty());
        assert!(rolling.due(&policy(1)).is_empty(), "incomplete");
        rolling.add((20..26).map(|o| record(0, o)).collect());
        let due = rolling.due(&policy(1000));
        assert_eq!(
            due,
            vec![Range {
                partition: 0,
                first: 14,
                end: 25
            }]
        );
        let batch = rolling.take(&due, &[25]);
        assert_eq!(batch.len(), 11);
        assert!(!rolling.is_empty(), "offset 25 stays open");
    }
}
