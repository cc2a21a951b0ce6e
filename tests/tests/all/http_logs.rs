//! `GET /v1/operations/{id}/logs` from outside: JSON lines paged by `seq`, the `observe` gate
//! and tenants, and a follow resumed with `Last-Event-ID` that ends with the operation.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use opshost_api::LogLine;
use opshost_tests::net::{TestServer, json_of, token, token_for};
use opshost_tests::testing_host;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A host whose operation printed three lines of each kind (stdout, stderr, log): 9 lines.
async fn printed() -> (opshost_sandbox::WasmHost, TestServer, String) {
    let host = testing_host(Duration::from_secs(5));
    let server = TestServer::start(host.runtime()).await;
    let started = json_of(
        opshost_tests::net::http()
            .post(format!("{}/v1/operations/Testing.Scenario", server.url))
            .bearer_auth(token(&["testing.run"]))
            .header("prefer", "wait=30")
            .json(&json!({ "scenario": "print", "count": 3 })),
    )
    .await;
    assert_eq!(started["state"], "completed", "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    host.runtime().log_sink().flush().await;
    (host, server, id)
}

async fn get(server: &TestServer, token: &str, path: &str) -> reqwest::Response {
    opshost_tests::net::http()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn lines(body: &str) -> Vec<LogLine> {
    body.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn logs_are_json_lines_paged_by_seq() {
    let (_host, server, id) = printed().await;
    let caller = token(&["testing.run"]);
    let all = get(&server, &caller, &format!("/v1/operations/{id}/logs")).await;
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()["content-type"], "application/x-ndjson");
    let all = lines(&all.text().await.unwrap());
    assert_eq!(all.len(), 9);
    assert_eq!(all[0].message, "line 0 to stdout");
    let rest = get(
        &server,
        &caller,
        &format!("/v1/operations/{id}/logs?after=6"),
    )
    .await;
    let rest = lines(&rest.text().await.unwrap());
    assert_eq!(rest.iter().map(|l| l.seq).collect::<Vec<_>>(), [7, 8, 9]);
    let two = get(
        &server,
        &caller,
        &format!("/v1/operations/{id}/logs?limit=2"),
    )
    .await;
    assert_eq!(lines(&two.text().await.unwrap()).len(), 2);
}

#[tokio::test]
async fn logs_need_observe_and_stay_in_their_tenant() {
    let (_host, server, id) = printed().await;
    let path = format!("/v1/operations/{id}/logs");
    let without = get(&server, &token(&["other.scope"]), &path).await;
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let body: Value = without.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MissingCapability", "{body}");
    let stranger = get(&server, &token_for("globex", &["testing.run"]), &path).await;
    assert_eq!(stranger.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_follow_resumed_with_last_event_id_sends_the_rest_and_ends_with_the_operation() {
    let (_host, server, id) = printed().await;
    let response = opshost_tests::net::http()
        .get(format!(
            "{}/v1/operations/{id}/logs?follow=true",
            server.url
        ))
        .bearer_auth(token(&["testing.run"]))
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        response.bytes_stream().eventsource().collect::<Vec<_>>(),
    )
    .await
    .expect("the follow ends once the operation has ended and its lines are out");
    let events: Vec<(String, String)> = events
        .into_iter()
        .map(|event| event.unwrap())
        .map(|event| (event.event, event.id))
        .collect();
    let expected: Vec<(String, String)> = [
        ("log", "6"),
        ("log", "7"),
        ("log", "8"),
        ("log", "9"),
        ("end", "9"),
    ]
    .iter()
    .map(|(event, id)| ((*event).to_owned(), (*id).to_owned()))
    .collect();
    assert_eq!(events, expected, "the lines, then the end");
}

#[tokio::test]
async fn the_rust_client_follows_to_the_end_without_an_error() {
    let (_host, server, id) = printed().await;
    let client = opshost_client::Client::new(&server.url, token(&["testing.run"])).unwrap();
    let followed: Vec<_> = client
        .follow_logs(&id, 0)
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let seqs: Vec<u64> = followed.into_iter().map(|line| line.unwrap().seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let read = client.logs(&id, 0, 100).await.unwrap();
    assert_eq!(read.len(), 9);
}
