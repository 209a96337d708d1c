//! API keys (`/v1/keys`): a tenant's `owner` manages the tenant's keys; the admin key manages
//! platform keys (role `metrics`, for a scraper of `GET /metrics`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::tenants::{Principal, Role, parse_time};

const OWNERS: &[Role] = &[Role::Owner];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    role: String,
    #[serde(default)]
    name: Option<String>,
    /// RFC 3339, in the future.
    #[serde(default)]
    expires_at: Option<String>,
}

/// Whose keys the caller manages: the admin the platform's (`None`), an owner the tenant's.
fn scope(principal: &Principal) -> Result<Option<&str>, ApiError> {
    if principal.role == Role::Admin {
        return Ok(None);
    }
    Ok(Some(principal.tenant_with(OWNERS)?))
}

/// `POST /v1/keys` `{"role","name"?,"expires_at"?}` -> 201 `{"id","api_key","role",...}`; the
/// secret is shown this once.
pub async fn create_key(
    State(app): State<Arc<App>>,
    principal: Principal,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let tenant = scope(&principal)?;
    // Any Content-Type: `curl -d '{...}'` sends form encoding by default.
    let body: CreateKey = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("invalid request body: {e} (expected {{\"role\", \"name\"?, \"expires_at\"?}})"))
    })?;
    let role = match (tenant, Role::parse(&body.role)) {
        (None, Some(Role::Metrics)) => Role::Metrics,
        (None, _) => {
            return Err(ApiError::BadRequest(format!(
                "role `{}` is not a platform key role: the admin key makes `metrics` keys (tenant keys are made with a tenant's owner key)",
                body.role
            )));
        }
        (Some(_), Some(Role::Admin | Role::Metrics) | None) => {
            return Err(ApiError::BadRequest(format!(
                "role `{}` is not a tenant role: use owner, deployer, invoker or billing (metrics keys are the admin's to make)",
                body.role
            )));
        }
        (Some(_), Some(role)) => role,
    };
    if let Some(name) = &body.name
        && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest("`name` must be 1 to 128 printable characters".into()));
    }
    let expires_at = match &body.expires_at {
        None => None,
        Some(text) => {
            let at = parse_time(text).ok_or_else(|| {
                ApiError::BadRequest(format!("`expires_at` `{text}` is not an RFC 3339 time (2026-12-31T00:00:00Z)"))
            })?;
            if at <= crate::clock::unix_now() {
                return Err(ApiError::BadRequest(format!("`expires_at` `{text}` is in the past")));
            }
            Some(at)
        }
    };
    let (key, info) = app.tenants.create_key(tenant, role, body.name, expires_at).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "id": info.id, "api_key": key.api_key, "role": info.role, "name": info.name,
            "prefix": info.prefix, "created_at": info.created_at, "expires_at": info.expires_at,
        })),
    )
        .into_response();
    response.extensions_mut().insert(AuditTarget(format!("{} ({})", info.id, role.as_str())));
    Ok(response)
}

/// `GET /v1/keys`: the tenant's (for the admin, the platform's) live keys, without secrets.
pub async fn list_keys(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = scope(&principal)?;
    Ok(Json(json!({ "keys": app.tenants.list_keys(tenant).await? })).into_response())
}

/// `DELETE /v1/keys/{id}` -> 204; the key gets 401 from now on.
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = scope(&principal)?;
    let info = app.tenants.revoke_key(tenant, &id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.extensions_mut().insert(AuditTarget(format!("{} ({})", info.id, info.role.as_str())));
    Ok(response)
}
