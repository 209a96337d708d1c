//! Native inference behind `wasi:nn`: engines, host tensors, the shared graph cache.
//!
//! Nothing here names wasmtime: the WIT glue lives in `runtime::nn`, which turns guest calls
//! into calls on [`Graphs`] (load, cache) and [`LoadedGraph::run`] (compute), and turns
//! [`NnError`]s into the WIT `error` resource. Engines sit behind one small trait so that one
//! conformance suite can run against each (tract's `test-rt` pattern).

pub mod devices;
pub mod gpu;
pub mod graphs;
pub mod monitor;
pub mod onnxruntime;
pub mod probe;
pub mod tract;

use std::fmt;
use std::sync::Arc;

pub use graphs::Graphs;

/// Element type of a host tensor: wasi:nn's seven, and the rest of the Open Inference
/// Protocol's fixed-size types (models served at `/v2` may take any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ElemType {
    F16,
    F32,
    F64,
    Bf16,
    U8,
    I32,
    I64,
    Bool,
    I8,
    I16,
    U16,
    U32,
    U64,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::U8 | ElemType::I8 | ElemType::Bool => 1,
            ElemType::F16 | ElemType::Bf16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
        }
    }

    /// The Open Inference Protocol's name of this type.
    pub fn oip_name(self) -> &'static str {
        match self {
            ElemType::F16 => "FP16",
            ElemType::F32 => "FP32",
            ElemType::F64 => "FP64",
            ElemType::Bf16 => "BF16",
            ElemType::U8 => "UINT8",
            ElemType::I32 => "INT32",
            ElemType::I64 => "INT64",
            ElemType::Bool => "BOOL",
            ElemType::I8 => "INT8",
            ElemType::I16 => "INT16",
            ElemType::U16 => "UINT16",
            ElemType::U32 => "UINT32",
            ElemType::U64 => "UINT64",
        }
    }

    /// The type the Open Inference Protocol calls `name` (`BYTES` has no fixed size: `None`).
    pub fn from_oip_name(name: &str) -> Option<Self> {
        Some(match name {
            "FP16" => ElemType::F16,
            "FP32" => ElemType::F32,
            "FP64" => ElemType::F64,
            "BF16" => ElemType::Bf16,
            "UINT8" => ElemType::U8,
            "INT32" => ElemType::I32,
            "INT64" => ElemType::I64,
            "BOOL" => ElemType::Bool,
            "INT8" => ElemType::I8,
            "INT16" => ElemType::I16,
            "UINT16" => ElemType::U16,
            "UINT32" => ElemType::U32,
            "UINT64" => ElemType::U64,
            _ => return None,
        })
    }
}

/// A tensor on the host: dimensions, element type, little-endian row-major bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<u32>,
    pub ty: ElemType,
    pub data: Vec<u8>,
}

impl HostTensor {
    /// Checks that the data length matches the dimensions, without trusting either.
    pub fn new(dims: Vec<u32>, ty: ElemType, data: Vec<u8>) -> Result<Self, NnError> {
        let expected = dims
            .iter()
            .try_fold(ty.size() as u64, |acc, d| acc.checked_mul(u64::from(*d)))
            .ok_or_else(|| NnError::new(ErrorCode::InvalidArgument, "tensor dimensions overflow"))?;
        if expected != data.len() as u64 {
            return Err(NnError::new(
                ErrorCode::InvalidArgument,
                format!("tensor of dimensions {dims:?} and type {ty:?} needs {expected} bytes, got {}", data.len()),
            ));
        }
        Ok(Self { dims, ty, data })
    }
}

/// The wasi:nn error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    InvalidEncoding,
    Timeout,
    RuntimeError,
    UnsupportedOperation,
    TooLarge,
    NotFound,
    Security,
    Unknown,
}

/// A failure reported to the guest as a wasi:nn `error` (never a trap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NnError {
    pub code: ErrorCode,
    pub message: String,
    /// Set when the engine refused the work for want of room (nothing useful ran): the caller
    /// may retry, and a refused `/v2` call is not billed.
    pub refusal: Option<NnRefusal>,
}

