//! Model registry handlers (`/v1/models`), roles `owner` and `deployer`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::functions::read_parts;
use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::tenants::{Principal, Role};

const DEPLOYERS: &[Role] = &[Role::Owner, Role::Deployer];

/// `POST /v1/models`: multipart `manifest` + `model` (ONNX) -> 201 `{"name","version","digest",...}`.
pub async fn push_model(
    State(app): State<Arc<App>>,
    principal: Principal,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?.to_string();
    let (manifest, model) = read_parts(multipart, "model", "the .onnx bytes").await?;
    // `/v2/models/{name}` serves models and tensor functions: one name, one of them.
    if let Ok(parsed) = crate::registry::models::ModelManifest::parse(&manifest)
        && let Ok(function) = app.registry.resolve(&tenant, &parsed.name, None).await
        && function.prepared.is_predictor()
    {
        return Err(ApiError::Conflict(format!(
            "a tensor function named `{}` exists: a model needs a name of its own, as both are served at /v2/models/{{name}}",
            parsed.name
        )));
    }
    let plan_name = app.tenants.plan_of(&tenant).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no plan"))?;
    let plan = app.config.plans.get(&plan_name).ok_or_else(|| anyhow::anyhow!("unknown plan {plan_name}"))?;
    let version = app.registry.models.push(&tenant, &manifest, Bytes::from(model), &plan_name, plan).await?;
    tracing::info!(tenant, model = %version.name, version = version.version, digest = %version.digest, "model pushed");
    let target = AuditTarget(format!("{}@{} {}", version.name, version.version, version.digest));
    let mut response = (StatusCode::CREATED, Json(version)).into_response();
    response.extensions_mut().insert(target);
    Ok(response)
}

/// `GET /v1/models`: the tenant's models, newest version of each.
pub async fn list_models(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let versions = app.registry.models.versions(tenant, None).await?;
    let mut models: Vec<serde_json::Value> = Vec::new();
    for v in &versions {
        let count = versions.iter().filter(|o| o.name == v.name).count();
        if versions.iter().filter(|o| o.name == v.name).all(|o| o.version <= v.version) {
            models.push(json!({
                "name": v.name, "latest_version": v.version, "versions": count, "digest": v.digest,
                "size": v.size, "engine": v.engine, "device": v.device, "updated_at": v.created_at,
            }));
        }
    }
    Ok(Json(json!({ "models": models })).into_response())
}

/// `GET /v1/models/{name}`: inputs, outputs, dtypes, shapes, size and digest of every version.
pub async fn get_model(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let versions = app.registry.models.versions(tenant, Some(&name)).await?;
    let latest = versions.last().ok_or_else(|| ApiError::NotFound(format!("no model named `{name}`")))?;
    Ok(Json(json!({
        "name": name,
        "latest_version": latest.version,
        "inputs": latest.inputs,
        "outputs": latest.outputs,
        "size": latest.size,
        "digest": latest.digest,
        "versions": versions,
    }))
    .into_response())
}

/// `DELETE /v1/models/{name}`: every version.
pub async fn delete_model(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let deleted = app.registry.models.delete(tenant, &name).await?;
    app.graphs.monitors.forget(tenant, &name);
    app.releases.forget(crate::releases::Subject::Model, tenant, &name).await?;
    Ok(Json(json!({ "name": name, "deleted_versions": deleted })).into_response())
}

#[derive(serde::Deserialize)]
pub struct MonitorQuery {
    version: Option<u32>,
}

/// The version a monitor request names, or the one serving the bare name now; 404 for a
/// model or version that does not exist.
async fn monitored_version(app: &App, tenant: &str, name: &str, version: Option<u32>) -> Result<u32, ApiError> {
    let versions = app.registry.models.versions(tenant, Some(name)).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("no model named `{name}`")));
    }
    match version {
        Some(v) if versions.iter().any(|m| m.version == v) => Ok(v),
        Some(v) => Err(ApiError::NotFound(format!("model `{name}` has no version {v}"))),
        None => app
            .registry
            .models
            .pinned(tenant, name, &crate::runtime::nn::ModelPin::Current)
            .await
            .map(|m| m.version)
            .ok_or_else(|| ApiError::NotFound(format!("no version of model `{name}` serves now"))),
    }
}

fn monitor_report(app: &App, tenant: &str, name: &str, version: u32) -> serde_json::Value {
    let mut report = app.graphs.monitors.report(tenant, name, version).unwrap_or_else(|| {
        json!({"drift_score": null, "samples": 0, "reference_samples": null, "baseline_at": null,
               "min_samples": crate::nn::monitor::MIN_SAMPLES, "inputs": [], "outputs": []})
    });
    report["name"] = json!(name);
    report["version"] = json!(version);
    report
}

/// `GET /v1/models/{name}/monitor[?version=N]`: the monitor's report (`drift_score` at the top;
/// null until a baseline is set and both windows hold enough calls).
pub async fn monitor(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<MonitorQuery>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let version = monitored_version(&app, tenant, &name, query.version).await?;
    Ok(Json(monitor_report(&app, tenant, &name, version)).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BaselineBody {
    version: Option<u32>,
}

/// `POST /v1/models/{name}/monitor/baseline` `{"version"?}`: the calls seen so far become the
/// reference window (409 before the version's first call).
pub async fn baseline(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    body: Option<Json<BaselineBody>>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let version = monitored_version(&app, tenant, &name, body.and_then(|b| b.0.version)).await?;
    if !app.graphs.monitors.baseline(tenant, &name, version) {
        return Err(ApiError::Conflict(format!(
            "model `{name}` version {version} has had no call since the server started: there is nothing to take as the baseline yet"
        )));
    }
    let mut response = Json(monitor_report(&app, tenant, &name, version)).into_response();
    response.extensions_mut().insert(AuditTarget(format!("{name}@{version}")));
    Ok(response)
}
