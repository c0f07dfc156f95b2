//! Modules and guests of the three worlds of wit/sluice.wit. A `Compiled`
//! module is compiled and linked once (`InstancePre`) and can be probed;
//! each worker makes its own `Guest` from it, an instance in a store of its
//! own, called once per batch under the runtime's limits. A guest whose call
//! failed drops its instance and makes a fresh one for the next call; the
//! batch methods (`process`, `generate`) apply the failure policy
//! (`isolate`).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Func, HasSelf, InstancePre, Linker, TypedFunc};

use super::bindings::{features, features_columns, generator, raw_batch_filter, raw_filter};
use super::isolate::{Outcome, isolate, isolate_range};
use super::raw_batch::{RawBatch, RawBatchPart, RawEntry};
use super::store_data::StoreData;
use super::transaction_columns::{TransactionColumns, TransactionColumnsPart, outcomes_of};
use super::{Error, ModuleFile, Result, Runtime};
use super::{FeatureColumns, FeatureOutcome, RawRecord, Verdict, WitTransaction};

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

    /// Arms the deadline and the fuel for the next call, and forgets the
    /// output of earlier calls (a failure quotes its own).
    fn arm(&mut self) -> Result<&mut Store<StoreData>> {
        self.store.data().output.clear();
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

    /// What a call over `expected` records returned, as its outcomes: a
    /// trap, the guest's error and the wrong number of outcomes are failures.
    fn outcomes<T>(
        &self,
        returned: wasmtime::Result<std::result::Result<Vec<T>, String>>,
        expected: usize,
    ) -> Result<Vec<T>> {
        match returned {
            Ok(Ok(got)) if got.len() == expected => Ok(got),
            Ok(Ok(got)) => Err(Error::Arity {
                path: self.path.clone(),
                expected,
                got: got.len(),
            }),
            Ok(Err(reason)) => Err(Error::Guest {
                path: self.path.clone(),
                reason,
            }),
            Err(e) => Err(self.trap(e)),
        }
    }
}

impl GuestStore {
    /// What a `features-columns` call over `expected` records returned: a
    /// trap, the guest's error and the wrong number of kinds are failures.
    fn columns(
        &self,
        returned: wasmtime::Result<std::result::Result<FeatureColumns, String>>,
        expected: usize,
    ) -> Result<FeatureColumns> {
        match returned {
            Ok(Ok(columns)) if columns.kinds.len() == expected => Ok(columns),
            Ok(Ok(columns)) => Err(Error::Arity {
                path: self.path.clone(),
                expected,
                got: columns.kinds.len(),
            }),
            Ok(Err(reason)) => Err(Error::Guest {
                path: self.path.clone(),
                reason,
            }),
            Err(e) => Err(self.trap(e)),
        }
    }

    /// The outcome of each record of `user_ids` that `columns` (as many
    /// kinds as records) holds.
    fn outcomes_of_columns(&self, columns: FeatureColumns, user_ids: &[i32]) -> Result<Vec<FeatureOutcome>> {
        outcomes_of(columns, user_ids).map_err(|reason| Error::Inconsistent {
            path: self.path.clone(),
            reason,
        })
    }
}

/// A guest call, run where it may block (`crate::blocking`: wasmtime-wasi's
/// sync host functions block on the ambient runtime), timed for the metrics.
fn timed_call<R>(code: impl FnOnce() -> R) -> R {
    let started = std::time::Instant::now();
    let result = crate::blocking::run(code);
    metrics::histogram!(crate::ops::metrics::GUEST_CALL_SECONDS).record(started.elapsed().as_secs_f64());
    result
}

/// What sets one world apart: how a component is linked and typed for it,
/// how it is instantiated, and the probe a candidate must pass (one call
/// over a small fixed input in a scratch store: a trap, an error or the
/// wrong number of outcomes refuses it).
pub trait World: Send + Sync + Sized + 'static {
    /// The world's name in wit/sluice.wit.
    const NAME: &'static str;
    type Pre: Send + Sync + 'static;
    type Bindings: Send + 'static;
    /// Host imports the world adds to WASI.
    fn link(_linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
        Ok(())
    }
    fn typed(pre: InstancePre<StoreData>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<StoreData>) -> wasmtime::Result<Self::Bindings>;
    fn probe(guest: &mut Guest<Self>) -> Result<()>;
}

/// A component compiled and linked once for world `W`.
pub struct Compiled<W: World> {
    pre: W::Pre,
    runtime: Arc<Runtime>,
    file: ModuleFile,
}

