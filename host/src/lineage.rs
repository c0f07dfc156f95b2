//! Where an archived row came from, carried in each archive object's Parquet
//! key-value metadata so the archive's columns stay exactly the input schema.
//!
//! The backup job writes, per object (one source partition, rows in offset
//! order):
//!
//! | key | value |
//! |---|---|
//! | `sluice.topic` | the source topic |
//! | `sluice.partition` | the source partition |
//! | `sluice.partitions` | the topic's partition count when it was written |
//! | `sluice.consumed` | `first..end`: the offsets the batch consumed (end exclusive), archived or not |
//! | `sluice.offsets` | the rows' offsets, in row order, as half-open runs `a..b,c..d` |
//! | `sluice.excluded` | offsets consumed but not archived (dead-lettered, or dropped by the backup guest), as runs |
//!
//! Offsets are listed explicitly because they are not always contiguous
//! (transaction markers, compaction, records dead-lettered or dropped by the
//! backup guest leave gaps). The backfill reads them back to give each row its
//! exact partition and offset, and uses `consumed` to tell an archive that
//! covers its partition without gaps from one that lost objects.

use std::ops::Range;

use parquet::file::metadata::KeyValue;

pub const TOPIC: &str = "sluice.topic";
pub const PARTITION: &str = "sluice.partition";
pub const PARTITIONS: &str = "sluice.partitions";
pub const CONSUMED: &str = "sluice.consumed";
pub const OFFSETS: &str = "sluice.offsets";
pub const EXCLUDED: &str = "sluice.excluded";
/// In every Parquet object sluice writes: the sha256 of the module that
/// produced it.
pub const MODULE_SHA256: &str = "sluice.module_sha256";

/// The key-value naming the module that produced an object.
pub fn module_metadata(module_sha256: &str) -> KeyValue {
    KeyValue::new(MODULE_SHA256.into(), module_sha256.to_string())
}

#[derive(Debug, thiserror::Error)]
#[error("archive lineage: {0}")]
pub struct Error(String);

pub type Result<T> = std::result::Result<T, Error>;

/// The lineage of one archive object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLineage {
    pub topic: String,
    pub partition: i32,
    /// The topic's partition count when the object was written.
    pub partitions: i32,
    /// Every offset the batch consumed, archived or not.
    pub consumed: Range<i64>,
    /// Runs of the rows' offsets, in row order.
    pub offsets: Vec<Range<i64>>,
    /// Runs of the offsets consumed but not archived: records the backup
    /// job dead-lettered or its guest dropped.
    pub excluded: Vec<Range<i64>>,
}

impl ArchiveLineage {
    /// Lineage of rows with `offsets` (ascending), out of `consumed`;
    /// `excluded` (ascending) were consumed and not archived.
    pub fn new(
        topic: &str,
        partition: i32,
        partitions: i32,
        consumed: Range<i64>,
        offsets: &[i64],
        excluded: &[i64],
    ) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            partitions,
            consumed,
            offsets: runs(offsets),
            excluded: runs(excluded),
        }
    }

    /// How many consumed records are not in the object.
    pub fn excluded_records(&self) -> u64 {
        self.excluded.iter().map(|r| (r.end - r.start) as u64).sum()
    }

    /// How many rows the lineage describes.
    pub fn rows(&self) -> usize {
        self.offsets.iter().map(|r| (r.end - r.start) as usize).sum()
    }

    /// The rows' offsets, in row order.
    pub fn row_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.offsets.iter().flat_map(|r| r.clone())
    }

    pub fn to_metadata(&self) -> Vec<KeyValue> {
        let show = |runs: &[Range<i64>]| {
            runs.iter()
                .map(|r| format!("{}..{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            KeyValue::new(TOPIC.into(), self.topic.clone()),
            KeyValue::new(PARTITION.into(), self.partition.to_string()),
            KeyValue::new(PARTITIONS.into(), self.partitions.to_string()),
            KeyValue::new(
                CONSUMED.into(),
                format!("{}..{}", self.consumed.start, self.consumed.end),
            ),
            KeyValue::new(OFFSETS.into(), show(&self.offsets)),
            KeyValue::new(EXCLUDED.into(), show(&self.excluded)),
        ]
    }

    /// Reads the lineage back from an object's key-value metadata; `Err`
    /// names what is missing or malformed.
    pub fn from_metadata(metadata: Option<&Vec<KeyValue>>) -> Result<Self> {
        let get = |key: &str| -> Result<&str> {
            metadata
                .and_then(|kv| kv.iter().find(|e| e.key == key))
                .and_then(|e| e.value.as_deref())
                .ok_or_else(|| Error(format!("no {key} key (written before sluice recorded lineage?)")))
        };
        let number = |key: &str| -> Result<i32> {
            let raw = get(key)?;
            raw.parse()
                .map_err(|_| Error(format!("{key} is {raw:?}, not a number")))
        };
        let offsets = parse_runs(OFFSETS, get(OFFSETS)?)?;
        let excluded = parse_runs(EXCLUDED, get(EXCLUDED)?)?;
        let lineage = Self {
            topic: get(TOPIC)?.to_string(),
            partition: number(PARTITION)?,
            partitions: number(PARTITIONS)?,
            consumed: parse_range(get(CONSUMED)?)?,
            offsets,
            excluded,
        };
        let outside = lineage
            .offsets
            .iter()
            .chain(&lineage.excluded)
            .any(|r| r.start < lineage.consumed.start || r.end > lineage.consumed.end);
        if outside {
            return Err(Error(format!(
                "{OFFSETS} or {EXCLUDED} reach outside {CONSUMED} {}..{}",
                lineage.consumed.start, lineage.consumed.end
            )));
        }
        Ok(lineage)
    }
}

/// Ascending half-open runs `a..b,c..d` (empty for none).
fn parse_runs(key: &str, raw: &str) -> Result<Vec<Range<i64>>> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let runs = raw.split(',').map(parse_range).collect::<Result<Vec<_>>>()?;
    if runs.windows(2).any(|pair| pair[1].start < pair[0].end) {
        return Err(Error(format!("{key} are not ascending: {raw}")));
    }
    Ok(runs)
}

