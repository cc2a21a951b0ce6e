//! The store conformance suite: every behaviour the runtime relies on, written once against
//! `dyn OperationStore` and run against each backend by [`store_conformance!`]: a new backend
//! is one line in `tests/tests/all/conformance.rs`.
//!
//! Create-if-absent (also under races), compare-and-set on the revision, ordered revisions
//! under concurrent writers, each outcome its own when many operations are updated at once,
//! resume of the event log from a revision, sequenced signals,
//! filtered paging, the feed of every change, recovery listing, retention purge and the
//! doorbell, which leaves no entry behind once its last holder is gone. A store may answer
//! `started` and `progress` before readers see them (see `must_be_durable`): tests that read
//! those back call `flush` first, and one test checks that a terminal change, once answered,
//! is shown with everything before it.

use std::sync::Arc;

use chrono::{Duration as Age, Utc};
use opshost_api::{EventKind, LogLevel, LogLine, LogStream, OperationState, Snapshot};
use opshost_runtime::store::{
    ChangeCursor, CreateOutcome, ListFilter, OperationStore, Owner, SignalOutcome, StoredOperation,
    UpdateOutcome,
};
use serde_json::json;

fn snapshot(id: &str, operation: &str) -> Snapshot {
    Snapshot::accepted(id.into(), "svc".into(), operation.into(), "v1".into())
}

fn stored(snapshot: Snapshot, input: Option<serde_json::Value>) -> StoredOperation {
    let tenant = if snapshot.id.starts_with('z') {
        "other"
    } else {
        "acme"
    };
    StoredOperation {
        snapshot,
        input,
        owner: Owner {
            tenant: tenant.into(),
            subject: "alice".into(),
        },
    }
}

/// The snapshot after `current` that moves it to `state` (one revision on).
pub fn next(current: &Snapshot, state: OperationState) -> Snapshot {
    let mut next = current.clone();
    next.revision += 1;
    next.state = state;
    if state.is_terminal() {
        next.completed_at = Some(next.updated_at);
    }
    next
}

/// See the module docs.
pub async fn create_is_atomic_create_if_absent(store: Arc<dyn OperationStore>) {
    let mut traced = snapshot("a", "Op");
    traced.trace = Some(opshost_api::TraceContext {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        sampled: true,
        state: None,
    });
    let first = store
        .create(stored(traced.clone(), Some(json!(1))))
        .await
        .unwrap();
    assert!(matches!(first, CreateOutcome::Created(_)));
    let again = store
        .create(stored(snapshot("a", "Other"), Some(json!(2))))
        .await
        .unwrap();
    let CreateOutcome::Existing(existing) = again else {
        panic!("expected the existing operation");
    };
    assert_eq!(existing.snapshot.operation, "Op");
    assert_eq!(existing.input, Some(json!(1)));
    assert_eq!(existing.snapshot.trace, traced.trace, "the trace is kept");
}

/// See the module docs.
pub async fn update_is_compare_and_set_on_the_revision(store: Arc<dyn OperationStore>) {
    let created = snapshot("a", "Op");
    store.create(stored(created.clone(), None)).await.unwrap();
    let running = next(&created, OperationState::Running);
    assert!(matches!(
        store
            .update(running.clone(), EventKind::Started)
            .await
            .unwrap(),
        UpdateOutcome::Updated(_)
    ));
    let stale = next(&created, OperationState::Failed);
    let UpdateOutcome::Conflict(current) = store.update(stale, EventKind::Failed).await.unwrap()
    else {
        panic!("a stale revision must conflict");
    };
    assert_eq!(current, running);
    let events = store.events_after("a", 0).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.snapshot().revision)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(store.events_after("a", 1).await.unwrap().len(), 1);
}

