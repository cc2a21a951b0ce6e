//! The cost of a guest's outbound HTTP call against a native one, to the same local server, in
//! the same run.
//!
//! - `guest`: the test-egress guest under the real host sends `GET /hello` in a loop through
//!   `wasi:http` (each call checked against its grant, resolved, connected, sent and read by
//!   the host) and times each call with its own clock, from the call to the end of the body.
//! - `native`: the same request from this process with hyper, a new connection each time, as
//!   the host makes one for each guest request, driven the way the host drives it.
//!
//! `cargo bench -p opshost-tests --bench egress` (or `./dev bench`). `BENCH_CALLS` sets the
//! calls per side (default 2,000).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use opshost_sandbox::LimitsTable;
use opshost_sandbox::egress::HttpGrant;
use opshost_tests::upstream::Upstream;
use opshost_tests::{env_number, guest, load, run_scenario, testing_deployment};
use serde_json::json;

/// Rounds each side runs in, alternating.
const ROUNDS: usize = 5;

/// p50 and p99 of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

async fn native(upstream: &Upstream, calls: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let began = Instant::now();
        let stream = tokio::net::TcpStream::connect(upstream.address)
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, mut connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
        let request = hyper::Request::get("/hello")
            .header("host", upstream.address.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        // As the host does: the connection is driven in this task until the response head
        // arrives, then on a task of its own while the body is read.
        let response = tokio::select! {
            response = sender.send_request(request) => response.unwrap(),
            ended = &mut connection => panic!("the connection ended first: {ended:?}"),
        };
        let io = tokio::spawn(connection);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 17);
        samples.push(began.elapsed());
        drop(sender);
        let _ = io.await;
    }
    samples
}

async fn guest_calls(upstream: &Upstream, calls: usize) -> Vec<Duration> {
    let mut config = testing_deployment(Duration::from_millis(300));
    config.handlers[0].component = guest("test_egress");
    config.handlers[0].grants.http = Some(HttpGrant {
        allow: vec![upstream.origin()],
        headers: BTreeMap::new(),
    });
    config.limits = LimitsTable {
        http_max_requests: Some(calls as u64 + 1),
        cpu_ms: Some(600_000),
        ..LimitsTable::default()
    };
    let host = load(&config);
    let input = json!({ "scenario": "fetch-loop", "url": upstream.url("/hello"), "count": calls });
    let snapshot = run_scenario(&host, input).await;
    let note: serde_json::Value = serde_json::from_str(
        snapshot.output.expect("completed")["note"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(note["ok"], calls, "{note}");
    note["micros"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Duration::from_micros(m.as_u64().unwrap()))
        .collect()
}

fn main() {
    let calls = env_number("BENCH_CALLS", 2_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = Upstream::start().await;
        // Warm both paths once.
        let warm = upstream.clone();
        tokio::spawn(async move { native(&warm, 50).await }).await.unwrap();
        guest_calls(&upstream, 50).await;
        // Alternate the two sides in rounds, so that drift on a shared machine hits both.
        let (mut native_samples, mut guest_samples) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            // On a worker thread, as the host's own sends are (not on the thread that blocks
            // on the runtime).
            let target = upstream.clone();
            let native = tokio::spawn(async move { native(&target, calls / ROUNDS).await });
            native_samples.extend(native.await.unwrap());
            guest_samples.extend(guest_calls(&upstream, calls / ROUNDS).await);
        }
        let (native_p50, native_p99) = percentiles(native_samples);
        let (guest_p50, guest_p99) = percentiles(guest_samples);
        println!(
            "egress: {calls} sequential GETs of a local server per side, new connection each, in {ROUNDS} alternating rounds"
        );
        println!("{:<8} {:>10} {:>10}", "side", "p50", "p99");
        println!(
            "{:<8} {:>10.1?} {:>10.1?}",
            "native", native_p50, native_p99
        );
        println!("{:<8} {:>10.1?} {:>10.1?}", "guest", guest_p50, guest_p99);
        println!(
            "guest / native: p50 {:.2}x, p99 {:.2}x",
            guest_p50.as_secs_f64() / native_p50.as_secs_f64(),
            guest_p99.as_secs_f64() / native_p99.as_secs_f64()
        );
    });
}
