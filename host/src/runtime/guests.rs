//! One module type and one guest type per world. A module is compiled and
//! linked once (`InstancePre`) and probed; each worker makes its own guest,
//! an instance in a store of its own, called once per batch under the
//! runtime's limits. A guest whose call failed drops its instance and makes
//! a fresh one for the next call; `process` applies the failure policy
//! (`isolate`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::{features, generator, raw_filter};
use super::isolate::isolate;
use super::store_data::StoreData;
use super::{Error, ModuleFile, Result, Runtime};

/// A store under the runtime's limits, armed with a fresh deadline (and
/// fuel) before each call.
struct GuestStore {
    store: Store<StoreData>,
    runtime: Arc<Runtime>,
    path: String,
}

impl GuestStore {
    fn new(runtime: &Arc<Runtime>, file: &ModuleFile) -> Result<Self> {
        let mut store = Store::new(&runtime.engine, StoreData::new(&runtime.limits));
        store.limiter(|data| &mut data.budget);
        let mut guest = Self {
            store,
            runtime: runtime.clone(),
            path: file.path.display().to_string(),
        };
        // Instantiation runs guest code too (initialisers): bound it as a call.
        guest.arm()?;
        Ok(guest)
    }

    /// Arms the deadline and the fuel for the next call.
    fn arm(&mut self) -> Result<&mut Store<StoreData>> {
        self.store.set_epoch_deadline(self.runtime.deadline_ticks());
        if let Some(fuel) = self.runtime.limits.fuel {
            self.store.set_fuel(fuel).map_err(|e| Error::Engine(e.to_string()))?;
        }
        Ok(&mut self.store)
    }

    /// A failed call, with the last line the guest wrote (a panic message).
    fn trap(&self, e: wasmtime::Error) -> Error {
        let mut reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => format!(
                "the call passed its deadline of {} ms (--guest-timeout-ms)",
                self.runtime.limits.call_timeout.as_millis()
            ),
            Some(wasmtime::Trap::OutOfFuel) => "the call ran out of fuel (--guest-fuel)".to_string(),
            // The causes without wasmtime's backtrace: one line for a log
            // and a dead letter's header.
            _ => e
                .chain()
                .map(|cause| cause.to_string())
                .filter(|cause| !cause.starts_with("error while executing at wasm backtrace"))
                .collect::<Vec<_>>()
                .join(": "),
        };
        if let Some(output) = self.store.data().output.take_explanation() {
            reason = format!("{reason}; the guest wrote: {output}");
        }
        Error::Trap {
            path: self.path.clone(),
            reason,
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

/// Runs guest code (a call, an instantiation) where wasmtime-wasi's sync
/// host functions can block: they drive futures on the ambient tokio runtime
/// with `block_on`, which a runtime worker thread must leave first (as
/// `block_in_place` does) or it panics. Blocking threads and threads outside
/// a runtime run the code as is.
fn blocking<R>(code: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(code),
        _ => code(),
    }
}

/// The live instance in `slot`, instantiated first if the slot is empty
/// (at the start, or after a failed call dropped the last one).
fn live<'a, B>(
    slot: &'a mut Option<(GuestStore, B)>,
    runtime: &Arc<Runtime>,
    file: &ModuleFile,
    instantiate: impl FnOnce(&mut Store<StoreData>) -> wasmtime::Result<B>,
) -> Result<&'a mut (GuestStore, B)> {
    if slot.is_none() {
        let mut store = GuestStore::new(runtime, file)?;
        let bindings = blocking(|| instantiate(&mut store.store)).map_err(|e| store.trap(e))?;
        *slot = Some((store, bindings));
    }
    Ok(slot.as_mut().expect("filled above"))
}

fn wrong_world(file: &ModuleFile, world: &'static str, e: wasmtime::Error) -> Error {
    Error::WrongWorld {
        path: file.path.display().to_string(),
        world,
        reason: format!("{e:#}"),
    }
}

/// Compiles `path` and links it against `linker` for `world`.
fn prepare<P>(
    runtime: &Arc<Runtime>,
    path: &Path,
    world: &'static str,
    linker: &Linker<StoreData>,
    typed: impl FnOnce(wasmtime::component::InstancePre<StoreData>) -> wasmtime::Result<P>,
) -> Result<(P, ModuleFile)> {
    let (component, file): (Component, ModuleFile) = runtime.compile(path)?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(typed)
        .map_err(|e| wrong_world(&file, world, e))?;
    Ok((pre, file))
}

/// What every world's module offers the hot swap: compile, probe, and make
/// a guest off the hot path.
pub trait Module: Send + Sync + Sized + 'static {
    /// The world of wit/sluice.wit it implements.
    const WORLD: &'static str;
    type Guest: Send + 'static;
    fn compile(runtime: &Arc<Runtime>, path: &Path) -> Result<Arc<Self>>;
    fn file(&self) -> &ModuleFile;
    /// A guest in a store of its own, instantiated now.
    fn guest(module: &Arc<Self>) -> Result<Self::Guest>;
    /// One call over a small fixed input in a scratch store: a module that
    /// traps, errs or answers with the wrong number of outcomes is refused.
    fn probe(module: &Arc<Self>) -> Result<()>;
}

