//! Snapshots of an operation and the events that carry them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{ErrorInfo, Operation, TraceContext};

/// Lifecycle state: `pending` → `running` → `completed` | `failed` | `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationState {
    /// Accepted, handler not started yet.
    Pending,
    /// The handler marked the operation started.
    Running,
    /// Terminal: finished with an output.
    Completed,
    /// Terminal: finished with an error.
    Failed,
    /// Terminal: cancelled.
    Cancelled,
}

impl OperationState {
    /// Whether nothing can change the operation any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The change that produced a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// Revision 1: the operation was accepted.
    Accepted,
    /// The handler marked the operation running.
    Started,
    /// The handler reported progress.
    Progress,
    /// A caller requested cancellation; the handler has been woken.
    CancelRequested,
    /// The host restarted and runs the handler again (`attempt` went up).
    Restarted,
    /// Terminal: completed.
    Completed,
    /// Terminal: failed.
    Failed,
    /// Terminal: cancelled.
    Cancelled,
}

impl EventKind {
    const ALL: [Self; 8] = [
        Self::Accepted,
        Self::Started,
        Self::Progress,
        Self::CancelRequested,
        Self::Restarted,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The event's wire name, as in the `type` tag of [`OperationEvent`] (e.g. `progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Started => "started",
            Self::Progress => "progress",
            Self::CancelRequested => "cancelRequested",
            Self::Restarted => "restarted",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The kind with wire name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// An operation's full state at one revision, with progress and output as JSON.
///
/// This is the wire and storage form; [`OperationSnapshot`] is its typed view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Operation id.
    pub id: String,
    /// Declaring service.
    pub service: String,
    /// Operation name, e.g. `Orders.Process`.
    pub operation: String,
    /// Contract version, e.g. `v1`.
    pub version: String,
    /// 1 on accept, +1 on every change.
    pub revision: u64,
    /// Lifecycle state.
    pub state: OperationState,
    /// Last reported progress; kept after terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    /// Output, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Error, when failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Whether a caller asked to cancel.
    pub cancel_requested: bool,
    /// Attempt number, 1 on first run.
    pub attempt: u32,
    /// When the operation was accepted.
    pub created_at: DateTime<Utc>,
    /// When the operation last changed.
    pub updated_at: DateTime<Utc>,
    /// When the operation became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The trace the operation's spans belong to (`trace.traceId`), when it was accepted in
    /// one: the caller's `traceparent`, or the host's own when it exports traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// The version of the handler's component the operation runs on: its sha256, pinned when
    /// it is accepted. Every attempt runs that version while the host keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl Snapshot {
    /// Revision 1 of a newly accepted operation: `pending`, attempt 1, created now.
    pub fn accepted(id: String, service: String, operation: String, version: String) -> Self {
        let now = Utc::now();
        Self {
            id,
            service,
            operation,
            version,
            revision: 1,
            state: OperationState::Pending,
            progress: None,
            output: None,
            error: None,
            cancel_requested: false,
            attempt: 1,
            created_at: now,
            updated_at: now,
            completed_at: None,
            trace: None,
            component: None,
        }
    }

    /// Whether the snapshot is terminal.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// The typed view for operation `Op`.
    pub fn typed<Op: Operation>(self) -> Result<OperationSnapshot<Op>, serde_json::Error> {
        fn decode<T: DeserializeOwned>(
            value: Option<serde_json::Value>,
        ) -> Result<Option<T>, serde_json::Error> {
            value.map(serde_json::from_value).transpose()
        }
        Ok(OperationSnapshot {
            progress: decode(self.progress)?,
            output: decode(self.output)?,
            id: self.id,
            service: self.service,
            operation: self.operation,
            version: self.version,
            revision: self.revision,
            state: self.state,
            error: self.error,
            cancel_requested: self.cancel_requested,
            attempt: self.attempt,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            trace: self.trace,
            component: self.component,
        })
    }
}

/// A snapshot whose progress and output are the typed payloads of operation `Op`.
#[derive(Debug, PartialEq)]
pub struct OperationSnapshot<Op: Operation> {
    /// Operation id.
    pub id: String,
    /// Declaring service.
    pub service: String,
    /// Operation name.
    pub operation: String,
    /// Contract version.
    pub version: String,
    /// 1 on accept, +1 on every change.
    pub revision: u64,
    /// Lifecycle state.
    pub state: OperationState,
    /// Last reported progress.
    pub progress: Option<Op::Progress>,
    /// Output, when completed.
    pub output: Option<Op::Output>,
    /// Error, when failed or cancelled.
    pub error: Option<ErrorInfo>,
    /// Whether a caller asked to cancel.
    pub cancel_requested: bool,
    /// Attempt number.
    pub attempt: u32,
    /// When the operation was accepted.
    pub created_at: DateTime<Utc>,
    /// When the operation last changed.
    pub updated_at: DateTime<Utc>,
    /// When the operation became terminal.
    pub completed_at: Option<DateTime<Utc>>,
    /// The trace the operation's spans belong to, when it was accepted in one.
    pub trace: Option<TraceContext>,
    /// The version (sha256) of the handler's component the operation runs on.
    pub component: Option<String>,
}

impl<Op: Operation> Clone for OperationSnapshot<Op> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            service: self.service.clone(),
            operation: self.operation.clone(),
            version: self.version.clone(),
            revision: self.revision,
            state: self.state,
            progress: self.progress.clone(),
            output: self.output.clone(),
            error: self.error.clone(),
            cancel_requested: self.cancel_requested,
            attempt: self.attempt,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            trace: self.trace.clone(),
            component: self.component.clone(),
        }
    }
}

