//! The Open Inference Protocol (KServe v2) under `/v2`, with Triton's extensions that clients
//! use: binary tensors, the model repository index, model configuration and statistics.
//!
//! Every model a tenant pushed is served at `/v2/models/{name}[/versions/{n}]` to that tenant's
//! keys (roles owner, deployer, invoker); another tenant's models do not exist for it. Health
//! and server metadata answer without a key, as load balancers and clients probe them. Each
//! inference is admitted, metered and billed like a function call, under the model's name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::invoke::{admit, commit_usage};
use super::{App, RequestId, USAGE_HEADER};
use crate::error::ApiError;
use crate::metering::{Meters, UsageRecord, now_us};
use crate::nn::{ElemType, ErrorCode, HostTensor, NnError, TensorInfo};
use crate::oip::{self, Tensor};
use crate::registry::Deployment;
use crate::registry::models::ModelVersion;
use crate::runtime::PredictTensor;
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
                match app.registry.models.graphs().select(&selector, plan_allows_gpu(app, tenant)).map(|e| e.name()) {
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
    principal.tenant_with(INFERENCE)
}

/// `name` (at `version`, else its newest) of `tenant`: its model, else its tensor function;
/// 404 otherwise (another tenant's never exist). A model and a tensor function cannot share a
/// name (pushing or deploying the second is a 409), so the order only matters for speed: models
/// resolve from memory.
async fn resolve(app: &App, tenant: &str, name: &str, version: Option<&str>) -> Result<Served, ApiError> {
    resolve_with(app, tenant, name, version, true).await
}

