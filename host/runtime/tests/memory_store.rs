//! The store contract, checked on the in-memory store: create-if-absent, compare-and-set,
//! ordered events and signals, filtered paging, and the doorbell.

use opshost_api::{EventKind, OperationState, Snapshot};
use opshost_runtime::store::{
    CreateOutcome, ListFilter, MemoryStore, OperationStore, Owner, SignalOutcome, StoredOperation,
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

fn next(current: &Snapshot, state: OperationState) -> Snapshot {
    let mut next = current.clone();
    next.revision += 1;
    next.state = state;
    next
}

#[tokio::test]
async fn create_is_atomic_create_if_absent() {
    let store = MemoryStore::new();
    let first = store
        .create(stored(snapshot("a", "Op"), Some(json!(1))))
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
}

#[tokio::test]
async fn update_is_compare_and_set_on_the_revision() {
    let store = MemoryStore::new();
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

#[tokio::test]
async fn signals_are_sequenced_and_refused_after_terminal() {
    let store = MemoryStore::new();
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

#[tokio::test]
async fn list_shows_only_the_tenant_asked_for_and_counts_by_state() {
    let store = MemoryStore::new();
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

#[tokio::test]
async fn list_filters_by_operation_and_state_and_pages_by_id() {
    let store = MemoryStore::new();
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
    let mut filter = ListFilter {
        tenant: None,
        operation: Some("Op".into()),
        state: Some(OperationState::Pending),
        after: None,
        limit: 2,
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

#[tokio::test]
async fn the_doorbell_rings_on_every_write_and_closes_at_terminal() {
    let store = MemoryStore::new();
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
