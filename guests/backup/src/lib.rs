//! transactions-job-backup guest: keeps every record (a passthrough). Records
//! without a value (tombstones) are kept too, so the archive mirrors the topic.
//! A filter would return `Verdict::Drop` for the records it leaves out.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "raw-filter", path: "../../wit" });

struct Backup;

impl Guest for Backup {
    fn process(batch: Vec<RawRecord>) -> Result<Vec<Verdict>, String> {
        Ok(batch.iter().map(|_| Verdict::Keep).collect())
    }
}

export!(Backup);
