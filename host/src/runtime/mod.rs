//! The WebAssembly runtime: the only module that names wasmtime types.
//!
//! Three lifetimes, as in `wasmtime serve` and Spin:
//! - process: one [`Runtime`] holds the `Engine` (pooling allocator, epoch interruption, fuel),
//!   the `Linker` with every host interface, and the on-disk artifact cache;
//! - deployment: a [`Prepared`] function version holds its compiled `Component` and
//!   `InstancePre`, so a call never compiles or resolves imports;
//! - request: [`Runtime::invoke`] makes a fresh `Store` with no ambient authority, runs one call
//!   under the version's limits and drops the store before it returns.
//!
//! Guests are told about their own mistakes through WIT error values; anything else the guest
//! does wrong (a trap, running out of time, memory or fuel) becomes an [`InvokeError`] that the
//! server maps to a status code in one place.

mod artifacts;
mod config;
pub mod http;
mod log;
pub mod nn;
mod state;
mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::Instrument as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use artifacts::ArtifactCache;
pub use log::{LogLevel, LogLine};
use state::InstanceState;
pub use validate::{ComponentInfo, InspectReport, ValidateError, grants_needed, inspect};
use validate::{check_header, describe, is_provided, needs_grant};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "infercell:function/handler",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:nn/tensor.tensor": crate::nn::HostTensor,
            "wasi:nn/graph.graph": super::nn::Graph,
            "wasi:nn/inference.graph-execution-context": super::nn::ExecContext,
            "wasi:nn/errors.error": crate::nn::NnError,
        },
    });
}

/// The `predictor` world: the same imports (shared with the handler world's bindings, so one
/// linker serves both), exporting `predict` instead of `incoming-handler`.
mod predictor_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "infercell:function/predictor",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "infercell:function/types": super::bindings::infercell::function::types,
            "infercell:function/log": super::bindings::infercell::function::log,
            "infercell:function/config": super::bindings::infercell::function::config,
            "wasi:nn/tensor": super::bindings::wasi::nn::tensor,
            "wasi:nn/graph": super::bindings::wasi::nn::graph,
            "wasi:nn/inference": super::bindings::wasi::nn::inference,
            "wasi:nn/errors": super::bindings::wasi::nn::errors,
        },
    });
}

use bindings::infercell::function::types as wit_types;
/// A named tensor as a predictor takes and returns it (the WIT `tensor` record).
pub use wit_types::Tensor as PredictTensor;

/// The export every HTTP function must provide.
pub const HANDLER_EXPORT: &str = "infercell:function/incoming-handler@0.1.0";
/// The export of a tensor function (the `predictor` world), served under `/v2` like a model.
pub const PREDICT_EXPORT: &str = "infercell:function/predict@0.1.0";

/// Process-wide settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How many instances may be alive at once across all tenants (pooling allocator slots).
    pub max_instances: u32,
    /// The largest linear memory any function may ask for (the biggest plan's cap).
    pub max_memory_bytes: u64,
    /// Granularity of timeouts and of cooperative yields to the async executor.
    pub epoch_tick: Duration,
    /// Bytes of stdout, stderr and log lines kept per call; the rest is dropped and counted.
    pub max_log_bytes_per_call: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 512 << 20,
            epoch_tick: Duration::from_millis(10),
            max_log_bytes_per_call: 64 << 10,
        }
    }
}

/// Per-version limits, already capped by the tenant's plan.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// Guest instructions (wasmtime fuel) per call; `None` = no limit beyond the timeout.
    pub fuel: Option<u64>,
}

