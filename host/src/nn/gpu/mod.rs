//! The GPU engine: WGSL compute kernels through wgpu (Vulkan: NVIDIA, AMD, Intel, or Mesa's
//! software lavapipe), driven by tract's decluttered graph.
//!
//! tract parses the model, infers types and shapes, folds constants and simplifies the graph;
//! the plan (see [`plan`]) then runs each node that has a kernel ([`kernels`]) on the GPU and
//! every other node on the CPU, moving values between them only where needed. A model is
//! planned per input shapes (and per values of integer inputs that tract needs as constants,
//! as the tract engine does), a few plans kept per model.
//!
//! GPU memory is admitted against a budget (`nn.gpu_memory_bytes`): every buffer is counted
//! while it lives. When a new buffer would go over, idle models are evicted least recently
//! used first (their weights and plans are dropped, and made again on their next call); when
//! nothing idle is left, the call fails with `too-large` (it could never fit) or a busy error,
//! never with a device out-of-memory crash. A lost device is recreated on the next call and
//! every model re-uploads its weights.

pub mod kernels;
pub mod plan;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tract_onnx::prelude::*;

use self::kernels::Kernel;
use self::plan::{NodePlacement, Plan};
use super::tract::{Parsed, Pin, Specializations, describe_typed, from_tract, named, parse, pin, to_tract};
use super::{Engine, ErrorCode, HostTensor, LoadedModel, NnError, Placement, TensorInfo, match_inputs};

/// The order in which inputs are pinned: shapes alone first, so integer data (token ids) is
/// not baked into plans unless tract needs it.
const PINS: &[Pin] = &[Pin::Nothing, Pin::Integers, Pin::AllButData];

/// The wgpu engine.
pub struct Wgpu {
    shared: Arc<Shared>,
}

struct Shared {
    instance: wgpu::Instance,
    adapter: wgpu::AdapterInfo,
    budget: Arc<Budget>,
    gpu: RwLock<Option<Arc<Gpu>>>,
    /// Models loaded on this engine, for eviction.
    models: Mutex<Vec<Weak<GpuModel>>>,
    clock: AtomicU64,
    /// Models evicted to make room, and devices made again after a loss.
    evictions: AtomicU64,
    recreated: AtomicU64,
    /// Whether plans fuse epilogues into matrix products and convolutions.
    fusion: AtomicBool,
}

/// The GPU engine's counters, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuStats {
    pub memory_used: u64,
    pub memory_budget: u64,
    pub evictions: u64,
    pub devices_recreated: u64,
}

/// GPU memory admission.
pub struct Budget {
    cap: u64,
    used: AtomicU64,
}

/// A buffer counted against the budget while it lives.
pub struct Tracked {
    pub buffer: wgpu::Buffer,
    bytes: u64,
    budget: Arc<Budget>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        self.buffer.destroy();
    }
}

/// One device and its queue, pipelines and limits.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pipelines: [OnceLock<wgpu::ComputePipeline>; Kernel::ALL.len()],
    /// Whether compute passes can write timestamps, and nanoseconds per tick.
    pub timestamps: bool,
    pub period: f32,
    max_buffer: u64,
    lost: Arc<AtomicBool>,
    shared: Weak<Shared>,
}

