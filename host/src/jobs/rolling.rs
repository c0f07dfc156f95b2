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
use crate::runtime::{RawBatch, RawEntry, RawHeader, TooLarge, span_at};

use super::claims::Range;
use crate::varint;

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

/// Records of one partition in offset order, packed into one buffer as a
/// stream: per record a flags byte, the offset's step from the previous
/// record, the timestamp's step (zigzag), the key's and the value's lengths
/// (LEB128 varints), then the key and value bytes. A `Consumed` costs about
/// 180 bytes of heap for a 40-byte record (the struct, two allocations,
/// their headers); packed, a record costs its bytes and about 6, so an open
/// object's memory follows `--roll-mb`, which counts those bytes. The
/// buffer doubles up to `GROW_STEP`, then grows in steps of it. Records are
/// read in order only: the jobs decode a roll front to back.
#[derive(Default)]
pub struct Packed {
    partition: i32,
    bytes: Vec<u8>,
    records: usize,
    first: Option<i64>,
    last: Option<i64>,
    /// The timestamp the next record's step is taken from.
    last_timestamp: i64,
    /// Bytes of keys and values.
    payload: usize,
    /// Headers of the records that have any (few do), by offset.
    headers: BTreeMap<i64, Vec<(String, Vec<u8>)>>,
}

/// What a packed buffer grows by.
const GROW_STEP: usize = 1 << 20;

/// Flags of a packed record.
const HAS_TIMESTAMP: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_VALUE: u8 = 4;

/// One packed record, borrowed from its buffer.
struct Unpacked<'a> {
    offset: i64,
    timestamp_millis: Option<i64>,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    /// Where the key's bytes start in the buffer; the value's follow them.
    key_at: usize,
}

/// Reads a `Packed` buffer front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    offset: i64,
    timestamp: i64,
}

impl<'a> Iterator for Reader<'a> {
    type Item = Unpacked<'a>;

    fn next(&mut self) -> Option<Unpacked<'a>> {
        if self.at == self.bytes.len() {
            return None;
        }
        let flags = self.bytes[self.at];
        self.at += 1;
        self.offset = self.offset.wrapping_add(varint::get(self.bytes, &mut self.at) as i64);
        let timestamp_millis = (flags & HAS_TIMESTAMP != 0).then(|| {
            self.timestamp = self
                .timestamp
                .wrapping_add(varint::unzigzag(varint::get(self.bytes, &mut self.at)));
            self.timestamp
        });
        let key_len = varint::get(self.bytes, &mut self.at) as usize;
        let value_len = varint::get(self.bytes, &mut self.at) as usize;
        let key = &self.bytes[self.at..self.at + key_len];
        let value = &self.bytes[self.at + key_len..self.at + key_len + value_len];
        let key_at = self.at;
        self.at += key_len + value_len;
        Some(Unpacked {
            offset: self.offset,
            timestamp_millis,
            key: (flags & HAS_KEY != 0).then_some(key),
            value: (flags & HAS_VALUE != 0).then_some(value),
            key_at,
        })
    }
}

impl Packed {
    fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    fn push(&mut self, record: Consumed) {
        self.append(
            record.offset,
            record.timestamp_millis,
            record.key.as_deref(),
            record.value.as_deref(),
        );
        if !record.headers.is_empty() {
            self.headers.insert(record.offset, record.headers);
        }
    }

    fn append(&mut self, offset: i64, timestamp_millis: Option<i64>, key: Option<&[u8]>, value: Option<&[u8]>) {
        let flag = |present: bool, flag: u8| if present { flag } else { 0 };
        let flags = flag(timestamp_millis.is_some(), HAS_TIMESTAMP)
            | flag(key.is_some(), HAS_KEY)
            | flag(value.is_some(), HAS_VALUE);
        let (key, value) = (key.unwrap_or_default(), value.unwrap_or_default());
        varint::reserve(
            &mut self.bytes,
            1 + 4 * varint::MAX_LEN + key.len() + value.len(),
            GROW_STEP,
        );
        self.bytes.push(flags);
        // The first record's step is from its own offset.
        let previous = self.last.unwrap_or(offset);
        varint::put(&mut self.bytes, offset.wrapping_sub(previous) as u64);
        if let Some(timestamp) = timestamp_millis {
            varint::put(
                &mut self.bytes,
                varint::zigzag(timestamp.wrapping_sub(self.last_timestamp)),
            );
            self.last_timestamp = timestamp;
        }
        varint::put(&mut self.bytes, key.len() as u64);
        varint::put(&mut self.bytes, value.len() as u64);
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.first.get_or_insert(offset);
        self.last = Some(offset);
        self.records += 1;
        self.payload += key.len() + value.len();
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            bytes: &self.bytes,
            at: 0,
            offset: self.first.unwrap_or_default(),
            timestamp: 0,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.first
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.last
    }

    /// Bytes of keys and values.
    fn size(&self) -> usize {
        self.payload
    }

    /// Each record's value, in offset order.
    pub fn values(&self) -> impl Iterator<Item = Option<&[u8]>> {
        self.reader().map(|r| r.value)
    }

