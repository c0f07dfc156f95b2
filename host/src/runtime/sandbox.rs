//! What a guest can reach outside its own memory. Replay-by-overwrite needs
//! guests that are pure functions of their input and the host's keyed
//! state, so the sandbox grants no clock, no random numbers, no files, no
//! sockets, no environment, no arguments and no stdin.
//!
//! Rust's std for wasm32-wasip2 imports WASI, so a component cannot be
//! instantiated without it. wasmtime-wasi's context would hand out the
//! host's clocks and random numbers; here every function that reaches one of
//! those capabilities is replaced by one that traps with the reason, so the
//! failure policy sends the records that touched it to the dead-letter
//! topic. What remains:
//! - the environment, the arguments and the working directory are empty
//!   (std's panic hook reads `RUST_BACKTRACE`, so a trap there would hide
//!   every panic message); the log names the function asked for;
//! - `insecure-seed` returns a fixed value (std seeds its `HashMap`s with it);
//! - stdout and stderr go to a small per-store buffer whose tail explains a
//!   failure (a panic message); nothing reaches the process's own stdio;
//! - `exit` ends the call as a failure.
//!
//! Nothing left can block: clocks, sockets and stdin are gone, and output
//! never waits, so the epoch deadline bounds a call's whole time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Linker, Val};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, async_trait};

/// The WASI version wasmtime-wasi 48 defines; replacing its functions needs
/// their exact instance names (guests built against older 0.2 versions are
/// linked to these by semver).
const WASI: &str = "0.2.12";

/// Functions that would give a guest a capability, by interface, with why
/// they are denied.
const DENIED: &[(&str, &[&str], &str)] = &[
    (
        "wasi:clocks/wall-clock",
        &["now", "resolution"],
        "guests get no clock (use the record's timestamp)",
    ),
    (
        "wasi:clocks/monotonic-clock",
        &["now", "resolution", "subscribe-instant", "subscribe-duration"],
        "guests get no clock and cannot sleep",
    ),
    (
        "wasi:random/random",
        &["get-random-bytes", "get-random-u64"],
        "guests get no random numbers (outputs must follow from the input)",
    ),
    (
        "wasi:random/insecure",
        &["get-insecure-random-bytes", "get-insecure-random-u64"],
        "guests get no random numbers (outputs must follow from the input)",
    ),
    ("wasi:cli/stdin", &["get-stdin"], "guests get no stdin"),
    ("wasi:filesystem/preopens", &["get-directories"], "guests get no files"),
    (
        "wasi:sockets/instance-network",
        &["instance-network"],
        "guests get no network",
    ),
    (
        "wasi:sockets/tcp-create-socket",
        &["create-tcp-socket"],
        "guests get no network",
    ),
    (
        "wasi:sockets/udp-create-socket",
        &["create-udp-socket"],
        "guests get no network",
    ),
    (
        "wasi:sockets/ip-name-lookup",
        &["resolve-addresses"],
        "guests get no network",
    ),
];

/// The value a function of `EMPTY` returns.
type EmptyAnswer = fn() -> Val;

/// Functions that answer "nothing": the environment, the arguments and the
/// working directory of a guest are empty.
const EMPTY: &[(&str, &str, EmptyAnswer)] = &[
    ("wasi:cli/environment", "get-environment", || Val::List(Vec::new())),
    ("wasi:cli/environment", "get-arguments", || Val::List(Vec::new())),
    ("wasi:cli/environment", "initial-cwd", || Val::Option(None)),
];

/// How often a guest asking for its empty environment is logged, at most.
const EMPTY_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The fixed seed `insecure-seed` returns.
const INSECURE_SEED: u128 = 0x5eed_5eed_5eed_5eed;

/// Bytes of a guest's latest output kept to explain a failure.
const OUTPUT_TAIL_BYTES: usize = 2048;

/// WASI with every capability replaced by a trap (see the module docs).
pub(super) fn add_wasi<T: wasmtime_wasi::WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    for (interface, functions, why) in DENIED {
        let name = format!("{interface}@{WASI}");
        let mut instance = linker.instance(&name)?;
        for function in *functions {
            let message = format!("the guest called {interface}.{function}, which the sandbox denies: {why}");
            instance.func_new(function, move |_, _, _, _| Err(wasmtime::Error::msg(message.clone())))?;
        }
    }
    for (interface, function, value) in EMPTY {
        let name = format!("{interface}@{WASI}");
        let asked = format!("{interface}.{function}");
        linker.instance(&name)?.func_new(function, move |_, _, _, results| {
            log_rate_limited(&asked);
            if let Some(result) = results.first_mut() {
                *result = value();
            }
            Ok(())
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Logs that a guest called `function`, which answers "nothing", at most
/// once per `EMPTY_LOG_INTERVAL` per function.
fn log_rate_limited(function: &str) {
    static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let last = last.get_or_insert_with(HashMap::new);
    let due = last.get(function).is_none_or(|at| at.elapsed() >= EMPTY_LOG_INTERVAL);
    if due {
        last.insert(function.to_string(), Instant::now());
        tracing::warn!(
            function,
            "a guest asked for its environment, arguments or working directory (std's panic handler asks for \
             RUST_BACKTRACE): the sandbox gives guests none, so it got an empty answer"
        );
    }
}

/// A WASI context that grants nothing, with the guest's output kept in `tail`.
pub(super) fn wasi_ctx(tail: &OutputTail) -> WasiCtx {
    WasiCtx::builder()
        .insecure_random_seed(INSECURE_SEED)
        .stdout(tail.clone())
        .stderr(tail.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The last bytes a guest wrote to stdout or stderr. Writes never fail or
/// wait, so a chatty guest neither traps nor blocks.
#[derive(Clone, Default)]
pub(super) struct OutputTail(Arc<Mutex<VecDeque<u8>>>);

impl OutputTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = bytes.len().min(OUTPUT_TAIL_BYTES);
        tail.extend(&bytes[bytes.len() - keep..]);
        let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
        tail.drain(..excess);
    }

    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// What the kept output says about a failure, and forgets it all: a
    /// panic's message, else the last line.
    pub(super) fn take_explanation(&self) -> Option<String> {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(tail.make_contiguous()).into_owned();
        tail.clear();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        // std prints "thread '…' panicked at file:line:col:", the message,
        // then a note about RUST_BACKTRACE.
        if let Some(at) = lines.iter().rposition(|l| l.contains("panicked at")) {
            let message = lines.get(at + 1).copied().unwrap_or_default();
            return Some(format!("{} {message}", lines[at]).trim().to_string());
        }
        lines.last().map(|l| l.to_string())
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for OutputTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputTail {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
