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
use crate::oip::{self, InferRequest, Tensor};
use crate::registry::models::ModelVersion;
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

/// A model as `/v2` serves it: the chosen version and every live version's number.
struct Served {
    version: ModelVersion,
    versions: Vec<u32>,
}

/// The caller's tenant (roles that may infer).
fn tenant_of(principal: &Principal) -> Result<&str, ApiError> {
    principal.tenant_with(INFERENCE)
}

/// The model `name` (at `version`, else its newest) of `tenant`; 404 otherwise.
async fn resolve(app: &App, tenant: &str, name: &str, version: Option<&str>) -> Result<Served, ApiError> {
    let all = app.registry.models.versions(tenant, Some(name)).await?;
    let versions: Vec<u32> = all.iter().map(|v| v.version).collect();
    let chosen = match version {
        None => all.last().cloned(),
        Some(v) => {
            let wanted: Option<u32> = v.parse().ok();
            all.iter().find(|m| Some(m.version) == wanted).cloned()
        }
    };
    match (chosen, version) {
        (Some(version), _) => Ok(Served { version, versions }),
        (None, Some(v)) if !versions.is_empty() => {
            Err(ApiError::NotFound(format!("model `{name}` has no version `{v}` (versions: {versions:?})")))
        }
        (None, _) => Err(ApiError::NotFound(format!("no model named `{name}`"))),
    }
}

fn params(p: &HashMap<String, String>) -> (&str, Option<&str>) {
    (p.get("model").map(String::as_str).unwrap_or_default(), p.get("version").map(String::as_str))
}