impl<W: World> Compiled<W> {
    pub fn compile(runtime: &Arc<Runtime>, path: &Path) -> Result<Arc<Self>> {
        let mut linker = runtime.linker()?;
        W::link(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        let (component, file) = runtime.compile(path)?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(W::typed)
            .map_err(|e| Error::WrongWorld {
                path: file.path.display().to_string(),
                world: W::NAME,
                reason: format!("{e:#}"),
            })?;
        Ok(Arc::new(Self {
            pre,
            runtime: runtime.clone(),
            file,
        }))
    }

    /// The file it was compiled from, and the sha256 of those bytes.
    pub fn file(&self) -> &ModuleFile {
        &self.file
    }

    /// A guest in a store of its own, instantiated now.
    pub fn guest(module: &Arc<Self>) -> Result<Guest<W>> {
        let mut guest = Guest {
            module: module.clone(),
            instance: None,
        };
        guest.instance()?;
        Ok(guest)
    }

    /// Refuses a module that cannot process the world's probe input.
    pub fn probe(module: &Arc<Self>) -> Result<()> {
        W::probe(&mut Self::guest(module)?)
    }
}

/// An instance of a compiled module, remade after a failed call.
pub struct Guest<W: World> {
    module: Arc<Compiled<W>>,
    instance: Option<(GuestStore, W::Bindings)>,
}

impl<W: World> Guest<W> {
    /// The live instance, instantiated first if there is none (at the
    /// start, or after a failed call dropped the last one).
    fn instance(&mut self) -> Result<&mut (GuestStore, W::Bindings)> {
        if self.instance.is_none() {
            let module = &self.module;
            let mut store = GuestStore::new(&module.runtime, &module.file)?;
            let bindings =
                crate::blocking::run(|| W::instantiate(&module.pre, &mut store.store)).map_err(|e| store.trap(e))?;
            self.instance = Some((store, bindings));
        }
        Ok(self.instance.as_mut().expect("instantiated above"))
    }

    /// Drops the instance after a failed call: its memory may be anything.
    fn settle<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.instance = None;
        }
        result
    }
}

/// The transactions-producer's world.
pub struct GeneratorWorld;
pub type GeneratorGuest = Guest<GeneratorWorld>;

impl World for GeneratorWorld {
    const NAME: &'static str = "generator";
    type Pre = generator::GeneratorPre<StoreData>;
    type Bindings = generator::Generator;

    fn typed(pre: InstancePre<StoreData>) -> wasmtime::Result<Self::Pre> {
        generator::GeneratorPre::new(pre)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<StoreData>) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn probe(guest: &mut GeneratorGuest) -> Result<()> {
        guest.call(0, 0, 1, 0).map(drop)
    }
}

impl Guest<GeneratorWorld> {
    fn call(
        &mut self,
        seed: u64,
        first_index: u64,
        count: u32,
        start_millis: i64,
    ) -> Result<Vec<generator::sluice::pipeline::types::Transaction>> {
        let (store, bindings) = self.instance()?;
        let armed = store.arm()?;
        let returned = timed_call(|| bindings.call_generate(armed, seed, first_index, count, start_millis));
        let result = store.outcomes(returned.map(Ok), count as usize);
        self.settle(result)
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
    ) -> Vec<Outcome<generator::sluice::pipeline::types::Transaction>> {
        let indexes: Vec<u64> = (first_index..first_index + u64::from(count)).collect();
        isolate(
            &indexes,
            "generator",
            self.module.runtime.limits.isolation_budget,
            |part| {
                let first = part.first().copied().unwrap_or(first_index);
                self.call(seed, first, part.len() as u32, start_millis)
            },
        )
    }
}

/// The `process` export of a component whose world the host calls through
/// a typed function of its own, one that lends the host's buffers.
fn process_export(pre: &InstancePre<StoreData>) -> wasmtime::Result<ComponentExportIndex> {
    pre.component()
        .get_export_index(None, "process")
        .ok_or_else(|| wasmtime::format_err!("no export `process`"))
}

/// A new instance's `process` export (found by `process_export`).
fn instantiate_process(
    pre: &InstancePre<StoreData>,
    process: &ComponentExportIndex,
    store: &mut Store<StoreData>,
) -> wasmtime::Result<Func> {
    let instance = pre.instantiate(&mut *store)?;
    instance
        .get_func(&mut *store, process)
        .ok_or_else(|| wasmtime::format_err!("no export `process`"))
}

