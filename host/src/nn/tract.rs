//! The always-available CPU engine: tract-onnx (pure Rust).
//!
//! A model is parsed, typed, decluttered and optimized once; the resulting plan is an
//! `Arc<TypedSimplePlan>`, which is `Send + Sync` and allocates its per-call state in `run`,
//! so one loaded graph serves every concurrent caller without a lock.
//!
//! Some models cannot be optimized for every input: tract needs a Reshape's shape, a Slice's
//! bounds or a reduction's axes as constants, yet ONNX lets them arrive as graph inputs, and a
//! few graphs only optimize with concrete dimensions. For those the parsed model is kept and
//! specialized at first compute: integer inputs become constants of the values given, every
//! input gets the shape given, and the plan is cached under those values and shapes (a few per
//! model, least recently used evicted), so later calls with the same ones run at full speed.

use std::sync::{Arc, Mutex, OnceLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::ops::konst::Const;

use super::{ElemType, Engine, ErrorCode, HostTensor, LoadedModel, NnError, TensorInfo, match_inputs};

/// Specialized plans kept per model (a failed specialization is remembered too).
const SPECIALIZED_PLANS: usize = 8;
/// Integer inputs larger than this are data, not parameters: they are never made constants.
pub(crate) const MAX_PINNED_ELEMENTS: usize = 4096;

/// The tract engine.
pub struct Tract;

struct TractModel {
    compiled: Compiled,
    /// Computing nodes (neither inputs nor constants): of the optimized plan, or of the parsed
    /// model when plans are made per input.
    nodes: u32,
    /// The parsed model's symbols: a plan may name dimensions made while parsing, and tract
    /// holds symbol scopes weakly.
    _symbols: SymbolScope,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// What checks a new specialization before it is built (see [`super::SpecializationCheck`]).
    check: OnceLock<super::SpecializationCheck>,
}

enum Compiled {
    /// One plan for every input.
    Generic(Arc<Planned>),
    /// Plans made per input shapes and integer input values.
    Specialized { model: Box<InferenceModel>, why: String, plans: Specializations<Arc<Planned>> },
}

/// A plan, and after which of its steps each value it makes is no longer needed: what a
/// compute's tensors hold at each step, for [`super::Bounds::max_bytes`].
struct Planned {
    plan: Arc<TypedSimplePlan>,
    /// Per step of the plan's order, the nodes whose values nothing reads after it (the
    /// model's outputs are kept to the end).
    free_after: Vec<Vec<usize>>,
}

impl Planned {
    fn new(plan: Arc<TypedSimplePlan>) -> Self {
        let (model, order) = (plan.model(), plan.order_without_consts());
        let outputs: Vec<usize> =
            model.output_outlets().map(|o| o.iter().map(|o| o.node).collect()).unwrap_or_default();
        let mut last = std::collections::HashMap::new();
        for (step, node) in order.iter().enumerate() {
            last.insert(*node, step);
            for input in &model.node(*node).inputs {
                last.insert(input.node, step);
            }
        }
        let mut free_after = vec![Vec::new(); order.len()];
        for (node, step) in last {
            if !outputs.contains(&node) {
                free_after[step].push(node);
            }
        }
        Planned { plan, free_after }
    }
}

impl Engine for Tract {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, onnx_bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        let Parsed { model, symbols, inputs, outputs, input_names, output_names } = parse(onnx_bytes)?;
        match model.clone().into_optimized().and_then(|typed| Ok((describe_typed(&typed)?, typed.into_runnable()?))) {
            Ok(((typed_inputs, typed_outputs), plan)) => {
                // Declared names; tract's inferred types and shapes.
                let (inputs, outputs) = (named(typed_inputs, &input_names), named(typed_outputs, &output_names));
                let nodes = computing_nodes(plan.model().nodes().iter().map(|n| n.inputs.len()));
                Ok(Arc::new(TractModel {
                    compiled: Compiled::Generic(Arc::new(Planned::new(plan))),
                    nodes,
                    _symbols: symbols,
                    inputs,
                    outputs,
                    check: OnceLock::new(),
                }))
            }
            Err(e) => {
                // Every parameter must still be declared: an input without a type cannot be fed.
                if let Some(input) = inputs.iter().find(|i| i.datatype == "UNSUPPORTED") {
                    return Err(NnError::new(
                        ErrorCode::UnsupportedOperation,
                        format!("tract cannot run this model: input `{}` has no supported type ({e:#})", input.name),
                    ));
                }
                let nodes = computing_nodes(model.nodes().iter().map(|n| n.inputs.len()));
                let compiled = Compiled::Specialized {
                    model: Box::new(model),
                    why: format!("{e:#}"),
                    plans: Specializations::new(&[Pin::Integers, Pin::AllButData]),
                };
                Ok(Arc::new(TractModel { compiled, nodes, _symbols: symbols, inputs, outputs, check: OnceLock::new() }))
            }
        }
    }
}

