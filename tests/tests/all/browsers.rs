//! What browsers need of the API, over real HTTP on 127.0.0.1: CORS for listed origins, watch
//! tokens for `EventSource` (which cannot send `Authorization`), and HTTPS.

use std::time::Duration;

use futures::StreamExt;
use opshost_client::{Client, ClientError, ClientOptions};
use opshost_server::ServerConfig;
use opshost_tests::net::{TestServer, json_of, token};
use opshost_tests::tls::TestCerts;
use opshost_tests::{load, testing_deployment};
use serde_json::json;

const CONSOLE: &str = "http://console.test:9000";

fn with_origins(origins: &[&str]) -> ServerConfig {
    ServerConfig {
        cors_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        ..ServerConfig::default()
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_a_listed_origin_is_allowed_with_the_apis_headers() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start_with(host.runtime(), with_origins(&[CONSOLE])).await;
    let http = opshost_tests::net::http();
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/operations/Testing.Scenario", server.url),
        )
        .header("origin", CONSOLE)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key, last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(header(&preflight, "access-control-allow-origin"), CONSOLE);
    let allowed = header(&preflight, "access-control-allow-headers").to_ascii_lowercase();
    for wanted in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
    ] {
        assert!(allowed.contains(wanted), "{wanted} not in `{allowed}`");
    }
    assert!(header(&preflight, "access-control-allow-methods").contains("POST"));

    let answer = http
        .post(format!("{}/v1/operations/Testing.Scenario", server.url))
        .header("origin", CONSOLE)
        .bearer_auth(token(&["testing.run"]))
        .json(&json!({ "scenario": "complete" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    assert_eq!(header(&answer, "access-control-allow-origin"), CONSOLE);
    assert!(
        header(&answer, "access-control-expose-headers")
            .to_ascii_lowercase()
            .contains("retry-after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_listed_and_a_host_listing_none_allow_no_cross_origin_call() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let listing = TestServer::start_with(host.runtime(), with_origins(&[CONSOLE])).await;
    let none = TestServer::start(host.runtime()).await;
    let http = opshost_tests::net::http();
    for (server, origin) in [(&listing, "http://evil.test"), (&none, CONSOLE)] {
        let preflight = http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/operations/Testing.Scenario", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&preflight, "access-control-allow-origin"),
            "",
            "{origin} at {}",
            server.url
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_token_lets_an_event_source_watch_its_operation_and_nothing_else() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start_with(host.runtime(), with_origins(&[CONSOLE])).await;
    let http = opshost_tests::net::http();
    let caller = token(&["testing.run"]);
    let url = |path: String| format!("{}{path}", server.url);
    let start = || {
        json_of(
            http.post(url("/v1/operations/Testing.Scenario".to_owned()))
                .bearer_auth(&caller)
                .json(&json!({ "scenario": "echo-signals", "signals": 1 })),
        )
    };
    let (waiting, other) = (start().await, start().await);
    let (waiting, other) = (
        waiting["id"].as_str().unwrap().to_owned(),
        other["id"].as_str().unwrap().to_owned(),
    );

    let refused = http
        .post(url(format!("/v1/operations/{}/watch-token", waiting)))
        .bearer_auth(token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        403,
        "minting takes the observe capability"
    );
    let minted = json_of(
        http.post(url(format!("/v1/operations/{}/watch-token", waiting)))
            .bearer_auth(&caller),
    )
    .await;
    let watch = minted["token"].as_str().unwrap().to_owned();
    assert!(minted["expiresAt"].is_string(), "{minted}");
    let events = minted["events"].as_str().unwrap();
    assert_eq!(
        events,
        format!("/v1/operations/{}/events?access_token={watch}", waiting)
    );

    // As an `EventSource` would: no `Authorization`, the token in the query.
    let stream = http
        .get(url(events.to_owned()))
        .header("origin", CONSOLE)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(header(&stream, "content-type"), "text/event-stream");
    assert_eq!(header(&stream, "access-control-allow-origin"), CONSOLE);
    let mut body = stream.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains(&waiting),
        "{}",
        String::from_utf8_lossy(&first)
    );

    let status = |path: String, bearer: Option<String>| {
        let request = http.get(url(path));
        let request = match bearer {
            Some(bearer) => request.bearer_auth(bearer),
            None => request,
        };
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        status(
            format!("/v1/operations/{}/events?access_token={watch}", other),
            None
        )
        .await,
        401,
        "another operation's events"
    );
    assert_eq!(
        status(
            format!("/v1/operations/{}?access_token={watch}", waiting),
            None
        )
        .await,
        401,
        "any other route"
    );
    assert_eq!(
        status(format!("/v1/operations/{}", waiting), Some(watch.clone())).await,
        401,
        "a watch token is no bearer token"
    );
    assert_eq!(
        status(
            format!("/v1/operations/{}/events?access_token={caller}", waiting),
            None
        )
        .await,
        401,
        "a bearer token is never taken from a query string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_serves_https_and_the_client_trusts_a_ca_file() {
    let certs = TestCerts::new();
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let config = ServerConfig {
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(certs.key.clone()),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(host.runtime(), config).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let caller = token(&["testing.run"]);

    let trusting = Client::with_options(
        &server.url,
        &caller,
        &ClientOptions {
            ca_file: Some(certs.ca.clone()),
        },
    )
    .unwrap();
    let started = trusting
        .start(
            "Testing.Scenario",
            &json!({ "scenario": "complete" }),
            &Default::default(),
        )
        .await
        .unwrap();
    let done = trusting.wait(&started.id).await.unwrap();
    assert_eq!(done.output.unwrap()["note"], "attempt 1");

    let untrusting = Client::new(&server.url, &caller).unwrap();
    let error = untrusting.get(&started.id).await.unwrap_err();
    let chain = error_chain(&error);
    assert!(
        matches!(error, ClientError::Transport(_)) && chain.contains("UnknownIssuer"),
        "a certificate no trusted CA signed is refused: {chain}"
    );
    let plain = server.url.replacen("https://", "http://", 1);
    let over_plain = opshost_tests::net::http()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    match over_plain {
        Err(error) => assert!(!error.is_connect(), "the port is open: {error}"),
        Ok(answer) => panic!("plain HTTP was answered {}", answer.status()),
    }
    let missing = Client::with_options(
        &server.url,
        &caller,
        &ClientOptions {
            ca_file: Some(certs.ca.with_file_name("nowhere.pem")),
        },
    )
    .err()
    .expect("a CA file that does not exist is refused");
    assert!(missing.to_string().contains("nowhere.pem"), "{missing}");
    let empty = certs.ca.with_file_name("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = Client::with_options(
        &server.url,
        &caller,
        &ClientOptions {
            ca_file: Some(empty),
        },
    )
    .err()
    .expect("a CA file with no certificate is refused");
    assert!(empty.to_string().contains("no certificate"), "{empty}");
}

/// An error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        chain.push_str(&format!(": {next}"));
        cause = next.source();
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_v1_api_answers_cross_origin_calls() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start_with(host.runtime(), with_origins(&[CONSOLE])).await;
    let http = opshost_tests::net::http();
    for path in ["/metrics", "/healthz", "/openapi.json"] {
        let answer = http
            .get(format!("{}{path}", server.url))
            .header("origin", CONSOLE)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&answer, "access-control-allow-origin"), "", "{path}");
    }
    let answer = http
        .get(format!("{}/v1/contract", server.url))
        .header("origin", CONSOLE)
        .bearer_auth(token(&["testing.run"]))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&answer, "access-control-allow-origin"), CONSOLE);
    assert!(
        header(&answer, "vary")
            .to_ascii_lowercase()
            .contains("origin")
    );
}

#[test]
fn a_cors_origin_or_a_tls_file_that_cannot_be_used_is_refused_naming_it() {
    let certs = TestCerts::new();
    let refused = |config: ServerConfig| config.check().unwrap_err().to_string();
    let error = refused(with_origins(&[CONSOLE, "https://console.test/app"]));
    assert!(error.contains("server.cors_origins[1]"), "{error}");
    let error = refused(with_origins(&["console.test"]));
    assert!(error.contains("server.cors_origins[0]"), "{error}");
    let error = refused(with_origins(&["*", CONSOLE]));
    assert!(error.contains("server.cors_origins[1]"), "{error}");
    let error = refused(with_origins(&["https://console.test:443"]));
    assert!(error.contains("default port"), "{error}");
    let error = refused(ServerConfig {
        tls_cert: Some(certs.cert.clone()),
        ..ServerConfig::default()
    });
    assert!(error.contains("server.tls_key"), "{error}");
    let error = refused(ServerConfig {
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(certs.ca.clone()),
        ..ServerConfig::default()
    });
    assert!(error.contains("server.tls_key"), "{error}");
    let error = refused(ServerConfig {
        tls_cert: Some(certs.key.with_file_name("missing.pem")),
        tls_key: Some(certs.key.clone()),
        ..ServerConfig::default()
    });
    assert!(
        error.contains("server.tls_cert") && error.contains("missing.pem"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_under_a_policy_that_loads_nothing_else() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let http = opshost_tests::net::http();
    let mut served = 0;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            header(&response, "content-type").starts_with(kind),
            "{path}"
        );
        let policy = header(&response, "content-security-policy").to_owned();
        let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
        for only in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(directives.contains(&only), "{only} in {policy}");
        }
        // No inline script or style, no eval, no other origin.
        assert!(
            directives
                .iter()
                .all(|directive| !directive.contains("unsafe") && !directive.contains('*')),
            "{policy}"
        );
        served += response.bytes().await.unwrap().len();
    }
    assert_eq!(served, opshost_server::console_size());
    // Without a development token, none is offered.
    let offer = http
        .get(format!("{}/console/dev-token", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(offer.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_says_who_the_caller_is_and_what_it_may_do_to_each_operation() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let me = json_of(
        opshost_tests::net::http()
            .get(format!("{}/v1/me", server.url))
            .bearer_auth(token(&["testing.run"])),
    )
    .await;
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["admin"], false);
    assert_eq!(
        me["operations"]["Testing.Scenario"],
        json!(["call", "observe", "cancel", "control"])
    );
    let onlooker = json_of(
        opshost_tests::net::http()
            .get(format!("{}/v1/me", server.url))
            .bearer_auth(token(&["opshost.admin"])),
    )
    .await;
    assert_eq!(onlooker["admin"], true);
    assert_eq!(onlooker["operations"]["Testing.Scenario"], json!([]));
    assert_eq!(
        onlooker["operations"]["Testing.Uncancellable"],
        json!(["observe"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_token_is_offered_only_to_pages_opened_by_a_loopback_name() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let config = ServerConfig {
        console_dev_token: Some("dev-token-for-tests".into()),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(host.runtime(), config).await;
    let http = opshost_tests::net::http();
    let address = server.url.trim_start_matches("http://").to_owned();
    let port = address.rsplit_once(':').unwrap().1.to_owned();
    for (name, offered) in [
        (address.clone(), true),
        (format!("localhost:{port}"), true),
        (format!("attacker.example:{port}"), false),
        ("attacker.example".to_owned(), false),
    ] {
        let response = http
            .get(format!("{}/console/dev-token", server.url))
            .header("host", &name)
            .send()
            .await
            .unwrap();
        if offered {
            assert_eq!(response.status(), 200, "{name}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["token"], "dev-token-for-tests");
        } else {
            assert_eq!(response.status(), 404, "{name}");
        }
    }
}
