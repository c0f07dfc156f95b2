//! Schema registry: the client the jobs use, and the embedded registry that
//! stands in for Confluent's where it cannot be installed.

mod client;
pub mod embedded;

pub use client::{Error, Registry, Result, describe};