/// Nodes that compute something: those with inputs (sources and constants have none).
fn computing_nodes(inputs_per_node: impl Iterator<Item = usize>) -> u32 {
    inputs_per_node.filter(|n| *n > 0).count() as u32
}

/// An ONNX model parsed by tract, with its inputs and outputs as the file declares them.
pub(crate) struct Parsed {
    pub model: InferenceModel,
    /// The parsed model's symbols: plans may name dimensions made while parsing, and tract
    /// holds symbol scopes weakly, so whoever keeps a plan keeps these too.
    pub symbols: SymbolScope,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
}

/// Parses ONNX bytes. tract may relabel outlets (an Identity's output is its input): callers
/// use the names the file declares, inputs without initializers, in order.
pub(crate) fn parse(onnx_bytes: &[u8]) -> Result<Parsed, NnError> {
    let onnx = tract_onnx::onnx();
    let not_onnx = |e: TractError| NnError::new(ErrorCode::InvalidEncoding, format!("not an ONNX model: {e:#}"));
    let proto = onnx.proto_model_for_read(&mut std::io::Cursor::new(onnx_bytes)).map_err(not_onnx)?;
    let model = onnx.model_for_proto_model(&proto).map_err(not_onnx)?;
    let graph = proto.graph.as_ref().ok_or_else(|| NnError::new(ErrorCode::InvalidEncoding, "no graph"))?;
    let input_names: Vec<String> = graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|init| init.name == i.name))
        .map(|i| i.name.clone())
        .collect();
    let output_names: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let inputs = named(describe_inference(&model, model.input_outlets().map_err(internal)?)?, &input_names);
    let outputs = named(describe_inference(&model, model.output_outlets().map_err(internal)?)?, &output_names);
    let symbols = model.symbols.clone();
    Ok(Parsed { model, symbols, inputs, outputs, input_names, output_names })
}

/// `infos` renamed as the file declares them.
pub(crate) fn named(infos: Vec<TensorInfo>, names: &[String]) -> Vec<TensorInfo> {
    infos.into_iter().zip(names).map(|(info, name)| TensorInfo { name: name.clone(), ..info }).collect()
}

/// Which inputs a specialized plan makes constants of, tried in this order until one compiles.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Pin {
    /// Nothing: only the shapes are made concrete.
    Nothing,
    /// Integer inputs: shapes, axes, slice bounds, pads.
    Integers,
    /// Every input but the largest (the data): also float parameters such as BatchNorm's
    /// statistics or Pad's fill value.
    AllButData,
}

impl Pin {
    pub(crate) fn select(self, inputs: &[HostTensor]) -> Vec<bool> {
        let elements = |t: &HostTensor| t.data.len() / t.ty.size();
        let data = inputs.iter().enumerate().max_by_key(|(i, t)| (elements(t), std::cmp::Reverse(*i))).map(|(i, _)| i);
        inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let small = elements(t) <= MAX_PINNED_ELEMENTS;
                match self {
                    Pin::Nothing => false,
                    Pin::Integers => small && matches!(t.ty, ElemType::I32 | ElemType::I64),
                    Pin::AllButData => small && Some(i) != data,
                }
            })
            .collect()
    }
}

