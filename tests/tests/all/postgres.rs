//! Two stores on one PostgreSQL database, as two hosts would hold them: a change written
//! through one rings the doorbells of the other, and the other reads it; jobs leased through
//! both go to one worker each.

use std::sync::Arc;
use std::time::Duration;

use opshost_api::{EventKind, OperationState, Snapshot};
use opshost_jobs::JobStore;
use opshost_runtime::store::{OperationStore, Owner, StoredOperation, UpdateOutcome};
use opshost_store_postgres::PostgresStore;
use opshost_tests::conformance::next;

/// Far longer than a notice takes; only a lost notice gets near it.
const PATIENCE: Duration = Duration::from_secs(10);

async fn two_hosts() -> (PostgresStore, PostgresStore) {
    let url = opshost_tests::postgres::fresh_database().await;
    let a = PostgresStore::connect(&url).await.expect("host A connects");
    let b = PostgresStore::connect(&url).await.expect("host B connects");
    (a, b)
}

fn accepted(id: &str) -> StoredOperation {
    StoredOperation {
        snapshot: Snapshot::accepted(id.into(), "svc".into(), "Op".into(), "v1".into()),
        input: None,
        owner: Owner {
            tenant: "acme".into(),
            subject: "alice".into(),
        },
    }
}

async fn write(store: &PostgresStore, next: Snapshot, kind: EventKind) {
    let outcome = store.update(next, kind).await.expect("the update commits");
    assert!(matches!(outcome, UpdateOutcome::Updated(_)), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_host_rings_the_doorbell_on_the_other() {
    let (a, b) = two_hosts().await;
    let created = accepted("op-1");
    a.create(created.clone()).await.expect("created on A");
    let mut bell = b.subscribe("op-1");
    let running = next(&created.snapshot, OperationState::Running);
    write(&a, running.clone(), EventKind::Started).await;
    tokio::time::timeout(PATIENCE, bell.changed())
        .await
        .expect("B hears A's change")
        .expect("the bell is open");
    let seen = b
        .load("op-1")
        .await
        .expect("B reads")
        .expect("the operation");
    assert_eq!(seen.snapshot.revision, running.revision);
    assert_eq!(seen.snapshot.state, OperationState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_change_on_one_host_closes_the_doorbell_on_the_other() {
    let (a, b) = two_hosts().await;
    let created = accepted("op-2");
    a.create(created.clone()).await.expect("created on A");
    let mut bell = b.subscribe("op-2");
    write(
        &a,
        next(&created.snapshot, OperationState::Completed),
        EventKind::Completed,
    )
    .await;
    let closed =
        tokio::time::timeout(PATIENCE, async { while bell.changed().await.is_ok() {} }).await;
    assert!(closed.is_ok(), "B's bell closes after A's terminal change");
    let events = b.events_after("op-2", 0).await.expect("B reads the log");
    let kinds: Vec<EventKind> = events.iter().map(|event| event.kind()).collect();
    assert_eq!(kinds, [EventKind::Accepted, EventKind::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_leased_through_two_hosts_go_to_one_worker_each_and_to_both_hosts() {
    let (a, b) = two_hosts().await;
    let stores: [Arc<dyn JobStore>; 2] = [Arc::new(a), Arc::new(b)];
    let per_host = opshost_tests::job_conformance::leases_through(&stores, 100).await;
    assert!(per_host.iter().all(|&count| count > 0), "{per_host:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_finds_the_schema_in_place_and_shares_the_operations() {
    let (a, b) = two_hosts().await;
    a.create(accepted("op-3")).await.expect("created on A");
    let seen = b.load("op-3").await.expect("B reads");
    assert_eq!(
        seen.map(|stored| stored.snapshot.id).as_deref(),
        Some("op-3")
    );
    let unfinished = b.unfinished().await.expect("B lists");
    assert_eq!(unfinished.len(), 1);
}
