//! The Open Inference Protocol (KServe v2) under `/v2`, with Triton's extensions that clients
//! use: binary tensors, the model repository index, model configuration and statistics.
//!
//! Every model a tenant pushed is served at `/v2/models/{name}[/versions/{n}]` to that tenant's
//! keys (roles owner, deployer, invoker); another tenant's models do not exist for it. Health
//! and server metadata answer without a key, as load balancers and clients probe them. Each
//! inference is admitted, metered and billed like a function call, under the model's name.

mod infer;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use self::infer::infer;
use super::App;
use crate::error::ApiError;
use crate::nn::TensorInfo;
use crate::oip;
use crate::registry::models::ModelVersion;
use crate::registry::{Deployment, RegistryError};
use crate::releases::{Route, Subject};
use crate::tenants::{Principal, Role};

/// Who may use `/v2`: everyone who may invoke.
const INFERENCE: &[Role] = &[Role::Owner, Role::Deployer, Role::Invoker];
/// Triton's header giving the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "infercell",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }))
}

/// `GET /v2/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`.
pub async fn ready() -> Json<Value> {
    Json(json!({ "ready": true }))
}

/// What `/v2/models/{name}` names for a tenant: a tensor function (predictor world) of that
/// name, else a model. Either way one version of it, and every live version's number.
enum Served {
    Model { version: ModelVersion, versions: Vec<u32> },
    Predictor { deployment: Arc<Deployment>, versions: Vec<u32> },
}

impl Served {
    fn version(&self) -> u32 {
        match self {
            Served::Model { version, .. } => version.version,
            Served::Predictor { deployment, .. } => deployment.version,
        }
    }

    fn versions(&self) -> &[u32] {
        match self {
            Served::Model { versions, .. } | Served::Predictor { versions, .. } => versions,
        }
    }

    fn inputs(&self) -> &[TensorInfo] {
        match self {
            Served::Model { version, .. } => &version.inputs,
            Served::Predictor { deployment, .. } => &deployment.inputs,
        }
    }

    fn outputs(&self) -> &[TensorInfo] {
        match self {
            Served::Model { version, .. } => &version.outputs,
            Served::Predictor { deployment, .. } => &deployment.outputs,
        }
    }

    /// Triton's platform name: the engine a model runs on, or a WebAssembly function.
    fn platform(&self, app: &App, tenant: &str) -> &'static str {
        match self {
            Served::Predictor { .. } => "infercell_wasm",
            Served::Model { version, .. } => {
                let selector = crate::registry::models::selector(&version.engine, &version.device);
                match app.graphs.select(&selector, plan_allows_gpu(app, tenant)).map(|e| e.name()) {
                    Ok("onnxruntime") => "onnxruntime_onnx",
                    Ok("wgpu") => "infercell_wgpu_onnx",
                    _ => "tract_onnx",
                }
            }
        }
    }
}

/// The caller's tenant (roles that may infer).
fn tenant_of(principal: &Principal) -> Result<&str, ApiError> {
    Ok(principal.tenant_with(INFERENCE)?)
}

/// `name` (at `version`, else its newest) of `tenant`: its model, else its tensor function;
/// 404 otherwise (another tenant's never exist). A model and a tensor function cannot share a
/// name (pushing or deploying the second is a 409), so the order only matters for speed: models
/// resolve from memory.
async fn resolve(app: &App, tenant: &str, name: &str, version: Option<&str>) -> Result<Served, ApiError> {
    Ok(resolve_with(app, tenant, name, version, None).await?.0)
}

/// What a `/v2` version segment pins: a number, an alias (it starts with a letter), or
/// nothing (the release's route).
enum Pin<'a> {
    Release,
    Number(u32),
    Alias(&'a str),
}

