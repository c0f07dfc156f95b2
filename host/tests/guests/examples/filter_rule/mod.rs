//! The rule of the two test filters, one for each backup world
//! (filter_batch, filter_records): what they decide depends on each record's
//! key, value and headers, so the archive and the dead letters show whether
//! a guest saw each record as it was produced.

/// A record with this header is rejected, its value quoted in the reason.
pub const REJECT_HEADER: &str = "sluice-test-reject";

pub enum Decision {
    Keep,
    Drop,
    Reject(String),
}

/// Rejects a record with `REJECT_HEADER` (the reason names the header's
/// value, the key and the value's length), drops one whose key ends in an
/// odd digit, and keeps the rest.
pub fn decide(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Decision {
    let key_text = key.map_or_else(|| "none".to_string(), |k| String::from_utf8_lossy(k).into_owned());
    if let Some((_, why)) = headers.iter().find(|(name, _)| *name == REJECT_HEADER) {
        let value = value.map_or_else(|| "no value".to_string(), |v| format!("a value of {} bytes", v.len()));
        return Decision::Reject(format!("{}: key {key_text}, {value}", String::from_utf8_lossy(why)));
    }
    match key.and_then(|k| k.last()) {
        Some(b'1' | b'3' | b'5' | b'7' | b'9') => Decision::Drop,
        _ => Decision::Keep,
    }
}
