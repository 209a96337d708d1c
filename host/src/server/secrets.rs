//! Tenant secrets (`/v1/secrets`, role `owner`): values functions are granted by name
//! (`capabilities.secrets`) and read like config values, never returned by any API.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::tenants::{Principal, Role, valid_name};

const OWNERS: &[Role] = &[Role::Owner];

/// `PUT /v1/secrets/{name}` (body: the value, UTF-8) -> 201 `{"name","updated_at"}`; the value
/// is sealed at once and never returned.
pub async fn put_secret(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(OWNERS)?;
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!("secret name `{name}` must match ^[a-z0-9][a-z0-9._-]{{0,127}}$")));
    }
    let info = app.registry.secrets.put(tenant, &name, &body).await?;
    app.registry.forget_secret(tenant, &name);
    let mut response = (StatusCode::CREATED, Json(&info)).into_response();
    response.extensions_mut().insert(AuditTarget(name));
    Ok(response)
}

/// `GET /v1/secrets`: the names of the tenant's secrets (never their values).
pub async fn list_secrets(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(OWNERS)?;
    Ok(Json(json!({ "secrets": app.registry.secrets.list(tenant).await? })).into_response())
}

/// `DELETE /v1/secrets/{name}` -> 204.
pub async fn delete_secret(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(OWNERS)?;
    app.registry.secrets.delete(tenant, &name).await?;
    app.registry.forget_secret(tenant, &name);
    Ok(StatusCode::NO_CONTENT.into_response())
}
