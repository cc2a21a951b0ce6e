//! The job store conformance suite: the durable queue's rules, written once against
//! `dyn JobStore` and run against each backend by [`job_store_conformance!`]. Every call
//! gets its clock from the test, so nothing here sleeps.
//!
//! Create-if-absent, leases in due order, lease expiry (redelivery, or `dead` after the last
//! attempt), fencing by attempt, the ends of an attempt, hand-back, cancel and retry, listing,
//! owners and the next due time, retention, and concurrent leases.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use opshost_api::{ErrorCode, ErrorInfo};
use opshost_jobs::{CancelOutcome, Finish, Heartbeat, JobFilter, JobRecord, JobState, JobStore};
use serde_json::json;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).expect("a valid time")
}

fn job(id: &str, queue: &str, run_at: i64) -> JobRecord {
    JobRecord {
        id: id.into(),
        queue: queue.into(),
        state: JobState::Queued,
        payload: json!({ "id": id }),
        progress: None,
        result: None,
        error: None,
        attempt: 0,
        max_attempts: 2,
        operation: None,
        cancel_requested: false,
        run_at: at(run_at),
        lease_until: None,
        created_at: at(0),
        updated_at: at(0),
        trace: None,
    }
}

fn failure(message: &str) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::HandlerFailed, message)
}

async fn lease(store: &Arc<dyn JobStore>, queue: &str, now: i64) -> Option<JobRecord> {
    store
        .lease(queue, at(now), at(now) + Duration::milliseconds(1000))
        .await
        .unwrap()
}

/// See the module docs.
pub async fn enqueue_keeps_the_first_job_of_an_id(store: Arc<dyn JobStore>) {
    let mut traced = job("j", "q", 0);
    traced.trace = Some(opshost_api::TraceContext {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        sampled: true,
        state: None,
    });
    let first = store.enqueue(traced.clone()).await.unwrap();
    assert_eq!(first.trace, traced.trace, "the trace is kept with the job");
    let mut other = job("j", "q", 0);
    other.payload = json!("different");
    assert_eq!(store.enqueue(other).await.unwrap(), first);
    assert_eq!(store.get("j").await.unwrap(), Some(first));
    assert_eq!(store.get("nope").await.unwrap(), None);
}

/// See the module docs.
pub async fn lease_takes_due_jobs_in_order_of_their_time(store: Arc<dyn JobStore>) {
    store.enqueue(job("late", "q", 50)).await.unwrap();
    store.enqueue(job("early", "q", 10)).await.unwrap();
    store.enqueue(job("future", "q", 500)).await.unwrap();
    store.enqueue(job("elsewhere", "other", 0)).await.unwrap();
    let first = lease(&store, "q", 100).await.unwrap();
    assert_eq!((first.id.as_str(), first.attempt), ("early", 1));
    assert_eq!(first.state, JobState::Running);
    assert_eq!(first.lease_until, Some(at(1100)));
    assert_eq!(lease(&store, "q", 100).await.unwrap().id, "late");
    assert_eq!(lease(&store, "q", 100).await, None, "`future` is not due");
    assert_eq!(store.next_due("q").await.unwrap(), Some(at(500)));
}

/// See the module docs.
pub async fn an_expired_lease_is_redelivered_and_after_the_last_attempt_the_job_is_dead(
    store: Arc<dyn JobStore>,
) {
    store.enqueue(job("j", "q", 0)).await.unwrap();
    assert_eq!(lease(&store, "q", 0).await.unwrap().attempt, 1);
    assert_eq!(lease(&store, "q", 999).await, None, "still leased");
    let again = lease(&store, "q", 1000).await.unwrap();
    assert_eq!((again.attempt, again.state), (2, JobState::Running));
    let dead = lease(&store, "q", 2000).await.unwrap();
    assert_eq!((dead.attempt, dead.state), (2, JobState::Dead));
    assert_eq!(dead.error.unwrap().code, ErrorCode::HostRestarted);
    assert_eq!(lease(&store, "q", 5000).await, None);
    assert_eq!(store.next_due("q").await.unwrap(), None);
}

/// See the module docs.
pub async fn a_lost_lease_can_neither_be_renewed_nor_finished(store: Arc<dyn JobStore>) {
    store.enqueue(job("j", "q", 0)).await.unwrap();
    lease(&store, "q", 0).await.unwrap();
    let held = store.heartbeat("j", 1, at(3000)).await.unwrap();
    assert_eq!(
        held,
        Heartbeat::Held {
            cancel_requested: false
        }
    );
    assert_eq!(
        lease(&store, "q", 2000).await,
        None,
        "the heartbeat extended the lease"
    );
    lease(&store, "q", 3000).await.unwrap();
    assert_eq!(
        store.heartbeat("j", 1, at(9000)).await.unwrap(),
        Heartbeat::Lost
    );
    let progress = store.progress("j", 1, json!(1), at(3001)).await.unwrap();
    assert_eq!(progress, Heartbeat::Lost);
    let done = Finish::Completed(json!("stale"));
    assert_eq!(store.finish("j", 1, done, at(3002)).await.unwrap(), None);
    let current = store.get("j").await.unwrap().unwrap();
    assert_eq!((current.attempt, current.state), (2, JobState::Running));
}

