//! The audit log (`GET /v1/audit`, owners and the admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::App;
use crate::error::ApiError;
use crate::tenants::{Principal, Role};

const OWNERS: &[Role] = &[Role::Owner];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /v1/audit[?after=SEQ&limit=N]`: owners read their tenant's log; the admin reads every
/// tenant's, or one with `tenant=`. Pages with `after` = the last `seq` seen.
pub async fn audit_log(
    State(app): State<Arc<App>>,
    principal: Principal,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let tenant = if principal.role == Role::Admin {
        query.tenant
    } else {
        if query.tenant.is_some() {
            return Err(ApiError::Forbidden("only the platform admin key may read another tenant's log".into()));
        }
        Some(principal.tenant_with(OWNERS)?.to_string())
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app.audit.list(tenant.as_deref(), query.after.unwrap_or(0), limit).await?;
    let next = (entries.len() as u32 == limit).then(|| entries.last().map(|e| e.seq)).flatten();
    Ok(Json(json!({ "entries": entries, "next_after": next })).into_response())
}
