//! Avro in Confluent wire format (magic byte 0, 4-byte big-endian schema id,
//! Avro body): framing and writer-schema lookup through the registry client
//! (cached per id), decoding to `Value`, and the typed views the jobs need.
//!
//! Records are decoded with their writer schema only and then read *by field
//! name* against the reader schema; a field the writer lacks takes the reader's
//! default. That is Avro's resolution rule for the flat records the pipeline
//! carries, without apache-avro's per-datum `resolve`, which costs most of the
//! decode time (apache/avro-rs issues 310, 371).

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::avro_common::AvroSchema;
use schema_registry_converter::schema_registry_common::{BytesResult, get_bytes_result, invalid_bytes_error};

use crate::model::Transaction;
use crate::registry::Registry;

/// Why one record could not be decoded. Every variant sends the record to the
/// dead-letter topic; registry outages are not here (they stop the batch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value")]
    Missing,
    #[error("not Confluent-framed Avro: {0}")]
    NotFramed(String),
    #[error("unknown schema id {id}: {reason}")]
    UnknownSchema { id: u32, reason: String },
    #[error("Avro body does not match writer schema {id}: {reason}")]
    Body { id: u32, reason: String },
    #[error("record does not fit the expected schema: {0}")]
    Shape(String),
}

/// A failure that is not the record's fault: the batch is retried, nothing
/// goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
#[error("schema registry unavailable: {0}")]
pub struct RegistryUnavailable(pub String);

/// Decodes Confluent-framed values; writer schemas are fetched once per id.
pub struct Decoder {
    client: AvroDecoder,
    schemas: HashMap<u32, Result<Arc<AvroSchema>, DecodeError>>,
}

/// Reads the schema id of a framed value.
pub fn schema_id(value: Option<&[u8]>) -> Result<u32, DecodeError> {
    match get_bytes_result(value) {
        BytesResult::Valid(id, _) => Ok(id),
        BytesResult::Null => Err(DecodeError::Missing),
        BytesResult::Invalid(bytes) => Err(DecodeError::NotFramed(invalid_bytes_error(bytes))),
    }
}

/// The schema ids of framed `values`, each run of equal ids once: values of
/// one writer come in runs, so a batch's ids are looked up or hashed per
/// run, not per record. Values that are not framed are skipped.
pub fn writer_ids<'a>(values: impl IntoIterator<Item = Option<&'a [u8]>>) -> impl Iterator<Item = u32> {
    let mut last = None;
    values
        .into_iter()
        .filter_map(|value| schema_id(value).ok())
        .filter(move |id| last.replace(*id) != Some(*id))
}

impl Decoder {
    pub fn new(registry: &Registry) -> Self {
        Self {
            client: AvroDecoder::new(registry.settings().clone()),
            schemas: HashMap::new(),
        }
    }

    /// Makes sure the writer schema of every framed value is known (one
    /// registry call per new id); call once per batch before `decode`.
    pub async fn prepare<'a>(
        &mut self,
        values: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> Result<(), RegistryUnavailable> {
        for id in writer_ids(values) {
            if self.schemas.contains_key(&id) {
                continue;
            }
            match self.client.get_schema(id).await {
                Ok(schema) => {
                    self.schemas.insert(id, Ok(schema));
                }
                Err(e) if e.retriable => return Err(RegistryUnavailable(e.to_string())),
                Err(e) => {
                    let reason = e.error.clone();
                    self.schemas.insert(id, Err(DecodeError::UnknownSchema { id, reason }));
                }
            }
        }
        Ok(())
    }

    /// Writer schema ids known so far, with their parsed schemas.
    pub fn known_schema(&self, id: u32) -> Option<&Schema> {
        match self.schemas.get(&id) {
            Some(Ok(s)) => Some(&s.parsed),
            _ => None,
        }
    }

    /// The writer schemas prepared so far that the registry knows, as
    /// (id, schema JSON).
    pub fn writers(&self) -> Vec<(u32, &str)> {
        self.schemas
            .iter()
            .filter_map(|(id, schema)| schema.as_ref().ok().map(|s| (*id, s.raw.as_str())))
            .collect()
    }

    /// Readers for every writer schema prepared so far; build once per batch
    /// (a reader resolves its schema's names when it is built).
    pub fn readers(&self) -> Readers<'_> {
        let readers =
            self.schemas
                .iter()
                .map(|(&id, schema)| {
                    let reader = match schema {
                        Ok(schema) => GenericDatumReader::builder(&schema.parsed).build().map_err(|e| {
                            DecodeError::UnknownSchema {
                                id,
                                reason: e.to_string(),
                            }
                        }),
                        Err(e) => Err(e.clone()),
                    };
                    (id, reader)
                })
                .collect();
        Readers { readers }
    }
}

/// Decoders of the writer schemas of one batch.
pub struct Readers<'a> {
    readers: HashMap<u32, Result<GenericDatumReader<'a>, DecodeError>>,
}

