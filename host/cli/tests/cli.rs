//! The `opshost` command as a shell user drives it: `serve` in one process, `token`, `start`,
//! `watch`, `get`, `list`, `cancel` and the operator's `jobs` in others, over real HTTP on
//! 127.0.0.1.

#[path = "cli/browsers.rs"]
mod browsers;
#[path = "cli/check.rs"]
mod check;
mod common;
#[path = "cli/deploy.rs"]
mod deploy;
#[path = "cli/egress.rs"]
mod egress;
#[path = "cli/hardening.rs"]
mod hardening;
#[path = "cli/hosts.rs"]
mod hosts;
#[path = "cli/new.rs"]
mod new;
#[path = "cli/shutdown.rs"]
mod shutdown;
#[path = "cli/telemetry.rs"]
mod telemetry;

use std::process::{Child, Command, Output};

use common::{opshost, root, token};
use serde_json::Value;

/// `opshost serve` on an ephemeral port with its own data directory, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Serve {
    fn start() -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        let config = root().join("contracts/orders.deploy.toml");
        let (child, url) = common::serve(&config, data.path(), "127.0.0.1:0");
        Self {
            child,
            url,
            _data: data,
        }
    }

    /// `opshost serve --config config` on a data directory of its own.
    fn with_config(config: &std::path::Path) -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        let (child, url) = common::serve(config, data.path(), "127.0.0.1:0");
        Self {
            child,
            url,
            _data: data,
        }
    }

    /// `opshost serve --config config --data-dir data`, on a data directory the caller keeps.
    fn on_data_dir(config: &std::path::Path, data: &std::path::Path) -> Self {
        let (child, url) = common::serve(config, data, "127.0.0.1:0");
        Self {
            child,
            url,
            _data: tempfile::tempdir().expect("a directory"),
        }
    }

    /// `opshost serve --config config` keeping operations in the PostgreSQL database at `url`.
    fn on_postgres(config: &std::path::Path, url: &str) -> Self {
        let data = tempfile::tempdir().expect("a directory");
        let (child, address) =
            common::serve_on(config, &["--store".as_ref(), url.as_ref()], "127.0.0.1:0");
        Self {
            child,
            url: address,
            _data: data,
        }
    }

    /// Runs a caller command against this server with `token`.
    fn call(&self, token: &str, args: &[&str]) -> Output {
        opshost()
            .args(args)
            .args(["--url", &self.url, "--token", token])
            .output()
            .expect("opshost runs")
    }
}

impl Serve {
    /// `opshost start Testing.Scenario --input input --wait 30` as a `testing.run` caller, with
    /// `extra` arguments.
    fn run_scenario(&self, input: &str, extra: &[&str]) -> Output {
        let start = [
            "start",
            "Testing.Scenario",
            "--input",
            input,
            "--wait",
            "30",
        ];
        self.call(&token(&["testing.run"]), &[&start[..], extra].concat())
    }

    /// The note of a `Testing.Scenario` operation run to its end with `input`.
    fn note_of(&self, input: &str) -> String {
        let done = json(&self.run_scenario(input, &[]));
        done["output"]["note"]
            .as_str()
            .unwrap_or_else(|| panic!("no note: {done}"))
            .to_owned()
    }

    /// Sends the host SIGHUP: it reads its config file again.
    fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

/// Waits up to 30 s for `done`, polling; fails naming `what` if it never is.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A two-thread tokio runtime for a test that drives servers from async code.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&output.stdout)))
}

const START: &[&str] = &[
    "start",
    "Orders.Process",
    "--input",
    "@contracts/examples/process-order.json",
];

#[test]
fn start_then_watch_shows_progress_and_prints_the_output() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let started = serve.call(&token, START);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let snapshot = json(&started);
    let id = snapshot["id"].as_str().expect("an id");
    assert_eq!(snapshot["state"], "pending");

    let watched = serve.call(&token, &["watch", id]);
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stderr));
    let output = json(&watched);
    assert_eq!(output["status"], "shipped");
    let progress = text(&watched.stderr);
    for step in ["reserving", "charging", "packing", "shipping"] {
        assert!(progress.contains(step), "no `{step}` in {progress}");
    }

    let got = serve.call(&token, &["get", id]);
    assert_eq!(json(&got)["state"], "completed");
    let listed = serve.call(&token, &["list", "--state", "completed"]);
    assert!(
        text(&listed.stdout).contains(id),
        "{}",
        text(&listed.stdout)
    );
}

