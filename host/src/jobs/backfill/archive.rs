//! The backup archive as the backfill reads it: the objects of each source
//! partition with their lineage (from the Parquet footers), and each object's
//! transactions with their source offsets.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::config::{Storage, partition_in_path};
use crate::lineage::ArchiveLineage;
use crate::runtime::TransactionColumns;

use super::{Error, Result, Shard};

/// Footers read at once while surveying.
const SURVEY_CONCURRENCY: usize = 16;
/// Rows per decoded Arrow batch.
const READ_BATCH_ROWS: usize = 65_536;
/// The archive columns the features module reads.
const COLUMNS: [&str; 5] = [
    "user_id",
    "transaction_timestamp_millis",
    "amount",
    "currency",
    "counterpart_id",
];

/// One archive object and what its footer says.
#[derive(Debug, Clone)]
pub struct ArchiveObject {
    pub path: ObjectPath,
    pub lineage: ArchiveLineage,
}

/// The archive objects of the shard's partitions, each partition's in the
/// order of the offsets they consumed.
pub async fn survey(archive: &Storage, topic: &str, shard: Shard) -> Result<BTreeMap<i32, Vec<ArchiveObject>>> {
    let prefix = archive.path(topic);
    let listed: Vec<_> = archive
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::Other(format!("listing the archive {}: {e}", archive.url)))?;
    let mut wanted = Vec::new();
    for object in listed {
        if !object.location.as_ref().ends_with(".parquet") {
            continue;
        }
        let Some(partition) = partition_in_path(&object.location) else {
            continue;
        };
        if shard.holds(partition) {
            wanted.push((partition, object));
        }
    }
    let objects: Vec<(i32, ArchiveObject)> = futures::stream::iter(wanted)
        .map(|(partition, meta)| async move {
            let metadata = crate::sinks::parquet::read_footer(archive, &meta.location, meta.size)
                .await
                .map_err(|reason| Error::Other(format!("reading the footer of {}: {reason}", meta.location)))?;
            let file = metadata.file_metadata();
            let lineage = ArchiveLineage::from_metadata(file.key_value_metadata())
                .map_err(|e| Error::Other(format!("{}: {e}", meta.location)))?;
            if lineage.partition != partition || lineage.topic != topic {
                return Err(Error::Other(format!(
                    "{}: its lineage says topic {} partition {}, its folder partition {partition} of {topic}",
                    meta.location, lineage.topic, lineage.partition
                )));
            }
            if lineage.rows() as i64 != file.num_rows() {
                return Err(Error::Other(format!(
                    "{}: {} rows but its lineage lists {} offsets",
                    meta.location,
                    file.num_rows(),
                    lineage.rows()
                )));
            }
            Ok((
                partition,
                ArchiveObject {
                    path: meta.location,
                    lineage,
                },
            ))
        })
        .buffer_unordered(SURVEY_CONCURRENCY)
        .try_collect()
        .await?;
    let mut partitions: BTreeMap<i32, Vec<ArchiveObject>> = BTreeMap::new();
    for (partition, object) in objects {
        partitions.entry(partition).or_default().push(object);
    }
    for objects in partitions.values_mut() {
        // The path breaks ties, so which copy of a range counts is fixed.
        objects.sort_by(|a, b| {
            (a.lineage.consumed.start, a.lineage.consumed.end, &a.path).cmp(&(
                b.lineage.consumed.start,
                b.lineage.consumed.end,
                &b.path,
            ))
        });
    }
    Ok(partitions)
}

/// Offset ranges no archive object consumed, between the first and the
/// last object of a partition.
pub fn gaps(objects: &[ArchiveObject]) -> Vec<std::ops::Range<i64>> {
    let mut gaps = Vec::new();
    let mut covered: Option<i64> = None;
    for object in objects {
        let consumed = &object.lineage.consumed;
        if let Some(end) = covered
            && consumed.start > end
        {
            gaps.push(end..consumed.start);
        }
        covered = Some(covered.map_or(consumed.end, |end| end.max(consumed.end)));
    }
    gaps
}

