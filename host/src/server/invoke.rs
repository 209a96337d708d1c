//! The data plane: `ANY /fn/{tenant}/{function}[@version]/{*rest}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use super::{App, FunctionResponse, RequestId, USAGE_HEADER, guest_status};
use crate::config::Plan;
use crate::error::ApiError;
use crate::metering::quota::{Admission, Refusal};
use crate::metering::{Meters, UsageRecord, now_us};
use crate::metrics::RefusedLabels;
use crate::registry::LogEntry;
use crate::runtime::{GuestError, GuestRequest, InvokeError, LogLevel};
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
    "infercell-usage",
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

async fn invoke(
    State(app): State<Arc<App>>,
    principal: Principal,
    params: HashMap<String, String>,
    path: String,
    req: Request,
) -> Result<Response, ApiError> {
    let tenant = params.get("tenant").map(String::as_str).unwrap_or_default();
    let target = params.get("function").map(String::as_str).unwrap_or_default();
    let (function, version) = match target.split_once('@') {
        Some((name, v)) => {
            let v: u32 = v.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                ApiError::BadRequest(format!("`{v}` is not a version number (use name@1, name@2, ...)"))
            })?;
            (name, Some(v))
        }
        None => (target, None),
    };
    // The role first (it says nothing about what exists); then another tenant's functions do
    // not exist for this key.
    principal.tenant_with(INVOKERS)?;
    if principal.tenant.as_deref() != Some(tenant) {
        return Err(ApiError::NotFound(format!("no function named `{function}`")));
    }
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
    let guest_request = GuestRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body: body.to_vec(),
    };

    let (admission, plan) = admit(&app, tenant).await?;

    let started_us = now_us();
    let active = ActiveGuard::new(&app);
    let outcome = app.runtime.invoke(&deployment.prepared, &deployment.limits, &deployment.grants, guest_request).await;
    drop(active);
    drop(admission);
    let mut outcome = outcome;
    record_denials(&app, &principal.key_id, &deployment, &mut outcome.logs, std::mem::take(&mut outcome.denials)).await;

    if let Err(InvokeError::Busy(_)) = &outcome.result {
        // Nothing ran: refused, not billed.
        app.metrics.refused.get_or_create(&RefusedLabels { tenant: tenant.to_string(), reason: "busy".into() }).inc();
    } else {
        let fm = deployment.metrics.get_or_init(|| app.metrics.function(tenant, function));
        fm.duration.observe(outcome.usage.wall.as_secs_f64());
        if let Some(counter) = fm.outcome(outcome_label(&outcome.result)) {
            counter.inc();
        }
        if outcome.logs_dropped > 0 {
            fm.log_bytes_dropped.inc_by(outcome.logs_dropped as u64);
        }
    }
    record_logs(&app, &deployment, &request_id, outcome.logs, outcome.logs_dropped);

    let bytes_in = body.len();
    let status_outcome = outcome_label(&outcome.result);
    let mut response = match outcome.result {
        Ok(answer) => match guest_response(&app, answer) {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Err(e) => invoke_error(e).into_response(),
    };
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    let busy = matches!(response.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let mut usage = format!(
        "version={}, wall_ms={:.3}, memory_peak_bytes={}",
        deployment.version,
        outcome.usage.wall.as_secs_f64() * 1000.0,
        outcome.usage.peak_memory_bytes
    );
    if !busy {
        let wall_us = outcome.usage.wall.as_micros() as i64;
        let (nn_cpu_us, nn_gpu_us) = outcome.usage.nn.micros();
        let pages = outcome.usage.peak_memory_bytes.div_ceil(65_536) as i64;
        let record = UsageRecord {
            request_id: request_id.clone(),
            tenant: tenant.to_string(),
            kind: "function",
            function: function.to_string(),
            version: deployment.version,
            started_us,
            ended_us: started_us + wall_us,
            outcome: status_outcome,
            status: response.status().as_u16(),
            meters: Meters {
                invocations: 1,
                guest_us: wall_us.saturating_sub(nn_cpu_us + nn_gpu_us),
                fuel: outcome.usage.fuel.min(i64::MAX as u64) as i64,
                memory_page_us: pages.saturating_mul(wall_us),
                nn_cpu_us,
                nn_gpu_us,
                bytes_in: bytes_in as i64,
                bytes_out: bytes_out as i64,
            },
            nn_cpu_nodes: outcome.usage.nn.cpu_nodes,
            nn_gpu_nodes: outcome.usage.nn.gpu_nodes,
        };
        usage = format!("{}, {usage}, {}", record.meters.header_pairs(), record.node_pairs());
        commit_usage(&app, plan, record).await?;
    }
    if let Ok(value) = HeaderValue::from_str(&usage) {
        response.headers_mut().insert(USAGE_HEADER, value);
    }
    Ok(response)
}

/// The HTTP response a function answered, checked: a valid status, at most
/// `max_response_headers` headers with valid names and values, none of the host's own, and a
/// body of at most `max_response_bytes`. Anything else is the function's failure (500), named.
fn guest_response(app: &App, answer: crate::runtime::GuestResponse) -> Result<Response, ApiError> {
    let status = guest_status(answer.status)
        .ok_or_else(|| ApiError::Function(format!("function returned an invalid HTTP status {}", answer.status)))?;
    let max_body = app.config.server.max_response_bytes;
    if answer.body.len() as u64 > max_body {
        return Err(ApiError::Function(format!(
            "function returned a body of {} bytes, over the {max_body}-byte limit (server.max_response_bytes)",
            answer.body.len()
        )));
    }
    let max_headers = app.config.server.max_response_headers;
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

/// Admission: the tenant's rate, concurrency and budget, before anything runs. A refused call
/// is counted in `infercell_refused_total` and never billed; the returned guard holds the
/// concurrency slot until dropped.
pub(super) async fn admit<'a>(app: &'a App, tenant: &str) -> Result<(Admission, &'a Plan), ApiError> {
    let plan_name = app.tenants.plan_of(tenant).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no plan"))?;
    let plan = app.config.plans.get(&plan_name).ok_or_else(|| anyhow::anyhow!("unknown plan {plan_name}"))?;
    let spent = if plan.monthly_budget.is_some() {
        app.metering.month_to_date(tenant, &plan.prices).await?
    } else {
        rust_decimal::Decimal::ZERO
    };
    match app.quotas.admit(tenant, &plan_name, plan, spent) {
        Ok(admission) => Ok((admission, plan)),
        Err(refusal) => {
            app.metrics
                .refused
                .get_or_create(&RefusedLabels { tenant: tenant.to_string(), reason: refusal.reason().into() })
                .inc();
            Err(match refusal {
                Refusal::Rate { retry_after_secs, .. } => {
                    ApiError::TooManyRequests { message: refusal.to_string(), retry_after_secs }
                }
                Refusal::Concurrency { .. } => {
                    ApiError::TooManyRequests { message: refusal.to_string(), retry_after_secs: 1 }
                }
                Refusal::Budget { .. } => ApiError::PaymentRequired(refusal.to_string()),
            })
        }
    }
}

/// Commits a call's usage record; the answer goes out only once it is committed.
pub(super) async fn commit_usage(app: &App, plan: &Plan, record: UsageRecord) -> Result<(), ApiError> {
    let commit = std::time::Instant::now();
    app.metering
        .record(record, plan.monthly_budget.map(|_| &plan.prices))
        .await
        .map_err(|e| ApiError::Internal(e.context("the call ran but its usage could not be recorded")))?;
    app.metrics.usage_commit.observe(commit.elapsed().as_secs_f64());
    Ok(())
}

pub(super) fn invoke_error(e: InvokeError) -> ApiError {
    match e {
        InvokeError::Guest(GuestError::BadRequest(m)) => ApiError::BadRequest(m),
        InvokeError::Guest(GuestError::NotFound(m)) => ApiError::NotFound(m),
        InvokeError::Guest(GuestError::Internal(m)) => ApiError::Function(m),
        e @ InvokeError::Timeout(_) => ApiError::GatewayTimeout(e.to_string()),
        e @ InvokeError::Busy(_) => ApiError::Unavailable(e.to_string()),
        e @ InvokeError::WrongWorld(_) => ApiError::BadRequest(e.to_string()),
        e => ApiError::Function(e.to_string()),
    }
}

pub(super) fn outcome_label<T>(result: &Result<T, InvokeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(InvokeError::Guest(_)) => "guest_error",
        Err(InvokeError::Timeout(_)) => "timeout",
        Err(InvokeError::MemoryLimit { .. }) => "memory_limit",
        Err(InvokeError::FuelExhausted(_)) => "fuel_limit",
        Err(InvokeError::Trap(_)) => "trap",
        Err(InvokeError::Busy(_)) => "busy",
        Err(InvokeError::WrongWorld(_)) => "wrong_world",
    }
}

