//! Outbound HTTP from guests: the test-egress guest under the real host calls real servers on
//! 127.0.0.1. Each hostile request is refused with a code the guest reads, recorded with its
//! operation, and leaves another operation on the same host unaffected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use opshost_api::{ErrorCode, LogStream, OperationState, Snapshot};
use opshost_sandbox::egress::{AllowList, HttpGrant, Origin, Scheme, SecretSource, special};
use opshost_sandbox::{DeploymentConfig, LimitsTable, SandboxError, WasmHost, check_component};
use opshost_tests::upstream::Upstream;
use opshost_tests::{guest, load, start_scenario, testing_deployment, wait_terminal};
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_millis(300);

/// `Testing.Scenario` served by the test-egress guest, granted `allow`.
fn deployment(allow: &[String]) -> DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = guest("test_egress");
    config.handlers[0].grants.http = Some(HttpGrant {
        allow: allow.to_vec(),
        headers: BTreeMap::new(),
    });
    config
}

/// Runs `input` and answers its terminal snapshot, after a healthy fetch of `healthy` started
/// beside it completed with status 200.
async fn beside_a_healthy_fetch(host: &WasmHost, healthy: &str, input: Value) -> Snapshot {
    let hostile = start_scenario(host, input).await;
    let healthy = start_scenario(host, json!({ "scenario": "fetch", "url": healthy })).await;
    let terminal = wait_terminal(host, &hostile.id).await;
    let healthy = wait_terminal(host, &healthy.id).await;
    assert_eq!(note(&healthy)["status"], 200, "{healthy:?}");
    terminal
}

/// Asserts the operation failed with `LimitExceeded` naming `limit`.
fn assert_limit_exceeded(terminal: Snapshot, limit: &str) {
    assert_eq!(terminal.state, OperationState::Failed, "{terminal:?}");
    let error = terminal.error.expect("an error");
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(error.message.contains(limit), "{}", error.message);
}

/// What the guest saw, from its completed operation's note.
fn note(snapshot: &Snapshot) -> Value {
    assert_eq!(snapshot.state, OperationState::Completed, "{snapshot:?}");
    let text = snapshot.output.as_ref().expect("an output")["note"]
        .as_str()
        .expect("a note")
        .to_owned();
    serde_json::from_str(&text).expect("the note is JSON")
}

/// One outbound request, as its operation's logs show it.
#[derive(Debug)]
struct Request {
    attempt: u32,
    method: String,
    origin: String,
    path: String,
    status: Option<u16>,
    duration_ms: u64,
    bytes: u64,
    denied: Option<String>,
    error: Option<String>,
}

/// The outbound requests in `snapshot`'s operation's logs (stream `http`), oldest first.
async fn records(host: &WasmHost, snapshot: &Snapshot) -> Vec<Request> {
    host.runtime().log_sink().flush().await;
    let lines = host.runtime().logs(&snapshot.id, 0, 10_000).await.unwrap();
    lines
        .into_iter()
        .filter(|line| line.stream == LogStream::Http)
        .map(|line| {
            let field = |name: &str| line.fields.get(name).cloned();
            let number = |name: &str| field(name).map_or(0, |v| v.parse().unwrap());
            Request {
                attempt: line.attempt,
                method: field("method").unwrap(),
                origin: field("origin").unwrap(),
                path: field("path").unwrap(),
                status: field("status").map(|v| v.parse().unwrap()),
                duration_ms: number("duration_ms"),
                bytes: number("bytes"),
                denied: field("denied"),
                error: field("error"),
            }
        })
        .collect()
}

/// Runs `input` alone and answers what the guest saw.
async fn fetch(host: &WasmHost, input: Value) -> (Snapshot, Value) {
    let accepted = start_scenario(host, input).await;
    let snapshot = wait_terminal(host, &accepted.id).await;
    let seen = note(&snapshot);
    (snapshot, seen)
}