impl Wgpu {
    /// The engine on this machine's best GPU adapter (a hardware GPU before a software one), or
    /// `None` when wgpu finds no Vulkan adapter. The device itself is made on first use.
    pub fn discover(budget_bytes: u64) -> Option<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = best_adapter(&instance)?;
        let shared = Arc::new(Shared {
            instance,
            adapter: adapter.get_info(),
            budget: Arc::new(Budget { cap: budget_bytes, used: AtomicU64::new(0) }),
            gpu: RwLock::new(None),
            models: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            recreated: AtomicU64::new(0),
            fusion: AtomicBool::new(true),
        });
        Some(Self { shared })
    }

    /// Turns epilogue fusion on or off for plans made from now on (`nn.gpu_fusion`; on by
    /// default). Off, every node has its own dispatch: for comparing the two on a real GPU.
    pub fn with_fusion(self, on: bool) -> Self {
        self.shared.fusion.store(on, Ordering::SeqCst);
        self
    }

    /// The adapter's name (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub fn adapter_name(&self) -> &str {
        &self.shared.adapter.name
    }

    /// A real GPU, not a software rasterizer: `auto` places models here only then.
    pub fn is_hardware(&self) -> bool {
        self.shared.adapter.device_type != wgpu::DeviceType::Cpu
    }

    /// Bytes of GPU memory in use by this engine's buffers, and the budget.
    pub fn memory(&self) -> (u64, u64) {
        (self.shared.budget.used.load(Ordering::SeqCst), self.shared.budget.cap)
    }

    /// Memory in use and budget, evictions and device recreations so far.
    pub fn stats(&self) -> GpuStats {
        let (memory_used, memory_budget) = self.memory();
        GpuStats {
            memory_used,
            memory_budget,
            evictions: self.shared.evictions.load(Ordering::SeqCst),
            devices_recreated: self.shared.recreated.load(Ordering::SeqCst),
        }
    }

    /// Destroys the device, as a driver reset would (tests use it to check recovery).
    pub fn lose_device(&self) {
        if let Some(gpu) = self.shared.gpu.read().ok().and_then(|g| g.clone()) {
            gpu.device.destroy();
            gpu.lost.store(true, Ordering::SeqCst);
        }
    }
}

/// What `infercell model check` finds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub nodes: Vec<NodePlacement>,
    /// Inputs tract needs as constants (shapes, axes): the plan was made with them all zero,
    /// so the nodes may differ for the values a caller sends.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assumed_zero: Vec<String>,
}

/// Where every node of `onnx` runs, on `gpu` or (without one) on the CPU, when its inputs have
/// their declared shapes (dynamic dimensions taken as 1): `infercell model check`.
pub fn check(onnx: &[u8], gpu: Option<&Wgpu>) -> Result<Check, NnError> {
    let parsed = parse(onnx)?;
    let inputs: Vec<HostTensor> = parsed
        .inputs
        .iter()
        .map(|info| {
            let dims: Vec<u32> = info.shape.iter().map(|d| if *d < 0 { 1 } else { *d as u32 }).collect();
            let ty = super::ElemType::from_oip_name(&info.datatype).unwrap_or(super::ElemType::F32);
            let len = dims.iter().map(|d| *d as usize).product::<usize>() * ty.size();
            HostTensor::new(dims, ty, vec![0; len])
        })
        .collect::<Result<_, _>>()?;
    let fusion = gpu.is_some_and(|g| g.shared.fusion.load(Ordering::SeqCst));
    let gpu = gpu.map(|g| g.shared.gpu()).transpose()?;
    let mut last = None;
    for p in PINS {
        let pinned = p.select(&inputs);
        let typed = match pin(&parsed.model, &inputs, &pinned).and_then(declutter) {
            Ok(typed) => typed,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let assumed_zero =
            parsed.inputs.iter().zip(&pinned).filter(|(_, p)| **p).map(|(info, _)| info.name.clone()).collect();
        let nodes = match &gpu {
            Some(gpu) => Plan::build(gpu, typed, fusion)?.placement,
            None => typed
                .eval_order()
                .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{e:#}")))?
                .into_iter()
                .map(|id| typed.node(id))
                .filter(|n| !n.inputs.is_empty())
                .map(|n| NodePlacement { node: n.name.clone(), op: n.op.name().to_string(), device: "cpu", why: None })
                .collect(),
        };
        return Ok(Check { nodes, assumed_zero });
    }
    Err(last.unwrap_or_else(|| NnError::new(ErrorCode::UnsupportedOperation, "cannot plan this model")))
}

fn best_adapter(instance: &wgpu::Instance) -> Option<wgpu::Adapter> {
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN)).into_iter().min_by_key(rank)
}

impl Shared {
    /// The live device, made (again) when there is none or it was lost.
    fn gpu(self: &Arc<Self>) -> Result<Arc<Gpu>, NnError> {
        if let Some(gpu) = self.gpu.read().ok().and_then(|g| g.clone())
            && !gpu.lost.load(Ordering::SeqCst)
        {
            return Ok(gpu);
        }
        let mut slot = self.gpu.write().unwrap_or_else(|e| e.into_inner());
        if let Some(gpu) = slot.as_ref()
            && !gpu.lost.load(Ordering::SeqCst)
        {
            return Ok(gpu.clone());
        }
        if slot.is_some() {
            tracing::warn!(adapter = %self.adapter.name, "GPU device lost; recreating it");
            self.recreated.fetch_add(1, Ordering::SeqCst);
        }
        let gpu = Arc::new(Gpu::new(self)?);
        *slot = Some(gpu.clone());
        Ok(gpu)
    }

