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
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::{Storage, partition_in_path};
use crate::lineage::ArchiveLineage;
use crate::runtime::WitTransaction;

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
/// each row's source offset from the lineage.
pub struct Transactions {
    pub offsets: Vec<i64>,
    pub rows: Vec<WitTransaction>,
    /// Rows with a null among the five fields: the live job cannot decode
    /// such a record into a transaction and dead-letters it.
    pub undecodable: u64,
}

/// Decodes an object's bytes into transactions (the five columns the
/// features module reads; other columns are not decoded).
pub fn transactions(path: &ObjectPath, bytes: Bytes, lineage: &ArchiveLineage) -> Result<Transactions> {
    let bad = |reason: String| Error::Other(format!("{path}: {reason}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(e.to_string()))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut transactions = Transactions {
        offsets: Vec::with_capacity(lineage.rows()),
        rows: Vec::with_capacity(lineage.rows()),
        undecodable: 0,
    };
    let mut offsets = lineage.row_offsets();
    let mut seen = 0;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        seen += batch.num_rows();
        append_rows(&batch, &mut offsets, &mut transactions).map_err(bad)?;
    }
    if seen != lineage.rows() {
        return Err(bad(format!(
            "{seen} rows but its lineage lists {} offsets",
            lineage.rows()
        )));
    }
    Ok(transactions)
}

/// Appends a batch's rows, each with the next offset of `offsets`. The
/// column types are those of the v1 schema, as the live job reads them (a
/// timestamp written as int is read as long, as Avro promotes it).
fn append_rows(
    batch: &RecordBatch,
    offsets: &mut impl Iterator<Item = i64>,
    out: &mut Transactions,
) -> std::result::Result<(), String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("the archive has no column {name}"))
    };
    let typed =
        |name: &str, expected: &str| format!("column {name} is not {expected}, the type the features module reads");
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
        let offset = offsets
            .next()
            .ok_or_else(|| "more rows than its lineage lists offsets".to_string())?;
        if nullable && columns.iter().any(|c| c.is_null(i)) {
            out.undecodable += 1;
            continue;
        }
        out.offsets.push(offset);
        out.rows.push(WitTransaction {
            user_id: users.value(i),
            transaction_timestamp_millis: times(i),
            amount: amounts.value(i),
            currency: currencies.value(i).to_string(),
            counterpart_id: counterparts.value(i),
        });
    }
    Ok(())
}