/// Triton's platform name for the engine a model runs on.
fn platform(app: &App, engine: &str) -> &'static str {
    let resolved = app.registry.models.graphs().engine(engine).map(|e| e.name()).unwrap_or("tract");
    match resolved {
        "onnxruntime" => "onnxruntime_onnx",
        _ => "tract_onnx",
    }
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
    let served = resolve(&app, tenant_of(&principal)?, name, version).await?;
    Ok(Json(json!({
        "name": name,
        "versions": served.versions.iter().map(u32::to_string).collect::<Vec<_>>(),
        "platform": platform(&app, &served.version.engine),
        "inputs": tensor_metadata(&served.version.inputs),
        "outputs": tensor_metadata(&served.version.outputs),
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
    let served = resolve(&app, tenant_of(&principal)?, name, version).await?;
    app.registry.models.load(&served.version).await.map_err(nn_error)?;
    Ok(Json(json!({ "name": name, "ready": true })).into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/config`: Triton's model configuration.
pub async fn model_config(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    let served = resolve(&app, tenant_of(&principal)?, name, version).await?;
    let config = |infos: &[TensorInfo]| -> Vec<Value> {
        infos
            .iter()
            .map(|t| json!({ "name": t.name, "data_type": oip::config_type(&t.datatype), "dims": t.shape }))
            .collect()
    };
    let platform = platform(&app, &served.version.engine);
    Ok(Json(json!({
        "name": name,
        "platform": platform,
        "backend": platform.trim_end_matches("_onnx"),
        "max_batch_size": 0,
        "version_policy": { "specific": { "versions": [served.version.version] } },
        "input": config(&served.version.inputs),
        "output": config(&served.version.outputs),
        "parameters": { "digest": { "string_value": served.version.digest }, "device": { "string_value": served.version.device } },
    }))
    .into_response())
}

/// `POST /v2/repository/index`: every live version of the tenant's models.
pub async fn repository_index(State(app): State<Arc<App>>, principal: Principal) -> Result<Response, ApiError> {
    let tenant = tenant_of(&principal)?;
    let versions = app.registry.models.versions(tenant, None).await?;
    let index: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "name": v.name, "version": v.version.to_string(), "state": "READY", "reason": "" }))
        .collect();
    Ok(Json(Value::Array(index)).into_response())
}

/// Inference statistics per (tenant, model, version), since the server started.
#[derive(Default)]
pub struct Stats(Mutex<HashMap<(String, String, u32), ModelStats>>);

#[derive(Default, Clone)]
struct ModelStats {
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
    fn record(&self, tenant: &str, name: &str, version: u32, t: &Timings) {
        let Ok(mut stats) = self.0.lock() else { return };
        let entry = stats.entry((tenant.to_string(), name.to_string(), version)).or_default();
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
    let versions = match params(&p) {
        ("", _) => app.registry.models.versions(tenant, None).await?,
        (name, None) => app.registry.models.versions(tenant, Some(name)).await?,
        (name, version) => vec![resolve(&app, tenant, name, version).await?.version],
    };
    if versions.is_empty() {
        let (name, _) = params(&p);
        if !name.is_empty() {
            return Err(ApiError::NotFound(format!("no model named `{name}`")));
        }
    }
    let stats: Vec<Value> = versions
        .iter()
        .map(|v| stats_json(&v.name, v.version, &app.oip_stats.get(tenant, &v.name, v.version)))
        .collect();
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
        _ => ApiError::Internal(anyhow::anyhow!(e.message)),
    }
}

/// The request's tensors as host tensors, checked against the model's declared inputs first,
/// so that a BYTES tensor or a wrong datatype is named before any engine sees it.
fn to_host(model: &str, declared: &[TensorInfo], inputs: Vec<Tensor>) -> Result<Vec<(String, HostTensor)>, ApiError> {
    inputs
        .into_iter()
        .map(|t| {
            let Some(info) = declared.iter().find(|i| i.name == t.name) else {
                let known: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
                return Err(ApiError::BadRequest(format!(
                    "unknown input `{}` (model `{model}` takes: {})",
                    t.name,
                    known.join(", ")
                )));
            };
            if info.datatype != t.datatype {
                return Err(ApiError::BadRequest(format!(
                    "input `{}` must be {}, got {}",
                    t.name, info.datatype, t.datatype
                )));
            }
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

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
pub async fn infer(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (name, version) = params(&p);
    let tenant = tenant_of(&principal)?.to_string();
    let served = resolve(&app, &tenant, name, version).await?;
    let model = served.version;

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
    let limit = app.config.server.max_request_bytes as usize;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("request body is over the {limit}-byte limit")))?;
    let started = Instant::now();
    let request = oip::parse_request(&body, header_length).map_err(ApiError::BadRequest)?;
    // Everything the caller can get wrong is checked before admission: such calls are not billed.
    for wanted in &request.outputs {
        if !model.outputs.iter().any(|o| o.name == wanted.name) {
            let known: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown output `{}` (model `{name}` gives: {})",
                wanted.name,
                known.join(", ")
            )));
        }
    }
    let InferRequest { inputs, .. } = request.clone();
    let inputs = to_host(name, &model.inputs, inputs)?;
    let input_time = started.elapsed();

    let (admission, plan) = admit(&app, &tenant).await?;
    let started_us = now_us();
    let result = async {
        let (graph, load_time) = app.registry.models.load(&model).await?;
        let (outputs, compute) = app.registry.models.graphs().run_model(graph, inputs).await?;
        Ok::<_, NnError>((outputs, load_time + compute))
    }
    .await;
    drop(admission);
    let infer_started = Instant::now();
    let (response, nn_time) = match result {
        Ok((outputs, nn_time)) => {
            let tensors = outputs
                .into_iter()
                .map(|(name, t)| Tensor {
                    name,
                    datatype: t.ty.oip_name().to_string(),
                    shape: t.dims.iter().map(|d| i64::from(*d)).collect(),
                    data: t.data,
                })
                .collect();
            let version = model.version.to_string();
            match oip::encode_response(name, &version, &request, tensors) {
                Ok(encoded) => {
                    let mut response = Response::new(Body::from(encoded.body));
                    let content_type = if encoded.header_length.is_some() {
                        HeaderValue::from_static("application/octet-stream")
                    } else {
                        HeaderValue::from_static("application/json")
                    };
                    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                    if let Some(n) = encoded.header_length {
                        response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
                    }
                    (response, nn_time)
                }
                Err(e) => (ApiError::BadRequest(e).into_response(), nn_time),
            }
        }
        Err(e) => (nn_error(e).into_response(), Duration::ZERO),
    };
    let output_time = infer_started.elapsed();
    let wall = started.elapsed();
    let ok = response.status() == StatusCode::OK;
    app.oip_stats.record(
        &tenant,
        name,
        model.version,
        &Timings { ok, total: wall, input: input_time, infer: nn_time, output: output_time },
    );

    let wall_us = wall.as_micros() as i64;
    let bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
    let nn_cpu_us = nn_time.as_micros() as i64;
    let record = UsageRecord {
        request_id,
        tenant: tenant.clone(),
        kind: "model",
        function: name.to_string(),
        version: model.version,
        started_us,
        ended_us: started_us + wall_us,
        outcome: if ok { "ok" } else { "error" },
        status: response.status().as_u16(),
        meters: Meters {
            invocations: 1,
            guest_us: 0,
            fuel: 0,
            memory_page_us: 0,
            nn_cpu_us,
            nn_gpu_us: 0,
            bytes_in: body.len() as i64,
            bytes_out: bytes_out as i64,
        },
    };
    let usage =
        format!("{}, version={}, wall_ms={:.3}", record.meters.header_pairs(), model.version, wall.as_secs_f64() * 1e3);
    commit_usage(&app, plan, record).await?;
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&usage) {
        response.headers_mut().insert(USAGE_HEADER, value);
    }
    Ok(response)
}
