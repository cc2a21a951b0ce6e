//! What every route shares: the runtime, the authenticator, the config and the metrics; the
//! authenticated caller; and the tenant and capability checks every route runs first.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use opshost_api::{ErrorCode, Snapshot};
use opshost_contract::{Action, OperationSpec};
use opshost_runtime::store::{Doorbell, StoredOperation};
use opshost_runtime::{OperationRuntime, ServerError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sse::Frames;

/// Everything a route needs.
pub(crate) struct Shared {
    pub(crate) runtime: OperationRuntime,
    pub(crate) jobs: Option<opshost_jobs::Jobs>,
    pub(crate) deployments: Option<Arc<dyn crate::deployments::Deployments>>,
    pub(crate) auth: Authenticator,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) frames: Frames,
    /// Frames of the list-watch stream's recent changes, shared by its streams.
    pub(crate) change_frames: crate::sse::ChangeFrames,
    pub(crate) draining: CancellationToken,
    /// Cancelled when the server closes: waits answer at once.
    pub(crate) closing: CancellationToken,
}

pub(crate) type AppState = Arc<Shared>;

/// The authenticated caller of a request.
pub(crate) struct Caller(pub(crate) Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(bearer(state, &parts.headers)?))
    }
}

/// Refuses a caller without the host's `admin_capability`, for the operator routes of
/// `routes` (`jobs`, `deployments`).
pub(crate) fn require_admin(
    shared: &Shared,
    caller: &Principal,
    routes: &str,
) -> Result<(), ApiError> {
    let capability = &shared.config.admin_capability;
    if caller.scopes.iter().any(|scope| scope == capability) {
        Ok(())
    } else {
        Err(ApiError::missing_capability(capability, "admin", routes))
    }
}

/// The caller a request's `Authorization: Bearer` header names.
pub(crate) fn bearer(shared: &Shared, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str())
        .transpose()
        .map_err(|_| ApiError::from(AuthError::Malformed("not ASCII".into())))?;
    Ok(shared.auth.authenticate(header)?)
}

impl Shared {
    pub(crate) fn spec(&self, operation: &str) -> Result<&OperationSpec, ApiError> {
        self.runtime.spec(operation).map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::OperationNotFound,
                format!("service has no operation `{operation}`"),
            )
        })
    }

    /// The operation `id` if the caller's tenant owns it, whatever its capabilities: for a
    /// watch token, which was minted under `observe`.
    pub(crate) async fn owned(
        &self,
        caller: &Principal,
        id: &str,
    ) -> Result<StoredOperation, ApiError> {
        let stored = match self.runtime.load(id).await {
            Ok(stored) => stored,
            Err(ServerError::OperationNotFound { .. }) => return Err(ApiError::not_found(id)),
            Err(error) => return Err(error.into()),
        };
        if stored.owner.tenant != caller.tenant {
            return Err(ApiError::not_found(id));
        }
        Ok(stored)
    }

    /// The operation `id` if the caller's tenant owns it and `action` is granted.
    pub(crate) async fn visible(
        &self,
        caller: &Principal,
        id: &str,
        action: Action,
    ) -> Result<StoredOperation, ApiError> {
        let stored = self.owned(caller, id).await?;
        authorize(caller, self.spec(&stored.snapshot.operation)?, action)?;
        Ok(stored)
    }

    /// Waits up to `timeout` for operation `id` to end, or until the server closes; answers
    /// the operation as it stands then.
    pub(crate) async fn wait(&self, id: &str, timeout: Duration) -> Result<Snapshot, ServerError> {
        let bell = self.runtime.doorbell(id);
        let current = self.runtime.get(id).await?;
        self.wait_from(bell, current, timeout).await
    }

    /// [`Shared::wait`] from `current`, read after `bell` was taken.
    pub(crate) async fn wait_from(
        &self,
        bell: Doorbell,
        current: Snapshot,
        timeout: Duration,
    ) -> Result<Snapshot, ServerError> {
        let id = current.id.clone();
        tokio::select! {
            waited = self.runtime.wait_from(bell, current, Some(timeout)) => waited,
            () = self.closing.cancelled() => self.runtime.get(&id).await,
        }
    }

    pub(crate) fn clamp_wait(&self, seconds: f64) -> Duration {
        let max = self.config.max_wait();
        if seconds.is_finite() && seconds > 0.0 {
            Duration::from_secs_f64(seconds.min(max.as_secs_f64()))
        } else {
            Duration::ZERO
        }
    }
}

/// Refuses `action` on `spec`'s operation unless the caller holds a capability it needs.
pub(crate) fn authorize(
    caller: &Principal,
    spec: &OperationSpec,
    action: Action,
) -> Result<(), ApiError> {
    match spec.capabilities.missing(action, &caller.scopes) {
        Some(capability) => Err(ApiError::missing_capability(
            capability,
            action.as_str(),
            &spec.name,
        )),
        None => Ok(()),
    }
}
