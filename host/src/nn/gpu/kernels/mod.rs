//! The kernel set: which of tract's decluttered ops run on the GPU, and how each becomes
//! compute dispatches. Every shader sits beside this file; each takes FP32 tensors as
//! read-only storage buffers, writes one output buffer, and reads its shapes and strides from
//! a last `array<u32>` parameter buffer.
//!
//! [`lower`] is pure: it reads a node and the concrete facts of its inputs and output and
//! answers with dispatches (or an alias, for ops that only rename axes), or with the reason
//! the node stays on the CPU. The plan turns operands into buffers.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, MultiBroadcastTo, Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};

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

/// Work fused into a matrix product's or a convolution's output (the nodes after it, which
/// then run inside its dispatch): adding a value of the output's shape (a residual) or a vector
/// along one of its axes (a bias), then ReLU.
#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    /// How the added value is laid out over the output, if there is one.
    pub add: Option<AddLayout>,
    pub relu: bool,
}

/// The layout of a value an epilogue adds, over the output's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddLayout {
    /// The output's own shape: element i.
    Same,
    /// A vector along one axis of `len` positions with `inner` elements after it: element
    /// (i / inner) % len.
    Along { len: u32, inner: u32 },
}

impl Epilogue {
    /// The epilogue's parameters: [flags (1: add, 2: ReLU), layout (1: same, 2: along),
    /// len, inner].
    pub fn params(&self) -> Vec<u32> {
        let flags = u32::from(self.add.is_some()) | (u32::from(self.relu) << 1);
        match self.add {
            Some(AddLayout::Along { len, inner }) => vec![flags, 2, len, inner.max(1)],
            Some(AddLayout::Same) => vec![flags, 1, 0, 1],
            None => vec![flags, 0, 0, 1],
        }
    }

    /// How a value of `shape` lies over an output of shape `out`, when it is one of the layouts
    /// an epilogue reads (other broadcasts stay separate nodes).
    pub fn layout(shape: &[usize], out: &[usize]) -> Option<AddLayout> {
        if shape.len() > out.len() {
            return None;
        }
        let full: Vec<usize> = std::iter::repeat_n(1, out.len() - shape.len()).chain(shape.iter().copied()).collect();
        if full == out {
            return Some(AddLayout::Same);
        }
        let along: Vec<usize> = (0..out.len()).filter(|d| full[*d] != 1).collect();
        match along.as_slice() {
            [axis] if full[*axis] == out[*axis] => Some(AddLayout::Along {
                len: u32::try_from(out[*axis]).ok()?,
                inner: u32::try_from(out[axis + 1..].iter().product::<usize>()).ok()?,
            }),
            _ => None,
        }
    }
}

