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

/// Records of one partition in offset order, packed: every key and value
/// in one buffer, and per record its offset, timestamp and where its bytes
/// are. A `Consumed` costs about 180 bytes of heap for a 40-byte record
/// (the struct, two allocations, their headers); packed, a record costs its
/// bytes and 32, so an open object's memory follows `--roll-mb`, which
/// counts those bytes.
#[derive(Default)]
pub struct Packed {
    partition: i32,
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    /// Headers of the records that have any (few do), by offset.
    headers: BTreeMap<i64, Vec<(String, Vec<u8>)>>,
}

/// Where a record's key and value lie in `Packed::bytes`.
struct Slot {
    offset: i64,
    /// `NO_TIMESTAMP` for none.
    timestamp_millis: i64,
    start: usize,
    /// Lengths; `ABSENT` for a null key or value.
    key: u32,
    value: u32,
}

const NO_TIMESTAMP: i64 = i64::MIN;
const ABSENT: u32 = u32::MAX;

fn len_of(bytes: &Option<Vec<u8>>) -> u32 {
    bytes
        .as_ref()
        .map_or(ABSENT, |b| u32::try_from(b.len()).unwrap_or(ABSENT - 1))
}

fn stored(len: u32) -> usize {
    if len == ABSENT { 0 } else { len as usize }
}

impl Packed {
    fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    fn push(&mut self, record: Consumed) {
        let start = self.bytes.len();
        let (key, value) = (len_of(&record.key), len_of(&record.value));
        self.bytes.extend_from_slice(record.key.as_deref().unwrap_or_default());
        self.bytes
            .extend_from_slice(record.value.as_deref().unwrap_or_default());
        self.slots.push(Slot {
            offset: record.offset,
            timestamp_millis: record.timestamp_millis.unwrap_or(NO_TIMESTAMP),
            start,
            key,
            value,
        });
        if !record.headers.is_empty() {
            self.headers.insert(record.offset, record.headers);
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.slots.first().map(|s| s.offset)
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.slots.last().map(|s| s.offset)
    }

    /// Bytes of keys and values.
    fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Each record's value, in offset order.
    pub fn values(&self) -> impl Iterator<Item = Option<&[u8]>> {
        self.slots.iter().map(|s| {
            let at = s.start + stored(s.key);
            (s.value != ABSENT).then(|| &self.bytes[at..at + s.value as usize])
        })
    }

    /// The records, unpacked, in offset order.
    pub fn unpack(&self) -> Vec<Consumed> {
        self.slots
            .iter()
            .map(|s| {
                let key_end = s.start + stored(s.key);
                Consumed {
                    key: (s.key != ABSENT).then(|| self.bytes[s.start..key_end].to_vec()),
                    value: (s.value != ABSENT).then(|| self.bytes[key_end..key_end + s.value as usize].to_vec()),
                    headers: self.headers.get(&s.offset).cloned().unwrap_or_default(),
                    timestamp_millis: (s.timestamp_millis != NO_TIMESTAMP).then_some(s.timestamp_millis),
                    partition: self.partition,
                    offset: s.offset,
                }
            })
            .collect()
    }

    /// Takes the records below offset `end` into a `Packed` of their own.
    fn take_below(&mut self, end: i64) -> Packed {
        let cut = self.slots.partition_point(|s| s.offset < end);
        let byte_cut = self.slots.get(cut).map_or(self.bytes.len(), |s| s.start);
        let rest_headers = self.headers.split_off(&end);
        let taken = Packed {
            partition: self.partition,
            bytes: self.bytes.drain(..byte_cut).collect(),
            slots: self.slots.drain(..cut).collect(),
            headers: std::mem::replace(&mut self.headers, rest_headers),
        };
        for slot in &mut self.slots {
            slot.start -= byte_cut;
        }
        taken
    }
}

/// One partition's open object.
struct Open {
    records: Packed,
    /// When its first record arrived.
    since: Instant,
    /// The end an earlier claim fixed for the first offset: the object
    /// rolls exactly there once its records up to that end have arrived.
    claimed_end: Option<i64>,
}

impl Open {
    fn end(&self) -> i64 {
        self.records.last_offset().map_or(0, |o| o + 1)
    }
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
                records: Packed::new(record.partition),
                since: now,
                claimed_end: None,
            });
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
        self.open.get(&partition)?.records.first_offset()
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
            let Some(first) = open.records.first_offset() else {
                continue;
            };
            let end = match open.claimed_end {
                // Complete once a record at or past its last offset arrived.
                Some(claimed) if open.end() >= claimed => claimed,
                Some(_) => continue,
                None if self.roll_all
                    || open.records.len() >= policy.rows
                    || open.records.size() >= policy.bytes
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
    /// agreed (`agreed`, one per range): the batch to write, one `Packed`
    /// per partition. A range whose agreed end lies beyond the records that
    /// arrived waits for the rest.
    pub fn take(&mut self, ranges: &[Range], agreed: &[i64]) -> Vec<Packed> {
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
            let taken = open.records.take_below(end);
            open.claimed_end = None;
            open.since = Instant::now();
            if open.records.is_empty() {
                self.open.remove(&range.partition);
            }
            if !taken.is_empty() {
                batch.push(taken);
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
    fn packed_records_unpack_as_they_arrived() {
        let odd = |offset: i64| Consumed {
            key: None,
            value: Some(vec![7; offset as usize]),
            headers: vec![("h".into(), vec![offset as u8])],
            timestamp_millis: Some(offset * 10),
            partition: 2,
            offset,
        };
        let records: Vec<Consumed> = (0..6).map(|o| if o % 2 == 0 { record(2, o) } else { odd(o) }).collect();
        let mut rolling = Rolling::default();
        rolling.add(records.clone());
        rolling.roll_all();
        let due = rolling.due(&policy(100));
        // Two rolls: below 3, then the rest, each as it arrived.
        let below = rolling.take(&due, &[3]);
        rolling.roll_all();
        let due = rolling.due(&policy(100));
        let rest = rolling.take(&due, &[6]);
        let unpacked: Vec<Consumed> = below.iter().chain(&rest).flat_map(Packed::unpack).collect();
        assert_eq!(format!("{unpacked:?}"), format!("{records:?}"));
        assert_eq!(
            rest[0].values().map(|v| v.map(<[u8]>::len)).collect::<Vec<_>>(),
            vec![Some(3), Some(9), Some(5)]
        );
        assert!(rolling.is_empty());
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
        let offsets: Vec<i64> = batch[0].unpack().iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![10, 11, 12, 13]);
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
        assert_eq!(batch[0].len(), 11);
        assert!(!rolling.is_empty(), "offset 25 stays open");
    }
}
