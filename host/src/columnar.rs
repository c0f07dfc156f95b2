//! Avro records to Arrow columns, for the schema-agnostic archive: the Arrow
//! schema mirrors the reader (latest registered) Avro schema field for field,
//! and each decoded record is read by field name, so v1 and v2 records land
//! in one file with v2's columns (v1 rows take the field's default).

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::types::Value;
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef};

use crate::avro::{record_fields, unwrap_union};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Binary,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
    nullable: bool,
    default: Option<serde_json::Value>,
}

/// The archive layout of one reader schema.
#[derive(Debug)]
pub struct ColumnarSchema {
    arrow: SchemaRef,
    columns: Vec<Column>,
}

/// Maps a flat Avro record schema (primitives and `["null", T]` unions) to
/// Arrow; anything else is refused with the field's name.
pub fn columnar_schema(schema: &Schema) -> Result<Arc<ColumnarSchema>, String> {
    let Schema::Record(record) = schema else {
        return Err("the archive needs a record schema".into());
    };
    let mut columns = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let (kind, nullable) = kind_of(&field.schema).ok_or_else(|| {
            format!(
                "field {} has a type the archive cannot store: {:?}",
                field.name, field.schema
            )
        })?;
        columns.push(Column {
            name: field.name.clone(),
            kind,
            nullable,
            default: field.default.clone(),
        });
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(&c.name, data_type(c.kind), c.nullable))
        .collect();
    Ok(Arc::new(ColumnarSchema {
        arrow: Arc::new(arrow_schema::Schema::new(fields)),
        columns,
    }))
}

fn kind_of(schema: &Schema) -> Option<(Kind, bool)> {
    let kind = match schema {
        Schema::Boolean => Kind::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Kind::Int32,
        Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimeMicros => Kind::Int64,
        Schema::Float => Kind::Float32,
        Schema::Double => Kind::Float64,
        Schema::String | Schema::Enum(_) => Kind::Utf8,
        Schema::Bytes => Kind::Binary,
        Schema::Union(union) => {
            let variants = union.variants();
            let non_null: Vec<&Schema> = variants.iter().filter(|s| **s != Schema::Null).collect();
            return match non_null.as_slice() {
                [only] if variants.len() == 2 => kind_of(only).map(|(k, _)| (k, true)),
                _ => None,
            };
        }
        _ => return None,
    };
    Some((kind, false))
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Boolean => DataType::Boolean,
        Kind::Int32 => DataType::Int32,
        Kind::Int64 => DataType::Int64,
        Kind::Float32 => DataType::Float32,
        Kind::Float64 => DataType::Float64,
        Kind::Utf8 => DataType::Utf8,
        Kind::Binary => DataType::Binary,
    }
}

impl ColumnarSchema {
    pub fn arrow(&self) -> &SchemaRef {
        &self.arrow
    }

    /// True when every field of `writer` has a column here, i.e. rows of that
    /// writer lose nothing in this layout.
    pub fn covers(&self, writer: &Schema) -> bool {
        let Schema::Record(record) = writer else { return false };
        record
            .fields
            .iter()
            .all(|f| self.columns.iter().any(|c| c.name == f.name))
    }
}

/// One cell before it is appended, so a row is checked whole before any
/// column grows.
enum Cell<'a> {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

enum Builder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
}

/// Accumulates rows of one layout into a `RecordBatch`.
pub struct RowsBuilder {
    schema: Arc<ColumnarSchema>,
    builders: Vec<Builder>,
    rows: usize,
}