/// See the module docs.
pub async fn signals_are_sequenced_and_refused_after_terminal(store: Arc<dyn OperationStore>) {
    let created = snapshot("a", "Op");
    store.create(stored(created.clone(), None)).await.unwrap();
    assert_eq!(
        store.append_signal("a", "S", json!(1)).await.unwrap(),
        SignalOutcome::Appended(1)
    );
    assert_eq!(
        store.append_signal("a", "S", json!(2)).await.unwrap(),
        SignalOutcome::Appended(2)
    );
    let after_one = store.signals_after("a", 1).await.unwrap();
    assert_eq!(after_one.len(), 1);
    assert_eq!(after_one[0].payload, json!(2));
    store
        .update(
            next(&created, OperationState::Completed),
            EventKind::Completed,
        )
        .await
        .unwrap();
    assert_eq!(
        store.append_signal("a", "S", json!(3)).await.unwrap(),
        SignalOutcome::Terminal(OperationState::Completed)
    );
}

/// See the module docs.
pub async fn list_shows_only_the_tenant_asked_for_and_counts_by_state(
    store: Arc<dyn OperationStore>,
) {
    for id in ["a", "z1", "b", "z2"] {
        store
            .create(stored(snapshot(id, "Op"), None))
            .await
            .unwrap();
    }
    let filter = ListFilter {
        tenant: Some("acme".into()),
        limit: 10,
        ..ListFilter::default()
    };
    let page = store.list(&filter).await.unwrap();
    let ids: Vec<_> = page.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let counts = store.count_by_state().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].state, OperationState::Pending);
    assert_eq!(counts[0].count, 4);
}

/// See the module docs.
pub async fn list_filters_by_operation_and_state_and_pages_by_id(store: Arc<dyn OperationStore>) {
    for id in ["a", "b", "c", "d", "e"] {
        store
            .create(stored(
                snapshot(id, if id == "c" { "Other" } else { "Op" }),
                None,
            ))
            .await
            .unwrap();
    }
    let e = store.load("e").await.unwrap().unwrap().snapshot;
    store
        .update(next(&e, OperationState::Running), EventKind::Started)
        .await
        .unwrap();
    // A handler's `started` may be answered before it is durable, and readers see it after.
    store.flush().await.unwrap();
    let mut filter = ListFilter {
        tenant: None,
        operation: Some("Op".into()),
        state: Some(OperationState::Pending),
        after: None,
        limit: 2,
        ..ListFilter::default()
    };
    let first = store.list(&filter).await.unwrap();
    assert_eq!(
        first
            .items
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    filter.after = first.next;
    let second = store.list(&filter).await.unwrap();
    assert_eq!(
        second
            .items
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["d"]
    );
    assert_eq!(second.next, None);
}

/// See the module docs.
pub async fn the_doorbell_rings_on_every_write_and_closes_at_terminal(
    store: Arc<dyn OperationStore>,
) {
    let created = snapshot("a", "Op");
    let mut bell = store.subscribe("a");
    store.create(stored(created.clone(), None)).await.unwrap();
    bell.changed().await.unwrap();
    store
        .update(
            next(&created, OperationState::Completed),
            EventKind::Completed,
        )
        .await
        .unwrap();
    bell.changed().await.unwrap();
    assert!(
        bell.changed().await.is_err(),
        "closed after the terminal write"
    );
}

/// See the module docs.
pub async fn a_doorbell_taken_after_the_end_leaves_nothing_behind(store: Arc<dyn OperationStore>) {
    let created = snapshot("a", "Op");
    store.create(stored(created.clone(), None)).await.unwrap();
    store
        .update(
            next(&created, OperationState::Completed),
            EventKind::Completed,
        )
        .await
        .unwrap();
    assert_eq!(
        store.doorbells(),
        0,
        "the terminal write closed every doorbell"
    );
    let late: Vec<_> = (0..100).map(|_| store.subscribe("a")).collect();
    let unknown = store.subscribe("no-such-operation");
    assert_eq!(store.doorbells(), 2);
    drop(late);
    drop(unknown);
    assert_eq!(
        store.doorbells(),
        0,
        "the last doorbell dropped forgets its entry"
    );
}

/// See the module docs.
pub async fn a_doorbell_dropped_before_the_end_leaves_nothing_behind(
    store: Arc<dyn OperationStore>,
) {
    let created = snapshot("a", "Op");
    store.create(stored(created.clone(), None)).await.unwrap();
    let watchers: Vec<_> = (0..100).map(|_| store.subscribe("a")).collect();
    store
        .update(next(&created, OperationState::Running), EventKind::Started)
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.doorbells(), 1);
    drop(watchers);
    assert_eq!(store.doorbells(), 0);
}

