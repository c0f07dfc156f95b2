#![allow(unsafe_code)]
//! The process's malloc settings, by the kind of work the command does.
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
//! The price is that every large block is mapped and faulted in anew. A
//! backfill allocates blocks of megabytes per chunk of every partition
//! (rows, events, Arrow columns): with the threshold fixed, page faults were
//! a quarter of its CPU. It is a batch job that ends, so it keeps glibc's
//! default: over 5,000,000 archived records, 20% less wall time for a peak
//! of about 550 MB instead of 330 MB.
//!
//! Besides `kafka::security`, this is the only module allowed `unsafe`: one
//! call of `mallopt`.

/// Blocks of at least this many bytes are mapped on their own (long-running
/// jobs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// What a command favours where memory and CPU trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Runs until stopped: memory follows what the job holds now.
    LongRunning,
    /// Runs to an end (the backfill): freed blocks are kept for reuse.
    Batch,
}

/// Fixes glibc's mmap threshold for long-running work; nothing for batch
/// work, nor on other C libraries.
pub fn tune(workload: Workload) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if workload == Workload::LongRunning {
        // SAFETY: mallopt only sets a malloc parameter (under malloc's own
        // lock) and has no memory-safety preconditions.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