/// The version to serve of `subject` `name` (`None`: the newest), and the release's route
/// when it routed the call (such calls count toward its canary's health and may be mirrored).
/// `call` is a call's route key; `None` for metadata.
fn pick(
    app: &App,
    subject: Subject,
    tenant: &str,
    name: &str,
    pin: &Pin<'_>,
    call: Option<Option<&[u8]>>,
) -> Result<(Option<u32>, Option<Route>), ApiError> {
    Ok(match pin {
        Pin::Number(n) => (Some(*n), None),
        Pin::Alias(alias) => (Some(app.releases.alias(subject, tenant, name, alias)?), None),
        // Metadata shows the stable version; only calls are split to a canary.
        Pin::Release if call.is_none() => (app.releases.get(subject, tenant, name).stable, None),
        Pin::Release => match app.releases.route(subject, tenant, name, call.flatten()) {
            Some(route) => (Some(route.version), Some(route)),
            None => (None, None),
        },
    })
}

/// [`resolve`] for metadata (`call` None: with every version's number, the stable version
/// when none is named), or for a call with its `infercell-route-key` (`Some(key)`: the
/// release's route, without the version list, a database read inference does not need). Also
/// gives the release's route when it routed the call.
async fn resolve_with(
    app: &App,
    tenant: &str,
    name: &str,
    version: Option<&str>,
    call: Option<Option<&[u8]>>,
) -> Result<(Served, Option<Route>), ApiError> {
    let with_versions = call.is_none();
    let pin = match version {
        None => Pin::Release,
        Some(v) if v.starts_with(|c: char| c.is_ascii_alphabetic()) => Pin::Alias(v),
        Some(v) => Pin::Number(v.parse().map_err(|_| {
            ApiError::NotFound(format!(
                "`{name}` has no version `{v}` (versions are 1, 2, ...; aliases start with a letter)"
            ))
        })?),
    };
    let all = app.registry.models.named(tenant, name).await?;
    if !all.is_empty() {
        let versions: Vec<u32> = all.iter().map(|v| v.version).collect();
        let (number, routed) = pick(app, Subject::Model, tenant, name, &pin, call)?;
        let chosen = match number {
            None => all.last().cloned(),
            Some(n) => all.iter().find(|m| m.version == n).cloned(),
        };
        return match chosen {
            Some(version) => Ok((Served::Model { version, versions }, routed)),
            None => Err(ApiError::NotFound(format!(
                "model `{name}` has no version `{}` (versions: {versions:?})",
                number.map_or_else(|| version.unwrap_or_default().to_string(), |n| n.to_string())
            ))),
        };
    }
    let (number, routed) = pick(app, Subject::Function, tenant, name, &pin, call)?;
    match app.registry.resolve(tenant, name, number).await {
        Ok(deployment) if deployment.prepared.is_predictor() => {
            let versions = match with_versions {
                true => app.registry.versions(tenant, name).await?.iter().map(|v| v.version).collect(),
                false => Vec::new(),
            };
            Ok((Served::Predictor { deployment, versions }, routed))
        }
        // A tensor function without that version: say so.
        Err(e @ RegistryError::NoVersion { .. }) => Err(e.into()),
        // An HTTP function is not served here, and a name that is neither does not exist.
        Ok(_) | Err(RegistryError::NotFound { .. }) => Err(ApiError::NotFound(format!("no model named `{name}`"))),
        Err(e) => Err(e.into()),
    }
}

fn params(p: &HashMap<String, String>) -> (&str, Option<&str>) {
    (p.get("model").map(String::as_str).unwrap_or_default(), p.get("version").map(String::as_str))
}

fn tensor_metadata(infos: &[TensorInfo]) -> Vec<Value> {
    infos.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
}