/// The transactions-producer's component (`generator` world).
pub struct GeneratorModule {
    pre: generator::GeneratorPre<StoreData>,
    runtime: Arc<Runtime>,
    file: ModuleFile,
}

impl Module for GeneratorModule {
    const WORLD: &'static str = "generator";
    type Guest = GeneratorGuest;

    fn compile(runtime: &Arc<Runtime>, path: &Path) -> Result<Arc<Self>> {
        let linker = runtime.linker()?;
        let (pre, file) = prepare(runtime, path, Self::WORLD, &linker, generator::GeneratorPre::new)?;
        Ok(Arc::new(Self {
            pre,
            runtime: runtime.clone(),
            file,
        }))
    }

    fn file(&self) -> &ModuleFile {
        &self.file
    }

    fn guest(module: &Arc<Self>) -> Result<GeneratorGuest> {
        let mut guest = GeneratorGuest {
            module: module.clone(),
            instance: None,
        };
        guest.instance()?;
        Ok(guest)
    }

    fn probe(module: &Arc<Self>) -> Result<()> {
        Self::guest(module)?.call(0, 0, 1, 0).map(drop)
    }
}

/// The transactions-producer guest.
pub struct GeneratorGuest {
    module: Arc<GeneratorModule>,
    instance: Option<(GuestStore, generator::Generator)>,
}

impl GeneratorGuest {
    pub fn module(&self) -> &Arc<GeneratorModule> {
        &self.module
    }

    fn instance(&mut self) -> Result<&mut (GuestStore, generator::Generator)> {
        let module = &self.module;
        live(&mut self.instance, &module.runtime, &module.file, |store| {
            module.pre.instantiate(store)
        })
    }

    fn call(
        &mut self,
        seed: u64,
        first_index: u64,
        count: u32,
        start_millis: i64,
    ) -> Result<Vec<generator::sluice::pipeline::types::Transaction>> {
        let (store, bindings) = self.instance()?;
        let armed = store.arm()?;
        let result = match blocking(|| bindings.call_generate(armed, seed, first_index, count, start_millis)) {
            Ok(out) => store.check_arity(count as usize, out),
            Err(e) => Err(store.trap(e)),
        };
        if result.is_err() {
            self.instance = None;
        }
        result
    }

    /// Transactions `first_index..first_index + count` of the seeded stream,
    /// under the failure policy: the indexes the guest fails on alone come
    /// back as failures.
    pub fn generate(
        &mut self,
        seed: u64,
        first_index: u64,
        count: u32,
        start_millis: i64,
    ) -> Vec<Result<generator::sluice::pipeline::types::Transaction>> {
        let indexes: Vec<u64> = (first_index..first_index + u64::from(count)).collect();
        isolate(&indexes, "generator", |part| {
            self.call(
                seed,
                part.first().copied().unwrap_or(first_index),
                part.len() as u32,
                start_millis,
            )
        })
    }
}

/// The backup job's component (`raw-filter` world).
pub struct RawFilterModule {
    pre: raw_filter::RawFilterPre<StoreData>,
    runtime: Arc<Runtime>,
    file: ModuleFile,
}

impl Module for RawFilterModule {
    const WORLD: &'static str = "raw-filter";
    type Guest = RawFilterGuest;

    fn compile(runtime: &Arc<Runtime>, path: &Path) -> Result<Arc<Self>> {
        let linker = runtime.linker()?;
        let (pre, file) = prepare(runtime, path, Self::WORLD, &linker, raw_filter::RawFilterPre::new)?;
        Ok(Arc::new(Self {
            pre,
            runtime: runtime.clone(),
            file,
        }))
    }

    fn file(&self) -> &ModuleFile {
        &self.file
    }

    fn guest(module: &Arc<Self>) -> Result<RawFilterGuest> {
        let mut guest = RawFilterGuest {
            module: module.clone(),
            instance: None,
        };
        guest.instance()?;
        Ok(guest)
    }

    fn probe(module: &Arc<Self>) -> Result<()> {
        let record = raw_filter::sluice::pipeline::types::RawRecord {
            key: Some(b"1".to_vec()),
            value: Some(Vec::new()),
            headers: Vec::new(),
            timestamp_millis: Some(0),
            partition: 0,
            offset: 0,
        };
        Self::guest(module)?.call(&[record]).map(drop)
    }
}

/// The backup guest.
pub struct RawFilterGuest {
    module: Arc<RawFilterModule>,
    instance: Option<(GuestStore, raw_filter::RawFilter)>,
}

impl RawFilterGuest {
    pub fn module(&self) -> &Arc<RawFilterModule> {
        &self.module
    }