#[tokio::test]
async fn a_granted_origin_is_reached_with_the_host_header_of_its_url_and_recorded() {
    let upstream = Upstream::start().await;
    let host = load(&deployment(&[upstream.origin()]));
    let url = upstream.url("/hello?secret=query");
    let (snapshot, seen) = fetch(&host, json!({ "scenario": "fetch", "url": url })).await;
    assert_eq!(seen["status"], 200);
    assert_eq!(seen["body"], r#"{"hello":"world"}"#);
    let got = upstream.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["host"], upstream.address.to_string());
    let records = records(&host, &snapshot).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(
        (record.method.as_str(), record.path.as_str()),
        ("GET", "/hello"),
        "the path without its query"
    );
    assert_eq!(record.origin, upstream.origin() + "");
    assert_eq!((record.status, record.bytes), (Some(200), 17));
    assert_eq!((record.attempt, record.denied.as_ref()), (1, None));
}

#[tokio::test]
async fn a_host_that_is_not_listed_is_denied_and_the_denial_recorded() {
    let upstream = Upstream::start().await;
    let host = load(&deployment(&[upstream.origin()]));
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch", "url": "http://unlisted.test/hello" }),
    )
    .await;
    assert_eq!(note(&terminal)["error"], "HTTP-request-denied");
    let records = records(&host, &terminal).await;
    let denied = records[0].denied.as_deref().unwrap_or_default();
    assert!(denied.contains("not in grants.http.allow"), "{denied}");
    assert!(upstream.seen().iter().all(|seen| seen.uri == "/hello"));
}

