//! Where results go: Parquet objects on object storage, latest features in
//! Redis.

pub mod parquet;
pub mod redis;