/// See the module docs.
pub async fn a_handed_back_job_is_due_at_once_and_its_attempt_not_counted(
    store: Arc<dyn JobStore>,
) {
    let mut last = job("j", "q", 0);
    last.max_attempts = 1;
    store.enqueue(last).await.unwrap();
    let leased = lease(&store, "q", 0).await.expect("due");
    assert_eq!(leased.attempt, 1);
    let handed = store.hand_back("j", 1, at(10)).await.unwrap();
    assert!(matches!(handed, Heartbeat::Held { .. }));
    let again = lease(&store, "q", 10).await.expect("due again at once");
    assert_eq!(
        again.state,
        JobState::Running,
        "its one attempt is still to run"
    );
    assert_eq!(again.attempt, 1);
    assert_eq!(
        store.hand_back("j", 2, at(20)).await.unwrap(),
        Heartbeat::Lost,
        "only the attempt holding it hands it back"
    );
}

/// See the module docs.
pub async fn an_attempt_ends_completed_retried_or_dead(store: Arc<dyn JobStore>) {
    for id in ["done", "again", "gone"] {
        store.enqueue(job(id, id, 0)).await.unwrap();
        lease(&store, id, 0).await.unwrap();
    }
    store
        .progress("done", 1, json!({ "percent": 50 }), at(1))
        .await
        .unwrap();
    let done = store
        .finish("done", 1, Finish::Completed(json!({ "ok": true })), at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({ "ok": true })));
    assert_eq!(done.progress, Some(json!({ "percent": 50 })));

    let retry = Finish::Retry {
        error: failure("once"),
        at: at(400),
    };
    let again = store
        .finish("again", 1, retry, at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.state, again.run_at), (JobState::Queued, at(400)));
    assert_eq!(
        lease(&store, "again", 399).await,
        None,
        "not before its backoff"
    );
    let second = lease(&store, "again", 400).await.unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.error.unwrap().message,
        "once",
        "the last error is kept"
    );

    let dead = store
        .finish("gone", 1, Finish::Dead(failure("for good")), at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.error.unwrap().message, "for good");
}

/// See the module docs.
pub async fn cancel_ends_a_waiting_job_and_asks_a_running_one(store: Arc<dyn JobStore>) {
    store.enqueue(job("waiting", "q", 0)).await.unwrap();
    store.enqueue(job("running", "r", 0)).await.unwrap();
    lease(&store, "r", 0).await.unwrap();
    let Some(CancelOutcome::Cancelled(waiting)) = store.cancel("waiting", at(1)).await.unwrap()
    else {
        panic!("a queued job is cancelled at once");
    };
    assert_eq!(waiting.state, JobState::Cancelled);
    assert_eq!(lease(&store, "q", 10).await, None);
    let Some(CancelOutcome::Requested(running)) = store.cancel("running", at(1)).await.unwrap()
    else {
        panic!("a running job is asked to stop");
    };
    assert!(running.cancel_requested);
    let beat = store.heartbeat("running", 1, at(500)).await.unwrap();
    assert_eq!(
        beat,
        Heartbeat::Held {
            cancel_requested: true
        }
    );
    let Some(CancelOutcome::Final(unchanged)) = store.cancel("waiting", at(2)).await.unwrap()
    else {
        panic!("a final job stays as it is");
    };
    assert_eq!(unchanged, waiting);
    assert_eq!(store.cancel("nope", at(2)).await.unwrap(), None);
}

/// See the module docs.
pub async fn retry_requeues_only_dead_or_cancelled_jobs(store: Arc<dyn JobStore>) {
    store.enqueue(job("dead", "q", 0)).await.unwrap();
    lease(&store, "q", 0).await.unwrap();
    store
        .finish("dead", 1, Finish::Dead(failure("x")), at(1))
        .await
        .unwrap();
    let queued = store.retry("dead", at(5)).await.unwrap().unwrap();
    assert_eq!(
        (queued.state, queued.attempt, queued.run_at),
        (JobState::Queued, 0, at(5))
    );
    assert_eq!(lease(&store, "q", 5).await.unwrap().attempt, 1);
    let running = store.retry("dead", at(6)).await.unwrap().unwrap();
    assert_eq!(
        running.state,
        JobState::Running,
        "a running job is not retried"
    );
}

