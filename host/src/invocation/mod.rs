//! One call, from admission to its committed usage record.
//!
//! Every route that runs tenant code or a model (`ANY /fn/...`, `POST /v2/models/.../infer`)
//! goes through here, in this order:
//!
//! 1. **admit** ([`admit`]): the tenant's plan (looked up once per call), a GPU model's plan
//!    check, the monthly budget, the request rate and the concurrency limit. A refusal runs
//!    nothing and is never billed.
//! 2. **guard**: the concurrency slot and the active-instance gauge are held until the work ends.
//! 3. **run** ([`Work`]): a handler function, a tensor function (predictor) or a model.
//! 4. **effects** ([`effects`]): denials audited and counted, the function's log written,
//!    per-function metrics, `/v2` statistics.
//! 5. **encode**: the route's own encoder turns the answer into its protocol's response.
//! 6. **meters and commit**: the usage record is committed before the answer leaves; what is
//!    billed is decided from the [`Failure`] value (a refusal, [`Failure::refused`], is not),
//!    never from an HTTP status.
//! 7. **usage header** (`infercell-usage`).
//!
//! Steps 2 to 7 run in a task of their own: a client that disconnects mid-call does not
//! cancel the call, which is committed all the same. A call cut by its deadline while an
//! engine computes ends when the engine stops, and is billed for the engine time it used
//! (see [`crate::nn::NnMeter`]).
//!
//! Handlers only parse the request (before or after [`admit`], as their protocol needs) and
//! encode the answer.

pub mod effects;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::config::Plan;
use crate::error::ApiError;
use crate::metering::quota::{Admission, Refusal};
use crate::metering::{Kind, Meters, Outcome, UsageRecord, now_us};
use crate::nn::{HostTensor, NnError, NnMeter, NnRefusal, NnUsage};
use crate::oip::Tensor;
use crate::registry::Deployment;
use crate::registry::models::ModelVersion;
use crate::runtime::{CallUsage, GuestRequest, GuestResponse, InvokeError, PredictTensor};

/// Header carrying the meters of an invocation.
pub const USAGE_HEADER: &str = "infercell-usage";

