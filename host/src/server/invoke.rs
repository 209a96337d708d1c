//! The data plane: `ANY /fn/{tenant}/{function}[@version]/{*rest}`. This handler parses the
//! request and encodes the function's answer; the call itself (admission, run, metering,
//! commit) is [`crate::invocation`]'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;

use super::{App, FunctionResponse, RequestId, guest_status};
use crate::error::ApiError;
use crate::invocation::{self, Answer, Call, Target, Work};
use crate::releases::{ROUTE_KEY_HEADER, Subject, VERSION_HEADER};
use crate::runtime::{GuestRequest, GuestResponse};
use crate::tenants::{Principal, Role};

const INVOKERS: &[Role] = &[Role::Owner, Role::Deployer, Role::Invoker];

/// Response headers a function may not set: the host owns framing and its own headers.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "infercell-request-id",
    invocation::USAGE_HEADER,
    VERSION_HEADER,
];

pub async fn invoke_root(
    state: State<Arc<App>>,
    principal: Principal,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    invoke(state, principal, params, "/".to_string(), req).await
}

pub async fn invoke_rest(
    state: State<Arc<App>>,
    principal: Principal,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let rest = format!("/{}", params.get("rest").map(String::as_str).unwrap_or_default());
    invoke(state, principal, params, rest, req).await
}

/// What `name@...` pins: a version number, an alias (it starts with a letter), or nothing.
enum Pin<'a> {
    Release,
    Version(u32),
    Alias(&'a str),
}

/// Splits `function[@N|@alias]`.
fn parse_target(target: &str) -> Result<(&str, Pin<'_>), ApiError> {
    let Some((name, pin)) = target.split_once('@') else { return Ok((target, Pin::Release)) };
    if pin.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok((name, Pin::Alias(pin)));
    }
    let v: u32 = pin.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`{pin}` is not a version number or an alias (use name@1, name@2, ..., name@prod)"
        ))
    })?;
    Ok((name, Pin::Version(v)))
}

async fn invoke(
    State(app): State<Arc<App>>,
    principal: Principal,
    params: HashMap<String, String>,
    path: String,
    req: Request,
) -> Result<Response, ApiError> {
    let received = std::time::Instant::now();
    let tenant = params.get("tenant").map(String::as_str).unwrap_or_default();
    let target = params.get("function").map(String::as_str).unwrap_or_default();
    let (function, pin) = parse_target(target)?;
    // The role first (it says nothing about what exists); then another tenant's functions do
    // not exist for this key.
    principal.tenant_with(INVOKERS)?;
    if principal.tenant.as_deref() != Some(tenant) {
        return Err(ApiError::NotFound(format!("no function named `{function}`")));
    }
    // The release picks the version of an unpinned call (none set: the newest serves).
    let route = match pin {
        Pin::Release => {
            let key = req.headers().get(ROUTE_KEY_HEADER).map(HeaderValue::as_bytes);
            app.releases.route(Subject::Function, tenant, function, key)
        }
        Pin::Version(_) | Pin::Alias(_) => None,
    };
    let version = match pin {
        Pin::Release => route.map(|r| r.version),
        Pin::Version(v) => Some(v),
        Pin::Alias(alias) => Some(app.releases.alias(Subject::Function, tenant, function, alias)?),
    };
    let deployment = app.registry.resolve(tenant, function, version).await?;
    if deployment.prepared.is_predictor() {
        return Err(ApiError::BadRequest(format!(
            "`{function}` is a tensor function (predictor world): call it at /v2/models/{function}/infer"
        )));
    }

    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let (parts, body) = req.into_parts();
    let limit = app.config.server.max_request_bytes as usize;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("request body is over the {limit}-byte limit")))?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let request = GuestRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body: body.into(),
    };

    let admitted = invocation::admit(&app, tenant, Target::Function(&deployment)).await?;
    let mirror = route.and_then(|r| r.mirror).map(|version| Mirrored {
        version,
        request: request.clone(),
        served: Arc::new(Mutex::new(None)),
    });
    let version = deployment.version;
    // A routed call counts toward the release's canary health, from the call's own task, with
    // its time from admission (a version's first load after a restart is not its latency).
    let admitted_at = std::time::Instant::now();
    let on_answer = route.map(|_| {
        let (app, tenant, function) = (app.clone(), tenant.to_string(), function.to_string());
        Box::new(move |status: axum::http::StatusCode| {
            let failed = status.is_server_error();
            app.releases.observe(Subject::Function, &tenant, &function, version, failed, admitted_at.elapsed());
        }) as invocation::OnAnswer
    });
    let call = Call {
        request_id,
        actor: principal.key_id.clone(),
        bytes_in: request.body.len(),
        received,
        shadow: false,
        on_answer,
    };
    let mut response =
        admitted.run(call, Work::Handler { deployment, request }, encoder(&app, mirror.as_ref())).await?;
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    if let Some(mirror) = mirror {
        let (app2, tenant, function, actor) =
            (app.clone(), tenant.to_string(), function.to_string(), principal.key_id.clone());
        let copy = async move { shadow(app2, tenant, function, actor, mirror).await };
        app.calls.spawn(tracing::Instrument::in_current_span(copy));
    }
    Ok(response)
}

