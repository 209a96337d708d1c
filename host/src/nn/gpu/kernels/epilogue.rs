//! Epilogues (epilogue.wgsl): the addition and ReLU that a matrix product or a convolution
//! applies to its own output, so that the nodes doing them need no dispatch of their own.

use super::{Dispatch, Operand};

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