/// `a..b` with `a < b`, both offsets.
fn parse_range(raw: &str) -> Result<Range<i64>> {
    let bad = || Error(format!("{raw:?} is not an offset range a..b"));
    let (start, end) = raw.split_once("..").ok_or_else(bad)?;
    let (start, end): (i64, i64) = (start.parse().map_err(|_| bad())?, end.parse().map_err(|_| bad())?);
    if start < 0 || end <= start {
        return Err(bad());
    }
    Ok(start..end)
}

/// Ascending offsets as half-open runs of consecutive offsets.
fn runs(offsets: &[i64]) -> Vec<Range<i64>> {
    let mut runs: Vec<Range<i64>> = Vec::new();
    for &offset in offsets {
        match runs.last_mut() {
            Some(run) if run.end == offset => run.end += 1,
            _ => runs.push(offset..offset + 1),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_with_gaps_round_trip_through_the_metadata() {
        let offsets = [3, 4, 5, 9, 11, 12];
        let lineage = ArchiveLineage::new("t", 2, 6, 3..14, &offsets, &[6, 7]);
        assert_eq!(lineage.offsets, vec![3..6, 9..10, 11..13]);
        let metadata = lineage.to_metadata();
        let read = ArchiveLineage::from_metadata(Some(&metadata)).expect("reads back");
        assert_eq!(read, lineage);
        assert_eq!(read.row_offsets().collect::<Vec<_>>(), offsets);
        assert_eq!(read.rows(), offsets.len());
        assert_eq!(read.excluded, vec![Range { start: 6, end: 8 }]);
        assert_eq!(read.excluded_records(), 2);
    }

    #[test]
    fn an_object_without_rows_still_says_what_it_consumed() {
        let lineage = ArchiveLineage::new("t", 0, 1, 40..50, &[], &[40, 41]);
        let read = ArchiveLineage::from_metadata(Some(&lineage.to_metadata())).expect("reads back");
        assert_eq!((read.rows(), read.consumed), (0, 40..50));
    }

    #[test]
    fn missing_or_malformed_lineage_is_refused_by_name() {
        let missing = ArchiveLineage::from_metadata(None).expect_err("none");
        assert!(missing.to_string().contains("sluice.offsets"), "{missing}");
        let mut metadata = ArchiveLineage::new("t", 0, 1, 0..5, &[0, 1], &[]).to_metadata();
        metadata.retain(|kv| kv.key != OFFSETS);
        metadata.push(KeyValue::new(OFFSETS.into(), "4..6,0..2".to_string()));
        let unordered = ArchiveLineage::from_metadata(Some(&metadata)).expect_err("unordered");
        assert!(unordered.to_string().contains("not ascending"), "{unordered}");
        metadata.retain(|kv| kv.key != OFFSETS);
        metadata.push(KeyValue::new(OFFSETS.into(), "0..9".to_string()));
        let outside = ArchiveLineage::from_metadata(Some(&metadata)).expect_err("outside");
        assert!(outside.to_string().contains("outside"), "{outside}");
    }
}
