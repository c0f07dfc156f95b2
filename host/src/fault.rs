//! Crash and stall points for fault-injection tests.
//!
//! With `SLUICE_CRASH_AT=<point>:<n>` the n-th arrival at `<point>` announces
//! itself on stderr and then waits to be killed, so a test can SIGKILL the
//! process exactly between two steps of the delivery protocol.
//!
//! With `SLUICE_STALL_AT=<point>:<n>[,<point>:<n>…]` each listed arrival
//! announces `stall point <point> reached` and pauses for a second, long
//! enough for a test to SIGSTOP the whole process there (a GC pause, a
//! frozen VM) and SIGCONT it later: a zombie that resumes mid-batch.
//!
//! Unset, a point costs one lookup of a cached `None`, once per batch.

use std::sync::OnceLock;
use std::time::Duration;

struct Armed {
    point: String,
    arrival: u64,
}

struct Points {
    crash: Option<Armed>,
    stalls: Vec<Armed>,
    seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

fn parse(spec: &str) -> Option<Armed> {
    let (point, arrival) = spec.rsplit_once(':').unwrap_or((spec, "1"));
    Some(Armed {
        point: point.to_string(),
        arrival: arrival.parse().ok()?,
    })
}

fn points() -> Option<&'static Points> {
    static POINTS: OnceLock<Option<Points>> = OnceLock::new();
    POINTS
        .get_or_init(|| {
            let crash = std::env::var("SLUICE_CRASH_AT").ok().and_then(|s| parse(&s));
            let stalls: Vec<Armed> = std::env::var("SLUICE_STALL_AT")
                .map(|s| s.split(',').filter_map(parse).collect())
                .unwrap_or_default();
            (crash.is_some() || !stalls.is_empty()).then(|| Points {
                crash,
                stalls,
                seen: Default::default(),
            })
        })
        .as_ref()
}

/// Marks a point. Names used: `after-guest`, `after-upload`, `after-redis`,
/// `mid-checkpoint`, `before-commit`.
pub fn point(name: &str) {
    let Some(points) = points() else { return };
    let arrival = {
        let mut seen = points.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = seen.entry(name.to_string()).or_default();
        *count += 1;
        *count
    };
    if points.stalls.iter().any(|s| s.point == name && s.arrival == arrival) {
        eprintln!("sluice: stall point {name} reached");
        std::thread::sleep(Duration::from_secs(1));
    }
    if points
        .crash
        .as_ref()
        .is_some_and(|c| c.point == name && c.arrival == arrival)
    {
        eprintln!("sluice: crash point {name} reached, waiting to be killed");
        loop {
            std::thread::park();
        }
    }
}
