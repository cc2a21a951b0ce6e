//! `active_handlers` counts the runs on a host, nothing else: after 10,000 orders, each handed
//! by its handler to a fulfillment job, have finished, it reads 0 on every host that ran them,
//! on SQLite and on two hosts sharing PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use opshost_api::OperationState;
use opshost_jobs::JobStore;
use opshost_runtime::store::{DeploymentStore, OperationStore};
use opshost_sandbox::WasmHost;
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::{env_number, orders_deployment};
use serde_json::json;

/// Orders run in each test (`ACTIVE_ORDERS` to change it).
fn orders() -> usize {
    env_number("ACTIVE_ORDERS", 10_000)
}

/// Fulfillment workers of each host.
const WORKERS: usize = 128;

fn host<S: OperationStore + JobStore + DeploymentStore>(store: Arc<S>) -> WasmHost {
    let mut config = orders_deployment(Duration::from_secs(5), WORKERS);
    config.max_backlog = 20_000;
    WasmHost::builder(&config)
        .stores(store)
        .build()
        .expect("the host loads")
}

/// Starts `count` orders over `hosts` in turn, 64 at a time, and waits until each completed;
/// answers the most runs seen active at once on the hosts while they ran.
async fn run_orders(hosts: &[&WasmHost], count: usize) -> usize {
    let runtimes: Vec<_> = hosts.iter().map(|h| h.runtime().clone()).collect();
    let finished = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let finished = Arc::clone(&finished);
        async move {
            let mut peak = 0;
            while !finished.load(Ordering::SeqCst) {
                peak = peak.max(runtimes.iter().map(|r| r.active_handlers()).sum());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            peak
        }
    });
    let ids: Vec<String> = futures::stream::iter(0..count)
        .map(|n| {
            let host = hosts[n % hosts.len()];
            let input = json!({
                "orderId": format!("ord_{n}"),
                "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }]
            });
            async move {
                host.start("Orders.Process", None, input)
                    .await
                    .unwrap_or_else(|e| panic!("start: {e}"))
                    .id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for id in &ids {
        let done = hosts[0]
            .runtime()
            .wait(id, Some(Duration::from_secs(600)))
            .await
            .unwrap_or_else(|e| panic!("wait: {e}"));
        assert_eq!(done.state, OperationState::Completed, "{done:?}");
    }
    finished.store(true, Ordering::SeqCst);
    sampler.await.unwrap()
}

/// The gauge counted the runs while they ran: more than none, and never more than one per
/// order (a worker that takes an order over joins its run).
fn assert_counted_while_running(peak: usize) {
    assert!(
        peak > 0 && peak <= orders(),
        "peak of active handlers: {peak}"
    );
}

/// No run is counted active and no doorbell is held once every order is done. A worker's job
/// attempt ends just after the terminal change it made, so its run gets 10 s to be let go.
async fn assert_nothing_left(host: &WasmHost) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.runtime().active_handlers() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(host.runtime().active_handlers(), 0);
    assert_eq!(host.runtime().doorbells(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_is_active_after_ten_thousand_handed_off_orders_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).expect("the store opens"));
    let host = host(store);
    let peak = run_orders(&[&host], orders()).await;
    assert_counted_while_running(peak);
    assert_nothing_left(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_is_active_after_ten_thousand_handed_off_orders_on_two_postgres_hosts() {
    let url = opshost_tests::postgres::fresh_database().await;
    let connect = || async {
        Arc::new(
            PostgresStore::connect(&url)
                .await
                .expect("the store connects"),
        )
    };
    let (a, b) = (host(connect().await), host(connect().await));
    let peak = run_orders(&[&a, &b], orders()).await;
    assert_counted_while_running(peak);
    for host in [&a, &b] {
        assert_nothing_left(host).await;
    }
}