impl RowsBuilder {
    pub fn new(schema: Arc<ColumnarSchema>) -> Self {
        let builders = schema
            .columns
            .iter()
            .map(|c| match c.kind {
                Kind::Boolean => Builder::Boolean(BooleanBuilder::new()),
                Kind::Int32 => Builder::Int32(Int32Builder::new()),
                Kind::Int64 => Builder::Int64(Int64Builder::new()),
                Kind::Float32 => Builder::Float32(Float32Builder::new()),
                Kind::Float64 => Builder::Float64(Float64Builder::new()),
                Kind::Utf8 => Builder::Utf8(StringBuilder::new()),
                Kind::Binary => Builder::Binary(BinaryBuilder::new()),
            })
            .collect();
        Self {
            schema,
            builders,
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one decoded record, or explains why it does not fit (then
    /// nothing is appended).
    pub fn append(&mut self, value: &Value) -> Result<(), String> {
        let fields = record_fields(value).map_err(|e| e.to_string())?;
        let mut cells = Vec::with_capacity(self.schema.columns.len());
        for column in &self.schema.columns {
            let cell = match fields.get(column.name.as_str()) {
                Some(v) => cell_of(column, unwrap_union(v))?,
                None => default_cell(column)?,
            };
            if matches!(cell, Cell::Null) && !column.nullable {
                return Err(format!(
                    "field {} is null but the archive column is not nullable",
                    column.name
                ));
            }
            cells.push(cell);
        }
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            push(builder, cell);
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows so far as one batch; the builder starts empty again.
    pub fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Boolean(b) => Arc::new(b.finish()),
                    Builder::Int32(b) => Arc::new(b.finish()),
                    Builder::Int64(b) => Arc::new(b.finish()),
                    Builder::Float32(b) => Arc::new(b.finish()),
                    Builder::Float64(b) => Arc::new(b.finish()),
                    Builder::Utf8(b) => Arc::new(b.finish()),
                    Builder::Binary(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        // The arrays follow the schema's own columns, so this cannot fail.
        RecordBatch::try_new(self.schema.arrow.clone(), arrays).expect("arrays match their schema")
    }
}

/// Reads a value as the column's type, with Avro's promotions
/// (int -> long/float/double, long -> float/double, float -> double,
/// string <-> bytes).
fn cell_of<'a>(column: &Column, value: &'a Value) -> Result<Cell<'a>, String> {
    let cell = match (column.kind, value) {
        (_, Value::Null) => Cell::Null,
        (Kind::Boolean, Value::Boolean(v)) => Cell::Bool(*v),
        (Kind::Int32, Value::Int(v) | Value::Date(v) | Value::TimeMillis(v)) => Cell::I32(*v),
        (Kind::Int64, Value::Int(v)) => Cell::I64(i64::from(*v)),
        (
            Kind::Int64,
            Value::Long(v) | Value::TimestampMillis(v) | Value::TimestampMicros(v) | Value::TimeMicros(v),
        ) => Cell::I64(*v),
        (Kind::Float32, Value::Float(v)) => Cell::F32(*v),
        (Kind::Float32, Value::Int(v)) => Cell::F32(*v as f32),
        (Kind::Float32, Value::Long(v)) => Cell::F32(*v as f32),
        (Kind::Float64, Value::Double(v)) => Cell::F64(*v),
        (Kind::Float64, Value::Float(v)) => Cell::F64(f64::from(*v)),
        (Kind::Float64, Value::Int(v)) => Cell::F64(f64::from(*v)),
        (Kind::Float64, Value::Long(v)) => Cell::F64(*v as f64),
        (Kind::Utf8, Value::String(v) | Value::Enum(_, v)) => Cell::Str(v),
        (Kind::Utf8, Value::Bytes(v)) => {
            Cell::Str(std::str::from_utf8(v).map_err(|e| format!("field {}: {e}", column.name))?)
        }
        (Kind::Binary, Value::Bytes(v)) => Cell::Bytes(v),
        (Kind::Binary, Value::String(v)) => Cell::Bytes(v.as_bytes()),
        (kind, v) => {
            return Err(format!(
                "field {} holds {v:?}, the archive column is {kind:?}",
                column.name
            ));
        }
    };
    Ok(cell)
}

fn default_cell(column: &Column) -> Result<Cell<'_>, String> {
    use serde_json::Value as J;
    let missing = || format!("field {} is missing and has no default", column.name);
    let default = column.default.as_ref().ok_or_else(missing)?;
    let cell = match (column.kind, default) {
        (_, J::Null) => Cell::Null,
        (Kind::Boolean, J::Bool(v)) => Cell::Bool(*v),
        (Kind::Int32, J::Number(n)) => Cell::I32(n.as_i64().and_then(|v| i32::try_from(v).ok()).ok_or_else(missing)?),
        (Kind::Int64, J::Number(n)) => Cell::I64(n.as_i64().ok_or_else(missing)?),
        (Kind::Float32, J::Number(n)) => Cell::F32(n.as_f64().ok_or_else(missing)? as f32),
        (Kind::Float64, J::Number(n)) => Cell::F64(n.as_f64().ok_or_else(missing)?),
        (Kind::Utf8, J::String(s)) => Cell::Str(s),
        (Kind::Binary, J::String(s)) => Cell::Bytes(s.as_bytes()),
        _ => return Err(missing()),
    };
    Ok(cell)
}

fn push(builder: &mut Builder, cell: Cell<'_>) {
    match (builder, cell) {
        (Builder::Boolean(b), Cell::Bool(v)) => b.append_value(v),
        (Builder::Int32(b), Cell::I32(v)) => b.append_value(v),
        (Builder::Int64(b), Cell::I64(v)) => b.append_value(v),
        (Builder::Float32(b), Cell::F32(v)) => b.append_value(v),
        (Builder::Float64(b), Cell::F64(v)) => b.append_value(v),
        (Builder::Utf8(b), Cell::Str(v)) => b.append_value(v),
        (Builder::Binary(b), Cell::Bytes(v)) => b.append_value(v),
        (Builder::Boolean(b), _) => b.append_null(),
        (Builder::Int32(b), _) => b.append_null(),
        (Builder::Int64(b), _) => b.append_null(),
        (Builder::Float32(b), _) => b.append_null(),
        (Builder::Float64(b), _) => b.append_null(),
        (Builder::Utf8(b), _) => b.append_null(),
        (Builder::Binary(b), _) => b.append_null(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;

    const V2: &str = include_str!("../../schemas/examples/transaction_v2.avsc");

    fn v1_record(user: i32) -> Value {
        Value::Record(vec![
            ("user_id".into(), Value::Int(user)),
            ("transaction_timestamp_millis".into(), Value::Long(1)),
            ("amount".into(), Value::Float(2.5)),
            ("currency".into(), Value::String("EUR".into())),
            ("counterpart_id".into(), Value::Int(9)),
        ])
    }

    #[test]
    fn v1_rows_take_the_v2_default_and_v2_rows_keep_the_new_field() {
        let schema = columnar_schema(&Schema::parse_str(V2).expect("v2 parses")).expect("maps");
        let mut rows = RowsBuilder::new(schema.clone());
        rows.append(&v1_record(1)).expect("v1 fits");
        let Value::Record(mut fields) = v1_record(2) else {
            unreachable!()
        };
        fields.push((
            "merchant_category".into(),
            Value::Union(1, Box::new(Value::String("food".into()))),
        ));
        rows.append(&Value::Record(fields)).expect("v2 fits");
        let batch = rows.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.num_columns(), 6);
        let category = batch
            .column_by_name("merchant_category")
            .expect("column")
            .as_string::<i32>();
        assert!(category.is_null(0));
        assert_eq!(category.value(1), "food");
        let users = batch
            .column_by_name("user_id")
            .expect("column")
            .as_primitive::<Int32Type>();
        assert_eq!(users.values().to_vec(), vec![1, 2]);
    }

    #[test]
    fn a_row_with_a_wrong_type_is_refused_whole() {
        let schema = columnar_schema(&Schema::parse_str(V2).expect("v2 parses")).expect("maps");
        let mut rows = RowsBuilder::new(schema);
        let bad = Value::Record(vec![("user_id".into(), Value::String("x".into()))]);
        assert!(rows.append(&bad).is_err());
        assert!(rows.is_empty());
        assert_eq!(rows.finish().num_rows(), 0);
    }
}
