//! What a handler may reach through WASI.
//!
//! Deny by default: no preopened directories, no environment variables, no arguments, no
//! network, and stdio discarded. Grants per handler (directories, named env vars) extend this
//! context; every component is linked against the same WASI interfaces.

use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// The WASI context of one operation's store: nothing beyond WASI's defaults.
pub fn wasi_context() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_blocking_current_thread(false)
        .build()
}
