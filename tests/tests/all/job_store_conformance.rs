//! The job store conformance suite (`opshost_tests::job_conformance`) on every backend.

use std::sync::Arc;

use opshost_jobs::{JobStore, MemoryJobStore};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;

async fn memory() -> (Arc<dyn JobStore>, ()) {
    (Arc::new(MemoryJobStore::new()), ())
}

async fn sqlite() -> (Arc<dyn JobStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path()).expect("the store opens");
    (Arc::new(store), dir)
}

async fn postgres() -> (Arc<dyn JobStore>, ()) {
    let url = opshost_tests::postgres::fresh_database().await;
    let store = PostgresStore::connect(&url)
        .await
        .expect("the store connects");
    (Arc::new(store), ())
}

mod memory {
    opshost_tests::job_store_conformance!(super::memory());
}

mod sqlite {
    opshost_tests::job_store_conformance!(super::sqlite());
}

mod postgres {
    opshost_tests::job_store_conformance!(super::postgres());
}
