//! The conformance suites, `opshost_tests::conformance` (operations),
//! `opshost_tests::job_conformance` (jobs) and `opshost_tests::deployment_conformance`
//! (deployments), on every backend: a backend is one module here.

use std::future::Future;
use std::sync::Arc;

use opshost_jobs::{JobStore, MemoryJobStore};
use opshost_runtime::store::{DeploymentStore, MemoryStore, OperationStore};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;

async fn sqlite() -> (Arc<SqliteStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path()).expect("the store opens");
    (Arc::new(store), dir)
}

async fn postgres() -> (Arc<PostgresStore>, ()) {
    let url = opshost_tests::postgres::fresh_database().await;
    let store = PostgresStore::connect(&url)
        .await
        .expect("the store connects");
    (Arc::new(store), ())
}

/// A fresh store of a backend, seen as an operation store.
async fn operations<S: OperationStore, G>(
    made: impl Future<Output = (Arc<S>, G)>,
) -> (Arc<dyn OperationStore>, G) {
    let (store, guard) = made.await;
    (store, guard)
}

/// A fresh store of a backend, seen as a deployment store.
async fn deployments<S: DeploymentStore, G>(
    made: impl Future<Output = (Arc<S>, G)>,
) -> (Arc<dyn DeploymentStore>, G) {
    let (store, guard) = made.await;
    (store, guard)
}

/// A fresh store of a backend, seen as a job store.
async fn jobs<S: JobStore, G>(made: impl Future<Output = (Arc<S>, G)>) -> (Arc<dyn JobStore>, G) {
    let (store, guard) = made.await;
    (store, guard)
}

mod memory {
    use super::*;

    opshost_tests::store_conformance!(operations(async { (Arc::new(MemoryStore::new()), ()) }));
    opshost_tests::job_store_conformance!(jobs(async { (Arc::new(MemoryJobStore::new()), ()) }));
    opshost_tests::deployment_store_conformance!(deployments(async {
        (Arc::new(MemoryStore::new()), ())
    }));
}

mod sqlite {
    use super::*;

    opshost_tests::store_conformance!(operations(sqlite()));
    opshost_tests::job_store_conformance!(jobs(sqlite()));
    opshost_tests::deployment_store_conformance!(deployments(sqlite()));
}

mod postgres {
    use super::*;

    opshost_tests::store_conformance!(operations(postgres()));
    opshost_tests::job_store_conformance!(jobs(postgres()));
    opshost_tests::deployment_store_conformance!(deployments(postgres()));
}
