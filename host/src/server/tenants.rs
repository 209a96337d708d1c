//! Tenants (`/v1/tenants`, the admin key).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::tenants::{Principal, valid_name};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    #[serde(default)]
    plan: Option<String>,
}

/// `POST /v1/tenants` (admin): 201 `{"tenant","plan","api_key"}` with the tenant's owner key.
pub async fn create_tenant(
    State(app): State<Arc<App>>,
    principal: Principal,
    body: Result<Json<CreateTenant>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(format!("invalid request body: {}", e.body_text())))?;
    if !valid_name(&body.name) {
        return Err(ApiError::BadRequest(format!(
            "tenant name `{}` must match ^[a-z0-9][a-z0-9._-]{{0,127}}$",
            body.name
        )));
    }
    let plan = body.plan.unwrap_or_else(|| "free".to_string());
    if !app.config.plans.contains_key(&plan) {
        let known: Vec<&str> = app.config.plans.keys().map(String::as_str).collect();
        return Err(ApiError::BadRequest(format!("unknown plan `{plan}` (plans: {})", known.join(", "))));
    }
    let (tenant, key) = app.tenants.create(&body.name, &plan).await?;
    tracing::info!(tenant = %tenant.name, plan = %tenant.plan, "tenant created");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({ "tenant": tenant.name, "plan": tenant.plan, "api_key": key.api_key, "key_id": key.id })),
    )
        .into_response();
    response.extensions_mut().insert(AuditTarget(tenant.name.clone()));
    Ok(response)
}

/// `GET /v1/tenants` (admin).
pub async fn list_tenants(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    principal.require_admin()?;
    Ok(Json(json!({ "tenants": app.tenants.list().await? })).into_response())
}
