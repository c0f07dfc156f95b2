//! What a guest's `Store` holds: a WASI context that grants nothing
//! (`sandbox`), the store's resource budget (`limits`), the tail of the
//! guest's output, and the keyed state of the partition whose batch is being
//! processed.

use std::collections::HashMap;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::features::sluice::pipeline::keyed_state;
use super::limits::{Limits, StoreBudget};
use super::sandbox::{OutputTail, wasi_ctx};

pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) budget: StoreBudget,
    pub(super) output: OutputTail,
    /// Keyed state lent to the guest for the duration of one `process` call.
    pub(super) state: HashMap<i64, i64>,
    /// Previous values of the keys set during the current call, so a failed
    /// call can be rolled back and the batch retried or dead-lettered
    /// without counting twice.
    undo: Vec<(i64, Option<i64>)>,
    /// Keys the current call created, and how many it may.
    new_keys: usize,
    new_keys_cap: usize,
}

impl StoreData {
    pub fn new(limits: &Limits) -> Self {
        let output = OutputTail::default();
        Self {
            wasi: wasi_ctx(&output),
            table: ResourceTable::new(),
            budget: StoreBudget::new(limits),
            output,
            state: HashMap::new(),
            undo: Vec::new(),
            new_keys: 0,
            new_keys_cap: limits.new_keys_per_call,
        }
    }

    /// Forgets the undo log: the call's updates are kept.
    pub(super) fn commit_state(&mut self) {
        self.undo.clear();
        self.new_keys = 0;
    }

    /// Restores every key the call set to its value before the call.
    pub(super) fn roll_back_state(&mut self) {
        for (key, previous) in self.undo.drain(..).rev() {
            match previous {
                Some(v) => self.state.insert(key, v),
                None => self.state.remove(&key),
            };
        }
        self.new_keys = 0;
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl keyed_state::Host for StoreData {
    fn get(&mut self, key: i64) -> Option<i64> {
        self.state.get(&key).copied()
    }

    fn set(&mut self, key: i64, value: i64) -> wasmtime::Result<()> {
        let previous = self.state.insert(key, value);
        self.undo.push((key, previous));
        if previous.is_none() {
            self.new_keys += 1;
            if self.new_keys > self.new_keys_cap {
                wasmtime::bail!(
                    "keyed-state limit: the guest created more than {} keys in one call (--guest-new-keys-per-batch)",
                    self.new_keys_cap
                );
            }
        }
        Ok(())
    }
}
