//! Blocking work called from async code: guest calls (wasmtime-wasi's sync
//! host functions drive futures with `block_on`) and librdkafka's
//! synchronous requests (offsets, watermarks, metadata), which can wait on
//! the broker for seconds.

/// Runs `code` where it may block: a runtime worker thread hands its other
/// tasks to the remaining workers first (`block_in_place`), so the job's
/// other tasks (the durable path's writes, the admin listener) go on.
/// Blocking threads, threads outside a runtime and single-threaded runtimes
/// run the code as is.
pub fn run<R>(code: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(code),
        _ => code(),
    }
}
