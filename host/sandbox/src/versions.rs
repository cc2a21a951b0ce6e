//! Versions of an operation's handler: each is a component, named by its sha256. An
//! operation is pinned to the version current when it is accepted and every attempt runs that
//! version while it is kept; new operations run the current one. A deploy makes a new version
//! current, a rollback the one before it, without a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use opshost_api::{ErrorInfo, Snapshot};
use opshost_runtime::{OperationHandler, Run};
use serde::Serialize;
use serde_json::Value;

/// One version of an operation's handler, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The component's sha256.
    pub sha256: String,
    /// When it was deployed (loaded, for the version the host started with).
    pub deployed_at: DateTime<Utc>,
    /// Whether new operations run it.
    pub current: bool,
    /// Runs of it on this host now.
    pub in_flight: usize,
}

/// A version: its handler and its runs in flight.
struct Version {
    handler: Arc<dyn OperationHandler>,
    deployed_at: DateTime<Utc>,
    in_flight: Arc<AtomicUsize>,
}

struct State {
    /// Versions by sha256.
    versions: HashMap<String, Version>,
    /// The sha256 of each version made current, oldest first; the last is current.
    history: Vec<String>,
}

/// An operation's handler with versions: see the module docs.
pub struct VersionedHandler {
    state: RwLock<State>,
}

impl VersionedHandler {
    /// A handler whose only version is `handler`, the component `sha256`.
    pub fn new(sha256: String, handler: Arc<dyn OperationHandler>) -> Self {
        let versioned = Self {
            state: RwLock::new(State {
                versions: HashMap::new(),
                history: Vec::new(),
            }),
        };
        versioned.deploy(sha256, handler);
        versioned
    }

    /// Makes `handler` (component `sha256`) the current version. Deploying the current
    /// version again changes nothing.
    pub fn deploy(&self, sha256: String, handler: Arc<dyn OperationHandler>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.history.last() == Some(&sha256) {
            return;
        }
        state
            .versions
            .entry(sha256.clone())
            .or_insert_with(|| Version {
                handler,
                deployed_at: Utc::now(),
                in_flight: Arc::default(),
            });
        state.history.push(sha256);
    }

    /// Makes the version current before the current one current again; answers it, or
    /// `None` when there is no earlier version.
    pub fn rollback(&self) -> Option<String> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let current = state.history.pop()?;
        match state.history.last().cloned() {
            Some(previous) => Some(previous),
            None => {
                state.history.push(current);
                None
            }
        }
    }

    /// The current version's sha256.
    pub fn current(&self) -> String {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.history.last().cloned().unwrap_or_default()
    }

    /// Every version kept, the current one first, then by deploy time, newest first.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let current = state.history.last();
        let mut versions: Vec<VersionInfo> = state
            .versions
            .iter()
            .map(|(sha256, version)| VersionInfo {
                sha256: sha256.clone(),
                deployed_at: version.deployed_at,
                current: Some(sha256) == current,
                in_flight: version.in_flight.load(Ordering::SeqCst),
            })
            .collect();
        versions.sort_by(|a, b| {
            b.current
                .cmp(&a.current)
                .then(b.deployed_at.cmp(&a.deployed_at))
        });
        versions
    }

    /// The handler of the version `pinned` names, if kept, else the current one's; with the
    /// counter of its runs.
    fn pick(&self, pinned: Option<&str>) -> (Arc<dyn OperationHandler>, Arc<AtomicUsize>) {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let current = state.history.last().and_then(|sha| state.versions.get(sha));
        let version = pinned
            .and_then(|sha| state.versions.get(sha))
            .or(current)
            .expect("a versioned handler always has a current version");
        (Arc::clone(&version.handler), Arc::clone(&version.in_flight))
    }
}

impl OperationHandler for VersionedHandler {
    fn run(
        &self,
        run: Arc<Run>,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let (handler, in_flight) = self.pick(snapshot.component.as_deref());
        in_flight.fetch_add(1, Ordering::SeqCst);
        // Counted until the run's future is dropped, polled or not.
        let counted = InFlight(in_flight);
        let running = handler.run(run, snapshot, input);
        Box::pin(async move {
            let _counted = counted;
            running.await
        })
    }

    fn version(&self) -> Option<String> {
        Some(self.current())
    }
}

/// A run counted in its version's `in_flight` until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
