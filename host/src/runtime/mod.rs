//! The wasmtime side: one engine per process, components compiled once,
//! one store per guest instance, a sandbox that grants no capabilities, and
//! limits per call and per store.

mod bindings;
mod guests;
mod isolate;
mod limits;
mod logic;
mod module_cache;
mod raw_batch;
mod sandbox;
mod store_data;
mod transaction_columns;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use bindings::features::sluice::pipeline::types::{
    Feature, FeatureColumns, FeatureOutcome, OutcomeKind, Transaction as WitTransaction,
};
pub use bindings::generator::sluice::pipeline::types::Transaction as GeneratedTransaction;
pub use bindings::raw_filter::sluice::pipeline::types::{RawRecord, Verdict};
pub use guests::{
    Compiled, FeaturesGuest, FeaturesModule, FeaturesWorld, GeneratorGuest, GeneratorWorld, Guest, RawFilterGuest,
    RawFilterWorld, World,
};
pub use isolate::Outcome;
pub use limits::Limits;
pub use logic::{FeatureLogic, RawFilter};
pub use module_cache::default_dir as default_module_cache_dir;
pub use raw_batch::{RawBatch, RawBatchPart, RawEntry, RawHeader, Span, TooLarge, span_at};
use store_data::StoreData;
pub use transaction_columns::{TransactionColumns, TransactionColumnsPart, outcomes_of};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("module {path}: file not found")]
    Missing { path: String },
    #[error("module {path} is not a WebAssembly component (build guests with --target wasm32-wasip2): {reason}")]
    NotAComponent { path: String, reason: String },
    #[error("module {path} does not compile: {reason}")]
    DoesNotCompile { path: String, reason: String },
    #[error("module {path} does not implement world `{world}` of wit/sluice.wit: {reason}")]
    WrongWorld {
        path: String,
        world: &'static str,
        reason: String,
    },
    #[error("guest {path} failed: {reason}")]
    Trap { path: String, reason: String },
    #[error("guest {path} returned an error for the batch: {reason}")]
    Guest { path: String, reason: String },
    #[error("guest {path} returned {got} outcomes for {expected} records")]
    Arity { path: String, expected: usize, got: usize },
    #[error("guest {path} returned inconsistent outcomes: {reason}")]
    Inconsistent { path: String, reason: String },
    #[error("wasmtime: {0}")]
    Engine(String),
    #[error(
        "not processed: the guest kept failing on a part of {records} records and isolating its failing records \
         took longer than {seconds} s (--guest-isolation-budget-ms), so the part goes to the dead-letter topic whole"
    )]
    IsolationBudget { records: usize, seconds: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A module file as it was compiled: which module produced an output.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModuleFile {
    pub path: PathBuf,
    /// sha256 of the bytes that were compiled, hex.
    pub sha256: String,
}

impl ModuleFile {
    /// Reads a module file; the hash is of the very bytes returned. Only a
    /// regular file of at most `MAX_MODULE_BYTES` is read (not a FIFO or a
    /// device someone named on the admin endpoint).
    pub fn read(path: &Path) -> Result<(Vec<u8>, Self)> {
        use sha2::{Digest, Sha256};
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|_| Error::Missing { path: shown.clone() })?;
        if !metadata.is_file() {
            return Err(Error::NotAComponent {
                path: shown,
                reason: "it is not a regular file".into(),
            });
        }
        if metadata.len() > MAX_MODULE_BYTES {
            return Err(Error::NotAComponent {
                path: shown,
                reason: format!(
                    "it has {} bytes, more than a module may ({MAX_MODULE_BYTES})",
                    metadata.len()
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(|_| Error::Missing { path: shown })?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        Ok((
            bytes,
            Self {
                path: path.to_path_buf(),
                sha256,
            },
        ))
    }
}

/// The largest module file sluice reads.
const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Interval of the epoch ticker; call deadlines are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the process's runtime is set up: the guests' limits, and where
/// compiled modules are kept (`None`: compile every module anew).
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    pub module_cache: Option<PathBuf>,
}

/// The engine shared by every guest of the process, with its epoch ticker.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    module_cache: Option<wasmtime::Cache>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(settings: &Settings) -> Result<Arc<Self>> {
        let limits = settings.limits;
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel.is_some());
        let module_cache = settings.module_cache.as_deref().and_then(|dir| {
            module_cache::open(dir)
                .inspect_err(|reason| {
                    tracing::warn!(%reason, "not keeping compiled modules (--module-cache-dir): every module compiles anew")
                })
                .ok()
        });
        config.cache(module_cache.clone());
        let engine = Engine::new(&config).map_err(|e| Error::Engine(e.to_string()))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Arc::new(Self {
            engine,
            limits,
            module_cache,
            ticker_stop,
        }))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    /// Reads and compiles a component (binary, or text for tests), with
    /// errors that say what the file is.
    fn compile(&self, path: &Path) -> Result<(Component, ModuleFile)> {
        let (bytes, file) = ModuleFile::read(path)?;
        let shown = path.display().to_string();
        // The preamble: magic, then version 1 layer 0 (a core module) or
        // layer 1 (a component).
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(Error::NotAComponent {
                path: shown,
                reason: "it is a core WebAssembly module".into(),
            });
        }
        let started = std::time::Instant::now();
        let hits = self.module_cache_hits();
        let component = Component::new(&self.engine, &bytes).map_err(|e| Error::DoesNotCompile {
            path: shown.clone(),
            reason: format!("{e:#}"),
        })?;
        tracing::debug!(
            module = %shown,
            from_cache = self.module_cache_hits() > hits,
            seconds = started.elapsed().as_secs_f64(),
            "module compiled"
        );
        Ok((component, file))
    }

    /// Modules this runtime took compiled from the cache, rather than
    /// compiling them.
    pub fn module_cache_hits(&self) -> usize {
        self.module_cache.as_ref().map_or(0, wasmtime::Cache::cache_hits)
    }

    /// A linker with the sandbox's WASI, for guests built against std.
    fn linker(&self) -> Result<Linker<StoreData>> {
        let mut linker = Linker::new(&self.engine);
        sandbox::add_wasi(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        Ok(linker)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
