//! [`ApiError`]: every way a request can fail, and the one place that maps it to an HTTP status
//! and the body `{"error": {"code", "message"}}`. Server-side failures answer a generic message;
//! their details go to the log, never to the client.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};
use serde_json::json;

use super::batcher::BatchError;
use super::store::{StoreError, error_chain};
use deltaspace_core::task::TaskError;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the route takes.
    #[error("{0}")]
    InvalidJson(String),
    /// The request is well-formed but asks for something impossible.
    #[error("{0}")]
    InvalidRequest(String),
    /// The task fails validation.
    #[error("{0}")]
    InvalidTask(String),
    #[error("no task named {0:?}")]
    TaskNotFound(String),
    #[error("no tune job {0:?}")]
    JobNotFound(String),
    /// The tune request is well-formed JSON but cannot make a task (labels, examples, budget).
    #[error("{0}")]
    InvalidTune(String),
    /// Accepting the tune job would exceed `max_tune_jobs` + `max_queued_tune_jobs`.
    #[error("{0}")]
    TooManyJobs(String),
    #[error("no route {0}")]
    RouteNotFound(String),
    /// A known route asked with another method; `allow` lists the ones it takes (RFC 9110 `Allow`).
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    /// `If-Match` named another generation than the stored one.
    #[error("{0}")]
    EtagMismatch(String),
    /// Creating the task would exceed `max_tasks`.
    #[error("{0}")]
    TooManyTasks(String),
    #[error("a valid `Authorization: Bearer TOKEN` header is required")]
    Unauthorized,
    /// A browser sent a change from another site (`origin`).
    #[error("{0}")]
    CrossSite(String),
    /// A loopback-bound server was asked under a `Host` name it does not answer (`origin`).
    #[error("{0}")]
    HostNotAllowed(String),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many requests are waiting; retry shortly")]
    Overloaded,
    #[error("the model is still loading")]
    NotReady,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The shared task store cannot be reached: writes are refused (nothing was acknowledged),
    /// predictions go on from memory.
    #[error("the task store is unavailable, so writes are refused for now ({0}); retry later")]
    StoreUnavailable(String),
    /// Anything the client cannot fix; its causes are logged, the client sees a generic message.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// The stable, machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidTask(_) => "invalid_task",
            Self::TaskNotFound(_) => "task_not_found",
            Self::JobNotFound(_) => "job_not_found",
            Self::InvalidTune(_) => "invalid_tune",
            Self::TooManyJobs(_) => "too_many_jobs",
            Self::RouteNotFound(_) => "route_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::EtagMismatch(_) => "etag_mismatch",
            Self::TooManyTasks(_) => "too_many_tasks",
            Self::Unauthorized => "unauthorized",
            Self::CrossSite(_) => "cross_site",
            Self::HostNotAllowed(_) => "host_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Overloaded => "overloaded",
            Self::NotReady => "not_ready",
            Self::ShuttingDown => "shutting_down",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::InvalidRequest(_) | Self::InvalidTask(_) | Self::InvalidTune(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::TaskNotFound(_) | Self::RouteNotFound(_) | Self::JobNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::EtagMismatch(_) | Self::TooManyTasks(_) => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::CrossSite(_) | Self::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded | Self::TooManyJobs(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::ShuttingDown | Self::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = if status.is_server_error() {
            if let Self::Internal(cause) = self {
                tracing::error!(error = %error_chain(cause.as_ref()), "request failed");
            }
            match self {
                Self::Internal(_) => "internal error; see the server log".to_string(),
                other => other.to_string(),
            }
        } else {
            truncate(self.to_string())
        };
        let mut response = HttpResponse::build(status);
        match self {
            Self::Unauthorized => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::Overloaded
            | Self::NotReady
            | Self::TooManyJobs(_)
            | Self::StoreUnavailable(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}

/// The longest message a client gets, in characters: messages quote what was sent (an unknown
/// DET, a label name), and an error should not echo a megabyte back.
const MAX_MESSAGE_CHARS: usize = 500;

fn truncate(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message,
    }
}

impl From<TaskError> for ApiError {
    fn from(error: TaskError) -> Self {
        Self::InvalidTask(error.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::QueueFull => Self::Overloaded,
            BatchError::ShuttingDown => Self::ShuttingDown,
            other => Self::Internal(other.into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let Some(reason) = error.unavailable() {
            // The client learns the reason; the log gets the cause too.
            let cause = error_chain(&error);
            tracing::warn!(error = %cause, "refused: the task store is unavailable");
            return Self::StoreUnavailable(reason.to_string());
        }
        match error {
            StoreError::EtagMismatch { .. } => Self::EtagMismatch(error.to_string()),
            StoreError::NotFound(name) => Self::TaskNotFound(name),
            StoreError::Full { .. } => Self::TooManyTasks(error.to_string()),
            // The log gets the whole chain (SQLSTATE and message); the client a generic line.
            other => Self::Internal(other.into()),
        }
    }
}

/// Runs blocking work (ORT, SQLite) on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    fn body(error: &ApiError) -> serde_json::Value {
        let bytes = error.error_response().into_body().try_into_bytes();
        serde_json::from_slice(&bytes.expect("a body in memory")).expect("a JSON body")
    }

    #[test]
    fn client_errors_explain_and_server_errors_stay_generic() {
        let missing = ApiError::TaskNotFound("sst2".into());
        assert_eq!(missing.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(body(&missing)["error"]["code"], "task_not_found");
        assert!(
            body(&missing)["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("sst2")
        );
        let internal =
            ApiError::Internal(std::io::Error::other("disk /secret/path is full").into());
        assert_eq!(internal.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body(&internal)["error"]["code"], "internal");
        let message = body(&internal)["error"]["message"].to_string();
        assert_eq!(message, r#""internal error; see the server log""#);
        let echo = ApiError::InvalidRequest(format!("unknown DET {:?}", "é".repeat(100_000)));
        let message = body(&echo)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            message.chars().count(),
            MAX_MESSAGE_CHARS + 1,
            "cut, with an ellipsis"
        );
    }
}
