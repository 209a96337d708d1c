//! `POST /v2/models/{m}[/versions/{v}]/infer`: parses an Open Inference Protocol request
//! (JSON or Triton's binary tensors), checks it against what the model or tensor function
//! declares, and encodes the answer. The call itself is [`crate::invocation`]'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use super::{HEADER_LENGTH, Served, params, resolve_with, tenant_of};
use crate::app::App;
use crate::error::ApiError;
use crate::invocation::{self, Answer, Call, Target, Work};
use crate::nn::{ElemType, HostTensor, TensorInfo};
use crate::oip::{self, Tensor};
use crate::releases::{ROUTE_KEY_HEADER, Subject, VERSION_HEADER};
use crate::server::RequestId;
use crate::tenants::Principal;

/// Request bodies up to this size are parsed on the async thread that received them.
const PARSE_INLINE_MAX: usize = 64 << 10;

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
pub async fn infer(
    State(app): State<Arc<App>>,
    principal: Principal,
    Path(p): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let (name, version) = params(&p);
    let name = name.to_string();
    let tenant = tenant_of(&principal)?.to_string();
    let key = req.headers().get(ROUTE_KEY_HEADER).map(HeaderValue::as_bytes);
    let (served, routed) = resolve_with(&app, &tenant, &name, version, Some(key)).await?;
    let subject = match &served {
        Served::Model { .. } => Subject::Model,
        Served::Predictor { .. } => Subject::Function,
    };

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
    // Admitted before the body is read and parsed: parsing a large JSON tensor costs memory, so
    // it counts against the tenant's concurrency like the call itself. A malformed request
    // still runs nothing and is not billed.
    let target = match &served {
        Served::Model { version, .. } => Target::Model(version),
        Served::Predictor { deployment, .. } => Target::Function(deployment),
    };
    let admitted = invocation::admit(&app, &tenant, target).await?;
    let limit = app.config.server.max_request_bytes as usize;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("request body is over the {limit}-byte limit")))?;
    // A large body is parsed on a compute thread, within the tenant's share, like the compute
    // it feeds: a megabyte of JSON takes milliseconds, which on an async thread would hold up
    // every other tenant's calls behind it.
    let mut request = if body.len() <= PARSE_INLINE_MAX {
        oip::parse_request(&body, header_length).map_err(ApiError::BadRequest)?
    } else {
        let body = body.clone();
        app.graphs
            .compute_for(&tenant, move || Ok(oip::parse_request(&body, header_length)))
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("parsing the request failed: {}", e.message)))?
            .map_err(ApiError::BadRequest)?
    };
    // Everything the caller can get wrong is checked before anything runs: such calls are not
    // billed.
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
    let version = served.version();
    // A mirrored call keeps a copy of its inputs, and of the answer served, to compare.
    let mirror = routed.and_then(|r| r.mirror).map(|version| MirroredTensors {
        version,
        inputs: inputs.clone(),
        served: Arc::new(Mutex::new(None)),
    });
    let kept = mirror.as_ref().map(|m| m.served.clone());
    let work = match served {
        Served::Model { version, .. } => {
            let inputs = to_host(&name, &version.inputs, inputs)?;
            Work::Model { model: version, inputs }
        }
        Served::Predictor { deployment, .. } => {
            check_declared(&name, &deployment.inputs, &inputs)?;
            Work::Predictor { deployment, inputs }
        }
    };
    // Timed from here: the version is resolved and the request parsed (a tensor function's
    // first load after a restart is not its latency; a model's graph loads inside the call).
    let admitted_at = Instant::now();
    let on_answer = routed.map(|_| {
        let (app, tenant, name) = (app.clone(), tenant.clone(), name.clone());
        Box::new(move |status: axum::http::StatusCode| {
            app.releases.observe(subject, &tenant, &name, version, status.is_server_error(), admitted_at.elapsed());
        }) as invocation::OnAnswer
    });
    let call =
        Call { request_id, actor: principal.key_id.clone(), bytes_in: body.len(), received, shadow: false, on_answer };
    let served_name = name.clone();
    let served_name_for_shadow = name.clone();
    let encode = Box::new(move |answer| match answer {
        Answer::Tensors(outputs) => {
            if let Some(kept) = kept
                && let Ok(mut kept) = kept.lock()
            {
                *kept = Some(outputs.clone());
            }
            let encoded = oip::encode_response(&served_name, &version.to_string(), &request, outputs)
                .map_err(ApiError::BadRequest)?;
            let mut response = Response::new(Body::from(encoded.body));
            let content_type =
                if encoded.header_length.is_some() { "application/octet-stream" } else { "application/json" };
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some(n) = encoded.header_length {
                response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            }
            Ok(response)
        }
        Answer::Response(_) => Err(ApiError::Function("a tensor function answered with an HTTP response".into())),
    });
    let mut response = admitted.run(call, work, encode).await?;
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    if let Some(mirror) = mirror {
        let (app2, actor) = (app.clone(), principal.key_id.clone());
        let copy = async move { shadow(app2, subject, tenant, served_name_for_shadow, actor, mirror).await };
        app.calls.spawn(tracing::Instrument::in_current_span(copy));
    }
    Ok(response)
}

