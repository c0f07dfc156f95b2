#![allow(unsafe_code)]
//! The process's malloc settings.
//!
//! glibc's malloc raises its mmap threshold each time a block above it is
//! freed (up to 32 MiB); blocks below the new threshold then come from the
//! heap, which keeps what is freed. A features job builds and frees blocks
//! of megabytes all the time (state snapshots, checkpoint buffers, hash
//! tables that grow), so it held tens of megabytes it no longer used: at a
//! million users, a peak resident memory of about 230 MB against about 175
//! MB with the threshold fixed (`make bench`'s state row). A fixed threshold
//! keeps large blocks mapped on their own and returns them when freed.
//!
//! Besides `kafka::security`, this is the only module allowed `unsafe`: one
//! call of `mallopt`.

/// Blocks of at least this many bytes are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Fixes glibc's mmap threshold; nothing on other C libraries.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter (under malloc's own lock)
    // and has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
