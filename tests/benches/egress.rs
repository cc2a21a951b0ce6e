//! The cost of a guest's outbound HTTP call against a native one, to the same local server, in
//! the same run.
//!
//! - `guest`: the test-egress guest under the real host sends `GET /hello` in a loop through
//!   `wasi:http` (each call checked against its grant, resolved, connected, sent and read by
//!   the host) and times each call with its own clock, from the call to the end of the body.
//! - `native`: the same request from this process with hyper, a new connection each time, as
//!   the host makes one for each guest request.
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
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let io = tokio::spawn(connection);
        let request = hyper::Request::get("/hello")
            .header("host", upstream.address.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
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
        native(&upstream, 50).await;
        guest_calls(&upstream, 50).await;
        let (native_p50, native_p99) = percentiles(native(&upstream, calls).await);
        let (guest_p50, guest_p99) = percentiles(guest_calls(&upstream, calls).await);
        println!("egress: {calls} sequential GETs of a local server, new connection each");
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
