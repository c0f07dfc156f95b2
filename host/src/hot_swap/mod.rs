//! Hot swap: a job's module is replaced while the job runs, when the module
//! file changes, on SIGHUP, or on `POST /module` to the admin endpoint.
//!
//! A candidate is compiled, linked, probed and instantiated off the hot path
//! (`stager`); a candidate that fails any of that is refused, logged, and
//! the running module stays. An accepted one waits as `staged` until the
//! job's next batch boundary, where `swap_staged` exchanges the guests: the
//! batch in flight finishes on the old instance, keyed state stays in the
//! host, and the consumer group never notices. The time the batch loop
//! spends on the exchange is the swap's pause, logged and reported; the log
//! names the offset at which the new module took over on each partition.

mod admin;
mod modules_dir;
mod stager;
mod triggers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{self, Compiled, Guest, ModuleFile, Runtime, World};
use crate::secret::Secret;

use modules_dir::ModulesDir;

/// Where swap requests come from, besides the job's own start.
#[derive(Debug, Clone, Default)]
pub struct SwapOptions {
    /// Swap when the module file changes.
    pub watch: bool,
    /// Serve `GET`/`POST /module` here (loopback only, without a token).
    pub admin_listen: Option<SocketAddr>,
    /// Requests must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
    /// Where `POST /module` may load from; the job's module's folder when
    /// `None`.
    pub modules_dir: Option<PathBuf>,
    /// `POST /module` takes WebAssembly text too.
    pub accept_text: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Module(#[from] runtime::Error),
    #[error(
        "the admin endpoint has no token, so it listens on loopback only, not on {0}; set SLUICE_ADMIN_TOKEN \
         (or SLUICE_ADMIN_TOKEN_FILE) to serve it elsewhere"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("modules directory {path}: {source}")]
    ModulesDir { path: String, source: std::io::Error },
    #[error("admin endpoint {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: std::io::Error },
    #[error("watching {path} for changes: {reason}")]
    Watch { path: String, reason: String },
}

/// One swap, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SwapRecord {
    pub from_sha256: String,
    pub to_sha256: String,
    pub path: PathBuf,
    /// What asked for it: `file change`, `SIGHUP` or `admin`.
    pub trigger: &'static str,
    /// How long the batch loop waited for the exchange.
    pub pause_ms: f64,
    /// Per partition, the first offset the new module processed (for the
    /// producer, key 0 holds the first record index it generated).
    pub took_over: BTreeMap<i32, i64>,
}

/// A refused candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub path: PathBuf,
    pub trigger: &'static str,
    pub reason: String,
}

/// What `GET /module` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub world: &'static str,
    pub active: ModuleFile,
    /// Per partition, the first offset the active module processed (for
    /// the producer, key 0 holds the first record index).
    pub active_took_over: BTreeMap<i32, i64>,
    pub staged: Option<ModuleFile>,
    pub swaps: Vec<SwapRecord>,
    /// The latest refusals, oldest first (at most `KEPT_REFUSALS`).
    pub refusals: Vec<Refusal>,
}

const KEPT_REFUSALS: usize = 20;

/// A module accepted and instantiated, waiting for a batch boundary.
struct Staged<W: World> {
    module: Arc<Compiled<W>>,
    guest: Guest<W>,
    trigger: &'static str,
}

/// What the job, the stager and the admin endpoint share.
struct Shared<W: World> {
    inner: Mutex<Inner<W>>,
}

struct Inner<W: World> {
    status: Status,
    staged: Option<Staged<W>>,
}