/// `GET /v2/models/{m}[/versions/{v}]`: inputs and outputs (-1 for a dynamic dimension).
pub async fn model_metadata(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    let tenant = tenant_of(&principal)?;
    let served = resolve(&app, tenant, name, version).await?;
    Ok(Json(json!({
        "name": name,
        "versions": served.versions().iter().map(u32::to_string).collect::<Vec<_>>(),
        "platform": served.platform(&app, tenant),
        "inputs": tensor_metadata(served.inputs()),
        "outputs": tensor_metadata(served.outputs()),
    }))
    .into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/ready`: 200 when it can serve (its graph loads).
pub async fn model_ready(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    // A model is ready once its graph loads; a function once it is deployed (it is compiled).
    let tenant = tenant_of(&principal)?;
    if let Served::Model { version, .. } = resolve(&app, tenant, name, version).await?
        && let Err(e) = app.registry.models.load(tenant, &version, plan_allows_gpu(&app, tenant)).await
    {
        return Err(ApiError::Unavailable(format!("model `{name}` cannot be loaded: {}", e.message)));
    }
    Ok(Json(json!({ "name": name, "ready": true })).into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/config`: Triton's model configuration.
pub async fn model_config(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    let tenant = tenant_of(&principal)?;
    let served = resolve(&app, tenant, name, version).await?;
    let config = |infos: &[TensorInfo]| -> Vec<Value> {
        infos
            .iter()
            .map(|t| json!({ "name": t.name, "data_type": oip::config_type(&t.datatype), "dims": t.shape }))
            .collect()
    };
    let platform = served.platform(&app, tenant);
    let (digest, device) = match &served {
        Served::Model { version, .. } => (version.digest.clone(), version.device.clone()),
        Served::Predictor { deployment, .. } => (deployment.digest.clone(), "cpu".to_string()),
    };
    Ok(Json(json!({
        "name": name,
        "platform": platform,
        "backend": platform.trim_end_matches("_onnx").trim_start_matches("infercell_"),
        "max_batch_size": 0,
        "version_policy": { "specific": { "versions": [served.version()] } },
        "input": config(served.inputs()),
        "output": config(served.outputs()),
        "parameters": { "digest": { "string_value": digest }, "device": { "string_value": device } },
    }))
    .into_response())
}

/// `POST /v2/repository/index`: every live version of the tenant's models, and the newest
/// version of each of its tensor functions.
pub async fn repository_index(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = tenant_of(&principal)?;
    let entry = |name: &str, version: u32| json!({ "name": name, "version": version.to_string(), "state": "READY", "reason": "" });
    let mut index: Vec<Value> =
        app.registry.models.versions(tenant, None).await?.iter().map(|v| entry(&v.name, v.version)).collect();
    for function in app.registry.list(tenant).await? {
        if let Ok(deployment) = app.registry.resolve(tenant, &function.name, None).await
            && deployment.prepared.is_predictor()
        {
            index.push(entry(&function.name, deployment.version));
        }
    }
    Ok(Json(Value::Array(index)).into_response())
}

/// `GET /v2/models/stats` and `/v2/models/{m}[/versions/{v}]/stats`: Triton's statistics.
pub async fn model_stats(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&principal)?;
    let versions: Vec<(String, u32)> = match params(&p) {
        ("", _) => {
            let mut all: Vec<(String, u32)> =
                app.registry.models.versions(tenant, None).await?.into_iter().map(|v| (v.name, v.version)).collect();
            all.extend(app.oip_stats.predictors(tenant));
            all
        }
        (name, None) => {
            let served = resolve(&app, tenant, name, None).await?;
            served.versions().iter().map(|v| (name.to_string(), *v)).collect()
        }
        (name, version) => vec![(name.to_string(), resolve(&app, tenant, name, version).await?.version())],
    };
    let stats: Vec<Value> = versions
        .iter()
        .map(|(name, v)| crate::invocation::stats::stats_json(name, *v, &app.oip_stats.get(tenant, name, *v)))
        .collect();
    Ok(Json(json!({ "model_stats": stats })).into_response())
}

pub async fn all_model_stats(state: State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    model_stats(state, principal, Path(HashMap::new())).await
}

/// Whether `tenant`'s plan allows the GPU.
fn plan_allows_gpu(app: &App, tenant: &str) -> bool {
    app.tenants.plan_of(tenant).and_then(|p| app.config.plans.get(&p).map(|p| p.gpu)).unwrap_or(false)
}