impl<Op: Operation> OperationSnapshot<Op> {
    /// Whether the snapshot is terminal.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

/// One change of an operation, carrying the full snapshot after it.
///
/// `S` is [`Snapshot`] on the wire and [`OperationSnapshot<Op>`] for typed callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum OperationEvent<S = Snapshot> {
    /// The operation was accepted.
    Accepted {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// The handler started.
    Started {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// Progress was reported.
    Progress {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// Cancellation was requested.
    CancelRequested {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// The host restarted and runs the handler again.
    Restarted {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// Terminal: completed.
    Completed {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// Terminal: failed.
    Failed {
        /// Snapshot after the change.
        snapshot: S,
    },
    /// Terminal: cancelled.
    Cancelled {
        /// Snapshot after the change.
        snapshot: S,
    },
}

impl<S> OperationEvent<S> {
    /// An event of `kind` carrying `snapshot`.
    pub fn new(kind: EventKind, snapshot: S) -> Self {
        match kind {
            EventKind::Accepted => Self::Accepted { snapshot },
            EventKind::Started => Self::Started { snapshot },
            EventKind::Progress => Self::Progress { snapshot },
            EventKind::CancelRequested => Self::CancelRequested { snapshot },
            EventKind::Restarted => Self::Restarted { snapshot },
            EventKind::Completed => Self::Completed { snapshot },
            EventKind::Failed => Self::Failed { snapshot },
            EventKind::Cancelled => Self::Cancelled { snapshot },
        }
    }

    /// What changed.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Accepted { .. } => EventKind::Accepted,
            Self::Started { .. } => EventKind::Started,
            Self::Progress { .. } => EventKind::Progress,
            Self::CancelRequested { .. } => EventKind::CancelRequested,
            Self::Restarted { .. } => EventKind::Restarted,
            Self::Completed { .. } => EventKind::Completed,
            Self::Failed { .. } => EventKind::Failed,
            Self::Cancelled { .. } => EventKind::Cancelled,
        }
    }

    /// The snapshot after the change.
    pub fn snapshot(&self) -> &S {
        match self {
            Self::Accepted { snapshot }
            | Self::Started { snapshot }
            | Self::Progress { snapshot }
            | Self::CancelRequested { snapshot }
            | Self::Restarted { snapshot }
            | Self::Completed { snapshot }
            | Self::Failed { snapshot }
            | Self::Cancelled { snapshot } => snapshot,
        }
    }

    /// The snapshot after the change, taken out of the event.
    pub fn into_snapshot(self) -> S {
        match self {
            Self::Accepted { snapshot }
            | Self::Started { snapshot }
            | Self::Progress { snapshot }
            | Self::CancelRequested { snapshot }
            | Self::Restarted { snapshot }
            | Self::Completed { snapshot }
            | Self::Failed { snapshot }
            | Self::Cancelled { snapshot } => snapshot,
        }
    }

    /// The same event with its snapshot mapped.
    pub fn try_map<T, E>(self, f: impl FnOnce(S) -> Result<T, E>) -> Result<OperationEvent<T>, E> {
        let kind = self.kind();
        let snapshot = self.into_snapshot();
        Ok(OperationEvent::new(kind, f(snapshot)?))
    }
}
