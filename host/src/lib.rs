//! sluice: Kafka records through sandboxed WebAssembly components, to Parquet
//! on object storage and to Redis. The host owns every side effect; guests own
//! only per-record logic (see DESIGN.md and wit/sluice.wit).

pub mod allocator;
pub mod avro;
pub mod avro_columns;
pub mod avro_encode;
pub mod blocking;
pub mod cli;
pub mod columnar;
pub mod config;
pub mod dlq;
pub mod fault;
pub mod hot_swap;
pub mod jobs;
pub mod kafka;
pub mod lineage;
pub mod logging;
pub mod model;
pub mod ops;
pub mod redis_conn;
pub mod registry;
pub mod runtime;
pub mod secret;
pub mod settings;
pub mod sinks;
pub mod state;
pub mod varint;
