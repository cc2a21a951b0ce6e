//! Versioned deploys: a new version of a handler's component is deployed, ramped and rolled
//! back without a restart; each operation runs the version it was accepted on, after a
//! restart too, and every host on a shared store serves what one deployed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use opshost_api::{DeployAction, DeployTarget, OperationState};
use opshost_sandbox::versions::VersionState;
use opshost_sandbox::{OnRestart, SandboxError, WasmHost};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::net::{TestServer, json_of, token};
use opshost_tests::{guest, load, start_scenario, testing_deployment, wait_terminal};
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_secs(5);
const OPERATION: &str = "Testing.Scenario";

fn target() -> DeployTarget {
    DeployTarget::Operation(OPERATION.to_owned())
}

fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

fn config_on(component: &str) -> opshost_sandbox::DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = guest(component);
    config.handlers[0].on_restart = OnRestart::Retry;
    config
}

/// A host serving `Testing.Scenario` with version `a` of the versioned test guest.
fn host_on_version_a() -> WasmHost {
    load(&config_on("test_version_a"))
}

async fn deploy(host: &WasmHost, component: &str, percent: u8) -> String {
    host.deploy(&target(), bytes_of(component), percent, "tester@acme")
        .await
        .unwrap_or_else(|e| panic!("deploy {component}: {e}"))
}

