//! transactions-job-backup guest: keeps every record (a passthrough). Records
//! without a value (tombstones) are kept too, so the archive mirrors the topic.
//! A filter would return `Verdict::Drop` for the records it leaves out.

wit_bindgen::generate!({ world: "raw-filter", path: "../../wit" });

use sluice::pipeline::types::{RawRecord, Verdict};

struct Backup;

impl Guest for Backup {
    fn process(batch: Vec<RawRecord>) -> Result<Vec<Verdict>, String> {
        Ok(batch.iter().map(|_| Verdict::Keep).collect())
    }
}

export!(Backup);
