//! What a handler may reach through WASI.
//!
//! Deny by default: no preopened directories, no environment variables, no arguments, no
//! network, and stdio discarded. Outbound HTTP is granted per component through `http` (see
//! [`crate::egress`]). Three steps, as Spin's factors do it:
//!
//! 1. **Link once**: every store's linker has the base WASI interfaces ([`BASE_INTERFACES`])
//!    and opshost's own; nothing else is ever linked.
//! 2. **Check each component at load** ([`check_imports`]): a component importing anything
//!    outside its grants is refused with the list of offending imports.
//! 3. **Build each store's context** (`Grants::wasi_context`): the handler's preopened
//!    directories (read-only or read-write, through cap-std) and named environment variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opshost_api::LogStream;
use serde::Deserialize;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::capture::Capture;
use crate::clock::{Clock, SystemClock, WasiClock};
use crate::egress::HttpGrant;

/// Interface prefixes every component may import. Their content is empty unless granted:
/// filesystem interfaces see only granted directories, `wasi:cli/environment` only granted
/// variables. HTTP needs `grants.http` ([`HTTP_INTERFACES`]); sockets and anything else are
/// never granted.
pub const BASE_INTERFACES: &[&str] = &[
    "opshost:operation/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
];

/// Interface prefixes a component granted `grants.http` may import as well.
pub const HTTP_INTERFACES: &[&str] = &["wasi:http/outgoing-handler", "wasi:http/types"];

/// The `grants` table of a handler or worker.
///
/// ```toml
/// [handlers.grants]
/// env = { REGION = "eu-west-1" }
/// dirs = [{ host = "catalog", guest = "/catalog" }, { host = "scratch", guest = "/tmp", writable = true }]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Environment variables the guest sees, by name.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directories preopened for the guest.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Outbound HTTP: the origins the guest may reach, and headers the host adds.
    #[serde(default)]
    pub http: Option<HttpGrant>,
}

/// One preopened directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host (relative paths are resolved against the config file).
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    #[serde(default)]
    pub writable: bool,
}

impl Grants {
    /// Resolves relative host directories against `base`.
    pub fn resolve(&mut self, base: &Path) {
        for dir in &mut self.dirs {
            dir.host = base.join(&dir.host);
        }
    }

    /// Checks every granted directory can be opened; the error names the one that cannot.
    pub fn check(&self) -> Result<(), String> {
        self.builder(Arc::new(SystemClock)).map(drop)
    }

    /// The WASI context of one store: exactly these grants, `clock`'s time, and stdout and
    /// stderr kept by `capture`.
    pub(crate) fn wasi_context(
        &self,
        clock: Arc<dyn Clock>,
        capture: &Arc<Capture>,
    ) -> Result<WasiCtx, String> {
        let mut builder = self.builder(clock)?;
        builder
            .stdout(capture.output(LogStream::Stdout))
            .stderr(capture.output(LogStream::Stderr));
        Ok(builder.build())
    }

    fn builder(&self, clock: Arc<dyn Clock>) -> Result<WasiCtxBuilder, String> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .allow_blocking_current_thread(false)
            .wall_clock(WasiClock(Arc::clone(&clock)))
            .monotonic_clock(WasiClock(clock));
        for (name, value) in &self.env {
            builder.env(name, value);
        }
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    format!(
                        "grants.dirs: cannot open {} for the guest's {}: {e}",
                        dir.host.display(),
                        dir.guest
                    )
                })?;
        }
        Ok(builder)
    }
}

/// The imports of `component` that `grants` do not allow; empty when it may load.
pub fn ungranted_imports(engine: &Engine, component: &Component, grants: &Grants) -> Vec<String> {
    let http: &[&str] = if grants.http.is_some() {
        HTTP_INTERFACES
    } else {
        &[]
    };
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| {
            !BASE_INTERFACES
                .iter()
                .chain(http)
                .any(|base| name.starts_with(base))
        })
        .collect()
}