    /// Trims the model at `running` (see `GpuModel::trim`).
    fn trim(&self, running: *const GpuModel) -> bool {
        let model = {
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.iter().filter_map(Weak::upgrade).find(|m| std::ptr::eq(Arc::as_ptr(m), running))
        };
        model.is_some_and(|m| m.trim())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Evicts the least recently used idle model other than `keep`; false when none is idle.
    fn evict_one(&self, keep: *const GpuModel) -> bool {
        let models: Vec<Arc<GpuModel>> = {
            let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.retain(|m| m.strong_count() > 0);
            models.iter().filter_map(Weak::upgrade).collect()
        };
        let victim = models
            .iter()
            .filter(|m| !std::ptr::eq(Arc::as_ptr(m), keep) && m.busy.load(Ordering::SeqCst) == 0 && m.holds_memory())
            .min_by_key(|m| m.last_used.load(Ordering::SeqCst));
        match victim {
            Some(m) => {
                m.evict();
                self.evictions.fetch_add(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

/// Longest wait for the GPU to finish a call's work before the device is reset.
const GPU_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

thread_local! {
    /// The model a thread is running on the GPU, which eviction must spare.
    static RUNNING: std::cell::Cell<*const GpuModel> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl Gpu {
    fn new(shared: &Arc<Shared>) -> Result<Self, NnError> {
        let adapter = best_adapter(&shared.instance)
            .ok_or_else(|| NnError::new(ErrorCode::RuntimeError, "the GPU adapter is gone"))?;
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("infercell"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("cannot open the GPU: {e}")))?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            flag.store(true, Ordering::SeqCst);
            tracing::warn!(?reason, message, "GPU device lost");
        });
        device.on_uncaptured_error(Arc::new(|error| tracing::error!(%error, "GPU error outside any call")));
        Ok(Gpu {
            device,
            queue: queue.clone(),
            pipelines: Default::default(),
            timestamps,
            period: queue.get_timestamp_period(),
            max_buffer: limits.max_buffer_size.min(limits.max_storage_buffer_binding_size),
            lost,
            shared: Arc::downgrade(shared),
        })
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The compute pipeline of `kernel`, compiled on first use.
    pub fn pipeline(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        self.pipelines[kernel.index()].get_or_init(|| {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
            });
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    }

    /// A parameter buffer (small, immutable, not counted).
    pub fn params(&self, values: &[u32]) -> wgpu::Buffer {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (bytes.len() as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, &bytes);
        buffer
    }

    /// A buffer of `bytes`, admitted against the budget (evicting idle models if needed).
    pub fn buffer(&self, bytes: u64, usage: wgpu::BufferUsages) -> Result<Tracked, NnError> {
        let bytes = bytes.max(4).next_multiple_of(4);
        let shared = self.shared.upgrade().ok_or_else(|| NnError::new(ErrorCode::RuntimeError, "GPU engine gone"))?;
        let budget = &shared.budget;
        if bytes > self.max_buffer {
            return Err(NnError::new(
                ErrorCode::TooLarge,
                format!(
                    "a tensor of {bytes} bytes is larger than the GPU's largest buffer ({} bytes)",
                    self.max_buffer
                ),
            ));
        }
        if bytes > budget.cap {
            return Err(too_large(bytes, budget.cap));
        }
        let mut trimmed = false;
        loop {
            let used = budget.used.load(Ordering::SeqCst);
            if used + bytes <= budget.cap {
                if budget.used.compare_exchange(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    break;
                }
                continue;
            }
            let running = RUNNING.with(|r| r.get());
            if shared.evict_one(running) {
                continue;
            }
            // Nothing idle to evict: what the running model itself holds but does not use.
            if !trimmed {
                trimmed = true;
                if shared.trim(running) {
                    continue;
                }
            }
            return Err(NnError::new(
                ErrorCode::RuntimeError,
                format!(
                    "busy: the GPU memory budget ({} of {} bytes in use by running models) has no room for \
                     {bytes} more bytes now; try again",
                    used, budget.cap
                ),
            ));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        Ok(Tracked { buffer, bytes, budget: budget.clone() })
    }

    /// Waits for submission `index` (not for other callers' work), then reads the first bytes
    /// of each mappable buffer.
    pub fn read(
        &self,
        index: wgpu::SubmissionIndex,
        buffers: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>, NnError> {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (buffer, bytes)) in buffers.iter().enumerate() {
            let tx = tx.clone();
            if *bytes > 0 {
                buffer.slice(..*bytes).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send((i, r));
                });
            }
        }
        drop(tx);
        if let Err(e) =
            self.device.poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: Some(GPU_WAIT) })
        {
            // A GPU that does not finish is treated as lost: the next call makes a new device.
            if matches!(e, wgpu::PollError::Timeout) {
                tracing::error!(seconds = GPU_WAIT.as_secs(), "the GPU did not finish; resetting the device");
                self.device.destroy();
                self.lost.store(true, Ordering::SeqCst);
            }
            return Err(NnError::new(ErrorCode::RuntimeError, format!("GPU: {e}")));
        }
        for (_, result) in rx.iter() {
            result.map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("GPU read-back failed: {e}")))?;
        }
        let mut out = Vec::with_capacity(buffers.len());
        for (buffer, bytes) in buffers {
            if *bytes == 0 {
                out.push(Vec::new());
                continue;
            }
            let data = buffer
                .slice(..*bytes)
                .get_mapped_range()
                .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("GPU read-back failed: {e}")))?
                .to_vec();
            buffer.unmap();
            out.push(data);
        }
        Ok(out)
    }
}

