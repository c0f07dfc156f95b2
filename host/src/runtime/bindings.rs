//! Host-side bindings of wit/sluice.wit, one module per world.

pub mod generator {
    wasmtime::component::bindgen!({ world: "generator", path: "../wit" });
}

pub mod raw_filter {
    wasmtime::component::bindgen!({ world: "raw-filter", path: "../wit" });
}

pub mod features {
    wasmtime::component::bindgen!({ world: "features", path: "../wit" });
}