impl TractModel {
    /// The plan for these inputs and which of them it takes: the generic plan, or one
    /// specialized to their shapes and the values of its pinned inputs.
    fn plan_for(&self, ordered: &[HostTensor]) -> Result<(Arc<Planned>, Vec<usize>), NnError> {
        match &self.compiled {
            Compiled::Generic(plan) => Ok((plan.clone(), (0..ordered.len()).collect())),
            Compiled::Specialized { model, why, plans } => plans.get(ordered, why, self.check.get(), |pinned| {
                pin(model, ordered, pinned)?
                    .into_optimized()
                    .and_then(|typed| typed.into_runnable())
                    .map(|plan| Arc::new(Planned::new(plan)))
                    .map_err(|e| {
                        NnError::new(
                            ErrorCode::UnsupportedOperation,
                            format!("tract cannot run this model: {why}; specialized to these inputs: {e:#}"),
                        )
                    })
            }),
        }
    }
}

/// What was pinned, the shapes of every input, then the bytes of every input made constant.
type SpecKey = (Pin, Vec<Vec<u32>>, Vec<Vec<u8>>);
/// A compiled form, made once by the first caller that needs it.
type PlanCell<P> = OnceLock<Result<P, NnError>>;

/// Compiled forms of one model, each made for the shapes and pinned values of some inputs on
/// first use (concurrent first callers share the work), the last few kept, least recently
/// used evicted. A failed specialization is remembered too.
pub(crate) struct Specializations<P> {
    pins: &'static [Pin],
    plans: Mutex<Vec<(SpecKey, Arc<PlanCell<P>>)>>,
}

impl<P: Clone> Specializations<P> {
    /// Tries `pins` in order until one compiles.
    pub(crate) fn new(pins: &'static [Pin]) -> Self {
        Self { pins, plans: Mutex::new(Vec::new()) }
    }

    /// Calls `f` on every compiled form made so far.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&P)) {
        let cells: Vec<_> =
            self.plans.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(_, c)| c.clone()).collect();
        for cell in cells {
            if let Some(Ok(plan)) = cell.get() {
                f(plan);
            }
        }
    }

    /// The compiled form for these inputs and the indices of the inputs it is fed (the
    /// others are constants in it); `build` compiles for a selection of pinned inputs. Before
    /// the first new form is built, `check` (when given) must pass: it is run once per call at
    /// most, and a failed check is remembered for these inputs like a failed build.
    pub(crate) fn get(
        &self,
        ordered: &[HostTensor],
        why: &str,
        check: Option<&super::SpecializationCheck>,
        build: impl Fn(&[bool]) -> Result<P, NnError>,
    ) -> Result<(P, Vec<usize>), NnError> {
        let mut last_error = None;
        let checked: OnceLock<Result<(), NnError>> = OnceLock::new();
        let build = |pinned: &[bool]| {
            if let Some(check) = check {
                checked.get_or_init(|| check(ordered)).clone()?;
            }
            build(pinned)
        };
        for pin in self.pins {
            let pinned = pin.select(ordered);
            let key: SpecKey = (
                *pin,
                ordered.iter().map(|t| t.dims.clone()).collect(),
                ordered.iter().zip(&pinned).filter(|(_, p)| **p).map(|(t, _)| t.data.clone()).collect(),
            );
            let cell = {
                let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
                match plans.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        let entry = plans.remove(i);
                        let cell = entry.1.clone();
                        plans.push(entry);
                        cell
                    }
                    None => {
                        if plans.len() >= SPECIALIZED_PLANS {
                            plans.remove(0);
                        }
                        let cell = Arc::new(OnceLock::new());
                        plans.push((key, cell.clone()));
                        cell
                    }
                }
            };
            match cell.get_or_init(|| build(&pinned)) {
                Ok(plan) => {
                    let fed = pinned.iter().enumerate().filter(|(_, p)| !**p).map(|(i, _)| i).collect();
                    return Ok((plan.clone(), fed));
                }
                Err(e) => last_error = Some(e.clone()),
            }
        }
        Err(last_error.unwrap_or_else(|| NnError::new(ErrorCode::UnsupportedOperation, why.to_string())))
    }
}

