//! The graph cache: one loaded graph per (model digest, engine), shared by every instance and
//! tenant that loads the same bytes, evicted least-recently-used by model bytes under a cap.
//! Loads and computes run on a bounded pool of blocking threads sized to the cores, so a long
//! inference never stalls the async executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Engine, ErrorCode, LoadedModel, NnError};

struct Entry {
    model: Arc<dyn LoadedModel>,
    bytes: u64,
    last_used: u64,
    /// The tenant whose load brought it in: its bytes count against that tenant's share.
    owner: String,
}

/// Counters the server exports as metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub graphs: u64,
}

/// A cached graph: the model's digest and the engine that loaded it.
type GraphKey = (String, &'static str);

struct State {
    entries: HashMap<GraphKey, Entry>,
    tick: u64,
    stats: CacheStats,
}

/// Engines, the cache and the compute pool.
pub struct Graphs {
    /// CPU engines, best first.
    engines: Vec<Arc<dyn Engine>>,
    /// The GPU engine, when this machine has a GPU adapter (found on first use; `None` inside
    /// when there is none). Unset: no GPU engine at all.
    gpu: std::sync::OnceLock<Option<Arc<super::gpu::Wgpu>>>,
    /// The GPU memory budget, when the GPU is to be used at all.
    gpu_budget: Option<u64>,
    /// Whether the GPU engine fuses epilogues.
    gpu_fusion: bool,
    state: Mutex<State>,
    /// The loads under way, one per graph: a miss waits for the load of the same graph
    /// instead of loading it again (N concurrent misses load once).
    loading: Mutex<HashMap<GraphKey, Arc<tokio::sync::Mutex<()>>>>,
    cap_bytes: u64,
    pool: Arc<Semaphore>,
    /// The CPU pool's slots.
    slots: usize,
    /// The threads the CPU pool's computes and loads run on.
    threads: ComputeThreads,
    /// Slots for calls that wait on the GPU: they hold no CPU while they wait, so they do not
    /// take the CPU pool's slots from other tenants' computes.
    gpu_pool: Arc<Semaphore>,
    /// Each tenant's share of the CPU pool: a tenant's computes at once are capped at `share`
    /// (half the pool, rounded up), so one tenant's long computes leave slots for the others.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    share: usize,
    /// Seconds spent loading graphs (for the load-time histogram).
    pub on_load: Box<dyn Fn(Duration) + Send + Sync>,
    /// Time a compute or load waited for its pool (`cpu` or `gpu`), share included.
    pub on_wait: Box<dyn Fn(&'static str, Duration) + Send + Sync>,
    /// Each compute's engine time: tenant, the named model (none for bytes), engine, device.
    pub on_compute: ComputeHook,
    /// What the named models' computes took and gave, and their drift.
    pub monitors: super::monitor::Monitors,
    /// Last compute time per loaded model (by address) and input shapes, to pick inline or
    /// pooled runs.
    costs: Mutex<HashMap<(usize, u64), Duration>>,
    /// The longest last compute that may run inline ([`INLINE_MAX`]).
    inline_max: Duration,
    /// Test-loads every new graph in a memory-limited child process first (the server sets
    /// it; in-process users such as benchmarks may leave it off).
    pub prober: Option<Arc<super::probe::Prober>>,
}

/// GPU computes (waiting on the device) at once, apart from the CPU pool.
pub const GPU_CALLS: usize = 64;

/// Computes measured at or under this run inline instead of on the blocking pool.
pub const INLINE_MAX: Duration = Duration::from_micros(200);

/// Most (model, shapes) compute costs remembered.
const MAX_COSTS: usize = 4096;

/// A model and the names, types and shapes of its inputs; for a model that makes a plan per
/// input value, the values of the inputs small enough to be pinned too (a new value is a new
/// plan: never measured, so never inline).
fn cost_key(model: &Arc<dyn LoadedModel>, inputs: &[(String, super::HostTensor)]) -> (usize, u64) {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let values = model.specializes();
    for (name, tensor) in inputs {
        name.hash(&mut hasher);
        tensor.dims.hash(&mut hasher);
        tensor.ty.oip_name().hash(&mut hasher);
        if values && tensor.data.len() / tensor.ty.size().max(1) <= super::tract::MAX_PINNED_ELEMENTS {
            tensor.data.hash(&mut hasher);
        }
    }
    (Arc::as_ptr(model) as *const () as usize, hasher.finish())
}

/// How much lower than the server's async threads the compute threads run under
/// [`ComputePriority::Low`] (a nice value).
pub const COMPUTE_NICE: i32 = 10;

/// The CPU priority of the compute threads (`nn.compute_priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputePriority {
    /// Linux `SCHED_IDLE`: a compute runs on a core only while no request thread wants it, and
    /// a request thread that wakes takes the core at once. A neighbour's latency does not
    /// depend on how long another tenant's computes (or their input parsing) are; under a CPU
    /// the guests keep busy, computes get almost no time.
    Idle,
    /// Nice +10: computes keep about a tenth of a contended core, but the scheduler lets one
    /// finish its time slice (1 to 5 ms) before a woken request thread runs.
    Low,
}

impl ComputePriority {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "idle" => Some(Self::Idle),
            "low" => Some(Self::Low),
            _ => None,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A compute's named outputs.
type Outputs = Vec<(String, super::HostTensor)>;

/// See [`Graphs::on_compute`].
pub type ComputeHook = Box<dyn Fn(&str, Option<&super::ModelRef>, &'static str, &'static str, Duration) + Send + Sync>;

/// The compute threads: as many as the CPU pool has slots, at a lower CPU priority than the
/// async threads that serve requests and run guests and fast inline computes. On cores a long
/// compute keeps busy, the scheduler gives those first; when nothing else runs, a compute has
/// the core to itself. (tokio's blocking pool is not used: its threads are shared with other
/// blocking work, and a thread's priority, once lowered, cannot be raised again unprivileged.)
struct ComputeThreads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl ComputeThreads {
    fn new(threads: usize, priority: ComputePriority) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("infercell-compute-{i}")).spawn(move || {
                lower_priority(priority);
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    // The pool is gone: so is this thread. A panic in a job fails that job only.
                    let Ok(job) = job else { return };
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a compute thread");
            }
        }
        Self { jobs }
    }

    /// Runs `f` on a compute thread; its result, or an error if it panicked.
    async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, NnError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).map_err(|_| NnError::new(ErrorCode::RuntimeError, "the compute threads are gone"))?;
        rx.await.map_err(|_| NnError::new(ErrorCode::RuntimeError, "the inference task failed (the engine panicked)"))
    }
}