#[test]
fn serve_on_postgres_keeps_operations_for_the_next_host_process() {
    let url = opshost_tests::postgres::fresh_database_blocking();
    let orders = root().join("contracts/orders.deploy.toml");
    let token = token(&["orders.write", "orders.read"]);
    let id = {
        let first = Serve::on_postgres(&orders, &url);
        let started = first.call(&token, START);
        assert!(started.status.success(), "{}", text(&started.stderr));
        let id = json(&started)["id"].as_str().expect("an id").to_owned();
        let waited = first.call(&token, &["wait", &id]);
        assert_eq!(json(&waited)["state"], "completed");
        id
    };
    let second = Serve::on_postgres(&orders, &url);
    let got = second.call(&token, &["get", &id]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(json(&got)["state"], "completed");
    assert_eq!(json(&got)["output"]["status"], "shipped");
}

#[test]
fn cancel_prints_the_cancelled_snapshot_and_wait_exits_1() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let started = serve.call(&token, START);
    let id = json(&started)["id"].as_str().expect("an id").to_owned();
    let cancelled = serve.call(&token, &["cancel", &id]);
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    assert_eq!(json(&cancelled)["state"], "cancelled");
    let waited = serve.call(&token, &["wait", &id]);
    assert_eq!(waited.status.code(), Some(1));
}

#[test]
fn a_refusal_exits_3_with_the_error_code() {
    let serve = Serve::start();
    let reader = token(&["orders.read"]);
    let denied = serve.call(&reader, START);
    assert_eq!(denied.status.code(), Some(3));
    assert!(
        text(&denied.stderr).contains("MissingCapability"),
        "{}",
        text(&denied.stderr)
    );
    let missing = serve.call(&reader, &["get", "no-such-operation"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stderr).contains("OperationNotFound"));
}

#[test]
fn an_unreachable_host_exits_4() {
    let output = opshost()
        .args(["get", "x", "--url", "http://127.0.0.1:9", "--token", "t"])
        .output()
        .expect("opshost runs");
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
}

/// `opshost serve` on `data_dir` that is expected to refuse to start: its exit code and stderr.
fn serve_refusal(command: &mut Command, store: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let output = command
        .args([
            "serve",
            "--config",
            "contracts/orders.deploy.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(store)
        .output()
        .expect("opshost runs");
    (output.status.code(), text(&output.stderr))
}

#[test]
fn serve_refuses_to_start_without_a_token_key() {
    let data = tempfile::tempdir().unwrap();
    let (code, stderr) = serve_refusal(
        opshost().env_remove("OPSHOST_JWT_SECRET"),
        &["--data-dir".as_ref(), data.path().as_os_str()],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("OPSHOST_JWT_SECRET"), "{stderr}");
}

#[test]
fn serve_refuses_a_data_directory_that_is_a_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, stderr) = serve_refusal(
        &mut opshost(),
        &["--data-dir".as_ref(), file.path().as_os_str()],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("data directory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_a_corrupt_database() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("opshost.sqlite3"),
        "this is not a SQLite database, it is a text file that took its place".repeat(100),
    )
    .unwrap();
    let (code, stderr) = serve_refusal(
        &mut opshost(),
        &["--data-dir".as_ref(), data.path().as_os_str()],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("opshost.sqlite3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_a_store_url_that_is_not_postgres() {
    let (code, stderr) = serve_refusal(&mut opshost(), &["--store".as_ref(), "not a url".as_ref()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("store URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_an_unreachable_database_naming_it() {
    let (code, stderr) = serve_refusal(
        &mut opshost(),
        &[
            "--store".as_ref(),
            "postgres://opshost@127.0.0.1:1/opshost".as_ref(),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_operator_lists_the_fulfillment_job_of_an_order_and_others_are_refused() {
    let serve = Serve::start();
    let caller = token(&["orders.write", "orders.read"]);
    let started = serve.call(&caller, START);
    let id = json(&started)["id"].as_str().expect("an id").to_owned();
    let admin = token(&["opshost.admin"]);
    let jobs = |token: &str, args: &[&str]| {
        opshost()
            .args(["jobs", "--url", &serve.url, "--token", token])
            .args(args)
            .output()
            .expect("opshost runs")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let line = loop {
        let listed = jobs(&admin, &["list", "--queue", "fulfillment"]);
        assert!(listed.status.success(), "{}", text(&listed.stderr));
        if let Some(line) = text(&listed.stdout).lines().find(|l| l.ends_with(&id)) {
            break line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no job owns {id}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let job_id = line.split('\t').next().expect("a job id");
    let shown = jobs(&admin, &["get", job_id]);
    assert_eq!(json(&shown)["operation"], id.as_str());
    let denied = jobs(&caller, &["list"]);
    assert_eq!(denied.status.code(), Some(3));
    assert!(
        text(&denied.stderr).contains("MissingCapability"),
        "{}",
        text(&denied.stderr)
    );
}
