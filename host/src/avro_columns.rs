//! Confluent-framed Avro values straight into Arrow columns, by arrow-avro's
//! decoder (each writer schema resolved once against the reader schema,
//! no `Value` tree or field lookup per record): the backup job's archive
//! rows and the features job's transactions.
//!
//! The fast path is all or nothing: a value it cannot decode exactly
//! (unknown writer, a corrupt or truncated body, trailing bytes, a null
//! where the layout has none) fails the whole call, and the caller decodes
//! those records one by one instead (`avro::Readers`, `columnar::RowsBuilder`),
//! which names each bad record for the dead-letter topic. arrow-avro cannot
//! take a bad record back out of a half-built batch.

use std::sync::{Arc, LazyLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type};
use arrow_array::{ArrayRef, RecordBatch, make_array};
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use arrow_schema::SchemaRef;

use crate::columnar::columnar_schema;
use crate::model::{TRANSACTION_SCHEMA, Transaction};

/// Why the fast path gave up on a set of values.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fallback(String);

/// Decodes `values` (each a whole Confluent-framed value) into one batch of
/// `layout`'s columns, reading each with its writer schema from `writers`
/// (registry id and schema JSON) against `reader`, the schema `layout` was
/// made from.
pub fn decode(
    values: &[&[u8]],
    writers: &[(u32, &str)],
    reader: &str,
    layout: &SchemaRef,
) -> Result<RecordBatch, Fallback> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    for (id, json) in writers {
        store
            .set(Fingerprint::Id(*id), AvroSchema::new((*json).to_string()))
            .map_err(failed("writer schema"))?;
    }
    // One batch for all the values; a change of writer schema ends a batch
    // early (each batch is one writer's).
    let mut decoder = ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_reader_schema(AvroSchema::new(reader.to_string()))
        .with_batch_size(values.len().max(1))
        .build_decoder()
        .map_err(failed("resolving the writer schemas"))?;
    let mut batches = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err(Fallback("an empty value".into()));
        }
        let mut at = 0;
        while at < value.len() {
            let consumed = decoder
                .decode(&value[at..])
                .map_err(|e| Fallback(format!("decoding: {e}")))?;
            at += consumed;
            if at == value.len() {
                break;
            }
            // Only a writer change stops a value part way (after its
            // prefix); anything else is a body that ended early.
            if !decoder.batch_is_full() {
                return Err(Fallback("a value ended inside its body".into()));
            }
            batches.extend(decoder.flush().map_err(|e| Fallback(format!("decoding: {e}")))?);
        }
    }
    batches.extend(decoder.flush().map_err(|e| Fallback(format!("decoding: {e}")))?);
    let mut conformed = batches
        .iter()
        .map(|batch| conform(batch, layout))
        .collect::<Result<Vec<_>, _>>()?;
    // One writer's values (the usual case) are one batch, taken as it is.
    let batch = match conformed.len() {
        1 => conformed.pop().expect("one batch"),
        _ => arrow_select::concat::concat_batches(layout, &conformed).map_err(failed("joining batches"))?,
    };
    // One row a value, or the rows would not line up with their records.
    if batch.num_rows() != values.len() {
        return Err(Fallback(format!(
            "{} rows decoded from {} values",
            batch.num_rows(),
            values.len()
        )));
    }
    Ok(batch)
}

/// The transactions of `values`, read as schemas/transaction.avsc (the
/// fields the features job takes) whichever writer wrote them: what
/// `avro::transaction_from_value` makes of each, without a `Value` per record.
pub fn transactions(values: &[&[u8]], writers: &[(u32, &str)]) -> Result<Vec<Transaction>, Fallback> {
    static LAYOUT: LazyLock<SchemaRef> = LazyLock::new(|| {
        let schema = apache_avro::Schema::parse_str(TRANSACTION_SCHEMA).expect("the built-in schema parses");
        columnar_schema(&schema)
            .expect("the built-in schema has a layout")
            .arrow()
            .clone()
    });
    let batch = decode(values, writers, TRANSACTION_SCHEMA, &LAYOUT)?;
    // The layout's columns, in the schema's field order.
    let user_id = batch.column(0).as_primitive::<Int32Type>();
    let timestamp = batch.column(1).as_primitive::<Int64Type>();
    let amount = batch.column(2).as_primitive::<Float32Type>();
    let currency = batch.column(3).as_string::<i32>();
    let counterpart_id = batch.column(4).as_primitive::<Int32Type>();
    Ok((0..batch.num_rows())
        .map(|row| Transaction {
            user_id: user_id.value(row),
            transaction_timestamp_millis: timestamp.value(row),
            amount: amount.value(row),
            currency: currency.value(row).to_string(),
            counterpart_id: counterpart_id.value(row),
        })
        .collect())
}