#[tokio::test]
async fn a_listed_name_reached_through_its_ip_literal_is_denied() {
    let upstream = Upstream::start().await;
    let port = upstream.address.port();
    let mut config = deployment(&[format!("http://payments.test:{port}")]);
    config.egress.hosts = BTreeMap::from([("payments.test".into(), vec![public_address()])]);
    let host = load(&config);
    let literal = format!("http://{}:{port}/hello", public_address());
    let (snapshot, seen) = fetch(&host, json!({ "scenario": "fetch", "url": literal })).await;
    assert_eq!(seen["error"], "HTTP-request-denied");
    let denied = records(&host, &snapshot).await[0]
        .denied
        .clone()
        .unwrap_or_default();
    assert!(denied.contains("not in grants.http.allow"), "{denied}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn the_cloud_metadata_address_is_denied_by_name_and_by_literal() {
    let mut config = deployment(&["http://metadata.test".into()]);
    config.egress.hosts = BTreeMap::from([(
        "metadata.test".into(),
        vec!["169.254.169.254".parse().unwrap()],
    )]);
    let host = load(&config);
    let (by_name, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": "http://metadata.test/latest/meta-data/" }),
    )
    .await;
    assert_eq!(seen["error"], "HTTP-request-denied");
    let denied = records(&host, &by_name).await[0]
        .denied
        .clone()
        .unwrap_or_default();
    assert!(
        denied.contains("169.254.169.254") && denied.contains("link-local"),
        "{denied}"
    );
    let (_, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": "http://169.254.169.254/latest/meta-data/" }),
    )
    .await;
    assert_eq!(seen["error"], "HTTP-request-denied");
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_denied_unless_an_entry_names_the_address() {
    let upstream = Upstream::start().await;
    let port = upstream.address.port();
    let name = format!("http://api.test:{port}");
    let loopback = BTreeMap::from([("api.test".into(), vec!["127.0.0.1".parse().unwrap()])]);
    let mut config = deployment(std::slice::from_ref(&name));
    config.egress.hosts = loopback.clone();
    let host = load(&config);
    let input = json!({ "scenario": "fetch", "url": format!("{name}/hello") });
    let (refused, seen) = fetch(&host, input.clone()).await;
    assert_eq!(seen["error"], "HTTP-request-denied");
    let denied = records(&host, &refused).await[0]
        .denied
        .clone()
        .unwrap_or_default();
    assert!(denied.contains("loopback"), "{denied}");
    assert!(upstream.seen().is_empty());

    let mut config = deployment(&[name, format!("http://127.0.0.1:{port}")]);
    config.egress.hosts = loopback;
    let host = load(&config);
    let (_, seen) = fetch(&host, input).await;
    assert_eq!(seen["status"], 200);
    assert_eq!(
        upstream.seen()[0].headers["host"],
        format!("api.test:{port}")
    );
}

#[tokio::test]
async fn a_redirect_is_handed_to_the_guest_and_its_unlisted_target_is_denied() {
    let upstream = Upstream::start().await;
    let host = load(&deployment(&[upstream.origin()]));
    let url = upstream.url("/redirect?to=http://elsewhere.test/steal");
    let (snapshot, seen) = fetch(&host, json!({ "scenario": "fetch-follow", "url": url })).await;
    assert_eq!(seen["redirect"], "http://elsewhere.test/steal");
    assert_eq!(seen["then"]["error"], "HTTP-request-denied");
    assert_eq!(upstream.seen().len(), 1, "the host did not follow it");
    let records = records(&host, &snapshot).await;
    assert_eq!(records[0].status, Some(302));
    assert_eq!(records[1].origin, "http://elsewhere.test:80");
    assert!(records[1].denied.is_some(), "{records:?}");
}

#[tokio::test]
async fn a_guest_cannot_set_the_host_header() {
    let upstream = Upstream::start().await;
    let host = load(&deployment(&[upstream.origin()]));
    let (_, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": upstream.url("/hello"), "header": "host: evil.test" }),
    )
    .await;
    assert_eq!(seen["error"], "header-refused", "{seen}");
    assert!(upstream.seen().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_gigabyte_response_stops_at_the_size_limit() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.http_max_response_bytes = Some(1 << 20);
    let host = load(&config);
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch", "url": upstream.url("/big") }),
    )
    .await;
    let seen = note(&terminal);
    assert_eq!(seen["error"], "HTTP-response-body-size", "{seen}");
    let record = records(&host, &terminal).await.remove(0);
    assert!(record.bytes <= (1 << 20) + (64 << 10), "{record:?}");
    let error = record.error.unwrap_or_default();
    assert!(error.contains("http_max_response_bytes"), "{error}");
}

/// Fetches `path` of a fresh server under `limit` beside a healthy fetch; asserts the guest
/// read `connection-read-timeout` within 5 s and answers the request's record.
async fn timed_out(path: &str, limit: impl FnOnce(&mut LimitsTable)) -> Request {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    limit(&mut config.limits);
    let host = load(&config);
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch", "url": upstream.url(path) }),
    )
    .await;
    assert_eq!(note(&terminal)["error"], "connection-read-timeout");
    let record = records(&host, &terminal).await.remove(0);
    assert!(record.duration_ms < 5_000, "{record:?}");
    record
}

#[tokio::test]
async fn a_server_that_drips_a_byte_a_second_times_out_between_bytes() {
    let record = timed_out("/drip", |limits| {
        limits.http_between_bytes_timeout_ms = Some(300);
    })
    .await;
    let error = record.error.unwrap_or_default();
    assert!(error.contains("http_between_bytes_timeout_ms"), "{error}");
}

#[tokio::test]
async fn a_guest_looping_over_requests_ends_in_limit_exceeded_naming_the_limit() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits = LimitsTable {
        http_max_requests: Some(50),
        ..LimitsTable::default()
    };
    let host = load(&config);
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch-loop", "url": upstream.url("/hello"), "count": 100_000 }),
    )
    .await;
    assert_limit_exceeded(terminal, "limits.http_max_requests");
    let sent = upstream.seen().len();
    assert_eq!(sent, 50 + 1, "50 from the loop and 1 healthy fetch");
}

/// What a guest that reads `echo` of a server holding a secret and posts what it saw to
/// another origin leaves behind.
struct Exfiltrated {
    secret: String,
    other: Upstream,
    host: WasmHost,
    snapshot: Snapshot,
    seen: Value,
    _dir: tempfile::TempDir,
}