/// `model` with these inputs pinned as constants of their values and the rest given their
/// shapes; the fed inputs stay inputs, in order.
pub(crate) fn pin(model: &InferenceModel, inputs: &[HostTensor], pinned: &[bool]) -> Result<InferenceModel, NnError> {
    let mut model = model.clone();
    let outlets = model.input_outlets().map_err(internal)?.to_vec();
    let mut fed = Vec::new();
    for ((outlet, tensor), pin) in outlets.iter().zip(inputs).zip(pinned) {
        let value = to_tract(tensor)?;
        if *pin {
            let node = model.node_mut(outlet.node);
            node.outputs[0].fact = InferenceFact::from(value.clone());
            node.op = Box::new(Const::new(value.into_arc_tensor()).map_err(internal)?);
        } else {
            model.node_mut(outlet.node).outputs[0].fact = InferenceFact::dt_shape(value.datum_type(), value.shape());
            fed.push(*outlet);
        }
    }
    model.set_input_outlets(&fed).map_err(internal)?;
    Ok(model)
}

impl LoadedModel for TractModel {
    fn engine(&self) -> &'static str {
        "tract"
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn nodes(&self) -> u32 {
        self.nodes
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn run(&self, given: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>, NnError> {
        self.run_until(given, None)
    }

    fn specializes(&self) -> bool {
        matches!(self.compiled, Compiled::Specialized { .. })
    }

    fn guard_specializations(&self, check: super::SpecializationCheck) {
        let _ = self.check.set(check);
    }

    fn prepare(&self, ordered: &[HostTensor]) -> Result<(), NnError> {
        self.plan_for(ordered).map(|_| ())
    }

    fn run_bounded(
        &self,
        inputs: Vec<(String, HostTensor)>,
        bounds: &super::Bounds<'_>,
    ) -> Result<(Vec<(String, HostTensor)>, super::Placement), NnError> {
        let outputs = self.run_until(inputs, Some(bounds))?;
        Ok((outputs, super::Placement { cpu_nodes: self.nodes, ..super::Placement::default() }))
    }
}

/// What stops a tract compute between two nodes: the call's deadline, or a node whose
/// outputs would pass the call's bytes (refused before it allocates them).
#[derive(Debug)]
enum Stopped {
    Cancelled,
    Over(NnError),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Cancelled => f.write_str("cancelled at the call's deadline"),
            Stopped::Over(e) => f.write_str(&e.message),
        }
    }
}

impl std::error::Error for Stopped {}

/// Bytes of `tensors`.
fn bytes_of<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> u64 {
    tensors.into_iter().map(|t| (t.len() * t.datum_type().size_of()) as u64).sum()
}

/// Bytes the outputs of `node` will take, known before it runs: from the plan's shapes with
/// the symbols this run resolved, else from the node's own shape rule given the values it is
/// fed (a Range's bounds, a broadcast's shape). `None` when neither tells.
fn output_bytes(symbols: &SymbolValues, node: &TypedNode, inputs: &[TValue]) -> Option<u64> {
    let of = |facts: &[&TypedFact]| -> Option<u64> {
        facts.iter().try_fold(0u64, |sum, fact| {
            let shape = fact.shape.eval_to_usize(symbols).ok()?;
            let elements = shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d as u64))?;
            sum.checked_add(elements.checked_mul(fact.datum_type.size_of() as u64)?)
        })
    };
    let planned: Vec<&TypedFact> = node.outputs.iter().map(|o| &o.fact).collect();
    if let Some(bytes) = of(&planned) {
        return Some(bytes);
    }
    let facts: Vec<TypedFact> = inputs
        .iter()
        .map(|t| {
            match t.as_arc_tensor() {
                Some(arc) if t.len() <= MAX_PINNED_ELEMENTS => TypedFact::try_from(arc.clone()).ok(),
                _ => None,
            }
            .unwrap_or_else(|| TypedFact::shape_and_dt_of(t))
        })
        .collect();
    let refs: Vec<&TypedFact> = facts.iter().collect();
    let outputs = node.op.output_facts(&refs).ok()?;
    of(&outputs.iter().collect::<Vec<_>>())
}

