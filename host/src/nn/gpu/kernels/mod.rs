//! The kernel set: which of tract's decluttered ops run on the GPU, and how each becomes
//! compute dispatches. Every shader sits beside this file; each takes FP32 tensors as
//! read-only storage buffers, writes one output buffer, and reads its shapes and strides from
//! a last `array<u32>` parameter buffer.
//!
//! [`lower`] is pure: it reads a node and the concrete facts of its inputs and output and
//! answers with dispatches (or an alias, for ops that only rename axes), or with the reason
//! the node stays on the CPU. The plan turns operands into buffers.

mod copy;
mod epilogue;
mod matmul;
mod reduce;
mod unary;
mod window;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, MultiBroadcastTo, Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, SumPool};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::{Reduce, RmsNorm, Softmax, SoftmaxKind};

use self::copy::Copy;
pub use self::epilogue::{AddLayout, Epilogue};
use self::matmul::matmul;
use self::reduce::{reduce_dispatch, rows};
use self::unary::unary_code;
use self::window::{conv_dispatch, pool_dispatch};

/// One compute shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Unary,
    Binary,
    MatMul,
    Conv,
    ConvDirect,
    Pool,
    Reduce,
    Rows,
    Copy,
    Gather,
}

impl Kernel {
    pub const ALL: [Kernel; 10] = [
        Kernel::Unary,
        Kernel::Binary,
        Kernel::MatMul,
        Kernel::Conv,
        Kernel::ConvDirect,
        Kernel::Pool,
        Kernel::Reduce,
        Kernel::Rows,
        Kernel::Copy,
        Kernel::Gather,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::MatMul => "matmul",
            Kernel::Conv => "conv",
            Kernel::ConvDirect => "conv_direct",
            Kernel::Pool => "pool",
            Kernel::Reduce => "reduce",
            Kernel::Rows => "rows",
            Kernel::Copy => "copy",
            Kernel::Gather => "gather",
        }
    }

    /// The shader's WGSL: its own file after the shared helpers it calls (WGSL has no
    /// includes, and module-scope declarations may come in any order).
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Unary => concat!(include_str!("pow.wgsl"), include_str!("unary.wgsl")),
            Kernel::Binary => concat!(include_str!("pow.wgsl"), include_str!("binary.wgsl")),
            Kernel::MatMul => concat!(include_str!("epilogue.wgsl"), include_str!("matmul.wgsl")),
            Kernel::Conv => concat!(include_str!("epilogue.wgsl"), include_str!("conv.wgsl")),
            Kernel::ConvDirect => concat!(include_str!("epilogue.wgsl"), include_str!("conv_direct.wgsl")),
            Kernel::Pool => include_str!("pool.wgsl"),
            Kernel::Reduce => include_str!("reduce.wgsl"),
            Kernel::Rows => include_str!("rows.wgsl"),
            Kernel::Copy => include_str!("copy.wgsl"),
            Kernel::Gather => include_str!("gather.wgsl"),
        }
    }

    /// Invocations per workgroup along x for the linear kernels.
    fn width(self) -> u64 {
        match self {
            Kernel::Rows => 64,
            _ => 256,
        }
    }
}

/// What a dispatch binds, in binding order (the parameter buffer comes last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The node's input `k`, as FP32.
    Input(usize),
    /// The node's input `k`, integer indices checked and made non-negative, as u32.
    Indices(usize),
    /// The node's output.
    Output,
    /// The value a fused epilogue adds (see [`Epilogue`]); without one, a placeholder.
    Extra,
}

#[derive(Clone, Debug)]
pub struct Dispatch {
    pub kernel: Kernel,
    pub operands: Vec<Operand>,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
}

/// How a node runs on the GPU.
#[derive(Debug)]
pub enum Lowered {
    /// The output is input 0's buffer under another shape (same elements, same order).
    Alias,
    Dispatches(Vec<Dispatch>),
    /// Runs inside an earlier node's dispatch (an epilogue); its output is that node's buffer.
    Fused,
}

/// Most workgroups along one dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: u64 = 65_535;
/// Rank of the strided kernels.
const RANK: usize = 6;

/// Workgroups for `n` invocations of a linear kernel: x up to [`MAX_GROUPS`], then y.
fn linear(kernel: Kernel, n: usize) -> Result<[u32; 3], String> {
    let groups = (n as u64).div_ceil(kernel.width()).max(1);
    let x = groups.min(MAX_GROUPS);
    let y = groups.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(format!("{n} elements are more than one dispatch covers"));
    }
    Ok([x as u32, y as u32, 1])
}

fn dispatch(kernel: Kernel, operands: Vec<Operand>, params: Vec<u32>, n: usize) -> Result<Dispatch, String> {
    let groups = linear(kernel, n)?;
    Ok(Dispatch { kernel, operands, params, groups })
}

