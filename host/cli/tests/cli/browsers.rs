//! `opshost serve` for browsers, driven from outside: HTTPS with a certificate made in the test
//! (its files named relative to the config), the CLI trusting its CA with `--ca-file`, and a
//! CORS preflight of a listed origin.

use opshost_tests::tls::TestCerts;

use crate::shutdown::write_config;
use crate::{Serve, eventually, json, text};

#[test]
fn serve_over_https_is_driven_by_the_cli_trusting_a_ca_file() {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::copy(&certs.cert, dir.path().join("tls/server.pem")).unwrap();
    std::fs::copy(&certs.key, dir.path().join("tls/server-key.pem")).unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        "[server]\ntls_cert = \"tls/server.pem\"\ntls_key = \"tls/server-key.pem\"\n\
         cors_origins = [\"https://console.test\"]\n",
    );
    let serve = Serve::with_config(&config);
    assert!(serve.url.starts_with("https://127.0.0.1:"), "{}", serve.url);
    let ca = certs.ca.display().to_string();
    let trusted = serve.run_scenario(r#"{"scenario":"complete"}"#, &["--ca-file", &ca]);
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
    assert_eq!(json(&trusted)["state"], "completed");

    let preflight = crate::runtime().block_on(async {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(trusting_ca(&certs.ca))
            .build()
            .unwrap();
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/operations/Testing.Scenario", serve.url),
        )
        .header("origin", "https://console.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, idempotency-key",
        )
        .send()
        .await
        .unwrap()
    });
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|value| value.to_str().unwrap_or_default()),
        Some("https://console.test")
    );

    let untrusted = serve.run_scenario(r#"{"scenario":"complete"}"#, &[]);
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

/// TLS settings trusting only the CA at `ca`.
fn trusting_ca(ca: &std::path::Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

#[test]
fn serve_reads_a_renewed_certificate_on_sighup() {
    let (first, renewed) = (TestCerts::new(), TestCerts::new());
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let install = |certs: &TestCerts| {
        std::fs::copy(&certs.cert, tls.join("server.pem")).unwrap();
        std::fs::copy(&certs.key, tls.join("server-key.pem")).unwrap();
    };
    install(&first);
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        "[server]\ntls_cert = \"tls/server.pem\"\ntls_key = \"tls/server-key.pem\"\n",
    );
    let serve = Serve::with_config(&config);
    let succeeds_trusting = |ca: &std::path::Path| {
        let ca = ca.display().to_string();
        let output = serve.run_scenario(r#"{"scenario":"complete"}"#, &["--ca-file", &ca]);
        output.status.success()
    };
    assert!(succeeds_trusting(&first.ca));
    assert!(!succeeds_trusting(&renewed.ca));

    install(&renewed);
    serve.hang_up();
    eventually("the renewed certificate is served", || {
        succeeds_trusting(&renewed.ca)
    });
    assert!(
        !succeeds_trusting(&first.ca),
        "new connections get the renewed certificate"
    );

    // A config that drops TLS (and grants REGION) is refused whole: the grant is not applied.
    write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        "[handlers.grants]\nenv = { REGION = \"eu-west-1\" }\n",
    );
    let refused = crate::runtime().block_on(async {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(trusting_ca(&renewed.ca))
            .build()
            .unwrap();
        http.post(format!("{}/v1/config/reload", serve.url))
            .bearer_auth(crate::common::token(&["opshost.admin"]))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(refused.status(), 400);
    let ca = renewed.ca.display().to_string();
    let region = serve.run_scenario(
        r#"{"scenario":"read-env","path":"REGION"}"#,
        &["--ca-file", &ca],
    );
    assert_eq!(
        json(&region)["state"],
        "failed",
        "the refused reload granted nothing"
    );
}

#[test]
fn the_console_offers_no_development_token_when_the_host_listens_beyond_this_machine() {
    let data = tempfile::tempdir().unwrap();
    let config = crate::root().join("contracts/orders.deploy.toml");
    let (mut child, url) = crate::common::serve_with(
        &config,
        &["--data-dir".as_ref(), data.path().as_os_str()],
        "0.0.0.0:0",
        &[("OPSHOST_CONSOLE_DEV_TOKEN", "a-dev-token")],
    );
    let port = url.rsplit_once(':').unwrap().1.to_owned();
    let offer = crate::runtime().block_on(async {
        opshost_tests::net::http()
            .get(format!("http://127.0.0.1:{port}/console/dev-token"))
            .send()
            .await
            .unwrap()
            .status()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(offer, 404);
}