/// `batch` with `layout`'s schema: arrow-avro's logical types (timestamps,
/// dates, times) become the layout's plain integers, which share their
/// buffers, and its field metadata goes.
fn conform(batch: &RecordBatch, layout: &SchemaRef) -> Result<RecordBatch, Fallback> {
    if batch.num_columns() != layout.fields().len() {
        return Err(Fallback(format!(
            "{} columns decoded for a layout of {}",
            batch.num_columns(),
            layout.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(layout.fields())
        .map(|(column, field)| {
            if column.null_count() > 0 && !field.is_nullable() {
                return Err(Fallback(format!("field {} is null", field.name())));
            }
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            let (decoded, wanted) = (column.data_type(), field.data_type());
            if !(decoded.is_temporal() && wanted.is_integer() && decoded.primitive_width() == wanted.primitive_width())
            {
                return Err(Fallback(format!(
                    "field {} decodes as {decoded} where the layout has {wanted}",
                    field.name()
                )));
            }
            let data = column
                .to_data()
                .into_builder()
                .data_type(field.data_type().clone())
                .build()
                .map_err(failed(field.name()))?;
            Ok::<ArrayRef, Fallback>(make_array(data))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(layout), columns).map_err(failed("the batch"))
}

/// An Arrow error, said of `what`.
fn failed(what: &str) -> impl Fn(arrow_schema::ArrowError) -> Fallback + '_ {
    move |e| Fallback(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use apache_avro::Schema;
    use apache_avro::types::Value;

    use super::*;
    use crate::columnar::RowsBuilder;

    const V1: &str = crate::model::TRANSACTION_SCHEMA;
    const V2: &str = include_str!("../../schemas/examples/transaction_v2.avsc");

    /// A framed value of `schema` (registry id `id`).
    fn framed(id: u32, schema: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let schema = Schema::parse_str(schema).expect("schema parses");
        let record = Value::Record(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        let mut value = vec![0];
        value.extend_from_slice(&id.to_be_bytes());
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        value.extend(writer.write_value_to_vec(record).expect("encodes"));
        value
    }

    fn v1(user: i32) -> Vec<u8> {
        framed(
            1,
            V1,
            vec![
                ("user_id", Value::Int(user)),
                (
                    "transaction_timestamp_millis",
                    Value::Long(1_764_000_000_000 + i64::from(user)),
                ),
                ("amount", Value::Float(-1.5 * user as f32)),
                ("currency", Value::String(format!("C{user}"))),
                ("counterpart_id", Value::Int(user * 7)),
            ],
        )
    }

    fn v2(user: i32, category: Option<&str>) -> Vec<u8> {
        let category = match category {
            Some(c) => Value::Union(1, Box::new(Value::String(c.into()))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        framed(
            2,
            V2,
            vec![
                ("user_id", Value::Int(user)),
                ("transaction_timestamp_millis", Value::Long(9)),
                ("amount", Value::Float(2.0)),
                ("currency", Value::String("EUR".into())),
                ("counterpart_id", Value::Int(3)),
                ("merchant_category", category),
            ],
        )
    }

    /// What the record-by-record path makes of the same values.
    fn one_by_one(values: &[Vec<u8>], reader: &str) -> RecordBatch {
        let layout = columnar_schema(&Schema::parse_str(reader).expect("parses")).expect("layout");
        let mut rows = RowsBuilder::new(layout);
        for value in values {
            let id = u32::from_be_bytes(value[1..5].try_into().expect("framed"));
            let writer = Schema::parse_str(if id == 1 { V1 } else { V2 }).expect("parses");
            let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
                .build()
                .expect("reader")
                .read_value(&mut &value[5..])
                .expect("decodes");
            rows.append(&decoded).expect("fits");
        }
        rows.finish()
    }

    fn layout(reader: &str) -> SchemaRef {
        columnar_schema(&Schema::parse_str(reader).expect("parses"))
            .expect("layout")
            .arrow()
            .clone()
    }

    #[test]
    fn writers_mixed_in_one_call_decode_as_the_record_by_record_path_does() {
        let values = vec![v1(1), v2(2, Some("food")), v2(3, None), v1(4), v1(5)];
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let batch = decode(&slices, &[(1, V1), (2, V2)], V2, &layout(V2)).expect("decodes");
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch, one_by_one(&values, V2));
    }

    #[test]
    fn transactions_read_as_the_value_path_reads_them() {
        let values = [v1(1), v2(2, Some("food")), v1(3)];
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let fast = transactions(&slices, &[(1, V1), (2, V2)]).expect("decodes");
        let slow: Vec<Transaction> = values
            .iter()
            .map(|value| {
                let writer = Schema::parse_str(if value[4] == 1 { V1 } else { V2 }).expect("parses");
                let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
                    .build()
                    .expect("reader")
                    .read_value(&mut &value[5..])
                    .expect("decodes");
                crate::avro::transaction_from_value(&decoded).expect("a transaction")
            })
            .collect();
        assert_eq!(fast, slow);
    }

    #[test]
    fn a_bad_value_sends_the_whole_call_to_the_slow_path() {
        let good = v1(1);
        let truncated = &good[..good.len() - 2];
        let mut trailing = v1(2);
        trailing.push(0);
        let mut unknown = v1(3);
        unknown[4] = 9;
        for bad in [truncated, &trailing[..], &unknown[..], &[][..], b"not avro"] {
            let values = [&good[..], bad, &good[..]];
            assert!(
                decode(&values, &[(1, V1)], V1, &layout(V1)).is_err(),
                "{bad:?} was taken"
            );
        }
    }
}