/// Row-major strides of `shape`, in elements.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// `values` left-padded with `fill` to [`RANK`] entries.
fn padded(values: &[usize], fill: usize) -> Result<Vec<u32>, String> {
    if values.len() > RANK {
        return Err(format!("rank {} is above the GPU kernels' {RANK}", values.len()));
    }
    let mut out = vec![fill as u32; RANK - values.len()];
    out.extend(values.iter().map(|v| *v as u32));
    Ok(out)
}

fn u32_of(v: usize) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{v} does not fit the GPU kernels' 32-bit indices"))
}

/// The concrete shape of a fact.
pub fn concrete(fact: &TypedFact) -> Result<Vec<usize>, String> {
    fact.shape.as_concrete().map(|s| s.to_vec()).ok_or_else(|| format!("shape {:?} is not concrete", fact.shape))
}

/// How `node` runs on the GPU, or why it cannot. `inputs` and `output` are the facts of its
/// inputs and of its only output.
pub fn lower(node: &TypedNode, inputs: &[&TypedFact], output: &TypedFact) -> Result<Lowered, String> {
    if node.outputs.len() != 1 {
        return Err(format!("{} has {} outputs", node.op.name(), node.outputs.len()));
    }
    if output.datum_type != f32::datum_type() {
        return Err(format!("GPU kernels compute FP32; this node makes {:?}", output.datum_type));
    }
    let out_shape = concrete(output)?;
    let n = out_shape.iter().product::<usize>();
    u32_of(n)?;
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|f| concrete(f)).collect::<Result<_, _>>()?;
    for (shape, fact) in shapes.iter().zip(inputs) {
        u32_of(shape.iter().product::<usize>())?;
        if fact.datum_type != f32::datum_type() && node.op_as::<Gather>().is_none() {
            return Err(format!("GPU kernels take FP32; this node reads {:?}", fact.datum_type));
        }
    }
    if n == 0 {
        return Err("empty output".into());
    }
    let op = &node.op;
    if let Some(axis_op) = op.downcast_ref::<AxisOp>() {
        return match axis_op {
            AxisOp::Add(_) | AxisOp::Rm(_) | AxisOp::Reshape(..) => Ok(Lowered::Alias),
            AxisOp::Move(from, to) => {
                let rank = shapes[0].len();
                let mut axes: Vec<usize> = (0..rank).collect();
                let moved = axes.remove(*from);
                axes.insert(*to, moved);
                let in_strides = strides(&shapes[0]);
                let copy = Copy {
                    shape: out_shape.clone(),
                    start: vec![0; rank],
                    step: vec![1; rank],
                    extent: axes.iter().map(|a| shapes[0][*a]).collect(),
                    in_strides: axes.iter().map(|a| in_strides[*a]).collect(),
                    out_strides: strides(&out_shape),
                    out_offset: 0,
                    fill: 0.0,
                };
                Ok(Lowered::Dispatches(vec![copy.dispatch(0)?]))
            }
        };
    }
    if let Some(ew) = op.downcast_ref::<ElementWiseOp>() {
        if ew.1.is_some_and(|dt| dt != f32::datum_type()) {
            return Err("element-wise op with another output type".into());
        }
        let (code, alpha) = unary_code(ew)?;
        let params = vec![n as u32, code, alpha.to_bits()];
        return Ok(Lowered::Dispatches(vec![dispatch(
            Kernel::Unary,
            vec![Operand::Input(0), Operand::Output],
            params,
            n,
        )?]));
    }
    if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
        let code = match bin.0.name() {
            "Add" => 0,
            "Sub" => 1,
            "Mul" => 2,
            "Div" => 3,
            "Max" => 4,
            "Min" => 5,
            "Pow" => 6,
            other => return Err(format!("no GPU kernel for binary {other}")),
        };
        let mut params = vec![n as u32, code];
        params.extend(padded(&out_shape, 1)?);
        for shape in &shapes[..2] {
            params.extend(broadcast_strides(shape, &out_shape)?);
        }
        return Ok(Lowered::Dispatches(vec![dispatch(
            Kernel::Binary,
            vec![Operand::Input(0), Operand::Input(1), Operand::Output],
            params,
            n,
        )?]));
    }
    if let Some(einsum) = op.downcast_ref::<EinSum>() {
        return matmul(einsum, &shapes, &out_shape).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(conv) = op.downcast_ref::<Conv>() {
        return conv_dispatch(conv, &shapes, &out_shape).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(pool) = op.downcast_ref::<MaxPool>() {
        if pool.with_index_outputs.is_some() {
            return Err("MaxPool with indices".into());
        }
        return pool_dispatch(&pool.pool_spec, &shapes[0], &out_shape, [0, 0, 0]).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(pool) = op.downcast_ref::<SumPool>() {
        let flags = [1, pool.normalize as u32, pool.count_include_pad as u32];
        return pool_dispatch(&pool.pool_spec, &shapes[0], &out_shape, flags).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(reduce) = op.downcast_ref::<Reduce>() {
        return reduce_dispatch(reduce, &shapes[0], n).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(softmax) = op.downcast_ref::<Softmax>() {
        if softmax.quant_output_dt.is_some() {
            return Err("quantized softmax".into());
        }
        let axes: Vec<usize> = softmax.axes.to_vec();
        let contiguous = axes.windows(2).all(|w| w[1] == w[0] + 1);
        if axes.is_empty() || !contiguous {
            return Err(format!("softmax over axes {axes:?}"));
        }
        let op = match softmax.kind {
            SoftmaxKind::Softmax => 0,
            SoftmaxKind::LogSoftmax => 1,
        };
        return rows(&shapes[0], axes[0], axes[axes.len() - 1], op, 0.0).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(norm) = op.downcast_ref::<RmsNorm>() {
        let eps = norm.eps.cast_to_scalar::<f32>().map_err(|e| format!("{e}"))?;
        return rows(&shapes[0], norm.axis, norm.axis, 2, eps).map(|d| Lowered::Dispatches(vec![d]));
    }
    if let Some(slice) = op.downcast_ref::<Slice>() {
        let start = slice.start.as_i64().ok_or("slice start is not concrete")?;
        let mut copy = Copy::reading(&shapes[0], &out_shape);
        copy.start[slice.axis] = start;
        return Ok(Lowered::Dispatches(vec![copy.dispatch(0)?]));
    }
    if let Some(down) = op.downcast_ref::<Downsample>() {
        let mut copy = Copy::reading(&shapes[0], &out_shape);
        let len = shapes[0][down.axis] as i64;
        if down.stride > 0 {
            copy.start[down.axis] = down.modulo as i64;
        } else {
            copy.start[down.axis] = len - 1;
        }
        copy.step[down.axis] = down.stride as i64;
        return Ok(Lowered::Dispatches(vec![copy.dispatch(0)?]));
    }
    if let Some(concat) = op.downcast_ref::<TypedConcat>() {
        let out_strides = strides(&out_shape);
        let mut offset = 0;
        let mut dispatches = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            if shape.iter().product::<usize>() > 0 {
                let copy = Copy {
                    out_offset: offset * out_strides[concat.axis],
                    out_strides: out_strides.clone(),
                    ..Copy::reading(shape, shape)
                };
                dispatches.push(copy.dispatch(k)?);
            }
            offset += shape[concat.axis];
        }
        return Ok(Lowered::Dispatches(dispatches));
    }
    if op.downcast_ref::<MultiBroadcastTo>().is_some() {
        let rank = out_shape.len();
        let in_shape: Vec<usize> =
            std::iter::repeat_n(1, rank - shapes[0].len()).chain(shapes[0].iter().copied()).collect();
        let mut copy = Copy::reading(&in_shape, &out_shape);
        for (step, size) in copy.step.iter_mut().zip(&in_shape) {
            if *size == 1 {
                *step = 0;
            }
        }
        return Ok(Lowered::Dispatches(vec![copy.dispatch(0)?]));
    }
    if let Some(pad) = op.downcast_ref::<Pad>() {
        let PadMode::Constant(value) = &pad.mode else {
            return Err(format!("{:?} padding", pad.mode));
        };
        let fill = value.cast_to_scalar::<f32>().map_err(|e| format!("{e}"))?;
        let mut copy = Copy::reading(&shapes[0], &out_shape);
        copy.fill = fill;
        for (d, (before, _)) in pad.pads.iter().enumerate() {
            copy.start[d] = -(*before as i64);
        }
        return Ok(Lowered::Dispatches(vec![copy.dispatch(0)?]));
    }
    if let Some(gather) = op.downcast_ref::<Gather>() {
        if gather.output_type.is_some() || inputs[0].datum_type != f32::datum_type() {
            return Err("gather of non-FP32 data".into());
        }
        if !matches!(inputs[1].datum_type, DatumType::I64 | DatumType::I32 | DatumType::U32 | DatumType::U64) {
            return Err(format!("gather with {:?} indices", inputs[1].datum_type));
        }
        let data = &shapes[0];
        let inner: usize = data[gather.axis + 1..].iter().product();
        let count: usize = shapes[1].iter().product();
        if inner == 0 || count == 0 {
            return Err("empty gather".into());
        }
        let params = vec![n as u32, data[gather.axis] as u32, count as u32, inner as u32];
        return Ok(Lowered::Dispatches(vec![dispatch(
            Kernel::Gather,
            vec![Operand::Input(0), Operand::Indices(1), Operand::Output],
            params,
            n,
        )?]));
    }
    Err(format!("no GPU kernel for {}", op.name()))
}

/// Strides of an input of `shape` read over `out` (same rank after left-padding; 0 where the
/// input is broadcast), padded to [`RANK`].
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Result<Vec<u32>, String> {
    if shape.len() > out.len() {
        return Err("input of higher rank than the output".into());
    }
    let full: Vec<usize> = std::iter::repeat_n(1, out.len() - shape.len()).chain(shape.iter().copied()).collect();
    let natural = strides(&full);
    let strides: Vec<usize> =
        (0..out.len()).map(|d| if full[d] == 1 && out[d] != 1 { 0 } else { natural[d] }).collect();
    padded(&strides, 0)
}