impl TractModel {
    /// Runs the plan node by node within `bounds`: before each node, the deadline is checked
    /// and so is the room for the node's outputs beside every value still needed.
    fn run_until(
        &self,
        given: Vec<(String, HostTensor)>,
        bounds: Option<&super::Bounds<'_>>,
    ) -> Result<Vec<(String, HostTensor)>, NnError> {
        let ordered = match_inputs(&self.inputs, given)?;
        let (planned, fed) = self.plan_for(&ordered)?;
        let values: TVec<TValue> =
            fed.iter().map(|i| Ok(to_tract(&ordered[*i])?.into_tvalue())).collect::<Result<_, NnError>>()?;
        let max = bounds.map_or(u64::MAX, |b| b.max_bytes);
        let over = |what: &str, need: u64| {
            let e = bounds.map(|b| b.over(what, need)).unwrap_or_else(|| NnError::new(ErrorCode::TooLarge, what));
            anyhow::Error::new(Stopped::Over(e))
        };
        // Bytes each node's values hold, and all of them together.
        let mut held = vec![0u64; planned.plan.model().nodes().len()];
        let mut live = 0u64;
        let mut step = 0;
        let mut state = planned.plan.spawn().map_err(|e| NnError::new(ErrorCode::RuntimeError, format!("{e:#}")))?;
        let outputs = state
            .run_plan_with_eval(values, |ctx, op_state, node, inputs| {
                if bounds.is_some_and(|b| b.cancel.is_cancelled()) {
                    return Err(anyhow::Error::new(Stopped::Cancelled));
                }
                if max != u64::MAX
                    && !node.inputs.is_empty()
                    && let Some(need) = output_bytes(ctx.symbols, node, &inputs)
                    && live.saturating_add(need) > max
                {
                    return Err(over(&format!("node `{}` ({})", node.name, node.op.name()), live.saturating_add(need)));
                }
                let made = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)?;
                held[node.id] = bytes_of(made.iter().map(|t| &**t));
                live += held[node.id];
                // An output whose size no rule told: refused once made, before anything uses it.
                if live > max {
                    return Err(over(&format!("node `{}` ({})", node.name, node.op.name()), live));
                }
                for done in planned.free_after.get(step).into_iter().flatten() {
                    live -= std::mem::take(&mut held[*done]);
                }
                step += 1;
                Ok::<_, anyhow::Error>(made)
            })
            .map_err(|e| match e.downcast::<Stopped>() {
                Ok(Stopped::Cancelled) => super::Cancel::error(),
                Ok(Stopped::Over(e)) => e,
                Err(e) => NnError::new(ErrorCode::RuntimeError, format!("{e:#}")),
            })?;
        self.outputs.iter().zip(outputs).map(|(info, value)| Ok((info.name.clone(), from_tract(&value)?))).collect()
    }
}

/// Inputs and outputs of an optimized model, with the types and shapes tract inferred.
pub(crate) fn describe_typed(typed: &TypedModel) -> TractResult<(Vec<TensorInfo>, Vec<TensorInfo>)> {
    let describe = |outlets: &[OutletId]| -> TractResult<Vec<TensorInfo>> {
        outlets
            .iter()
            .map(|outlet| {
                let fact = typed.outlet_fact(*outlet)?;
                Ok(TensorInfo {
                    name: typed.outlet_label(*outlet).unwrap_or(&typed.node(outlet.node).name).to_string(),
                    datatype: datum_name(fact.datum_type).to_string(),
                    shape: fact.shape.iter().map(|d| d.as_i64().unwrap_or(-1)).collect(),
                })
            })
            .collect()
    };
    Ok((describe(typed.input_outlets()?)?, describe(typed.output_outlets()?)?))
}

/// Inputs or outputs of a parsed model, as the ONNX file declares them (unknown dims are -1).
fn describe_inference(model: &InferenceModel, outlets: &[OutletId]) -> Result<Vec<TensorInfo>, NnError> {
    outlets
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet).map_err(internal)?;
            let shape = fact.shape.dims().map(|d| d.concretize().and_then(|d| d.as_i64()).unwrap_or(-1)).collect();
            Ok(TensorInfo {
                name: model.outlet_label(*outlet).unwrap_or(&model.node(outlet.node).name).to_string(),
                datatype: fact.datum_type.concretize().map_or("UNSUPPORTED", datum_name).to_string(),
                shape,
            })
        })
        .collect()
}

