//! A plan: one model, specialized to concrete input shapes and decluttered by tract, placed
//! node by node. Nodes with a kernel run on the GPU; every other node runs on the CPU through
//! tract's own evaluation, and values cross between the two only where a node on one side
//! reads a value made on the other. Intermediate values live in buffers reused once their
//! last reader has run; weights are uploaded once per model and shared by every plan and
//! caller.
//!
//! A plan is immutable and shared. Each concurrent caller runs it with an [`Arena`] (the
//! buffers and bind groups of one run), taken from the plan's pool or made when none is free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use super::kernels::{self, Kernel, Lowered, Operand};
use super::{Gpu, Tracked};
use crate::nn::{ErrorCode, NnError};

/// Where one node of a model runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodePlacement {
    pub node: String,
    pub op: String,
    /// `gpu` or `cpu`.
    pub device: &'static str,
    /// Why a node runs on the CPU, or which node's GPU dispatch it runs in (`fused into X`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    /// Fed by the caller.
    Input,
    /// A constant of the model.
    Const,
    /// Made by a node on the CPU.
    Cpu,
    /// Made by a node on the GPU.
    Gpu,
}

struct Value {
    shape: Vec<usize>,
    home: Home,
    /// The value whose buffer this one shares (itself, unless made by an alias).
    root: usize,
    /// Read on the GPU as indices of an axis of this length (gathers).
    indices: Option<usize>,
}

/// A weight: a constant read on the GPU.
pub struct WeightSpec {
    pub key: String,
    pub tensor: Arc<Tensor>,
    /// Uploaded as indices into an axis of this length.
    pub indices: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Bind {
    Value(usize),
    Weight(usize),
    /// The dispatch's own parameter buffer, standing in for an unused binding.
    Params,
}

enum Step {
    Upload { value: usize },
    Dispatch { kernel: Kernel, binds: Vec<Bind>, params: usize, groups: [u32; 3] },
    Download { value: usize },
    Cpu { node: usize },
}

/// Buffers of one run.
struct Arena {
    slots: Vec<Tracked>,
    /// Per step: the bind group of a dispatch.
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// Per step: the mappable buffer of a download.
    staging: Vec<Option<Tracked>>,
    timestamps: Option<Timestamps>,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: Tracked,
    readback: Tracked,
}

/// Most GPU segments (runs of dispatches between CPU work) timed with timestamp queries.
const MAX_TIMED_SEGMENTS: u32 = 2048;

/// What one run did on each device.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    /// The run's kernels, from timestamps; else from submit to completion.
    pub gpu_time: Duration,
    /// Time spent blocked on the device (the run's own work and any queued before it).
    pub waited: Duration,
}

pub struct Plan {
    model: TypedModel,
    values: Vec<Value>,
    outlet_values: HashMap<OutletId, usize>,
    steps: Vec<Step>,
    fed: Vec<usize>,
    outputs: Vec<usize>,
    consts: Vec<(usize, Arc<Tensor>)>,
    pub weights: Vec<WeightSpec>,
    /// The weights' buffers once bound (the model's, shared with its other plans).
    pub bound: Mutex<Option<Vec<Arc<Tracked>>>>,
    /// Root value -> slot, and each slot's size in bytes.
    slot_of: HashMap<usize, usize>,
    slot_bytes: Vec<u64>,
    params: Vec<wgpu::Buffer>,
    segments: u32,
    pub placement: Vec<NodePlacement>,
    pub gpu_nodes: u32,
    pub cpu_nodes: u32,
    /// GPU memory one run needs: the weights and one arena's buffers.
    pub need_bytes: u64,
    arenas: Mutex<Vec<Arena>>,
}

fn internal(e: impl std::fmt::Display) -> NnError {
    NnError::new(ErrorCode::RuntimeError, format!("{e:#}"))
}