/// The transactions of one archive object, in row (= offset) order, with
/// each row's source offset from the lineage, a decoded batch at a time.
pub struct ObjectRows<'a> {
    path: &'a ObjectPath,
    reader: ParquetRecordBatchReader,
    offsets: Box<dyn Iterator<Item = i64> + 'a>,
    lineage: &'a ArchiveLineage,
    seen: usize,
    /// Rows with a null among the five fields: the live job cannot decode
    /// such a record into a transaction and dead-letters it.
    pub undecodable: u64,
}

/// The decision of `ObjectRows::next_into`'s caller on one row, given its
/// offset, user id and event time.
pub type Keep<'k> = dyn FnMut(i64, i32, i64) -> Result<bool> + 'k;

impl<'a> ObjectRows<'a> {
    /// Opens an object's bytes to read the five columns the features module
    /// reads (other columns are not decoded).
    pub fn open(path: &'a ObjectPath, bytes: Bytes, lineage: &'a ArchiveLineage) -> Result<Self> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(path, e.to_string()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| bad(path, e.to_string()))?;
        Ok(Self {
            path,
            reader,
            offsets: Box::new(lineage.row_offsets()),
            lineage,
            seen: 0,
            undecodable: 0,
        })
    }

    /// Appends the next decoded batch's rows that `keep` keeps to `out`,
    /// and their offsets to `offsets`; `false` once the object has no more.
    pub fn next_into(
        &mut self,
        out: &mut TransactionColumns,
        offsets: &mut Vec<i64>,
        keep: &mut Keep<'_>,
    ) -> Result<bool> {
        let Some(batch) = self.reader.next() else {
            if self.seen != self.lineage.rows() {
                return Err(bad(
                    self.path,
                    format!(
                        "{} rows but its lineage lists {} offsets",
                        self.seen,
                        self.lineage.rows()
                    ),
                ));
            }
            return Ok(false);
        };
        let batch = batch.map_err(|e| bad(self.path, e.to_string()))?;
        self.seen += batch.num_rows();
        self.append_rows(&batch, out, offsets, keep)?;
        Ok(true)
    }

    /// Appends a batch's rows, each with the next offset of the lineage. The
    /// column types are those of the v1 schema, as the live job reads them
    /// (a timestamp written as int is read as long, as Avro promotes it).
    fn append_rows(
        &mut self,
        batch: &RecordBatch,
        out: &mut TransactionColumns,
        offsets: &mut Vec<i64>,
        keep: &mut Keep<'_>,
    ) -> Result<()> {
        let path = self.path;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| bad(path, format!("the archive has no column {name}")))
        };
        let typed = |name: &str, expected: &str| {
            bad(
                path,
                format!("column {name} is not {expected}, the type the features module reads"),
            )
        };
        let users = column("user_id")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| typed("user_id", "int"))?;
        let time_column = column("transaction_timestamp_millis")?;
        let times: Box<dyn Fn(usize) -> i64> = if let Some(longs) = time_column.as_primitive_opt::<Int64Type>() {
            Box::new(|i| longs.value(i))
        } else if let Some(ints) = time_column.as_primitive_opt::<Int32Type>() {
            Box::new(|i| i64::from(ints.value(i)))
        } else {
            return Err(typed("transaction_timestamp_millis", "long"));
        };
        let amounts = column("amount")?
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| typed("amount", "float"))?;
        let currencies = column("currency")?
            .as_string_opt::<i32>()
            .ok_or_else(|| typed("currency", "string"))?;
        let counterparts = column("counterpart_id")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| typed("counterpart_id", "int"))?;
        let columns: [&dyn Array; 5] = [users, time_column.as_ref(), amounts, currencies, counterparts];
        let nullable = columns.iter().any(|c| c.null_count() > 0);
        for i in 0..batch.num_rows() {
            let offset = self
                .offsets
                .next()
                .ok_or_else(|| bad(path, "more rows than its lineage lists offsets".into()))?;
            if nullable && columns.iter().any(|c| c.is_null(i)) {
                self.undecodable += 1;
                continue;
            }
            let (user_id, time) = (users.value(i), times(i));
            if !keep(offset, user_id, time)? {
                continue;
            }
            out.push(
                user_id,
                time,
                amounts.value(i),
                currencies.value(i),
                counterparts.value(i),
            )
            .map_err(|e| bad(path, e.to_string()))?;
            offsets.push(offset);
        }
        Ok(())
    }
}

fn bad(path: &ObjectPath, reason: String) -> Error {
    Error::Other(format!("{path}: {reason}"))
}
