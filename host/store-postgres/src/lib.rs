//! The PostgreSQL store: several opshost hosts on one database.
//!
//! - **Durable before acknowledged.** Each write is one transaction, committed (synchronously)
//!   before its future resolves; PostgreSQL groups the commits of concurrent connections.
//! - **Atomic rules in SQL.** Create is `INSERT ... ON CONFLICT DO NOTHING`; an update is a
//!   compare-and-set on the revision; a signal locks its operation's row, so sequences have no
//!   gaps and none is taken after the terminal change; jobs are leased with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent hosts never take one job twice (see `jobs`).
//! - **Group commit.** Updates waiting at once are applied as one statement (see `updates`).
//! - **Doorbells** ring here after the commit and on the other hosts through one coalesced
//!   `NOTIFY` per burst of changes (see `doorbell`).
//! - **Ownership.** Each store is one host: it keeps a row in `hosts` alive (renewed at a third
//!   of its lease, on the database's clock) and marks the operations it accepts as its own.
//!   Claiming orphans takes, with `SKIP LOCKED`, the unfinished operations whose host's lease
//!   ran out; recovery then restarts them with `attempt` + 1, a new revision that fences the
//!   old run (see `OperationRuntime::recover`).
//! - **Migrations** are embedded and applied once, under an advisory lock (see `schema`).

mod deployments;
mod doorbell;
mod hosts;
mod jobs;
mod logs;
mod operations;
mod schema;
mod sql;
mod updates;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use opshost_runtime::store::StoreError;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::doorbell::Doorbells;
use crate::hosts::{keep_alive, renew};
use crate::sql::{describe, unavailable};
use crate::updates::Updates;

/// Pooled connections a store keeps to the database (beside them: the one its batches of
/// updates use, and the one that listens for the other hosts).
const POOL_SIZE: usize = 16;

/// How long a connection attempt may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call waits for a pooled connection before the store is reported unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Idle time before TCP keep-alive probes check a database connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// How long a host stays the owner of its operations without renewing its lease.
pub const DEFAULT_HOST_LEASE: Duration = Duration::from_secs(10);

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is not a PostgreSQL connection string.
    #[error("store URL: {0}")]
    Url(String),
    /// The database cannot be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// The schema cannot be brought up to date.
    #[error("database schema: {0}")]
    Schema(String),
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; stops its notice tasks when dropped.
pub struct PostgresStore {
    pool: Pool,
    host: String,
    bells: Arc<Doorbells>,
    /// Updates waiting for their batch (see `updates`).
    updates: Arc<Updates>,
    tasks: Vec<JoinHandle<()>>,
    lease: JoinHandle<()>,
    /// See [`OperationStore::holds_unscoped_keys`]: read at connect, set by a create of one.
    unscoped: std::sync::atomic::AtomicBool,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        self.lease.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) as a new host with the
    /// default lease; see [`PostgresStore::connect_with_lease`].
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        Self::connect_with_lease(url, DEFAULT_HOST_LEASE).await
    }

    /// Connects to `url` as a new host whose operations other hosts take over once it has not
    /// renewed its lease for `lease`; migrates the schema, registers the host and listens for
    /// the other hosts' changes before it answers. Must run inside a tokio runtime.
    pub async fn connect_with_lease(url: &str, lease: Duration) -> Result<Self, OpenError> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| OpenError::Url(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanished without closing its connections is found within seconds.
        config.keepalives_idle(KEEPALIVE_IDLE);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut db = pool
            .get()
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        schema::migrate(&mut db).await.map_err(OpenError::Schema)?;
        let unscoped: bool = db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM operations WHERE tenant <> $1 AND position('@' in id) = 0)",
                &[&opshost_api::id::DEFAULT_TENANT],
            )
            .await
            .map_err(|e| OpenError::Connect(describe(&e)))?
            .get(0);
        let host = ulid::Ulid::new().to_string();
        renew(&db, &host, lease)
            .await
            .map_err(|e| OpenError::Connect(describe(&e)))?;
        drop(db);
        // Listening before answering: no change after `connect` goes unheard.
        let listener = doorbell::subscribe_notices(&config)
            .await
            .map_err(|e| OpenError::Connect(describe(&e)))?;
        let bells = Arc::new(Doorbells::new(host.clone()));
        let updates = Arc::new(Updates::new(pool.clone(), bells.clone()));
        let tasks = vec![
            tokio::spawn(doorbell::notify(bells.clone(), pool.clone())),
            tokio::spawn(doorbell::listen(bells.clone(), config, listener)),
            tokio::spawn(updates::run(updates.clone())),
        ];
        let lease = tokio::spawn(keep_alive(pool.clone(), host.clone(), lease));
        Ok(Self {
            pool,
            host,
            bells,
            updates,
            tasks,
            lease,
            unscoped: std::sync::atomic::AtomicBool::new(unscoped),
        })
    }

    /// This host's name in `hosts` and in the operations it owns.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn db(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// A pooled connection, and `sql` prepared on it (once per connection).
    async fn statement(
        &self,
        sql: &str,
    ) -> Result<(Object, tokio_postgres::Statement), StoreError> {
        let db = self.db().await?;
        let statement = sql::prepared(&db, sql).await?;
        Ok((db, statement))
    }
}
