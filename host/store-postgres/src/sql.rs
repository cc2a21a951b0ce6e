//! Helpers of every statement: errors classified by what a caller should do, prepared
//! statements, and values in and out of rows.

use deadpool_postgres::GenericClient;
use opshost_api::OperationState;
use opshost_runtime::store::StoreError;

/// A PostgreSQL error as a store error of the right kind: a lost connection (closed, or failing
/// I/O), a server shutting down or short of resources, and a serialization failure are
/// unavailable; an
/// integrity violation is a conflict; damaged data is corrupt.
pub(crate) fn failed(error: tokio_postgres::Error) -> StoreError {
    let message = describe(&error);
    let lost = error.is_closed()
        || std::error::Error::source(&error).is_some_and(|cause| cause.is::<std::io::Error>());
    let kind = match error.code().map(|code| code.code()) {
        None if lost => StoreError::unavailable(message),
        None => StoreError::internal(message),
        Some(code)
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01" =>
        {
            StoreError::unavailable(message)
        }
        Some(code) if code.starts_with("23") => StoreError::conflict(message),
        Some("XX001" | "XX002") => StoreError::corrupt(message),
        Some(_) => StoreError::internal(message),
    };
    kind.caused_by(error)
}

/// No connection could be had from the pool: the database is down or unreachable.
pub(crate) fn unavailable(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable(format!("postgres: no connection: {error}")).caused_by(error)
}

/// `sql`, prepared once per connection (planning every call would cost more than running it).
pub(crate) async fn prepared(
    db: &impl GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    db.prepare_cached(sql).await.map_err(failed)
}

/// The error with its cause: tokio-postgres keeps the server's message in the source.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("postgres: {error}: {cause}"),
        None => format!("postgres: {error}"),
    }
}

pub(crate) fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::internal("cannot encode").caused_by(e))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::corrupt("postgres: a row does not decode").caused_by(e))
}

pub(crate) fn state(text: &str) -> Result<OperationState, StoreError> {
    decode(&format!("\"{text}\""))
}

pub(crate) fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