/// What a call is admitted for, before its request is parsed.
pub enum Target<'a> {
    /// A function version (handler or predictor world).
    Function(&'a Deployment),
    /// A model version, served under `/v2`.
    Model(&'a ModelVersion),
}

/// A call admitted by its tenant's plan: holds the concurrency slot until the call ends.
pub struct Admitted {
    app: Arc<App>,
    tenant: String,
    plan: Plan,
    slot: Admission,
}

/// Admits one call of `tenant` (see the module docs): its plan allows it (a GPU model needs a
/// plan with the GPU, and a GPU), its budget is not spent, it is within its rate and
/// concurrency. Refusals are counted in `infercell_refused_total` and never billed.
#[tracing::instrument(target = "infercell::call", level = "debug", name = "admit", skip_all, fields(tenant = %tenant))]
pub async fn admit(app: &Arc<App>, tenant: &str, target: Target<'_>) -> Result<Admitted, ApiError> {
    let plan_name = app.tenants.plan_of(tenant).ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no plan"))?;
    let plan = app.config.plans.get(&plan_name).ok_or_else(|| anyhow::anyhow!("unknown plan {plan_name}"))?;
    if let Target::Model(model) = target {
        let selected = crate::registry::models::selector(&model.engine, &model.device);
        if selected == "wgpu"
            && let Err(e) = app.graphs.select(&selected, plan.gpu)
        {
            refused(app, tenant, "gpu");
            return Err(e.into());
        }
    }
    let spent = match plan.monthly_budget {
        Some(_) => app.metering.month_to_date(tenant, &plan.prices).await?,
        None => rust_decimal::Decimal::ZERO,
    };
    match app.quotas.admit(tenant, &plan_name, plan, spent) {
        Ok(slot) => Ok(Admitted { app: app.clone(), tenant: tenant.to_string(), plan: plan.clone(), slot }),
        Err(refusal) => {
            refused(app, tenant, refusal.reason());
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

/// Mirrored calls running at once, platform-wide; a copy that finds none free is dropped.
pub const SHADOW_SLOTS: usize = 8;
/// ... and of one tenant, so that one tenant's slow mirror does not starve the others'.
pub const SHADOW_SLOTS_PER_TENANT: usize = 2;

/// Admits a mirrored copy of a call (see [`crate::releases`]): it takes none of the tenant's
/// rate or concurrency (a mirror must not cost the live calls anything) but one of the
/// platform's [`SHADOW_SLOTS`], at most [`SHADOW_SLOTS_PER_TENANT`] of them per tenant;
/// `None` when none is free.
pub fn admit_shadow(app: &Arc<App>, tenant: &str) -> Option<Admitted> {
    let plan_name = app.tenants.plan_of(tenant)?;
    let plan = app.config.plans.get(&plan_name)?.clone();
    let mine = app
        .shadow_slots_per_tenant
        .lock()
        .ok()?
        .entry(tenant.to_string())
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(SHADOW_SLOTS_PER_TENANT)))
        .clone()
        .try_acquire_owned()
        .ok()?;
    let slot = app.shadow_slots.clone().try_acquire_owned().ok()?;
    Some(Admitted { app: app.clone(), tenant: tenant.to_string(), plan, slot: Admission::of(slot).with(mine) })
}

/// Counts a refused call.
fn refused(app: &App, tenant: &str, reason: &str) {
    app.metrics.refused(tenant, reason);
}

/// Who is calling, and the request's own figures.
pub struct Call {
    pub request_id: String,
    /// The calling key's id: the actor of the denials this call meets.
    pub actor: String,
    /// Bytes of the request body.
    pub bytes_in: usize,
    /// When the request was received (its parsing counts in `/v2` statistics).
    pub received: Instant,
    /// A mirrored copy (billed as [`Kind::Shadow`], not in the function's metrics or `/v2`
    /// statistics).
    pub shadow: bool,
    /// Told the answer's status once the call ends, in the call's own task: a call whose
    /// client hung up is still counted (a release's canary health).
    pub on_answer: Option<OnAnswer>,
}

/// See [`Call::on_answer`].
pub type OnAnswer = Box<dyn FnOnce(axum::http::StatusCode) + Send + Sync>;

/// What a call runs.
pub enum Work {
    /// An HTTP function (`handler` world), at `/fn`.
    Handler { deployment: Arc<Deployment>, request: GuestRequest },
    /// A tensor function (`predictor` world), at `/v2`.
    Predictor { deployment: Arc<Deployment>, inputs: Vec<Tensor> },
    /// A model, at `/v2`, with its inputs in the model's declared order.
    Model { model: ModelVersion, inputs: Vec<(String, HostTensor)> },
}

/// What the work answered.
pub enum Answer {
    Response(GuestResponse),
    Tensors(Vec<Tensor>),
}

/// Why the work gave no answer.
#[derive(Debug)]
pub enum Failure {
    /// The function did not answer (its error value, a trap, a limit, no instance slot).
    Invoke(InvokeError),
    /// The model failed, or its engine refused the work.
    Nn(NnError),
    /// A predictor returned a tensor that is not valid.
    InvalidOutput(String),
}

impl Failure {
    /// Whether nothing ran: no instance slot, no engine room. Refused calls are not billed.
    pub fn refused(&self) -> bool {
        match self {
            Failure::Invoke(e) => matches!(e, InvokeError::Busy(_) | InvokeError::WrongWorld(_)),
            Failure::Nn(e) => e.refusal.is_some(),
            Failure::InvalidOutput(_) => false,
        }
    }

    /// The stored outcome of a call that ran and failed so.
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Invoke(InvokeError::Guest(_)) => Outcome::GuestError,
            Failure::Invoke(InvokeError::Timeout(_)) => Outcome::Timeout,
            Failure::Invoke(InvokeError::MemoryLimit { .. }) => Outcome::MemoryLimit,
            Failure::Invoke(InvokeError::FuelExhausted(_)) => Outcome::FuelLimit,
            Failure::Invoke(InvokeError::Trap(_)) => Outcome::Trap,
            Failure::Nn(NnError { code: crate::nn::ErrorCode::Timeout, .. }) => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }

    /// `infercell_refused_total`'s reason for a refusal.
    fn refusal_reason(&self) -> &'static str {
        match self {
            Failure::Nn(NnError { refusal: Some(NnRefusal::TooLarge), .. }) => "gpu_too_large",
            Failure::Nn(_) => "gpu_busy",
            _ => "busy",
        }
    }
}

/// What running the work produced, before it is encoded.
struct Ran {
    result: Result<Answer, Failure>,
    /// The sandbox's meters (functions only).
    guest: Option<CallUsage>,
    nn: NnUsage,
    /// Time the work itself took.
    took: Duration,
}

