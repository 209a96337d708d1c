//! API errors, mapped to HTTP once.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` picks the status code and attaches the
//! message as an [`ErrorMessage`] extension. The request-id middleware in `server` then writes
//! the final body `{"error": "...", "request_id": "..."}`, so every error, including axum's own
//! rejections, has the same shape and carries the id of its request.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every error a client can see.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    PaymentRequired(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// A failure inside the function (guest error, trap, limit): 500 with its message.
    #[error("{0}")]
    Function(String),
    /// A bug or an I/O failure on our side; the details go to the server log, not the client.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The message of an error response, picked up by the request-id middleware.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Function(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %format!("{e:#}"), "internal error");
        }
        let status = self.status();
        let message = self.to_string();
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/json")], error_body(&message, "")).into_response();
        if let ApiError::TooManyRequests { retry_after_secs, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response.extensions_mut().insert(ErrorMessage(message));
        response
    }
}

/// The JSON body of an error.
pub fn error_body(message: &str, request_id: &str) -> String {
    serde_json::json!({ "error": message, "request_id": request_id }).to_string()
}