/// See the module docs.
pub async fn concurrent_creates_of_one_id_create_it_once(store: Arc<dyn OperationStore>) {
    let attempts: Vec<_> = (0..16)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create(stored(snapshot("race", "Op"), Some(json!(n))))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap().unwrap(), CreateOutcome::Created(_)) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.events_after("race", 0).await.unwrap().len(), 1);
}

/// See the module docs.
pub async fn concurrent_writers_leave_gapless_increasing_revisions(store: Arc<dyn OperationStore>) {
    store
        .create(stored(snapshot("busy", "Op"), None))
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut written = 0;
                while written < 10 {
                    let current = store.load("busy").await.unwrap().unwrap().snapshot;
                    let mut progressed = next(&current, OperationState::Running);
                    progressed.progress = Some(json!(current.revision));
                    if let UpdateOutcome::Updated(_) =
                        store.update(progressed, EventKind::Progress).await.unwrap()
                    {
                        written += 1;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    store.flush().await.unwrap();
    let revisions: Vec<u64> = store
        .events_after("busy", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.snapshot().revision)
        .collect();
    assert_eq!(revisions, (1..=81).collect::<Vec<u64>>());
    assert_eq!(
        store.load("busy").await.unwrap().unwrap().snapshot.revision,
        81
    );
}

/// See the module docs.
pub async fn updates_of_many_operations_at_once_each_get_their_own_outcome(
    store: Arc<dyn OperationStore>,
) {
    let ids: Vec<String> = (0..50).map(|n| format!("many-{n}")).collect();
    for id in &ids {
        store
            .create(stored(snapshot(id, "Op"), None))
            .await
            .unwrap();
    }
    // Two writers race for each operation's revision 2: one applies, the other conflicts.
    let racers: Vec<_> = ids
        .iter()
        .flat_map(|id| [(id.clone(), "a"), (id.clone(), "b")])
        .map(|(id, writer)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut progressed = next(&snapshot(&id, "Op"), OperationState::Running);
                progressed.progress = Some(json!(writer));
                (
                    id,
                    writer,
                    store.update(progressed, EventKind::Progress).await.unwrap(),
                )
            })
        })
        .collect();
    let mut winners = std::collections::HashMap::new();
    let mut conflicts = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            (id, writer, UpdateOutcome::Updated(snapshot)) => {
                assert_eq!(snapshot.revision, 2);
                assert!(
                    winners.insert(id, writer).is_none(),
                    "one winner per operation"
                );
            }
            (id, _, UpdateOutcome::Conflict(current)) => conflicts.push((id, current)),
        }
    }
    assert_eq!(winners.len(), ids.len());
    assert_eq!(conflicts.len(), ids.len());
    for (id, current) in conflicts {
        assert_eq!(
            current.revision, 2,
            "{id}: the conflict shows the winner's revision"
        );
        assert_eq!(current.progress, Some(json!(winners[&id])), "{id}");
    }
    store.flush().await.unwrap();
    for id in &ids {
        let events = store.events_after(id, 0).await.unwrap();
        let revisions: Vec<u64> = events.iter().map(|e| e.snapshot().revision).collect();
        assert_eq!(revisions, [1, 2], "{id}");
        assert_eq!(
            events[1].snapshot().progress,
            Some(json!(winners[id])),
            "{id}"
        );
    }
}

