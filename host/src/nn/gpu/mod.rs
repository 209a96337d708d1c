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

mod device;
pub mod kernels;
mod memory;
mod model;
pub mod plan;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use tract_onnx::prelude::*;

pub use self::device::Gpu;
use self::device::best_adapter;
pub use self::memory::{Budget, Tracked};
use self::model::GpuModel;
use self::plan::{NodePlacement, Plan};
use super::tract::{Pin, parse, pin};
use super::{ErrorCode, HostTensor, NnError};

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

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// What building a GPU plan for `ordered` does on the CPU (tract pins inputs and declutters
/// the graph, folding constants), without a device: what the probe child runs for `wgpu`.
pub(crate) fn prepare_on_cpu(onnx: &[u8], ordered: &[crate::nn::HostTensor]) -> Result<(), NnError> {
    let parsed = crate::nn::tract::parse(onnx)?;
    let mut last = None;
    for p in PINS {
        match pin(&parsed.model, ordered, &p.select(ordered)).and_then(declutter) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| NnError::new(ErrorCode::UnsupportedOperation, "cannot plan this model")))
}

/// Tract's decluttered graph of a pinned model.
fn declutter(model: InferenceModel) -> Result<TypedModel, NnError> {
    model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| NnError::new(ErrorCode::UnsupportedOperation, format!("{e:#}")))
}