    fn instance(&mut self) -> Result<&mut (GuestStore, raw_filter::RawFilter)> {
        let module = &self.module;
        live(&mut self.instance, &module.runtime, &module.file, |store| {
            module.pre.instantiate(store)
        })
    }

    fn call(
        &mut self,
        batch: &[raw_filter::sluice::pipeline::types::RawRecord],
    ) -> Result<Vec<raw_filter::sluice::pipeline::types::Verdict>> {
        let (store, bindings) = self.instance()?;
        let armed = store.arm()?;
        let result = match blocking(|| bindings.call_process(armed, batch)) {
            Ok(Ok(out)) => store.check_arity(batch.len(), out),
            Ok(Err(reason)) => Err(Error::Guest {
                path: store.path.clone(),
                reason,
            }),
            Err(e) => Err(store.trap(e)),
        };
        if result.is_err() {
            self.instance = None;
        }
        result
    }

    /// One verdict per record, in order, under the failure policy.
    pub fn process(
        &mut self,
        batch: &[raw_filter::sluice::pipeline::types::RawRecord],
    ) -> Vec<Result<raw_filter::sluice::pipeline::types::Verdict>> {
        isolate(batch, "raw-filter", |part| self.call(part))
    }
}

/// The features component (`features` world).
pub struct FeaturesModule {
    pre: features::FeaturesPre<StoreData>,
    runtime: Arc<Runtime>,
    file: ModuleFile,
}

impl Module for FeaturesModule {
    const WORLD: &'static str = "features";
    type Guest = FeaturesGuest;

    fn compile(runtime: &Arc<Runtime>, path: &Path) -> Result<Arc<Self>> {
        let mut linker = runtime.linker()?;
        features::sluice::pipeline::keyed_state::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |d| d)
            .map_err(|e| Error::Engine(e.to_string()))?;
        let (pre, file) = prepare(runtime, path, Self::WORLD, &linker, features::FeaturesPre::new)?;
        Ok(Arc::new(Self {
            pre,
            runtime: runtime.clone(),
            file,
        }))
    }

    fn file(&self) -> &ModuleFile {
        &self.file
    }

    fn guest(module: &Arc<Self>) -> Result<FeaturesGuest> {
        let mut guest = FeaturesGuest {
            module: module.clone(),
            instance: None,
        };
        guest.instance()?;
        Ok(guest)
    }

    fn probe(module: &Arc<Self>) -> Result<()> {
        let transaction = features::sluice::pipeline::types::Transaction {
            user_id: 1,
            transaction_timestamp_millis: 0,
            amount: 1.0,
            currency: "EUR".into(),
            counterpart_id: 2,
        };
        Self::guest(module)?.call(&mut HashMap::new(), &[transaction]).map(drop)
    }
}

/// The features guest, which reads and writes the host's keyed state.
pub struct FeaturesGuest {
    module: Arc<FeaturesModule>,
    instance: Option<(GuestStore, features::Features)>,
}

impl FeaturesGuest {
    pub fn module(&self) -> &Arc<FeaturesModule> {
        &self.module
    }

    fn instance(&mut self) -> Result<&mut (GuestStore, features::Features)> {
        let module = &self.module;
        live(&mut self.instance, &module.runtime, &module.file, |store| {
            module.pre.instantiate(store)
        })
    }

    /// One call. `state` is the keyed state of the batch's partition; it is
    /// lent to the guest for the call and holds the guest's updates
    /// afterwards, or, when the call fails in any way, what it held before.
    fn call(
        &mut self,
        state: &mut HashMap<i64, i64>,
        batch: &[features::sluice::pipeline::types::Transaction],
    ) -> Result<Vec<features::sluice::pipeline::types::FeatureOutcome>> {
        let (store, bindings) = self.instance()?;
        std::mem::swap(&mut store.store.data_mut().state, state);
        let result = match store.arm() {
            Err(e) => Err(e),
            Ok(armed) => match blocking(|| bindings.call_process(armed, batch)) {
                Ok(Ok(out)) => store.check_arity(batch.len(), out),
                Ok(Err(reason)) => Err(Error::Guest {
                    path: store.path.clone(),
                    reason,
                }),
                Err(e) => Err(store.trap(e)),
            },
        };
        let data = store.store.data_mut();
        match result {
            Ok(_) => data.commit_state(),
            Err(_) => data.roll_back_state(),
        }
        std::mem::swap(&mut data.state, state);
        if result.is_err() {
            self.instance = None;
        }
        result
    }

    /// One outcome per transaction, in order, under the failure policy: a
    /// transaction the guest fails on alone comes back as a failure and
    /// leaves the state as if it had not been there.
    pub fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        batch: &[features::sluice::pipeline::types::Transaction],
    ) -> Vec<Result<features::sluice::pipeline::types::FeatureOutcome>> {
        isolate(batch, "features", |part| self.call(state, part))
    }
}
