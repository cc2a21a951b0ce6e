//! The store conformance suite (`opshost_tests::conformance`) on every backend.

use std::sync::Arc;

use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;

async fn memory() -> (Arc<dyn OperationStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

async fn sqlite() -> (Arc<dyn OperationStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path()).expect("the store opens");
    (Arc::new(store), dir)
}

async fn postgres() -> (Arc<dyn OperationStore>, ()) {
    let url = opshost_tests::postgres::fresh_database().await;
    let store = PostgresStore::connect(&url)
        .await
        .expect("the store connects");
    (Arc::new(store), ())
}

mod memory {
    opshost_tests::store_conformance!(super::memory());
}

mod sqlite {
    opshost_tests::store_conformance!(super::sqlite());
}

mod postgres {
    opshost_tests::store_conformance!(super::postgres());
}