    /// The records as a batch for the backup job's guest, over this
    /// buffer: each key and value stays where it is, and the entries say
    /// where (the stream's other bytes lie between them).
    pub fn into_raw_batch(mut self) -> Result<RawBatch, TooLarge> {
        let mut entries = Vec::with_capacity(self.records);
        for r in self.reader() {
            let key_len = r.key.map_or(0, <[u8]>::len);
            entries.push(RawEntry {
                key: r.key.map(|k| span_at(r.key_at, k.len())).transpose()?,
                value: r.value.map(|v| span_at(r.key_at + key_len, v.len())).transpose()?,
                timestamp_millis: r.timestamp_millis,
                offset: r.offset,
            });
        }
        let headers = std::mem::take(&mut self.headers)
            .into_iter()
            .flat_map(|(offset, headers)| {
                headers
                    .into_iter()
                    .map(move |(name, value)| RawHeader { offset, name, value })
            })
            .collect();
        Ok(RawBatch::from_parts(self.partition, self.bytes, entries, headers))
    }

    /// The records, unpacked, in offset order.
    pub fn unpack(&self) -> Vec<Consumed> {
        self.reader()
            .map(|r| Consumed {
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: self.headers.get(&r.offset).cloned().unwrap_or_default(),
                timestamp_millis: r.timestamp_millis,
                partition: self.partition,
                offset: r.offset,
            })
            .collect()
    }

    /// Takes the records below offset `end` into a `Packed` of their own.
    /// A cut packs both parts again (each stream starts from its own first
    /// record): a claim cuts an object short rarely, so that need not be
    /// cheap.
    fn take_below(&mut self, end: i64) -> Packed {
        // The usual roll takes the whole object; a claim that ends before
        // it takes nothing.
        let empty = Packed::new(self.partition);
        match (self.first, self.last) {
            (Some(_), Some(last)) if last < end => return std::mem::replace(self, empty),
            (Some(first), _) if first >= end => return empty,
            (None, _) => return empty,
            _ => {}
        }
        let (mut below, mut rest) = (Packed::new(self.partition), Packed::new(self.partition));
        for r in self.reader() {
            let part = if r.offset < end { &mut below } else { &mut rest };
            part.append(r.offset, r.timestamp_millis, r.key, r.value);
        }
        rest.headers = self.headers.split_off(&end);
        below.headers = std::mem::take(&mut self.headers);
        *self = rest;
        below
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
    fn packing_keeps_gaps_timestamps_going_back_and_empty_or_absent_bytes() {
        let records = vec![
            (5, Some(i64::MAX), Some(vec![]), None),
            (6, Some(i64::MIN), None, Some(vec![])),
            (1_000_000, None, Some(b"k".to_vec()), Some(vec![1; GROW_STEP + 3])),
            (1_000_001, Some(-1), None, None),
            (i64::MAX, Some(1_700_000_000_000), Some(vec![2; 300]), Some(vec![3])),
        ];
        let records: Vec<Consumed> = records
            .into_iter()
            .map(|(offset, timestamp_millis, key, value)| Consumed {
                key,
                value,
                headers: Vec::new(),
                timestamp_millis,
                partition: 4,
                offset,
            })
            .collect();
        let mut packed = Packed::new(4);
        records.iter().cloned().for_each(|r| packed.push(r));
        assert_eq!(
            (packed.len(), packed.first_offset(), packed.last_offset()),
            (5, Some(5), Some(i64::MAX))
        );
        assert_eq!(packed.size(), GROW_STEP + 3 + 1 + 301);
        assert_eq!(format!("{:?}", packed.unpack()), format!("{records:?}"));
        let below = packed.take_below(1_000_001);
        assert_eq!(format!("{:?}", below.unpack()), format!("{:?}", &records[..3]));
        assert_eq!(format!("{:?}", packed.unpack()), format!("{:?}", &records[3..]));
        assert_eq!((packed.first_offset(), packed.size()), (Some(1_000_001), 301));
    }

    #[test]
    fn a_packed_buffer_becomes_a_raw_batch_without_moving_its_bytes() {
        let with_headers = |offset: i64| Consumed {
            key: Some(format!("key {offset}").into_bytes()),
            value: (offset != 3).then(|| vec![offset as u8; offset as usize]),
            headers: vec![("h".into(), vec![offset as u8]), ("i".into(), Vec::new())],
            timestamp_millis: (offset % 2 == 0).then_some(offset * 10),
            partition: 2,
            offset,
        };
        let records: Vec<Consumed> = (0..6)
            .map(|o| if o % 3 == 0 { with_headers(o) } else { record(2, o) })
            .collect();
        let mut packed = Packed::new(2);
        records.iter().cloned().for_each(|r| packed.push(r));
        let buffer = packed.bytes.as_ptr();
        let batch = packed.into_raw_batch().expect("fits");
        assert_eq!(batch.part(batch.entries()).bytes.as_ptr(), buffer);
        assert_eq!(batch.partition(), 2);
        let seen: Vec<Consumed> = batch
            .entries()
            .iter()
            .map(|e| Consumed {
                key: batch.key(e).map(<[u8]>::to_vec),
                value: batch.value(e).map(<[u8]>::to_vec),
                headers: batch.header_pairs(e.offset),
                timestamp_millis: e.timestamp_millis,
                partition: batch.partition(),
                offset: e.offset,
            })
            .collect();
        assert_eq!(format!("{seen:?}"), format!("{records:?}"));
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
