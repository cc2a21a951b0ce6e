//! `opshost serve` asked to stop with SIGTERM: it refuses new starts, lets running work end
//! within its grace period, hands back what is left and exits 0; nothing acknowledged is lost,
//! and on PostgreSQL another host takes the rest over at once.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Serve;
use crate::common::{root, token};
use crate::runtime;

/// A host config: `contract`, its handler `handler` for `operation`, the fulfillment worker
/// when `workers`, and `extra` tables.
pub(crate) fn write_config(
    dir: &Path,
    contract: &str,
    operation: &str,
    handler: &str,
    extra: &str,
) -> PathBuf {
    let wasm = |name: &str| root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    let worker = wasm("orders_fulfillment");
    let workers = if operation == "Orders.Process" {
        format!(
            "[[workers]]\nqueue = \"fulfillment\"\ncomponent = {worker:?}\nconcurrency = 64\n\
             grants = {{ http = {{ allow = [] }} }}\n\n"
        )
    } else {
        String::new()
    };
    let config = format!(
        "contract = {:?}\nmax_concurrent_operations = 512\n\n\
         [[handlers]]\noperation = \"{operation}\"\ncomponent = {:?}\n\n{workers}\
         [jobs]\nlease_ms = 2000\npoll_ms = 200\n\n{extra}\n\n\
         [auth]\nhs256_secret_env = \"OPSHOST_JWT_SECRET\"\n",
        root().join("contracts").join(contract),
        wasm(handler),
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

/// `opshost serve` of `Testing.Scenario` (the test-handlers guest) with `shutdown_grace_ms`
/// of `grace_ms`, on directories that live as long as the answer.
fn testing_serve(grace_ms: u64) -> (Serve, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        &format!("[server]\nshutdown_grace_ms = {grace_ms}"),
    );
    let host = Serve::on_data_dir(&config, data.path());
    (host, [dir, data])
}

fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for `child` to exit (at most `limit`); answers its exit code.
fn exit_code(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the host did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Callers starting orders.
const CALLERS: usize = 32;

#[test]
fn sigterm_under_load_loses_nothing_and_every_acknowledged_order_completes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "orders_service.manifest.json",
        "Orders.Process",
        "orders_process",
        "[server]\nshutdown_grace_ms = 1000\nmax_connections_per_client = 1024",
    );
    let mut first = Serve::on_data_dir(&config, data.path());
    let token = token(&["orders.write", "orders.read"]);
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let cut: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let drain = runtime().block_on(async {
        let http = opshost_tests::net::http();
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (http, token, url) = (http.clone(), token.clone(), first.url.clone());
                let (acknowledged, refused) = (Arc::clone(&acknowledged), Arc::clone(&refused));
                let cut = Arc::clone(&cut);
                tokio::spawn(async move {
                    for n in 0.. {
                        let order = json!({
                            "orderId": format!("ord_{caller}_{n}"),
                            "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }]
                        });
                        let sent = http
                            .post(format!("{url}/v1/operations/Orders.Process"))
                            .bearer_auth(&token)
                            .header("idempotency-key", format!("k-{caller}-{n}"))
                            .json(&order)
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status() == 202 => {
                                let snapshot: Value = response.json().await.unwrap();
                                let id = snapshot["id"].as_str().unwrap().to_owned();
                                acknowledged.lock().unwrap().push(id);
                            }
                            Ok(response) => {
                                assert_eq!(response.status(), 503, "only refused while draining");
                                assert!(response.headers().contains_key("retry-after"));
                                *refused.lock().unwrap() += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            // The host has closed its listener.
                            Err(error) if error.is_connect() => return,
                            // Sent as the host closed the connection it came on: the caller
                            // cannot know whether it was accepted, so it retries with its
                            // key once a host is back.
                            Err(_) => {
                                cut.lock().unwrap().push((format!("k-{caller}-{n}"), order));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let signalled = Instant::now();
        sigterm(&first.child);
        let code =
            tokio::task::block_in_place(|| exit_code(&mut first.child, Duration::from_secs(30)));
        let drain = signalled.elapsed();
        assert_eq!(code, Some(0), "a drained host exits 0");
        for caller in callers {
            caller.await.unwrap();
        }
        drain
    });
    let mut acknowledged = acknowledged.lock().unwrap().clone();
    let cut = cut.lock().unwrap().clone();
    let second = Serve::on_data_dir(&config, data.path());
    // A start whose answer was cut is retried under its key: the host that is back answers
    // for the operation if the first one accepted it, or accepts it now.
    runtime().block_on(async {
        for (key, order) in &cut {
            let response = opshost_tests::net::http()
                .post(format!("{}/v1/operations/Orders.Process", second.url))
                .bearer_auth(&token)
                .header("idempotency-key", key)
                .json(order)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let snapshot: Value = response.json().await.unwrap();
            acknowledged.push(snapshot["id"].as_str().unwrap().to_owned());
        }
    });
    assert!(
        acknowledged.len() >= CALLERS,
        "the load ran: {}",
        acknowledged.len()
    );

    let (mut completed, mut lost, mut failed) = (0, 0, 0);
    for id in &acknowledged {
        let waited = second.call(&token, &["wait", id, "--timeout", "120"]);
        match crate::json(&waited)["state"].as_str() {
            Some("completed") => completed += 1,
            Some(_) => failed += 1,
            None => lost += 1,
        }
    }
    eprintln!(
        "SIGTERM under load from {CALLERS} callers: drained and exited 0 in {drain:?}; {} starts \
         acknowledged, {} refused while draining, {} cut and retried; after the restart \
         {completed} completed, {lost} lost, {failed} failed",
        acknowledged.len() - cut.len(),
        refused.lock().unwrap(),
        cut.len()
    );
    assert_eq!((lost, failed), (0, 0));
    assert_eq!(completed, acknowledged.len());
    assert!(
        *refused.lock().unwrap() > 0,
        "starts were refused while draining"
    );
    // Attempts stopped at the shutdown were handed back, not counted: every fulfillment job
    // finished in its first attempt.
    let attempts = runtime().block_on(job_attempts(&second.url));
    assert_eq!(attempts.len(), acknowledged.len(), "one job per order");
    assert!(attempts.iter().all(|n| *n == 1), "{attempts:?}");
}

/// The attempt number of every job of the host at `url`.
async fn job_attempts(url: &str) -> Vec<u64> {
    let admin = token(&["opshost.admin"]);
    let http = opshost_tests::net::http();
    let mut attempts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{url}/v1/jobs"))
            .bearer_auth(&admin)
            .query(&[("limit", "100")]);
        if let Some(after) = &after {
            request = request.query(&[("after", after)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        let items = page["items"].as_array().expect("a page of jobs");
        attempts.extend(items.iter().map(|job| job["attempt"].as_u64().unwrap()));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return attempts,
        }
    }
}

/// Operations running on the host that is stopped.
const RUNNING: usize = 20;

#[test]
fn a_host_stopped_with_sigterm_is_taken_over_by_the_other_within_a_second() {
    let url = opshost_tests::postgres::fresh_database_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        "[server]\nshutdown_grace_ms = 300",
    );
    let mut a = Serve::on_postgres(&config, &url);
    let b = Serve::on_postgres(&config, &url);
    let token = crate::common::token(&["testing.run"]);
    runtime().block_on(async {
        let http = opshost_tests::net::http();
        let mut ids = Vec::new();
        for _ in 0..RUNNING {
            let response = http
                .post(format!("{}/v1/operations/Testing.Scenario", a.url))
                .bearer_auth(&token)
                .json(&json!({ "scenario": "echo-signals", "signals": 1 }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let snapshot: Value = response.json().await.unwrap();
            ids.push(snapshot["id"].as_str().unwrap().to_owned());
        }
        let snapshot = |id: &str| {
            let (http, token, url) = (&http, &token, &b.url);
            let id = id.to_owned();
            async move {
                http.get(format!("{url}/v1/operations/{id}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        for id in &ids {
            while snapshot(id).await["state"] != "running" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let signalled = Instant::now();
        sigterm(&a.child);
        let code = tokio::task::block_in_place(|| exit_code(&mut a.child, Duration::from_secs(30)));
        assert_eq!(code, Some(0));
        let exited = signalled.elapsed();
        let exit = Instant::now();
        for id in &ids {
            loop {
                let current = snapshot(id).await;
                if current["attempt"] == 2 && current["state"] == "running" {
                    break;
                }
                assert!(
                    exit.elapsed() < Duration::from_secs(30),
                    "not taken over: {current}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let taken_over = exit.elapsed();
        eprintln!(
            "SIGTERM to host A with {RUNNING} running operations: A exited 0 after {exited:?}; \
             host B ran every one again (attempt 2) {taken_over:?} after A exited"
        );
        assert!(
            taken_over < Duration::from_secs(1),
            "B took {taken_over:?} to take over"
        );
        // And they finish on B.
        for id in &ids {
            let sent = http
                .post(format!("{}/v1/operations/{id}/signals/Note", b.url))
                .bearer_auth(&token)
                .json(&json!({ "text": "on b" }))
                .send()
                .await
                .unwrap();
            assert_eq!(sent.status(), 202);
        }
        for id in &ids {
            let done: Value = http
                .get(format!("{}/v1/operations/{id}/wait?timeout=30", b.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(done["state"], "completed", "{done}");
        }
    });
}

#[test]
fn a_second_sigterm_stops_at_once_without_waiting_for_the_grace_period() {
    let (mut host, _dirs) = testing_serve(60_000);
    let token = token(&["testing.run"]);
    runtime().block_on(async {
        let response = opshost_tests::net::http()
            .post(format!("{}/v1/operations/Testing.Scenario", host.url))
            .bearer_auth(&token)
            .json(&json!({ "scenario": "echo-signals", "signals": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "a handler to wait for");
        // The drain must find the handler running, not still pending.
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let current = opshost_tests::net::json_of(
                opshost_tests::net::http()
                    .get(format!("{}/v1/operations/{id}", host.url))
                    .bearer_auth(&token),
            )
            .await;
            if current["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "never running: {current}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let signalled = Instant::now();
    sigterm(&host.child);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&host.child);
    let code = exit_code(&mut host.child, Duration::from_secs(30));
    assert_eq!(code, Some(1), "stopped without draining");
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "did not wait out the 60 s grace"
    );
}

#[test]
fn a_draining_host_reports_unhealthy_refuses_starts_serves_reads_and_answers_open_waits() {
    let (mut host, _dirs) = testing_serve(2_000);
    let token = token(&["testing.run"]);
    runtime().block_on(async {
        let http = opshost_tests::net::http();
        let start = || {
            http.post(format!("{}/v1/operations/Testing.Scenario", host.url))
                .bearer_auth(&token)
                .json(&json!({ "scenario": "echo-signals", "signals": 1 }))
                .send()
        };
        let started: Value = start().await.unwrap().json().await.unwrap();
        let id = started["id"].as_str().unwrap().to_owned();
        // A wait that outlives the host: it must get an answer, not a cut connection.
        let wait = tokio::spawn({
            let (http, token) = (http.clone(), token.clone());
            let url = format!("{}/v1/operations/{id}/wait?timeout=60", host.url);
            async move { http.get(url).bearer_auth(&token).send().await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        sigterm(&host.child);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let health = http
            .get(format!("{}/healthz", host.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 503, "load balancers look elsewhere");
        let refused = start().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert!(refused.headers().contains_key("retry-after"));
        let read = http
            .get(format!("{}/v1/operations/{id}", host.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "reads are served while draining");

        let waited = wait.await.unwrap().expect("the wait was answered");
        assert_eq!(waited.status(), 200);
        let snapshot: Value = waited.json().await.unwrap();
        assert_eq!(snapshot["id"], id.as_str());
        assert_eq!(
            snapshot["state"], "running",
            "the operation as it stood, left for the next start"
        );
    });
    let code = exit_code(&mut host.child, Duration::from_secs(30));
    assert_eq!(code, Some(0));
}
