//! `opshost serve` against clients that misbehave, driven from outside over real sockets:
//! half-sent requests from one address, thousands of watches of finished operations, the same
//! idempotency key from two tenants across a restart, and its database going away.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use opshost_tests::net::metric;

use crate::common::{root, token, token_for};
use crate::runtime;
use crate::{START, Serve};

/// The orders deployment with `server` appended to its `[server]` table.
fn write_config(dir: &Path, server: &str) -> PathBuf {
    let wasm = root().join("target/wasm32-wasip2/release/orders_process.wasm");
    let worker = root().join("target/wasm32-wasip2/release/orders_fulfillment.wasm");
    let contract = root().join("contracts/orders_service.manifest.json");
    let config = format!(
        "contract = {contract:?}\n\n\
         [[handlers]]\noperation = \"Orders.Process\"\ncomponent = {wasm:?}\n\n\
         [[workers]]\nqueue = \"fulfillment\"\ncomponent = {worker:?}\nconcurrency = 16\n\
         grants = {{ http = {{ allow = [] }} }}\n\n\
         [jobs]\nlease_ms = 2000\n\n\
         [server]\n{server}\n\n[auth]\nhs256_secret_env = \"OPSHOST_JWT_SECRET\"\n",
    );
    let path = dir.join("host.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

/// `host:port` of a served URL.
fn address(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A connection to `target` from the loopback address `from`.
async fn connect_from(from: [u8; 4], target: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind((from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    socket.connect(target).await.expect("connects")
}

/// Reads until the peer closes (or `limit` passes): what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

const CAP: usize = 50;
const FLOOD: usize = 60;
const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn half_sent_requests_past_the_cap_are_refused_and_the_rest_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "max_connections_per_client = {CAP}\nheader_timeout_ms = {}",
            HEADER_TIMEOUT.as_millis()
        ),
    );
    let serve = Serve::with_config(&config);
    let target = address(&serve.url);
    runtime().block_on(async {
        // One well-behaved keep-alive client first, then a flood of half-sent requests.
        let mut good = connect_from([127, 0, 0, 1], target).await;
        let began = Instant::now();
        let mut held = Vec::new();
        for _ in 0..FLOOD - 1 {
            let mut stream = connect_from([127, 0, 0, 1], target).await;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: opshost\r\nX-Slow: ")
                .await
                .expect("a half-sent request is written");
            held.push(stream);
        }

        // Another client is served at once, and so is the good connection already open.
        let asked = Instant::now();
        let mut other = connect_from([127, 0, 0, 2], target).await;
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: opshost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, closed) = read_until_closed(&mut other, Duration::from_secs(1)).await;
        let healthz = asked.elapsed();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed, "answered within a second");
        good.write_all(b"GET /healthz HTTP/1.1\r\nHost: opshost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_until_closed(&mut good, Duration::from_secs(1)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Past the cap, the flood was refused at once with a 503; the rest are closed by the
        // header timeout.
        let outcomes = futures::future::join_all(held.iter_mut().map(|stream| async move {
            let (answer, closed) = read_until_closed(stream, HEADER_TIMEOUT * 4).await;
            (answer, closed, began.elapsed())
        }))
        .await;
        let refused = outcomes
            .iter()
            .filter(|(answer, ..)| answer.starts_with("HTTP/1.1 503"))
            .count();
        let timed_out: Vec<Duration> = outcomes
            .iter()
            .filter(|(answer, closed, _)| *closed && !answer.starts_with("HTTP/1.1 503"))
            .map(|(.., at)| *at)
            .collect();
        let slowest = timed_out.iter().max().copied().unwrap_or_default();
        eprintln!(
            "cap {CAP} per client; {refused} refused at once; /healthz from another client in \
             {healthz:?}; {} half-sent closed by the {HEADER_TIMEOUT:?} header timeout, the last \
             after {slowest:?}",
            timed_out.len()
        );
        assert_eq!(refused, FLOOD - CAP, "connections past the cap of {CAP}");
        assert_eq!(
            timed_out.len(),
            CAP - 1,
            "every admitted half-sent request is closed"
        );
        assert!(
            timed_out.iter().all(|at| *at >= HEADER_TIMEOUT),
            "none is closed before the header timeout: {timed_out:?}"
        );

        // Once they are gone, the same client is admitted again.
        let mut again = connect_from([127, 0, 0, 1], target).await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: opshost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_until_closed(&mut again, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
}

const WATCHES: usize = 10_000;

#[test]
fn ten_thousand_watches_of_finished_operations_end_and_leave_nothing_behind() {
    let serve = Serve::start();
    let token = token(&["orders.write", "orders.read"]);
    let finished: Vec<(String, u64)> = (0..4)
        .map(|n| {
            let key = format!("done-{n}");
            let started = serve.call(&token, &[START, &["--id", &key]].concat());
            let id = crate::json(&started)["id"].as_str().unwrap().to_owned();
            let waited = crate::json(&serve.call(&token, &["wait", &id]));
            assert_eq!(waited["state"], "completed", "{waited}");
            (id, waited["revision"].as_u64().unwrap())
        })
        .collect();
    runtime().block_on(async {
        let http = opshost_tests::net::http();
        let began = Instant::now();
        let statuses = futures::stream::iter(0..WATCHES)
            .map(|n| {
                let (http, token, url) = (&http, &token, &serve.url);
                let (id, revision) = &finished[n % finished.len()];
                async move {
                    let request = http
                        .get(format!("{url}/v1/operations/{id}/events"))
                        .bearer_auth(token);
                    let request = match n % 3 {
                        // How a browser's EventSource reconnects after the terminal event.
                        0 => request.header("last-event-id", revision.to_string()),
                        1 => request.header("last-event-id", (revision - 1).to_string()),
                        _ => request,
                    };
                    let response = request.send().await.unwrap();
                    let status = response.status().as_u16();
                    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
                        .await
                        .expect("every watch of a finished operation ends")
                        .unwrap();
                    if status == 200 {
                        assert!(body.contains("event: completed"), "{body}");
                    }
                    status
                }
            })
            .buffer_unordered(200)
            .collect::<Vec<u16>>()
            .await;
        let no_content = statuses.iter().filter(|s| **s == 204).count();
        let streamed = statuses.iter().filter(|s| **s == 200).count();
        eprintln!(
            "{WATCHES} watches of finished operations in {:?}: {no_content} answered 204, \
             {streamed} sent the terminal event and closed",
            began.elapsed()
        );
        assert_eq!(no_content, WATCHES.div_ceil(3));
        assert_eq!(no_content + streamed, WATCHES);
        assert_eq!(metric(&serve.url, "opshost_watchers").await, 0.0);
        assert_eq!(metric(&serve.url, "opshost_doorbells").await, 0.0);
    });
}

#[test]
fn one_key_in_two_tenants_makes_two_orders_that_both_finish_after_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let config = root().join("contracts/orders.deploy.toml");
    let scopes = ["orders.write", "orders.read"];
    let (acme, globex) = (token(&scopes), token_for("globex", &scopes));
    let key: &[&str] = &["--id", "checkout-1"];
    // Both are accepted, then the host is killed (SIGKILL) before they can finish.
    let ids: Vec<String> = {
        let first = Serve::on_data_dir(&config, data.path());
        [&acme, &globex]
            .iter()
            .map(|token| {
                let started = first.call(token, &[START, key].concat());
                assert!(started.status.success(), "{}", crate::text(&started.stderr));
                crate::json(&started)["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(ids, ["checkout-1@acme", "checkout-1@globex"]);
    let second = Serve::on_data_dir(&config, data.path());
    for (token, own, other) in [(&acme, &ids[0], &ids[1]), (&globex, &ids[1], &ids[0])] {
        let waited = crate::json(&second.call(token, &["wait", own, "--timeout", "60"]));
        assert_eq!(waited["state"], "completed", "{waited}");
        assert_eq!(waited["output"]["status"], "shipped", "{waited}");
        let hidden = second.call(token, &["get", other]);
        assert_eq!(
            hidden.status.code(),
            Some(3),
            "another tenant's order is not found"
        );
        let again = second.call(token, &[START, key].concat());
        assert_eq!(crate::json(&again)["id"], own.as_str(), "still idempotent");
    }
}

/// A PostgreSQL server of this test alone, stopped and started again by the test.
struct Database {
    url: String,
    dir: String,
}

impl Database {
    fn start() -> Self {
        let output = std::process::Command::new(root().join("scripts/postgres"))
            .arg("start")
            .output()
            .expect("scripts/postgres runs");
        assert!(output.status.success(), "{}", crate::text(&output.stderr));
        let line = crate::text(&output.stdout);
        let (url, dir) = line.trim().split_once(' ').expect("`<url> <dir>`");
        Self {
            url: url.to_owned(),
            dir: dir.to_owned(),
        }
    }

    fn script(&self, action: &str) {
        let output = std::process::Command::new(root().join("scripts/postgres"))
            .args([action, &self.dir])
            .output()
            .expect("scripts/postgres runs");
        assert!(output.status.success(), "{}", crate::text(&output.stderr));
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.script("stop");
    }
}

const BEFORE: usize = 6;

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(3);

#[test]
fn while_the_database_is_down_starts_are_503_and_the_host_serves_again_once_it_is_back() {
    let database = Database::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let serve = Serve::on_postgres(&config, &database.url);
    let token = token(&["orders.write", "orders.read"]);
    runtime().block_on(async {
        let http = opshost_tests::net::http();
        let order = json!({ "orderId": "ord_db", "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }] });
        let start = |key: String| {
            let (http, token, url, order) = (&http, &token, &serve.url, &order);
            async move {
                http.post(format!("{url}/v1/operations/Orders.Process"))
                    .bearer_auth(token)
                    .header("idempotency-key", key)
                    .json(order)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let mut accepted = Vec::new();
        for n in 0..BEFORE {
            let response = start(format!("before-{n}")).await;
            assert_eq!(response.status(), 202);
            accepted.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }

        database.script("pause");
        let down = Instant::now();
        while down.elapsed() < OUTAGE {
            let refused = start(format!("during-{}", down.elapsed().as_millis())).await;
            assert_eq!(refused.status(), 503);
            let retry_after = refused.headers()["retry-after"].to_str().unwrap().to_owned();
            assert!(retry_after.parse::<u64>().unwrap() >= 1);
            let error: Value = refused.json().await.unwrap();
            assert_eq!(error["error"]["code"], "Unavailable", "{error}");
            let read = http
                .get(format!("{}/v1/operations/{}", serve.url, accepted[0]))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 503, "reads are unavailable too, not failed");
            let health = http.get(format!("{}/healthz", serve.url)).send().await.unwrap();
            assert_eq!(health.status(), 200, "the host itself stays up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        database.script("resume");
        let back = Instant::now();
        let after = loop {
            let response = start("after".into()).await;
            if response.status() == 202 {
                break response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
            }
            assert_eq!(response.status(), 503, "only unavailable while it comes back");
            assert!(back.elapsed() < Duration::from_secs(60), "the host never served again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("serving again {:?} after the database came back", back.elapsed());
        accepted.push(after);

        for id in &accepted {
            let snapshot: Value = loop {
                let response = http
                    .get(format!("{}/v1/operations/{id}/wait?timeout=60", serve.url))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                if response.status() == 200 {
                    let snapshot: Value = response.json().await.unwrap();
                    if snapshot["state"] != "running" && snapshot["state"] != "pending" {
                        break snapshot;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(snapshot["state"], "completed", "{snapshot}");
            assert_eq!(snapshot["output"]["status"], "shipped", "{snapshot}");
        }
    });
}
