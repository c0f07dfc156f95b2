//! Host-side bindings of wit/sluice.wit, one module per world.

pub mod generator {
    wasmtime::component::bindgen!({ world: "generator", path: "../wit" });
}

pub mod raw_filter {
    wasmtime::component::bindgen!({ world: "raw-filter", path: "../wit" });
}

/// Used to check that a component implements the world; the host calls its
/// `process` through `runtime::raw_batch`, which lends the batch's buffers
/// instead of owning copies of them.
pub mod raw_batch_filter {
    wasmtime::component::bindgen!({
        world: "raw-batch-filter",
        path: "../wit",
        with: { "sluice:pipeline/types": super::raw_filter::sluice::pipeline::types },
    });
}

pub mod features {
    // Keyed state traps outside a call, and `set` and `set-many` when a
    // call creates more keys than the store allows.
    wasmtime::component::bindgen!({
        world: "features",
        path: "../wit",
        imports: {
            "sluice:pipeline/keyed-state.get": trappable,
            "sluice:pipeline/keyed-state.set": trappable,
            "sluice:pipeline/keyed-state.get-many": trappable,
            "sluice:pipeline/keyed-state.set-many": trappable,
        },
    });
}

/// Used to check that a component implements the world; the host calls its
/// `process` through `runtime::transaction_columns`, which lends the
/// batch's columns instead of owning copies of them.
pub mod features_columns {
    wasmtime::component::bindgen!({
        world: "features-columns",
        path: "../wit",
        with: {
            "sluice:pipeline/types": super::features::sluice::pipeline::types,
            "sluice:pipeline/keyed-state": super::features::sluice::pipeline::keyed_state,
        },
    });
}
