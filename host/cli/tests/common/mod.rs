//! Shared by the command-line tests: the `opshost` binary, `serve` as a child process, tokens.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The HS256 secret every test host and token uses.
pub const SECRET: &str = "opshost-cli-test-secret-0123456789";

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `opshost` binary, run from the repository's root with the test secret and no
/// `OPSHOST_URL`/`OPSHOST_TOKEN` from the environment.
pub fn opshost() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opshost"));
    command
        .env("OPSHOST_JWT_SECRET", SECRET)
        .env_remove("OPSHOST_URL")
        .env_remove("OPSHOST_TOKEN")
        .current_dir(root());
    command
}

/// The payments service the orders example charges, on the address its config grants: started
/// once per test process, on a thread of its own.
pub fn payments() -> &'static payments::Payments {
    static PAYMENTS: OnceLock<payments::Payments> = OnceLock::new();
    PAYMENTS.get_or_init(|| {
        let token = std::fs::read_to_string(root().join("contracts/payments.token"))
            .expect("the demo token");
        let payments = payments::Payments::new(token.trim_end());
        let router = payments.router();
        let (bound, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:18091")
                    .await
                    .expect("127.0.0.1:18091 is free for the payments service");
                bound.send(()).expect("the test waits");
                axum::serve(listener, router).await
            })
        });
        listening.recv().expect("the payments service listens");
        payments
    })
}

/// Starts `opshost serve --config config --data-dir data --listen listen`; answers the process
/// and the URL it prints.
pub fn serve(config: &Path, data: &Path, listen: &str) -> (Child, String) {
    serve_on(config, &["--data-dir".as_ref(), data.as_os_str()], listen)
}

/// Starts `opshost serve --config config <store> --listen listen`, `store` being the arguments
/// that choose the store; answers the process and the URL it prints.
pub fn serve_on(config: &Path, store: &[&std::ffi::OsStr], listen: &str) -> (Child, String) {
    serve_with(config, store, listen, &[])
}

/// [`serve_on`] with `envs` set for the host.
pub fn serve_with(
    config: &Path,
    store: &[&std::ffi::OsStr],
    listen: &str,
    envs: &[(&str, &str)],
) -> (Child, String) {
    let wasm = root().join("target/wasm32-wasip2/release/orders_process.wasm");
    assert!(wasm.exists(), "build the guests first: ./dev guests");
    if config.ends_with("contracts/orders.deploy.toml") {
        payments();
    }
    let mut child = opshost()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(store)
        .args(["--listen", listen])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("opshost serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("serve prints its address");
    let url = line
        .trim()
        .strip_prefix("opshost listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, url)
}

/// A token minted by `opshost token` for tenant `acme` with `scopes`.
pub fn token(scopes: &[&str]) -> String {
    token_for("acme", scopes)
}

/// A token minted by `opshost token` for `tenant` with `scopes`.
pub fn token_for(tenant: &str, scopes: &[&str]) -> String {
    let mut command = opshost();
    command.args(["token", "--sub", "cli", "--tenant", tenant]);
    for scope in scopes {
        command.args(["--scope", scope]);
    }
    let output = command.output().expect("opshost token runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
