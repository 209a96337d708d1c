//! Sliding windows: convolution (conv.wgsl, conv_direct.wgsl) and pooling (pool.wgsl), and the
//! spatial geometry they share.

use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::{Dispatch, Epilogue, Kernel, MAX_GROUPS, Operand, dispatch};

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

pub(super) fn pool_dispatch(
    spec: &PoolSpec,
    input: &[usize],
    output: &[usize],
    flags: [u32; 3],
) -> Result<Dispatch, String> {
    let g = Geometry::of(spec, input, output)?;
    let n: usize = output.iter().product();
    let mut params = vec![n as u32];
    for group in [g.input, g.output, g.kernel, g.strides, g.dilations, g.before, g.after] {
        params.extend(group.iter().map(|v| *v as u32));
    }
    params.extend(flags);
    dispatch(Kernel::Pool, vec![Operand::Input(0), Operand::Output], params, n)
}

pub(super) fn conv_dispatch(conv: &Conv, shapes: &[Vec<usize>], output: &[usize]) -> Result<Dispatch, String> {
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
