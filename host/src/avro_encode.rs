//! Confluent-framed Avro of a transaction, written straight from its fields
//! in schemas/transaction.avsc's order: the producer's hot path. A generic
//! encoder (serde into an Avro `Value`, then the datum writer) spent more
//! time per record than the broker did; the schema is fixed at build time,
//! so its five fields are written directly. A unit test decodes the bytes
//! with apache-avro against the schema file, which holds this to the schema.

use crate::model::Transaction;
use crate::varint;

/// Appends the framed value of `tx` (magic byte 0, big-endian `schema_id`,
/// Avro body) to `out`.
pub fn transaction(schema_id: u32, tx: &Transaction, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    // Avro int and long are zigzag varints; float is 4 little-endian bytes;
    // string is its byte length (a long) then the UTF-8 bytes.
    varint::put(out, varint::zigzag(i64::from(tx.user_id)));
    varint::put(out, varint::zigzag(tx.transaction_timestamp_millis));
    out.extend_from_slice(&tx.amount.to_le_bytes());
    varint::put(out, varint::zigzag(tx.currency.len() as i64));
    out.extend_from_slice(tx.currency.as_bytes());
    varint::put(out, varint::zigzag(i64::from(tx.counterpart_id)));
}

#[cfg(test)]
mod tests {
    use apache_avro::Schema;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;

    use super::*;
    use crate::model::TRANSACTION_SCHEMA;

    fn decoded(tx: &Transaction) -> (u32, Value) {
        let mut out = Vec::new();
        transaction(258, tx, &mut out);
        assert_eq!(out[0], 0, "magic byte");
        let id = u32::from_be_bytes(out[1..5].try_into().expect("4 bytes"));
        let schema = Schema::parse_str(TRANSACTION_SCHEMA).expect("schema");
        let mut body = &out[5..];
        let value = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader")
            .read_value(&mut body)
            .expect("decodes");
        assert!(body.is_empty(), "{} trailing bytes", body.len());
        (id, value)
    }

    #[test]
    fn apache_avro_reads_what_it_writes_at_the_edges_of_each_type() {
        for tx in [
            Transaction {
                user_id: 42,
                transaction_timestamp_millis: 1_700_000_000_123,
                amount: -12.5,
                currency: "EUR".into(),
                counterpart_id: 1_000_007,
            },
            Transaction {
                user_id: i32::MIN,
                transaction_timestamp_millis: i64::MAX,
                amount: f32::MAX,
                currency: String::new(),
                counterpart_id: i32::MAX,
            },
            Transaction {
                user_id: -1,
                transaction_timestamp_millis: i64::MIN,
                amount: 0.0,
                currency: "ÅÄÖ€".into(),
                counterpart_id: 0,
            },
        ] {
            let (id, value) = decoded(&tx);
            assert_eq!(id, 258);
            assert_eq!(
                value,
                Value::Record(vec![
                    ("user_id".into(), Value::Int(tx.user_id)),
                    (
                        "transaction_timestamp_millis".into(),
                        Value::Long(tx.transaction_timestamp_millis)
                    ),
                    ("amount".into(), Value::Float(tx.amount)),
                    ("currency".into(), Value::String(tx.currency.clone())),
                    ("counterpart_id".into(), Value::Int(tx.counterpart_id)),
                ])
            );
        }
    }
}
