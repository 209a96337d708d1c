//! A model on the GPU engine: its weights on the device, its plans per input shapes, and its
//! calls (made once more on a new device when the device is lost during one).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tract_onnx::prelude::*;

use super::memory::{Busy, too_large};
use super::plan::{self, Plan};
use super::{Gpu, PINS, Shared, Tracked, Wgpu, declutter};
use crate::nn::tract::{Parsed, Specializations, describe_typed, from_tract, named, parse, pin, to_tract};
use crate::nn::{Engine, ErrorCode, HostTensor, LoadedModel, NnError, Placement, TensorInfo, match_inputs};

/// A model on the GPU engine.
pub(super) struct GpuModel {
    pub(super) shared: Arc<Shared>,
    model: InferenceModel,
    _symbols: SymbolScope,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// Why one plan cannot serve every input (tract's error when typing it generically).
    why: String,
    state: Mutex<Option<Arc<State>>>,
    pub(super) busy: AtomicUsize,
    pub(super) last_used: AtomicU64,
    /// What checks a new plan's inputs before it is built (see [`crate::nn::SpecializationCheck`]).
    check: std::sync::OnceLock<crate::nn::SpecializationCheck>,
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
            check: std::sync::OnceLock::new(),
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

    pub(super) fn holds_memory(&self) -> bool {
        self.state.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    pub(super) fn evict(&self) {
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
    pub(super) fn trim(&self) -> bool {
        let Some(state) = self.state.lock().ok().and_then(|s| s.clone()) else { return false };
        let before = self.shared.budget.used.load(Ordering::SeqCst);
        state.plans.for_each(|plan| {
            plan.arenas_clear();
            *plan.bound.lock().unwrap_or_else(|e| e.into_inner()) = None;
        });
        self.shared.budget.used.load(Ordering::SeqCst) < before
    }

    fn run_once(
        &self,
        ordered: &[HostTensor],
        cancel: Option<&crate::nn::Cancel>,
    ) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        let started = std::time::Instant::now();
        let state = self.state()?;
        let (plan, fed) = state.plans.get(ordered, &self.why, self.check.get(), |pinned| {
            let model = declutter(pin(&self.model, ordered, pinned)?)?;
            Plan::build(&state.gpu, model, self.shared.fusion.load(Ordering::SeqCst)).map(Arc::new)
        })?;
        if plan.need_bytes > self.shared.budget.cap {
            return Err(too_large(plan.need_bytes, self.shared.budget.cap));
        }
        let weights = self.weights(&state, &plan)?;
        let values: Vec<TValue> =
            fed.iter().map(|i| Ok(to_tract(&ordered[*i])?.into_tvalue())).collect::<Result<_, NnError>>()?;
        let (outputs, stats) = plan.run(&state.gpu, &weights, values, cancel)?;
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

impl LoadedModel for GpuModel {
    fn engine(&self) -> &'static str {
        "wgpu"
    }

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

    /// Plans are made per input shapes (and pinned values): each new one is checked first.
    fn specializes(&self) -> bool {
        true
    }

    fn guard_specializations(&self, check: crate::nn::SpecializationCheck) {
        let _ = self.check.set(check);
    }

    fn run_placed(&self, given: Vec<(String, HostTensor)>) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        self.run_cancellable(given, None)
    }

    /// Stops between two steps (a run of dispatches, an upload, a read-back, a CPU node) and
    /// while it waits on the device once the call's deadline passed.
    fn run_bounded(
        &self,
        given: Vec<(String, HostTensor)>,
        bounds: &crate::nn::Bounds<'_>,
    ) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        self.run_cancellable(given, Some(bounds.cancel))
    }
}

impl GpuModel {
    fn run_cancellable(
        &self,
        given: Vec<(String, HostTensor)>,
        cancel: Option<&crate::nn::Cancel>,
    ) -> Result<(Vec<(String, HostTensor)>, Placement), NnError> {
        let ordered = match_inputs(&self.inputs, given)?;
        let _busy = Busy::new(self);
        match self.run_once(&ordered, cancel) {
            // A device lost during the call: once more, on a new device.
            Err(e)
                if e.code != crate::nn::ErrorCode::Timeout
                    && self.state.lock().map(|s| s.as_ref().is_some_and(|s| s.gpu.is_lost())).unwrap_or(false) =>
            {
                self.run_once(&ordered, cancel)
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
            assert!(!crate::nn::strict_tests(), "CI installs lavapipe");
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
            assert!(!crate::nn::strict_tests(), "CI installs lavapipe");
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
        assert!(matches!(err.refusal, Some(crate::nn::NnRefusal::Busy { .. })), "{err}");
        drop(running);
        second.run_placed(input()).expect("the idle first is evicted");
        assert!(!first.holds_memory(), "the first was evicted");
    }
}
