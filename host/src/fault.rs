//! Crash points for fault-injection tests. With `SLUICE_CRASH_AT=<point>:<n>`
//! the n-th arrival at `<point>` announces itself on stderr and then waits to
//! be killed, so a test can SIGKILL the process exactly between two steps of
//! the delivery protocol (after an upload and before its commit, say).
//! Unset, a point costs one lookup of a cached `None`, once per batch.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    point: String,
    arrival: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SLUICE_CRASH_AT").ok()?;
            let (point, arrival) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1"));
            Some(Armed {
                point: point.to_string(),
                arrival: arrival.parse().ok()?,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks a crash point. Names used: `after-guest`, `after-upload`,
/// `after-redis`, `mid-checkpoint`, `before-commit`.
pub fn point(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.point != name || armed.seen.fetch_add(1, Ordering::SeqCst) + 1 != armed.arrival {
        return;
    }
    eprintln!("sluice: crash point {name} reached, waiting to be killed");
    loop {
        std::thread::park();
    }
}
