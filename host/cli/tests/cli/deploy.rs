//! `opshost deploy`, `rollback` and `deployments` against a running `opshost serve`: a new
//! version is checked, served without a restart, listed with who deployed it, and rolled
//! back; a restart keeps what was deployed.

use std::process::Output;

use serde_json::Value;

use crate::common::{root, token};
use crate::shutdown::write_config;
use crate::{Serve, eventually, json, text};

fn wasm(name: &str) -> String {
    root()
        .join(format!("target/wasm32-wasip2/release/{name}.wasm"))
        .display()
        .to_string()
}

/// Starts `Testing.Scenario` with the `complete` scenario and waits for it; answers its note.
fn note_of_a_new_operation(serve: &Serve) -> String {
    serve.note_of(r#"{"scenario":"complete"}"#)
}

fn succeeded(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        text(&output.stderr)
    );
    json(output)
}

#[test]
fn an_operator_deploys_lists_and_rolls_back_a_version_of_a_running_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_version_a",
        "",
    );
    let serve = Serve::on_data_dir(&config, data.path());
    let admin = token(&["opshost.admin"]);
    assert_eq!(note_of_a_new_operation(&serve), "version a, attempt 1");

    let refused = serve.call(
        &admin,
        &[
            "deploy",
            "--operation",
            "Testing.Scenario",
            &wasm("test_net"),
        ],
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("not granted"),
        "{}",
        text(&refused.stderr)
    );
    let dry_run = serve.call(
        &admin,
        &[
            "deploy",
            "--dry-run",
            "--operation",
            "Testing.Scenario",
            &wasm("test_net"),
        ],
    );
    assert_eq!(dry_run.status.code(), Some(1), "{}", text(&dry_run.stderr));
    let report = json(&dry_run);
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("not granted"),
        "{report}"
    );
    assert!(
        text(&dry_run.stderr).contains("against the current version"),
        "{}",
        text(&dry_run.stderr)
    );
    let clean = serve.call(
        &admin,
        &[
            "deploy",
            "--dry-run",
            "--operation",
            "Testing.Scenario",
            &wasm("test_version_b"),
        ],
    );
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert_eq!(
        note_of_a_new_operation(&serve),
        "version a, attempt 1",
        "a dry run deploys nothing"
    );
    let not_admin = serve.call(
        &token(&["testing.run"]),
        &[
            "deploy",
            "--operation",
            "Testing.Scenario",
            &wasm("test_version_b"),
        ],
    );
    assert_eq!(not_admin.status.code(), Some(3));

    let deployed = succeeded(&serve.call(
        &admin,
        &[
            "deploy",
            "--operation",
            "Testing.Scenario",
            &wasm("test_version_b"),
        ],
    ));
    assert_eq!(note_of_a_new_operation(&serve), "version b, attempt 1");

    let listed = serve.call(&admin, &["deployments"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let rows = text(&listed.stdout);
    let current = rows
        .lines()
        .find(|row| row.contains("\tcurrent\t"))
        .unwrap_or_else(|| panic!("no current version: {rows}"));
    assert!(
        current.starts_with("operation\tTesting.Scenario\t")
            && current.contains(deployed["sha256"].as_str().unwrap())
            && current.ends_with("\tcli@acme"),
        "{rows}"
    );

    let history = serve.call(&admin, &["deployments", "--history"]);
    let changes = text(&history.stdout);
    let actions: Vec<(&str, &str)> = changes
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields[4], fields[6])
        })
        .collect();
    assert_eq!(
        actions,
        [("config", "config"), ("deploy", "cli@acme")],
        "{changes}"
    );

    // A restart on the same config keeps what was deployed.
    drop(serve);
    let serve = Serve::on_data_dir(&config, data.path());
    assert_eq!(note_of_a_new_operation(&serve), "version b, attempt 1");

    succeeded(&serve.call(&admin, &["rollback", "--operation", "Testing.Scenario"]));
    assert_eq!(note_of_a_new_operation(&serve), "version a, attempt 1");
    let nothing_left = serve.call(&admin, &["rollback", "--operation", "Testing.Scenario"]);
    assert_eq!(nothing_left.status.code(), Some(3));
    assert!(
        text(&nothing_left.stderr).contains("no earlier version"),
        "{}",
        text(&nothing_left.stderr)
    );
}

#[test]
fn deploy_names_exactly_one_target_and_a_ramp_between_1_and_100() {
    let usage = |args: &[&str]| {
        let output = crate::common::opshost()
            .args(args)
            .args(["--url", "http://127.0.0.1:9", "--token", "t"])
            .output()
            .expect("opshost runs");
        (output.status.code(), text(&output.stderr))
    };
    let component = wasm("test_version_b");
    let (code, error) = usage(&["deploy", &component]);
    assert_eq!(code, Some(2), "{error}");
    assert!(error.contains("--operation"), "{error}");
    let (code, _) = usage(&["deploy", "--operation", "A", "--queue", "q", &component]);
    assert_eq!(code, Some(2));
    let (code, error) = usage(&["deploy", "--operation", "A", "--percent", "0", &component]);
    assert_eq!(code, Some(2), "{error}");
}

/// A config serving `Testing.Scenario` with the test-handlers guest, granted `REGION`.
fn config_with_region(dir: &std::path::Path, region: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        &format!("[handlers.grants]\nenv = {{ REGION = \"{region}\" }}\n"),
    )
}

fn region_of_a_new_operation(serve: &Serve) -> String {
    serve.note_of(r#"{"scenario":"read-env","path":"REGION"}"#)
}

#[test]
fn serve_applies_a_changed_config_to_new_runs_on_sighup_and_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_region(dir.path(), "eu-west-1");
    let serve = Serve::with_config(&config);
    assert_eq!(region_of_a_new_operation(&serve), "eu-west-1");

    config_with_region(dir.path(), "us-east-1");
    serve.hang_up();
    eventually("SIGHUP applies the config", || {
        region_of_a_new_operation(&serve) == "us-east-1"
    });

    config_with_region(dir.path(), "ap-south-1");
    crate::runtime().block_on(async {
        let http = opshost_tests::net::http();
        let url = format!("{}/v1/config/reload", serve.url);
        let refused = http
            .post(&url)
            .bearer_auth(token(&["testing.run"]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            403,
            "reloading takes the admin capability"
        );
        let reloaded = http
            .post(&url)
            .bearer_auth(token(&["opshost.admin"]))
            .send()
            .await
            .unwrap();
        assert_eq!(reloaded.status(), 200);
        let reloaded: Value = reloaded.json().await.unwrap();
        assert_eq!(
            reloaded["changes"],
            serde_json::json!(["operation Testing.Scenario: grants.env changed: REGION"])
        );
    });
    assert_eq!(region_of_a_new_operation(&serve), "ap-south-1");
}
