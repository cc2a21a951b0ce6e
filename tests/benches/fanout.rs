//! Watch fan-out: 1,000 and 10,000 SSE watchers over loopback, and the delivery latency of
//! each progress event to each watcher. Each count runs three ways in one run: watchers of
//! the operation (`/v1/operations/{id}/events`, the baseline), and list-watch streams
//! (`/v1/events`, every change of the tenant) on the in-memory store, SQLite and PostgreSQL.
//!
//! The host serves the testing contract over HTTP; one operation is driven natively (no
//! guest) so the figures are the event path's alone: store, doorbell or change feed, SSE
//! encoding, socket.
//! The watchers run in a child process (this binary again, `FANOUT_ROLE=watchers`), so each
//! side stays within the machine's open-file limit. They are raw SSE connections that parse
//! only what the measure needs, as a load generator would: on a 2-core machine a full client
//! per watcher would take half the CPU from the host it measures. Latency is the watcher's
//! wall clock at receipt minus the event's `updatedAt`, both read from the same machine's
//! clock.
//!
//! `cargo bench -p opshost-tests --bench fanout`. `FANOUT_WATCHERS=1000,10000` sets the
//! counts, `FANOUT_STREAMS=operation,list,list-sqlite,list-postgres` the ways (PostgreSQL only
//! with `OPSHOST_TEST_POSTGRES`), `FANOUT_EVENTS` the progress
//! events per run (default 20, 100 ms apart).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opshost_runtime::store::MemoryStore;
use opshost_runtime::{OperationRuntime, Owner, RuntimeConfig};
use opshost_server::ServerConfig;
use opshost_tests::net::{TENANT, TestServer, token};
use opshost_tests::{env_number, testing_runtime};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if std::env::var("FANOUT_ROLE").as_deref() == Ok("watchers") {
        runtime.block_on(watchers());
    } else {
        runtime.block_on(host());
    }
}

/// The host side: for each way and count, serves one operation, starts the watchers, drives
/// the progress.
async fn host() {
    let events = env_number("FANOUT_EVENTS", 20);
    println!(
        "{:>12} {:>9} {:>7} {:>10} {:>10} {:>10} {:>12}",
        "stream", "watchers", "events", "delivered", "p50 ms", "p99 ms", "max ms"
    );
    let data = tempfile::tempdir().expect("a temporary directory");
    // On PostgreSQL too when the bench is given a server (`./dev bench` starts one).
    let ways = match std::env::var("OPSHOST_TEST_POSTGRES") {
        Ok(_) => "operation,list,list-sqlite,list-postgres",
        Err(_) => "operation,list,list-sqlite",
    };
    for way in env("FANOUT_STREAMS", ways).split(',') {
        let store: Arc<dyn opshost_runtime::store::OperationStore> = match way.trim() {
            "list-sqlite" => Arc::new(
                opshost_store_sqlite::SqliteStore::open(data.path().join(way))
                    .expect("an SQLite store"),
            ),
            "list-postgres" => Arc::new(
                opshost_store_postgres::PostgresStore::connect(
                    &opshost_tests::postgres::fresh_database().await,
                )
                .await
                .expect("a PostgreSQL store"),
            ),
            "operation" | "list" => Arc::new(MemoryStore::new()),
            other => panic!("FANOUT_STREAMS: unknown `{other}`"),
        };
        let runtime = testing_runtime(store, RuntimeConfig::default());
        // Every watcher connects from 127.0.0.1: the connection caps must let them all in.
        let config = ServerConfig {
            max_in_flight: 100_000,
            max_connections: 100_000,
            max_connections_per_client: 100_000,
            ..ServerConfig::default()
        };
        let server = TestServer::start_with(&runtime, config).await;
        for count in env("FANOUT_WATCHERS", "1000,10000").split(',') {
            let count: usize = count.trim().parse().expect("FANOUT_WATCHERS: numbers");
            run(&runtime, &server.url, way.trim(), count, events).await;
        }
    }
}

