//! transactions-job-backup guest: keeps every record (a passthrough). Records
//! without a value (tombstones) are kept too, so the archive mirrors the topic.
//! A filter would return `Verdict::Drop` for the records it leaves out.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "raw-filter", path: "../../wit" });

// Only the component's exports construct it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Backup;

impl Guest for Backup {
    fn process(batch: Vec<RawRecord>) -> Result<Vec<Verdict>, String> {
        Ok(process(&batch))
    }
}

/// One verdict per record, in order. The engine benchmark compiles this
/// natively.
pub fn process(batch: &[RawRecord]) -> Vec<Verdict> {
    batch.iter().map(|_| Verdict::Keep).collect()
}

// The component's exports; a native build (the engine benchmark) calls
// `process` directly, and two guests' exports in one binary would clash.
#[cfg(target_arch = "wasm32")]
export!(Backup);