impl Dispatch {
    /// Whether this dispatch can take an epilogue.
    pub fn takes_epilogue(&self) -> bool {
        self.operands.contains(&Operand::Extra)
    }
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

/// The unary kernel's code for an element-wise op, and its parameter.
fn unary_code(ew: &ElementWiseOp) -> Result<(u32, f32), String> {
    use tract_onnx::tract_core::ops::math::PowConst;
    use tract_onnx::tract_core::ops::nn::{GeluApproximate, LeakyRelu};
    let mini = &ew.0;
    if let Some(leaky) = mini.downcast_ref::<LeakyRelu>() {
        return Ok((12, leaky.alpha));
    }
    if let Some(pow) = mini.downcast_ref::<PowConst>() {
        return Ok((20, pow.exponent));
    }
    if let Some(gelu) = mini.downcast_ref::<GeluApproximate>() {
        return if gelu.fast_impl { Err("fast approximate GELU".into()) } else { Ok((11, 0.0)) };
    }
    let code = match mini.name().as_ref() {
        "Abs" => 0,
        "Neg" => 1,
        "Exp" => 2,
        "Ln" => 3,
        "Sqrt" => 4,
        "Rsqrt" => 5,
        "Recip" => 6,
        "Sigmoid" => 7,
        "Tanh" => 8,
        "Erf" => 9,
        "GeluExact" => 10,
        "Ceil" => 13,
        "Floor" => 14,
        "Square" => 15,
        "HardSwish" => 16,
        "Sin" => 17,
        "Cos" => 18,
        "Silu" => 19,
        "Round" => 21,
        "RoundHalfToEven" => 22,
        "Sign" => 23,
        other => return Err(format!("no GPU kernel for {other}")),
    };
    Ok((code, 0.0))
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

/// A strided copy (see copy.wgsl), over `shape`.
struct Copy {
    shape: Vec<usize>,
    start: Vec<i64>,
    step: Vec<i64>,
    extent: Vec<usize>,
    in_strides: Vec<usize>,
    out_strides: Vec<usize>,
    out_offset: usize,
    fill: f32,
}

impl Copy {
    /// Reads an input of `input` shape position by position over `output` shape (which the
    /// caller then shifts, steps or broadcasts axis by axis); writes contiguously.
    fn reading(input: &[usize], output: &[usize]) -> Self {
        Copy {
            shape: output.to_vec(),
            start: vec![0; output.len()],
            step: vec![1; output.len()],
            extent: input.to_vec(),
            in_strides: strides(input),
            out_strides: strides(output),
            out_offset: 0,
            fill: 0.0,
        }
    }

    fn dispatch(&self, input: usize) -> Result<Dispatch, String> {
        let n: usize = self.shape.iter().product();
        let signed = |v: &[i64]| -> Result<Vec<u32>, String> {
            let mut out = vec![0u32; RANK.saturating_sub(v.len())];
            for x in v {
                let x = i32::try_from(*x).map_err(|_| format!("{x} does not fit 32 bits"))?;
                out.push(x as u32);
            }
            Ok(out)
        };
        let mut params = vec![n as u32, u32_of(self.out_offset)?, self.fill.to_bits()];
        params.extend(padded(&self.shape, 1)?);
        params.extend(signed(&self.start)?);
        params.extend(signed(&self.step)?);
        params.extend(padded(&self.extent, 1)?);
        params.extend(padded(&self.in_strides, 0)?);
        params.extend(padded(&self.out_strides, 0)?);
        dispatch(Kernel::Copy, vec![Operand::Input(input), Operand::Output], params, n)
    }
}

/// A one-axis-range normalization (rows.wgsl) over axes `first..=last` of `shape`.
fn rows(shape: &[usize], first: usize, last: usize, op: u32, eps: f32) -> Result<Dispatch, String> {
    let outer: usize = shape[..first].iter().product();
    let len: usize = shape[first..=last].iter().product();
    let inner: usize = shape[last + 1..].iter().product();
    let rows = outer * inner;
    let params = vec![u32_of(rows)?, u32_of(len)?, u32_of(inner)?, op, eps.to_bits()];
    dispatch(Kernel::Rows, vec![Operand::Input(0), Operand::Output], params, rows)
}

fn reduce_dispatch(reduce: &Reduce, shape: &[usize], n: usize) -> Result<Dispatch, String> {
    let op = match reduce.reducer {
        Reducer::Sum => 0,
        Reducer::Max => 1,
        Reducer::Min => 2,
        Reducer::Prod => 3,
        Reducer::MeanOfSquares => 4,
        other => return Err(format!("no GPU kernel for reducer {other:?}")),
    };
    let natural = strides(shape);
    let kept: Vec<usize> =
        shape.iter().enumerate().map(|(d, s)| if reduce.axes.contains(&d) { 1 } else { *s }).collect();
    let reduced: Vec<usize> =
        shape.iter().enumerate().map(|(d, s)| if reduce.axes.contains(&d) { *s } else { 1 }).collect();
    let count: usize = reduced.iter().product();
    let mut params = vec![n as u32, op];
    params.extend(padded(&kept, 1)?);
    params.extend(padded(&natural, 0)?);
    params.extend(padded(&reduced, 1)?);
    params.extend(padded(&natural, 0)?);
    params.push(u32_of(count)?);
    dispatch(Kernel::Reduce, vec![Operand::Input(0), Operand::Output], params, n)
}

/// Spatial geometry shared by convolution and pooling, as three axes (leading unit axes for
/// 1-D and 2-D): input, output, kernel, strides, dilations, padding before and after.
struct Geometry {
    /// Batch and channels of the input (channels-first data, with or without a batch axis).
    batch: usize,
    channels: usize,
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 3],
    strides: [usize; 3],
    dilations: [usize; 3],
    before: [usize; 3],
    after: [usize; 3],
}

impl Geometry {
    fn of(spec: &PoolSpec, input: &[usize], output: &[usize]) -> Result<Self, String> {
        if !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW) {
            return Err(format!("{:?} data", spec.data_format));
        }
        let rank = spec.rank();
        let shape = spec.data_format.shape(input.to_vec()).map_err(|e| format!("{e}"))?;
        let out_shape = spec.data_format.shape(output.to_vec()).map_err(|e| format!("{e}"))?;
        if rank == 0 || rank > 3 || shape.hw_dims().len() != rank {
            return Err(format!("{rank}-D window"));
        }
        let spatial = shape.hw_dims();
        let computed = spec.computed_padding(spatial);
        let lift = |v: &[usize]| -> [usize; 3] {
            let mut out = [1; 3];
            out[3 - v.len()..].copy_from_slice(v);
            out
        };
        let zero_lift = |v: &[usize]| -> [usize; 3] {
            let mut out = [0; 3];
            out[3 - v.len()..].copy_from_slice(v);
            out
        };
        Ok(Geometry {
            batch: shape.n().copied().unwrap_or(1),
            channels: *shape.c(),
            input: lift(spatial),
            output: lift(out_shape.hw_dims()),
            kernel: lift(&spec.kernel_shape),
            strides: lift(&spec.strides()),
            dilations: lift(&spec.dilations()),
            before: zero_lift(&computed.iter().map(|c| c.pad_before).collect::<Vec<_>>()),
            after: zero_lift(&computed.iter().map(|c| c.pad_after).collect::<Vec<_>>()),
        })
    }
}

