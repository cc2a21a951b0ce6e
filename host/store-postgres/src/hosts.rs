//! This host's lease in `hosts`: renewed while it lives, so that the others know whose
//! operations are orphaned.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};

use crate::sql::describe;

/// Extends this host's lease to `lease` from now on the database's clock, unless the host
/// released it (`-infinity`): a renewal already on its way then changes nothing.
pub(crate) async fn renew(
    db: &impl GenericClient,
    host: &str,
    lease: Duration,
) -> Result<(), tokio_postgres::Error> {
    let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let renewal = db
        .prepare_cached(
            "INSERT INTO hosts (host, alive_until)
             VALUES ($1, now() + $2::BIGINT * INTERVAL '1 millisecond')
             ON CONFLICT (host) DO UPDATE SET alive_until = excluded.alive_until
             WHERE hosts.alive_until <> '-infinity'",
        )
        .await?;
    db.execute(&renewal, &[&host, &millis]).await.map(drop)
}

/// Renews the lease at a third of its length until the store is dropped.
pub(crate) async fn keep_alive(pool: Pool, host: String, lease: Duration) {
    let mut ticks = tokio::time::interval(lease / 3);
    loop {
        ticks.tick().await;
        let renewed = match pool.get().await {
            Ok(db) => renew(&db, &host, lease).await.map_err(|e| describe(&e)),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = renewed {
            tracing::warn!(%host, %error, "cannot renew this host's lease");
        }
    }
}