/// Answers past this many tensor bytes are encoded on a compute thread, within the tenant's
/// share: encoding a megabyte of JSON takes milliseconds, which on an async thread would hold
/// up every other tenant's calls behind it.
const ENCODE_INLINE_MAX: usize = 64 << 10;

async fn encode_off_executor(app: &App, tenant: &str, answer: Answer, encode: Encode) -> Result<Response, ApiError> {
    let bytes = match &answer {
        Answer::Tensors(tensors) => tensors.iter().map(|t| t.data.len()).sum(),
        Answer::Response(_) => 0,
    };
    if bytes <= ENCODE_INLINE_MAX {
        return encode(answer);
    }
    app.graphs
        .compute_for(tenant, move || Ok(encode(answer)))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding the answer failed: {}", e.message)))?
}

/// The route's encoder: the answer in its protocol's response. An `Err` means the answer
/// cannot be sent (a response the host refuses, an output the caller did not ask for): the
/// call is then an [`Outcome::Error`] answered with that error.
pub type Encode = Box<dyn FnOnce(Answer) -> Result<Response, ApiError> + Send>;

impl Admitted {
    /// The plan the call was admitted under.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs `work` for `call` and answers with `encode`; the rest of the lifecycle (see the
    /// module docs) happens here, in a task that outlives a client who goes away.
    pub async fn run(self, call: Call, work: Work, encode: Encode) -> Result<Response, ApiError> {
        let calls = self.app.calls.clone();
        let mirrored = call.shadow;
        calls
            .spawn(
                crate::nn::MIRRORED
                    .scope(mirrored, tracing::Instrument::in_current_span(self.lifecycle(call, work, encode))),
            )
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("the call's task failed: {e}")))?
    }

    async fn lifecycle(self, mut call: Call, work: Work, encode: Encode) -> Result<Response, ApiError> {
        let on_answer = call.on_answer.take();
        let answered = self.answer(call, work, encode).await;
        if let Some(on_answer) = on_answer {
            on_answer(answered.as_ref().map_or_else(ApiError::status, Response::status));
        }
        answered
    }

    async fn answer(self, call: Call, work: Work, encode: Encode) -> Result<Response, ApiError> {
        let Admitted { app, tenant, plan, slot } = self;
        let started_us = now_us();
        let started = Instant::now();
        let (kind, name, version, deployment) = match &work {
            Work::Handler { deployment, .. } | Work::Predictor { deployment, .. } => {
                (Kind::Function, deployment.name.clone(), deployment.version, Some(deployment.clone()))
            }
            Work::Model { model, .. } => (Kind::Model, model.name.clone(), model.version, None),
        };
        let metered_kind = if matches!(kind, Kind::Model) { "model" } else { "function" };
        let route = if matches!(work, Work::Handler { .. }) { "fn" } else { "v2" };
        let kind = if call.shadow { Kind::Shadow } else { kind };
        let served_v2 = !matches!(work, Work::Handler { .. }) && !call.shadow;

        let active = effects::ActiveGuard::new(&app);
        let ran = execute(&app, &tenant, &call, &plan, work).await;
        drop(active);
        drop(slot);
        if let Some(guest) = ran.guest.as_ref().filter(|g| !g.instantiate.is_zero() && !call.shadow) {
            app.metrics.instantiate.observe(guest.instantiate.as_secs_f64());
        }

        let outcome = match &ran.result {
            Ok(_) => Some(Outcome::Ok),
            Err(f) if f.refused() => None,
            Err(f) => Some(f.outcome()),
        };
        if let (None, Err(failure)) = (outcome, &ran.result) {
            refused(&app, &tenant, failure.refusal_reason());
        }

        let encode_started = Instant::now();
        let (mut response, outcome) = match ran.result {
            Ok(answer) => match encode_off_executor(&app, &tenant, answer, encode).await {
                Ok(response) => (response, outcome),
                Err(e) => (e.into_response(), Some(Outcome::Error)),
            },
            Err(failure) => (ApiError::from(failure).into_response(), outcome),
        };
        if let (Some(deployment), Some(outcome), false) = (&deployment, outcome, call.shadow) {
            let fm = deployment.metrics.get_or_init(|| app.metrics.function(&tenant, &deployment.name));
            fm.duration.observe(ran.took.as_secs_f64());
            fm.outcome(outcome).inc();
        }
        let wall = started.elapsed();
        if served_v2 {
            app.oip_stats.record(
                &tenant,
                &name,
                version,
                matches!(kind, Kind::Function),
                &stats::Timings {
                    ok: outcome == Some(Outcome::Ok),
                    total: call.received.elapsed(),
                    input: started.saturating_duration_since(call.received),
                    infer: ran.took,
                    output: encode_started.elapsed(),
                },
            );
        }

        let (received, shadow) = (call.received, call.shadow);
        let wall_us = wall.as_micros() as i64;
        let mut header = format!("version={version}, wall_ms={:.3}", wall.as_secs_f64() * 1e3);
        if let Some(guest) = &ran.guest {
            header.push_str(&format!(", memory_peak_bytes={}", guest.peak_memory_bytes));
        }
        let mut failed = None;
        if let Some(outcome) = outcome {
            let bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0) as i64;
            let record = UsageRecord {
                request_id: call.request_id,
                tenant: tenant.clone(),
                kind,
                function: name.clone(),
                version,
                started_us,
                ended_us: started_us + wall_us,
                outcome,
                status: response.status().as_u16(),
                meters: meters(ran.guest.as_ref(), &ran.nn, call.bytes_in, bytes_out),
                nn_cpu_nodes: ran.nn.cpu_nodes,
                nn_gpu_nodes: ran.nn.gpu_nodes,
            };
            header = format!("{}, {header}, {}", record.meters.header_pairs(), record.node_pairs());
            failed = commit(&app, &plan, &tenant, record).await.err();
        }
        // The request series: every admitted call, refused ones after admission (no instance
        // slot, no GPU room) included; a mirrored copy has none (its caller never sees it).
        if !shadow {
            let status = failed.as_ref().map_or_else(|| response.status(), ApiError::status);
            let site = crate::metrics::CallSite { tenant: &tenant, kind: metered_kind, name: &name, version, route };
            app.metrics.request(site, status.as_u16(), received.elapsed());
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Ok(value) = HeaderValue::from_str(&header) {
            response.headers_mut().insert(USAGE_HEADER, value);
        }
        Ok(response)
    }
}

