//! What one guest store may take: a deadline and optional fuel per call, a
//! memory and table budget over the whole store, a few instances, and caps
//! on the keyed-state entries one call may create and one partition may hold.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Per-call and per-store limits of a guest (docs/guests.md, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one batch call, counted in epochs: a guest that
    /// loops is stopped. No import a guest can reach blocks (see `sandbox`),
    /// so the deadline bounds the whole call.
    pub call_timeout: Duration,
    /// Bytes of all the store's linear memories together.
    pub memory_bytes: usize,
    /// Elements of all the store's tables together.
    pub table_elements: usize,
    /// Fuel (about one unit per WebAssembly instruction) per call; unlimited
    /// when `None`. Unlike the deadline, fuel stops a call at the same point
    /// on every run, whatever else the machine is doing.
    pub fuel: Option<u64>,
    /// Keyed-state entries one call may create (keys it sets that did not
    /// exist before the call).
    pub new_keys_per_call: usize,
    /// Keyed-state entries one partition's state may hold in all: a call
    /// that would pass it fails like any other limit.
    pub keys_per_partition: usize,
    /// How long the failure policy may spend isolating the records a guest
    /// fails on in one batch (`isolate`).
    pub isolation_budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 512 << 20,
            table_elements: 100_000,
            fuel: None,
            new_keys_per_call: 1_000_000,
            keys_per_partition: 2_000_000,
            isolation_budget: Duration::from_secs(120),
        }
    }
}

/// Core instances, tables and memories a store may create: a component
/// built by Rust's wasm32-wasip2 toolchain needs a handful of each.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// Bytes a table element costs the host (a pointer, in wasmtime).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Counts every memory and table of one store against the `Limits`
/// (wasmtime's `StoreLimits` caps each memory or table on its own). Growth
/// is counted when approved; a growth that then fails stays counted (wasmtime
/// also reports failures it never asked about, so giving budget back could
/// be played).
pub(super) struct StoreBudget {
    memory_cap: usize,
    memory_used: usize,
    table_cap: usize,
    table_used: usize,
}

impl StoreBudget {
    pub(super) fn new(limits: &Limits) -> Self {
        Self {
            memory_cap: limits.memory_bytes,
            memory_used: 0,
            table_cap: limits.table_elements,
            table_used: 0,
        }
    }
}

impl ResourceLimiter for StoreBudget {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let after = self.memory_used + growth;
        if after > self.memory_cap {
            wasmtime::bail!(
                "guest memory limit: growing to {} MiB would pass the store's cap of {} MiB (--guest-memory-mb)",
                after >> 20,
                self.memory_cap >> 20
            );
        }
        self.memory_used = after;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let after = self.table_used + growth;
        if after > self.table_cap {
            wasmtime::bail!(
                "guest table limit: growing to {after} elements ({} KiB) would pass the store's cap of {} elements \
                 (--guest-table-elements)",
                (after * TABLE_ELEMENT_BYTES) >> 10,
                self.table_cap
            );
        }
        self.table_used = after;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_covers_every_memory_of_the_store() {
        let limits = Limits {
            memory_bytes: 4 << 16,
            ..Limits::default()
        };
        let mut budget = StoreBudget::new(&limits);
        // Two memories of two pages each fill the budget; a third page of
        // either is refused, though each memory alone is under the cap.
        assert!(budget.memory_growing(0, 2 << 16, None).expect("first"));
        assert!(budget.memory_growing(0, 2 << 16, None).expect("second"));
        let refused = budget.memory_growing(2 << 16, 3 << 16, None).expect_err("over the cap");
        assert!(refused.to_string().contains("--guest-memory-mb"), "{refused}");
    }

    #[test]
    fn the_table_budget_covers_every_table_of_the_store() {
        let limits = Limits {
            table_elements: 10,
            ..Limits::default()
        };
        let mut budget = StoreBudget::new(&limits);
        assert!(budget.table_growing(0, 6, None).expect("first"));
        assert!(budget.table_growing(0, 4, None).expect("second"));
        let refused = budget.table_growing(4, 5, None).expect_err("over the cap");
        assert!(refused.to_string().contains("--guest-table-elements"), "{refused}");
    }
}