/// [`resolve`]; without `with_versions` a tensor function's version list (a database read) is
/// left empty: inference does not need it.
async fn resolve_with(
    app: &App,
    tenant: &str,
    name: &str,
    version: Option<&str>,
    with_versions: bool,
) -> Result<Served, ApiError> {
    let number: Option<u32> = match version {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::NotFound(format!("`{name}` has no version `{v}` (versions are 1, 2, ...)")))?,
        ),
    };
    let all = app.registry.models.named(tenant, name).await?;
    if !all.is_empty() {
        let versions: Vec<u32> = all.iter().map(|v| v.version).collect();
        let chosen = match number {
            None => all.last().cloned(),
            Some(n) => all.iter().find(|m| m.version == n).cloned(),
        };
        return match chosen {
            Some(version) => Ok(Served::Model { version, versions }),
            None => Err(ApiError::NotFound(format!(
                "model `{name}` has no version `{}` (versions: {versions:?})",
                version.unwrap_or_default()
            ))),
        };
    }
    match app.registry.resolve(tenant, name, number).await {
        Ok(deployment) if deployment.prepared.is_predictor() => {
            let versions = match with_versions {
                true => app.registry.versions(tenant, name).await?.iter().map(|v| v.version).collect(),
                false => Vec::new(),
            };
            Ok(Served::Predictor { deployment, versions })
        }
        Err(ApiError::NotFound(m)) if number.is_some() && m.contains("version") => Err(ApiError::NotFound(m)),
        _ => Err(ApiError::NotFound(format!("no model named `{name}`"))),
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
        && let Err(e) = app.registry.models.load(&version, plan_allows_gpu(&app, tenant)).await
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

/// Inference statistics per (tenant, model, version), since the server started.
#[derive(Default)]
pub struct Stats(Mutex<HashMap<(String, String, u32), ModelStats>>);

#[derive(Default, Clone)]
struct ModelStats {
    predictor: bool,
    last_inference_ms: u64,
    success: Duration,
    success_count: u64,
    fail: Duration,
    fail_count: u64,
    compute_input: Duration,
    compute_infer: Duration,
    compute_output: Duration,
}

/// One call's timings, for [`Stats`].
struct Timings {
    ok: bool,
    total: Duration,
    input: Duration,
    infer: Duration,
    output: Duration,
}

impl Stats {
    fn record(&self, tenant: &str, name: &str, version: u32, predictor: bool, t: &Timings) {
        let Ok(mut stats) = self.0.lock() else { return };
        let entry = stats.entry((tenant.to_string(), name.to_string(), version)).or_default();
        entry.predictor = predictor;
        entry.last_inference_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if t.ok {
            entry.success_count += 1;
            entry.success += t.total;
            entry.compute_input += t.input;
            entry.compute_infer += t.infer;
            entry.compute_output += t.output;
        } else {
            entry.fail_count += 1;
            entry.fail += t.total;
        }
    }

    /// The predictor functions of `tenant` called since start, with their versions.
    fn predictors(&self, tenant: &str) -> Vec<(String, u32)> {
        let Ok(stats) = self.0.lock() else { return Vec::new() };
        stats.iter().filter(|((t, _, _), s)| t == tenant && s.predictor).map(|((_, n, v), _)| (n.clone(), *v)).collect()
    }

    fn get(&self, tenant: &str, name: &str, version: u32) -> ModelStats {
        self.0
            .lock()
            .ok()
            .and_then(|s| s.get(&(tenant.to_string(), name.to_string(), version)).cloned())
            .unwrap_or_default()
    }
}

fn stats_json(name: &str, version: u32, s: &ModelStats) -> Value {
    let d = |count: u64, ns: Duration| json!({ "count": count, "ns": ns.as_nanos() as u64 });
    json!({
        "name": name,
        "version": version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.success_count,
        "execution_count": s.success_count,
        "inference_stats": {
            "success": d(s.success_count, s.success),
            "fail": d(s.fail_count, s.fail),
            "queue": d(s.success_count, Duration::ZERO),
            "compute_input": d(s.success_count, s.compute_input),
            "compute_infer": d(s.success_count, s.compute_infer),
            "compute_output": d(s.success_count, s.compute_output),
            "cache_hit": d(0, Duration::ZERO),
            "cache_miss": d(0, Duration::ZERO),
        },
        "batch_stats": [],
    })
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
    let stats: Vec<Value> =
        versions.iter().map(|(name, v)| stats_json(name, *v, &app.oip_stats.get(tenant, name, *v))).collect();
    Ok(Json(json!({ "model_stats": stats })).into_response())
}

pub async fn all_model_stats(state: State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    model_stats(state, principal, Path(HashMap::new())).await
}

/// A model's error as an HTTP error: the caller's mistakes are 400s.
fn nn_error(e: NnError) -> ApiError {
    match e.code {
        ErrorCode::InvalidArgument | ErrorCode::InvalidEncoding | ErrorCode::UnsupportedOperation => {
            ApiError::BadRequest(e.message)
        }
        ErrorCode::NotFound => ApiError::NotFound(e.message),
        ErrorCode::TooLarge => ApiError::PayloadTooLarge(e.message),
        ErrorCode::Timeout => ApiError::GatewayTimeout(e.message),
        // GPU memory held by running models: the client may retry.
        ErrorCode::RuntimeError if e.message.starts_with("busy:") => ApiError::Unavailable(e.message),
        ErrorCode::Security => ApiError::Forbidden(e.message),
        _ => ApiError::Internal(anyhow::anyhow!(e.message)),
    }
}

/// The declared input a request tensor names, with its datatype checked.
fn declared_input<'a>(name: &str, declared: &'a [TensorInfo], t: &Tensor) -> Result<&'a TensorInfo, ApiError> {
    let Some(info) = declared.iter().find(|i| i.name == t.name) else {
        let known: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
        return Err(ApiError::BadRequest(format!("unknown input `{}` (`{name}` takes: {})", t.name, known.join(", "))));
    };
    if info.datatype != t.datatype {
        return Err(ApiError::BadRequest(format!("input `{}` must be {}, got {}", t.name, info.datatype, t.datatype)));
    }
    Ok(info)
}

/// The request's tensors as host tensors, checked against the model's declared inputs first,
/// so that a BYTES tensor or a wrong datatype is named before any engine sees it.
fn to_host(model: &str, declared: &[TensorInfo], inputs: Vec<Tensor>) -> Result<Vec<(String, HostTensor)>, ApiError> {
    inputs
        .into_iter()
        .map(|t| {
            declared_input(model, declared, &t)?;
            let ty = ElemType::from_oip_name(&t.datatype).ok_or_else(|| {
                ApiError::BadRequest(format!("input `{}`: {} tensors are not supported", t.name, t.datatype))
            })?;
            let dims = t
                .shape
                .iter()
                .map(|d| u32::try_from(*d))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|_| ApiError::BadRequest(format!("input `{}`: dimension too large", t.name)))?;
            let tensor = HostTensor::new(dims, ty, t.data).map_err(|e| ApiError::BadRequest(e.message))?;
            Ok((t.name, tensor))
        })
        .collect::<Result<Vec<_>, ApiError>>()
        // Missing inputs and wrong shapes, as every engine would name them.
        .and_then(|given| crate::nn::match_inputs(declared, given).map_err(nn_error))
        .map(|ordered| declared.iter().map(|i| i.name.clone()).zip(ordered).collect())
}

