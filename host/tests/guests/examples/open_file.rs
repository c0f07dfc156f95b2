//! Test guest: guests/features, except that for a record of user 13 it tries
//! to read /etc/passwd (`std::fs::read`: wasi:filesystem/preopens
//! `get-directories`, then wasi:filesystem/types) and adds the number of
//! bytes read (0 on error) to the emitted feature's `as_of_timestamp_millis`.
//! The host grants no files: the call must fail the batch (the sandbox makes
//! `get-directories` trap with the reason), or at most find nothing, so the
//! output is exactly that of guests/features; it must never read the file.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "features", path: "../../../wit" });

mod common;

struct OpenFile;

impl Guest for OpenFile {
    fn process(batch: Vec<Transaction>) -> Result<Vec<FeatureOutcome>, String> {
        Ok(common::count_marked(batch, || {
            let read = std::fs::read("/etc/passwd").map_or(0, |bytes| bytes.len());
            i64::try_from(read).unwrap_or(i64::MAX)
        }))
    }
}

export!(OpenFile);