/// Runs the exfiltrate scenario: `GET` of `echo` on the origin the secret is for, then a
/// `POST` of everything its response showed to another origin.
async fn exfiltrate(echo: &str) -> Exfiltrated {
    let (upstream, other) = (Upstream::start().await, Upstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (secret, config) = with_secret(&upstream, &other, dir.path());
    let host = load(&config);
    let (snapshot, seen) = fetch(
        &host,
        json!({ "scenario": "exfiltrate", "url": upstream.url(echo), "then": other.url("/collect") }),
    )
    .await;
    Exfiltrated {
        secret,
        other,
        host,
        snapshot,
        seen,
        _dir: dir,
    }
}

/// A secret written to a file, its source, and the deployment granting `upstream` with an
/// `authorization` header built from it and `other` with nothing.
fn with_secret(
    upstream: &Upstream,
    other: &Upstream,
    dir: &std::path::Path,
) -> (String, DeploymentConfig) {
    let secret = format!("tok-{}", ulid::Ulid::new());
    let file = dir.join("payments-token");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let mut config = deployment(&[upstream.origin(), other.origin()]);
    config.secrets = BTreeMap::from([(
        "PAYMENTS_TOKEN".into(),
        SecretSource {
            env: None,
            file: Some(file),
        },
    )]);
    config.handlers[0].grants.http.as_mut().unwrap().headers = BTreeMap::from([(
        upstream.origin(),
        BTreeMap::from([(
            "authorization".into(),
            "Bearer {{ secrets.PAYMENTS_TOKEN }}".into(),
        )]),
    )]);
    (secret, config)
}

#[tokio::test]
async fn a_secret_header_is_added_by_the_host_and_stripped_from_what_the_guest_sees() {
    let (upstream, other) = (Upstream::start().await, Upstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (secret, config) = with_secret(&upstream, &other, dir.path());
    let host = load(&config);
    let (snapshot, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": upstream.url("/echo") }),
    )
    .await;
    assert_eq!(seen["status"], 200);
    assert_eq!(
        upstream.seen()[0].headers["authorization"],
        format!("Bearer {secret}"),
        "the host added it"
    );
    let output = serde_json::to_string(&snapshot).unwrap();
    assert!(
        !output.contains(&secret),
        "the guest never saw it: {output}"
    );
    assert!(
        seen["headers"].get("x-echo-authorization").is_none(),
        "{seen}"
    );
    assert!(
        seen["headers"].get("x-echo-host").is_some(),
        "other echoes are kept: {seen}"
    );
}

#[tokio::test]
async fn a_guest_echoing_its_request_to_another_origin_sends_no_secret() {
    let exfiltrated = exfiltrate("/echo").await;
    let (secret, other, seen) = (
        exfiltrated.secret.as_str(),
        &exfiltrated.other,
        &exfiltrated.seen,
    );
    assert_eq!(seen["posted"], 404, "{seen}");
    let collected = other.seen();
    assert_eq!(collected.len(), 1);
    assert!(!collected[0].body.contains(secret), "{:?}", collected[0]);
    assert!(collected[0].headers.values().all(|v| !v.contains(secret)));
    assert!(!collected[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_missing_secret_stops_the_load_naming_it() {
    let mut config = deployment(&["https://payments.example.com".into()]);
    config.secrets = BTreeMap::from([(
        "PAYMENTS_TOKEN".into(),
        SecretSource {
            env: Some("OPSHOST_TEST_SECRET_THAT_IS_NEVER_SET".into()),
            file: None,
        },
    )]);
    let error = WasmHost::from_config(&config).err().expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("PAYMENTS_TOKEN")
            && message.contains("OPSHOST_TEST_SECRET_THAT_IS_NEVER_SET"),
        "{message}"
    );
}

#[tokio::test]
async fn a_header_for_an_origin_the_grant_does_not_allow_stops_the_load() {
    let mut config = deployment(&["https://payments.example.com".into()]);
    config.handlers[0].grants.http.as_mut().unwrap().headers = BTreeMap::from([(
        "https://elsewhere.example.com".into(),
        BTreeMap::from([("x-key".into(), "plain".into())]),
    )]);
    let error = WasmHost::from_config(&config).err().expect("refused");
    assert!(matches!(error, SandboxError::Grant { .. }), "{error}");
    assert!(
        error.to_string().contains("elsewhere.example.com"),
        "{error}"
    );
}

#[tokio::test]
async fn a_component_importing_http_without_grants_http_is_refused_at_load_and_by_check() {
    let mut config = deployment(&[]);
    config.handlers[0].grants.http = None;
    let error = WasmHost::from_config(&config).err().expect("refused");
    assert!(
        matches!(&error, SandboxError::UngrantedImports { imports, .. } if imports.iter().any(|i| i.starts_with("wasi:http/"))),
        "{error}"
    );
    let problems = check_component(&config, &guest("test_egress")).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("wasi:http/outgoing-handler")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn an_empty_allow_list_refuses_every_request() {
    let upstream = Upstream::start().await;
    let host = load(&deployment(&[]));
    let (_, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": upstream.url("/hello") }),
    )
    .await;
    assert_eq!(seen["error"], "HTTP-request-denied");
    assert!(upstream.seen().is_empty());
}

/// A public address, only ever checked, never connected to, in the test that uses it.
fn public_address() -> IpAddr {
    "93.184.216.34".parse().unwrap()
}

fn list(entries: &[&str]) -> AllowList {
    AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
}

fn origin(scheme: Scheme, host: &str, port: Option<u16>) -> Origin {
    Origin::new(scheme, host, port)
}

#[test]
fn an_allow_entry_admits_its_origin_on_its_default_port_only() {
    let allow = list(&["https://payments.example.com"]);
    assert!(allow.admits(&origin(Scheme::Https, "Payments.Example.com", None)));
    assert!(allow.admits(&origin(Scheme::Https, "payments.example.com", Some(443))));
    assert!(!allow.admits(&origin(Scheme::Https, "payments.example.com", Some(8443))));
    assert!(!allow.admits(&origin(Scheme::Http, "payments.example.com", None)));
    assert!(!allow.admits(&origin(Scheme::Https, "example.com", None)));
}

#[test]
fn a_wildcard_entry_admits_subdomains_but_not_the_name_itself() {
    let allow = list(&["https://*.carrier.example:8443"]);
    assert!(allow.admits(&origin(Scheme::Https, "eu.carrier.example", Some(8443))));
    assert!(allow.admits(&origin(Scheme::Https, "a.b.carrier.example", Some(8443))));
    assert!(!allow.admits(&origin(Scheme::Https, "carrier.example", Some(8443))));
    assert!(!allow.admits(&origin(Scheme::Https, "evilcarrier.example", Some(8443))));
}

#[test]
fn an_ip_literal_matches_only_entries_that_name_addresses() {
    let allow = list(&["http://localhost:9000", "http://10.0.0.0/8:80"]);
    assert!(!allow.admits(&origin(Scheme::Http, "127.0.0.1", Some(9000))));
    assert!(allow.admits(&origin(Scheme::Http, "10.1.2.3", None)));
    let named = origin(Scheme::Http, "db.internal", None);
    assert!(allow.names_address(&named, "10.9.9.9".parse().unwrap()));
    assert!(!allow.names_address(&named, "192.168.0.1".parse().unwrap()));
    let v6 = list(&["http://[fd00::1]:8080"]);
    assert!(v6.admits(&origin(Scheme::Http, "[fd00::1]", Some(8080))));
}

#[test]
fn bad_allow_entries_are_refused_with_the_entry_and_the_reason() {
    for (entry, why) in [
        ("payments.example.com", "scheme://host"),
        ("ftp://x.example", "http or https"),
        ("https://x.example/path", "no path"),
        ("https://x.*.example", "not a host name"),
        ("https://x.example:http", "not a port"),
        ("https://", "empty"),
    ] {
        let error = AllowList::parse(&[entry.to_owned()]).unwrap_err();
        assert!(error.contains(why) && error.contains(entry), "{error}");
    }
}

#[test]
fn loopback_private_link_local_multicast_and_unspecified_addresses_are_special() {
    for (ip, kind) in [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.1.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast or reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:a9fe:a9fe::1", "link-local"),
        ("::a9fe:a9fe", "link-local"),
        ("64:ff9b:1::1", "translated or tunnelled"),
        ("2001::1", "translated or tunnelled"),
        ("fec0::1", "private"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("192.0.0.8", "reserved"),
        ("2001:db8::1", "reserved"),
    ] {
        assert_eq!(special(ip.parse().unwrap()), Some(kind), "{ip}");
    }
    for public in ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"] {
        assert_eq!(special(public.parse().unwrap()), None, "{public}");
    }
}

#[tokio::test]
async fn a_secret_echoed_in_a_body_cannot_be_sent_to_another_origin() {
    let exfiltrated = exfiltrate("/echo-body").await;
    let (secret, other, seen) = (
        exfiltrated.secret.as_str(),
        &exfiltrated.other,
        &exfiltrated.seen,
    );
    let (host, snapshot) = (&exfiltrated.host, &exfiltrated.snapshot);
    assert!(
        seen["saw"]["body"].as_str().unwrap().contains(secret),
        "this server reflects it in its body"
    );
    let posted = seen["posted"].as_str().unwrap_or_default();
    assert!(posted.starts_with("HTTP-request-denied"), "{seen}");
    assert!(other.seen().is_empty(), "nothing reached the other origin");
    let records = records(host, snapshot).await;
    let denied = records[1].denied.clone().unwrap_or_default();
    assert!(
        denied.contains("carries a secret held for another origin"),
        "{records:?}"
    );
}

#[tokio::test]
async fn time_spent_waiting_on_the_network_is_not_cpu_time() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.cpu_ms = Some(200);
    let host = load(&config);
    let (_, seen) = fetch(
        &host,
        json!({ "scenario": "fetch-loop", "url": upstream.url("/slow"), "count": 40 }),
    )
    .await;
    assert_eq!(
        seen["ok"], 40,
        "40 waits of 50 ms under 200 ms of CPU: {seen}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_at_the_first_byte() {
    let record = timed_out("/stall", |limits| {
        limits.http_first_byte_timeout_ms = Some(300);
    })
    .await;
    assert!(record.error.is_some(), "{record:?}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.http_max_response_bytes = Some(1 << 20);
    let host = load(&config);
    let (snapshot, seen) = fetch(
        &host,
        json!({ "scenario": "fetch", "url": upstream.url("/large") }),
    )
    .await;
    assert_eq!(seen["error"], "HTTP-response-body-size");
    let record = records(&host, &snapshot).await.remove(0);
    assert_eq!((record.status, record.bytes), (Some(200), 0));
}

#[tokio::test]
async fn a_guest_that_keeps_fetching_oversized_responses_ends_in_limit_exceeded() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.http_max_response_bytes = Some(1 << 20);
    let host = load(&config);
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch-loop", "url": upstream.url("/large"), "count": 1000 }),
    )
    .await;
    assert_limit_exceeded(terminal, "limits.http_max_response_bytes");
}

/// Hands `count` slow requests to the host at once under `config`; asserts `ok` of them
/// answered and the rest were refused with `connection-limit-reached`, each recorded with a
/// reason naming `limit`.
async fn parallel_refusals(
    config: &DeploymentConfig,
    url: String,
    count: u64,
    ok: u64,
    limit: &str,
) {
    let host = load(config);
    let input = json!({ "scenario": "fetch-parallel", "url": url, "count": count });
    let (snapshot, seen) = fetch(&host, input).await;
    assert_eq!(seen["ok"], ok, "{seen}");
    let refused = count - ok;
    assert_eq!(
        seen["errors"]["ErrorCode::ConnectionLimitReached"], refused,
        "{seen}"
    );
    let records = records(&host, &snapshot).await;
    let named = records
        .iter()
        .filter(|r| r.denied.as_deref().is_some_and(|d| d.contains(limit)))
        .count();
    assert_eq!(named as u64, refused, "{records:?}");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_refused_until_others_end() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.http_max_in_flight = Some(3);
    parallel_refusals(&config, upstream.url("/slow"), 6, 3, "http_max_in_flight").await;
}

#[tokio::test]
async fn requests_beyond_the_hosts_outbound_cap_are_refused() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.egress.max_connections = Some(2);
    parallel_refusals(&config, upstream.url("/slow"), 5, 2, "max_connections").await;
}

#[tokio::test]
async fn refused_requests_count_against_the_runs_total_too() {
    let upstream = Upstream::start().await;
    let mut config = deployment(&[upstream.origin()]);
    config.limits.http_max_requests = Some(50);
    let host = load(&config);
    let terminal = beside_a_healthy_fetch(
        &host,
        &upstream.url("/hello"),
        json!({ "scenario": "fetch-loop", "url": "http://unlisted.test/", "count": 100_000 }),
    )
    .await;
    assert_limit_exceeded(terminal, "limits.http_max_requests");
}
