//! Outbound requests on the wire: what a guest sent to the services it calls, as operators see
//! it. Never bodies, query strings or secrets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One request a handler or job worker sent (or tried to send) over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundRecord {
    /// When the guest handed the request over.
    pub at: DateTime<Utc>,
    /// The operation's attempt that sent it.
    pub attempt: u32,
    /// The job whose worker sent it, when a worker did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// `GET`, `POST`, ...
    pub method: String,
    /// `scheme://host:port`.
    pub origin: String,
    /// The path, without its query string.
    pub path: String,
    /// The response's status, once one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From the hand-over to the end of the response body (or the failure).
    pub duration_ms: u64,
    /// Response body bytes the guest read.
    pub bytes: u64,
    /// Why the host refused to send it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
    /// Why it failed after it was sent (a timeout, a limit, a broken connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outbound requests of one operation, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPage {
    /// The requests kept, oldest first.
    pub records: Vec<OutboundRecord>,
    /// Older requests no longer kept.
    pub dropped: u64,
}
