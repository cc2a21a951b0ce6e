//! Connections from clients that misbehave: more than the host lets in, request bodies that
//! never arrive, and watches that outlive the header timeout.

use std::time::Duration;

use futures::StreamExt;
use opshost_server::ServerConfig;
use opshost_tests::net::{TestServer, token};
use opshost_tests::testing_host;
use serde_json::{Value, json};

const TESTING: &[&str] = &["testing.run"];

/// A raw connection to `server` from the loopback address `from`.
async fn connect_from(from: [u8; 4], server: &TestServer) -> tokio::net::TcpStream {
    let target: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(target).await.unwrap()
}

/// Everything `stream` receives until it closes, within `limit`.
async fn received(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn connections_past_max_connections_are_refused_whoever_opens_them() {
    use tokio::io::AsyncWriteExt;
    let host = testing_host(Duration::from_secs(5));
    let config = ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(host.runtime(), config).await;
    let mut open = Vec::new();
    for n in 1..=3 {
        open.push(connect_from([127, 0, 0, n], &server).await);
    }
    let mut fourth = connect_from([127, 0, 0, 4], &server).await;
    let answer = received(&mut fourth, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"Overloaded\""), "{answer}");
    // The open ones keep working.
    let first = &mut open[0];
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = received(first, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_a_408_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let host = testing_host(Duration::from_secs(5));
    let config = ServerConfig {
        header_timeout_ms: 500,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(host.runtime(), config).await;
    let mut stream = connect_from([127, 0, 0, 1], &server).await;
    let head = format!(
        "POST /v1/operations/Testing.Scenario HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"scen",
        token(TESTING)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = received(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("header_timeout_ms"), "{answer}");
}

#[tokio::test]
async fn a_watch_outlives_the_header_timeout_and_still_gets_the_end() {
    let host = testing_host(Duration::from_secs(5));
    let config = ServerConfig {
        header_timeout_ms: 300,
        keep_alive_secs: 1,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(host.runtime(), config).await;
    let http = opshost_tests::net::http();
    let token = token(TESTING);
    let accepted: Value = http
        .post(format!("{}/v1/operations/Testing.Scenario", server.url))
        .bearer_auth(&token)
        .json(&json!({ "scenario": "echo-signals", "signals": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let response = http
        .get(format!("{}/v1/operations/{id}/events", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    // Ten header timeouts pass while the watch is open; keep-alive comments keep coming.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut received = Vec::new();
    while tokio::time::Instant::now() < quiet_until {
        let chunk = tokio::time::timeout(Duration::from_secs(2), body.next())
            .await
            .expect("the watch keeps sending")
            .expect("the watch is still open")
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&received).contains(":\n\n"),
        "keep-alive comments"
    );
    http.post(format!("{}/v1/operations/{id}/signals/Note", server.url))
        .bearer_auth(&token)
        .json(&json!({ "text": "end" }))
        .send()
        .await
        .unwrap();
    let rest: Vec<u8> = tokio::time::timeout(
        Duration::from_secs(10),
        body.map(|chunk| chunk.unwrap().to_vec()).concat(),
    )
    .await
    .expect("the watch ends with the operation");
    assert!(
        String::from_utf8_lossy(&rest).contains("event: completed"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}