impl Readers<'_> {
    /// The transaction of each of `values`, in order: all at once straight
    /// into columns (`avro_columns`), or, when one of them does not decode
    /// there, each by itself, so that each bad value gets its own reason.
    pub fn transactions(&self, decoder: &Decoder, values: &[Option<&[u8]>]) -> Vec<Result<Transaction, DecodeError>> {
        if let Some(present) = values.iter().copied().collect::<Option<Vec<&[u8]>>>() {
            match crate::avro_columns::transactions(&present, &decoder.writers()) {
                Ok(transactions) => return transactions.into_iter().map(Ok).collect(),
                Err(reason) => tracing::debug!(%reason, "decoding these records one by one"),
            }
        }
        values
            .iter()
            .map(|value| self.decode(*value).and_then(|(_, v)| transaction_from_value(&v)))
            .collect()
    }

    /// Decodes one value with its writer schema; `Decoder::prepare` must have
    /// seen it.
    pub fn decode(&self, value: Option<&[u8]>) -> Result<(u32, Value), DecodeError> {
        let (id, mut body) = match get_bytes_result(value) {
            BytesResult::Valid(id, body) => (id, body),
            BytesResult::Null => return Err(DecodeError::Missing),
            BytesResult::Invalid(bytes) => return Err(DecodeError::NotFramed(invalid_bytes_error(bytes))),
        };
        let reader = match self.readers.get(&id) {
            Some(Ok(reader)) => reader,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(DecodeError::UnknownSchema {
                    id,
                    reason: "not prepared".into(),
                });
            }
        };
        let value = reader.read_value(&mut body).map_err(|e| DecodeError::Body {
            id,
            reason: e.to_string(),
        })?;
        if !body.is_empty() {
            return Err(DecodeError::Body {
                id,
                reason: format!("{} trailing bytes", body.len()),
            });
        }
        Ok((id, value))
    }
}

/// The fields of a decoded record, by name.
pub fn record_fields(value: &Value) -> Result<HashMap<&str, &Value>, DecodeError> {
    match value {
        Value::Record(fields) => Ok(fields.iter().map(|(k, v)| (k.as_str(), v)).collect()),
        other => Err(DecodeError::Shape(format!("expected a record, found {other:?}"))),
    }
}

/// Strips a union branch so `["null", T]` fields read as `T` or `Null`.
pub fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

/// The typed transaction the features guest receives. Works for every
/// writer version that keeps the five v1 fields (all later versions must,
/// under BACKWARD compatibility with defaults).
pub fn transaction_from_value(value: &Value) -> Result<Transaction, DecodeError> {
    let fields = record_fields(value)?;
    let get = |name: &str| {
        fields
            .get(name)
            .map(|v| unwrap_union(v))
            .ok_or_else(|| DecodeError::Shape(format!("missing field {name}")))
    };
    let wrong = |name: &str, v: &Value| DecodeError::Shape(format!("field {name} has unexpected value {v:?}"));
    let user_id = match get("user_id")? {
        Value::Int(v) => *v,
        v => return Err(wrong("user_id", v)),
    };
    let transaction_timestamp_millis = match get("transaction_timestamp_millis")? {
        Value::Long(v) | Value::TimestampMillis(v) => *v,
        Value::Int(v) => i64::from(*v),
        v => return Err(wrong("transaction_timestamp_millis", v)),
    };
    let amount = match get("amount")? {
        Value::Float(v) => *v,
        v => return Err(wrong("amount", v)),
    };
    let currency = match get("currency")? {
        Value::String(v) => v.clone(),
        v => return Err(wrong("currency", v)),
    };
    let counterpart_id = match get("counterpart_id")? {
        Value::Int(v) => *v,
        v => return Err(wrong("counterpart_id", v)),
    };
    Ok(Transaction {
        user_id,
        transaction_timestamp_millis,
        amount,
        currency,
        counterpart_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_id_rejects_unframed_values() {
        assert!(matches!(
            schema_id(Some(b"hello world")),
            Err(DecodeError::NotFramed(_))
        ));
        assert!(matches!(schema_id(Some(&[0, 0])), Err(DecodeError::NotFramed(_))));
        assert_eq!(schema_id(None), Err(DecodeError::Missing));
        assert_eq!(schema_id(Some(&[0, 0, 0, 1, 2, 9])), Ok(258));
    }

    #[test]
    fn writer_ids_are_each_run_of_equal_ids_once() {
        let (one, two): (&[u8], &[u8]) = (&[0, 0, 0, 0, 1, 7], &[0, 0, 0, 0, 2, 7]);
        let values = [
            Some(one),
            Some(one),
            None,
            Some(b"x".as_slice()),
            Some(one),
            Some(two),
            Some(one),
        ];
        assert_eq!(writer_ids(values).collect::<Vec<_>>(), vec![1, 2, 1]);
    }

    #[test]
    fn transaction_reads_fields_by_name_whatever_their_order() {
        let value = Value::Record(vec![
            ("currency".into(), Value::String("EUR".into())),
            (
                "merchant_category".into(),
                Value::Union(1, Box::new(Value::String("food".into()))),
            ),
            ("counterpart_id".into(), Value::Int(7)),
            ("amount".into(), Value::Float(-12.5)),
            ("transaction_timestamp_millis".into(), Value::Long(1_700_000_000_000)),
            ("user_id".into(), Value::Int(42)),
        ]);
        let tx = transaction_from_value(&value).expect("decodes");
        assert_eq!(tx.user_id, 42);
        assert_eq!(tx.currency, "EUR");
        assert_eq!(tx.amount, -12.5);
    }

    #[test]
    fn transaction_missing_a_field_is_a_shape_error() {
        let value = Value::Record(vec![("user_id".into(), Value::Int(1))]);
        assert!(matches!(transaction_from_value(&value), Err(DecodeError::Shape(_))));
    }
}