/// Why an engine refused work it could otherwise do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NnRefusal {
    /// Its device memory is held by running models now; retry after this many seconds.
    Busy { retry_after_secs: u64 },
    /// It needs more device memory at once than the device or its budget has.
    TooLarge,
}

impl NnError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), refusal: None }
    }

    /// No room now (wasi:nn `runtime-error` for the guest): retry shortly.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::RuntimeError,
            message: message.into(),
            refusal: Some(NnRefusal::Busy { retry_after_secs: 1 }),
        }
    }

    /// Never room enough (wasi:nn `too-large`).
    pub fn too_large_for_device(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::TooLarge, message: message.into(), refusal: Some(NnRefusal::TooLarge) }
    }
}

impl fmt::Display for NnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for NnError {}

/// A named input or output of a model, as declared in it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type name in the Open Inference Protocol's spelling (FP32, INT64, ...).
    pub datatype: String,
    /// -1 for a dynamic dimension.
    pub shape: Vec<i64>,
}

/// Orders the guest's named tensors as the model declares its inputs, checking names,
/// datatypes and shapes. Every engine calls this, so a guest gets the same errors whichever
/// engine runs its model.
pub fn match_inputs(declared: &[TensorInfo], mut given: Vec<(String, HostTensor)>) -> Result<Vec<HostTensor>, NnError> {
    let mut ordered = Vec::with_capacity(declared.len());
    for info in declared {
        let position = given.iter().position(|(name, _)| *name == info.name).ok_or_else(|| {
            NnError::new(
                ErrorCode::InvalidArgument,
                format!("missing input `{}` ({} {:?})", info.name, info.datatype, info.shape),
            )
        })?;
        let (_, tensor) = given.swap_remove(position);
        if tensor.ty.oip_name() != info.datatype {
            return Err(NnError::new(
                ErrorCode::InvalidArgument,
                format!("input `{}` must be {}, got {}", info.name, info.datatype, tensor.ty.oip_name()),
            ));
        }
        let shape_ok = info.shape.len() == tensor.dims.len()
            && info.shape.iter().zip(&tensor.dims).all(|(d, g)| *d < 0 || *d == i64::from(*g));
        if !shape_ok {
            return Err(NnError::new(
                ErrorCode::InvalidArgument,
                format!("input `{}` must have shape {:?} (-1 = any), got {:?}", info.name, info.shape, tensor.dims),
            ));
        }
        ordered.push(tensor);
    }
    if let Some((name, _)) = given.first() {
        let known: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
        return Err(NnError::new(
            ErrorCode::InvalidArgument,
            format!("unknown input `{name}` (the model's inputs: {})", known.join(", ")),
        ));
    }
    Ok(ordered)
}

/// Where one compute ran: how many of the model's nodes ran on each device, and the time the
/// GPU spent (from its timestamps where it has them, else from submit to completion).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub cpu_nodes: u32,
    pub gpu_nodes: u32,
    pub gpu_time: std::time::Duration,
    /// Host time the compute itself spent, when the engine measures it (time blocked on a
    /// device, behind other callers' work too, is neither CPU nor this call's GPU time).
    /// `None`: the whole compute is CPU time.
    pub cpu_time: Option<std::time::Duration>,
}

/// Inference spent by one call: host time (loads, CPU nodes, transfers), GPU time, and the
/// model nodes its computes ran on each device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NnUsage {
    pub cpu: std::time::Duration,
    pub gpu: std::time::Duration,
    pub cpu_nodes: u32,
    pub gpu_nodes: u32,
}

impl NnUsage {
    /// Adds one compute of wall time `took` that ran as `placed`.
    pub fn add(&mut self, took: std::time::Duration, placed: Placement) {
        let gpu = placed.gpu_time.min(took);
        self.cpu += placed.cpu_time.map_or(took.saturating_sub(gpu), |cpu| cpu.min(took));
        self.gpu += gpu;
        self.cpu_nodes = self.cpu_nodes.saturating_add(placed.cpu_nodes);
        self.gpu_nodes = self.gpu_nodes.saturating_add(placed.gpu_nodes);
    }

