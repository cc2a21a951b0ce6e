//! Building a guest crate into its component from its own tests, so `cargo test` alone builds
//! the component it tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// The target guests are built for.
const TARGET: &str = "wasm32-wasip2";

/// Builds the guest crate at `crate_dir` (package `package`) for `wasm32-wasip2` in release
/// mode and returns the component's path; cargo does nothing when it is up to date. From a
/// guest's test: `build_component(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))`.
///
/// It builds into the target directory of the running test (or `CARGO_TARGET_DIR`).
pub fn build_component(
    crate_dir: impl AsRef<Path>,
    package: &str,
) -> Result<PathBuf, HarnessError> {
    let crate_dir = crate_dir.as_ref();
    let target_dir = target_dir(crate_dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--package",
            package,
        ])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|error| HarnessError::Build(format!("cannot run cargo: {error}")))?;
    if !output.status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build of `{package}` for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let component = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if component.is_file() {
        Ok(component)
    } else {
        Err(HarnessError::Build(format!(
            "cargo built `{package}` but {} is missing: is it a `cdylib`?",
            component.display()
        )))
    }
}

/// `CARGO_TARGET_DIR`, else the target directory the running test was built in (the ancestor
/// cargo tagged with `CACHEDIR.TAG`), else `<crate_dir>/target`.
fn target_dir(crate_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| crate_dir.join("target"))
}
