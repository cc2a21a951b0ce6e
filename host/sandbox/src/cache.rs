//! Loading components: the sha256 pin, and the precompiled-component cache.
//!
//! A component's compiled form is kept in the cache directory as
//! `<sha256 of the component>-<engine compatibility hash>.cwasm`, so a restart skips
//! Cranelift, and a component or engine change (another wasmtime, other settings) never loads
//! a stale file. Files are written to a temporary name and renamed, so a reader never sees a
//! partial one; a file that does not load is compiled again and replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Why a component did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// The file's sha256 is not the pinned one.
    #[error("sha256 is {actual}, but the deployment pins {expected}")]
    Pin {
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// Wasmtime refused the component.
    #[error("{0:#}")]
    Compile(wasmtime::Error),
}

/// How a component was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and stored in the cache, when there is one).
    Compiled,
    /// Loaded precompiled from the cache.
    Cached,
}

/// Compiles components, through the cache directory when given.
pub struct ComponentLoader {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl ComponentLoader {
    /// A loader for `engine`, caching compiled components in `cache_dir` when given.
    pub fn new(engine: &Engine, cache_dir: Option<PathBuf>) -> Self {
        Self {
            engine: engine.clone(),
            cache_dir,
        }
    }

    /// The compiled component for `bytes`: from the cache when it holds a file that loads.
    pub fn compile(&self, bytes: &[u8], digest: &str) -> Result<(Component, Origin), LoadError> {
        let Some(dir) = &self.cache_dir else {
            let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
            return Ok((component, Origin::Compiled));
        };
        let file = dir.join(format!("{digest}-{}.cwasm", self.compatibility()));
        if file.exists() {
            // SAFETY: the file was written by `store` below from this engine's own
            // `Component::serialize`, under a name carrying the component's digest and the
            // engine's compatibility hash; wasmtime checks both the header and the settings.
            match unsafe { Component::deserialize_file(&self.engine, &file) } {
                Ok(component) => return Ok((component, Origin::Cached)),
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "cached component does not load; compiling again");
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        if let Err(error) = store(&component, dir, &file) {
            tracing::warn!(file = %file.display(), %error, "cannot cache the compiled component");
        }
        Ok((component, Origin::Compiled))
    }

    fn compatibility(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

fn store(component: &Component, dir: &Path, file: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    let partial = file.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&partial, file).map_err(|e| e.to_string())
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