async fn run(runtime: &OperationRuntime, url: &str, way: &str, watchers: usize, events: usize) {
    let owner = Owner {
        tenant: TENANT.into(),
        subject: "bench".into(),
    };
    let accepted = runtime
        .accept_as(
            owner,
            "Testing.Scenario",
            None,
            Some(json!({ "scenario": "complete" })),
        )
        .await
        .unwrap_or_else(|e| panic!("accept: {e}"));
    let id = accepted.snapshot.id;
    let operation = runtime
        .attach(&id)
        .await
        .unwrap_or_else(|e| panic!("attach: {e}"));
    operation
        .started()
        .await
        .unwrap_or_else(|e| panic!("started: {e}"));
    let exe = std::env::current_exe().expect("this bench's path");
    let mut child = Command::new(exe)
        .env("FANOUT_ROLE", "watchers")
        .env("FANOUT_URL", url)
        .env("FANOUT_ID", &id)
        .env("FANOUT_STREAM", way)
        .env("FANOUT_COUNT", watchers.to_string())
        .env("FANOUT_TOKEN", token(&["testing.run"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the watcher process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the watchers did not connect");
    for percent in 1..=events {
        operation
            .progress(json!({ "percent": percent * 100 / events }))
            .await
            .unwrap_or_else(|e| panic!("progress: {e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operation
        .complete(json!({ "note": "done" }))
        .await
        .unwrap_or_else(|e| panic!("complete: {e}"));
    let report = lines.next().and_then(Result::ok).unwrap_or_default();
    let status = child.wait().expect("the watcher process ends");
    assert!(status.success(), "watchers failed: {status}");
    println!("{way:>12} {report}");
}

/// The watcher side: opens every watch, says `ready` once each has its first event (the
/// operation's snapshot, or the list-watch's `ready`), then
/// collects the latency of every progress event and prints one table row.
async fn watchers() {
    let url = env("FANOUT_URL", "");
    let address = url.trim_start_matches("http://").to_owned();
    let path = match env("FANOUT_STREAM", "operation").as_str() {
        "operation" => format!("/v1/operations/{}/events", env("FANOUT_ID", "")),
        _ => "/v1/events".to_owned(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        env("FANOUT_TOKEN", "")
    );
    let count = env_number("FANOUT_COUNT", 1000);
    let (connected, mut ready) = tokio::sync::mpsc::channel::<()>(count);
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (address, request, connected) = (address.clone(), request.clone(), connected.clone());
        tasks.push(tokio::spawn(async move {
            watch(&address, &request, connected).await
        }));
        // Connect in waves so the listen backlog never overflows.
        if tasks.len() % 256 == 0 {
            for _ in 0..256 {
                ready.recv().await;
            }
        }
    }
    for _ in 0..count % 256 {
        ready.recv().await;
    }
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a watcher task"));
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let events = all.len() / count.max(1);
    println!(
        "{count:>9} {events:>7} {:>10} {:>10.1} {:>10.1} {:>12.1}",
        all.len(),
        at(0.50),
        at(0.99),
        all.last().copied().unwrap_or(0.0)
    );
}

/// One SSE watcher on a raw connection, as a load generator: it reads event frames and parses
/// only each event's name and `updatedAt`, so the watchers' CPU goes to the sockets.
async fn watch(address: &str, request: &str, connected: mpsc::Sender<()>) -> Vec<f64> {
    let mut stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let (mut buffer, mut latencies, mut first) = (Vec::new(), Vec::new(), true);
    let mut chunk = vec![0; 16 << 10];
    loop {
        let read = stream.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            return latencies;
        }
        if first && !chunk.starts_with(b"HTTP/1.1 200") && buffer.is_empty() {
            panic!("watch refused: {}", String::from_utf8_lossy(&chunk[..read]));
        }
        let received = Utc::now();
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(end) = find(&buffer, b"\n\n") {
            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(kind) = field(&frame, b"event: ", b"\n") else {
                continue;
            };
            if std::mem::take(&mut first) {
                let _ = connected.send(()).await;
                continue;
            }
            match kind {
                "progress" => {
                    let updated = field(&frame, b"\"updatedAt\":\"", b"\"")
                        .and_then(|text| text.parse::<chrono::DateTime<Utc>>().ok())
                        .unwrap_or_else(|| panic!("a progress event without updatedAt"));
                    let delay = received - updated;
                    latencies.push(delay.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
                }
                "completed" | "failed" | "cancelled" => return latencies,
                _ => {}
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The text between `start` and the next `end` in `frame`.
fn field<'a>(frame: &'a [u8], start: &[u8], end: &[u8]) -> Option<&'a str> {
    let from = find(frame, start)? + start.len();
    let to = from + find(&frame[from..], end)?;
    std::str::from_utf8(&frame[from..to]).ok()
}
