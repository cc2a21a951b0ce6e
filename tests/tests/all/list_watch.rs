//! The list-watch stream, `GET /v1/events`, over real HTTP on 127.0.0.1 with the testing
//! guest: every change to what the caller may observe, in its tenant, resumable by
//! `Last-Event-ID`, across hosts on PostgreSQL.

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use opshost_tests::net::{TestServer, json_of, token, token_for};
use opshost_tests::{load, testing_deployment};
use serde_json::{Value, json};

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Opens the stream at `path` with `token`, resumed after `last` if given; answers it once its
/// `ready` event came.
async fn open(server: &TestServer, path: &str, token: &str, last: Option<&str>) -> Events {
    open_at(server, path, token, last).await.1
}

/// [`open`], and the cursor its `ready` event says it starts after.
async fn open_at(
    server: &TestServer,
    path: &str,
    token: &str,
    last: Option<&str>,
) -> (String, Events) {
    let mut request = opshost_tests::net::http()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let buffering = response.headers().get("x-accel-buffering");
    assert_eq!(
        buffering.and_then(|value| value.to_str().ok()),
        Some("no"),
        "a proxy is told not to hold the stream back"
    );
    let mut events: Events = Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event")),
    );
    let ready = next(&mut events).await;
    assert_eq!(ready.event, "ready");
    assert!(!ready.id.is_empty());
    (ready.id, events)
}

async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream stays open")
}

/// Events until the terminal one of operation `id`, as (id, kind).
async fn until_completed(events: &mut Events, id: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await;
        let snapshot: Value = serde_json::from_str(&event.data).unwrap();
        let this = snapshot["id"].as_str().unwrap().to_owned();
        let done =
            this == id && ["completed", "failed", "cancelled"].contains(&event.event.as_str());
        seen.push((this, event.event));
        if done {
            return seen;
        }
    }
}

/// Accepts a `Testing.Uncancellable` in tenant `acme` in-process (it has no handler here, so
/// it stays pending) and fails it, for two changes.
async fn accept_and_fail(server: &TestServer, key: &str) -> String {
    let owner = opshost_runtime::Owner {
        tenant: "acme".into(),
        subject: "alice".into(),
    };
    let accepted = server
        .runtime
        .accept_as(
            owner,
            "Testing.Uncancellable",
            Some(key.into()),
            Some(json!({ "scenario": "complete" })),
        )
        .await
        .unwrap();
    let id = accepted.snapshot.id;
    let error = opshost_runtime::ErrorInfo::new(opshost_runtime::ErrorCode::Internal, "no handler");
    server.runtime.fail(&id, error).await.unwrap();
    id
}

