//! Two stores on one PostgreSQL database, as two hosts would hold them: a change written
//! through one rings the doorbells of the other, and the other reads it; jobs leased through
//! both go to one worker each. Updates batched together never wait on a row another program
//! holds, keep one refused update's failure its own, and go on after the database dropped
//! every connection.

use std::sync::Arc;
use std::time::Duration;

use opshost_api::{EventKind, OperationState, Snapshot};
use opshost_jobs::JobStore;
use opshost_runtime::store::{OperationStore, Owner, StoreError, StoredOperation, UpdateOutcome};
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

/// A client of its own on `url`, as another program sharing the database would hold one.
async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("a raw connection");
    tokio::spawn(connection);
    client
}

/// Updates of `ids` to revision 2, all at once: the store batches those that wait together.
fn race_updates(
    store: &Arc<PostgresStore>,
    ids: &[String],
) -> Vec<tokio::task::JoinHandle<Result<UpdateOutcome, StoreError>>> {
    ids.iter()
        .map(|id| {
            let (store, created) = (Arc::clone(store), accepted(id));
            tokio::spawn(async move {
                let running = next(&created.snapshot, OperationState::Running);
                store.update(running, EventKind::Started).await
            })
        })
        .collect()
}

fn updated(outcome: &Result<UpdateOutcome, StoreError>) -> bool {
    matches!(outcome, Ok(UpdateOutcome::Updated(_)))
}

/// A store on a fresh database holding `count` accepted operations, `op-00` on; its URL and
/// their ids.
async fn store_of(count: usize) -> (String, Arc<PostgresStore>, Vec<String>) {
    let url = opshost_tests::postgres::fresh_database().await;
    let store = Arc::new(PostgresStore::connect(&url).await.expect("connects"));
    let ids: Vec<String> = (0..count).map(|n| format!("op-{n:02}")).collect();
    for id in &ids {
        store.create(accepted(id)).await.expect("created");
    }
    (url, store, ids)
}

/// Holds the rows of `held` from another program, then makes the update of `parked` (one of
/// them): made while no other is in flight, it goes straight to the database and waits there
/// for its row, so every update made after this returns is batched. Answers the holder (its
/// `COMMIT` releases the rows) and the parked update.
async fn park_an_update(
    url: &str,
    store: &Arc<PostgresStore>,
    held: &[&str],
    parked: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<UpdateOutcome, StoreError>>,
) {
    let holder = raw_client(url).await;
    holder.batch_execute("BEGIN").await.expect("a transaction");
    holder
        .execute(
            "SELECT 1 FROM operations WHERE id = ANY($1) FOR UPDATE",
            &[&held],
        )
        .await
        .expect("the rows are held");
    let waiting = race_updates(store, &[parked.to_owned()]).remove(0);
    // Watched from outside the holder's transaction, which sees one snapshot of the activity.
    let watcher = raw_client(url).await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let row = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity");
            if row.get::<_, i64>(0) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{parked}'s update waits for its row"));
    (holder, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_other_operations_go_on_while_another_program_holds_one_operations_row() {
    let (url, store, ids) = store_of(40).await;
    let (holder, waiting) = park_an_update(&url, &store, &["op-07", "op-39"], "op-39").await;
    let mut updates = race_updates(&store, &ids[..39]);
    let blocked = updates.remove(7);
    for (update, id) in updates
        .into_iter()
        .zip(ids.iter().filter(|id| *id != "op-07"))
    {
        let outcome = tokio::time::timeout(PATIENCE, update)
            .await
            .unwrap_or_else(|_| panic!("{id} waited for another operation's row"))
            .expect("the task");
        assert!(updated(&outcome), "{id}: {outcome:?}");
    }
    assert!(
        !blocked.is_finished(),
        "op-07 cannot move while its row is held"
    );
    assert!(
        !waiting.is_finished(),
        "op-39 cannot move while its row is held"
    );
    holder
        .batch_execute("COMMIT")
        .await
        .expect("the rows are released");
    for (update, id) in [(blocked, "op-07"), (waiting, "op-39")] {
        let outcome = tokio::time::timeout(PATIENCE, update)
            .await
            .unwrap_or_else(|_| panic!("{id} moves once its row is released"))
            .expect("the task");
        assert!(updated(&outcome), "{id}: {outcome:?}");
        let stored = store.load(id).await.expect("reads").expect("the operation");
        assert_eq!(stored.snapshot.revision, 2, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_the_database_refuses_fails_alone_and_the_rest_of_its_batch_applies() {
    let (url, store, ids) = store_of(10).await;
    raw_client(&url)
        .await
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused on purpose'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON operations FOR EACH ROW
                 WHEN (NEW.id = 'op-03') EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("a trigger that refuses op-03's updates");
    let (holder, waiting) = park_an_update(&url, &store, &["op-09"], "op-09").await;
    let updates = race_updates(&store, &ids[..9]);
    for (update, id) in updates.into_iter().zip(&ids) {
        let outcome = tokio::time::timeout(PATIENCE, update)
            .await
            .unwrap_or_else(|_| panic!("{id} is answered"))
            .expect("the task");
        match id.as_str() {
            "op-03" => match outcome {
                Err(error) => assert!(error.to_string().contains("refused on purpose"), "{error}"),
                other => panic!("op-03 is refused: {other:?}"),
            },
            _ => assert!(updated(&outcome), "{id}: {outcome:?}"),
        }
    }
    holder
        .batch_execute("COMMIT")
        .await
        .expect("the row is released");
    let outcome = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("op-09 moves once its row is released")
        .expect("the task");
    assert!(updated(&outcome), "{outcome:?}");
    let refused = store.load("op-03").await.expect("reads").expect("op-03");
    assert_eq!(
        refused.snapshot.revision, 1,
        "nothing of op-03's update was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_after_the_database_dropped_every_connection_apply_on_new_ones() {
    let (url, store, ids) = store_of(40).await;
    // Batches first, so that their connection exists, then every connection of the store goes.
    let (early, late) = ids.split_at(20);
    for update in race_updates(&store, early) {
        assert!(updated(&update.await.expect("the task")));
    }
    raw_client(&url)
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("the connections are dropped");
    let late = late.to_vec();
    let outcomes = race_updates(&store, &late);
    let mut failed = Vec::new();
    for (update, id) in outcomes.into_iter().zip(&late) {
        match update.await.expect("the task") {
            Ok(UpdateOutcome::Updated(_)) => {}
            // A pooled connection dropped under an update fails it, as unavailable: the
            // caller tries again.
            Err(StoreError::Unavailable { .. }) => failed.push(id.clone()),
            other => panic!("{id}: {other:?}"),
        }
    }
    // Whatever failed applies now, on connections made again (a pooled connection whose end
    // the pool has not noticed yet may fail one more try).
    for _ in 0..5 {
        let tried = std::mem::take(&mut failed);
        for (update, id) in race_updates(&store, &tried).into_iter().zip(tried) {
            match update.await.expect("the task") {
                Ok(UpdateOutcome::Updated(_)) => {}
                Err(StoreError::Unavailable { .. }) => failed.push(id),
                other => panic!("{id}: {other:?}"),
            }
        }
    }
    assert!(failed.is_empty(), "still failing: {failed:?}");
    for id in &ids {
        let stored = store.load(id).await.expect("reads").expect("the operation");
        assert_eq!(stored.snapshot.revision, 2, "{id}");
    }
}