/// An answer's status and body, kept to compare a mirror's answer with.
type Kept = Arc<Mutex<Option<(u16, Vec<u8>)>>>;

/// A call whose copy goes to a mirror version: the request, and the answer served.
struct Mirrored {
    version: u32,
    request: GuestRequest,
    served: Kept,
}

/// The handler encoder: the function's answer, checked; with a mirror, a copy of it kept.
fn encoder(app: &App, keep: Option<&Mirrored>) -> invocation::Encode {
    let limits = ResponseLimits::of(app);
    let keep = keep.map(|m| m.served.clone());
    Box::new(move |answer| match answer {
        Answer::Response(response) => {
            if let Some(keep) = keep
                && let Ok(mut kept) = keep.lock()
            {
                *kept = Some((response.status, response.body.clone()));
            }
            guest_response(&limits, response)
        }
        Answer::Tensors(_) => Err(ApiError::Function("a handler answered with tensors".into())),
    })
}

/// Runs a mirrored copy of a call on the mirror version, after the caller's answer: billed as
/// a shadow call, its answer compared with the served one and dropped.
async fn shadow(app: Arc<App>, tenant: String, function: String, actor: String, mirror: Mirrored) {
    let Ok(deployment) = app.registry.resolve(&tenant, &function, Some(mirror.version)).await else { return };
    if deployment.prepared.is_predictor() {
        return;
    }
    let Some(admitted) = invocation::admit_shadow(&app, &tenant) else {
        tracing::debug!(tenant, function, "no slot for a mirrored call; dropped");
        return;
    };
    let started = std::time::Instant::now();
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    let call = Call {
        request_id,
        actor,
        bytes_in: mirror.request.body.len(),
        received: started,
        shadow: true,
        on_answer: None,
    };
    let answered =
        Mirrored { version: mirror.version, request: GuestRequest::default(), served: Arc::new(Mutex::new(None)) };
    let work = Work::Handler { deployment, request: mirror.request };
    let status = match admitted.run(call, work, encoder(&app, Some(&answered))).await {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    let served = mirror.served.lock().ok().and_then(|mut s| s.take());
    let shadowed = answered.served.lock().ok().and_then(|mut s| s.take());
    let agreed = match (served, shadowed) {
        (Some(served), Some(shadowed)) => Some(served == shadowed),
        (Some(_), None) => Some(false),
        (None, _) => None,
    };
    app.releases.observe_shadow(
        Subject::Function,
        &tenant,
        &function,
        mirror.version,
        status.is_server_error(),
        started.elapsed(),
        agreed,
    );
}

/// What a function's response may be (`server.max_response_bytes`, `max_response_headers`).
struct ResponseLimits {
    max_body: u64,
    max_headers: usize,
}

impl ResponseLimits {
    fn of(app: &App) -> Self {
        Self { max_body: app.config.server.max_response_bytes, max_headers: app.config.server.max_response_headers }
    }
}

/// The HTTP response a function answered, checked: a valid status, at most
/// `max_response_headers` headers with valid names and values, none of the host's own, and a
/// body of at most `max_response_bytes`. Anything else is the function's failure (500), named.
fn guest_response(limits: &ResponseLimits, answer: GuestResponse) -> Result<Response, ApiError> {
    let status = guest_status(answer.status)
        .ok_or_else(|| ApiError::Function(format!("function returned an invalid HTTP status {}", answer.status)))?;
    let max_body = limits.max_body;
    if answer.body.len() as u64 > max_body {
        return Err(ApiError::Function(format!(
            "function returned a body of {} bytes, over the {max_body}-byte limit (server.max_response_bytes)",
            answer.body.len()
        )));
    }
    let max_headers = limits.max_headers;
    if answer.headers.len() > max_headers {
        return Err(ApiError::Function(format!(
            "function returned {} headers, more than the {max_headers} allowed (server.max_response_headers)",
            answer.headers.len()
        )));
    }
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
    for (name, value) in &answer.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| ApiError::Function(format!("function returned an invalid header name {name:?}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| ApiError::Function(format!("function returned an invalid value for header `{name}`")))?;
        if !RESERVED_HEADERS.contains(&name.as_str()) {
            response.headers_mut().append(name, value);
        }
    }
    response.extensions_mut().insert(FunctionResponse);
    Ok(response)
}
