//! The operator routes under `/v1/jobs`: list, get, retry and cancel jobs. Jobs are
//! service-private, so these answer only callers holding the server's `admin_capability`
//! (403 `MissingCapability` otherwise), after authentication (401).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use opshost_api::ErrorCode;
use opshost_jobs::{JobError, JobFilter, JobPage, JobRecord, JobState, Jobs};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::{AppState, Caller, require_admin};

/// The `/v1/jobs` routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/cancel", post(cancel))
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        if let JobError::Store(store) = error {
            return opshost_runtime::ServerError::Store(store).into();
        }
        let status = match &error {
            JobError::NotFound(_) => StatusCode::NOT_FOUND,
            JobError::WrongState { .. } => StatusCode::CONFLICT,
            JobError::UnknownQueue(_) | JobError::NoContract | JobError::Invalid { .. } => {
                StatusCode::BAD_REQUEST
            }
            JobError::LeaseLost(_) | JobError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let info = error.to_info();
        let mut api = ApiError::new(status, info.code, info.message);
        if let Some(details) = info.details {
            api = api.with_details(details);
        }
        api
    }
}

/// The jobs, once the caller is known to be an operator.
fn operator<'a>(state: &'a AppState, caller: &Principal) -> Result<&'a Jobs, ApiError> {
    require_admin(state, caller, "jobs")?;
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::JobNotFound,
            "this host runs no jobs",
        )
    })
}

#[derive(Deserialize)]
struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let jobs = operator(&state, &caller)?;
    let job_state = match query.state.as_deref() {
        Some(name) => Some(JobState::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "state `{name}` is not one of queued, running, completed, dead, cancelled"
            ))
        })?),
        None => None,
    };
    let limit = state.config.page_limit;
    let filter = JobFilter {
        queue: query.queue,
        state: job_state,
        after: query.after,
        limit: query.limit.unwrap_or(limit).clamp(1, limit),
    };
    Ok(Json(jobs.list(&filter).await?))
}

async fn get_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(operator(&state, &caller)?.get(&id).await?))
}

async fn retry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(operator(&state, &caller)?.retry(&id).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(operator(&state, &caller)?.cancel(&id).await?))
}
