//! `opshost check`: every problem a deployment would have with a component, found before it
//! is deployed, on purpose-made bad components and configs.

use std::path::{Path, PathBuf};

use crate::common::{opshost, root};

fn wasm(name: &str) -> PathBuf {
    let path = root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    assert!(path.exists(), "build the guests first: ./dev guests");
    path
}

/// Runs `opshost check component --config config`; answers the exit code and stdout.
fn check(component: &Path, config: &Path) -> (i32, String) {
    let output = opshost()
        .arg("check")
        .arg(component)
        .arg("--config")
        .arg(config)
        .output()
        .expect("opshost runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A config in `dir` with the testing contract and `body` after it.
fn config(dir: &Path, body: &str) -> PathBuf {
    let contract = root().join("contracts/testing.manifest.json");
    let path = dir.join("host.toml");
    std::fs::write(&path, format!("contract = {contract:?}\n{body}")).expect("config written");
    path
}

#[test]
fn a_component_as_configured_passes() {
    let (code, out) = check(
        &wasm("orders_process"),
        &root().join("contracts/orders.deploy.toml"),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn a_worker_granted_outbound_http_passes_and_without_the_grant_is_refused() {
    let worker = wasm("orders_fulfillment");
    let (code, out) = check(&worker, &root().join("contracts/orders.deploy.toml"));
    assert_eq!(code, 0, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let contract = root().join("contracts/orders_service.manifest.json");
    let path = dir.path().join("host.toml");
    let body = format!(
        "contract = {contract:?}\n[[workers]]\nqueue = \"fulfillment\"\ncomponent = {worker:?}\n"
    );
    std::fs::write(&path, body).unwrap();
    let (code, out) = check(&worker, &path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wasi:http/outgoing-handler"), "{out}");
}

#[test]
fn every_problem_of_a_component_is_reported_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let net = wasm("test_net");
    let body = format!(
        "[[handlers]]\noperation = \"Testing.Missing\"\ncomponent = {net:?}\nsha256 = \"{}\"\n\
         grants = {{ dirs = [{{ host = \"no-such-dir\", guest = \"/data\" }}] }}\n\n\
         [[workers]]\nqueue = \"testing.work\"\ncomponent = {net:?}\n",
        "0".repeat(64)
    );
    let (code, out) = check(&net, &config(dir.path(), &body));
    assert_eq!(code, 1, "{out}");
    let expected = [
        "handler of Testing.Missing: the contract declares no operation `Testing.Missing`",
        "handler of Testing.Missing: handles Testing.Scenario, not Testing.Missing",
        "handler of Testing.Missing: sha256 is ",
        "handler of Testing.Missing: imports what it was not granted: wasi:sockets/",
        "handler of Testing.Missing: grants.dirs: cannot open",
        "worker of queue testing.work: does not export the `worker` world",
        "worker of queue testing.work: imports what it was not granted: wasi:sockets/",
    ];
    for problem in expected {
        assert!(
            out.lines()
                .any(|line| line.starts_with(&format!("problem: {problem}"))),
            "missing `{problem}` in:\n{out}"
        );
    }
    assert!(out.contains("7 problem(s)"), "{out}");
}

#[test]
fn a_worker_component_configured_as_a_handler_lacks_the_handler_world() {
    let dir = tempfile::tempdir().unwrap();
    let worker = wasm("test_worker");
    let body = format!("[[handlers]]\noperation = \"Testing.Scenario\"\ncomponent = {worker:?}\n");
    let (code, out) = check(&worker, &config(dir.path(), &body));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: handler of Testing.Scenario: does not export the `handler` world"),
        "{out}"
    );
}

#[test]
fn a_handler_configured_for_another_operation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = wasm("test_handlers");
    let body =
        format!("[[handlers]]\noperation = \"Testing.Uncancellable\"\ncomponent = {handlers:?}\n");
    let (code, out) = check(&handlers, &config(dir.path(), &body));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "problem: handler of Testing.Uncancellable: handles Testing.Scenario, not Testing.Uncancellable"
        ),
        "{out}"
    );
    assert!(out.contains("1 problem(s)"), "{out}");
}

#[test]
fn a_handler_that_declares_no_operation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let worker = wasm("test_worker");
    let body = format!("[[handlers]]\noperation = \"Testing.Scenario\"\ncomponent = {worker:?}\n");
    let (code, out) = check(&worker, &config(dir.path(), &body));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: handler of Testing.Scenario: declares no operation"),
        "{out}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm at all").unwrap();
    let body = format!("[[handlers]]\noperation = \"Testing.Scenario\"\ncomponent = {bogus:?}\n");
    let (code, out) = check(&bogus, &config(dir.path(), &body));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problem: not a loadable component"), "{out}");
}

#[test]
fn a_component_the_config_does_not_name_is_reported() {
    let (code, out) = check(
        &wasm("test_handlers"),
        &root().join("contracts/orders.deploy.toml"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no handler or worker of the config uses"),
        "{out}"
    );
}
