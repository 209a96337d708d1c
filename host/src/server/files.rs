//! Tenant files (`/v1/files`, roles `owner` and `deployer`): read-only data that functions are
//! granted by name (`capabilities.files`) and read under `/files/`.

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

const DEPLOYERS: &[Role] = &[Role::Owner, Role::Deployer];

/// `PUT /v1/files/{name}` (body: the bytes) -> 201 `{"name","size","digest","updated_at"}`;
/// replaces the file if it exists. Functions granted it see the new content from their next call.
pub async fn put_file(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!("file name `{name}` must match ^[a-z0-9][a-z0-9._-]{{0,127}}$")));
    }
    let plan_name = app.tenants.plan_of(tenant).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no plan"))?;
    let plan = app.config.plans.get(&plan_name).ok_or_else(|| anyhow::anyhow!("unknown plan {plan_name}"))?;
    let info = app.registry.files.put(tenant, &name, body, &plan_name, plan).await?;
    app.registry.forget_file(tenant, &name);
    let mut response = (StatusCode::CREATED, Json(&info)).into_response();
    response.extensions_mut().insert(AuditTarget(format!("{name} {}", info.digest)));
    Ok(response)
}

/// `GET /v1/files`: the tenant's files.
pub async fn list_files(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    Ok(Json(json!({ "files": app.registry.files.list(tenant).await? })).into_response())
}

/// `DELETE /v1/files/{name}` -> 204.
pub async fn delete_file(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    app.registry.files.delete(tenant, &name).await?;
    app.registry.forget_file(tenant, &name);
    Ok(StatusCode::NO_CONTENT.into_response())
}
