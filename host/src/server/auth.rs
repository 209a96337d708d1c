//! `Authorization: Bearer <key>` to a [`Principal`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::App;
use crate::error::ApiError;
use crate::tenants::Principal;

pub fn principal_from_headers(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing API key: send `Authorization: Bearer <key>`".into()))?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header: expected `Bearer <key>`".into()))?;
    app.tenants.authenticate(key).ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
}

impl FromRequestParts<Arc<App>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        principal_from_headers(app, &parts.headers)
    }
}
