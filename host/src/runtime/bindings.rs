//! Host-side bindings of wit/sluice.wit, one module per world.

pub mod generator {
    wasmtime::component::bindgen!({ world: "generator", path: "../wit" });
}

pub mod raw_filter {
    wasmtime::component::bindgen!({ world: "raw-filter", path: "../wit" });
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
