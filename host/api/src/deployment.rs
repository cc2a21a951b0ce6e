//! Deployments on the wire: each change to which version of a component serves an operation
//! or works a queue, as recorded by the host that made it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a deployment changes: an operation's handler or a queue's worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "camelCase")]
pub enum DeployTarget {
    /// The handler of the named operation.
    Operation(String),
    /// The worker of the named queue.
    Queue(String),
}

impl DeployTarget {
    /// `operation` or `queue`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Operation(_) => "operation",
            Self::Queue(_) => "queue",
        }
    }

    /// The operation's or the queue's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Operation(name) | Self::Queue(name) => name,
        }
    }

    /// Where targets of this kind are listed and addressed in the API: `operations` or
    /// `queues`.
    pub fn collection(&self) -> &'static str {
        match self {
            Self::Operation(_) => "operations",
            Self::Queue(_) => "queues",
        }
    }

    /// The target named `name` in `collection` (`operations` or `queues`).
    pub fn in_collection(collection: &str, name: String) -> Option<Self> {
        match collection {
            "operations" => Some(Self::Operation(name)),
            "queues" => Some(Self::Queue(name)),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeployTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// The change a deployment record makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum DeployAction {
    /// The host started with this version in its config. It is made current when it differs
    /// from the version the config named at the last start.
    Config,
    /// An operator deployed this version: current for every new operation, or, with
    /// `percent` below 100, for about that share of them (a ramp).
    Deploy {
        /// The share of new operations that run it, 1 to 100.
        percent: u8,
    },
    /// An operator rolled this version back: a ramping version stops ramping, a current one
    /// gives way to the version current before it.
    Rollback,
}

/// One change to a target's versions, in the order the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// Its place in the store's deployment log, from 1; 0 before it is recorded.
    pub seq: u64,
    /// The operation or queue it changes.
    pub target: DeployTarget,
    /// What it does.
    #[serde(flatten)]
    pub action: DeployAction,
    /// The version it concerns: the component's sha256.
    pub sha256: String,
    /// Who made it: the caller's subject and tenant (`subject@tenant`), or `config`.
    pub by: String,
    /// When it was made.
    pub at: DateTime<Utc>,
}
