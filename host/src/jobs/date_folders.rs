//! Event-date folders in the archive, as Kafka Connect's TimeBasedPartitioner
//! lays them out: `<topic>/event_date=YYYY-MM-DD/partition=P/…`, the date in
//! UTC of a timestamp field of each record. SparkSQL and DuckDB read
//! `event_date` as a column of the dataset, and a daily report that filters
//! on it lists and reads that day's folder only.
//!
//! A roll's rows are cut into one object per run of consecutive rows of one
//! date, in offset order, so each object still holds one contiguous range
//! of consumed offsets, named by its first: the backfill reads the objects
//! of a partition in offset order as before, and a zombie that rewrites a
//! claimed range cuts it at the same records, byte for byte. Records out of
//! date order (a late event at midnight) therefore start an object of their
//! own.

use std::ops::Range;

use apache_avro::Schema;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};

/// The Hive column the folders define.
pub const COLUMN: &str = "event_date";
/// Hive's folder for a null partition value (Spark reads it as null): rows
/// without an event time, and objects with no rows.
pub const NO_DATE: &str = "__HIVE_DEFAULT_PARTITION__";

/// Which field dates a record, and in what unit it counts.
#[derive(Debug, Clone)]
pub struct DateFolders {
    field: String,
    /// Its units in a day: the field counts milliseconds or microseconds
    /// since the Unix epoch.
    per_day: i64,
}

impl DateFolders {
    /// Dates records by `field` of the archive's (latest) schema: a `long`
    /// of milliseconds, or a `timestamp-millis` or `timestamp-micros`,
    /// nullable or not.
    pub fn new(field: &str, schema: &Schema) -> Result<Self, String> {
        let Schema::Record(record) = schema else {
            return Err("the archive needs a record schema".into());
        };
        let found = record
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| format!("the schema has no field {field} to date the archive's folders by"))?;
        let mut kind = &found.schema;
        if let Schema::Union(union) = kind
            && let [Schema::Null, only] | [only, Schema::Null] = union.variants()
        {
            kind = only;
        }
        let per_day = match kind {
            Schema::Long | Schema::TimestampMillis => 86_400_000,
            Schema::TimestampMicros => 86_400_000_000,
            other => {
                return Err(format!(
                    "field {field} is {other:?}, not a long of milliseconds or a timestamp, so it cannot date the archive's folders"
                ));
            }
        };
        Ok(Self {
            field: field.to_string(),
            per_day,
        })
    }

    /// The runs of rows of one date in `batch`, in row order: each run's
    /// folder (`event_date=…`) and rows. No runs for no rows.
    pub fn runs(&self, batch: &RecordBatch) -> Result<Vec<(String, Range<usize>)>, String> {
        let column = batch
            .column_by_name(&self.field)
            .ok_or_else(|| format!("the archive rows have no column {}", self.field))?;
        let times = column
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| format!("column {} is not 64-bit integers", self.field))?;
        let day = |row: usize| (!times.is_null(row)).then(|| times.value(row).div_euclid(self.per_day));
        let mut runs: Vec<(Option<i64>, Range<usize>)> = Vec::new();
        for row in 0..batch.num_rows() {
            let this = day(row);
            match runs.last_mut() {
                Some((last, rows)) if *last == this => rows.end = row + 1,
                _ => runs.push((this, row..row + 1)),
            }
        }
        Ok(runs.into_iter().map(|(day, rows)| (folder(day), rows)).collect())
    }
}

/// `event_date=YYYY-MM-DD` for a day counted from the Unix epoch.
pub fn folder(day: Option<i64>) -> String {
    let date = day
        .and_then(|d| chrono::DateTime::from_timestamp(d.checked_mul(86_400)?, 0))
        .map_or_else(|| NO_DATE.to_string(), |t| t.format("%Y-%m-%d").to_string());
    format!("{COLUMN}={date}")
}

/// Cuts a roll's consumed range `consumed` into one contiguous range per
/// run of rows: run `i` starts at its first row's offset (the first run at
/// the range's first offset) and ends where the next run starts (the last
/// at the range's end), so records consumed but not archived fall into the
/// run before them. `offsets` are the rows' offsets, in row order.
pub fn consumed_ranges(consumed: Range<i64>, offsets: &[i64], runs: &[Range<usize>]) -> Vec<Range<i64>> {
    let starts: Vec<i64> = runs
        .iter()
        .enumerate()
        .map(|(i, rows)| if i == 0 { consumed.start } else { offsets[rows.start] })
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| start..starts.get(i + 1).copied().unwrap_or(consumed.end))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int32Array, Int64Array};
    use arrow_schema::{DataType, Field};

    use super::*;

    const DAY: i64 = 86_400_000;

    fn schema() -> Schema {
        Schema::parse_str(
            r#"{"type": "record", "name": "t", "fields": [
                {"name": "user_id", "type": "int"},
                {"name": "at", "type": ["null", "long"], "default": null}]}"#,
        )
        .expect("schema")
    }

    fn batch(times: Vec<Option<i64>>) -> RecordBatch {
        let arrow = arrow_schema::Schema::new(vec![
            Field::new("user_id", DataType::Int32, false),
            Field::new("at", DataType::Int64, true),
        ]);
        let users = Int32Array::from_iter_values(0..times.len() as i32);
        RecordBatch::try_new(
            Arc::new(arrow),
            vec![Arc::new(users), Arc::new(Int64Array::from(times))],
        )
        .expect("batch")
    }

    #[test]
    fn runs_of_one_date_in_row_order() {
        let dates = DateFolders::new("at", &schema()).expect("dates");
        // 2026-11-30 is day 20,787 of the epoch.
        let day = 20_787 * DAY;
        let rows = batch(vec![
            Some(day + 5),
            Some(day + DAY - 1),
            Some(day + DAY),
            None,
            Some(day + 7),
        ]);
        let runs = dates.runs(&rows).expect("runs");
        assert_eq!(
            runs,
            vec![
                ("event_date=2026-11-30".to_string(), 0..2),
                ("event_date=2026-12-01".to_string(), 2..3),
                (format!("event_date={NO_DATE}"), 3..4),
                ("event_date=2026-11-30".to_string(), 4..5),
            ]
        );
        assert!(dates.runs(&batch(Vec::new())).expect("runs").is_empty());
        assert_eq!(folder(Some(-1)), "event_date=1969-12-31");
    }

    #[test]
    fn only_a_timestamp_field_dates_the_folders() {
        assert!(
            DateFolders::new("user_id", &schema())
                .expect_err("an int is no timestamp")
                .contains("not a long")
        );
        assert!(
            DateFolders::new("missing", &schema())
                .expect_err("no such field")
                .contains("no field missing")
        );
    }

    #[test]
    fn consumed_ranges_are_contiguous_and_cover_the_roll() {
        // Rows at offsets 10, 11, 14, 15 (12 and 13 dead-lettered), runs of
        // rows [0, 2) and [2, 4): the gap goes to the first run.
        let ranges = consumed_ranges(9..17, &[10, 11, 14, 15], &[0..2, 2..4]);
        assert_eq!(ranges, vec![9..14, 14..17]);
        let one_run = std::iter::once(0..1).collect::<Vec<_>>();
        assert_eq!(consumed_ranges(9..17, &[10], &one_run).first(), Some(&(9..17)));
    }
}