/// Lowers the calling thread's CPU priority (Linux: per thread).
fn lower_priority(priority: ComputePriority) {
    #[cfg(target_os = "linux")]
    match priority {
        ComputePriority::Idle => {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let set = thread_priority::unix::set_thread_priority_and_policy(
                thread_priority::unix::thread_native_id(),
                ThreadPriority::Min,
                idle,
            );
            if let Err(e) = set {
                tracing::warn!(error = ?e, "cannot give the compute thread the idle CPU priority");
            }
        }
        ComputePriority::Low => {
            let me = Some(rustix::thread::gettid());
            let now = rustix::process::getpriority_process(me).unwrap_or(0);
            if let Err(e) = rustix::process::setpriority_process(me, (now + COMPUTE_NICE).min(19)) {
                tracing::warn!(error = %e, "cannot lower the compute thread's priority");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

impl Graphs {
    /// `engines` in order of preference for `auto`; `threads` computes may run at once.
    pub fn new(engines: Vec<Arc<dyn Engine>>, cap_bytes: u64, threads: usize) -> Self {
        Self::with_priority(engines, cap_bytes, threads, ComputePriority::Idle)
    }

    /// [`Graphs::new`], with the compute threads at `priority`.
    pub fn with_priority(
        engines: Vec<Arc<dyn Engine>>,
        cap_bytes: u64,
        threads: usize,
        priority: ComputePriority,
    ) -> Self {
        Self {
            threads: ComputeThreads::new(threads.max(1), priority),
            engines,
            gpu: std::sync::OnceLock::new(),
            gpu_budget: None,
            gpu_fusion: true,
            state: Mutex::new(State { entries: HashMap::new(), tick: 0, stats: CacheStats::default() }),
            loading: Mutex::new(HashMap::new()),
            cap_bytes,
            pool: Arc::new(Semaphore::new(threads.max(1))),
            slots: threads.max(1),
            gpu_pool: Arc::new(Semaphore::new(GPU_CALLS)),
            shares: Mutex::new(HashMap::new()),
            share: threads.max(1).div_ceil(2),
            on_load: Box::new(|_| {}),
            on_wait: Box::new(|_, _| {}),
            on_compute: Box::new(|_, _, _, _, _| {}),
            monitors: super::monitor::Monitors::default(),
            costs: Mutex::new(HashMap::new()),
            inline_max: INLINE_MAX,
            prober: None,
        }
    }

    /// Uses a GPU when wgpu finds one, with this much GPU memory.
    pub fn enable_gpu(&mut self, budget_bytes: u64, fusion: bool) {
        self.gpu_budget = Some(budget_bytes);
        self.gpu_fusion = fusion;
    }

    /// The GPU engine: the first call looks for an adapter (about 0.2 s).
    pub fn gpu(&self) -> Option<&Arc<super::gpu::Wgpu>> {
        self.gpu
            .get_or_init(|| {
                self.gpu_budget.and_then(super::gpu::Wgpu::discover).map(|g| Arc::new(g.with_fusion(self.gpu_fusion)))
            })
            .as_ref()
    }

    /// The GPU engine if it was looked for and found (never starts discovery).
    pub fn gpu_if_discovered(&self) -> Option<&Arc<super::gpu::Wgpu>> {
        self.gpu.get().and_then(Option::as_ref)
    }

    /// The engine `name`: a CPU engine by name, `wgpu`, `cpu` (the best CPU engine) or `auto`
    /// (the GPU when it is hardware, else the best CPU engine).
    pub fn engine(&self, name: &str) -> Result<Arc<dyn Engine>, NnError> {
        self.select(name, true)
    }

    /// The engine for a model's selector (see `ModelStore::lookup`), for a caller that may
    /// (`gpu_granted`) or may not use the GPU: `wgpu` or `gpu` needs the grant (a `security`
    /// error without it); `auto` takes a hardware GPU only when granted, else the CPU.
    pub fn select(&self, name: &str, gpu_granted: bool) -> Result<Arc<dyn Engine>, NnError> {
        let cpu = || self.engines.first().cloned();
        let found = match name {
            "wgpu" | "gpu" => {
                if !gpu_granted {
                    return Err(NnError::new(
                        ErrorCode::Security,
                        "the GPU is not granted (capabilities.gpu, and a plan that allows it)",
                    ));
                }
                let gpu = self.gpu().cloned().ok_or_else(|| {
                    let why = if self.gpu_budget.is_none() {
                        "this server runs without its GPU engine (nn.gpu = \"off\")"
                    } else {
                        "this server has no GPU (GET /v1/devices lists its devices)"
                    };
                    NnError::new(ErrorCode::UnsupportedOperation, why)
                })?;
                return Ok(gpu);
            }
            // `auto` never waits for discovery: until the GPU is found, it is the CPU.
            "auto" | "" => match self.gpu_if_discovered() {
                Some(gpu) if gpu_granted && gpu.is_hardware() => return Ok(gpu.clone()),
                _ => cpu(),
            },
            "cpu" => cpu(),
            name => self.engines.iter().find(|e| e.name() == name).cloned(),
        };
        found.ok_or_else(|| {
            NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("no engine `{name}` on this server (engines: {})", self.engine_names().join(", ")),
            )
        })
    }

    /// Loads `digest` on the engine of `selector` (see [`Graphs::select`]). When `auto` chose
    /// the GPU and the GPU engine cannot load the model, the best CPU engine loads it instead:
    /// `auto` never makes a model that runs on the CPU fail.
    pub async fn load_selected(
        &self,
        tenant: &str,
        digest: &str,
        selector: &str,
        gpu_granted: bool,
        bytes: impl Fn() -> Result<Vec<u8>, NnError> + Send + Sync + Clone + 'static,
    ) -> Result<(Arc<dyn LoadedModel>, Duration), NnError> {
        let engine = self.select(selector, gpu_granted)?;
        let chose_gpu = matches!(selector, "auto" | "") && engine.name() == "wgpu";
        match self.get_or_load(tenant, digest, engine, bytes.clone()).await {
            Err(e) if chose_gpu => {
                tracing::info!(digest, error = %e, "the GPU engine cannot load this model; auto runs it on the CPU");
                self.get_or_load(tenant, digest, self.select("cpu", false)?, bytes).await
            }
            other => other,
        }
    }

    /// Names of the engines this server has.
    pub fn engine_names(&self) -> Vec<&'static str> {
        let gpu = self.gpu().map(|g| g.name());
        self.engines.iter().map(|e| e.name()).chain(gpu).collect()
    }

    /// Each pool's slots and the slots taken now: `("cpu", slots, busy)`, `("gpu", ...)`.
    pub fn pools(&self) -> [(&'static str, usize, usize); 2] {
        [
            ("cpu", self.slots, self.slots.saturating_sub(self.pool.available_permits())),
            ("gpu", GPU_CALLS, GPU_CALLS.saturating_sub(self.gpu_pool.available_permits())),
        ]
    }

    pub fn stats(&self) -> CacheStats {
        self.state.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// The cached graph for `key`, counted as a hit (and used now) when there is one.
    fn cached(&self, key: &(String, &'static str)) -> Option<Arc<dyn LoadedModel>> {
        let mut state = self.state.lock().ok()?;
        state.tick += 1;
        let tick = state.tick;
        let entry = state.entries.get_mut(key)?;
        entry.last_used = tick;
        let model = entry.model.clone();
        state.stats.hits += 1;
        Some(model)
    }

    /// The cached graph for `digest` on `engine`, or loads `bytes()` on the compute pool for
    /// `tenant`. Returns the graph and the host time spent (zero on a hit; the wait, for a
    /// miss that found the same graph being loaded and waited for it).
    ///
    /// Single flight: while a graph loads, other misses of the same graph wait for that load
    /// (and count as hits) instead of loading it again; if it fails, the next one tries.
    ///
    /// Fair shares: a tenant's loads (and the probes they start) take slots of its share of
    /// the pool, so a tenant loading fresh bytes over and over holds at most half the pool;
    /// and the graphs a tenant brought in hold at most half the cache's bytes: past that its
    /// own least recently used graphs go first, so its misses cannot empty the others'.
    pub async fn get_or_load(
        &self,
        tenant: &str,
        digest: &str,
        engine: Arc<dyn Engine>,
        bytes: impl FnOnce() -> Result<Vec<u8>, NnError> + Send + 'static,
    ) -> Result<(Arc<dyn LoadedModel>, Duration), NnError> {
        let key = (digest.to_string(), engine.name());
        if let Some(model) = self.cached(&key) {
            return Ok((model, Duration::ZERO));
        }
        let flight = match self.loading.lock() {
            Ok(mut loading) => loading.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let waited = Instant::now();
        let _turn = flight.lock().await;
        if let Some(model) = self.cached(&key) {
            return Ok((model, waited.elapsed()));
        }
        let loaded = self.load_now(tenant, key.clone(), engine, bytes).await;
        if let Ok(mut loading) = self.loading.lock() {
            loading.remove(&key);
        }
        loaded
    }

    /// Loads the graph of `key` (a miss) and caches it, evicting as the shares require.
    async fn load_now(
        &self,
        tenant: &str,
        key: (String, &'static str),
        engine: Arc<dyn Engine>,
        bytes: impl FnOnce() -> Result<Vec<u8>, NnError> + Send + 'static,
    ) -> Result<(Arc<dyn LoadedModel>, Duration), NnError> {
        if let Ok(mut state) = self.state.lock() {
            state.stats.misses += 1;
        }
        let prober = self.prober.clone();
        let (model, size, took) = self
            .compute_for(tenant, move || {
                let started = Instant::now();
                let bytes = bytes()?;
                if let Some(prober) = &prober {
                    prober.check(engine.name(), &bytes)?;
                }
                let model = engine.load(&bytes)?;
                let size = bytes.len() as u64;
                // A model that makes plans per input has each new one built in the probe first.
                if let Some(prober) = prober
                    && model.specializes()
                {
                    let name = engine.name();
                    model.guard_specializations(Box::new(move |inputs| {
                        prober.check_specialization(name, &bytes, inputs)
                    }));
                }
                Ok((model, size, started.elapsed()))
            })
            .await?;
        (self.on_load)(took);
        if let Ok(mut state) = self.state.lock() {
            state.tick += 1;
            let tick = state.tick;
            let entry = Entry { model: model.clone(), bytes: size, last_used: tick, owner: tenant.to_string() };
            state.entries.insert(key.clone(), entry);
            let mut total: u64 = state.entries.values().map(|e| e.bytes).sum();
            let tenant_cap = self.cap_bytes.div_ceil(2);
            let owned =
                |state: &State| -> u64 { state.entries.values().filter(|e| e.owner == tenant).map(|e| e.bytes).sum() };
            loop {
                // The tenant's own graphs go first while it holds more than its share.
                let own_first = owned(&state) > tenant_cap;
                if !own_first && total <= self.cap_bytes {
                    break;
                }
                let Some(oldest) = state
                    .entries
                    .iter()
                    .filter(|(k, e)| **k != key && (!own_first || e.owner == tenant))
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = state.entries.remove(&oldest) {
                    total -= e.bytes;
                    state.stats.evictions += 1;
                    if let Ok(mut costs) = self.costs.lock() {
                        let evicted = Arc::as_ptr(&e.model) as *const () as usize;
                        costs.retain(|(model, _), _| *model != evicted);
                    }
                }
            }
            state.stats.bytes = total;
            state.stats.graphs = state.entries.len() as u64;
        }
        Ok((model, took))
    }

    /// Runs `model` on `inputs`; returns the outputs, the compute time and where it ran.
    ///
    /// A model whose last run *on inputs of the same shapes* took at most [`INLINE_MAX`] runs
    /// right here, on the calling thread: handing a 5 us MLP to the blocking pool and back
    /// costs far more than the compute (measured: ~120 us per call), and blocking a worker for
    /// under `INLINE_MAX` is no worse than the guest's own slice between epoch yields. The cost
    /// is keyed by shapes, so a guest that sends a tiny input and then a huge one (or a shape
    /// that makes the engine build a new plan) goes to the pool: only a cost already measured
    /// for this exact input size runs inline. Anything slower, or not measured yet, goes to the
    /// bounded pool, so a long inference never stalls the executor. Both paths stop at the
    /// call's deadline ([`super::Cancel`]).
    #[tracing::instrument(target = "infercell::call", level = "debug", name = "nn.compute", skip_all, fields(model = named.map_or("-", |n| n.name.as_str()), engine = model.engine()))]
    pub async fn run_model(
        &self,
        tenant: &str,
        named: Option<&super::ModelRef>,
        model: Arc<dyn LoadedModel>,
        inputs: Vec<(String, super::HostTensor)>,
        meter: &Arc<super::NnMeter>,
        max_bytes: u64,
    ) -> Result<Vec<(String, super::HostTensor)>, NnError> {
        let key = cost_key(&model, &inputs);
        let last = self.costs.lock().ok().and_then(|c| c.get(&key).copied());
        let engine = model.engine();
        let mirrored = super::MIRRORED.try_with(|m| *m).unwrap_or(false);
        let observed = named.filter(|_| !mirrored).map(|_| super::monitor::observe_inputs(&inputs));
        let (outputs, took, device) = if model.runs_inline() && last.is_some_and(|d| d <= self.inline_max) {
            let started = Instant::now();
            let result = model.run_bounded(inputs, &super::Bounds { cancel: &meter.cancel, max_bytes });
            let took = started.elapsed();
            let (outputs, device) = metered(meter, result, took)?;
            (outputs, took, device)
        } else {
            let pool = if model.runs_inline() { &self.pool } else { &self.gpu_pool };
            // The tenant's share first, then a slot of the pool: a tenant over its share waits
            // behind its own computes, not in front of the others'.
            let since = Instant::now();
            let share = if model.runs_inline() { Some(self.share_permit(tenant).await?) } else { None };
            let record = meter.clone();
            self.compute_on(
                pool,
                share,
                since,
                move |running| {
                    // Recorded by the compute itself: it goes on if the call's deadline drops the
                    // caller (until it reaches a boundary and sees the cancel), and the call waits
                    // for it before it is billed.
                    let _running = running;
                    let started = Instant::now();
                    let result = model.run_bounded(inputs, &super::Bounds { cancel: &record.cancel, max_bytes });
                    let took = started.elapsed();
                    let (outputs, device) = metered(&record, result, took)?;
                    Ok((outputs, took, device))
                },
                Some(meter),
            )
            .await?
        };
        (self.on_compute)(tenant, named, engine, device, took);
        if let (Some(named), Some(observed)) = (named, &observed) {
            self.monitors.record(tenant, &named.name, named.version, observed, &outputs);
        }
        // Engines that allocate out of sight (ONNX Runtime) are held to the bytes here, once
        // their outputs exist: the call gets none of them.
        let made: u64 = outputs.iter().map(|(_, t)| t.data.len() as u64).sum();
        if made > max_bytes {
            return Err(NnError::new(
                ErrorCode::TooLarge,
                format!(
                    "this input needs more memory than the call may use: the outputs take {made} bytes, over the {max_bytes} bytes left to it (the function's memory limit; on /v2 the plan's model_memory)"
                ),
            ));
        }
        if let Ok(mut costs) = self.costs.lock() {
            // Keyed by tenant input (shapes): bounded, forgotten all at once when full.
            if costs.len() >= MAX_COSTS {
                costs.clear();
            }
            costs.insert(key, took);
        }
        Ok(outputs)
    }

    /// A slot of `tenant`'s share of the CPU pool. The share is taken before a slot of the
    /// pool, so a tenant over its share waits behind its own computes, not in front of the
    /// others'; and it is held by the job itself, so a call cut at its deadline frees it only
    /// when its work really ends.
    async fn share_permit(&self, tenant: &str) -> Result<tokio::sync::OwnedSemaphorePermit, NnError> {
        self.share_of(tenant)
            .acquire_owned()
            .await
            .map_err(|_| NnError::new(ErrorCode::RuntimeError, "compute pool closed"))
    }

    /// `tenant`'s share of the CPU pool, which its computes and graph loads (each with its
    /// probe) take from (tenants are few and made by the admin: one semaphore each).
    fn share_of(&self, tenant: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        shares.entry(tenant.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.share))).clone()
    }

    /// Runs `f` on a blocking thread once a compute slot is free.
    ///
    /// (Graph loads run here, unmetered per call: a loaded graph is shared by every call and
    /// tenant that loads the same bytes; a call is billed the load time it waited for.)
    pub async fn compute<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R, NnError> + Send + 'static,
    ) -> Result<R, NnError> {
        self.compute_on(&self.pool, None, Instant::now(), move |_| f(), None).await
    }

    /// [`Graphs::compute`] for `tenant`: within its share of the pool.
    pub async fn compute_for<R: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> Result<R, NnError> + Send + 'static,
    ) -> Result<R, NnError> {
        let since = Instant::now();
        let share = self.share_permit(tenant).await?;
        self.compute_on(&self.pool, Some(share), since, move |_| f(), None).await
    }

    /// Runs `f` once `pool` has a free slot: the CPU pool's on a compute thread, the GPU
    /// pool's (which wait on the device, not the CPU) on a blocking thread. With a `meter`, the
    /// compute counts as running from the moment it is handed to its thread (no await in
    /// between, so a dropped caller cannot miss it) until `f` drops the guard it is given.
    async fn compute_on<R: Send + 'static>(
        &self,
        pool: &Arc<Semaphore>,
        share: Option<tokio::sync::OwnedSemaphorePermit>,
        since: Instant,
        f: impl FnOnce(Option<super::Running>) -> Result<R, NnError> + Send + 'static,
        meter: Option<&Arc<super::NnMeter>>,
    ) -> Result<R, NnError> {
        let permit = pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NnError::new(ErrorCode::RuntimeError, "compute pool closed"))?;
        let cpu = Arc::ptr_eq(pool, &self.pool);
        (self.on_wait)(if cpu { "cpu" } else { "gpu" }, since.elapsed());
        let running = meter.map(|m| m.running());
        let job = move || {
            let _permits = (share, permit);
            f(running)
        };
        if cpu {
            self.threads.run(job).await?
        } else {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("inference task failed: {e}")))?
        }
    }
}

