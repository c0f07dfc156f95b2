//! One wrapper per world: load a component file, instantiate it in its own
//! store, and call it once per batch under the runtime's limits.

use std::collections::HashMap;
use std::path::Path;

use wasmtime::component::HasSelf;
use wasmtime::{Store, StoreLimitsBuilder};

use super::bindings::{features, generator, raw_filter};
use super::store_data::StoreData;
use super::{Error, Result, Runtime};

/// A store with the runtime's memory cap and a fresh epoch deadline per call.
struct GuestStore {
    store: Store<StoreData>,
    deadline_ticks: u64,
    path: String,
}

impl GuestStore {
    fn new(runtime: &Runtime, path: &Path) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(runtime.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&runtime.engine, StoreData::new(limits));
        store.limiter(|data| &mut data.limits);
        // Instantiation runs guest code too (initialisers): bound it as a call.
        store.set_epoch_deadline(runtime.deadline_ticks());
        Self {
            store,
            deadline_ticks: runtime.deadline_ticks(),
            path: path.display().to_string(),
        }
    }

    /// Arms the deadline for the next call.
    fn arm(&mut self) -> &mut Store<StoreData> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        &mut self.store
    }

    fn trap(&self, e: wasmtime::Error) -> Error {
        Error::Trap {
            path: self.path.clone(),
            reason: format!("{e:#}"),
        }
    }

    fn wrong_world(&self, world: &'static str, e: wasmtime::Error) -> Error {
        Error::WrongWorld {
            path: self.path.clone(),
            world,
            reason: format!("{e:#}"),
        }
    }

    fn check_arity<T>(&self, expected: usize, got: Vec<T>) -> Result<Vec<T>> {
        if got.len() == expected {
            Ok(got)
        } else {
            Err(Error::Arity {
                path: self.path.clone(),
                expected,
                got: got.len(),
            })
        }
    }
}

/// The transactions-producer guest (`generator` world).
pub struct GeneratorGuest {
    store: GuestStore,
    bindings: generator::Generator,
}

impl GeneratorGuest {
    pub fn load(runtime: &Runtime, path: &Path) -> Result<Self> {
        let component = runtime.compile(path)?;
        let linker = runtime.linker()?;
        let mut store = GuestStore::new(runtime, path);
        let bindings = generator::Generator::instantiate(&mut store.store, &component, &linker)
            .map_err(|e| store.wrong_world("generator", e))?;
        Ok(Self { store, bindings })
    }

    pub fn generate(
        &mut self,
        seed: u64,
        first_index: u64,
        count: u32,
        start_millis: i64,
    ) -> Result<Vec<generator::sluice::pipeline::types::Transaction>> {
        let out = self
            .bindings
            .call_generate(self.store.arm(), seed, first_index, count, start_millis)
            .map_err(|e| self.store.trap(e))?;
        self.store.check_arity(count as usize, out)
    }
}

/// The backup guest (`raw-filter` world).
pub struct RawFilterGuest {
    store: GuestStore,
    bindings: raw_filter::RawFilter,
}

impl RawFilterGuest {
    pub fn load(runtime: &Runtime, path: &Path) -> Result<Self> {
        let component = runtime.compile(path)?;
        let linker = runtime.linker()?;
        let mut store = GuestStore::new(runtime, path);
        let bindings = raw_filter::RawFilter::instantiate(&mut store.store, &component, &linker)
            .map_err(|e| store.wrong_world("raw-filter", e))?;
        Ok(Self { store, bindings })
    }

    /// One verdict per record, in order.
    pub fn process(
        &mut self,
        batch: &[raw_filter::sluice::pipeline::types::RawRecord],
    ) -> Result<Vec<raw_filter::sluice::pipeline::types::Verdict>> {
        let out = self
            .bindings
            .call_process(self.store.arm(), batch)
            .map_err(|e| self.store.trap(e))?
            .map_err(|reason| Error::Guest {
                path: self.store.path.clone(),
                reason,
            })?;
        self.store.check_arity(batch.len(), out)
    }
}

/// A features component compiled and linked once, from which each worker
/// instantiates its own guest (the backfill runs one per partition worker).
pub struct FeaturesModule {
    pre: features::FeaturesPre<StoreData>,
    path: std::path::PathBuf,
}

impl FeaturesModule {
    pub fn compile(runtime: &Runtime, path: &Path) -> Result<Self> {
        let component = runtime.compile(path)?;
        let mut linker = runtime.linker()?;
        features::sluice::pipeline::keyed_state::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |d| d)
            .map_err(|e| Error::Engine(e.to_string()))?;
        let wrong_world = |e: wasmtime::Error| Error::WrongWorld {
            path: path.display().to_string(),
            world: "features",
            reason: format!("{e:#}"),
        };
        let pre = linker
            .instantiate_pre(&component)
            .and_then(features::FeaturesPre::new)
            .map_err(wrong_world)?;
        Ok(Self {
            pre,
            path: path.to_path_buf(),
        })
    }

    /// A guest in a store of its own.
    pub fn instantiate(&self, runtime: &Runtime) -> Result<FeaturesGuest> {
        let mut store = GuestStore::new(runtime, &self.path);
        let bindings = self
            .pre
            .instantiate(&mut store.store)
            .map_err(|e| store.wrong_world("features", e))?;
        Ok(FeaturesGuest { store, bindings })
    }
}

/// The features guest (`features` world), which reads and writes the host's
/// keyed state.
pub struct FeaturesGuest {
    store: GuestStore,
    bindings: features::Features,
}

impl FeaturesGuest {
    pub fn load(runtime: &Runtime, path: &Path) -> Result<Self> {
        FeaturesModule::compile(runtime, path)?.instantiate(runtime)
    }

    /// One outcome per transaction, in order. `state` is the keyed state of
    /// the batch's partition; it is lent to the guest for the call and holds
    /// the guest's updates afterwards. When the call fails in any way the
    /// state is rolled back to what it was before the call.
    pub fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        batch: &[features::sluice::pipeline::types::Transaction],
    ) -> Result<Vec<features::sluice::pipeline::types::FeatureOutcome>> {
        std::mem::swap(&mut self.store.store.data_mut().state, state);
        let result = self
            .bindings
            .call_process(self.store.arm(), batch)
            .map_err(|e| self.store.trap(e))
            .and_then(|r| {
                r.map_err(|reason| Error::Guest {
                    path: self.store.path.clone(),
                    reason,
                })
            })
            .and_then(|out| self.store.check_arity(batch.len(), out));
        let data = self.store.store.data_mut();
        match result {
            Ok(_) => data.commit_state(),
            Err(_) => data.roll_back_state(),
        }
        std::mem::swap(&mut data.state, state);
        result
    }
}
