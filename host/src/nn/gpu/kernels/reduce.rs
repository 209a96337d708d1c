//! Reductions over axes: the reduce ops (reduce.wgsl), and softmax and RMS normalization over
//! a range of axes (rows.wgsl).

use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use super::{Dispatch, Kernel, Operand, dispatch, padded, strides, u32_of};

/// A one-axis-range normalization (rows.wgsl) over axes `first..=last` of `shape`.
pub(super) fn rows(shape: &[usize], first: usize, last: usize, op: u32, eps: f32) -> Result<Dispatch, String> {
    let outer: usize = shape[..first].iter().product();
    let len: usize = shape[first..=last].iter().product();
    let inner: usize = shape[last + 1..].iter().product();
    let rows = outer * inner;
    let params = vec![u32_of(rows)?, u32_of(len)?, u32_of(inner)?, op, eps.to_bits()];
    dispatch(Kernel::Rows, vec![Operand::Input(0), Operand::Output], params, rows)
}

pub(super) fn reduce_dispatch(reduce: &Reduce, shape: &[usize], n: usize) -> Result<Dispatch, String> {
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