/// The backup job's world: `raw-batch-filter`, or, for modules built
/// before it, `raw-filter`.
pub struct RawFilterWorld;
pub type RawFilterGuest = Guest<RawFilterWorld>;

/// A module linked for whichever of the backup job's worlds it implements.
pub enum RawFilterPre {
    Batch {
        pre: InstancePre<StoreData>,
        process: ComponentExportIndex,
    },
    Records(raw_filter::RawFilterPre<StoreData>),
}

/// An instance of a backup module: its `process` export.
pub enum RawFilterBindings {
    /// Called through `RawBatchPart`, which lends the batch's buffers.
    Batch(Func),
    Records(raw_filter::RawFilter),
}

/// What a `raw-batch-filter` guest's `process` takes and returns.
type BatchProcess<'a> = TypedFunc<(RawBatchPart<'a>,), (std::result::Result<Vec<Verdict>, String>,)>;

impl World for RawFilterWorld {
    const NAME: &'static str = "raw-batch-filter";
    type Pre = RawFilterPre;
    type Bindings = RawFilterBindings;

    fn typed(pre: InstancePre<StoreData>) -> wasmtime::Result<Self::Pre> {
        let batch_error = match raw_batch_filter::RawBatchFilterPre::new(pre.clone()) {
            Ok(_) => {
                let process = process_export(&pre)?;
                return Ok(RawFilterPre::Batch { pre, process });
            }
            Err(e) => e,
        };
        raw_filter::RawFilterPre::new(pre)
            .map(RawFilterPre::Records)
            .map_err(|records_error| {
                wasmtime::format_err!("{batch_error:#}; nor world `raw-filter`: {records_error:#}")
            })
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<StoreData>) -> wasmtime::Result<Self::Bindings> {
        match pre {
            RawFilterPre::Batch { pre, process } => {
                let process = instantiate_process(pre, process, store)?;
                // The same check as `typed`, now against this instance.
                let _: BatchProcess<'static> = process.typed(&*store)?;
                Ok(RawFilterBindings::Batch(process))
            }
            RawFilterPre::Records(pre) => pre.instantiate(store).map(RawFilterBindings::Records),
        }
    }

    fn probe(guest: &mut RawFilterGuest) -> Result<()> {
        let mut batch = RawBatch::new(0);
        batch
            .push(0, Some(0), Some(b"1"), Some(b""), [])
            .expect("a one-byte batch fits");
        guest.call(&batch, batch.entries()).map(drop)
    }
}

impl Guest<RawFilterWorld> {
    fn call(&mut self, batch: &RawBatch, entries: &[RawEntry]) -> Result<Vec<Verdict>> {
        let (store, bindings) = self.instance()?;
        let armed = store.arm()?;
        let returned = match bindings {
            RawFilterBindings::Batch(process) => timed_call(|| {
                let process: BatchProcess<'_> = process.typed(&*armed)?;
                process.call(&mut *armed, (batch.part(entries),)).map(|(r,)| r)
            }),
            RawFilterBindings::Records(bindings) => {
                let records = records_of(batch, entries);
                timed_call(|| bindings.call_process(armed, &records))
            }
        };
        let result = store.outcomes(returned, entries.len());
        self.settle(result)
    }

    /// One verdict per record, in order, under the failure policy.
    pub fn process(&mut self, batch: &RawBatch) -> Vec<Outcome<Verdict>> {
        isolate(
            batch.entries(),
            "raw-filter",
            self.module.runtime.limits.isolation_budget,
            |part| self.call(batch, part),
        )
    }
}

/// `entries` of `batch` as a `raw-filter` module takes them: each key,
/// value and header copied into lists of its own.
fn records_of(batch: &RawBatch, entries: &[RawEntry]) -> Vec<RawRecord> {
    entries
        .iter()
        .map(|entry| RawRecord {
            key: batch.key(entry).map(<[u8]>::to_vec),
            value: batch.value(entry).map(<[u8]>::to_vec),
            headers: batch.header_pairs(entry.offset),
            timestamp_millis: entry.timestamp_millis,
            partition: batch.partition(),
            offset: entry.offset,
        })
        .collect()
}

/// The features job's worlds, which read and write the host's keyed state:
/// `features-columns`, or, before it, `features`.
pub struct FeaturesWorld;
pub type FeaturesModule = Compiled<FeaturesWorld>;
pub type FeaturesGuest = Guest<FeaturesWorld>;