fn too_large(bytes: u64, cap: u64) -> NnError {
    NnError::new(
        ErrorCode::TooLarge,
        format!(
            "needs {bytes} bytes of GPU memory at once; the GPU memory budget is {cap} bytes (nn.gpu_memory_bytes)"
        ),
    )
}

/// Tract's decluttered graph of a pinned model.
fn declutter(model: InferenceModel) -> Result<TypedModel, NnError> {
    model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| NnError::new(ErrorCode::UnsupportedOperation, format!("{e:#}")))
}

/// A model on the GPU engine.
struct GpuModel {
    shared: Arc<Shared>,
    model: InferenceModel,
    _symbols: SymbolScope,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// Why one plan cannot serve every input (tract's error when typing it generically).
    why: String,
    state: Mutex<Option<Arc<State>>>,
    busy: AtomicUsize,
    last_used: AtomicU64,
}

/// An uploaded weight: the constant's name, the tensor, how it was uploaded, the buffer.
/// Plans hold their weights; the model only remembers them, so a weight no plan holds is freed.
type Weight = (String, Arc<Tensor>, Option<usize>, Weak<Tracked>);

/// A model's GPU resources on one device.
struct State {
    gpu: Arc<Gpu>,
    /// Uploaded weights by constant name, with the tensor they hold.
    weights: Mutex<Vec<Weight>>,
    plans: Specializations<Arc<Plan>>,
}

impl Engine for Wgpu {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn load(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        Ok(self.load_model(onnx)?)
    }
}

impl Wgpu {
    fn load_model(&self, onnx: &[u8]) -> Result<Arc<GpuModel>, NnError> {
        let Parsed { model, symbols, mut inputs, mut outputs, input_names, output_names } = parse(onnx)?;
        if let Some(input) = inputs.iter().find(|i| i.datatype == "UNSUPPORTED") {
            return Err(NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("input `{}` has no supported type", input.name),
            ));
        }
        // Typed generically when tract can (then inputs and outputs have tract's inferred types
        // and shapes, under the names the file declares); otherwise per input, as the tract
        // engine does.
        let why = match model.clone().into_typed().and_then(|m| m.into_decluttered()).and_then(|m| describe_typed(&m)) {
            Ok((typed_inputs, typed_outputs)) => {
                inputs = named(typed_inputs, &input_names);
                outputs = named(typed_outputs, &output_names);
                String::new()
            }
            Err(e) => format!("{e:#}"),
        };
        let loaded = Arc::new(GpuModel {
            shared: self.shared.clone(),
            model,
            _symbols: symbols,
            inputs,
            outputs,
            why,
            state: Mutex::new(None),
            busy: AtomicUsize::new(0),
            last_used: AtomicU64::new(self.shared.tick()),
        });
        self.shared.models.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&loaded));
        Ok(loaded)
    }
}