/// An HTTP request as the function sees it (`infercell:function/types.request`).
#[derive(Debug, Clone, Default)]
pub struct GuestRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the function answered.
#[derive(Debug, Clone, Default)]
pub struct GuestResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The error variant a function returned (`infercell:function/types.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

/// Why a call produced no response from the guest.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("{0}")]
    Guest(GuestError),
    #[error("function timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("function exceeded its memory limit of {} MiB ({trap})", *.limit as f64 / 1048576.0)]
    MemoryLimit { limit: u64, trap: String },
    #[error("function used up its fuel limit of {0} instructions")]
    FuelExhausted(u64),
    #[error("function trapped: {0}")]
    Trap(String),
    #[error("no instance slot free ({0}); try again shortly")]
    Busy(String),
    /// Called through the other world's entry point (`/fn` on a predictor, `/v2` on a handler).
    #[error("{0}")]
    WrongWorld(&'static str),
}

/// Meters of one call, measured by the host.
#[derive(Debug, Clone, Default)]
pub struct CallUsage {
    /// Wall time from store creation to the end of the call.
    pub wall: Duration,
    /// Guest instructions executed (fuel consumed).
    pub fuel: u64,
    /// Highest linear-memory size the guest reached.
    pub peak_memory_bytes: u64,
    /// Host inference: CPU time (graph loads and computes), GPU time, nodes per device.
    pub nn: crate::nn::NnUsage,
    /// Outbound HTTP requests sent.
    pub http_requests: u64,
    /// Outbound HTTP body bytes sent and received.
    pub http_bytes: u64,
    /// Time to instantiate the sandbox (zero when it never was).
    pub instantiate: Duration,
}

/// What a call may reach beyond its own sandbox: everything here is granted by the function's
/// manifest (within its plan); the default is nothing at all.
#[derive(Clone, Default)]
pub struct Grants {
    /// `config` values the guest reads through `infercell:function/config`.
    pub config: Arc<Vec<(String, String)>>,
    /// wasi:nn: the models it may load and what it may spend. `None`: no wasi:nn at all.
    pub nn: Option<nn::NnAccess>,
    /// A directory holding exactly the tenant files it is granted, preopened read-only at
    /// `/files`. `None`: no directory at all.
    pub files: Option<Arc<std::path::Path>>,
    /// Hosts it may send HTTP requests to (`wasi:http/outgoing-handler`); empty: none.
    pub allowed_hosts: Arc<Vec<String>>,
    /// What granted requests may still not do: the operator's address policy and the plan's
    /// per-call caps.
    pub network: Arc<http::Network>,
}

/// The host calls one call was refused for want of a grant: one list, shared by every
/// capability of the call (wasi:nn, outbound HTTP), drained once when the call ends.
#[derive(Debug, Clone, Default)]
pub struct Denials(Arc<std::sync::Mutex<Vec<Denial>>>);

impl Denials {
    /// Records a refusal: the server audits it, counts it and writes it to the function's log.
    pub fn push(&self, capability: &'static str, target: &str, reason: &str) {
        let denial = Denial { capability, target: target.to_string(), reason: reason.to_string() };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(denial);
    }

    /// Every refusal so far, emptying the list.
    pub fn take(&self) -> Vec<Denial> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A host call refused for want of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The grant it needed: `models`, `gpu`, `wasi-nn`.
    pub capability: &'static str,
    /// What it reached for (a model name, ...).
    pub target: String,
    pub reason: String,
}

impl<T> Outcome<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        Outcome {
            result: self.result.map(f),
            usage: self.usage,
            logs: self.logs,
            logs_dropped: self.logs_dropped,
            denials: self.denials,
        }
    }

    /// A call that never ran.
    fn refused(e: InvokeError) -> Self {
        Outcome { result: Err(e), usage: CallUsage::default(), logs: Vec::new(), logs_dropped: 0, denials: Vec::new() }
    }
}

/// The result of [`Runtime::invoke`]: the answer plus what the call cost and logged.
#[derive(Debug)]
pub struct Outcome<T = GuestResponse> {
    pub result: Result<T, InvokeError>,
    pub usage: CallUsage,
    pub logs: Vec<LogLine>,
    /// Bytes of log output dropped because the call went over its log cap.
    pub logs_dropped: usize,
    /// Host calls refused for want of a grant.
    pub denials: Vec<Denial>,
}

/// A deployed function version, compiled and linked, ready to instantiate per call.
pub struct Prepared {
    pre: Pre,
    pub info: ComponentInfo,
}

/// Which world a component implements.
enum Pre {
    Handler(bindings::HandlerPre<InstanceState>),
    Predictor(predictor_bindings::PredictorPre<InstanceState>),
}

impl Prepared {
    /// Whether this is a tensor function (`predictor` world), served under `/v2`.
    pub fn is_predictor(&self) -> bool {
        matches!(self.pre, Pre::Predictor(_))
    }
}

/// What a call asks of a component.
enum Call {
    Handle(wit_types::Request),
    Predict(Vec<PredictTensor>),
}

/// What a component answered.
enum Answer {
    Response(wit_types::Response),
    Tensors(Vec<PredictTensor>),
}

/// The process-wide runtime (see the module docs).
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
    config: RuntimeConfig,
    artifacts: ArtifactCache,
    ticker: EpochTicker,
    /// Instances alive now (instantiated, not yet dropped): each holds a pooling slot.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one live instance until dropped.
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Live {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: RuntimeConfig, artifacts_dir: cap_std::fs::Dir) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let mut linker = Linker::<InstanceState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from).context("linking WASI 0.2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        // Each capability links itself over its own part of the store's state.
        log::add_to_linker(&mut linker, |s| &mut s.log)?;
        config::add_to_linker(&mut linker, |s| &mut s.config)?;
        nn::add_to_linker(&mut linker, |s| nn::NnView { ctx: &mut s.nn, table: &mut s.table })?;
        let artifacts = ArtifactCache::new(artifacts_dir, &engine);
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick);
        Ok(Self { engine, linker, config, artifacts, ticker, live: Default::default() })
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// How many instances are alive now, each holding one of `max_instances` pooling slots.
    pub fn live_instances(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops the compiled artifact of a component no version names any more.
    pub fn forget_artifact(&self, digest: &str) {
        self.artifacts.remove(digest);
    }

    /// Checks that `bytes` is a component this platform can run, compiles it and stores the
    /// compiled artifact under `digest`. Blocking (compilation): call it off the executor.
    ///
    /// (See also [`Runtime::forget_artifact`].)
    pub fn prepare_new(&self, digest: &str, bytes: &[u8]) -> Result<Prepared, ValidateError> {
        check_header(bytes)?;
        let component = Component::new(&self.engine, bytes).map_err(|e| ValidateError::Invalid(format!("{e:#}")))?;
        let prepared = self.link(component.clone())?;
        if let Err(e) = self.artifacts.store(digest, &component) {
            // The cache is an optimisation: a failed write means a recompile after restart.
            tracing::warn!(digest, error = %format!("{e:#}"), "could not cache compiled artifact");
        }
        Ok(prepared)
    }

    /// Loads a stored version: the cached artifact when it is intact, else recompiles `bytes()`.
    /// Blocking: call it off the executor.
    pub fn prepare_stored(
        &self,
        digest: &str,
        bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Prepared> {
        let component = match self.artifacts.load(digest) {
            Some(component) => component,
            None => {
                let bytes = bytes()?;
                let component = Component::new(&self.engine, &bytes)
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("recompiling component {digest}"))?;
                if let Err(e) = self.artifacts.store(digest, &component) {
                    tracing::warn!(digest, error = %format!("{e:#}"), "could not cache compiled artifact");
                }
                component
            }
        };
        self.link(component).map_err(anyhow::Error::from)
    }

    fn link(&self, component: Component) -> Result<Prepared, ValidateError> {
        let info = describe(&self.engine, &component);
        let unknown: Vec<&str> = info.imports.iter().map(String::as_str).filter(|name| !is_provided(name)).collect();
        if let Some(message) = unknown.iter().find_map(|name| needs_grant(name)) {
            return Err(ValidateError::NeedsGrant(message));
        }
        if !unknown.is_empty() {
            return Err(ValidateError::UnknownImports(unknown.join(", ")));
        }
        let exports = |name: &str| info.exports.iter().any(|e| e == name);
        let link_error = |e: wasmtime::Error| ValidateError::Link(format!("{e:#}"));
        let pre = self.linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = if exports(HANDLER_EXPORT) {
            Pre::Handler(bindings::HandlerPre::new(pre).map_err(link_error)?)
        } else if exports(PREDICT_EXPORT) {
            Pre::Predictor(predictor_bindings::PredictorPre::new(pre).map_err(link_error)?)
        } else {
            let found = if info.exports.is_empty() { "none".to_string() } else { info.exports.join(", ") };
            return Err(ValidateError::NoHandler(found));
        };
        Ok(Prepared { pre, info })
    }

    /// Runs one HTTP call in a fresh store under `limits`. Never panics on guest behaviour.
    pub async fn invoke(
        &self,
        prepared: &Prepared,
        limits: &Limits,
        grants: &Grants,
        request: GuestRequest,
    ) -> Outcome {
        if prepared.is_predictor() {
            return Outcome::refused(InvokeError::WrongWorld(
                "this function is a predictor: call it through /v2/models/{name}/infer",
            ));
        }
        let req = wit_types::Request {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body,
        };
        self.execute(prepared, limits, grants, Call::Handle(req)).await.map(|answer| match answer {
            Answer::Response(resp) => GuestResponse { status: resp.status, headers: resp.headers, body: resp.body },
            Answer::Tensors(_) => GuestResponse::default(),
        })
    }

    /// Runs one `predict` call of a tensor function in a fresh store under `limits`.
    pub async fn predict(
        &self,
        prepared: &Prepared,
        limits: &Limits,
        grants: &Grants,
        inputs: Vec<PredictTensor>,
    ) -> Outcome<Vec<PredictTensor>> {
        if !prepared.is_predictor() {
            return Outcome::refused(InvokeError::WrongWorld("this function is an HTTP handler, not a predictor"));
        }
        self.execute(prepared, limits, grants, Call::Predict(inputs)).await.map(|answer| match answer {
            Answer::Tensors(tensors) => tensors,
            Answer::Response(_) => Vec::new(),
        })
    }

    async fn execute(&self, prepared: &Prepared, limits: &Limits, grants: &Grants, call: Call) -> Outcome<Answer> {
        let started = Instant::now();
        let state = InstanceState::new(limits.memory_bytes, grants, self.config.max_log_bytes_per_call);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel_budget = limits.fuel.unwrap_or(u64::MAX);
        // set_fuel only fails when fuel is disabled in the engine, which it never is here.
        let _ = store.set_fuel(fuel_budget);
        // Yield to the executor every tick so a busy guest never starves the server; the
        // wall-clock timeout below cancels it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let mut instantiate = Duration::ZERO;
        let run = async {
            let begun = Instant::now();
            match (&prepared.pre, call) {
                (Pre::Handler(pre), Call::Handle(req)) => {
                    let instance = pre
                        .instantiate_async(&mut store)
                        .instrument(tracing::debug_span!(target: "infercell::call", "instantiate"))
                        .await?;
                    instantiate = begun.elapsed();
                    let _live = Live::new(&self.live);
                    let handler = instance.infercell_function_incoming_handler();
                    let result = handler
                        .call_handle(&mut store, &req)
                        .instrument(tracing::debug_span!(target: "infercell::call", "run"))
                        .await?;
                    Ok(result.map(Answer::Response))
                }
                (Pre::Predictor(pre), Call::Predict(inputs)) => {
                    let instance = pre
                        .instantiate_async(&mut store)
                        .instrument(tracing::debug_span!(target: "infercell::call", "instantiate"))
                        .await?;
                    instantiate = begun.elapsed();
                    let _live = Live::new(&self.live);
                    let predictor = instance.infercell_function_predict();
                    let result = predictor
                        .call_predict(&mut store, &inputs)
                        .instrument(tracing::debug_span!(target: "infercell::call", "run"))
                        .await?;
                    Ok(result.map(Answer::Tensors))
                }
                // `invoke` and `predict` check the world first.
                _ => Err(wasmtime::Error::msg("called through the other world's entry point")),
            }
        };
        let result: Result<wasmtime::Result<Result<Answer, wit_types::Error>>, _> =
            tokio::time::timeout(limits.timeout, run).await;
        if result.is_err() {
            // Cut by its deadline: a compute it started stops at its next boundary (a tract
            // node, ONNX Runtime's terminate flag, a GPU dispatch); the call ends (and is
            // billed the engine time it used) once that compute has returned.
            store.data().nn.meter.cancel.cancel();
            store.data().nn.meter.settled().await;
        }

        let fuel_left = store.get_fuel().unwrap_or(fuel_budget);
        let state = store.data_mut();
        let (http_requests, http_bytes) = state.http.meter.usage();
        let usage = CallUsage {
            wall: started.elapsed(),
            fuel: fuel_budget.saturating_sub(fuel_left),
            peak_memory_bytes: state.limiter.peak(),
            nn: state.nn.meter.usage(),
            http_requests,
            http_bytes,
            instantiate,
        };
        let memory_hit = state.limiter.limit_hit();
        let denials = state.denials.take();
        let (mut logs, logs_dropped) = state.take_logs();
        let result = match result {
            Err(_elapsed) => Err(InvokeError::Timeout(limits.timeout)),
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(e))) => Err(InvokeError::Guest(match e {
                wit_types::Error::BadRequest(m) => GuestError::BadRequest(m),
                wit_types::Error::NotFound(m) => GuestError::NotFound(m),
                wit_types::Error::Internal(m) => GuestError::Internal(m),
            })),
            Ok(Err(err)) => {
                let detail = format!("[infercell] call failed: {err:?}");
                let e = classify_trap(err, limits, memory_hit, fuel_left, &logs);
                logs.push(LogLine { level: LogLevel::Error, message: detail });
                Err(e)
            }
        };
        drop(store);
        Outcome { result, usage, logs, logs_dropped, denials }
    }

    /// Describes a component without keeping it: used by `inspect` and the upload checks.
    pub fn describe_bytes(&self, bytes: &[u8]) -> Result<ComponentInfo, ValidateError> {
        check_header(bytes)?;
        let component = Component::new(&self.engine, bytes).map_err(|e| ValidateError::Invalid(format!("{e:#}")))?;
        Ok(describe(&self.engine, &component))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// The engine settings of every runtime: pooling allocator sized from `config`, epoch
/// interruption, fuel. Public so the benchmarks' bare-wasmtime twin runs on exactly these.
pub fn engine_config(config: &RuntimeConfig) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasip2 component instantiates several core instances (its module plus the
    // canonical-ABI shims), so the core-instance and table pools are sized per component slot:
    // `max_instances` is the number of whole components that can run at once.
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * 8)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * 8)
        .max_memory_size(config.max_memory_bytes as usize)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(32)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        // Batch the madvise calls that reset freed slots: each one on a multi-threaded process
        // is a TLB shootdown on every core, which at thousands of calls per second cost more
        // than the calls themselves (measured: echo over HTTP 15k -> 24k req/s on 2 cores).
        .decommit_batch_size(32);
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

fn classify_trap(
    err: wasmtime::Error,
    limits: &Limits,
    memory_hit: bool,
    fuel_left: u64,
    logs: &[LogLine],
) -> InvokeError {
    let trap = err.downcast_ref::<wasmtime::Trap>().copied();
    if memory_hit {
        return InvokeError::MemoryLimit {
            limit: limits.memory_bytes,
            trap: trap.map(|t| t.to_string()).unwrap_or_default(),
        };
    }
    if trap == Some(wasmtime::Trap::OutOfFuel) || (fuel_left == 0 && limits.fuel.is_some()) {
        return InvokeError::FuelExhausted(limits.fuel.unwrap_or(0));
    }
    if let Some(limit) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return InvokeError::Busy(limit.to_string());
    }
    // The trap itself ("wasm `unreachable` instruction executed") plus, for a Rust panic, the
    // panic message the guest wrote to stderr just before; the backtrace stays in the log.
    let mut text = match trap {
        Some(t) => t.to_string(),
        None => err.root_cause().to_string(),
    };
    if let Some(panic) = panic_message(logs) {
        text = format!("{text}: {panic}");
    }
    InvokeError::Trap(text)
}

/// The message of the last Rust panic written to stderr, if any: shown to the caller beside
/// the trap. It decides nothing (the trap is a trap either way); it only reads the guest's words.
fn panic_message(logs: &[LogLine]) -> Option<String> {
    let start = logs.iter().rposition(|l| l.level == LogLevel::Stderr && l.message.contains("panicked at"))?;
    let mut parts = vec![logs[start].message.trim_start_matches("thread '<unnamed>' ").to_string()];
    parts.extend(
        logs[start + 1..]
            .iter()
            .filter(|l| l.level == LogLevel::Stderr)
            .take_while(|l| !l.message.starts_with("note:"))
            .map(|l| l.message.clone()),
    );
    Some(parts.join(" "))
}

/// One thread that advances the engine's epoch every tick; stops when the runtime drops.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("infercell-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop }
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