/// See the module docs.
pub async fn list_filters_and_pages_and_owner_of_finds_the_unfinished_owner(
    store: Arc<dyn JobStore>,
) {
    for (id, queue) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        let mut record = job(id, queue, 0);
        record.operation = Some(format!("op-{id}"));
        store.enqueue(record).await.unwrap();
    }
    lease(&store, "a", 0).await.unwrap();
    store
        .finish("a1", 1, Finish::Completed(json!(null)), at(1))
        .await
        .unwrap();
    let filter = |queue: Option<&str>, state, after: Option<&str>| JobFilter {
        queue: queue.map(Into::into),
        state,
        after: after.map(Into::into),
        limit: 2,
    };
    let page = store.list(&filter(Some("a"), None, None)).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert_eq!(page.next.as_deref(), Some("a2"));
    let rest = store
        .list(&filter(Some("a"), None, Some("a2")))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
    let queued = store
        .list(&filter(None, Some(JobState::Queued), None))
        .await
        .unwrap();
    let ids: Vec<&str> = queued.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["a2", "a3"]);
    assert_eq!(queued.next.as_deref(), Some("a3"));
    assert_eq!(store.owner_of("op-a1").await.unwrap(), None, "a1 is final");
    assert_eq!(store.owner_of("op-b1").await.unwrap().unwrap().id, "b1");
    assert_eq!(store.owner_of("op-none").await.unwrap(), None);
}

/// See the module docs.
pub async fn purge_removes_only_final_jobs_older_than_the_cutoff(store: Arc<dyn JobStore>) {
    for id in ["old-done", "new-done", "old-queued", "old-running"] {
        store.enqueue(job(id, id, 0)).await.unwrap();
    }
    for (id, at_ms) in [("old-done", 10), ("new-done", 5000)] {
        lease(&store, id, 0).await.unwrap();
        store
            .finish(id, 1, Finish::Completed(json!(null)), at(at_ms))
            .await
            .unwrap();
    }
    lease(&store, "old-running", 0).await.unwrap();
    assert_eq!(store.purge(at(1000)).await.unwrap(), 1);
    assert_eq!(store.get("old-done").await.unwrap(), None);
    for id in ["new-done", "old-queued", "old-running"] {
        assert!(store.get(id).await.unwrap().is_some(), "{id} is kept");
    }
}

/// See the module docs.
pub async fn concurrent_leases_never_hand_one_job_to_two_workers(store: Arc<dyn JobStore>) {
    leases_through(&[store], 20).await;
}

/// Enqueues `jobs` jobs through the first store, then leases them with four workers per store
/// until none is due; checks that every job was handed out exactly once, and answers how many
/// each store handed out.
pub async fn leases_through(stores: &[Arc<dyn JobStore>], jobs: usize) -> Vec<usize> {
    // Enqueued through every store in turn, so that each starts leasing as warmed up as the
    // others (connections open, statements prepared).
    for n in 0..jobs {
        stores[n % stores.len()]
            .enqueue(job(&format!("j{n:04}"), "q", 0))
            .await
            .unwrap();
    }
    let workers: Vec<_> = (0..stores.len() * 4)
        .map(|worker| {
            let index = worker % stores.len();
            let store = Arc::clone(&stores[index]);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(job) = lease(&store, "q", 10).await {
                    mine.push(job.id);
                }
                (index, mine)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_store = vec![0; stores.len()];
    for worker in workers {
        let (index, mine) = worker.await.unwrap();
        per_store[index] += mine.len();
        all.extend(mine);
    }
    all.sort();
    let expected: Vec<String> = (0..jobs).map(|n| format!("j{n:04}")).collect();
    assert_eq!(all, expected, "every job leased exactly once");
    per_store
}

/// Runs the job store conformance suite against the store `$make` gives (an async expression
/// yielding `(Arc<dyn JobStore>, guard)`).
#[macro_export]
macro_rules! job_store_conformance {
    ($make:expr) => {
        $crate::job_store_conformance!(@tests $make;
            enqueue_keeps_the_first_job_of_an_id,
            lease_takes_due_jobs_in_order_of_their_time,
            an_expired_lease_is_redelivered_and_after_the_last_attempt_the_job_is_dead,
            a_lost_lease_can_neither_be_renewed_nor_finished,
            a_handed_back_job_is_due_at_once_and_its_attempt_not_counted,
            an_attempt_ends_completed_retried_or_dead,
            cancel_ends_a_waiting_job_and_asks_a_running_one,
            retry_requeues_only_dead_or_cancelled_jobs,
            list_filters_and_pages_and_owner_of_finds_the_unfinished_owner,
            purge_removes_only_final_jobs_older_than_the_cutoff,
            concurrent_leases_never_hand_one_job_to_two_workers
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::job_conformance::$name(store).await;
            }
        )*
    };
}
