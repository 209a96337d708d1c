//! A plan: one model, specialized to concrete input shapes and decluttered by tract, placed
//! node by node. Nodes with a kernel run on the GPU; every other node runs on the CPU through
//! tract's own evaluation, and values cross between the two only where a node on one side
//! reads a value made on the other. Intermediate values live in buffers reused once their
//! last reader has run; weights are uploaded once per model and shared by every plan and
//! caller.
//!
//! A plan is immutable and shared. Each concurrent caller runs it with an [`Arena`] (the
//! buffers and bind groups of one run), taken from the plan's pool or made when none is free.

mod fusion;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use self::fusion::fuse;
use self::run::Arena;
pub use self::run::{RunStats, upload_bytes};
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
}
