//! Functions (`/v1/functions`): upload (multipart manifest + component), list, get, delete,
//! logs.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{App, AuditTarget};
use crate::error::ApiError;
use crate::metrics::UploadLabels;
use crate::registry::RegistryError;
use crate::releases::{Actor, Event, Subject};
use crate::tenants::{Principal, Role};

const DEPLOYERS: &[Role] = &[Role::Owner, Role::Deployer];

/// How a new version is released (`deploy --release`, `deploy --canary P [...]`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// The new version becomes the stable version.
    #[serde(default)]
    release: bool,
    /// The new version starts as a canary taking this percentage.
    #[serde(default)]
    canary: Option<u32>,
    #[serde(default)]
    step: Option<u32>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    max_error_rate: Option<f64>,
    #[serde(default)]
    max_p99_ms: Option<f64>,
    #[serde(default)]
    min_requests: Option<u64>,
    /// Release it (or start the canary) although its smoke tests fail.
    #[serde(default)]
    force: bool,
}

impl DeployQuery {
    /// The canary asked for, checked, for `version`.
    fn canary(&self, version: u32) -> Result<Option<crate::releases::CanarySpec>, ApiError> {
        let Some(percent) = self.canary else { return Ok(None) };
        let body = super::releases::CanaryBody {
            version,
            percent,
            step: self.step,
            interval: self.interval.clone(),
            max_error_rate: self.max_error_rate,
            max_p99_ms: self.max_p99_ms,
            min_requests: self.min_requests,
            force: self.force,
        };
        body.spec().map(Some)
    }
}

/// `POST /v1/functions[?release=true|?canary=P&step=S&...]`: multipart `manifest` +
/// `component` -> 201 `{"name","version","digest","imports","size","serving"}`.
pub async fn upload_function(
    State(app): State<Arc<App>>,
    principal: Principal,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let query = match query {
        Ok(Query(query)) if !(query.release && query.canary.is_some()) => query,
        refused => {
            if let Ok(mut multipart) = multipart {
                while let Ok(Some(field)) = multipart.next_field().await {
                    let _ = field.bytes().await;
                }
            }
            return Err(match refused {
                Err(e) => ApiError::BadRequest(e.body_text()),
                Ok(_) => ApiError::BadRequest(
                    "a deploy is either released (release=true) or a canary (canary=P), not both".into(),
                ),
            });
        }
    };
    let tenant = match principal.tenant_with(DEPLOYERS) {
        Ok(tenant) => tenant.to_string(),
        Err(e) => {
            // Read (and drop) the upload before refusing it: clients still sending the body
            // would otherwise see a reset connection instead of the 403.
            if let Ok(mut multipart) = multipart {
                while let Ok(Some(field)) = multipart.next_field().await {
                    let _ = field.bytes().await;
                }
            }
            return Err(e.into());
        }
    };
    let result = upload(&app, &tenant, &principal, &query, multipart).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.status().is_client_error() => "rejected",
        Err(_) => "error",
    };
    app.metrics.uploads.get_or_create(&UploadLabels { outcome: outcome.into() }).inc();
    result
}