/// A `/v2` call whose copy goes to a mirror version: its inputs, and the outputs served.
struct MirroredTensors {
    version: u32,
    inputs: Vec<Tensor>,
    served: Arc<Mutex<Option<Vec<Tensor>>>>,
}

/// Runs a mirrored copy of a `/v2` call on the mirror version after the caller's answer:
/// billed as a shadow call, its outputs compared with the served ones within
/// [`oip::outputs_agree`]'s tolerance, and dropped.
async fn shadow(app: Arc<App>, subject: Subject, tenant: String, name: String, actor: String, mirror: MirroredTensors) {
    let started = Instant::now();
    let work = match subject {
        Subject::Model => {
            let Some(model) = app
                .registry
                .models
                .named(&tenant, &name)
                .await
                .ok()
                .and_then(|all| all.iter().find(|m| m.version == mirror.version).cloned())
            else {
                return;
            };
            match to_host(&name, &model.inputs, mirror.inputs) {
                Ok(inputs) => Work::Model { model, inputs },
                Err(_) => {
                    app.releases.observe_shadow(
                        subject,
                        &tenant,
                        &name,
                        mirror.version,
                        false,
                        started.elapsed(),
                        Some(false),
                    );
                    return;
                }
            }
        }
        Subject::Function => {
            let Ok(deployment) = app.registry.resolve(&tenant, &name, Some(mirror.version)).await else { return };
            if !deployment.prepared.is_predictor() {
                return;
            }
            Work::Predictor { deployment, inputs: mirror.inputs }
        }
    };
    let Some(admitted) = invocation::admit_shadow(&app, &tenant) else {
        tracing::debug!(tenant, name, "no slot for a mirrored call; dropped");
        return;
    };
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    let call = Call { request_id, actor, bytes_in: 0, received: started, shadow: true, on_answer: None };
    let answered: Arc<Mutex<Option<Vec<Tensor>>>> = Arc::new(Mutex::new(None));
    let keep = answered.clone();
    let encode: invocation::Encode = Box::new(move |answer| match answer {
        Answer::Tensors(outputs) => {
            if let Ok(mut kept) = keep.lock() {
                *kept = Some(outputs);
            }
            Ok(Response::new(Body::empty()))
        }
        Answer::Response(_) => Err(ApiError::Function("a tensor function answered with an HTTP response".into())),
    });
    let status = match admitted.run(call, work, encode).await {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    let served = mirror.served.lock().ok().and_then(|mut s| s.take());
    let shadowed = answered.lock().ok().and_then(|mut s| s.take());
    let agreed = match (served, shadowed) {
        (Some(served), Some(shadowed)) => Some(oip::outputs_agree(&served, &shadowed)),
        (Some(_), None) => Some(false),
        (None, _) => None,
    };
    app.releases.observe_shadow(
        subject,
        &tenant,
        &name,
        mirror.version,
        status.is_server_error(),
        started.elapsed(),
        agreed,
    );
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
        .and_then(|given| crate::nn::match_inputs(declared, given).map_err(ApiError::from))
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