    /// Adds a graph load of `took`: parsing and optimizing a model is CPU work, whichever
    /// engine it is for (a GPU model's weights upload with its first compute).
    pub fn add_load(&mut self, took: std::time::Duration) {
        self.cpu += took;
    }

    /// Microseconds of (CPU, GPU) time, as metered.
    pub fn micros(&self) -> (i64, i64) {
        (self.cpu.as_micros() as i64, self.gpu.as_micros() as i64)
    }
}

/// One call's inference meter, written by the loads and computes themselves.
///
/// Why shared and written from the compute thread: a compute cannot be interrupted, so when a
/// call's deadline cuts it the computation goes on, holding its pool slot, after the call's
/// future is gone. The compute records its own time here when it ends, and the call waits
/// for [`NnMeter::settled`] before its usage is committed: the bill holds the engine time the
/// call really used, also when it timed out.
#[derive(Debug, Default)]
pub struct NnMeter {
    usage: std::sync::Mutex<NnUsage>,
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// Set when the call's deadline passed: its computes stop at their next boundary.
    pub cancel: Cancel,
}

/// What stops one running compute.
type CancelHook = Box<dyn FnOnce() + Send>;

/// A call's deadline, seen from its computes: once cancelled, a compute stops at its next
/// boundary (tract: between two nodes; ONNX Runtime: its terminate flag; the GPU engine:
/// between two steps, and while it waits on the device) and fails with `timeout`, so its thread and compute slot are free
/// again at once. Engines register what stops them with [`Cancel::on_cancel`].
#[derive(Default)]
pub struct Cancel {
    cancelled: std::sync::atomic::AtomicBool,
    /// What stops the computes running now, by the id [`Cancel::on_cancel`] gave them.
    hooks: std::sync::Mutex<Vec<(u64, CancelHook)>>,
    next_hook: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl Cancel {
    /// Stops every compute of the call; later ones fail before they start.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let hooks = std::mem::take(&mut *self.hooks.lock().unwrap_or_else(|e| e.into_inner()));
            for (_, hook) in hooks {
                hook();
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `hook` when the call is cancelled (at once when it already is). The compute that
    /// registered it drops it with [`Cancel::forget`] when it ends, so a call's many computes
    /// do not pile hooks up.
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) -> u64 {
        let id = self.next_hook.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_cancelled() {
            drop(hooks);
            hook();
        } else {
            hooks.push((id, Box::new(hook)));
        }
        id
    }

    /// Drops the hook `id` (its compute ended).
    pub fn forget(&self, id: u64) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).retain(|(hook, _)| *hook != id);
    }

    /// `Err(timeout)` once cancelled: what a compute returns at a boundary.
    pub fn check(&self) -> Result<(), NnError> {
        if self.is_cancelled() { Err(Self::error()) } else { Ok(()) }
    }

    /// The error of a compute stopped by its call's deadline.
    pub fn error() -> NnError {
        NnError::new(ErrorCode::Timeout, "the compute was stopped at the call's deadline")
    }
}

impl NnMeter {
    /// The meter's total so far.
    pub fn usage(&self) -> NnUsage {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one compute of wall time `took` that ran as `placed`.
    pub fn add(&self, took: std::time::Duration, placed: Placement) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).add(took, placed);
    }

    /// Records a graph load.
    pub fn add_load(&self, took: std::time::Duration) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).add_load(took);
    }

    /// Marks a compute as running until the guard drops (on its own thread, when it ends).
    pub fn running(self: &std::sync::Arc<Self>) -> Running {
        self.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running(self.clone())
    }

    /// Whether no compute of this call is running now.
    pub fn is_idle(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Waits until no compute of this call is running.
    pub async fn settled(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }
}

/// A running compute of a call (see [`NnMeter::running`]).
#[derive(Debug)]
pub struct Running(std::sync::Arc<NnMeter>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

tokio::task_local! {
    /// Set for the task of a mirrored copy of a call (see `crate::releases`): its computes
    /// count in engine time but not in the model's monitor (they repeat a call already counted).
    pub static MIRRORED: bool;
}

/// A tenant's named model version, as a compute of it is counted (metrics, monitoring).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: String,
    pub version: u32,
}