/// Records one compute's time in the call's meter and passes its result on, with the device
/// it ran on (`gpu` when any of its nodes did). A compute that failed still used the engine
/// for `took` and is metered (all of it as CPU time: its placement is unknown), unless the
/// engine refused it for want of room.
fn metered(
    meter: &super::NnMeter,
    result: Result<(Vec<(String, super::HostTensor)>, super::Placement), NnError>,
    took: Duration,
) -> Result<(Outputs, &'static str), NnError> {
    match result {
        Ok((outputs, placement)) => {
            let device = if placement.gpu_nodes > 0 { "gpu" } else { "cpu" };
            meter.add(took, placement);
            Ok((outputs, device))
        }
        Err(e) => {
            if e.refusal.is_none() {
                meter.add(took, super::Placement::default());
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{HostTensor, TensorInfo};

    /// Sleeps `cost`, then answers with the name of the thread it ran on.
    struct Probe {
        cost: Duration,
    }

    impl LoadedModel for Probe {
        fn run(&self, _inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
            std::thread::sleep(self.cost);
            let name = std::thread::current().name().unwrap_or("").as_bytes().to_vec();
            Ok(vec![(
                "thread".into(),
                HostTensor { dims: vec![name.len() as u32], ty: crate::nn::ElemType::U8, data: name },
            )])
        }
        fn inputs(&self) -> &[TensorInfo] {
            &[]
        }
        fn outputs(&self) -> &[TensorInfo] {
            &[]
        }
    }

    async fn thread_of(graphs: &Graphs, model: &Arc<dyn LoadedModel>) -> String {
        thread_for(graphs, model, 1).await
    }

    /// The thread `model` ran on for an input of `len` bytes.
    async fn thread_for(graphs: &Graphs, model: &Arc<dyn LoadedModel>, len: u32) -> String {
        let input = HostTensor { dims: vec![len], ty: crate::nn::ElemType::U8, data: vec![0; len as usize] };
        let out = graphs
            .run_model("t", None, model.clone(), vec![("x".into(), input)], &Default::default(), u64::MAX)
            .await
            .expect("runs");
        String::from_utf8(out[0].1.data.clone()).expect("utf-8")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_new_input_shape_is_not_run_inline_on_an_old_measure() {
        let mut graphs = Graphs::new(Vec::new(), 1 << 20, 1);
        graphs.inline_max = Duration::from_millis(100);
        let here = std::thread::current().name().unwrap_or("").to_string();
        let fast: Arc<dyn LoadedModel> = Arc::new(Probe { cost: Duration::ZERO });
        assert_ne!(thread_for(&graphs, &fast, 1).await, here);
        assert_eq!(thread_for(&graphs, &fast, 1).await, here, "measured fast at this shape");
        // A huge input (whose cost nothing measured) goes to the pool, then its own measure counts.
        assert_ne!(thread_for(&graphs, &fast, 1 << 20).await, here);
        assert_eq!(thread_for(&graphs, &fast, 1).await, here);
    }

    /// Records when it starts, then sleeps.
    struct Logged {
        who: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl LoadedModel for Logged {
        fn run(&self, _inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
            self.log.lock().expect("log").push(self.who);
            std::thread::sleep(Duration::from_millis(300));
            Ok(Vec::new())
        }
        fn inputs(&self) -> &[TensorInfo] {
            &[]
        }
        fn outputs(&self) -> &[TensorInfo] {
            &[]
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_tenant_takes_at_most_half_the_pool() {
        let graphs = Arc::new(Graphs::new(Vec::new(), 1 << 20, 2));
        let log = Arc::new(Mutex::new(Vec::new()));
        let run = |tenant: &'static str| {
            let (graphs, log) = (graphs.clone(), log.clone());
            tokio::spawn(async move {
                let model: Arc<dyn LoadedModel> = Arc::new(Logged { who: tenant, log });
                graphs.run_model(tenant, None, model, Vec::new(), &Default::default(), u64::MAX).await.expect("runs");
            })
        };
        let (a1, a2) = (run("a"), run("a"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = run("b");
        for task in [a1, a2, b] {
            task.await.expect("task");
        }
        // The pool has two slots, but `a` gets one: its second compute waits for its first,
        // and `b` starts in between.
        assert_eq!(*log.lock().expect("log"), ["a", "b", "a"]);
    }

    /// Loads any bytes as a model that does nothing.
    struct Loader;

    impl Engine for Loader {
        fn name(&self) -> &'static str {
            "loader"
        }
        fn load(&self, _onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
            Ok(Arc::new(Probe { cost: Duration::ZERO }))
        }
    }

    /// Counts its loads; each takes 100 ms.
    struct SlowLoader(Arc<std::sync::atomic::AtomicUsize>);

    impl Engine for SlowLoader {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn load(&self, _onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(Arc::new(Probe { cost: Duration::ZERO }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_of_one_graph_load_it_once() {
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let engine: Arc<dyn Engine> = Arc::new(SlowLoader(loads.clone()));
        let graphs = Arc::new(Graphs::new(vec![engine.clone()], 1 << 20, 2));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (graphs, engine) = (graphs.clone(), engine.clone());
                let tenant = if i % 2 == 0 { "a" } else { "b" };
                tokio::spawn(async move { graphs.get_or_load(tenant, "sha256:one", engine, || Ok(vec![0; 10])).await })
            })
            .collect();
        let mut models = Vec::new();
        for task in tasks {
            models.push(task.await.expect("task").expect("loads").0);
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1, "one load for eight misses");
        assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])), "all share the one graph");
        let stats = graphs.stats();
        assert_eq!((stats.misses, stats.hits, stats.graphs), (1, 7, 1), "{stats:?}");
        assert!(graphs.loading.lock().expect("loading").is_empty(), "no load left under way");
        // A failed load is not cached: the next miss tries again.
        let failing = graphs
            .get_or_load("a", "sha256:bad", engine.clone(), || {
                Err(NnError::new(ErrorCode::InvalidArgument, "bad bytes"))
            })
            .await;
        assert!(failing.is_err());
        graphs.get_or_load("a", "sha256:bad", engine, || Ok(vec![0; 10])).await.expect("the retry loads");
    }

    #[tokio::test]
    async fn a_tenant_loading_fresh_graphs_evicts_its_own_not_the_others() {
        let engine: Arc<dyn Engine> = Arc::new(Loader);
        let graphs = Graphs::new(vec![engine.clone()], 100, 2);
        let load = |tenant: &'static str, digest: String| {
            let engine = engine.clone();
            let graphs = &graphs;
            async move { graphs.get_or_load(tenant, &digest, engine, || Ok(vec![0; 30])).await.expect("loads") }
        };
        load("quiet", "sha256:q".into()).await;
        for i in 0..20 {
            load("noisy", format!("sha256:n{i}")).await;
        }
        let misses = graphs.stats().misses;
        let (_, took) = load("quiet", "sha256:q".into()).await;
        assert_eq!((took, graphs.stats().misses), (Duration::ZERO, misses), "the quiet tenant's graph stayed");
        assert!(graphs.stats().bytes <= 100, "{:?}", graphs.stats());
        // The noisy tenant keeps at most half the cache's bytes.
        let noisy = graphs.state.lock().expect("state").entries.values().filter(|e| e.owner == "noisy").count();
        assert!(noisy * 30 <= 50, "{noisy} graphs of the noisy tenant");
    }

    /// Computes run below the async threads' priority, on threads of their own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn computes_run_at_a_lower_priority() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let policy = |()| thread_priority::unix::thread_schedule_policy().expect("policy");
        let nice = |()| rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice");
        let graphs = Graphs::new(Vec::new(), 1 << 20, 1);
        let (there, name) = graphs
            .compute(move || Ok((policy(()), std::thread::current().name().map(str::to_string))))
            .await
            .expect("runs");
        assert_eq!(there, ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle));
        assert_eq!(name.as_deref(), Some("infercell-compute-0"));
        assert_ne!(policy(()), there, "the async threads keep their priority");
        // A panicking compute fails alone; the thread serves the next.
        let err = graphs.compute(|| -> Result<(), NnError> { panic!("engine bug") }).await.expect_err("panicked");
        assert!(err.message.contains("panicked"), "{err:?}");
        graphs.compute(|| Ok(())).await.expect("the next compute runs");

        let here = nice(());
        let low = Graphs::with_priority(Vec::new(), 1 << 20, 1, ComputePriority::Low);
        let (there, policy) = low.compute(move || Ok((nice(()), policy(())))).await.expect("runs");
        assert_eq!(there, (here + COMPUTE_NICE).min(19));
        assert_eq!(policy, ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other));
    }

    #[tokio::test]
    async fn a_cancelled_call_starts_no_compute() {
        let graphs = Graphs::new(Vec::new(), 1 << 20, 1);
        let model: Arc<dyn LoadedModel> = Arc::new(Probe { cost: Duration::from_secs(5) });
        let meter = Arc::new(crate::nn::NnMeter::default());
        meter.cancel.cancel();
        let started = Instant::now();
        let err = graphs.run_model("t", None, model, Vec::new(), &meter, u64::MAX).await.expect_err("cancelled");
        assert_eq!(err.code, ErrorCode::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5), "it never ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn fast_models_run_inline_slow_ones_on_the_pool() {
        let mut graphs = Graphs::new(Vec::new(), 1 << 20, 1);
        // Thresholds far from what is measured, so a preempted thread cannot flip a verdict.
        graphs.inline_max = Duration::from_millis(100);
        let here = std::thread::current().name().unwrap_or("").to_string();
        let fast: Arc<dyn LoadedModel> = Arc::new(Probe { cost: Duration::ZERO });
        let slow: Arc<dyn LoadedModel> = Arc::new(Probe { cost: Duration::from_millis(300) });
        // Not measured yet: the pool. Measured fast: inline. Slow: always the pool.
        assert_ne!(thread_of(&graphs, &fast).await, here);
        assert_eq!(thread_of(&graphs, &fast).await, here);
        assert_ne!(thread_of(&graphs, &slow).await, here);
        assert_ne!(thread_of(&graphs, &slow).await, here);
    }
}