pub(crate) fn internal(e: TractError) -> NnError {
    NnError::new(ErrorCode::RuntimeError, format!("{e:#}"))
}

pub(crate) fn datum_name(dt: DatumType) -> &'static str {
    match dt {
        DatumType::Bool => "BOOL",
        DatumType::U8 => "UINT8",
        DatumType::U16 => "UINT16",
        DatumType::U32 => "UINT32",
        DatumType::U64 => "UINT64",
        DatumType::I8 => "INT8",
        DatumType::I16 => "INT16",
        DatumType::I32 => "INT32",
        DatumType::I64 => "INT64",
        DatumType::F16 => "FP16",
        DatumType::F32 => "FP32",
        DatumType::F64 => "FP64",
        DatumType::String => "BYTES",
        _ => "UNSUPPORTED",
    }
}

fn typed_vec<T, const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
}

pub(crate) fn to_tract(t: &HostTensor) -> Result<Tensor, NnError> {
    let shape: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
    let bad = |e: TractError| NnError::new(ErrorCode::InvalidArgument, format!("{e:#}"));
    match t.ty {
        ElemType::F32 => Tensor::from_shape(&shape, &typed_vec(&t.data, f32::from_le_bytes)),
        ElemType::F64 => Tensor::from_shape(&shape, &typed_vec(&t.data, f64::from_le_bytes)),
        ElemType::F16 => Tensor::from_shape(&shape, &typed_vec(&t.data, f16::from_le_bytes)),
        ElemType::U8 => Tensor::from_shape(&shape, &t.data),
        ElemType::I32 => Tensor::from_shape(&shape, &typed_vec(&t.data, i32::from_le_bytes)),
        ElemType::I64 => Tensor::from_shape(&shape, &typed_vec(&t.data, i64::from_le_bytes)),
        ElemType::Bool => Tensor::from_shape(&shape, &t.data.iter().map(|b| *b != 0).collect::<Vec<bool>>()),
        ElemType::I8 => Tensor::from_shape(&shape, &typed_vec(&t.data, i8::from_le_bytes)),
        ElemType::I16 => Tensor::from_shape(&shape, &typed_vec(&t.data, i16::from_le_bytes)),
        ElemType::U16 => Tensor::from_shape(&shape, &typed_vec(&t.data, u16::from_le_bytes)),
        ElemType::U32 => Tensor::from_shape(&shape, &typed_vec(&t.data, u32::from_le_bytes)),
        ElemType::U64 => Tensor::from_shape(&shape, &typed_vec(&t.data, u64::from_le_bytes)),
        ElemType::Bf16 => {
            return Err(NnError::new(ErrorCode::UnsupportedOperation, "the tract engine has no BF16 tensors"));
        }
    }
    .map_err(bad)
}

pub(crate) fn from_tract(t: &Tensor) -> Result<HostTensor, NnError> {
    let ty = match t.datum_type() {
        DatumType::F32 => ElemType::F32,
        DatumType::F64 => ElemType::F64,
        DatumType::F16 => ElemType::F16,
        DatumType::U8 => ElemType::U8,
        DatumType::I32 => ElemType::I32,
        DatumType::I64 => ElemType::I64,
        DatumType::Bool => ElemType::Bool,
        DatumType::I8 => ElemType::I8,
        DatumType::I16 => ElemType::I16,
        DatumType::U16 => ElemType::U16,
        DatumType::U32 => ElemType::U32,
        DatumType::U64 => ElemType::U64,
        other => {
            return Err(NnError::new(
                ErrorCode::UnsupportedOperation,
                format!("output type {} is not supported", datum_name(other)),
            ));
        }
    };
    let dims = t.shape().iter().map(|d| u32::try_from(*d).unwrap_or(u32::MAX)).collect();
    Ok(HostTensor { dims, ty, data: t.as_bytes().to_vec() })
}