/// See the module docs.
pub async fn the_event_log_resumes_exactly_after_a_revision(store: Arc<dyn OperationStore>) {
    let mut current = snapshot("log", "Op");
    store.create(stored(current.clone(), None)).await.unwrap();
    for _ in 0..5 {
        current = next(&current, OperationState::Running);
        store
            .update(current.clone(), EventKind::Progress)
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let after_three: Vec<u64> = store
        .events_after("log", 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.snapshot().revision)
        .collect();
    assert_eq!(after_three, [4, 5, 6]);
    let first = &store.events_after("log", 0).await.unwrap()[0];
    assert_eq!(first.kind(), EventKind::Accepted);
    assert!(store.events_after("log", 6).await.unwrap().is_empty());
    assert!(store.events_after("missing", 0).await.unwrap().is_empty());
}

/// See the module docs.
pub async fn a_terminal_change_is_shown_with_every_change_before_it_once_answered(
    store: Arc<dyn OperationStore>,
) {
    let mut current = snapshot("ordered", "Op");
    store.create(stored(current.clone(), None)).await.unwrap();
    for kind in [EventKind::Started, EventKind::Progress, EventKind::Progress] {
        current = next(&current, OperationState::Running);
        store.update(current.clone(), kind).await.unwrap();
    }
    let done = next(&current, OperationState::Completed);
    store
        .update(done.clone(), EventKind::Completed)
        .await
        .unwrap();
    assert_eq!(store.load("ordered").await.unwrap().unwrap().snapshot, done);
    let kinds: Vec<EventKind> = store
        .events_after("ordered", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Accepted,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Progress,
            EventKind::Completed
        ]
    );
}

/// See the module docs.
pub async fn unfinished_lists_every_non_terminal_operation(store: Arc<dyn OperationStore>) {
    for id in ["u1", "u2", "u3"] {
        store
            .create(stored(snapshot(id, "Op"), Some(json!(id))))
            .await
            .unwrap();
    }
    let u2 = store.load("u2").await.unwrap().unwrap().snapshot;
    store
        .update(next(&u2, OperationState::Failed), EventKind::Failed)
        .await
        .unwrap();
    let unfinished = store.unfinished().await.unwrap();
    let mut ids: Vec<&str> = unfinished.iter().map(|s| s.snapshot.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["u1", "u3"]);
    assert_eq!(unfinished[0].owner.tenant, "acme");
    assert!(unfinished.iter().all(|s| s.input.is_some()));
}

