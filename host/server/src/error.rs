//! Errors on the wire: `{"error": {"code", "message", "details"}}` with the status of each code.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opshost_api::{ErrorCode, ErrorInfo};
use opshost_runtime::ServerError;
use serde_json::{Value, json};

use crate::auth::AuthError;

/// When a caller may retry after the store was unavailable.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// An error answered to an HTTP caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    info: ErrorInfo,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            info: ErrorInfo::new(code, message),
            retry_after: None,
        }
    }

    /// Adds machine-readable details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.info.details = Some(details);
        self
    }

    /// 400 `InvalidInput`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, message)
    }

    /// 404 `OperationNotFound`: also what a caller of another tenant gets.
    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::OperationNotFound,
            format!("operation `{id}` not found"),
        )
    }

    /// 403 `MissingCapability`, naming the capability and the action it gates.
    pub fn missing_capability(capability: &str, action: &str, operation: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::MissingCapability,
            format!("{action} on {operation} needs capability `{capability}`"),
        )
        .with_details(json!({ "capability": capability, "action": action, "operation": operation }))
    }

    /// 503 `Overloaded` with `Retry-After`.
    pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            message,
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// The error body's `error` object.
    pub fn info(&self) -> &ErrorInfo {
        &self.info
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            error.to_string(),
        )
    }
}

impl From<ServerError> for ApiError {
    fn from(error: ServerError) -> Self {
        let status = match &error {
            ServerError::Store(store) if store.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::OperationNotFound { .. } => StatusCode::NOT_FOUND,
            ServerError::OperationAlreadyExists { .. }
            | ServerError::Superseded { .. }
            | ServerError::OperationTerminal { .. }
            | ServerError::OperationUnsupportedControl { .. } => StatusCode::CONFLICT,
            ServerError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            ServerError::LimitExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServerError::HandlerNonTerminal { .. }
            | ServerError::Failed(_)
            | ServerError::Store(_)
            | ServerError::Codec(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%error, "request refused while the store is unavailable");
        } else if status.is_server_error() {
            tracing::error!(%error, "request failed");
        }
        let retry_after = match &error {
            ServerError::Overloaded { retry_after, .. } => Some(*retry_after),
            ServerError::Store(store) if store.is_unavailable() => Some(STORE_RETRY_AFTER),
            ServerError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        };
        let mut info = error.to_info();
        if let ServerError::InvalidInput { message, issues } = &error
            && !issues.is_empty()
        {
            info.message = message.clone();
            info.details = Some(json!({ "issues": issues }));
        }
        Self {
            status,
            info,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "error": self.info }));
        let mut response = (self.status, body).into_response();
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs().max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