/// Host calls a guest was refused for want of a grant: audited (actor: the calling key),
/// counted in `infercell_denials_total`, and written to the function's log.
pub(super) async fn record_denials(
    app: &App,
    actor: &str,
    deployment: &crate::registry::Deployment,
    logs: &mut Vec<crate::runtime::LogLine>,
    denials: Vec<crate::runtime::Denial>,
) {
    // A guest can be denied in a loop: the first few are written out, the rest counted.
    const AUDITED: usize = 10;
    let total = denials.len();
    for (i, mut denial) in denials.into_iter().enumerate() {
        if denial.target.len() > 256 {
            let cut = (0..=256).rev().find(|i| denial.target.is_char_boundary(*i)).unwrap_or(0);
            denial.target.truncate(cut);
            denial.target.push('…');
        }
        if i == AUDITED {
            app.metrics
                .denials
                .get_or_create(&crate::metrics::DenialLabels {
                    tenant: deployment.tenant.clone(),
                    capability: denial.capability.to_string(),
                })
                .inc_by((total - AUDITED) as u64);
            logs.push(crate::runtime::LogLine {
                level: LogLevel::Warn,
                message: format!("[infercell] {} more denials in this call (not logged one by one)", total - AUDITED),
            });
            break;
        }
        app.metrics
            .denials
            .get_or_create(&crate::metrics::DenialLabels {
                tenant: deployment.tenant.clone(),
                capability: denial.capability.to_string(),
            })
            .inc();
        logs.push(crate::runtime::LogLine {
            level: LogLevel::Warn,
            message: format!(
                "[infercell] denied: {} `{}` ({}): grant it under [capabilities]",
                denial.capability, denial.target, denial.reason
            ),
        });
        let mut entry = crate::audit::entry(
            actor,
            Some(&deployment.tenant),
            &format!("deny:{}", denial.capability),
            Some(&denial.target),
            "denied",
        );
        entry.detail = Some(format!("function {}@{}: {}", deployment.name, deployment.version, denial.reason));
        app.audit.record(entry).await;
    }
}