fn pool_dispatch(spec: &PoolSpec, input: &[usize], output: &[usize], flags: [u32; 3]) -> Result<Dispatch, String> {
    let g = Geometry::of(spec, input, output)?;
    let n: usize = output.iter().product();
    let mut params = vec![n as u32];
    for group in [g.input, g.output, g.kernel, g.strides, g.dilations, g.before, g.after] {
        params.extend(group.iter().map(|v| *v as u32));
    }
    params.extend(flags);
    dispatch(Kernel::Pool, vec![Operand::Input(0), Operand::Output], params, n)
}

fn conv_dispatch(conv: &Conv, shapes: &[Vec<usize>], output: &[usize]) -> Result<Dispatch, String> {
    if conv.q_params.is_some() {
        return Err("quantized convolution".into());
    }
    if conv.kernel_fmt != KernelFormat::OIHW {
        return Err(format!("{:?} kernel", conv.kernel_fmt));
    }
    if shapes.len() != 3 {
        return Err(format!("convolution with {} inputs", shapes.len()));
    }
    let g = Geometry::of(&conv.pool_spec, &shapes[0], output)?;
    let (batch, channels, out_channels) = (g.batch, g.channels, conv.pool_spec.output_channels);
    if conv.group == 0 || channels % conv.group != 0 || out_channels % conv.group != 0 {
        return Err("inconsistent groups".into());
    }
    let bias_stride = match shapes[2].iter().product::<usize>() {
        1 => 0,
        len if len == out_channels => 1,
        len => return Err(format!("bias of {len} values")),
    };
    let n: usize = output.iter().product();
    let mut params = vec![n as u32, batch as u32, channels as u32, out_channels as u32, conv.group as u32];
    for group in [g.input, g.output, g.kernel, g.strides, g.dilations, g.before] {
        params.extend(group.iter().map(|v| *v as u32));
    }
    params.push(bias_stride);
    params.extend(Epilogue::default().params());
    let operands = vec![Operand::Input(0), Operand::Input(1), Operand::Input(2), Operand::Output, Operand::Extra];
    // Enough output channels per group to fill a tile: the tiled implicit matrix product;
    // otherwise (depthwise and thin convolutions) one invocation per output element.
    let per_group = out_channels / conv.group;
    let positions: usize = g.output.iter().product();
    let groups = [positions.div_ceil(64) as u64, per_group.div_ceil(64) as u64, (batch * conv.group) as u64];
    if per_group >= 16 && groups.iter().all(|g| *g <= MAX_GROUPS) {
        return Ok(Dispatch { kernel: Kernel::Conv, operands, params, groups: groups.map(|g| g as u32) });
    }
    dispatch(Kernel::ConvDirect, operands, params, n)
}