/// A module linked for whichever of the features job's worlds it implements.
pub enum FeaturesPre {
    Columns {
        pre: InstancePre<StoreData>,
        process: ComponentExportIndex,
    },
    Records(features::FeaturesPre<StoreData>),
}

/// An instance of a features module: its `process` export.
pub enum FeaturesBindings {
    /// Called through `TransactionColumnsPart`, which lends the columns.
    Columns(Func),
    Records(features::Features),
}

/// What a `features-columns` guest's `process` takes and returns.
type ColumnsProcess<'a> = TypedFunc<(TransactionColumnsPart<'a>,), (std::result::Result<FeatureColumns, String>,)>;

impl World for FeaturesWorld {
    const NAME: &'static str = "features-columns";
    type Pre = FeaturesPre;
    type Bindings = FeaturesBindings;

    fn link(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
        // Both worlds import the same interface.
        features::sluice::pipeline::keyed_state::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |d| d)
    }

    fn typed(pre: InstancePre<StoreData>) -> wasmtime::Result<Self::Pre> {
        let columns_error = match features_columns::FeaturesColumnsPre::new(pre.clone()) {
            Ok(_) => {
                let process = process_export(&pre)?;
                return Ok(FeaturesPre::Columns { pre, process });
            }
            Err(e) => e,
        };
        features::FeaturesPre::new(pre)
            .map(FeaturesPre::Records)
            .map_err(|records_error| {
                wasmtime::format_err!("{columns_error:#}; nor world `features`: {records_error:#}")
            })
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<StoreData>) -> wasmtime::Result<Self::Bindings> {
        match pre {
            FeaturesPre::Columns { pre, process } => {
                let process = instantiate_process(pre, process, store)?;
                // The same check as `typed`, now against this instance.
                let _: ColumnsProcess<'static> = process.typed(&*store)?;
                Ok(FeaturesBindings::Columns(process))
            }
            FeaturesPre::Records(pre) => pre.instantiate(store).map(FeaturesBindings::Records),
        }
    }

    fn probe(guest: &mut FeaturesGuest) -> Result<()> {
        let mut batch = TransactionColumns::new();
        batch.push(1, 0, 1.0, "EUR", 2).expect("one code fits");
        guest
            .call(&mut HashMap::new(), &mut HashSet::new(), &batch, 0..1)
            .map(drop)
    }
}

impl Guest<FeaturesWorld> {
    /// One call over the transactions at `range` of `batch`. `state` is the
    /// keyed state of the batch's partition; it is lent to the guest for
    /// the call and holds the guest's updates afterwards (the keys set join
    /// `changed`), or, when the call fails in any way, what it held before.
    fn call(
        &mut self,
        state: &mut HashMap<i64, i64>,
        changed: &mut HashSet<i64>,
        batch: &TransactionColumns,
        range: Range<usize>,
    ) -> Result<Vec<FeatureOutcome>> {
        let (store, bindings) = self.instance()?;
        store.store.data_mut().lend_state(state);
        let result = match store.arm() {
            Ok(armed) => match bindings {
                FeaturesBindings::Columns(process) => {
                    let returned = timed_call(|| {
                        let process: ColumnsProcess<'_> = process.typed(&*armed)?;
                        process.call(&mut *armed, (batch.part(range.clone()),)).map(|(r,)| r)
                    });
                    store
                        .columns(returned, range.len())
                        .and_then(|columns| store.outcomes_of_columns(columns, &batch.user_ids()[range]))
                }
                FeaturesBindings::Records(bindings) => {
                    let records: Vec<WitTransaction> = range.clone().map(|i| batch.transaction(i)).collect();
                    let returned = timed_call(|| bindings.call_process(armed, &records));
                    store.outcomes(returned, records.len())
                }
            },
            Err(e) => Err(e),
        };
        store.store.data_mut().take_back_state(state, changed, result.is_ok());
        self.settle(result)
    }

    /// One outcome per transaction, in order, under the failure policy: a
    /// transaction the guest fails on alone comes back as a failure and
    /// leaves the state as if it had not been there.
    pub fn process(
        &mut self,
        state: &mut HashMap<i64, i64>,
        changed: &mut HashSet<i64>,
        batch: &TransactionColumns,
    ) -> Vec<Outcome<FeatureOutcome>> {
        isolate_range(
            batch.len(),
            "features",
            self.module.runtime.limits.isolation_budget,
            |range| self.call(state, changed, batch, range),
        )
    }
}