async fn upload(
    app: &App,
    tenant: &str,
    principal: &Principal,
    query: &DeployQuery,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let role = principal.role;
    // A bad canary is refused before anything is stored.
    query.canary(1)?;
    let (manifest, component) = read_parts(multipart, "component", "the .wasm bytes").await?;
    // Secrets are the owner's: a deployer could otherwise grant one to a function that returns it.
    if role != Role::Owner
        && let Ok(parsed) = crate::registry::Manifest::parse(&manifest)
        && !parsed.capabilities.secrets.is_empty()
    {
        return Err(ApiError::Forbidden(
            "only an owner key may deploy a function granted secrets (capabilities.secrets)".into(),
        ));
    }
    let component = Bytes::from(component);
    let tenant_row = app
        .tenants
        .get(tenant)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the key's tenant no longer exists".into()))?;
    let name = crate::registry::Manifest::parse(&manifest).map(|m| m.name).map_err(ApiError::BadRequest)?;
    let actor = Actor::Key(&principal.key_id);
    // A release or canary deploy keeps the version serving now: without a release the newest
    // version serves, so it is pinned as the stable version before the upload, and the new
    // one never takes every call, not even for a moment (nor when its smoke tests fail).
    let release = app.releases.get(Subject::Function, tenant, &name);
    if query.release
        && let Some(canary) = release.canary.as_ref().filter(|c| c.state == crate::releases::CanaryState::Progressing)
    {
        return Err(ApiError::Conflict(format!(
            "version {} is a canary at {}%: promote it or roll it back before releasing another version",
            canary.spec.version, canary.current
        )));
    }
    let mut pinned = None;
    if (query.release || query.canary.is_some()) && release.stable.is_none() {
        let serving = match app.registry.resolve(tenant, &name, None).await {
            Ok(deployment) => Some(deployment.version),
            Err(RegistryError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        match serving {
            None if query.canary.is_some() => {
                return Err(ApiError::Conflict(format!(
                    "`{name}` has no version yet: there is no stable version for a canary to run beside (deploy it first)"
                )));
            }
            None => {}
            Some(serving) => {
                let why = "before a release deploy";
                if super::releases::pin_serving(app, Subject::Function, tenant, &name, actor, serving, why).await? {
                    pinned = Some(serving);
                }
            }
        }
    }
    let started = Instant::now();
    let version = match app.registry.upload(tenant, &tenant_row.plan, &manifest, component).await {
        Ok(version) => version,
        Err(e) => {
            if let Some(serving) = pinned {
                // Nothing was deployed: the newest version serves again, as before (unless
                // someone released a version meanwhile).
                let _ = app
                    .releases
                    .change(Subject::Function, tenant, &name, actor, |release| {
                        if release.stable != Some(serving) || release.canary.is_some() {
                            return Err(RegistryError::Conflict("changed meanwhile".into()));
                        }
                        let from = release.stable.take();
                        Ok(Event { event: "set", from, to: None, reason: "the release deploy was refused".into() })
                    })
                    .await;
            }
            return Err(e.into());
        }
    };
    app.metrics.compile_duration.observe(started.elapsed().as_secs_f64());
    // A version whose smoke tests failed is stored (its report says why), not released.
    let smoke_failed = version.smoke.as_ref().is_some_and(|s| !s.passed);
    if (query.release || query.canary.is_some()) && smoke_failed && !query.force {
        let failures: Vec<String> = version
            .smoke
            .iter()
            .flat_map(|s| &s.results)
            .filter_map(|r| r.failure.as_ref().map(|f| format!("{} {}: {f}", r.method, r.path)))
            .collect();
        return Err(ApiError::Conflict(format!(
            "{}@{} is stored but not released: its smoke tests failed ({}); release it anyway with force",
            version.name,
            version.version,
            failures.join("; ")
        )));
    }
    if query.release {
        app.releases
            .change(Subject::Function, tenant, &name, actor, |release| {
                if let Some(canary) = release.canary.as_ref().filter(|c| c.state == crate::releases::CanaryState::Progressing) {
                    return Err(RegistryError::Conflict(format!(
                        "{}@{} is stored but not released: version {} is a canary at {}% (promote it or roll it back first)",
                        version.name, version.version, canary.spec.version, canary.current
                    )));
                }
                let from = release.stable;
                release.previous = from;
                release.stable = Some(version.version);
                Ok(Event { event: "set", from, to: Some(version.version), reason: "released at deploy".into() })
            })
            .await?;
        audit_release(app, principal, tenant, "release.set", &version).await;
    }
    if let Some(spec) = query.canary(version.version)? {
        app.releases
            .change(Subject::Function, tenant, &name, actor, |release| super::releases::start_canary(release, spec))
            .await?;
        audit_release(app, principal, tenant, "release.canary", &version).await;
    }
    let release = app.releases.get(Subject::Function, tenant, &name);
    let serving = release.stable.is_none_or(|v| v == version.version);
    let release = match release.stable {
        Some(_) => Some(app.releases.status(Subject::Function, tenant, &name).await?),
        None => None,
    };
    tracing::info!(tenant, function = %version.name, version = version.version, digest = %version.digest, "function deployed");
    let target = AuditTarget(format!("{}@{} {}", version.name, version.version, version.digest));
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "name": version.name,
            "version": version.version,
            "digest": version.digest,
            "imports": version.imports,
            "size": version.size,
            "serving": serving,
            "release": release,
            "smoke": version.smoke,
        })),
    )
        .into_response();
    response.extensions_mut().insert(target);
    Ok(response)
}