/// An einsum that is a (batched, strided) matrix product: every axis is in both inputs and the
/// output (batch), in A and the output (m), in B and the output (n) or in A and B (k, summed).
/// Unit axes are ignored; several m, n or k axes fold into one when they are adjacent in the
/// same order in every tensor that has them.
fn matmul(einsum: &EinSum, shapes: &[Vec<usize>], output: &[usize]) -> Result<Dispatch, String> {
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || shapes.len() != 2 {
        return Err("einsum that is not an FP32 product of two tensors".into());
    }
    let tensors = [&shapes[0], &shapes[1], &output.to_vec()].map(|s| s.clone());
    let all_strides = tensors.clone().map(|s| strides(&s));
    // Per kept axis: its size and its stride in A, B and C (None where absent).
    #[derive(Clone, Copy)]
    struct Ax {
        size: usize,
        at: [Option<(usize, usize)>; 3],
    }
    let mut batch = Vec::new();
    let (mut ms, mut ns, mut ks) = (Vec::new(), Vec::new(), Vec::new());
    for axis in einsum.axes.iter_all_axes() {
        let positions = [&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]];
        if positions.iter().any(|p| p.len() > 1) {
            return Err("einsum with a repeated axis".into());
        }
        // A batch axis may be broadcast (size 1 in one input): it reads with stride 0 there.
        let size = (0..3).filter_map(|t| positions[t].first().map(|p| tensors[t][*p])).max().unwrap_or(1);
        if size == 1 {
            continue;
        }
        let at: [Option<(usize, usize)>; 3] = [0, 1, 2]
            .map(|t| positions[t].first().map(|p| (*p, if tensors[t][*p] == 1 { 0 } else { all_strides[t][*p] })));
        let ax = Ax { size, at };
        match (at[0].is_some(), at[1].is_some(), at[2].is_some()) {
            (true, true, true) => batch.push(ax),
            (true, false, true) => ms.push(ax),
            (false, true, true) => ns.push(ax),
            (true, true, false) => ks.push(ax),
            _ => return Err("einsum that sums or broadcasts an axis of one operand".into()),
        }
    }
    // Folds axes that are adjacent, in the same order, in every tensor holding them.
    let fold = |mut axes: Vec<Ax>| -> Result<Option<Ax>, String> {
        let Some(first_tensor) = (0..3).find(|t| axes.first().is_some_and(|a| a.at[*t].is_some())) else {
            return Ok(None);
        };
        axes.sort_by_key(|a| a.at[first_tensor].map(|p| p.0));
        let mut folded = axes[0];
        for next in &axes[1..] {
            for t in 0..3 {
                match (folded.at[t], next.at[t]) {
                    (Some((p, _)), Some((q, s))) if q == p + 1 && folded.at[t].map(|f| f.1) == Some(s * next.size) => {
                        folded.at[t] = Some((q, s));
                    }
                    (None, None) => {}
                    _ => return Err("einsum whose axes do not fold into one matrix product".into()),
                }
            }
            folded.size *= next.size;
        }
        Ok(Some(folded))
    };
    let (m, n, k) = (fold(ms)?, fold(ns)?, fold(ks)?);
    if batch.len() > 3 {
        return Err("more than three batch axes".into());
    }
    let stride = |a: &Option<Ax>, t: usize| a.and_then(|a| a.at[t]).map_or(0, |p| p.1) as u32;
    let size = |a: &Option<Ax>| a.map_or(1, |a| a.size);
    let mut batch_sizes = [1usize; 3];
    let mut batch_strides = [[0u32; 3]; 3];
    for (i, ax) in batch.iter().enumerate() {
        let slot = 3 - batch.len() + i;
        batch_sizes[slot] = ax.size;
        for (t, strides) in batch_strides.iter_mut().enumerate() {
            strides[slot] = ax.at[t].map_or(0, |p| p.1) as u32;
        }
    }
    let (m_len, n_len) = (size(&m), size(&n));
    let z: usize = batch_sizes.iter().product();
    let groups = [n_len.div_ceil(64) as u64, m_len.div_ceil(64) as u64, z as u64];
    if groups.iter().any(|g| *g > MAX_GROUPS) {
        return Err("matrix product larger than one dispatch covers".into());
    }
    let mut params = vec![m_len as u32, n_len as u32, size(&k) as u32, batch_sizes[1] as u32, batch_sizes[2] as u32];
    params.extend(batch_strides[0]);
    params.extend([stride(&m, 0), stride(&k, 0)]);
    params.extend(batch_strides[1]);
    params.extend([stride(&k, 1), stride(&n, 1)]);
    params.extend(batch_strides[2]);
    params.extend([stride(&m, 2), stride(&n, 2)]);
    Ok(Dispatch {
        kernel: Kernel::MatMul,
        operands: vec![Operand::Input(0), Operand::Input(1), Operand::Output, Operand::Extra],
        params: {
            params.extend(Epilogue::default().params());
            params
        },
        groups: groups.map(|g| g.max(1) as u32),
    })
}
