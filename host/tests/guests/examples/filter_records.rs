//! Test guest of the first backup world, `raw-filter`: the filter rule of
//! `filter_rule` over a list of records. The backup job must still run
//! modules built for it.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "raw-filter", path: "../../../wit" });

mod filter_rule;

use filter_rule::Decision;

struct FilterRecords;

impl Guest for FilterRecords {
    fn process(batch: Vec<RawRecord>) -> Result<Vec<Verdict>, String> {
        Ok(batch
            .iter()
            .map(|record| {
                let headers: Vec<(&str, &[u8])> = record
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_slice()))
                    .collect();
                match filter_rule::decide(record.key.as_deref(), record.value.as_deref(), &headers) {
                    Decision::Keep => Verdict::Keep,
                    Decision::Drop => Verdict::Drop,
                    Decision::Reject(reason) => Verdict::Reject(reason),
                }
            })
            .collect())
    }
}

export!(FilterRecords);
