//! `opshost new`: a scaffolded guest crate builds and its harness test passes with one
//! command (`cargo test`), and bad requests are refused with what is wrong.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use crate::common::{opshost, root};

/// `opshost new name --operation operation` with the orders contract, into `into`.
fn new(name: &str, operation: &str, into: &Path) -> Output {
    opshost()
        .args(["new", name, "--operation", operation])
        .args(["--contract", "contracts/orders_service.manifest.json"])
        .arg("--into")
        .arg(into)
        .output()
        .expect("opshost runs")
}

#[test]
fn a_scaffolded_guest_builds_and_its_test_passes_with_cargo_test() {
    let dir = tempfile::tempdir().unwrap();
    let made = new("order-handler", "Orders.Process", dir.path());
    assert!(made.status.success(), "{made:?}");
    let crate_dir = dir.path().join("order-handler");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/handler.rs",
        "facade/build.rs",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} is missing");
    }

    // The one command, sharing the workspace's target directory as a user's CI would share
    // its cache.
    let began = Instant::now();
    let test = Command::new(env!("CARGO"))
        .arg("test")
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", root().join("target"))
        .output()
        .expect("cargo runs");
    let took = began.elapsed();
    let stdout = String::from_utf8_lossy(&test.stdout);
    let stderr = String::from_utf8_lossy(&test.stderr);
    assert!(
        test.status.success(),
        "cargo test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test completes_with_the_placeholder_output ... ok"),
        "{stdout}"
    );
    eprintln!("scaffold to green: {:.1} s", took.as_secs_f64());

    // deploy.toml names the crate's own target/: put the component there and check it.
    let built = root().join("target/wasm32-wasip2/release/order_handler.wasm");
    let component = crate_dir.join("target/wasm32-wasip2/release/order_handler.wasm");
    std::fs::create_dir_all(component.parent().unwrap()).unwrap();
    std::fs::copy(&built, &component).unwrap();
    let checked = opshost()
        .arg("check")
        .arg(&component)
        .arg("--config")
        .arg(crate_dir.join("deploy.toml"))
        .output()
        .expect("opshost runs");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{out}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn new_refuses_an_operation_the_contract_lacks_naming_those_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let out = new("x", "Orders.Refund", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no operation `Orders.Refund` (it has: Orders.Process)"),
        "{stderr}"
    );
    assert!(!dir.path().join("x").exists());
}

#[test]
fn new_refuses_a_name_that_is_not_a_crate_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = new("9 lives", "Orders.Process", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`9 lives` is not a crate name"), "{stderr}");
}

#[test]
fn new_refuses_to_write_over_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let out = new("taken", "Orders.Process", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );
}
