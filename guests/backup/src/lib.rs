//! transactions-job-backup guest: keeps every record (a passthrough). Records
//! without a value (tombstones) are kept too, so the archive mirrors the topic.
//! A filter would return `Verdict::Drop` for the records it leaves out, reading
//! an entry's key and value with `RawBatch::key` and `RawBatch::value`.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "raw-batch-filter", path: "../../wit" });

pub use sluice::pipeline::types::{RawEntry, RawHeader, Span};

// Only the component's exports construct it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Backup;

impl Guest for Backup {
    fn process(batch: RawBatch) -> Result<Vec<Verdict>, String> {
        Ok(process(&batch))
    }
}

/// One verdict per entry, in order. The engine benchmark compiles this
/// natively.
pub fn process(batch: &RawBatch) -> Vec<Verdict> {
    batch.entries.iter().map(|_| Verdict::Keep).collect()
}

impl RawBatch {
    /// The key of `entry`, one of this batch's entries.
    pub fn key(&self, entry: &RawEntry) -> Option<&[u8]> {
        entry.key.map(|span| self.slice(span))
    }

    /// The value of `entry`, one of this batch's entries.
    pub fn value(&self, entry: &RawEntry) -> Option<&[u8]> {
        entry.value.map(|span| self.slice(span))
    }

    fn slice(&self, span: Span) -> &[u8] {
        let start = span.start as usize;
        &self.bytes[start..start + span.len as usize]
    }
}

// The component's exports; a native build (the engine benchmark) calls
// `process` directly, and two guests' exports in one binary would clash.
#[cfg(target_arch = "wasm32")]
export!(Backup);