impl Plan {
    /// Places `model` (decluttered, concrete shapes) on `gpu` and the CPU, fusing epilogues
    /// when `fusion` is on.
    pub fn build(gpu: &Gpu, model: TypedModel, fusion: bool) -> Result<Plan, NnError> {
        let mut order = model.eval_order().map_err(internal)?;
        // Inputs no output depends on are still fed.
        for input in model.input_outlets().map_err(internal)?.iter().rev() {
            if !order.contains(&input.node) {
                order.insert(0, input.node);
            }
        }
        let mut values: Vec<Value> = Vec::new();
        let mut outlet_values: HashMap<OutletId, usize> = HashMap::new();
        let mut placement = Vec::new();
        // Per node: its lowering when it runs on the GPU.
        let mut lowered: HashMap<usize, Lowered> = HashMap::new();
        let mut consts = Vec::new();
        let (mut gpu_nodes, mut cpu_nodes) = (0, 0);
        // What each node could run as on the GPU, whatever the homes of its inputs.
        let mut capable: HashMap<usize, Result<Lowered, String>> = HashMap::new();
        for &id in &order {
            let node = model.node(id);
            if node.inputs.is_empty() {
                continue;
            }
            let inputs: Vec<&TypedFact> =
                node.inputs.iter().map(|o| model.outlet_fact(*o)).collect::<TractResult<_>>().map_err(internal)?;
            let output = model.outlet_fact(OutletId::new(id, 0)).map_err(internal)?;
            capable.insert(id, kernels::lower(node, &inputs, output));
        }
        // Epilogues: a matrix product or convolution whose only reader adds a value to it (a
        // bias, a residual) and/or applies ReLU does that in its own dispatch.
        let (fused_into, extra_of) = if fusion { fuse(&model, &order, &mut capable)? } else { Default::default() };
        for &id in &order {
            let node = model.node(id);
            let home = if node.op_is::<tract_onnx::tract_core::ops::source::TypedSource>() {
                Home::Input
            } else if let Some(k) = node.op_as::<tract_onnx::tract_core::ops::konst::Const>() {
                consts.push((values.len(), k.val().clone()));
                Home::Const
            } else {
                let first_home = node.inputs.first().map(|o| values[outlet_values[o]].root).map(|r| values[r].home);
                // A reshape goes where its value is, unless only GPU kernels read its result.
                let successors: Vec<_> = node.outputs.iter().flat_map(|o| &o.successors).collect();
                let is_output = model.output_outlets().map_err(internal)?.iter().any(|o| o.node == id);
                let feeds_gpu = !successors.is_empty()
                    && !is_output
                    && successors
                        .iter()
                        .all(|inlet| matches!(capable.get(&inlet.node), Some(Ok(Lowered::Dispatches(_)))));
                let decided = match capable.remove(&id).unwrap_or_else(|| Err("no inputs".into())) {
                    Ok(Lowered::Alias)
                        if first_home != Some(Home::Gpu) && !(feeds_gpu && first_home != Some(Home::Const)) =>
                    {
                        Err("reshapes a value on the CPU".into())
                    }
                    other => other,
                };
                let (device, why) = match decided {
                    Ok(l) => {
                        let why = matches!(l, Lowered::Fused)
                            .then(|| format!("fused into {}", model.node(fused_into[&id]).name));
                        lowered.insert(id, l);
                        gpu_nodes += 1;
                        ("gpu", why)
                    }
                    Err(why) => {
                        cpu_nodes += 1;
                        ("cpu", Some(why))
                    }
                };
                placement.push(NodePlacement { node: node.name.clone(), op: node.op.name().to_string(), device, why });
                if device == "gpu" { Home::Gpu } else { Home::Cpu }
            };
            for slot in 0..node.outputs.len() {
                let outlet = OutletId::new(id, slot);
                let fact = model.outlet_fact(outlet).map_err(internal)?;
                let shape = kernels::concrete(fact).map_err(|e| NnError::new(ErrorCode::UnsupportedOperation, e))?;
                let index = values.len();
                let root = match lowered.get(&id) {
                    Some(Lowered::Alias) => values[outlet_values[&node.inputs[0]]].root,
                    Some(Lowered::Fused) => values[outlet_values[&OutletId::new(fused_into[&id], 0)]].root,
                    _ => index,
                };
                values.push(Value { shape, home, root, indices: None });
                outlet_values.insert(outlet, index);
            }
        }
        let value_of = |o: &OutletId| outlet_values[o];
        let fed: Vec<usize> = model.input_outlets().map_err(internal)?.iter().map(value_of).collect();
        let outputs: Vec<usize> = model.output_outlets().map_err(internal)?.iter().map(value_of).collect();

        // Which values the GPU reads (and as what), and which the CPU reads.
        let mut on_gpu = vec![false; values.len()];
        let mut on_cpu = vec![false; values.len()];
        for &id in &order {
            let node = model.node(id);
            match lowered.get(&id) {
                Some(Lowered::Alias) => on_gpu[value_of(&node.inputs[0])] = true,
                Some(Lowered::Fused) => {}
                Some(Lowered::Dispatches(dispatches)) => {
                    for d in dispatches {
                        for operand in &d.operands {
                            match operand {
                                Operand::Input(k) => on_gpu[value_of(&node.inputs[*k])] = true,
                                Operand::Indices(k) => {
                                    let v = value_of(&node.inputs[*k]);
                                    on_gpu[v] = true;
                                    let len = model.outlet_fact(node.inputs[0]).map_err(internal)?.shape[node
                                        .op_as::<tract_onnx::tract_core::ops::array::Gather>()
                                        .map_or(0, |g| g.axis)]
                                    .as_i64()
                                    .ok_or_else(|| internal("a gather axis is not concrete"))?
                                        as usize;
                                    values[v].indices = Some(values[v].indices.map_or(len, |l| l.min(len)));
                                }
                                Operand::Extra => {
                                    if let Some(extra) = extra_of.get(&id) {
                                        on_gpu[value_of(extra)] = true;
                                    }
                                }
                                Operand::Output => {}
                            }
                        }
                    }
                }
                None => {
                    for input in &node.inputs {
                        on_cpu[value_of(input)] = true;
                    }
                }
            }
        }
        for v in &outputs {
            on_cpu[*v] = true;
        }

        // Weights: constants the GPU reads.
        let mut weights = Vec::new();
        let mut weight_of = HashMap::new();
        for (v, tensor) in &consts {
            if on_gpu[*v] {
                let node = order.iter().map(|id| model.node(*id)).find(|n| value_of(&OutletId::new(n.id, 0)) == *v);
                let key = node.map_or_else(|| format!("#{v}"), |n| n.name.clone());
                weight_of.insert(*v, weights.len());
                weights.push(WeightSpec { key, tensor: tensor.clone(), indices: values[*v].indices });
            }
        }
        let bind = |v: usize| match weight_of.get(&v) {
            Some(w) => Bind::Weight(*w),
            None => Bind::Value(v),
        };

        // Steps, in evaluation order.
        let mut steps = Vec::new();
        let mut params = Vec::new();
        let mut downloaded = vec![false; values.len()];
        for v in &fed {
            if on_gpu[*v] {
                steps.push(Step::Upload { value: *v });
            }
        }
        for &id in &order {
            let node = model.node(id);
            if matches!(values[value_of(&OutletId::new(id, 0))].home, Home::Input | Home::Const) {
                continue;
            }
            match lowered.get(&id) {
                Some(Lowered::Alias | Lowered::Fused) => {}
                Some(Lowered::Dispatches(dispatches)) => {
                    let out = value_of(&OutletId::new(id, 0));
                    for d in dispatches {
                        let binds = d
                            .operands
                            .iter()
                            .map(|o| match o {
                                Operand::Input(k) | Operand::Indices(k) => bind(value_of(&node.inputs[*k])),
                                Operand::Output => Bind::Value(out),
                                Operand::Extra => extra_of.get(&id).map_or(Bind::Params, |o| bind(value_of(o))),
                            })
                            .collect();
                        steps.push(Step::Dispatch { kernel: d.kernel, binds, params: params.len(), groups: d.groups });
                        params.push(gpu.params(&d.params));
                    }
                }
                None => {
                    for input in &node.inputs {
                        let v = value_of(input);
                        if values[v].home == Home::Gpu && !downloaded[v] {
                            steps.push(Step::Download { value: v });
                            downloaded[v] = true;
                        }
                    }
                    steps.push(Step::Cpu { node: id });
                    for slot in 0..node.outputs.len() {
                        let v = value_of(&OutletId::new(id, slot));
                        if on_gpu[v] {
                            steps.push(Step::Upload { value: v });
                        }
                    }
                }
            }
        }
        for v in &outputs {
            if values[*v].home == Home::Gpu && !downloaded[*v] {
                steps.push(Step::Download { value: *v });
                downloaded[*v] = true;
            }
        }

        // Buffers: each root value gets a slot from its first write to its last read; a slot
        // whose value is no longer read is reused by a later value that fits in it.
        let mut first: HashMap<usize, usize> = HashMap::new();
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (s, step) in steps.iter().enumerate() {
            let mut touch = |v: usize| {
                let root = values[v].root;
                first.entry(root).or_insert(s);
                last.insert(root, s);
            };
            match step {
                Step::Upload { value } | Step::Download { value } => touch(*value),
                Step::Dispatch { binds, .. } => binds.iter().for_each(|b| {
                    if let Bind::Value(v) = b {
                        touch(*v)
                    }
                }),
                Step::Cpu { .. } => {}
            }
        }
        let bytes_of = |v: usize| -> u64 {
            let elements: usize = values[v].shape.iter().product();
            (elements as u64 * 4).max(4)
        };
        let mut slot_of = HashMap::new();
        let mut slot_bytes: Vec<u64> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for s in 0..steps.len() {
            let mut starting: Vec<usize> = first.iter().filter(|(_, f)| **f == s).map(|(r, _)| *r).collect();
            starting.sort_unstable();
            for root in starting {
                let need = bytes_of(root);
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| slot_bytes[**slot] >= need)
                    .min_by_key(|(_, slot)| slot_bytes[**slot])
                    .map(|(i, _)| i);
                let slot = match best {
                    Some(i) => free.swap_remove(i),
                    None => {
                        slot_bytes.push(need);
                        slot_bytes.len() - 1
                    }
                };
                slot_of.insert(root, slot);
            }
            let mut ending: Vec<usize> = last.iter().filter(|(_, l)| **l == s).map(|(r, _)| *r).collect();
            ending.sort_unstable();
            free.extend(ending.iter().map(|r| slot_of[r]));
        }
        let mut segments = 0;
        let mut in_segment = false;
        for step in &steps {
            let dispatch = matches!(step, Step::Dispatch { .. });
            if dispatch && !in_segment {
                segments += 1;
            }
            in_segment = dispatch;
        }
        let weight_bytes: u64 = weights.iter().map(|w| (w.tensor.len() as u64 * 4).max(4)).sum();
        let staging_bytes: u64 =
            steps.iter().map(|s| if let Step::Download { value } = s { bytes_of(*value) } else { 0 }).sum();
        let need_bytes = weight_bytes + slot_bytes.iter().sum::<u64>() + staging_bytes;
        Ok(Plan {
            need_bytes,
            model,
            values,
            outlet_values,
            steps,
            fed,
            outputs,
            consts,
            weights,
            bound: Mutex::new(None),
            slot_of,
            slot_bytes,
            params,
            segments,
            placement,
            gpu_nodes,
            cpu_nodes,
            arenas: Mutex::new(Vec::new()),
        })
    }

    fn slot(&self, v: usize) -> usize {
        self.slot_of[&self.values[v].root]
    }

    fn value_bytes(&self, v: usize) -> u64 {
        self.values[v].shape.iter().product::<usize>() as u64 * 4
    }

    /// Runs the plan on `fed` (the model's inputs, in order), with the model's weight buffers.
    pub fn run(
        &self,
        gpu: &Gpu,
        weights: &[Arc<Tracked>],
        fed: Vec<TValue>,
    ) -> Result<(TVec<TValue>, RunStats), NnError> {
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pooled = self.arenas.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let result = match pooled {
            Some(arena) => Ok(arena),
            None => self.arena(gpu, weights),
        }
        .and_then(|mut arena| self.execute(gpu, &mut arena, fed).map(|out| (out, arena)));
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(NnError::new(ErrorCode::RuntimeError, format!("GPU: {error}")));
        }
        // An arena goes back to the pool only after a clean run: a failed one may hold mapped
        // or half-written buffers.
        let (out, arena) = result?;
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
        Ok(out)
    }

    /// Makes the buffers and bind groups of one run.
    fn arena(&self, gpu: &Gpu, weights: &[Arc<Tracked>]) -> Result<Arena, NnError> {
        use wgpu::BufferUsages as U;
        let slots: Vec<Tracked> = self
            .slot_bytes
            .iter()
            .map(|bytes| gpu.buffer(*bytes, U::STORAGE | U::COPY_DST | U::COPY_SRC))
            .collect::<Result<_, _>>()?;
        let mut bind_groups = Vec::with_capacity(self.steps.len());
        let mut staging = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let mut group = None;
            let mut stage = None;
            match step {
                Step::Dispatch { kernel, binds, params, .. } => {
                    let layout = gpu.pipeline(*kernel).get_bind_group_layout(0);
                    let mut buffers: Vec<&wgpu::Buffer> = binds
                        .iter()
                        .map(|b| match b {
                            Bind::Value(v) => &slots[self.slot(*v)].buffer,
                            Bind::Weight(w) => &weights[*w].buffer,
                            Bind::Params => &self.params[*params],
                        })
                        .collect();
                    buffers.push(&self.params[*params]);
                    let entries: Vec<wgpu::BindGroupEntry> = buffers
                        .iter()
                        .enumerate()
                        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
                        .collect();
                    group = Some(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name()),
                        layout: &layout,
                        entries: &entries,
                    }));
                }
                Step::Download { value } => {
                    stage = Some(gpu.buffer(self.value_bytes(*value).max(4), U::MAP_READ | U::COPY_DST)?);
                }
                _ => {}
            }
            bind_groups.push(group);
            staging.push(stage);
        }
        let timestamps = match (gpu.timestamps, self.segments) {
            // wgpu allows 4096 queries per set: a plan with more GPU segments than 2048 is timed
            // from submit to completion instead.
            (true, segments) if segments > 0 && segments <= MAX_TIMED_SEGMENTS => {
                let count = segments * 2;
                let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("infercell timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let bytes = u64::from(count) * 8;
                Some(Timestamps {
                    set,
                    resolve: gpu.buffer(bytes, U::QUERY_RESOLVE | U::COPY_SRC)?,
                    readback: gpu.buffer(bytes, U::MAP_READ | U::COPY_DST)?,
                })
            }
            _ => None,
        };
        Ok(Arena { slots, bind_groups, staging, timestamps })
    }

    fn execute(&self, gpu: &Gpu, arena: &mut Arena, fed: Vec<TValue>) -> Result<(TVec<TValue>, RunStats), NnError> {
        let mut cpu: Vec<Option<TValue>> = vec![None; self.values.len()];
        for (v, tensor) in &self.consts {
            cpu[*v] = Some(TValue::from_const(tensor.clone()));
        }
        for (v, value) in self.fed.iter().zip(fed) {
            cpu[*v] = Some(value);
        }
        let new_encoder = || gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut encoder: Option<wgpu::CommandEncoder> = None;
        let mut segment = 0u32;
        let mut waited = Duration::ZERO;
        let mut s = 0;
        while s < self.steps.len() {
            match &self.steps[s] {
                Step::Dispatch { .. } => {
                    let end = (s..self.steps.len())
                        .find(|k| !matches!(self.steps[*k], Step::Dispatch { .. }))
                        .unwrap_or(self.steps.len());
                    let enc = encoder.get_or_insert_with(new_encoder);
                    let timestamp_writes = arena.timestamps.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(segment * 2),
                        end_of_pass_write_index: Some(segment * 2 + 1),
                    });
                    let mut pass =
                        enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    for k in s..end {
                        if let (Step::Dispatch { kernel, groups, .. }, Some(group)) =
                            (&self.steps[k], &arena.bind_groups[k])
                        {
                            pass.set_pipeline(gpu.pipeline(*kernel));
                            pass.set_bind_group(0, group, &[]);
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        }
                    }
                    drop(pass);
                    segment += 1;
                    s = end;
                }
                Step::Upload { value } => {
                    // Work recorded so far may still read this buffer's previous value: it goes
                    // to the queue first, and the write lands after it.
                    if let Some(enc) = encoder.take() {
                        gpu.queue.submit([enc.finish()]);
                    }
                    let tensor = cpu[*value].as_ref().ok_or_else(|| internal("an uploaded value is missing"))?;
                    if tensor.shape() != self.values[*value].shape.as_slice() {
                        return Err(internal(format!(
                            "a CPU node made shape {:?} where the plan has {:?}",
                            tensor.shape(),
                            self.values[*value].shape
                        )));
                    }
                    let bytes = upload_bytes(tensor, self.values[*value].indices)?;
                    gpu.queue.write_buffer(&arena.slots[self.slot(*value)].buffer, 0, &bytes);
                    s += 1;
                }
                Step::Download { .. } => {
                    let end = (s..self.steps.len())
                        .find(|k| !matches!(self.steps[*k], Step::Download { .. }))
                        .unwrap_or(self.steps.len());
                    let mut enc = encoder.take().unwrap_or_else(new_encoder);
                    let mut reads = Vec::new();
                    for k in s..end {
                        if let (Step::Download { value }, Some(stage)) = (&self.steps[k], &arena.staging[k]) {
                            let bytes = self.value_bytes(*value);
                            if bytes > 0 {
                                enc.copy_buffer_to_buffer(
                                    &arena.slots[self.slot(*value)].buffer,
                                    0,
                                    &stage.buffer,
                                    0,
                                    bytes,
                                );
                            }
                            reads.push((*value, &stage.buffer, bytes));
                        }
                    }
                    let started = Instant::now();
                    let index = gpu.queue.submit([enc.finish()]);
                    let buffers: Vec<(&wgpu::Buffer, u64)> = reads.iter().map(|(_, b, n)| (*b, *n)).collect();
                    let data = gpu.read(index, &buffers)?;
                    waited += started.elapsed();
                    for ((value, _, _), bytes) in reads.iter().zip(data) {
                        let floats: Vec<f32> =
                            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                        let tensor = Tensor::from_shape(&self.values[*value].shape, &floats).map_err(internal)?;
                        cpu[*value] = Some(tensor.into_tvalue());
                    }
                    s = end;
                }
                Step::Cpu { node } => {
                    let node = self.model.node(*node);
                    let inputs: TVec<TValue> = node
                        .inputs
                        .iter()
                        .map(|o| cpu[self.outlet_values[o]].clone().ok_or_else(|| internal("a CPU input is missing")))
                        .collect::<Result<_, _>>()?;
                    let outputs = node
                        .op
                        .eval_out_of_plan(inputs)
                        .map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{}: {e:#}", node.name)))?
                        .ok_or_else(|| {
                            NnError::new(
                                ErrorCode::UnsupportedOperation,
                                format!("{} ({}) cannot run outside a tract plan", node.name, node.op.name()),
                            )
                        })?;
                    for (slot, value) in outputs.into_iter().enumerate() {
                        cpu[self.outlet_values[&OutletId::new(node.id, slot)]] = Some(value);
                    }
                    s += 1;
                }
            }
        }
        let mut gpu_time = waited;
        if let Some(t) = &arena.timestamps {
            let count = segment * 2;
            if count > 0 {
                let mut enc = encoder.take().unwrap_or_else(new_encoder);
                enc.resolve_query_set(&t.set, 0..count, &t.resolve.buffer, 0);
                enc.copy_buffer_to_buffer(&t.resolve.buffer, 0, &t.readback.buffer, 0, u64::from(count) * 8);
                let started = Instant::now();
                let index = gpu.queue.submit([enc.finish()]);
                let data = gpu.read(index, &[(&t.readback.buffer, u64::from(count) * 8)])?;
                waited += started.elapsed();
                let ticks: Vec<u64> =
                    data[0].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
                let total: u64 = ticks.chunks_exact(2).map(|p| p[1].saturating_sub(p[0])).sum();
                gpu_time = Duration::from_nanos((total as f64 * f64::from(gpu.period)) as u64);
            }
        } else if let Some(enc) = encoder.take() {
            let started = Instant::now();
            let index = gpu.queue.submit([enc.finish()]);
            gpu.read(index, &[])?;
            gpu_time += started.elapsed();
            waited += started.elapsed();
        }
        let outputs = self
            .outputs
            .iter()
            .map(|v| cpu[*v].clone().ok_or_else(|| internal("an output is missing")))
            .collect::<Result<_, _>>()?;
        Ok((outputs, RunStats { gpu_time, waited }))
    }

    /// Drops the idle arenas (runs in flight keep theirs).
    pub fn arenas_clear(&self) {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Finds the epilogues (see [`kernels::Epilogue`]): rewrites each host dispatch's epilogue
/// parameters, marks the nodes it absorbs `Fused`, and returns absorbed node -> host node and
/// host node -> the outlet its epilogue adds.
#[allow(clippy::type_complexity)]
fn fuse(
    model: &TypedModel,
    order: &[usize],
    capable: &mut HashMap<usize, Result<Lowered, String>>,
) -> Result<(HashMap<usize, usize>, HashMap<usize, OutletId>), NnError> {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::konst::Const;
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let outputs: Vec<OutletId> = model.output_outlets().map_err(internal)?.to_vec();
    let shape = |o: OutletId| model.outlet_fact(o).ok().and_then(|f| kernels::concrete(f).ok());
    // The one node reading `id`'s only output (not a model output), and the inlet slot it reads.
    let only_reader = |id: usize| -> Option<(usize, usize)> {
        let node = model.node(id);
        let successors = &node.outputs.first()?.successors;
        (node.outputs.len() == 1 && successors.len() == 1 && !outputs.contains(&OutletId::new(id, 0)))
            .then(|| (successors[0].node, successors[0].slot))
    };
    let binary = |capable: &HashMap<usize, Result<Lowered, String>>, id: usize, name: &str| {
        model.node(id).op_as::<TypedBinOp>().is_some_and(|b| b.0.name() == name)
            && matches!(capable.get(&id), Some(Ok(Lowered::Dispatches(_))))
    };
    let zero = |o: OutletId| {
        model.node(o.node).op_as::<Const>().is_some_and(|k| {
            k.val()
                .cast_to::<f32>()
                .ok()
                .and_then(|t| t.to_plain_array_view::<f32>().ok().map(|v| v.iter().all(|x| *x == 0.0)))
                .unwrap_or(false)
        })
    };
    let (mut fused_into, mut extra_of) = (HashMap::new(), HashMap::new());
    for &id in order {
        let Some(Ok(Lowered::Dispatches(dispatches))) = capable.get(&id) else { continue };
        if dispatches.len() != 1 || !dispatches[0].takes_epilogue() {
            continue;
        }
        let Some(out_shape) = shape(OutletId::new(id, 0)) else { continue };
        let mut epilogue = kernels::Epilogue::default();
        let mut last = id;
        if let Some((add, slot)) = only_reader(last)
            && binary(capable, add, "Add")
            && shape(OutletId::new(add, 0)).as_ref() == Some(&out_shape)
        {
            let other = model.node(add).inputs[1 - slot.min(1)];
            // Made before the host runs: a constant or an input (uploaded first), or an earlier
            // node's value.
            let ready = model.node(other.node).op_is::<Const>()
                || model.node(other.node).op_is::<tract_onnx::tract_core::ops::source::TypedSource>()
                || position.get(&other.node).is_some_and(|p| *p < position[&id]);
            let layout = shape(other).and_then(|s| kernels::Epilogue::layout(&s, &out_shape));
            if ready && let Some(layout) = layout {
                epilogue.add = Some(layout);
                extra_of.insert(id, other);
                fused_into.insert(add, id);
                last = add;
            }
        }
        if let Some((max, slot)) = only_reader(last)
            && binary(capable, max, "Max")
            && shape(OutletId::new(max, 0)).as_ref() == Some(&out_shape)
            && zero(model.node(max).inputs[1 - slot.min(1)])
        {
            epilogue.relu = true;
            fused_into.insert(max, id);
        }
        if epilogue.add.is_none() && !epilogue.relu {
            continue;
        }
        if let Some(Ok(Lowered::Dispatches(dispatches))) = capable.get_mut(&id) {
            let params = &mut dispatches[0].params;
            let tail = epilogue.params();
            let at = params.len() - tail.len();
            params[at..].copy_from_slice(&tail);
        }
    }
    for absorbed in fused_into.keys() {
        capable.insert(*absorbed, Ok(Lowered::Fused));
    }
    Ok((fused_into, extra_of))
}

/// The bytes a value is uploaded as: FP32 as is; indices checked against the shortest axis any
/// gather reading them indexes (every gather must be valid, as on the CPU), as i32 (each gather
/// wraps negative ones with its own axis length).
pub fn upload_bytes(tensor: &Tensor, indices: Option<usize>) -> Result<Vec<u8>, NnError> {
    match indices {
        None => {
            let floats = tensor.cast_to::<f32>().map_err(internal)?;
            Ok(floats.as_bytes().to_vec())
        }
        Some(len) => {
            let ints = tensor.cast_to::<i64>().map_err(internal)?;
            let ints = ints.to_plain_array_view::<i64>().map_err(internal)?;
            let mut out = Vec::with_capacity(ints.len() * 4);
            for i in ints.iter() {
                if *i < -(len as i64) || *i >= len as i64 {
                    return Err(NnError::new(
                        ErrorCode::InvalidArgument,
                        format!("gather index {i} is out of range for an axis of {len}"),
                    ));
                }
                out.extend((*i as i32).to_le_bytes());
            }
            Ok(out)
        }
    }
}