/// The meters of a call that ran: the sandbox's (a function's) and the engine's.
fn meters(guest: Option<&CallUsage>, nn: &NnUsage, bytes_in: usize, bytes_out: i64) -> Meters {
    let (nn_cpu_us, nn_gpu_us) = nn.micros();
    let mut meters =
        Meters { invocations: 1, nn_cpu_us, nn_gpu_us, bytes_in: bytes_in as i64, bytes_out, ..Meters::default() };
    if let Some(usage) = guest {
        let wall_us = usage.wall.as_micros() as i64;
        let pages = usage.peak_memory_bytes.div_ceil(65_536) as i64;
        meters.guest_us = wall_us.saturating_sub(nn_cpu_us + nn_gpu_us);
        meters.fuel = usage.fuel.min(i64::MAX as u64) as i64;
        meters.memory_page_us = pages.saturating_mul(wall_us);
        meters.http_requests = usage.http_requests as i64;
        meters.http_bytes = usage.http_bytes as i64;
    }
    meters
}

/// Commits a call's usage record; the answer goes out only once it is committed.
#[tracing::instrument(target = "infercell::call", level = "debug", name = "commit", skip_all)]
async fn commit(app: &App, plan: &Plan, tenant: &str, record: UsageRecord) -> Result<(), ApiError> {
    let commit = Instant::now();
    let cost = record.meters.cost(&plan.prices);
    let waiting = Backlog::new(&app.metrics.usage_backlog);
    let recorded = app.metering.record(record, plan.monthly_budget.map(|_| cost)).await;
    drop(waiting);
    if recorded.is_err() {
        app.metrics.usage_commit_failures.inc();
    }
    recorded.map_err(|e| ApiError::Internal(e.context("the call ran but its usage could not be recorded")))?;
    app.metrics.usage_commit.observe(commit.elapsed().as_secs_f64());
    app.metrics.cost(tenant, &plan.currency, rust_decimal::prelude::ToPrimitive::to_f64(&cost).unwrap_or(0.0));
    Ok(())
}

