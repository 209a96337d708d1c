//! Epilogue fusion: the additions and ReLUs after a matrix product or a convolution that run
//! inside its dispatch rather than as dispatches of their own.

use std::collections::HashMap;

use tract_onnx::prelude::*;

use super::internal;
use crate::nn::NnError;
use crate::nn::gpu::kernels::{self, Lowered};

/// Finds the epilogues (see [`kernels::Epilogue`]): rewrites each host dispatch's epilogue
/// parameters, marks the nodes it absorbs `Fused`, and returns absorbed node -> host node and
/// host node -> the outlet its epilogue adds.
#[allow(clippy::type_complexity)]
pub(super) fn fuse(
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
