//! What a guest's `Store` holds: a WASI context that grants nothing
//! (`sandbox`), the store's resource budget (`limits`), the tail of the
//! guest's output, and the keyed state of the partition whose batch is being
//! processed.

use std::collections::{HashMap, HashSet};

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
    state: HashMap<i64, i64>,
    /// True during a `process` call: keyed state exists only then (not
    /// while the instance is created, for example).
    in_call: bool,
    /// Previous values of the keys set during the current call, so a failed
    /// call can be rolled back and the batch retried or dead-lettered
    /// without counting twice.
    undo: Vec<(i64, Option<i64>)>,
    /// Keys the current call created, and how many it may.
    new_keys: usize,
    new_keys_cap: usize,
    /// Keys a partition's state may hold in all.
    keys_cap: usize,
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
            in_call: false,
            undo: Vec::new(),
            new_keys: 0,
            new_keys_cap: limits.new_keys_per_call,
            keys_cap: limits.keys_per_partition,
        }
    }

    /// Lends a partition's state to the guest for one call.
    pub(super) fn lend_state(&mut self, state: &mut HashMap<i64, i64>) {
        std::mem::swap(&mut self.state, state);
        self.undo.clear();
        self.new_keys = 0;
        self.in_call = true;
    }

    /// Gives the state back after the call: with the call's updates when it
    /// succeeded (the keys it set join `changed`), else with every key it
    /// set restored.
    pub(super) fn take_back_state(&mut self, state: &mut HashMap<i64, i64>, changed: &mut HashSet<i64>, keep: bool) {
        if keep {
            changed.extend(self.undo.iter().map(|(key, _)| *key));
        } else {
            for (key, previous) in self.undo.drain(..).rev() {
                match previous {
                    Some(v) => self.state.insert(key, v),
                    None => self.state.remove(&key),
                };
            }
        }
        self.undo.clear();
        self.new_keys = 0;
        self.in_call = false;
        std::mem::swap(&mut self.state, state);
    }

    fn outside_a_call(&self) -> wasmtime::Result<()> {
        if self.in_call {
            Ok(())
        } else {
            wasmtime::bail!("keyed state is only available during a call of `process`, not while the instance starts")
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
    fn get(&mut self, key: i64) -> wasmtime::Result<Option<i64>> {
        self.outside_a_call()?;
        Ok(self.state.get(&key).copied())
    }

    fn set(&mut self, key: i64, value: i64) -> wasmtime::Result<()> {
        self.outside_a_call()?;
        self.set_one(key, value)
    }

    fn get_many(&mut self, keys: Vec<i64>) -> wasmtime::Result<Vec<Option<i64>>> {
        self.outside_a_call()?;
        Ok(keys.iter().map(|key| self.state.get(key).copied()).collect())
    }

    fn set_many(&mut self, entries: Vec<(i64, i64)>) -> wasmtime::Result<()> {
        self.outside_a_call()?;
        entries
            .into_iter()
            .try_for_each(|(key, value)| self.set_one(key, value))
    }
}

impl StoreData {
    /// One key set during a call: remembered for the undo, and held to the
    /// limits on keys.
    fn set_one(&mut self, key: i64, value: i64) -> wasmtime::Result<()> {
        let previous = self.state.insert(key, value);
        self.undo.push((key, previous));
        if previous.is_none() {
            self.new_keys += 1;
            if self.new_keys > self.new_keys_cap {
                wasmtime::bail!(
                    "keyed-state limit: the guest created more than {} keys in one call (--guest-new-keys-per-call)",
                    self.new_keys_cap
                );
            }
            if self.state.len() > self.keys_cap {
                wasmtime::bail!(
                    "keyed-state limit: the partition's state would hold more than {} keys \
                     (--state-max-keys-per-partition)",
                    self.keys_cap
                );
            }
        }
        Ok(())
    }
}
