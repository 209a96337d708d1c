//! Matrix products (matmul.wgsl): the einsums that are one batched, strided product of two
//! tensors.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::{Dispatch, Epilogue, Kernel, MAX_GROUPS, Operand, strides};

/// An einsum that is a (batched, strided) matrix product: every axis is in both inputs and the
/// output (batch), in A and the output (m), in B and the output (n) or in A and B (k, summed).
/// Unit axes are ignored; several m, n or k axes fold into one when they are adjacent in the
/// same order in every tensor that has them.
pub(super) fn matmul(einsum: &EinSum, shapes: &[Vec<usize>], output: &[usize]) -> Result<Dispatch, String> {
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
