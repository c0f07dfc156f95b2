#![allow(unsafe_code)]
//! The process's malloc settings, by what the command holds.
//!
//! glibc's malloc raises its mmap threshold each time a block above it is
//! freed (up to 32 MiB); blocks below the new threshold then come from the
//! heap, which keeps what is freed for the next block. That is what a job
//! that works in batches wants: a roll's buffers, columns and pages are
//! about as large as the last roll's, and reusing them costs no page
//! faults. With the threshold fixed instead, every block of megabytes is
//! mapped and faulted in anew: page faults were a quarter to a third of the
//! backup engine's and the backfill's CPU.
//!
//! The features job holds its keyed state, which grows and is snapshotted
//! (hash tables that double, checkpoint buffers): with the dynamic
//! threshold, a job at a million users held tens of megabytes it no longer
//! used (`make bench`'s state row: a peak resident memory of about 215 MB
//! against about 180 MB with the threshold fixed). So the features job
//! fixes the threshold, and its large blocks are returned when freed.
//! jemalloc reused pages as well as glibc's default and held more at the
//! state row (232 MB).
//!
//! Besides `kafka::security`, this is the only module allowed `unsafe`: one
//! call of `mallopt`.

/// Blocks of at least this many bytes are mapped on their own (jobs that
/// hold keyed state).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// What a command's memory follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Batches of about the same size, one after another (the backup job,
    /// the backfill, the producer): freed blocks are kept for reuse.
    Batches,
    /// Keyed state that grows and shrinks (the features job): large blocks
    /// go back to the system when freed.
    KeyedState,
}

/// Fixes glibc's mmap threshold for work that holds keyed state; nothing
/// otherwise, nor on other C libraries.
pub fn tune(workload: Workload) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if workload == Workload::KeyedState {
        // SAFETY: mallopt only sets a malloc parameter (under malloc's own
        // lock) and has no memory-safety preconditions.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
