//! Versioned deploys in-process: a new version of a handler's component is deployed and
//! rolled back without a restart; each operation runs the version it was accepted on.

use std::time::Duration;

use futures::StreamExt;
use opshost_api::OperationState;
use opshost_sandbox::WasmHost;
use opshost_tests::net::{TestServer, json_of, token};
use opshost_tests::{guest, load, start_scenario, testing_deployment, wait_terminal};
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_secs(5);

/// A host serving `Testing.Scenario` with version `a` of the versioned test guest.
fn host_on_version_a() -> WasmHost {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = guest("test_version_a");
    load(&config)
}

async fn note_of_completed(host: &WasmHost, input: serde_json::Value) -> (String, String) {
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

    let version_b = host
        .deploy("Testing.Scenario", &guest("test_version_b"))
        .unwrap();
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
async fn a_rollback_makes_the_previous_version_current_again() {
    let host = host_on_version_a();
    host.deploy("Testing.Scenario", &guest("test_version_b"))
        .unwrap();
    let back = host.rollback("Testing.Scenario").unwrap();
    let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
    assert_eq!(pinned, back);
    let error = host.rollback("Testing.Scenario").unwrap_err().to_string();
    assert!(error.contains("no earlier version"), "{error}");
    let listed = host.deployments();
    let versions = &listed[0].1;
    assert_eq!(versions.len(), 2);
    assert!(versions[0].current && versions[0].sha256 == back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_fails_its_checks_is_refused_and_changes_nothing() {
    let host = host_on_version_a();
    let before = host.deployments();
    // The test-net guest imports sockets, which no grant gives.
    let error = host
        .deploy("Testing.Scenario", &guest("test_net"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("test_net"), "{error}");
    assert_eq!(host.deployments(), before);
    let (note, _) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_and_rolls_back_over_http_and_others_may_not() {
    let host = host_on_version_a();
    let server = TestServer::start_configured(host.runtime(), |api| {
        api.with_deployments(opshost_host::deployments(&host))
    })
    .await;
    let http = reqwest::Client::new();
    let admin = token(&["opshost.admin"]);
    let url = |path: &str| format!("{}{path}", server.url);
    let component = std::fs::read(guest("test_version_b")).unwrap();

    let refused = http
        .post(url("/v1/deployments/Testing.Scenario"))
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
        http.post(url("/v1/deployments/Testing.Scenario"))
            .bearer_auth(token(&["testing.run"]))
            .header("content-length", announced)
            .body(reqwest::Body::wrap_stream(never_ending))
            .send(),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_eq!(oversized.status(), 403);

    let deployed = http
        .post(url("/v1/deployments/Testing.Scenario"))
        .bearer_auth(&admin)
        .body(component)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let deployed: Value = deployed.json().await.unwrap();
    let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version b, attempt 1");
    assert_eq!(pinned, deployed["sha256"].as_str().unwrap());

    let listed = json_of(http.get(url("/v1/deployments")).bearer_auth(&admin)).await;
    let versions = listed["Testing.Scenario"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{listed}");
    assert_eq!(versions[0]["sha256"], deployed["sha256"]);
    assert_eq!(versions[0]["current"], true);

    let garbage = http
        .post(url("/v1/deployments/Testing.Scenario"))
        .bearer_auth(&admin)
        .body("not a component")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);

    let rolled = json_of(
        http.post(url("/v1/deployments/Testing.Scenario/rollback"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(rolled["sha256"], versions[1]["sha256"]);
    let (note, _) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version a, attempt 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_file_rewritten_in_place_deploys_what_it_holds_now() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handler.wasm");
    std::fs::copy(guest("test_version_a"), &file).unwrap();
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = file.clone();
    let host = load(&config);
    std::fs::copy(guest("test_version_b"), &file).unwrap();
    let deployed = host.deploy("Testing.Scenario", &file).unwrap();
    let (note, pinned) = note_of_completed(&host, json!({ "scenario": "complete" })).await;
    assert_eq!(note, "version b, attempt 1");
    assert_eq!(pinned, deployed);
}