async fn start(server: &TestServer, token: &str, operation: &str, key: &str) -> String {
    let started = json_of(
        opshost_tests::net::http()
            .post(format!("{}/v1/operations/{operation}", server.url))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({ "scenario": "complete" })),
    )
    .await;
    started["id"].as_str().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_watch_shows_every_change_of_the_callers_tenant_and_nothing_else() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let acme = token_for("acme", &["testing.run"]);
    let other = token_for("globex", &["testing.run"]);
    let mut events = open(&server, "/v1/events", &acme, None).await;
    start(&server, &other, "Testing.Scenario", "theirs").await;
    let ours = start(&server, &acme, "Testing.Scenario", "ours").await;
    let seen = until_completed(&mut events, &ours).await;
    let kinds: Vec<&str> = seen.iter().map(|(_, kind)| kind.as_str()).collect();
    assert!(
        seen.iter().all(|(id, _)| *id == ours),
        "only the caller's tenant: {seen:?}"
    );
    assert_eq!(kinds.first(), Some(&"accepted"));
    assert!(kinds.contains(&"started"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_watch_leaves_out_operations_the_caller_may_not_observe() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let runner = token(&["testing.run"]);
    // `Testing.Uncancellable` may be observed by anyone; `Testing.Scenario` only with
    // `testing.run`.
    let onlooker = token(&[]);
    let mut events = open(&server, "/v1/events", &onlooker, None).await;
    start(&server, &runner, "Testing.Scenario", "hidden").await;
    let shown = accept_and_fail(&server, "shown").await;
    let seen = until_completed(&mut events, &shown).await;
    assert!(seen.iter().all(|(id, _)| *id == shown), "{seen:?}");
    let refused = opshost_tests::net::http()
        .get(format!(
            "{}/v1/events?operation=Testing.Scenario",
            server.url
        ))
        .bearer_auth(&onlooker)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("testing.run"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_watch_filtered_by_operation_and_state_shows_only_those_changes() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let runner = token(&["testing.run"]);
    let mut events = open(
        &server,
        "/v1/events?operation=Testing.Uncancellable&state=failed",
        &runner,
        None,
    )
    .await;
    start(&server, &runner, "Testing.Scenario", "other-operation").await;
    let wanted = accept_and_fail(&server, "wanted").await;
    let event = next(&mut events).await;
    let snapshot: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(event.event, "failed");
    assert_eq!(snapshot["id"], json!(wanted));
    assert_eq!(snapshot["state"], json!("failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_watch_resumed_by_last_event_id_misses_nothing_and_repeats_nothing() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let runner = token(&["testing.run"]);
    let mut events = open(&server, "/v1/events", &runner, None).await;
    let first = start(&server, &runner, "Testing.Scenario", "first").await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let event = next(&mut events).await;
    let last = event.id.clone();
    seen.push((last.clone(), event.event));
    drop(events);
    // Changes made while nobody watches are delivered on resume.
    let second = start(&server, &runner, "Testing.Scenario", "second").await;
    let done = json_of(
        opshost_tests::net::http()
            .get(format!("{}/v1/operations/{second}/wait", server.url))
            .bearer_auth(&runner),
    )
    .await;
    assert_eq!(done["state"], json!("completed"));
    let mut resumed = open(&server, "/v1/events", &runner, Some(&last)).await;
    let mut completed = Vec::new();
    while completed.len() < 2 {
        let event = next(&mut resumed).await;
        let snapshot: Value = serde_json::from_str(&event.data).unwrap();
        if event.event == "completed" {
            completed.push(snapshot["id"].as_str().unwrap().to_owned());
        }
        seen.push((event.id, event.event));
    }
    completed.sort();
    assert_eq!(completed, [first, second]);
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no change twice: {ids:?}");
    assert_eq!(
        seen.iter().filter(|(_, kind)| kind == "accepted").count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_watch_refuses_a_bad_cursor_and_a_watch_token() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let runner = token(&["testing.run"]);
    let http = opshost_tests::net::http();
    let bad = http
        .get(format!("{}/v1/events", server.url))
        .bearer_auth(&runner)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Last-Event-ID") && message.contains("yesterday"),
        "{message}"
    );
    let unknown = http
        .get(format!("{}/v1/events?since=3", server.url))
        .bearer_auth(&runner)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(
        body["error"]["details"]["allowed"],
        json!(["operation", "state", "after"]),
        "{body}"
    );
    // A cursor this store never gave: a future one, or one with an epoch SQLite and memory
    // do not use.
    for cursor in ["99999999999", "7.3"] {
        let foreign = http
            .get(format!("{}/v1/events", server.url))
            .bearer_auth(&runner)
            .header("last-event-id", cursor)
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 400, "{cursor}");
        let body: Value = foreign.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(cursor), "{message}");
    }

    let id = start(&server, &runner, "Testing.Scenario", "watched").await;
    let minted = json_of(
        http.post(format!("{}/v1/operations/{id}/watch-token", server.url))
            .bearer_auth(&runner),
    )
    .await;
    let watch_token = minted["token"].as_str().unwrap();
    let refused = http
        .get(format!(
            "{}/v1/events?access_token={watch_token}",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let as_bearer = http
        .get(format!("{}/v1/events", server.url))
        .bearer_auth(watch_token)
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_id_prefix_and_creation_time() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let runner = token(&["testing.run"]);
    let before = chrono::Utc::now();
    let mut started = Vec::new();
    for key in ["batch-1", "batch-2", "single"] {
        started.push(start(&server, &runner, "Testing.Scenario", key).await);
    }
    let http = opshost_tests::net::http();
    let list = |query: String| {
        json_of(
            http.get(format!("{}/v1/operations?{query}", server.url))
                .bearer_auth(&runner),
        )
    };
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&list("idPrefix=batch-".into()).await), started[..2]);
    let from = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let since = list(format!("createdFrom={}", from.replace('+', "%2B"))).await;
    assert_eq!(ids(&since).len(), 3);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let none_yet = list(format!("createdFrom={later}")).await;
    assert!(ids(&none_yet).is_empty(), "{none_yet}");
    let until = list(format!("createdUntil={}", from.replace('+', "%2B"))).await;
    assert!(ids(&until).is_empty());
    let bad = http
        .get(format!("{}/v1/operations?createdFrom=monday", server.url))
        .bearer_auth(&runner)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("createdFrom"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_list_watch_on_one_host_streams_the_changes_made_on_another() {
    let url = opshost_tests::postgres::fresh_database().await;
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let store = std::sync::Arc::new(
            opshost_store_postgres::PostgresStore::connect(&url)
                .await
                .unwrap(),
        );
        let host = opshost_sandbox::WasmHost::builder(&testing_deployment(Duration::from_secs(5)))
            .stores(store)
            .build()
            .unwrap();
        hosts.push(host);
    }
    let one = TestServer::start(hosts[0].runtime()).await;
    let two = TestServer::start(hosts[1].runtime()).await;
    let runner = token(&["testing.run"]);
    let mut events = open(&two, "/v1/events", &runner, None).await;
    let id = start(&one, &runner, "Testing.Scenario", "made-on-one").await;
    let seen = until_completed(&mut events, &id).await;
    assert_eq!(
        seen.first().map(|(_, kind)| kind.as_str()),
        Some("accepted")
    );
    let last = open_at(&two, "/v1/events", &runner, None).await.0;
    // Resumed on the first host from the second one's cursor: the stores share one feed.
    let mut resumed = open(&one, "/v1/events", &runner, Some(&last)).await;
    let later = start(&two, &runner, "Testing.Scenario", "made-on-two").await;
    let seen = until_completed(&mut resumed, &later).await;
    assert!(seen.iter().all(|(id, _)| *id == later), "{seen:?}");
    // A cursor of a store that numbers by `seq` alone is not one of PostgreSQL's.
    let foreign = opshost_tests::net::http()
        .get(format!("{}/v1/events", one.url))
        .bearer_auth(&runner)
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_watch_ends_when_the_callers_token_expires() {
    let host = load(&testing_deployment(Duration::from_secs(5)));
    let server = TestServer::start(host.runtime()).await;
    let mut claims = opshost_tests::net::claims(&["testing.run"]);
    claims["exp"] = json!(opshost_tests::net::now() + 2);
    let short = opshost_tests::net::sign(jsonwebtoken::Algorithm::HS256, &claims);
    let mut events = open(&server, "/v1/events", &short, None).await;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_list_watch_resumes_across_a_restart_of_the_host() {
    let data = tempfile::tempdir().unwrap();
    let runner = token(&["testing.run"]);
    let open_host = || {
        let store =
            std::sync::Arc::new(opshost_store_sqlite::SqliteStore::open(data.path()).unwrap());
        opshost_sandbox::WasmHost::builder(&testing_deployment(Duration::from_secs(5)))
            .stores(store)
            .build()
            .unwrap()
    };
    let first_host = open_host();
    let first = TestServer::start(first_host.runtime()).await;
    let mut events = open(&first, "/v1/events", &runner, None).await;
    let before = start(&first, &runner, "Testing.Scenario", "before-restart").await;
    until_completed(&mut events, &before).await;
    let last = open_at(&first, "/v1/events", &runner, None).await.0;
    drop(events);
    drop(first);
    first_host.runtime().release_store().await.unwrap();
    drop(first_host);

    let second_host = open_host();
    let second = TestServer::start(second_host.runtime()).await;
    let mut resumed = open(&second, "/v1/events", &runner, Some(&last)).await;
    let after = start(&second, &runner, "Testing.Scenario", "after-restart").await;
    let seen = until_completed(&mut resumed, &after).await;
    assert!(
        seen.iter().all(|(id, _)| *id == after),
        "only what came after the cursor: {seen:?}"
    );
    assert_eq!(
        seen.first().map(|(_, kind)| kind.as_str()),
        Some("accepted")
    );
}