impl GpuModel {
    /// This model's resources on the live device (made again after a loss or an eviction).
    fn state(&self) -> Result<Arc<State>, NnError> {
        let mut slot = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = slot.as_ref()
            && !state.gpu.is_lost()
        {
            return Ok(state.clone());
        }
        let state = Arc::new(State {
            gpu: self.shared.gpu()?,
            weights: Mutex::new(Vec::new()),
            plans: Specializations::new(PINS),
        });
        *slot = Some(state.clone());
        Ok(state)
    }

    fn holds_memory(&self) -> bool {
        self.state.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    fn evict(&self) {
        if let Ok(mut slot) = self.state.lock() {
            *slot = None;
        }
    }

    /// The weight buffers of `plan`, uploading the ones not on the device yet.
    fn weights(&self, state: &State, plan: &Plan) -> Result<Vec<Arc<Tracked>>, NnError> {
        // No lock is held while uploading: making room may trim this very plan.
        if let Some(buffers) = plan.bound.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(buffers.clone());
        }
        let mut out = Vec::with_capacity(plan.weights.len());
        for spec in &plan.weights {
            let found = {
                let mut weights = state.weights.lock().unwrap_or_else(|e| e.into_inner());
                weights.retain(|w| w.3.strong_count() > 0);
                weights
                    .iter()
                    .find(|(key, tensor, indices, _)| {
                        *key == spec.key
                            && *indices == spec.indices
                            && (Arc::ptr_eq(tensor, &spec.tensor) || **tensor == *spec.tensor)
                    })
                    .and_then(|w| w.3.upgrade())
            };
            let buffer = match found {
                Some(b) => b,
                None => {
                    let bytes = plan::upload_bytes(&spec.tensor, spec.indices)?;
                    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
                    let tracked = Arc::new(state.gpu.buffer(bytes.len() as u64, usage)?);
                    state.gpu.queue.write_buffer(&tracked.buffer, 0, &bytes);
                    state.weights.lock().unwrap_or_else(|e| e.into_inner()).push((
                        spec.key.clone(),
                        spec.tensor.clone(),
                        spec.indices,
                        Arc::downgrade(&tracked),
                    ));
                    tracked
                }
            };
            out.push(buffer);
        }
        *plan.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(out.clone());
        Ok(out)
    }

    /// Frees what this model holds but is not using: every plan's idle arenas and bound weights
    /// (a running call keeps its own). Returns whether any memory was freed.
    fn trim(&self) -> bool {
        let Some(state) = self.state.lock().ok().and_then(|s| s.clone()) else { return false };
        let before = self.shared.budget.used.load(Ordering::SeqCst);
        state.plans.for_each(|plan| {
            plan.arenas_clear();
            *plan.bound.lock().unwrap_or_else(|e| e.into_inner()) = None;
        });
        self.shared.budget.used.load(Ordering::SeqCst) < before
    }

    fn run_once(&self, ordered: &[HostTensor]) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        let started = std::time::Instant::now();
        let state = self.state()?;
        let (plan, fed) = state.plans.get(ordered, &self.why, |pinned| {
            let model = declutter(pin(&self.model, ordered, pinned)?)?;
            Plan::build(&state.gpu, model, self.shared.fusion.load(Ordering::SeqCst)).map(Arc::new)
        })?;
        if plan.need_bytes > self.shared.budget.cap {
            return Err(too_large(plan.need_bytes, self.shared.budget.cap));
        }
        let weights = self.weights(&state, &plan)?;
        let values: Vec<TValue> =
            fed.iter().map(|i| Ok(to_tract(&ordered[*i])?.into_tvalue())).collect::<Result<_, NnError>>()?;
        let (outputs, stats) = plan.run(&state.gpu, &weights, values)?;
        let outputs = self
            .outputs
            .iter()
            .zip(outputs)
            .map(|(info, value)| Ok((info.name.clone(), from_tract(&value)?)))
            .collect::<Result<_, NnError>>()?;
        let placement = Placement {
            cpu_nodes: plan.cpu_nodes,
            gpu_nodes: plan.gpu_nodes,
            gpu_time: stats.gpu_time,
            cpu_time: Some(started.elapsed().saturating_sub(stats.waited)),
        };
        Ok((outputs, placement))
    }
}

