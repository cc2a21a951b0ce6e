//! Host bindings of the `handler` and `worker` worlds in `wit/`; the worker's shared
//! interfaces are the handler's.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "handler",
    imports: { default: async },
    exports: { default: async },
});

/// The `worker` world.
pub mod worker {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "worker",
        imports: { default: async },
        exports: { default: async },
        with: {
            "opshost:operation/types": super::opshost::operation::types,
            "opshost:operation/control": super::opshost::operation::control,
            "opshost:operation/log": super::opshost::operation::log,
        },
    });
}
