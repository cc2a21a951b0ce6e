//! Marker traits that the generated facade implements for every operation and signal.

use serde::{Serialize, de::DeserializeOwned};

/// A contract operation known at compile time: its identity and its typed payloads.
///
/// The facade generated from a contract manifest implements this for one zero-sized marker
/// type per operation, e.g. `operations::OrdersProcess`.
pub trait Operation: Send + Sync + 'static {
    /// The service that declares the operation, e.g. `orders-service`.
    const SERVICE: &'static str;
    /// The operation's name in the contract, e.g. `Orders.Process`.
    const NAME: &'static str;
    /// The operation's contract version, e.g. `v1`.
    const VERSION: &'static str;
    /// The start input.
    type Input: Serialize + DeserializeOwned + Send + Sync + Clone + 'static;
    /// One progress report.
    type Progress: Serialize + DeserializeOwned + Send + Sync + Clone + 'static;
    /// The output of a completed operation.
    type Output: Serialize + DeserializeOwned + Send + Sync + Clone + 'static;

    /// The contract manifest (JSON text) that declares this operation.
    fn manifest() -> &'static str;
}

/// A named post-start input declared for an operation.
pub trait Signal: Send + Sync + 'static {
    /// The operation the signal belongs to.
    type Operation: Operation;
    /// The signal's name in the contract, e.g. `Expedite`.
    const NAME: &'static str;
    /// The signal's payload.
    type Input: Serialize + DeserializeOwned + Send + Sync + Clone + 'static;
}
