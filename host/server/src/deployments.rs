//! The operator routes under `/v1/deployments`: the versions of each operation's handler,
//! and deploying a new one (its component's bytes as the body) or rolling back, without a
//! restart. Like the jobs routes, they answer only callers holding the server's
//! `admin_capability`. The host serving wasm components implements [`Deployments`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use opshost_api::ErrorCode;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// Largest component a deploy takes, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Why a deploy or a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No handler serves this operation here.
    #[error("no handler serves `{0}` here")]
    UnknownOperation(String),
    /// The component failed its checks (compilation, imports, grants): nothing changed.
    #[error("{0}")]
    Refused(String),
    /// A rollback with no version before the current one.
    #[error("`{0}` has no earlier version to roll back to")]
    NoEarlierVersion(String),
}

/// The versions of a host's handlers, as the admin routes see them.
pub trait Deployments: Send + Sync + 'static {
    /// The versions of each operation's handler, as JSON: `{ "Op": [ { sha256, deployedAt,
    /// current, inFlight } ] }`.
    fn list(&self) -> Value;

    /// Checks `component`, then makes it the current version of `operation`'s handler;
    /// answers its sha256.
    fn deploy<'a>(
        &'a self,
        operation: &'a str,
        component: Bytes,
    ) -> BoxFuture<'a, Result<String, DeployError>>;

    /// Makes the version before the current one current again; answers its sha256.
    fn rollback(&self, operation: &str) -> Result<String, DeployError>;
}

/// The `/v1/deployments` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/deployments", get(list))
        .route(
            "/v1/deployments/{operation}",
            post(deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route("/v1/deployments/{operation}/rollback", post(rollback))
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let (status, code) = match &error {
            DeployError::UnknownOperation(_) => {
                (StatusCode::NOT_FOUND, ErrorCode::OperationNotFound)
            }
            DeployError::Refused(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput),
            DeployError::NoEarlierVersion(_) => {
                (StatusCode::CONFLICT, ErrorCode::OperationUnsupportedControl)
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// The host's deployments, once the caller is known to be an operator.
fn operator<'a>(
    state: &'a AppState,
    caller: &Principal,
) -> Result<&'a Arc<dyn Deployments>, ApiError> {
    let capability = &state.config.admin_capability;
    if !caller.scopes.iter().any(|scope| scope == capability) {
        return Err(ApiError::missing_capability(
            capability,
            "admin",
            "deployments",
        ));
    }
    state.deployments.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::OperationNotFound,
            "this host serves no versioned handlers",
        )
    })
}

async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(operator(&state, &caller)?.list()))
}

async fn deploy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(operation): Path<String>,
    component: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let deployments = operator(&state, &caller)?;
    let sha256 = deployments.deploy(&operation, component).await?;
    tracing::info!(%operation, %sha256, by = %caller.subject, tenant = %caller.tenant, "deployed");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "operation": operation, "sha256": sha256 })),
    ))
}

async fn rollback(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(operation): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sha256 = operator(&state, &caller)?.rollback(&operation)?;
    tracing::info!(%operation, %sha256, by = %caller.subject, tenant = %caller.tenant, "rolled back");
    Ok(Json(json!({ "operation": operation, "sha256": sha256 })))
}
