//! The backup job's input as a guest of `raw-batch-filter` takes it: one
//! partition's records with every key and value in one buffer. A call lends
//! the buffers (`RawBatchPart`), and wasmtime copies each into the guest's
//! memory whole; a `list<raw-record>` instead costs a call of the guest's
//! allocator for every key, value and list of headers, which was a fifth of
//! the backup job's CPU.

use wasmtime::component::{ComponentType, Lower};

pub use super::bindings::raw_filter::sluice::pipeline::types::{RawEntry, RawHeader, Span};

/// Why a record cannot join a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a batch holds at most 4 GiB of keys and values, or of strings, in its one buffer (spans are 32-bit); this record would pass it"
)]
pub struct TooLarge;

/// One partition's records, in offset order, in buffers the host owns.
#[derive(Debug, Clone, Default)]
pub struct RawBatch {
    partition: i32,
    bytes: Vec<u8>,
    entries: Vec<RawEntry>,
    /// In offset order.
    headers: Vec<RawHeader>,
}

impl RawBatch {
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    /// A batch with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(partition: i32, records: usize, bytes: usize) -> Self {
        Self {
            partition,
            bytes: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    /// Appends a record after the last one (offsets ascending).
    pub fn push(
        &mut self,
        offset: i64,
        timestamp_millis: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<(), TooLarge> {
        let key = key.map(|k| self.append(k)).transpose()?;
        let value = value.map(|v| self.append(v)).transpose()?;
        self.entries.push(RawEntry {
            key,
            value,
            timestamp_millis,
            offset,
        });
        self.headers.extend(
            headers
                .into_iter()
                .map(|(name, value)| RawHeader { offset, name, value }),
        );
        Ok(())
    }

    /// Copies `bytes` to the end of the buffer.
    fn append(&mut self, bytes: &[u8]) -> Result<Span, TooLarge> {
        let span = span_at(self.bytes.len(), bytes.len())?;
        self.bytes.extend_from_slice(bytes);
        Ok(span)
    }

    /// The batch of the records an existing buffer holds, each key and value
    /// where its span says: no byte is copied.
    pub fn from_parts(partition: i32, bytes: Vec<u8>, entries: Vec<RawEntry>, headers: Vec<RawHeader>) -> Self {
        Self {
            partition,
            bytes,
            entries,
            headers,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn entries(&self) -> &[RawEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn key(&self, entry: &RawEntry) -> Option<&[u8]> {
        entry.key.map(|span| self.slice(span))
    }

    pub fn value(&self, entry: &RawEntry) -> Option<&[u8]> {
        entry.value.map(|span| self.slice(span))
    }

    fn slice(&self, span: Span) -> &[u8] {
        let start = span.start as usize;
        &self.bytes[start..start + span.len as usize]
    }

    /// The headers of the record at `offset`.
    pub fn headers_of(&self, offset: i64) -> &[RawHeader] {
        self.headers_within(offset, offset)
    }

    /// The headers of the record at `offset`, as (name, value) pairs of
    /// their own.
    pub fn header_pairs(&self, offset: i64) -> Vec<(String, Vec<u8>)> {
        self.headers_of(offset)
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect()
    }

    /// The headers of the records from offset `first` to `last`.
    fn headers_within(&self, first: i64, last: i64) -> &[RawHeader] {
        let start = self.headers.partition_point(|h| h.offset < first);
        let end = self.headers.partition_point(|h| h.offset <= last);
        &self.headers[start..end]
    }

    /// `entries` (a run of this batch's own) as a guest call takes them.
    pub fn part<'a>(&'a self, entries: &'a [RawEntry]) -> RawBatchPart<'a> {
        let headers = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => self.headers_within(first.offset, last.offset),
            _ => &[],
        };
        RawBatchPart {
            partition: self.partition,
            bytes: &self.bytes,
            entries,
            headers,
        }
    }
}

/// The span of `len` bytes from `start`, if a span can say it.
pub fn span_at(start: usize, len: usize) -> Result<Span, TooLarge> {
    let end = start.checked_add(len).ok_or(TooLarge)?;
    u32::try_from(end).map_err(|_| TooLarge)?;
    Ok(Span {
        start: start as u32,
        len: len as u32,
    })
}

/// The WIT `raw-batch` of a run of a batch's entries, with the batch's
/// buffers lent rather than owned: what the host lowers into a guest call
/// (the failure policy calls a guest over halves of a batch, which lend the
/// same buffer).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RawBatchPart<'a> {
    pub partition: i32,
    pub bytes: &'a [u8],
    pub entries: &'a [RawEntry],
    pub headers: &'a [RawHeader],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_headers_come_back_as_pushed() {
        let mut batch = RawBatch::new(3);
        batch.push(10, Some(5), Some(b"k1"), Some(b"v1"), []).expect("fits");
        batch
            .push(11, None, None, None, [("h".to_string(), b"x".to_vec())])
            .expect("fits");
        batch.push(12, None, Some(b""), Some(b"v3"), []).expect("fits");
        let entries = batch.entries();
        assert_eq!(batch.key(&entries[0]), Some(&b"k1"[..]));
        assert_eq!(batch.value(&entries[0]), Some(&b"v1"[..]));
        assert_eq!((batch.key(&entries[1]), batch.value(&entries[1])), (None, None));
        assert_eq!(batch.key(&entries[2]), Some(&b""[..]));
        assert_eq!(batch.headers_of(11).len(), 1);
        assert!(batch.headers_of(10).is_empty());
        // A part lends only the headers of its own entries.
        assert_eq!(batch.part(&entries[..1]).headers.len(), 0);
        assert_eq!(batch.part(&entries[1..]).headers.len(), 1);
        assert_eq!(batch.part(&entries[1..]).bytes.len(), 6);
    }

    #[test]
    fn a_span_past_four_gib_is_refused() {
        assert!(span_at(u32::MAX as usize - 1, 1).is_ok());
        assert!(span_at(u32::MAX as usize, 1).is_err());
        assert!(span_at(usize::MAX, 1).is_err());
    }
}