/// Appends a call's log lines to its function's log, with the values of the secrets it is
/// granted redacted.
pub(super) fn record_logs(
    app: &App,
    deployment: &crate::registry::Deployment,
    request_id: &str,
    lines: Vec<crate::runtime::LogLine>,
    dropped: usize,
) {
    let version = deployment.version;
    if lines.is_empty() && dropped == 0 {
        return;
    }
    let time = crate::db::now();
    let mut entries: Vec<LogEntry> = lines
        .into_iter()
        .map(|l| LogEntry {
            time: time.clone(),
            request_id: request_id.to_string(),
            version,
            level: l.level,
            message: if deployment.redact.is_empty() {
                l.message
            } else {
                crate::registry::secrets::redact(&l.message, &deployment.redact)
            },
        })
        .collect();
    if dropped > 0 {
        entries.push(LogEntry {
            time,
            request_id: request_id.to_string(),
            version,
            level: LogLevel::Warn,
            message: format!(
                "[infercell] {dropped} bytes of log output dropped: over the per-call cap of {} bytes",
                app.runtime.config().max_log_bytes_per_call
            ),
        });
    }
    app.registry.logs.append(&deployment.tenant, &deployment.name, entries);
}

/// Counts a running instance for the `active_instances` gauge, even if the client goes away.
pub(super) struct ActiveGuard<'a>(&'a App);

impl<'a> ActiveGuard<'a> {
    pub(super) fn new(app: &'a App) -> Self {
        app.metrics.active_instances.inc();
        Self(app)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active_instances.dec();
    }
}