/// See the module docs.
pub async fn purge_removes_only_terminal_operations_older_than_the_cutoff(
    store: Arc<dyn OperationStore>,
) {
    let long_ago = Utc::now() - Age::days(30);
    let mut old_done = snapshot("old-done", "Op");
    old_done.created_at = long_ago;
    store.create(stored(old_done.clone(), None)).await.unwrap();
    let mut finished = next(&old_done, OperationState::Completed);
    finished.completed_at = Some(long_ago);
    store.update(finished, EventKind::Completed).await.unwrap();
    store
        .append_signal("old-done", "S", json!(1))
        .await
        .unwrap();
    store
        .append_logs("old-done", vec![log_line("gone with it")])
        .await
        .unwrap();

    let mut old_running = snapshot("old-running", "Op");
    old_running.created_at = long_ago;
    store.create(stored(old_running, None)).await.unwrap();

    let recent = snapshot("recent-done", "Op");
    store.create(stored(recent.clone(), None)).await.unwrap();
    store
        .update(
            next(&recent, OperationState::Completed),
            EventKind::Completed,
        )
        .await
        .unwrap();

    let purged = store.purge(Utc::now() - Age::days(7)).await.unwrap();
    assert_eq!(purged, 1);
    assert!(store.load("old-done").await.unwrap().is_none());
    assert!(store.events_after("old-done", 0).await.unwrap().is_empty());
    assert!(
        store
            .logs_after("old-done", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.load("old-running").await.unwrap().is_some());
    assert!(store.load("recent-done").await.unwrap().is_some());
}

fn log_line(message: &str) -> LogLine {
    LogLine {
        seq: 0,
        at: Utc::now(),
        attempt: 1,
        job: None,
        stream: LogStream::Stdout,
        level: LogLevel::Info,
        message: message.into(),
        fields: Default::default(),
        trace_id: None,
        span_id: None,
    }
}

/// See the module docs.
pub async fn logs_are_numbered_in_order_and_read_after_a_sequence(store: Arc<dyn OperationStore>) {
    store
        .create(stored(snapshot("logged", "Op"), None))
        .await
        .unwrap();
    store
        .append_logs(
            "logged",
            vec![log_line("one"), log_line("two"), log_line("three")],
        )
        .await
        .unwrap();
    let mut worker = log_line("four");
    worker.job = Some("job-1".into());
    worker.fields.insert("order".into(), "ord_1".into());
    worker.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    worker.span_id = Some("00f067aa0ba902b7".into());
    store
        .append_logs("logged", vec![worker, log_line("five")])
        .await
        .unwrap();
    store.flush().await.unwrap();
    let all = store.logs_after("logged", 0, 100).await.unwrap();
    let seen: Vec<(u64, &str)> = all.iter().map(|l| (l.seq, l.message.as_str())).collect();
    assert_eq!(
        seen,
        [
            (1, "one"),
            (2, "two"),
            (3, "three"),
            (4, "four"),
            (5, "five")
        ]
    );
    assert_eq!(all[3].job.as_deref(), Some("job-1"));
    assert_eq!(all[3].fields["order"], "ord_1");
    assert_eq!(
        all[3].trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(all[3].span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(all[4].trace_id, None);
    let later = store.logs_after("logged", 3, 100).await.unwrap();
    assert_eq!(later.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5]);
    let first_two = store.logs_after("logged", 0, 2).await.unwrap();
    assert_eq!(first_two.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(store.logs_after("other", 0, 10).await.unwrap().is_empty());
    // Lines for an operation that does not exist are not kept for one created later.
    store
        .append_logs("ghost", vec![log_line("lost")])
        .await
        .unwrap();
    store
        .create(stored(snapshot("ghost", "Op"), None))
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert!(store.logs_after("ghost", 0, 10).await.unwrap().is_empty());
}

/// See the module docs.
pub async fn list_filters_by_id_prefix_and_creation_time(store: Arc<dyn OperationStore>) {
    let now = Utc::now();
    for (id, age_hours) in [
        ("order-1", 30),
        ("order-2", 5),
        ("order-3", 1),
        ("orders", 1),
        ("refund-1", 5),
    ] {
        let mut created = snapshot(id, "Op");
        created.created_at = now - Age::hours(age_hours);
        store.create(stored(created, None)).await.unwrap();
    }
    let ids = |page: opshost_runtime::store::Page| {
        page.items
            .into_iter()
            .map(|snapshot| snapshot.id)
            .collect::<Vec<_>>()
    };
    let by_prefix = ListFilter {
        id_prefix: Some("order-".into()),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list(&by_prefix).await.unwrap()),
        ["order-1", "order-2", "order-3"]
    );
    let in_window = ListFilter {
        created_from: Some(now - Age::hours(6)),
        created_until: Some(now - Age::hours(2)),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list(&in_window).await.unwrap()),
        ["order-2", "refund-1"]
    );
    let both = ListFilter {
        id_prefix: Some("order".into()),
        created_from: Some(now - Age::hours(6)),
        limit: 2,
        ..ListFilter::default()
    };
    let first = store.list(&both).await.unwrap();
    assert_eq!(first.next.as_deref(), Some("order-3"));
    assert_eq!(ids(first), ["order-2", "order-3"]);
    let second = ListFilter {
        after: Some("order-3".into()),
        ..both
    };
    assert_eq!(ids(store.list(&second).await.unwrap()), ["orders"]);
}

/// The changes after `after` once there are `count` of them (a store may show a change a
/// little after answering it: PostgreSQL, while an older transaction is still running).
async fn changes_once(
    store: &dyn OperationStore,
    after: ChangeCursor,
    count: usize,
) -> Vec<opshost_runtime::store::Change> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let changes = store.changes_after(after, 100).await.unwrap();
        if changes.len() >= count || std::time::Instant::now() > deadline {
            return changes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// See the module docs.
pub async fn the_change_feed_holds_every_change_in_order_with_its_tenant(
    store: Arc<dyn OperationStore>,
) {
    let head = store.change_head().await.unwrap();
    let mut bell = store.subscribe_changes();
    bell.borrow_and_update();
    let a = snapshot("a", "Op");
    store.create(stored(a.clone(), None)).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), bell.changed())
        .await
        .expect("the change bell rings after a write")
        .unwrap();
    store
        .create(stored(snapshot("z1", "Op"), None))
        .await
        .unwrap();
    let running = next(&a, OperationState::Running);
    store
        .update(running.clone(), EventKind::Started)
        .await
        .unwrap();
    store
        .update(
            next(&running, OperationState::Completed),
            EventKind::Completed,
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    let changes = changes_once(&*store, head, 4).await;
    let seen: Vec<(&str, u64, &str, &str)> = changes
        .iter()
        .map(|change| {
            let snapshot = change.event.snapshot();
            (
                snapshot.id.as_str(),
                snapshot.revision,
                change.event.kind().as_str(),
                change.tenant.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("a", 1, "accepted", "acme"),
            ("z1", 1, "accepted", "other"),
            ("a", 2, "started", "acme"),
            ("a", 3, "completed", "acme"),
        ]
    );
    assert!(
        changes
            .windows(2)
            .all(|pair| pair[0].cursor < pair[1].cursor),
        "cursors grow: {changes:?}"
    );
    for change in &changes {
        let written = change.cursor.to_string();
        assert_eq!(written.parse(), Ok(change.cursor), "{written}");
    }
    let resumed = store.changes_after(changes[1].cursor, 100).await.unwrap();
    assert_eq!(resumed, changes[2..]);
    let two = store.changes_after(head, 2).await.unwrap();
    assert_eq!(two, changes[..2]);
    let now = store.change_head().await.unwrap();
    assert!(now >= changes[3].cursor);
    assert!(store.changes_after(now, 100).await.unwrap().is_empty());
}

/// See the module docs.
pub async fn a_purged_operation_leaves_the_change_feed(store: Arc<dyn OperationStore>) {
    let head = store.change_head().await.unwrap();
    store
        .create(stored(snapshot("kept", "Op"), None))
        .await
        .unwrap();
    let long_ago = Utc::now() - Age::days(30);
    let mut old = snapshot("old", "Op");
    old.created_at = long_ago;
    store.create(stored(old.clone(), None)).await.unwrap();
    let mut finished = next(&old, OperationState::Completed);
    finished.completed_at = Some(long_ago);
    store.update(finished, EventKind::Completed).await.unwrap();
    let seen = changes_once(&*store, head, 3).await;
    assert_eq!(seen.len(), 3);
    let last_seen = seen[2].cursor;
    assert_eq!(store.purge(Utc::now() - Age::days(7)).await.unwrap(), 1);
    let changes = store.changes_after(head, 100).await.unwrap();
    let ids: Vec<&str> = changes
        .iter()
        .map(|change| change.event.snapshot().id.as_str())
        .collect();
    assert_eq!(ids, ["kept"]);
    // Numbers are never given again: a follower that saw the purged changes still sees the
    // next one.
    store
        .create(stored(snapshot("later", "Op"), None))
        .await
        .unwrap();
    let after = changes_once(&*store, last_seen, 1).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].event.snapshot().id, "later");
}

