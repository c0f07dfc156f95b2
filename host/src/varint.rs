//! LEB128 varints and zigzag, for the packed streams of open objects
//! (`rolling::Packed`, `open_events::OpenEvents`) and Avro's ints and longs
//! (`avro_encode`). Twenty lines do not justify a dependency.

/// The longest a varint of a `u64` takes.
pub const MAX_LEN: usize = 10;

pub fn put(bytes: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        bytes.push((n as u8) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
}

/// The varint at `*at`, moving `*at` past it. The streams are written by
/// `put` only, so they are well formed.
pub fn get(bytes: &[u8], at: &mut usize) -> u64 {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return n;
        }
        shift += 7;
    }
}

pub fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Makes room for `most` more bytes: by doubling while the buffer is below
/// `step`, then in steps of `step` rather than doubling, so a full stream
/// holds about what it needs. Blocks from 256 KiB are mapped on their own
/// (see `allocator`), so growing a large one is a `mremap`, not a copy.
pub fn reserve(bytes: &mut Vec<u8>, most: usize, step: usize) {
    if bytes.capacity() - bytes.len() < most {
        let grow = bytes.capacity().clamp(64, step);
        bytes.reserve_exact(most.max(grow));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_extremes() {
        let values = [0, 1, -1, 63, -64, 64, i64::from(i32::MAX), i64::MIN, i64::MAX];
        let mut bytes = Vec::new();
        for v in values {
            put(&mut bytes, zigzag(v));
        }
        put(&mut bytes, u64::MAX);
        let mut at = 0;
        let back: Vec<i64> = values.iter().map(|_| unzigzag(get(&bytes, &mut at))).collect();
        assert_eq!(back, values);
        assert_eq!(get(&bytes, &mut at), u64::MAX);
        assert_eq!(at, bytes.len());
        let mut longest = Vec::new();
        put(&mut longest, u64::MAX);
        assert_eq!(longest.len(), MAX_LEN);
    }
}