/// A predictor's inputs checked against its manifest's `[[inputs]]`, when it declares them.
fn check_declared(name: &str, declared: &[TensorInfo], inputs: &[Tensor]) -> Result<(), ApiError> {
    if declared.is_empty() {
        return Ok(());
    }
    for t in inputs {
        let info = declared_input(name, declared, t)?;
        let fits = info.shape.len() == t.shape.len() && info.shape.iter().zip(&t.shape).all(|(d, g)| *d < 0 || d == g);
        if !fits {
            return Err(ApiError::BadRequest(format!(
                "input `{}` must have shape {:?} (-1 = any), got {:?}",
                t.name, info.shape, t.shape
            )));
        }
    }
    if let Some(missing) = declared.iter().find(|i| !inputs.iter().any(|t| t.name == i.name)) {
        return Err(ApiError::BadRequest(format!(
            "missing input `{}` ({} {:?})",
            missing.name, missing.datatype, missing.shape
        )));
    }
    Ok(())
}

/// What running a request produced: the output tensors (or the error response), the host
/// inference time, and the guest's meters for a predictor.
struct Ran {
    outputs: Result<Vec<Tensor>, ApiError>,
    nn: crate::nn::NnUsage,
    guest: Option<crate::runtime::CallUsage>,
}

/// Whether `tenant`'s plan allows the GPU.
fn plan_allows_gpu(app: &App, tenant: &str) -> bool {
    app.tenants.plan_of(tenant).and_then(|p| app.config.plans.get(&p).map(|p| p.gpu)).unwrap_or(false)
}

async fn run_model(app: &App, model: &ModelVersion, inputs: Vec<(String, HostTensor)>, gpu_allowed: bool) -> Ran {
    let result = async {
        let (graph, load_time) = app.registry.models.load(model, gpu_allowed).await?;
        let (outputs, compute, placed) = app.registry.models.graphs().run_model(graph, inputs).await?;
        let mut nn = crate::nn::NnUsage::default();
        nn.add(load_time + compute, placed);
        Ok::<_, NnError>((outputs, nn))
    }
    .await;
    match result {
        Ok((outputs, nn)) => {
            let outputs = outputs
                .into_iter()
                .map(|(name, t)| Tensor {
                    name,
                    datatype: t.ty.oip_name().to_string(),
                    shape: t.dims.iter().map(|d| i64::from(*d)).collect(),
                    data: t.data,
                })
                .collect();
            Ran { outputs: Ok(outputs), nn, guest: None }
        }
        Err(e) => Ran { outputs: Err(nn_error(e)), nn: Default::default(), guest: None },
    }
}

