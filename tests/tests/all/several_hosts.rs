//! Several hosts on one PostgreSQL database, each a `WasmHost` with its own store: any host
//! serves any operation, cancel and signals sent through one host reach the guest running on
//! another, and the operations of a host that dies are taken over by a live one.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opshost_api::{EventKind, OperationState};
use opshost_sandbox::WasmHost;
use opshost_store_postgres::PostgresStore;
use opshost_tests::{start_scenario, testing_deployment, until_running, wait_terminal};
use serde_json::json;

/// The cancel grace of every host here.
const GRACE: Duration = Duration::from_millis(500);

/// Far longer than any hand-over here takes; only a lost change gets near it.
const PATIENCE: Duration = Duration::from_secs(30);

async fn host_on(url: &str, lease: Duration) -> WasmHost {
    let store = Arc::new(
        PostgresStore::connect_with_lease(url, lease)
            .await
            .expect("the store connects"),
    );
    WasmHost::builder(&testing_deployment(GRACE))
        .stores(store)
        .build()
        .expect("the host loads")
}

async fn two_hosts() -> (WasmHost, WasmHost) {
    let url = opshost_tests::postgres::fresh_database().await;
    let lease = Duration::from_secs(10);
    (host_on(&url, lease).await, host_on(&url, lease).await)
}

/// Waits until host `host` runs no handler.
async fn until_idle(host: &WasmHost) {
    tokio::time::timeout(PATIENCE, async {
        while host.runtime().active_handlers() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the host's handlers end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_started_on_one_host_is_watched_and_signalled_through_another() {
    let (a, b) = two_hosts().await;
    let started = start_scenario(&a, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let mut events = b.runtime().watch(&started.id, Some(0));
    until_running(&b, &started.id).await;
    b.runtime()
        .signal(&started.id, "Note", json!({ "text": "from b" }))
        .await
        .expect("B takes the signal");
    let done = wait_terminal(&b, &started.id).await;
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    assert_eq!(
        done.output.as_ref().unwrap()["signals"],
        json!(["1:from b"])
    );
    let mut kinds = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("B's watch goes on")
    {
        kinds.push(event.expect("an event").kind());
    }
    assert_eq!(kinds.first(), Some(&EventKind::Accepted), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Completed), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_host_stops_the_guest_that_honours_it() {
    let (a, b) = two_hosts().await;
    let started = start_scenario(&a, json!({ "scenario": "await-cancel" })).await;
    until_running(&b, &started.id).await;
    let cancelled = b.runtime().cancel(&started.id).await.expect("B cancels");
    assert_eq!(cancelled.state, OperationState::Cancelled, "{cancelled:?}");
    until_idle(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_host_stops_a_guest_that_ignores_it_after_the_grace() {
    let (a, b) = two_hosts().await;
    let started = start_scenario(&a, json!({ "scenario": "ignore-cancel" })).await;
    until_running(&b, &started.id).await;
    let cancelled = b.runtime().cancel(&started.id).await.expect("B cancels");
    assert_eq!(cancelled.state, OperationState::Cancelled, "{cancelled:?}");
    until_idle(&a).await;
    let stored = a.runtime().get(&started.id).await.expect("A reads");
    assert_eq!(stored.state, OperationState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_of_a_dead_host_are_taken_over_by_a_live_one() {
    let url = opshost_tests::postgres::fresh_database().await;
    let lease = Duration::from_millis(600);
    // Host A lives on a runtime of its own, so that shutting it down kills everything A runs:
    // its guests, its lease renewals, its notices.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for host A");
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let url_a = url.clone();
    doomed.spawn(async move {
        let a = host_on(&url_a, lease).await;
        let started = start_scenario(&a, json!({ "scenario": "await-cancel" })).await;
        until_running(&a, &started.id).await;
        let _ = sender.send(started.id);
        std::future::pending::<()>().await;
        drop(a);
    });
    let id = tokio::time::timeout(PATIENCE, receiver)
        .await
        .expect("A starts the operation")
        .expect("A reports it");
    doomed.shutdown_background();

    let b = host_on(&url, lease).await;
    let _take_over = b
        .take_over_orphans(Duration::from_millis(200))
        .expect("a shared store takes over");
    let resumed = tokio::time::timeout(PATIENCE, async {
        loop {
            let snapshot = b.runtime().get(&id).await.expect("B reads");
            if snapshot.attempt == 2 && snapshot.state == OperationState::Running {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("B takes the operation over and runs it again");
    assert_eq!(resumed.attempt, 2);
    assert_eq!(b.runtime().active_handlers(), 1, "the guest runs on B now");
    let cancelled = b.runtime().cancel(&id).await.expect("B cancels");
    assert_eq!(cancelled.state, OperationState::Cancelled, "{cancelled:?}");
    let mut kinds = Vec::new();
    let mut events = b.runtime().watch(&id, Some(0));
    while let Some(event) = events.next().await {
        kinds.push(event.expect("an event").kind());
    }
    assert!(kinds.contains(&EventKind::Restarted), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_in_two_tenants_through_two_hosts_makes_two_operations() {
    let (a, b) = two_hosts().await;
    let owner = |tenant: &str| opshost_runtime::Owner {
        tenant: tenant.into(),
        subject: "alice".into(),
    };
    let input = json!({ "scenario": "complete" });
    let on_a = a
        .runtime()
        .start(
            owner("acme"),
            "Testing.Scenario",
            Some("k-1".into()),
            input.clone(),
        )
        .await
        .expect("acme's start");
    let on_b = b
        .runtime()
        .start(
            owner("globex"),
            "Testing.Scenario",
            Some("k-1".into()),
            input,
        )
        .await
        .expect("globex's start: no conflict with acme's key");
    assert!(on_a.created && on_b.created);
    assert_eq!(on_a.snapshot.id, "k-1@acme");
    assert_eq!(on_b.snapshot.id, "k-1@globex");
    for id in [&on_a.snapshot.id, &on_b.snapshot.id] {
        let done = wait_terminal(&b, id).await;
        assert_eq!(done.state, OperationState::Completed, "{done:?}");
    }
    assert_eq!(
        b.runtime().load("k-1@acme").await.unwrap().owner.tenant,
        "acme"
    );
    assert_eq!(
        a.runtime().load("k-1@globex").await.unwrap().owner.tenant,
        "globex"
    );
}
