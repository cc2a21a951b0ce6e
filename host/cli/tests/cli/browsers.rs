//! `opshost serve` for browsers, driven from outside: HTTPS with a certificate made in the test,
//! the CLI trusting its CA with `--ca-file`, and CORS preflights of a listed origin.

use opshost_tests::tls::TestCerts;

use crate::common::token;
use crate::shutdown::write_config;
use crate::{Serve, json, text};

#[test]
fn serve_over_https_is_driven_by_the_cli_trusting_a_ca_file() {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\ncors_origins = [\"https://console.test\"]\n",
            certs.cert, certs.key
        ),
    );
    let serve = Serve::with_config(&config);
    assert!(serve.url.starts_with("https://127.0.0.1:"), "{}", serve.url);
    let caller = token(&["testing.run"]);
    let start = [
        "start",
        "Testing.Scenario",
        "--input",
        r#"{"scenario":"complete"}"#,
        "--wait",
        "30",
    ];
    let ca = certs.ca.display().to_string();
    let trusted = serve.call(&caller, &[&start[..], &["--ca-file", &ca]].concat());
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
    assert_eq!(json(&trusted)["state"], "completed");

    let untrusted = serve.call(&caller, &start);
    assert_eq!(
        untrusted.status.code(),
        Some(4),
        "unreachable without the CA: {}",
        text(&untrusted.stderr)
    );
    assert!(
        text(&untrusted.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        text(&untrusted.stderr)
    );
}

#[test]
fn serve_refuses_a_cors_origin_it_cannot_use_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        "[server]\ncors_origins = [\"https://console.test/app\"]\n",
    );
    let output = crate::common::opshost()
        .args(["serve", "--memory", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .expect("opshost runs");
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("server.cors_origins[0]"),
        "{}",
        text(&output.stderr)
    );
}