/// A usage record handed to the writer and not yet committed (`infercell_usage_backlog_records`).
struct Backlog<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Backlog<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs the work: a function in a fresh sandbox, or a model on its engine.
async fn execute(app: &Arc<App>, tenant: &str, call: &Call, plan: &Plan, work: Work) -> Ran {
    let started = Instant::now();
    match work {
        Work::Handler { deployment, request } => {
            let mut outcome =
                app.runtime.invoke(&deployment.prepared, &deployment.limits, &deployment.grants, request).await;
            effects::after_function(app, &call.actor, &call.request_id, &deployment, &mut outcome).await;
            Ran {
                result: outcome.result.map(Answer::Response).map_err(Failure::Invoke),
                nn: outcome.usage.nn,
                guest: Some(outcome.usage),
                took: started.elapsed(),
            }
        }
        Work::Predictor { deployment, inputs } => {
            let inputs = inputs
                .into_iter()
                .map(|t| PredictTensor { name: t.name, datatype: t.datatype, shape: t.shape, data: t.data })
                .collect();
            let mut outcome =
                app.runtime.predict(&deployment.prepared, &deployment.limits, &deployment.grants, inputs).await;
            effects::after_function(app, &call.actor, &call.request_id, &deployment, &mut outcome).await;
            let result = outcome.result.map_err(Failure::Invoke).and_then(|tensors| {
                tensors
                    .into_iter()
                    .map(|t| {
                        let tensor = Tensor { name: t.name, datatype: t.datatype, shape: t.shape, data: t.data };
                        crate::oip::check_tensor(&tensor)
                            .map_err(|e| Failure::InvalidOutput(format!("the predictor returned {e}")))?;
                        Ok(tensor)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Answer::Tensors)
            });
            Ran { result, nn: outcome.usage.nn, guest: Some(outcome.usage), took: started.elapsed() }
        }
        Work::Model { model, inputs } => {
            let meter = Arc::new(NnMeter::default());
            let deadline = plan.model_timeout();
            let run = async {
                let load = app.registry.models.load(tenant, &model, plan.gpu);
                let span = tracing::debug_span!(target: "infercell::call", "nn.load", model = %model.name, version = model.version);
                let (graph, load_time) = tracing::Instrument::instrument(load, span).await?;
                meter.add_load(load_time);
                let named = crate::nn::ModelRef { name: model.name.clone(), version: model.version };
                app.graphs.run_model(tenant, Some(&named), graph, inputs, &meter, plan.model_memory).await
            };
            let result = match tokio::time::timeout(deadline, run).await {
                Ok(result) => result,
                Err(_) => {
                    // The plan's deadline: the compute stops at its next boundary, and the call
                    // is billed the time it used.
                    meter.cancel.cancel();
                    Err(NnError::new(
                        crate::nn::ErrorCode::Timeout,
                        format!(
                            "model timed out after {} (the plan's model_timeout)",
                            humantime::format_duration(deadline)
                        ),
                    ))
                }
            };
            // A compute handed to its thread ends (and is metered) even if this call is gone.
            meter.settled().await;
            let result = result
                .map(|outputs| {
                    Answer::Tensors(
                        outputs
                            .into_iter()
                            .map(|(name, t)| Tensor {
                                name,
                                datatype: t.ty.oip_name().to_string(),
                                shape: t.dims.iter().map(|d| i64::from(*d)).collect(),
                                data: t.data,
                            })
                            .collect(),
                    )
                })
                .map_err(Failure::Nn);
            Ran { result, nn: meter.usage(), guest: None, took: started.elapsed() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ErrorCode;
    use crate::runtime::GuestError;

    #[test]
    fn billing_follows_the_outcome_not_the_status() {
        // Nothing ran: not billed.
        assert!(Failure::Invoke(InvokeError::Busy("no slot".into())).refused());
        assert!(Failure::Nn(NnError::busy("GPU memory held by running models")).refused());
        assert!(Failure::Nn(NnError::too_large_for_device("over the GPU budget")).refused());
        // It ran: billed, whatever the status it maps to.
        for ran in [
            Failure::Invoke(InvokeError::Timeout(Duration::from_secs(1))),
            Failure::Invoke(InvokeError::Guest(GuestError::Internal("x".into()))),
            Failure::Nn(NnError::new(ErrorCode::TooLarge, "an output over the limit")),
            Failure::Nn(NnError::new(ErrorCode::InvalidArgument, "bad input")),
            Failure::InvalidOutput("bad tensor".into()),
        ] {
            assert!(!ran.refused(), "{ran:?}");
        }
        assert_eq!(Failure::Invoke(InvokeError::Timeout(Duration::from_secs(1))).outcome(), Outcome::Timeout);
        assert_eq!(Failure::Nn(NnError::new(ErrorCode::InvalidArgument, "x")).outcome(), Outcome::Error);
    }
}