/// Marks a model busy (not evictable) for the life of a call on this thread.
struct Busy<'a>(&'a GpuModel);

impl<'a> Busy<'a> {
    fn new(model: &'a GpuModel) -> Self {
        model.busy.fetch_add(1, Ordering::SeqCst);
        model.last_used.store(model.shared.tick(), Ordering::SeqCst);
        RUNNING.with(|r| r.set(model as *const GpuModel));
        Busy(model)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(std::ptr::null()));
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LoadedModel for GpuModel {
    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn run(&self, given: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
        self.run_placed(given).map(|(outputs, _)| outputs)
    }

    /// A GPU call waits on the device: never on the async executor, however fast it was.
    fn runs_inline(&self) -> bool {
        false
    }

    fn run_placed(&self, given: Vec<(String, HostTensor)>) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        let ordered = match_inputs(&self.inputs, given)?;
        let _busy = Busy::new(self);
        match self.run_once(&ordered) {
            // A device lost during the call: once more, on a new device.
            Err(_) if self.state.lock().map(|s| s.as_ref().is_some_and(|s| s.gpu.is_lost())).unwrap_or(false) => {
                self.run_once(&ordered)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ElemType;

    fn digits() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/digits/digits.onnx");
        std::fs::read(path).expect("samples/digits/digits.onnx")
    }

    fn input() -> Vec<(String, HostTensor)> {
        let data = (0..64).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect();
        vec![("input".into(), HostTensor { dims: vec![1, 64], ty: ElemType::F32, data })]
    }

    fn batch(n: u32) -> Vec<(String, HostTensor)> {
        let data = (0..64 * n).flat_map(|i| ((i % 64) as f32 / 64.0).to_le_bytes()).collect();
        vec![("input".into(), HostTensor { dims: vec![n, 64], ty: ElemType::F32, data })]
    }

    /// One model called with ever new batch sizes on a budget that holds one plan's buffers:
    /// its own idle plans are trimmed to make room, never a permanent busy error.
    #[test]
    fn a_model_trims_its_own_idle_plans() {
        let Some(probe) = Wgpu::discover(1 << 30) else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs lavapipe");
            return;
        };
        let measured = probe.load_model(&digits()).expect("loads");
        measured.run_placed(batch(8)).expect("runs");
        let one = probe.memory().0;
        let gpu = Wgpu::discover(one + one / 4).expect("the same adapter");
        let model = gpu.load_model(&digits()).expect("loads");
        for n in [8, 7, 6, 5, 8, 3, 2, 1] {
            let (outputs, _) = model.run_placed(batch(n)).expect("trims and runs");
            assert_eq!(outputs[0].1.dims, vec![n, 10]);
            assert!(gpu.memory().0 <= one + one / 4);
        }
    }

    /// A call that needs GPU memory held by a model that is running (not idle, so not
    /// evictable) gets a busy error, and succeeds once that model is idle again.
    #[test]
    fn memory_held_by_running_models_is_busy_not_evicted() {
        let Some(probe) = Wgpu::discover(1 << 30) else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs lavapipe");
            return;
        };
        // Room for one copy of the model, not two.
        let measured = probe.load_model(&digits()).expect("loads");
        measured.run_placed(input()).expect("runs");
        let one = probe.memory().0;
        let gpu = Wgpu::discover(one + one / 2).expect("the same adapter");
        let (first, second) = (gpu.load_model(&digits()).expect("loads"), gpu.load_model(&digits()).expect("loads"));
        first.run_placed(input()).expect("runs");
        let running = Busy::new(&first);
        let err = second.run_placed(input()).expect_err("no room while the first runs");
        assert_eq!(err.code, ErrorCode::RuntimeError, "{err}");
        assert!(err.message.starts_with("busy:"), "{err}");
        drop(running);
        second.run_placed(input()).expect("the idle first is evicted");
        assert!(!first.holds_memory(), "the first was evicted");
    }
}
