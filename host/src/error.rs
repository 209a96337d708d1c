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
    /// Over the tenant's storage quota (or out of disk): 507.
    #[error("{0}")]
    InsufficientStorage(String),
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
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
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
        match &self {
            ApiError::TooManyRequests { retry_after_secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            // No capacity now (instance slots, GPU memory): worth retrying shortly.
            ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorMessage(message));
        response
    }
}

/// The JSON body of an error.
pub fn error_body(message: &str, request_id: &str) -> String {
    serde_json::json!({ "error": message, "request_id": request_id }).to_string()
}

impl From<crate::runtime::InvokeError> for ApiError {
    fn from(e: crate::runtime::InvokeError) -> Self {
        use crate::runtime::{GuestError, InvokeError};
        match e {
            InvokeError::Guest(GuestError::BadRequest(m)) => ApiError::BadRequest(m),
            InvokeError::Guest(GuestError::NotFound(m)) => ApiError::NotFound(m),
            InvokeError::Guest(GuestError::Internal(m)) => ApiError::Function(m),
            e @ InvokeError::Timeout(_) => ApiError::GatewayTimeout(e.to_string()),
            e @ InvokeError::Busy(_) => ApiError::Unavailable(e.to_string()),
            e @ InvokeError::WrongWorld(_) => ApiError::BadRequest(e.to_string()),
            e => ApiError::Function(e.to_string()),
        }
    }
}

/// A model's error: the caller's mistakes are 400s, an engine without room now is a 503.
impl From<crate::nn::NnError> for ApiError {
    fn from(e: crate::nn::NnError) -> Self {
        use crate::nn::{ErrorCode, NnRefusal};
        if let Some(NnRefusal::Busy { .. }) = e.refusal {
            return ApiError::Unavailable(e.message);
        }
        match e.code {
            ErrorCode::InvalidArgument | ErrorCode::InvalidEncoding | ErrorCode::UnsupportedOperation => {
                ApiError::BadRequest(e.message)
            }
            ErrorCode::NotFound => ApiError::NotFound(e.message),
            ErrorCode::TooLarge => ApiError::PayloadTooLarge(e.message),
            ErrorCode::Timeout => ApiError::GatewayTimeout(e.message),
            ErrorCode::Security => ApiError::Forbidden(e.message),
            _ => ApiError::Internal(anyhow::anyhow!(e.message)),
        }
    }
}

impl From<crate::invocation::Failure> for ApiError {
    fn from(f: crate::invocation::Failure) -> Self {
        use crate::invocation::Failure;
        match f {
            Failure::Invoke(e) => e.into(),
            Failure::Nn(e) => e.into(),
            Failure::InvalidOutput(m) => ApiError::Function(m),
        }
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError;
        match e {
            RegistryError::Invalid(m) => ApiError::BadRequest(m),
            e @ (RegistryError::NotFound { .. } | RegistryError::NoVersion { .. }) => ApiError::NotFound(e.to_string()),
            RegistryError::Conflict(m) => ApiError::Conflict(m),
            RegistryError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            RegistryError::Quota(m) => ApiError::InsufficientStorage(m),
            RegistryError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<crate::tenants::TenantError> for ApiError {
    fn from(e: crate::tenants::TenantError) -> Self {
        use crate::tenants::TenantError;
        match e {
            TenantError::Forbidden(m) => ApiError::Forbidden(m),
            e @ TenantError::NoKey { .. } => ApiError::NotFound(e.to_string()),
            e @ TenantError::Exists { .. } => ApiError::Conflict(e.to_string()),
            TenantError::Internal(e) => ApiError::Internal(e),
        }
    }
}