/// A release made by a deploy is audited as such, beside the deploy's own entry.
async fn audit_release(
    app: &App,
    principal: &Principal,
    tenant: &str,
    action: &str,
    version: &crate::registry::FunctionVersion,
) {
    let target = format!("{}@{}: at deploy", version.name, version.version);
    app.audit.record(crate::audit::entry(&principal.key_id, Some(tenant), action, Some(&target), "ok")).await;
}

/// Reads a multipart body of exactly two parts: `manifest` (text) and `payload` (bytes).
pub async fn read_parts(
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
    payload: &str,
    what: &str,
) -> Result<(String, Vec<u8>), ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a multipart/form-data body with parts `manifest` and `{payload}`: {}",
            e.body_text()
        ))
    })?;
    let (mut manifest, mut bytes) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        let name = field.name().unwrap_or_default().to_string();
        let data = field.bytes().await.map_err(multipart_error)?;
        if name == "manifest" {
            manifest = Some(
                String::from_utf8(data.to_vec())
                    .map_err(|_| ApiError::BadRequest("part `manifest` is not UTF-8 text".into()))?,
            );
        } else if name == payload {
            bytes = Some(data.to_vec());
        } else {
            return Err(ApiError::BadRequest(format!(
                "unexpected part `{name}`: send exactly `manifest` (TOML) and `{payload}` ({what})"
            )));
        }
    }
    let manifest =
        manifest.ok_or_else(|| ApiError::BadRequest("missing part `manifest` (the TOML manifest)".into()))?;
    let bytes = bytes.ok_or_else(|| ApiError::BadRequest(format!("missing part `{payload}` ({what})")))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(format!("part `{payload}` is empty")));
    }
    Ok((manifest, bytes))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("upload too large: {}", e.body_text()))
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// `GET /v1/functions`: the caller's tenant's functions.
pub async fn list_functions(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    Ok(Json(json!({ "functions": app.registry.list(tenant).await? })).into_response())
}

/// `GET /v1/functions/{name}`: every version with its manifest and imports.
pub async fn get_function(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let versions = app.registry.versions(tenant, &name).await?;
    let latest = versions.last().map(|v| v.version).unwrap_or_default();
    Ok(Json(json!({ "name": name, "latest_version": latest, "versions": versions })).into_response())
}

/// `DELETE /v1/functions/{name}`: removes every version.
pub async fn delete_function(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    let deleted = app.registry.delete(tenant, &name).await?;
    app.releases.forget(Subject::Function, tenant, &name).await?;
    tracing::info!(tenant, function = %name, deleted, "function deleted");
    Ok(Json(json!({ "name": name, "deleted_versions": deleted })).into_response())
}

#[derive(Deserialize)]
pub struct LogsQuery {
    limit: Option<usize>,
}

/// `GET /v1/functions/{name}/logs?limit=N`: the newest log lines.
pub async fn function_logs(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant_with(DEPLOYERS)?;
    app.registry.versions(tenant, &name).await?;
    let lines = app.registry.logs.tail(tenant, &name, q.limit.unwrap_or(100));
    Ok(Json(json!({ "name": name, "lines": lines })).into_response())
}
