//! Host bindings of the `handler` world in `wit/`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "handler",
    imports: { default: async },
    exports: { default: async },
});
