//! Crash recovery with real processes: `opshost serve` on SQLite is killed with SIGKILL while
//! hundreds of Orders.Process operations run (each handed by its handler to a `fulfillment`
//! job), then started again on the same data directory. Every accepted operation must reach
//! exactly one terminal state, with revisions that never go backwards; those caught mid-run
//! must have run again, from their handler (`attempt` 2) or through their job's redelivery
//! (its steps reported again). A client watching through the restart reconnects and resumes
//! from its last revision with no gap.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{root, token};

use futures::{StreamExt, TryStreamExt};
use opshost_api::{EventKind, OperationState};
use opshost_client::{Client, ListQuery, StartOptions};
use serde_json::json;

const OPERATIONS: usize = 300;

/// A host config serving Orders.Process and its fulfillment worker with room for every
/// operation at once.
fn write_config(dir: &Path) -> PathBuf {
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
    let config = write_config(dir.path());
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

    let mut listed = BTreeSet::new();
    let mut after = None;
    loop {
        let page = client
            .list(&ListQuery {
                after: after.clone(),
                limit: Some(100),
                ..ListQuery::default()
            })
            .await
            .expect("a page");
        listed.extend(page.items.into_iter().map(|s| s.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let accepted: BTreeSet<String> = accepted.into_iter().collect();
    assert_eq!(listed, accepted, "no operation lost, none invented");
    second.kill().ok();
    second.wait().ok();
}