async fn note_of_completed(host: &WasmHost, input: Value) -> (String, String) {
    let accepted = start_scenario(host, input).await;
    let done = wait_terminal(host, &accepted.id).await;
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    (
        done.output.unwrap()["note"].as_str().unwrap().to_owned(),
        done.component.expect("pinned to a version"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_operations_run_a_deployed_version_and_running_ones_keep_theirs() {
    let host = host_on_version_a();
    let waiting = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let version_a = waiting.component.clone().expect("pinned at accept");

    let version_b = deploy(&host, "test_version_b", 100).await;
    assert_ne!(version_a, version_b);
    let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version b, attempt 1");
    assert_eq!(pinned, version_b);

    host.runtime()
        .signal(&waiting.id, "Note", json!({ "text": "go" }))
        .await
        .unwrap();
    let done = wait_terminal(&host, &waiting.id).await;
    assert_eq!(
        done.output.unwrap()["note"],
        "version a, attempt 1",
        "the operation accepted before the deploy ran its own version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_makes_the_previous_version_current_again_and_is_recorded() {
    let host = host_on_version_a();
    deploy(&host, "test_version_b", 100).await;
    let back = host.rollback(&target(), "oncall@acme").await.unwrap();
    let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
    assert_eq!(pinned, back);
    let error = host.rollback(&target(), "oncall@acme").await.unwrap_err();
    assert!(
        matches!(error, SandboxError::NoEarlierVersion { .. }),
        "{error}"
    );
    let listed = host.deployments();
    let versions = &listed[0].1;
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (versions[0].state, versions[0].sha256.as_str()),
        (VersionState::Current, back.as_str())
    );
    let history = host.deployment_history(10).await.unwrap();
    let made: Vec<(&DeployAction, &str)> = history
        .iter()
        .map(|record| (&record.action, record.by.as_str()))
        .collect();
    assert_eq!(
        made,
        [
            (&DeployAction::Config, "config"),
            (&DeployAction::Deploy { percent: 100 }, "tester@acme"),
            (&DeployAction::Rollback, "oncall@acme"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_fails_its_checks_is_refused_and_changes_nothing() {
    let host = host_on_version_a();
    host.sync_deployments().await.unwrap();
    let before = (
        host.deployments(),
        host.deployment_history(10).await.unwrap(),
    );
    let refuse = |name: &'static str, target: DeployTarget| {
        let host = host.clone();
        async move {
            match host
                .deploy(&target, bytes_of(name), 100, "tester@acme")
                .await
            {
                Err(SandboxError::Refused { problems, .. }) => problems.join("\n"),
                other => panic!("{name} was not refused: {other:?}"),
            }
        }
    };
    // The test-net guest imports sockets, which no grant gives.
    let ungranted = refuse("test_net", target()).await;
    assert!(ungranted.contains("not granted"), "{ungranted}");
    // The orders guest declares that it handles another operation.
    let other = refuse("orders_process", target()).await;
    assert!(
        other.contains("handles Orders.Process, not Testing.Scenario"),
        "{other}"
    );
    let garbage = host
        .deploy(&target(), b"not a component".to_vec(), 100, "tester@acme")
        .await
        .unwrap_err()
        .to_string();
    assert!(garbage.contains("not a loadable component"), "{garbage}");
    assert_eq!(
        (
            host.deployments(),
            host.deployment_history(10).await.unwrap()
        ),
        before
    );
    let (note, _) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_deployed_to_a_queue_is_refused_for_not_exporting_the_worker_world() {
    let mut config = config_on("test_version_a");
    config.workers = vec![opshost_sandbox::WorkerConfig::new(
        "testing.work",
        guest("test_worker"),
        1,
    )];
    let host = load(&config);
    let queue = DeployTarget::Queue("testing.work".to_owned());
    let error = host
        .deploy(&queue, bytes_of("test_version_b"), 100, "tester@acme")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SandboxError::Refused { problems, .. }
            if problems.iter().any(|p| p.contains("does not export the `worker` world"))),
        "{error}"
    );
    let missing = host
        .deploy(
            &DeployTarget::Queue("nowhere".to_owned()),
            bytes_of("test_worker"),
            100,
            "tester@acme",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, SandboxError::UnknownQueue { .. }),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_gives_the_new_version_its_share_of_new_operations_until_rolled_back() {
    let host = host_on_version_a();
    let version_b = deploy(&host, "test_version_b", 25).await;
    let current_again = host
        .deploy(&target(), bytes_of("test_version_a"), 10, "tester@acme")
        .await
        .unwrap_err();
    assert!(
        current_again.to_string().contains("current already"),
        "{current_again}"
    );
    let mut on_b = 0;
    for _ in 0..20 {
        let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
        assert_eq!(
            note == "version b, attempt 1",
            pinned == version_b,
            "{note}"
        );
        on_b += usize::from(pinned == version_b);
    }
    assert_eq!(on_b, 5, "25% of 20 operations");
    let listed = host.deployments();
    let ramping = listed[0].1.iter().find(|v| v.sha256 == version_b).unwrap();
    assert_eq!(
        (ramping.state, ramping.percent),
        (VersionState::Ramping, Some(25))
    );

    host.rollback(&target(), "oncall@acme").await.unwrap();
    for _ in 0..8 {
        let (note, _) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
        assert_eq!(note, "version a, attempt 1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_drains_while_its_operations_run_and_is_unloaded_after_the_last() {
    let host = host_on_version_a();
    let waiting = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let version_a = waiting.component.clone().unwrap();
    // The run has begun once the operation is running.
    let mut events = host.runtime().watch(&waiting.id, None);
    while let Some(event) = events.next().await {
        if event.unwrap().snapshot().state == OperationState::Running {
            break;
        }
    }
    deploy(&host, "test_version_b", 100).await;
    let state_of_a = |host: &WasmHost| {
        let listed = host.deployments();
        let a = listed[0].1.iter().find(|v| v.sha256 == version_a).cloned();
        a.unwrap()
    };
    let draining = state_of_a(&host);
    assert_eq!(
        (draining.state, draining.in_flight, draining.loaded),
        (VersionState::Draining, 1, true)
    );
    host.runtime()
        .signal(&waiting.id, "Note", json!({ "text": "go" }))
        .await
        .unwrap();
    wait_terminal(&host, &waiting.id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let drained = loop {
        let a = state_of_a(&host);
        if a.state == VersionState::Drained || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (drained.state, drained.in_flight, drained.loaded),
        (VersionState::Drained, 0, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_operations_pinned_to_an_old_version_finish_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = |component: &str| {
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        WasmHost::builder(&config_on(component))
            .stores(store)
            .build()
            .unwrap()
    };
    let first = open("test_version_a");
    first.recover().await.unwrap();
    let waiting = start_scenario(&first, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let version_b = deploy(&first, "test_version_b", 100).await;
    first.shutdown(Duration::from_millis(50)).await.unwrap();
    drop(first);

    // The restarted host's config names version b: version a is only in the store.
    let second = open("test_version_b");
    second.recover().await.unwrap();
    let (note, pinned) = note_of_completed(&second, json!({ "scenario": "complete" })).await;
    assert_eq!((note.as_str(), pinned), ("version b, attempt 1", version_b));
    second
        .runtime()
        .signal(&waiting.id, "Note", json!({ "text": "go" }))
        .await
        .unwrap();
    let done = wait_terminal(&second, &waiting.id).await;
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    assert_eq!(done.output.unwrap()["note"], "version a, attempt 2");
    assert_eq!(done.component, waiting.component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_config_keeps_the_version_deployed_since() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        WasmHost::builder(&config_on("test_version_a"))
            .stores(store)
            .build()
            .unwrap()
    };
    let first = open();
    first.recover().await.unwrap();
    deploy(&first, "test_version_b", 100).await;
    first.shutdown(Duration::from_millis(50)).await.unwrap();
    drop(first);
    let second = open();
    second.recover().await.unwrap();
    let (note, _) = note_of_completed(&second, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version b, attempt 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_ramps_and_rolls_back_over_http_and_others_may_not() {
    let host = host_on_version_a();
    let server = TestServer::start_configured(host.runtime(), |api| {
        api.with_deployments(opshost_host::deployments(&host))
    })
    .await;
    let http = opshost_tests::net::http();
    let admin = token(&["opshost.admin"]);
    let url = |path: &str| format!("{}{path}", server.url);
    let route = url("/v1/deployments/operations/Testing.Scenario");
    let component = bytes_of("test_version_b");

    let refused = http
        .post(&route)
        .bearer_auth(token(&["testing.run"]))
        .body(component.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        403,
        "deploying takes the admin capability"
    );
    // Refused from the request's head: the answer comes while the body it announces (over
    // the limit) has not been sent, and is never read.
    let announced = opshost_server::deployments::MAX_COMPONENT_BYTES + 1;
    let never_ending = futures::stream::once(async { Ok::<_, std::io::Error>(vec![0u8; 1024]) })
        .chain(futures::stream::pending());
    let oversized = tokio::time::timeout(
        Duration::from_secs(10),
        http.post(&route)
            .bearer_auth(token(&["testing.run"]))
            .header("content-length", announced)
            .body(reqwest::Body::wrap_stream(never_ending))
            .send(),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_eq!(oversized.status(), 403);

    let bad_percent = http
        .post(format!("{route}?percent=0"))
        .bearer_auth(&admin)
        .body(component.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_percent.status(), 400);
    for query in ["percent=300", "rampTo=10"] {
        let refused = json_of(
            http.post(format!("{route}?{query}"))
                .bearer_auth(&admin)
                .body(component.clone()),
        )
        .await;
        assert_eq!(
            refused["error"]["code"], "InvalidInput",
            "{query}: {refused}"
        );
        assert_eq!(
            refused["error"]["details"]["allowed"],
            json!(["percent", "dryRun"]),
            "{query}: {refused}"
        );
    }
    let unknown_kind = http
        .post(url("/v1/deployments/tables/Testing.Scenario"))
        .bearer_auth(&admin)
        .body(component.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_kind.status(), 404);
    let no_file = json_of(http.post(url("/v1/config/reload")).bearer_auth(&admin)).await;
    assert!(
        no_file["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not started from a config file"),
        "{no_file}"
    );
    let unknown = http
        .post(url("/v1/deployments/operations/Nope"))
        .bearer_auth(&admin)
        .body(component.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let deployed = http
        .post(format!("{route}?percent=50"))
        .bearer_auth(&admin)
        .body(component)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let deployed: Value = deployed.json().await.unwrap();
    assert_eq!(deployed["percent"], 50);
    let listed = json_of(http.get(url("/v1/deployments")).bearer_auth(&admin)).await;
    let versions = listed["operations"][OPERATION].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{listed}");
    assert_eq!(versions[1]["sha256"], deployed["sha256"], "{listed}");
    assert_eq!(
        (&versions[1]["state"], &versions[1]["percent"]),
        (&json!("ramping"), &json!(50))
    );
    let history = listed["history"].as_array().unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (&last["action"], &last["by"], &last["percent"]),
        (&json!("deploy"), &json!("alice@acme"), &json!(50)),
        "{listed}"
    );

    let garbage = http
        .post(&route)
        .bearer_auth(&admin)
        .body("not a component")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let garbage: Value = garbage.json().await.unwrap();
    assert!(
        garbage["error"]["details"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("not a loadable component"),
        "{garbage}"
    );

    let rolled = json_of(http.post(format!("{route}/rollback")).bearer_auth(&admin)).await;
    assert_eq!(rolled["sha256"], versions[0]["sha256"]);
    let nothing_left = http
        .post(format!("{route}/rollback"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(nothing_left.status(), 409);
    let (note, _) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
}

/// What the load test saw: operations by the version that ran them.
struct Ran {
    by_version: HashMap<String, usize>,
    /// Operations each server ran on version b.
    by_host_on_b: Vec<usize>,
}

/// `total` operations started by `callers` concurrent HTTP callers over `servers` (caller
/// `i` uses server `i % n`), each starting and waiting for one operation at a time. While
/// they run, `version_b` is deployed through the first host once a quarter has started and
/// rolled back once three quarters have. Every operation must complete on the version it is
/// pinned to, as its output says.
async fn load_across_a_deploy_and_a_rollback(
    hosts: &[WasmHost],
    servers: &[TestServer],
    callers: usize,
    total: usize,
) -> Ran {
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let letters: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let version_a = hosts[0].deployments()[0].1[0].sha256.clone();
    letters.lock().unwrap().insert(version_a, "a".into());
    let mut tasks = tokio::task::JoinSet::new();
    let servers_count = servers.len();
    for caller in 0..callers {
        let url = servers[caller % servers.len()].url.clone();
        let started = Arc::clone(&started);
        tasks.spawn(async move {
            let http = opshost_tests::net::http();
            let bearer = token(&["testing.run"]);
            let mut ran = Vec::new();
            let server = caller % servers_count;
            while started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                let accepted = json_of(
                    http.post(format!("{url}/v1/operations/Testing.Scenario"))
                        .bearer_auth(&bearer)
                        .json(&json!({ "scenario": "complete" })),
                )
                .await;
                let id = accepted["id"].as_str().unwrap().to_owned();
                let done = json_of(
                    http.get(format!("{url}/v1/operations/{id}/wait?timeoutMs=60000"))
                        .bearer_auth(&bearer),
                )
                .await;
                assert_eq!(done["state"], "completed", "{done}");
                ran.push((
                    server,
                    done["component"].as_str().unwrap().to_owned(),
                    done["output"]["note"].as_str().unwrap().to_owned(),
                ));
            }
            ran
        });
    }
    let wait_for = |count: usize| {
        let started = Arc::clone(&started);
        async move {
            while started.load(std::sync::atomic::Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_for(total / 4).await;
    let version_b = deploy(&hosts[0], "test_version_b", 100).await;
    letters.lock().unwrap().insert(version_b, "b".into());
    wait_for(total * 3 / 4).await;
    hosts[0].rollback(&target(), "oncall@acme").await.unwrap();

    let mut by_version = HashMap::new();
    let mut by_host_on_b = vec![0; servers.len()];
    let mut finished = 0;
    while let Some(ran) = tasks.join_next().await {
        for (server, component, note) in ran.unwrap() {
            let letter = letters.lock().unwrap().get(&component).cloned();
            let letter = letter.unwrap_or_else(|| panic!("ran on an unknown version {component}"));
            assert_eq!(
                note,
                format!("version {letter}, attempt 1"),
                "an operation pinned to {letter} ran another version"
            );
            if letter == "b" {
                by_host_on_b[server] += 1;
            }
            *by_version.entry(letter).or_insert(0) += 1;
            finished += 1;
        }
    }
    assert_eq!(finished, total, "every operation started finished");
    Ran {
        by_version,
        by_host_on_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_operations_from_32_callers_across_a_deploy_and_a_rollback_run_as_pinned() {
    let host = host_on_version_a();
    let server = TestServer::start(host.runtime()).await;
    let ran = load_across_a_deploy_and_a_rollback(
        std::slice::from_ref(&host),
        std::slice::from_ref(&server),
        32,
        2000,
    )
    .await;
    assert!(
        ran.by_version["a"] > 0 && ran.by_version["b"] > 0,
        "{:?}",
        ran.by_version
    );
    let failed = host
        .runtime()
        .count_by_state()
        .await
        .unwrap()
        .iter()
        .filter(|count| count.state != OperationState::Completed)
        .map(|count| count.count)
        .sum::<u64>();
    assert_eq!(failed, 0);
}

async fn postgres_host(url: &str) -> WasmHost {
    let store = Arc::new(
        PostgresStore::connect_with_lease(url, Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let host = WasmHost::builder(&config_on("test_version_a"))
        .stores(store)
        .build()
        .unwrap();
    host.recover().await.unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_version_deployed_through_one_host_is_served_by_the_other_within_a_second() {
    let url = opshost_tests::postgres::fresh_database().await;
    let (one, two) = (postgres_host(&url).await, postgres_host(&url).await);
    let _following = two.follow_deployments(Duration::from_millis(250)).unwrap();
    let version_b = deploy(&one, "test_version_b", 100).await;
    let deployed = Instant::now();
    let served_after = loop {
        let (note, _) = note_of_completed(&two, json!({ "scenario": "complete" })).await;
        if note == "version b, attempt 1" {
            break deployed.elapsed();
        }
        assert!(
            deployed.elapsed() < Duration::from_secs(30),
            "the other host never served version b"
        );
    };
    eprintln!("the other host served version b {served_after:?} after the deploy");
    // Following the log every 250 ms, the other host switches within a second; the bound
    // here leaves room for a loaded test machine.
    assert!(served_after < Duration::from_secs(5), "{served_after:?}");
    let listed = two.deployments();
    assert_eq!(listed[0].1[0].sha256, version_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_operations_on_two_postgres_hosts_across_a_deploy_and_a_rollback_run_as_pinned()
 {
    let url = opshost_tests::postgres::fresh_database().await;
    let hosts = [postgres_host(&url).await, postgres_host(&url).await];
    let _following: Vec<_> = hosts
        .iter()
        .map(|host| host.follow_deployments(Duration::from_millis(250)).unwrap())
        .collect();
    let servers = [
        TestServer::start(hosts[0].runtime()).await,
        TestServer::start(hosts[1].runtime()).await,
    ];
    let ran = load_across_a_deploy_and_a_rollback(&hosts, &servers, 32, 2000).await;
    assert!(
        ran.by_version["a"] > 0 && ran.by_version["b"] > 0,
        "{:?}",
        ran.by_version
    );
    assert!(
        ran.by_host_on_b.iter().all(|on_b| *on_b > 0),
        "each host served version b: {:?}",
        ran.by_host_on_b
    );
}

/// The testing deployment on the test-handlers guest, its handler granted `REGION`.
fn config_with_region(region: &str) -> opshost_sandbox::DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.handlers[0]
        .grants
        .env
        .insert("REGION".to_owned(), region.to_owned());
    config
}

async fn region_seen_by_a_new_operation(host: &WasmHost) -> String {
    let accepted = start_scenario(host, json!({ "scenario": "read-env", "path": "REGION" })).await;
    let done = wait_terminal(host, &accepted.id).await;
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    done.output.unwrap()["note"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_changed_limits_and_grants_to_new_runs_and_reports_them() {
    let host = load(&config_with_region("eu-west-1"));
    assert_eq!(region_seen_by_a_new_operation(&host).await, "eu-west-1");

    let mut changed = config_with_region("us-east-1");
    changed.limits.deadline_ms = Some(60_000);
    let changes = host.reload(&changed).unwrap();
    assert_eq!(
        changes,
        [
            "operation Testing.Scenario: limits.deadline 86400s -> 60s",
            "operation Testing.Scenario: grants.env changed: REGION",
        ],
        "the env value itself is not shown"
    );
    assert_eq!(region_seen_by_a_new_operation(&host).await, "us-east-1");
    assert!(host.reload(&changed).unwrap().is_empty(), "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_apply_changes_nothing() {
    let host = load(&config_with_region("eu-west-1"));
    let mut too_big = config_with_region("us-east-1");
    too_big.limits.memory_mb = Some(64 * 1024);
    let error = host.reload(&too_big).unwrap_err();
    assert!(
        matches!(&error, SandboxError::ReloadRefused { problems }
            if problems.iter().any(|p| p.contains("takes a restart"))),
        "{error}"
    );
    assert_eq!(region_seen_by_a_new_operation(&host).await, "eu-west-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_problems_and_import_differences_against_the_current_version_and_changes_nothing()
 {
    let host = host_on_version_a();
    host.sync_deployments().await.unwrap();
    let before = (
        host.deployments(),
        host.deployment_history(10).await.unwrap(),
    );
    let current = before.0[0].1[0].sha256.clone();

    let fine = host
        .check_deploy(&target(), bytes_of("test_version_b"))
        .await
        .unwrap();
    assert_eq!(fine.current.as_deref(), Some(current.as_str()));
    assert!(fine.problems.is_empty(), "{:?}", fine.problems);
    assert!(
        fine.imports_added.is_empty() && fine.imports_removed.is_empty(),
        "{fine:?}"
    );

    let sockets = host
        .check_deploy(&target(), bytes_of("test_net"))
        .await
        .unwrap();
    assert!(
        sockets.problems.iter().any(|p| p.contains("not granted")),
        "{sockets:?}"
    );
    assert!(
        sockets
            .imports_added
            .iter()
            .any(|import| import.starts_with("wasi:sockets/")),
        "{sockets:?}"
    );
    assert_eq!(
        (
            host.deployments(),
            host.deployment_history(10).await.unwrap()
        ),
        before
    );
}

/// `bytes` with a custom section naming `label` appended: the same code as another version,
/// with another sha256.
fn relabelled(mut bytes: Vec<u8>, label: &str) -> Vec<u8> {
    let name = b"opshost-test-label";
    let mut section = vec![u8::try_from(name.len()).unwrap()];
    section.extend_from_slice(name);
    section.extend_from_slice(label.as_bytes());
    bytes.push(0);
    bytes.push(u8::try_from(section.len()).unwrap());
    bytes.extend(section);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_deployed_to_a_queue_runs_the_next_attempts_while_running_ones_keep_theirs() {
    let mut config = testing_deployment(GRACE);
    let mut worker = opshost_sandbox::WorkerConfig::new("testing.work", guest("test_worker"), 2);
    // Long enough for the first hanging attempt to outlive the deploy (Cranelift on a busy
    // machine), short enough for both to end within the wait below.
    worker.limits.cpu_ms = Some(2000);
    config.workers = vec![worker];
    let host = load(&config);
    let queue = DeployTarget::Queue("testing.work".to_owned());
    let versions_of_queue = |host: &WasmHost| {
        let listed = host.deployments();
        listed
            .into_iter()
            .find(|(target, _)| *target == queue)
            .map(|(_, versions)| versions)
            .unwrap()
    };
    let in_flight = |host: &WasmHost, sha: &str| {
        versions_of_queue(host)
            .iter()
            .find(|v| v.sha256 == sha)
            .map_or(0, |v| v.in_flight)
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let version_a = versions_of_queue(&host)[0].sha256.clone();
    host.jobs()
        .enqueue("testing.work", json!({ "behaviour": "hang" }))
        .await
        .unwrap();
    until("the first job runs on version a", &|| {
        in_flight(&host, &version_a) == 1
    });

    let version_b = host
        .deploy(
            &queue,
            relabelled(bytes_of("test_worker"), "b"),
            100,
            "tester@acme",
        )
        .await
        .unwrap();
    assert_ne!(version_a, version_b);
    host.jobs()
        .enqueue("testing.work", json!({ "behaviour": "hang" }))
        .await
        .unwrap();
    until("the second job runs on version b", &|| {
        in_flight(&host, &version_b) == 1
    });
    assert_eq!(
        in_flight(&host, &version_a),
        1,
        "the first job's attempt keeps version a"
    );
    // Each hanging attempt ends at its CPU limit; every later attempt runs version b, and
    // version a, idle, is unloaded.
    until("version a drains", &|| {
        versions_of_queue(&host)
            .iter()
            .any(|v| v.sha256 == version_a && v.state == VersionState::Drained && !v.loaded)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_pinned_to_a_version_no_store_holds_fails_naming_it_rather_than_run_another() {
    let store = Arc::new(opshost_runtime::store::MemoryStore::new());
    let host = WasmHost::builder(&config_on("test_version_a"))
        .operations(store.clone())
        .build()
        .unwrap();
    let template = start_scenario(&host, json!({ "scenario": "complete" })).await;
    let missing = "0".repeat(64);
    let mut snapshot = opshost_api::Snapshot::accepted(
        "pinned-to-nothing".to_owned(),
        template.service.clone(),
        OPERATION.to_owned(),
        template.version.clone(),
    );
    snapshot.component = Some(missing.clone());
    opshost_runtime::store::OperationStore::create(
        store.as_ref(),
        opshost_runtime::store::StoredOperation {
            snapshot,
            input: Some(json!({ "scenario": "complete" })),
            owner: opshost_runtime::store::Owner {
                tenant: "acme".into(),
                subject: "alice".into(),
            },
        },
    )
    .await
    .unwrap();
    host.recover().await.unwrap();
    let done = wait_terminal(&host, "pinned-to-nothing").await;
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let message = done.error.unwrap().message;
    assert!(
        message.contains("pinned") && message.contains(&missing),
        "{message}"
    );
}
