//! What a guest's `Store` holds: an empty WASI context (the std of
//! wasm32-wasip2 imports WASI, but no files, sockets, env or arguments are
//! granted), memory limits, and the keyed state of the partition whose batch
//! is being processed.

use std::collections::HashMap;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::features::sluice::pipeline::keyed_state;

pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    /// Keyed state lent to the guest for the duration of one `process` call.
    pub(super) state: HashMap<i64, i64>,
    /// Previous values of the keys set during the current call, so a failed
    /// call can be rolled back and the batch retried or dead-lettered
    /// without counting twice.
    undo: Vec<(i64, Option<i64>)>,
}

impl StoreData {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            state: HashMap::new(),
            undo: Vec::new(),
        }
    }
}

impl StoreData {
    /// Forgets the undo log: the call's updates are kept.
    pub(super) fn commit_state(&mut self) {
        self.undo.clear();
    }

    /// Restores every key the call set to its value before the call.
    pub(super) fn roll_back_state(&mut self) {
        for (key, previous) in self.undo.drain(..).rev() {
            match previous {
                Some(v) => self.state.insert(key, v),
                None => self.state.remove(&key),
            };
        }
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

    fn set(&mut self, key: i64, value: i64) {
        let previous = self.state.insert(key, value);
        self.undo.push((key, previous));
    }
}
