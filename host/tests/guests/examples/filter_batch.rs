//! Test guest of `raw-batch-filter`: the filter rule of `filter_rule` over
//! each entry's key, value and headers, read through the batch's spans.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "raw-batch-filter", path: "../../../wit" });

mod filter_rule;

use filter_rule::Decision;
use sluice::pipeline::types::Span;

struct FilterBatch;

impl Guest for FilterBatch {
    fn process(batch: RawBatch) -> Result<Vec<Verdict>, String> {
        let bytes = |span: Option<Span>| span.map(|s| &batch.bytes[s.start as usize..(s.start + s.len) as usize]);
        Ok(batch
            .entries
            .iter()
            .map(|entry| {
                let headers: Vec<(&str, &[u8])> = batch
                    .headers
                    .iter()
                    .filter(|h| h.offset == entry.offset)
                    .map(|h| (h.name.as_str(), h.value.as_slice()))
                    .collect();
                match filter_rule::decide(bytes(entry.key), bytes(entry.value), &headers) {
                    Decision::Keep => Verdict::Keep,
                    Decision::Drop => Verdict::Drop,
                    Decision::Reject(reason) => Verdict::Reject(reason),
                }
            })
            .collect())
    }
}

export!(FilterBatch);