/// See the module docs.
pub async fn a_store_knows_whether_it_holds_an_operation_under_a_bare_key(
    store: Arc<dyn OperationStore>,
) {
    assert!(!store.holds_unscoped_keys(), "an empty store holds none");
    store
        .create(stored(snapshot("scoped@acme", "Op"), None))
        .await
        .unwrap();
    let mut default_tenant = stored(snapshot("plain", "Op"), None);
    default_tenant.owner = Owner::default();
    store.create(default_tenant).await.unwrap();
    assert!(
        !store.holds_unscoped_keys(),
        "scoped ids and the default tenant's keys are not bare keys"
    );
    store
        .create(stored(snapshot("bare", "Op"), None))
        .await
        .unwrap();
    assert!(store.holds_unscoped_keys());
}

/// Generates one `#[tokio::test]` per conformance check for the store that `$make` (an async
/// expression evaluating to `(Arc<dyn OperationStore>, guard)`) builds; the guard lives as
/// long as the test (e.g. a temporary directory).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn create_is_atomic_create_if_absent() {
            let (store, _guard) = $make.await;
            $crate::conformance::create_is_atomic_create_if_absent(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn update_is_compare_and_set_on_the_revision() {
            let (store, _guard) = $make.await;
            $crate::conformance::update_is_compare_and_set_on_the_revision(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn signals_are_sequenced_and_refused_after_terminal() {
            let (store, _guard) = $make.await;
            $crate::conformance::signals_are_sequenced_and_refused_after_terminal(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn list_shows_only_the_tenant_asked_for_and_counts_by_state() {
            let (store, _guard) = $make.await;
            $crate::conformance::list_shows_only_the_tenant_asked_for_and_counts_by_state(store)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn list_filters_by_operation_and_state_and_pages_by_id() {
            let (store, _guard) = $make.await;
            $crate::conformance::list_filters_by_operation_and_state_and_pages_by_id(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_doorbell_rings_on_every_write_and_closes_at_terminal() {
            let (store, _guard) = $make.await;
            $crate::conformance::the_doorbell_rings_on_every_write_and_closes_at_terminal(store)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_doorbell_taken_after_the_end_leaves_nothing_behind() {
            let (store, _guard) = $make.await;
            $crate::conformance::a_doorbell_taken_after_the_end_leaves_nothing_behind(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_doorbell_dropped_before_the_end_leaves_nothing_behind() {
            let (store, _guard) = $make.await;
            $crate::conformance::a_doorbell_dropped_before_the_end_leaves_nothing_behind(store)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_creates_of_one_id_create_it_once() {
            let (store, _guard) = $make.await;
            $crate::conformance::concurrent_creates_of_one_id_create_it_once(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_writers_leave_gapless_increasing_revisions() {
            let (store, _guard) = $make.await;
            $crate::conformance::concurrent_writers_leave_gapless_increasing_revisions(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn updates_of_many_operations_at_once_each_get_their_own_outcome() {
            let (store, _guard) = $make.await;
            $crate::conformance::updates_of_many_operations_at_once_each_get_their_own_outcome(
                store,
            )
            .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_event_log_resumes_exactly_after_a_revision() {
            let (store, _guard) = $make.await;
            $crate::conformance::the_event_log_resumes_exactly_after_a_revision(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_terminal_change_is_shown_with_every_change_before_it_once_answered() {
            let (store, _guard) = $make.await;
            $crate::conformance::a_terminal_change_is_shown_with_every_change_before_it_once_answered(store)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unfinished_lists_every_non_terminal_operation() {
            let (store, _guard) = $make.await;
            $crate::conformance::unfinished_lists_every_non_terminal_operation(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn logs_are_numbered_in_order_and_read_after_a_sequence() {
            let (store, _guard) = $make.await;
            $crate::conformance::logs_are_numbered_in_order_and_read_after_a_sequence(store)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_store_knows_whether_it_holds_an_operation_under_a_bare_key() {
            let (store, _guard) = $make.await;
            $crate::conformance::a_store_knows_whether_it_holds_an_operation_under_a_bare_key(
                store,
            )
            .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn list_filters_by_id_prefix_and_creation_time() {
            let (store, _guard) = $make.await;
            $crate::conformance::list_filters_by_id_prefix_and_creation_time(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_change_feed_holds_every_change_in_order_with_its_tenant() {
            let (store, _guard) = $make.await;
            $crate::conformance::the_change_feed_holds_every_change_in_order_with_its_tenant(
                store,
            )
            .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_purged_operation_leaves_the_change_feed() {
            let (store, _guard) = $make.await;
            $crate::conformance::a_purged_operation_leaves_the_change_feed(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn purge_removes_only_terminal_operations_older_than_the_cutoff() {
            let (store, _guard) = $make.await;
            $crate::conformance::purge_removes_only_terminal_operations_older_than_the_cutoff(
                store,
            )
            .await;
        }
    };
}
