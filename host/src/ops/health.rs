//! Liveness and readiness, as `/health/live` and `/health/ready` answer
//! them. Live: the process serves requests. Ready: a consumer job has
//! partitions assigned, and no service the command needs is known to be
//! unreachable right now (each place that waits for a service says so here
//! while it waits).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Default)]
struct State {
    /// The command consumes as a group member: ready needs partitions.
    consumer: bool,
    assigned: Vec<i32>,
    /// Service name to what is known of it (its address, the last error).
    unreachable: BTreeMap<&'static str, String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    consumer: false,
    assigned: Vec::new(),
    unreachable: BTreeMap::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The command is a group member: not ready until partitions are assigned.
pub fn expect_assignment() {
    state().consumer = true;
}

/// The partitions assigned to this member now.
pub fn set_assigned(partitions: Vec<i32>) {
    ::metrics::gauge!(super::metrics::ASSIGNED_PARTITIONS).set(partitions.len() as f64);
    state().assigned = partitions;
}

pub fn assigned_partitions() -> Vec<i32> {
    state().assigned.clone()
}

/// A service stopped answering; `detail` names its address (never a
/// password) and the last error.
pub fn unreachable(service: &'static str, detail: String) {
    state().unreachable.insert(service, detail);
}

pub fn reachable(service: &'static str) {
    state().unreachable.remove(service);
}

/// What `/health/ready` answers.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    pub reasons: Vec<String>,
    pub assigned_partitions: usize,
}

pub fn readiness() -> Readiness {
    let state = state();
    let mut reasons = Vec::new();
    if state.consumer && state.assigned.is_empty() {
        reasons.push("no partitions assigned".to_string());
    }
    for (service, detail) in &state.unreachable {
        reasons.push(format!("{service} unreachable: {detail}"));
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        assigned_partitions: state.assigned.len(),
    }
}
