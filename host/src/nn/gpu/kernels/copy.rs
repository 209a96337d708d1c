//! Strided copies (copy.wgsl): the kernel behind the ops that only move elements (axis moves,
//! slices, downsampling, concatenation, broadcasts and constant padding).

use super::{Dispatch, Kernel, Operand, RANK, dispatch, padded, strides, u32_of};

/// A strided copy (see copy.wgsl), over `shape`.
pub(super) struct Copy {
    pub(super) shape: Vec<usize>,
    pub(super) start: Vec<i64>,
    pub(super) step: Vec<i64>,
    pub(super) extent: Vec<usize>,
    pub(super) in_strides: Vec<usize>,
    pub(super) out_strides: Vec<usize>,
    pub(super) out_offset: usize,
    pub(super) fill: f32,
}

impl Copy {
    /// Reads an input of `input` shape position by position over `output` shape (which the
    /// caller then shifts, steps or broadcasts axis by axis); writes contiguously.
    pub(super) fn reading(input: &[usize], output: &[usize]) -> Self {
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

    pub(super) fn dispatch(&self, input: usize) -> Result<Dispatch, String> {
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
