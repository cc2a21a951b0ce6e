//! `opshost new`: scaffolds a guest crate for one operation of a contract.
//!
//! The crate holds the handler (on the guest SDK), a facade generated from a copy of the
//! contract at build time, a harness test that builds the component and runs it under the real
//! host, and a deployment config. Placeholder payloads come from the contract's schemas
//! ([`PayloadSchema::example`]). Its `Cargo.lock` starts from opshost's own, so it builds with
//! the versions opshost is tested with and can share opshost's target directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use opshost_contract::{Contract, PayloadSchema};

/// What to scaffold.
pub struct NewGuest {
    /// The package name, e.g. `orders-process`.
    pub name: String,
    /// The operation it handles, e.g. `Orders.Process`.
    pub operation: String,
    /// The contract manifest.
    pub contract: PathBuf,
    /// The directory the crate is created in (as `<into>/<name>`).
    pub into: PathBuf,
    /// The opshost checkout whose SDK, harness and codegen the crate uses.
    pub opshost: PathBuf,
}

/// A scaffolded crate.
pub struct Scaffold {
    /// Where it was written.
    pub dir: PathBuf,
    /// Payloads whose placeholder could not be made from the schema (`input`, `output`...).
    pub unfilled: Vec<&'static str>,
}

/// The opshost checkout this binary was built from, when it is still there.
pub fn default_opshost() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("guests/sdk/Cargo.toml")
        .is_file()
        .then(|| root.canonicalize().ok())
        .flatten()
}

/// Writes the crate; refuses a bad name, an unknown operation or an existing directory.
pub fn scaffold(request: &NewGuest) -> Result<Scaffold> {
    check_name(&request.name)?;
    let opshost = request
        .opshost
        .canonicalize()
        .with_context(|| format!("opshost checkout {}", request.opshost.display()))?;
    if !opshost.join("guests/sdk/Cargo.toml").is_file() {
        bail!(
            "{} is not an opshost checkout (no guests/sdk); pass --opshost <path>",
            opshost.display()
        );
    }
    let manifest = std::fs::read_to_string(&request.contract)
        .with_context(|| format!("contract {}", request.contract.display()))?;
    let contract = Contract::from_json(&manifest)
        .with_context(|| format!("contract {}", request.contract.display()))?;
    let Some(spec) = contract.operation(&request.operation) else {
        let known: Vec<&str> = contract.operations().keys().map(String::as_str).collect();
        bail!(
            "contract {} has no operation `{}` (it has: {})",
            request.contract.display(),
            request.operation,
            known.join(", ")
        );
    };
    let dir = request.into.join(&request.name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }

    let mut unfilled = Vec::new();
    let mut example = |kind: &'static str, schema: &PayloadSchema| {
        schema
            .example()
            .map(|value| value.to_string())
            .unwrap_or_else(|| {
                unfilled.push(kind);
                "null".to_owned()
            })
    };
    let input = example("input", &spec.input);
    let output = example("output", &spec.output);
    let progress = spec
        .progress
        .as_ref()
        .map(|schema| example("progress", schema));
    let marker = opshost_codegen::marker_name(&spec.name);
    let (progress_call, progress_assert) = match &progress {
        Some(progress) => (
            format!(
                "        let progress: <{marker} as Operation>::Progress = example({})?;\n        \
                 ctx.progress(&progress)?;\n",
                raw_string(progress)
            ),
            format!(
                "    let progress = serde_json::to_value(run.progress().await.expect(\"progress\")).unwrap();\n    \
                 assert_eq!(progress, serde_json::from_str::<serde_json::Value>({}).unwrap());\n",
                raw_string(&format!("[{progress}]"))
            ),
        ),
        None => (String::new(), String::new()),
    };
    let opshost_path = opshost.display().to_string();
    let fill = |template: &str| {
        template
            .replace("{{name}}", &request.name)
            .replace("{{crate}}", &request.name.replace('-', "_"))
            .replace("{{operation}}", &spec.name)
            .replace("{{service}}", contract.service())
            .replace("{{marker}}", &marker)
            .replace("{{opshost}}", &opshost_path)
            .replace("{{input}}", &raw_string(&input))
            .replace("{{output}}", &raw_string(&output))
            .replace("{{progress_call}}", &progress_call)
            .replace("{{progress_assert}}", &progress_assert)
    };

    let files: [(&str, String); 11] = [
        (
            "Cargo.toml",
            fill(include_str!("../templates/new/Cargo.toml")),
        ),
        ("Cargo.lock", lockfile(&opshost)?),
        ("contract.json", manifest.clone()),
        (
            "deploy.toml",
            fill(include_str!("../templates/new/deploy.toml")),
        ),
        (
            "README.md",
            fill(include_str!("../templates/new/README.md")),
        ),
        (
            ".gitignore",
            include_str!("../templates/new/gitignore").into(),
        ),
        ("src/lib.rs", fill(include_str!("../templates/new/lib.rs"))),
        (
            "tests/handler.rs",
            fill(include_str!("../templates/new/test.rs")),
        ),
        (
            "facade/Cargo.toml",
            fill(include_str!("../templates/new/facade.Cargo.toml")),
        ),
        (
            "facade/build.rs",
            fill(include_str!("../templates/new/facade.build.rs")),
        ),
        (
            "facade/src/lib.rs",
            fill(include_str!("../templates/new/facade.lib.rs")),
        ),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Cosmetic: the placeholders make long lines. A missing rustfmt leaves them as they are.
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(dir.join("src/lib.rs"))
        .arg(dir.join("tests/handler.rs"))
        .output();
    Ok(Scaffold { dir, unfilled })
}

/// A Cargo package name: ASCII letters, digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a crate name: use ASCII letters, digits, `-` and `_`, starting with a letter"
        );
    }
    Ok(())
}

/// `text` as a Rust raw string literal, with enough `#`s that no `"#...` inside ends it.
fn raw_string(text: &str) -> String {
    let hashes = "#".repeat(text.matches('#').count() + 1);
    format!("r{hashes}\"{text}\"{hashes}")
}

/// The packages of opshost's host and guest lockfiles together: the scaffold resolves to the
/// versions opshost builds with, and cargo drops what it does not use.
fn lockfile(opshost: &Path) -> Result<String> {
    let mut seen = BTreeSet::new();
    let mut packages = Vec::new();
    for path in [
        opshost.join("Cargo.lock"),
        opshost.join("guests/Cargo.lock"),
    ] {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let lock: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not a lockfile", path.display()))?;
        let entries = lock
            .get("package")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        for entry in entries {
            let field = |key: &str| {
                entry
                    .get(key)
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned)
            };
            if seen.insert((field("name"), field("version"), field("source"))) {
                packages.push(entry);
            }
        }
    }
    let mut lock = toml::Table::new();
    lock.insert("version".into(), toml::Value::Integer(4));
    lock.insert("package".into(), toml::Value::Array(packages));
    Ok(format!(
        "# Started from opshost's lockfiles by `opshost new`; cargo keeps it up to date.\n{}",
        toml::to_string(&lock)?
    ))
}

/// The only `*.manifest.json` in `dir`.
pub fn find_contract(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(".manifest.json"))
        })
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no *.manifest.json in {}; pass --contract <manifest>",
            dir.display()
        ),
        _ => bail!(
            "several *.manifest.json in {}; pass --contract <manifest>",
            dir.display()
        ),
    }
}
