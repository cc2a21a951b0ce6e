//! Crash recovery with real processes: `opshost serve` on SQLite is killed with SIGKILL, then
//! started again on the same data directory.
//!
//! - While hundreds of Orders.Process operations run (each handed by its handler to a
//!   `fulfillment` job): every accepted operation must reach exactly one terminal state, with
//!   revisions that never go backwards; those caught mid-run must have run again, from their
//!   handler (`attempt` 2) or through their job's redelivery (its steps reported again). A
//!   client watching through the restart reconnects and resumes from its last revision with no
//!   gap.
//! - Under the common workload at full speed (64 callers each starting under a key and waiting
//!   for the result, the guest reporting progress three times): every answer the host gave
//!   before it died still holds after, and a start that got no answer either never happened or
//!   is found again under its key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{root, token};

use futures::{StreamExt, TryStreamExt};
use opshost_api::Snapshot;
use opshost_api::{EventKind, OperationState};
use opshost_client::{Client, ListQuery, StartOptions};
use serde_json::json;

const OPERATIONS: usize = 300;

/// A host config serving Orders.Process and its fulfillment worker with room for every
/// operation at once.
fn write_orders_config(dir: &Path) -> PathBuf {
    let wasm = root().join("target/wasm32-wasip2/release/orders_process.wasm");
    let worker = root().join("target/wasm32-wasip2/release/orders_fulfillment.wasm");
    let contract = root().join("contracts/orders_service.manifest.json");
    let config = format!(
        "contract = {contract:?}\nmax_concurrent_operations = 2000\n\n\
         [[handlers]]\noperation = \"Orders.Process\"\ncomponent = {wasm:?}\n\n\
         [[workers]]\nqueue = \"fulfillment\"\ncomponent = {worker:?}\nconcurrency = 64\n\
         grants = {{ http = {{ allow = [] }} }}\n\n\
         [server]\nmax_in_flight = 4096\n\n[auth]\nhs256_secret_env = \"OPSHOST_JWT_SECRET\"\n",
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

/// A loopback address that was free a moment ago, so both hosts serve at the same URL.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").to_string()
}

fn order(n: usize) -> serde_json::Value {
    json!({ "orderId": format!("ord_{n}"), "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }] })
}

/// The id of every operation the client may see, page by page.
async fn listed_ids(client: &Client) -> BTreeSet<String> {
    let mut listed = BTreeSet::new();
    let mut after = None;
    loop {
        let page = client
            .list(&ListQuery {
                after: after.clone(),
                limit: Some(500),
                ..ListQuery::default()
            })
            .await
            .expect("a page");
        listed.extend(page.items.into_iter().map(|s| s.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return listed,
        }
    }
}

/// Whether a step's progress was reported twice: a redelivered job ran the steps again.
fn steps_reported_again(events: &[opshost_api::OperationEvent]) -> bool {
    let completed: Vec<u64> = events
        .iter()
        .filter(|e| e.kind() == EventKind::Progress)
        .filter_map(|e| e.snapshot().progress.as_ref()?["completed"].as_u64())
        .collect();
    completed
        .windows(2)
        .any(|pair| pair[1] <= pair[0] && pair[1] > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_run_loses_nothing_and_finishes_everything_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let config = write_orders_config(dir.path());
    let token = token(&["orders.write", "orders.read"]);

    let address = free_address();
    let (mut first, url) = common::serve(&config, &data, &address);
    let client = Client::connect(&url, token.clone())
        .await
        .expect("first host answers");
    let accepted: Vec<String> = futures::stream::iter(0..OPERATIONS)
        .map(|n| {
            let client = client.clone();
            async move {
                client
                    .start("Orders.Process", &order(n), &StartOptions::default())
                    .await
                    .map(|snapshot| snapshot.id)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .expect("every start is accepted");
    let watcher = {
        let events = client.watch(&accepted[OPERATIONS - 1], None);
        tokio::spawn(events.try_collect::<Vec<_>>())
    };
    // Let the first steps run, then kill the host without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.kill().expect("SIGKILL");
    first.wait().expect("the first host is gone");

    let (mut second, url) = common::serve(&config, &data, &address);
    let client = Client::connect(&url, token)
        .await
        .expect("second host answers");
    let check = async {
        let mut restarted = 0;
        for id in &accepted {
            let terminal = client.wait(id).await.expect("the operation survived");
            assert_eq!(
                terminal.state,
                OperationState::Completed,
                "{id}: {terminal:?}"
            );
            let events = check_history(&client, id).await;
            if events.iter().any(|e| e.kind() == EventKind::Restarted) {
                restarted += 1;
                assert_eq!(terminal.attempt, 2, "{id}");
            } else if steps_reported_again(&events) {
                restarted += 1;
            }
        }
        restarted
    };
    let restarted = tokio::time::timeout(Duration::from_secs(120), check)
        .await
        .expect("every operation ends within 2 minutes of the restart");
    assert!(restarted > 0, "the kill caught operations mid-run");

    let watched = watcher
        .await
        .expect("the watcher ran")
        .expect("the watch survived the restart");
    let revisions: Vec<u64> = watched.iter().map(|e| e.snapshot().revision).collect();
    let first_seen = revisions[0];
    assert_eq!(
        revisions,
        (first_seen..first_seen + revisions.len() as u64).collect::<Vec<_>>(),
        "the watch resumed with no gap and no repeat"
    );
    assert_eq!(watched.last().map(|e| e.kind()), Some(EventKind::Completed));

    let listed = listed_ids(&client).await;
    let accepted: BTreeSet<String> = accepted.into_iter().collect();
    assert_eq!(listed, accepted, "no operation lost, none invented");
    second.kill().ok();
    second.wait().ok();
}

/// A host config serving `Testing.Scenario` with the test-handlers guest.
fn write_testing_config(dir: &Path) -> PathBuf {
    let wasm = root().join("target/wasm32-wasip2/release/test_handlers.wasm");
    let contract = root().join("contracts/testing.manifest.json");
    let config = format!(
        "contract = {contract:?}\nmax_concurrent_operations = 2000\n\n\
         [[handlers]]\noperation = \"Testing.Scenario\"\ncomponent = {wasm:?}\n\n\
         [server]\nmax_in_flight = 4096\n\n[auth]\nhs256_secret_env = \"OPSHOST_JWT_SECRET\"\n",
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

/// What the callers of the workload were told before the host died.
#[derive(Default)]
struct Answers {
    /// Accepted starts: key → id.
    accepted: BTreeMap<String, String>,
    /// Results waited for: id → terminal snapshot.
    finished: BTreeMap<String, Snapshot>,
    /// Keys whose start got no answer.
    unanswered: BTreeSet<String>,
}

/// One closed-loop caller of the workload: start under a fresh key, wait for the result, again,
/// until the host stops answering.
async fn workload_caller(client: Client, keys: Arc<AtomicUsize>, answers: Arc<Mutex<Answers>>) {
    let input = json!({ "scenario": "progress-flood", "count": 2 });
    loop {
        let key = format!("w-{}", keys.fetch_add(1, Ordering::Relaxed));
        let options = StartOptions {
            idempotency_key: Some(key.clone()),
            wait: None,
        };
        let id = match client.start("Testing.Scenario", &input, &options).await {
            Ok(snapshot) => snapshot.id,
            Err(_) => {
                answers.lock().expect("answers").unanswered.insert(key);
                return;
            }
        };
        answers
            .lock()
            .expect("answers")
            .accepted
            .insert(key, id.clone());
        match client.wait_timeout(&id, Duration::from_secs(30)).await {
            Ok(done) => {
                assert!(done.is_terminal(), "{id}: {done:?}");
                answers.lock().expect("answers").finished.insert(id, done);
            }
            Err(_) => return,
        }
    }
}

/// Checks a finished operation's history: revisions one by one from 1, and one terminal
/// event. Answers the events.
async fn check_history(client: &Client, id: &str) -> Vec<opshost_api::OperationEvent> {
    let events: Vec<_> = client
        .watch(id, Some(0))
        .try_collect()
        .await
        .expect("its history");
    let revisions: Vec<u64> = events.iter().map(|e| e.snapshot().revision).collect();
    assert_eq!(
        revisions,
        (1..=revisions.len() as u64).collect::<Vec<_>>(),
        "{id}: revisions increase one by one"
    );
    let terminals = events.iter().filter(|e| e.snapshot().is_terminal()).count();
    assert_eq!(terminals, 1, "{id}: exactly one terminal event");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_under_the_workload_keeps_every_answer_it_gave() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let config = write_testing_config(dir.path());
    let token = token(&["testing.run"]);

    let address = free_address();
    let (mut first, url) = common::serve(&config, &data, &address);
    let client = Client::connect(&url, token.clone())
        .await
        .expect("first host answers");
    let keys = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (client, keys, answers) = (client.clone(), Arc::clone(&keys), Arc::clone(&answers));
            tokio::spawn(workload_caller(client, keys, answers))
        })
        .collect();
    // Let the load settle in, then kill the host without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().expect("SIGKILL");
    first.wait().expect("the first host is gone");
    for caller in callers {
        caller.await.expect("a caller ran");
    }
    let answers = Arc::try_unwrap(answers)
        .ok()
        .expect("the callers are done")
        .into_inner()
        .expect("answers");
    assert!(
        answers.finished.len() > 100,
        "the load ran before the kill: {} results",
        answers.finished.len()
    );

    let (mut second, url) = common::serve(&config, &data, &address);
    let client = Client::connect(&url, token)
        .await
        .expect("second host answers");
    let check = async {
        for (id, before) in &answers.finished {
            let after = client.get(id).await.expect("a finished operation survived");
            assert_eq!(
                &after, before,
                "{id}: the result a caller saw is the one kept"
            );
            check_history(&client, id).await;
        }
        for id in answers.accepted.values() {
            let terminal = client
                .wait(id)
                .await
                .expect("an accepted operation survived");
            assert_eq!(
                terminal.state,
                OperationState::Completed,
                "{id}: {terminal:?}"
            );
            check_history(&client, id).await;
        }
        // A start with no answer either never happened, or its key finds the operation.
        let input = json!({ "scenario": "progress-flood", "count": 2 });
        for key in &answers.unanswered {
            let id = opshost_api::id::scoped_id("acme", key);
            if client.get(&id).await.is_ok() {
                let options = StartOptions {
                    idempotency_key: Some(key.clone()),
                    wait: None,
                };
                let again = client
                    .start("Testing.Scenario", &input, &options)
                    .await
                    .expect("the same key answers the same operation");
                assert_eq!(again.id, id);
                let terminal = client.wait(&id).await.expect("it ends");
                assert_eq!(terminal.state, OperationState::Completed, "{key}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), check)
        .await
        .expect("every operation ends within 2 minutes of the restart");

    let listed = listed_ids(&client).await;
    let accepted: BTreeSet<String> = answers.accepted.values().cloned().collect();
    assert!(listed.is_superset(&accepted), "no accepted operation lost");
    let started: BTreeSet<String> = (answers.accepted.keys().chain(&answers.unanswered))
        .map(|key| opshost_api::id::scoped_id("acme", key))
        .collect();
    assert!(listed.is_subset(&started), "no operation invented");
    second.kill().ok();
    second.wait().ok();
}