impl<W: World> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, Inner<W>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request to swap to the module at `path` (the active module's path when
/// `None`); `reply` hears whether it was staged.
struct Request {
    path: Option<PathBuf>,
    trigger: &'static str,
    reply: Option<oneshot::Sender<Answer>>,
}

/// What became of a request.
#[derive(Debug)]
enum Answer {
    Staged(ModuleFile),
    Unchanged(ModuleFile),
    Refused(String),
}

/// The job's side of the hot swap: the module in use and the swaps so far.
pub struct HotSwap<W: World> {
    shared: Arc<Shared<W>>,
    current: Arc<Compiled<W>>,
    /// Partitions the current module has processed.
    taken_over: std::collections::HashSet<i32>,
    /// Keeps the file watcher alive.
    _watcher: Option<triggers::FileWatcher>,
}

impl<W: World> HotSwap<W> {
    /// Compiles, probes and instantiates the job's first module (a refusal
    /// here stops the job: there is no older module to keep), then listens
    /// for swap requests.
    pub async fn start(runtime: Arc<Runtime>, path: &Path, options: &SwapOptions) -> Result<(Self, Guest<W>), Error> {
        if let Some(addr) = options.admin_listen
            && !addr.ip().is_loopback()
            && options.admin_token.is_none()
        {
            return Err(Error::AdminNotLoopback(addr));
        }
        let (module, guest) = stager::accept::<W>(runtime.clone(), path.to_path_buf()).await?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                status: Status {
                    world: W::NAME,
                    active: module.file().clone(),
                    active_took_over: BTreeMap::new(),
                    staged: None,
                    swaps: Vec::new(),
                    refusals: Vec::new(),
                },
                staged: None,
            }),
        });
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(stager::run(runtime, shared.clone(), received));
        triggers::on_sighup(requests.clone());
        let watcher = if options.watch {
            Some(triggers::FileWatcher::start(path, requests.clone())?)
        } else {
            None
        };
        if let Some(addr) = options.admin_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::AdminBind { addr, source })?;
            let folder = match &options.modules_dir {
                Some(folder) => folder.clone(),
                None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            // `Path::parent` of a bare file name is empty: the working directory.
            let folder = if folder.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                folder
            };
            let modules = ModulesDir::new(&folder, options.accept_text).map_err(|source| Error::ModulesDir {
                path: folder.display().to_string(),
                source,
            })?;
            tracing::info!(
                %addr,
                modules_dir = %modules.path().display(),
                token = options.admin_token.is_some(),
                "admin endpoint listening: GET /module, POST /module, GET /metrics, GET /health/live, GET /health/ready"
            );
            let admin = admin::Admin::new(shared.clone(), requests, modules, options.admin_token.clone());
            tokio::spawn(admin::serve(listener, admin));
        }
        tracing::info!(world = W::NAME, module = %module.file().path.display(), sha256 = %module.file().sha256, "module loaded");
        Ok((
            Self {
                shared,
                current: module,
                taken_over: Default::default(),
                _watcher: watcher,
            },
            guest,
        ))
    }

    pub fn sha256(&self) -> &str {
        &self.current.file().sha256
    }

    /// True when a module waits to be swapped in.
    pub fn is_staged(&self) -> bool {
        self.shared.lock().staged.is_some()
    }

    /// At a batch boundary: replaces `guest` by the staged module's guest,
    /// if one is staged. True when it did.
    pub fn swap_staged(&mut self, guest: &mut Guest<W>) -> bool {
        let started = Instant::now();
        let mut inner = self.shared.lock();
        let Some(staged) = inner.staged.take() else {
            return false;
        };
        let old_guest = std::mem::replace(guest, staged.guest);
        let old_module = std::mem::replace(&mut self.current, staged.module);
        drop(old_guest);
        let pause = started.elapsed();
        let file = self.current.file().clone();
        let record = SwapRecord {
            from_sha256: old_module.file().sha256.clone(),
            to_sha256: file.sha256.clone(),
            path: file.path.clone(),
            trigger: staged.trigger,
            pause_ms: pause.as_secs_f64() * 1e3,
            took_over: BTreeMap::new(),
        };
        tracing::info!(
            world = W::NAME,
            from = %record.from_sha256,
            to = %record.to_sha256,
            module = %file.path.display(),
            trigger = record.trigger,
            pause_ms = record.pause_ms,
            "module swapped at a batch boundary"
        );
        inner.status.active = file;
        inner.status.active_took_over.clear();
        inner.status.staged = None;
        inner.status.swaps.push(record);
        metrics::counter!(crate::ops::metrics::SWAPS).increment(1);
        self.taken_over.clear();
        true
    }

    /// Notes that the current module processes `partition` from `offset`:
    /// the first time, this is where it took over. The producer's stream is
    /// partition 0 here, its record index the offset.
    pub fn took_over(&mut self, partition: i32, offset: i64) {
        if !self.taken_over.insert(partition) {
            return;
        }
        tracing::info!(partition, offset, module = %self.current.file().sha256, "module takes over");
        let mut inner = self.shared.lock();
        inner.status.active_took_over.insert(partition, offset);
        // The last swap, if any, is the one that made this module active.
        if let Some(swap) = inner.status.swaps.last_mut() {
            swap.took_over.insert(partition, offset);
        }
    }

    /// Every swap so far.
    pub fn swaps(&self) -> Vec<SwapRecord> {
        self.shared.lock().status.swaps.clone()
    }
}
