//! The operator routes under `/v1/deployments`: the versions of each operation's handler and
//! each queue's worker, and deploying a new one (its component's bytes as the body, with an
//! optional `?percent=` ramp) or rolling back, without a restart; and `POST
//! /v1/config/reload`, which applies the config file's `[limits]` and grants to new runs. Like the jobs routes, they answer only callers holding the server's
//! `admin_capability`. The host serving wasm components implements [`Deployments`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use opshost_api::{DeployTarget, ErrorCode};
use opshost_runtime::ServerError;
use opshost_runtime::store::StoreError;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::{AppState, Caller, require_admin};

/// Largest component a deploy takes, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Why a deploy or a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No handler or worker serves this operation or queue here.
    #[error("no handler or worker serves {0} here")]
    UnknownTarget(DeployTarget),
    /// The component failed its checks: nothing changed.
    #[error("{message}")]
    Refused {
        /// What was refused, and why.
        message: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A rollback with no ramp and no version before the current one.
    #[error("{0} has no earlier version to roll back to")]
    NoEarlierVersion(DeployTarget),
    /// The store of deployments failed: nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host failed on its side: nothing changed.
    #[error("{0}")]
    Internal(String),
}

impl DeployError {
    /// A refusal for one problem, `problem`.
    pub fn refused(problem: impl std::fmt::Display) -> Self {
        let message = problem.to_string();
        Self::Refused {
            problems: vec![message.clone()],
            message,
        }
    }
}

/// The versions of a host's handlers and workers, as the admin routes see them.
pub trait Deployments: Send + Sync + 'static {
    /// The versions of each operation's handler and each queue's worker, and the last changes
    /// of the deployment log, as JSON: `{ "operations": { "Op": [version] }, "queues": {..},
    /// "history": [record] }`.
    fn list(&self) -> BoxFuture<'_, Result<Value, DeployError>>;

    /// Checks `component`, then makes it the version of `target` that new work runs (all of
    /// it, or `percent` of it as a ramp), recording `by` as who did it; answers its sha256.
    fn deploy(
        &self,
        target: DeployTarget,
        component: Bytes,
        percent: u8,
        by: String,
    ) -> BoxFuture<'_, Result<String, DeployError>>;

    /// What a deploy of `component` as a version of `target` would find, changing nothing:
    /// `{ sha256, current, problems, importsAdded, importsRemoved }`.
    fn check(
        &self,
        target: DeployTarget,
        component: Bytes,
    ) -> BoxFuture<'_, Result<Value, DeployError>>;

    /// Reads the host's config file again and applies its `[limits]` and grants to new runs;
    /// answers what changed, one line each.
    fn reload(&self) -> BoxFuture<'_, Result<Vec<String>, DeployError>>;

    /// Rolls `target` back (a ramp ends, or the previous version is made current again),
    /// recording `by` as who did it; answers the version now current.
    fn rollback(
        &self,
        target: DeployTarget,
        by: String,
    ) -> BoxFuture<'_, Result<String, DeployError>>;
}

/// The `/v1/deployments` routes: `{kind}` is `operations` or `queues`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/deployments", get(list))
        .route(
            "/v1/deployments/{kind}/{name}",
            post(deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route("/v1/deployments/{kind}/{name}/rollback", post(rollback))
        .route("/v1/config/reload", post(reload))
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let message = error.to_string();
        match error {
            DeployError::UnknownTarget(target) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, message)
                    .with_details(json!({ "kind": target.kind(), "name": target.name() }))
            }
            DeployError::Refused { problems, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, message)
                    .with_details(json!({ "problems": problems }))
            }
            DeployError::NoEarlierVersion(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::OperationUnsupportedControl,
                message,
            ),
            DeployError::Store(error) => ServerError::Store(error).into(),
            DeployError::Internal(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                message,
            ),
        }
    }
}

/// The target a route names: `operations/{name}` or `queues/{name}`.
fn target(kind: &str, name: String) -> Result<DeployTarget, ApiError> {
    DeployTarget::in_collection(kind, name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::OperationNotFound,
            format!("no deployments of `{kind}`: use `operations` or `queues`"),
        )
    })
}

/// The query of a deploy.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    /// The share of new work that runs the new version, 1 to 100 (all unless given).
    percent: Option<u8>,
    /// Only check: answer what a deploy would find, changing nothing.
    #[serde(rename = "dryRun", default)]
    dry_run: bool,
}

/// The host's deployments, with the caller known to be an operator: extracted from the
/// request head, so that a caller without the capability is refused before its body is read.
struct Operator {
    deployments: Arc<dyn Deployments>,
    /// Who the caller is, as the deployment log records it: `subject@tenant`.
    by: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        require_admin(state, &caller, "deployments")?;
        let deployments = state.deployments.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::OperationNotFound,
                "this host serves no versioned handlers",
            )
        })?;
        Ok(Self {
            deployments,
            by: format!("{}@{}", caller.subject, caller.tenant),
        })
    }
}

async fn list(operator: Operator) -> Result<Json<Value>, ApiError> {
    Ok(Json(operator.deployments.list().await?))
}

async fn deploy(
    operator: Operator,
    Path((kind, name)): Path<(String, String)>,
    query: Result<Query<DeployQuery>, QueryRejection>,
    component: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let target = target(&kind, name)?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::invalid(format!("query: {}", rejection.body_text()))
            .with_details(json!({ "allowed": ["percent", "dryRun"] }))
    })?;
    let percent = query.percent.unwrap_or(100);
    if !(1..=100).contains(&percent) {
        return Err(
            ApiError::invalid(format!("query `percent`: must be 1 to 100, not {percent}"))
                .with_details(json!({ "path": "percent" })),
        );
    }
    let Operator { deployments, by } = operator;
    if query.dry_run {
        return Ok((
            StatusCode::OK,
            Json(deployments.check(target, component).await?),
        ));
    }
    let sha256 = deployments
        .deploy(target.clone(), component, percent, by)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "kind": target.kind(),
            "name": target.name(),
            "sha256": sha256,
            "percent": percent,
        })),
    ))
}

async fn rollback(
    operator: Operator,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let target = target(&kind, name)?;
    let sha256 = operator
        .deployments
        .rollback(target.clone(), operator.by)
        .await?;
    Ok(Json(json!({
        "kind": target.kind(),
        "name": target.name(),
        "sha256": sha256,
    })))
}

async fn reload(operator: Operator) -> Result<Json<Value>, ApiError> {
    let changes = operator.deployments.reload().await?;
    tracing::info!(by = %operator.by, changes = changes.len(), "config reloaded");
    Ok(Json(json!({ "changes": changes })))
}