async fn run_predictor(app: &App, actor: &str, deployment: &Deployment, request_id: &str, inputs: Vec<Tensor>) -> Ran {
    let inputs = inputs
        .into_iter()
        .map(|t| PredictTensor { name: t.name, datatype: t.datatype, shape: t.shape, data: t.data })
        .collect();
    let active = super::invoke::ActiveGuard::new(app);
    let outcome = app.runtime.predict(&deployment.prepared, &deployment.limits, &deployment.grants, inputs).await;
    drop(active);
    let mut outcome = outcome;
    let denials = std::mem::take(&mut outcome.denials);
    super::invoke::record_denials(app, actor, deployment, &mut outcome.logs, denials).await;
    let fm = deployment.metrics.get_or_init(|| app.metrics.function(&deployment.tenant, &deployment.name));
    fm.duration.observe(outcome.usage.wall.as_secs_f64());
    if let Some(counter) = fm.outcome(super::invoke::outcome_label(&outcome.result)) {
        counter.inc();
    }
    super::invoke::record_logs(app, deployment, request_id, outcome.logs, outcome.logs_dropped);
    let outputs = outcome.result.map_err(super::invoke::invoke_error).and_then(|tensors| {
        tensors
            .into_iter()
            .map(|t| {
                let tensor = Tensor { name: t.name, datatype: t.datatype, shape: t.shape, data: t.data };
                oip::check_tensor(&tensor).map_err(|e| ApiError::Function(format!("the predictor returned {e}")))?;
                Ok(tensor)
            })
            .collect()
    });
    Ran { outputs, nn: outcome.usage.nn, guest: Some(outcome.usage) }
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
pub async fn infer(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    let tenant = tenant_of(&principal)?.to_string();
    let served = resolve_with(&app, &tenant, name, version, false).await?;

    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let header_length = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::BadRequest("Inference-Header-Content-Length must be a byte count".into()))?,
        ),
    };
    // Admitted before the body is read and parsed: parsing a large JSON tensor costs memory,
    // so it counts against the tenant's concurrency like the call itself. A malformed request
    // still runs nothing and is not billed.
    // A GPU model needs a plan that allows the GPU, and a GPU: refused before admission, not billed.
    if let Served::Model { version, .. } = &served {
        let selected = crate::registry::models::selector(&version.engine, &version.device);
        if selected == "wgpu" {
            app.registry.models.graphs().select(&selected, plan_allows_gpu(&app, &tenant)).map_err(nn_error)?;
        }
    }
    let (admission, plan) = admit(&app, &tenant).await?;
    let limit = app.config.server.max_request_bytes as usize;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("request body is over the {limit}-byte limit")))?;
    let started = Instant::now();
    let mut request = oip::parse_request(&body, header_length).map_err(ApiError::BadRequest)?;
    // Everything the caller can get wrong is checked before admission: such calls are not billed.
    let declared_outputs = served.outputs();
    for wanted in &request.outputs {
        if !declared_outputs.is_empty() && !declared_outputs.iter().any(|o| o.name == wanted.name) {
            let known: Vec<&str> = declared_outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown output `{}` (`{name}` gives: {})",
                wanted.name,
                known.join(", ")
            )));
        }
    }
    let inputs = std::mem::take(&mut request.inputs);
    let (host_inputs, inputs) = match &served {
        Served::Model { version, .. } => (Some(to_host(name, &version.inputs, inputs)?), Vec::new()),
        Served::Predictor { deployment, .. } => {
            check_declared(name, &deployment.inputs, &inputs)?;
            (None, inputs)
        }
    };
    let input_time = started.elapsed();

    let started_us = now_us();
    let infer_started = Instant::now();
    let ran = match (&served, host_inputs) {
        (Served::Model { version, .. }, Some(host_inputs)) => run_model(&app, version, host_inputs, plan.gpu).await,
        (Served::Predictor { deployment, .. }, _) => {
            run_predictor(&app, &principal.key_id, deployment, &request_id, inputs).await
        }
        (Served::Model { .. }, None) => Ran { outputs: Ok(Vec::new()), nn: Default::default(), guest: None },
    };
    drop(admission);
    let infer_time = infer_started.elapsed();
    let output_started = Instant::now();
    let version = served.version();
    let mut response = match ran.outputs.and_then(|outputs| {
        oip::encode_response(name, &version.to_string(), &request, outputs).map_err(ApiError::BadRequest)
    }) {
        Ok(encoded) => {
            let mut response = Response::new(Body::from(encoded.body));
            let content_type =
                if encoded.header_length.is_some() { "application/octet-stream" } else { "application/json" };
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some(n) = encoded.header_length {
                response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            }
            response
        }
        Err(e) => e.into_response(),
    };
    let wall = started.elapsed();
    let ok = response.status() == StatusCode::OK;
    let timings = Timings { ok, total: wall, input: input_time, infer: infer_time, output: output_started.elapsed() };
    app.oip_stats.record(&tenant, name, version, matches!(served, Served::Predictor { .. }), &timings);

    let bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as i64;
    let (nn_cpu_us, nn_gpu_us) = ran.nn.micros();
    let (kind, meters) = match &ran.guest {
        Some(usage) => {
            let guest_wall = usage.wall.as_micros() as i64;
            let pages = usage.peak_memory_bytes.div_ceil(65_536) as i64;
            let meters = Meters {
                invocations: 1,
                guest_us: guest_wall.saturating_sub(nn_cpu_us + nn_gpu_us),
                fuel: usage.fuel.min(i64::MAX as u64) as i64,
                memory_page_us: pages.saturating_mul(guest_wall),
                nn_cpu_us,
                nn_gpu_us,
                bytes_in: body.len() as i64,
                bytes_out,
            };
            ("function", meters)
        }
        None => {
            let meters = Meters {
                invocations: 1,
                nn_cpu_us,
                nn_gpu_us,
                bytes_in: body.len() as i64,
                bytes_out,
                ..Meters::default()
            };
            ("model", meters)
        }
    };
    let wall_us = wall.as_micros() as i64;
    let record = UsageRecord {
        request_id,
        tenant: tenant.clone(),
        kind,
        function: name.to_string(),
        version,
        started_us,
        ended_us: started_us + wall_us,
        outcome: if ok { "ok" } else { "error" },
        status: response.status().as_u16(),
        meters,
        nn_cpu_nodes: ran.nn.cpu_nodes,
        nn_gpu_nodes: ran.nn.gpu_nodes,
    };
    let usage = format!(
        "{}, version={version}, wall_ms={:.3}, {}",
        record.meters.header_pairs(),
        wall.as_secs_f64() * 1e3,
        record.node_pairs()
    );
    commit_usage(&app, plan, record).await?;
    if let Ok(value) = HeaderValue::from_str(&usage) {
        response.headers_mut().insert(USAGE_HEADER, value);
    }
    Ok(response)
}
