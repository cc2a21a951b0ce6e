//! The operator routes under `/v1/deployments`: the versions of each operation's handler,
//! and deploying a new one (its component's bytes as the body) or rolling back, without a
//! restart. Like the jobs routes, they answer only callers holding the server's
//! `admin_capability`. The host serving wasm components implements [`Deployments`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
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

/// The host's deployments, with the caller known to be an operator: extracted from the
/// request head, so that a caller without the capability is refused before its body is read.
struct Operator {
    deployments: Arc<dyn Deployments>,
    caller: Principal,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let capability = &state.config.admin_capability;
        if !caller.scopes.iter().any(|scope| scope == capability) {
            return Err(ApiError::missing_capability(
                capability,
                "admin",
                "deployments",
            ));
        }
        let deployments = state.deployments.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::OperationNotFound,
                "this host serves no versioned handlers",
            )
        })?;
        Ok(Self {
            deployments,
            caller,
        })
    }
}

async fn list(operator: Operator) -> Json<Value> {
    Json(operator.deployments.list())
}

async fn deploy(
    operator: Operator,
    Path(operation): Path<String>,
    component: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Operator {
        deployments,
        caller,
    } = operator;
    let sha256 = deployments.deploy(&operation, component).await?;
    tracing::info!(%operation, %sha256, by = %caller.subject, tenant = %caller.tenant, "deployed");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "operation": operation, "sha256": sha256 })),
    ))
}

async fn rollback(
    operator: Operator,
    Path(operation): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sha256 = operator.deployments.rollback(&operation)?;
    let caller = &operator.caller;
    tracing::info!(%operation, %sha256, by = %caller.subject, tenant = %caller.tenant, "rolled back");
    Ok(Json(json!({ "operation": operation, "sha256": sha256 })))
}
