//! The wasmtime side: one engine per process, components compiled once,
//! one store per guest instance, epoch deadlines and memory limits per call.

mod bindings;
mod guests;
mod store_data;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use bindings::features::sluice::pipeline::types::{Feature, FeatureOutcome, Transaction as WitTransaction};
pub use bindings::generator::sluice::pipeline::types::Transaction as GeneratedTransaction;
pub use bindings::raw_filter::sluice::pipeline::types::{RawRecord, Verdict};
pub use guests::{FeaturesGuest, FeaturesModule, GeneratorGuest, RawFilterGuest};
use store_data::StoreData;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("module {path}: file not found")]
    Missing { path: String },
    #[error("module {path} is not a WebAssembly component (build guests with --target wasm32-wasip2): {reason}")]
    NotAComponent { path: String, reason: String },
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
    #[error("wasmtime: {0}")]
    Engine(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The sha256 of a module file, hex: which module produced an output.
pub fn module_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|_| Error::Missing {
        path: path.display().to_string(),
    })?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Per-call and per-store limits of a guest.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one batch call; a guest that loops is stopped.
    pub call_timeout: Duration,
    /// Linear memory cap per store.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 512 << 20,
        }
    }
}

/// Interval of the epoch ticker; call deadlines are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine shared by every guest of the process, with its epoch ticker.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
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
        Ok(Self {
            engine,
            limits,
            ticker_stop,
        })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    /// Reads and compiles a component, with errors that name the file.
    fn compile(&self, path: &Path) -> Result<Component> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Missing { path: shown });
        }
        Component::from_file(&self.engine, path).map_err(|e| Error::NotAComponent {
            path: shown,
            reason: format!("{e:#}"),
        })
    }

    /// A linker with WASI (no capabilities granted) for guests built against std.
    fn linker(&self) -> Result<Linker<StoreData>> {
        let mut linker = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        Ok(linker)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