/// A model compiled by one engine, shareable by every instance and tenant that loads the
/// same bytes. `run` must be callable from many threads at once.
pub trait LoadedModel: Send + Sync {
    /// The engine that loaded it (`tract`, `onnxruntime`, `wgpu`), for metrics.
    fn engine(&self) -> &'static str {
        "unknown"
    }
    fn run(&self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError>;
    fn inputs(&self) -> &[TensorInfo];
    fn outputs(&self) -> &[TensorInfo];

    /// Whether a call measured fast may run on the calling (async) thread; engines that wait
    /// on a device say no.
    fn runs_inline(&self) -> bool {
        true
    }

    /// Nodes of the model (CPU engines run all of them on the CPU).
    fn nodes(&self) -> u32 {
        0
    }

    /// `run`, and where it ran.
    fn run_placed(&self, inputs: Vec<(String, HostTensor)>) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        let outputs = self.run(inputs)?;
        Ok((outputs, Placement { cpu_nodes: self.nodes(), ..Placement::default() }))
    }

    /// Whether this model makes a plan per input (shapes, small integer values): building one
    /// folds constants, which for some inputs can ask for any amount of memory.
    fn specializes(&self) -> bool {
        false
    }

    /// Sets what checks each new plan's inputs before the plan is built (the server's probe,
    /// see [`probe`]); a model that [`LoadedModel::specializes`] keeps it.
    fn guard_specializations(&self, _check: SpecializationCheck) {}

    /// Builds the plan for these inputs (in [`LoadedModel::inputs`] order) without running it:
    /// what the probe child does under its memory limit.
    fn prepare(&self, _ordered: &[HostTensor]) -> Result<(), NnError> {
        Ok(())
    }

    /// `run_placed` within `bounds`: stopping at the first boundary after its cancel is set
    /// (see [`Cancel`]), and refusing, before it allocates them, tensors past its bytes.
    /// Engines that cannot stop mid-way check the cancel only before they start; engines that
    /// allocate out of sight bound only their outputs (checked by the caller).
    fn run_bounded(
        &self,
        inputs: Vec<(String, HostTensor)>,
        bounds: &Bounds<'_>,
    ) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        bounds.cancel.check()?;
        self.run_placed(inputs)
    }
}

/// Checks that building a plan for these inputs (in the model's input order) stays within
/// the memory a load may use; run before each new specialization (see [`probe`]).
pub type SpecializationCheck = Box<dyn Fn(&[HostTensor]) -> Result<(), NnError> + Send + Sync>;

/// What bounds one compute: its call's deadline, and the bytes its tensors (inputs, the values
/// it makes along the way, outputs) may hold at once.
pub struct Bounds<'a> {
    pub cancel: &'a Cancel,
    pub max_bytes: u64,
}

impl Bounds<'_> {
    /// The refusal of a compute whose tensors would pass [`Bounds::max_bytes`].
    pub fn over(&self, what: &str, need: u64) -> NnError {
        NnError::new(
            ErrorCode::TooLarge,
            format!(
                "this input needs more memory than the call may use: {what} would bring the compute's tensors to {need} bytes, over the {} bytes left to it (the function's memory limit; on /v2 the plan's model_memory)",
                self.max_bytes
            ),
        )
    }
}

/// An inference engine: loads model bytes into a [`LoadedModel`].
pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;
    fn load(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError>;
}

/// Whether a test whose dependency (ONNX Runtime, a GPU adapter) is missing must fail instead
/// of skipping: under CI (`CI=true`) and under `scripts/test.sh` (`INFERCELL_STRICT_TESTS=1`).
#[cfg(test)]
pub(crate) fn strict_tests() -> bool {
    std::env::var("CI").as_deref() == Ok("true") || std::env::var("INFERCELL_STRICT_TESTS").as_deref() == Ok("1")
}
