//! The wgpu engine's tiled kernels against tract on the CPU, on shapes chosen to be awkward.
//! Like every GPU test, it runs on lavapipe under `scripts/test.sh` and CI, and skips without
//! an adapter when run alone.
#![allow(clippy::unwrap_used)]

use infercell::nn::{ElemType, Engine, HostTensor};
use infercell_tests::onnx::{attr_int, attr_ints, one_node_model, onnx_model, values};
use infercell_tests::{floats, gpu_engine};
use tract_onnx::pb;

/// Input names and shapes of a model.
type Inputs = Vec<(&'static str, Vec<u32>)>;

/// The tiled kernels (matrix products and convolutions as implicit matrix products, 64x64 tiles)
/// on shapes that are not multiples of the tile, with groups, strides, dilations, padding and
/// transposed operands, agree with tract on the CPU.
#[test]
fn tiled_kernels_match_tract_on_awkward_shapes() {
    let Some(gpu) = gpu_engine(1 << 30) else { return };
    let node = |op: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| (*i).into()).collect(),
        output: vec!["y".into()],
        attribute,
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<u8>, Inputs)> = vec![
        (
            "grouped, strided, dilated, padded 3x3 convolution",
            one_node_model(
                node(
                    "Conv",
                    &["x", "w", "b"],
                    vec![
                        attr_ints("strides", &[2, 1]),
                        attr_ints("pads", &[1, 2, 1, 2]),
                        attr_ints("dilations", &[1, 2]),
                        attr_int("group", 2),
                    ],
                ),
                &[("x", &[2, 32, 17, 19])],
                &[("w", &[80, 16, 3, 3], values(80 * 16 * 9, 1)), ("b", &[80], values(80, 2))],
            ),
            vec![("x", vec![2, 32, 17, 19])],
        ),
        (
            "1x1 convolution (an einsum)",
            one_node_model(
                node("Conv", &["x", "w"], vec![]),
                &[("x", &[1, 96, 9, 11])],
                &[("w", &[70, 96, 1, 1], values(70 * 96, 3))],
            ),
            vec![("x", vec![1, 96, 9, 11])],
        ),
        (
            "batched matrix product",
            one_node_model(node("MatMul", &["a", "b"], vec![]), &[("a", &[3, 70, 130]), ("b", &[130, 90])], &[]),
            vec![("a", vec![3, 70, 130]), ("b", vec![130, 90])],
        ),
        (
            "Gemm with a transposed operand",
            one_node_model(
                node("Gemm", &["a", "b"], vec![attr_int("transB", 1)]),
                &[("a", &[33, 77]), ("b", &[65, 77])],
                &[],
            ),
            vec![("a", vec![33, 77]), ("b", vec![65, 77])],
        ),
    ];
    // One index tensor, with negative indices, read by gathers over axes of different lengths:
    // each counts from its own end.
    let gather = |data: &str, out: &str| pb::NodeProto {
        op_type: "Gather".into(),
        input: vec![data.into(), "indices".into()],
        output: vec![out.into()],
        ..Default::default()
    };
    let shared_indices = onnx_model(
        vec![
            gather("short", "a"),
            gather("long", "b"),
            pb::NodeProto {
                op_type: "Concat".into(),
                input: vec!["a".into(), "b".into()],
                output: vec!["y".into()],
                attribute: vec![attr_int("axis", 0)],
                ..Default::default()
            },
        ],
        &[("short", &[50, 4]), ("long", &[700, 4])],
        vec![pb::TensorProto {
            name: "indices".into(),
            dims: vec![3],
            data_type: 7,
            int64_data: vec![-1, -2, 3],
            ..Default::default()
        }],
    );
    let mut cases = cases;
    cases.push((
        "gathers sharing negative indices",
        shared_indices,
        vec![("short", vec![50, 4]), ("long", vec![700, 4])],
    ));
    // Epilogues: a convolution's residual add and ReLU, a matrix product's bias and ReLU, run
    // inside the host dispatch.
    let step = |op: &str, inputs: &[&str], out: &str| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| (*i).into()).collect(),
        output: vec![out.into()],
        ..Default::default()
    };
    let residual = onnx_model(
        vec![
            pb::NodeProto { attribute: vec![attr_ints("pads", &[1, 1, 1, 1])], ..step("Conv", &["x", "w", "b"], "c") },
            step("Add", &["r", "c"], "s"),
            step("Relu", &["s"], "y"),
        ],
        &[("x", &[1, 24, 10, 12]), ("r", &[1, 32, 10, 12])],
        vec![
            pb::TensorProto {
                name: "w".into(),
                dims: vec![32, 24, 3, 3],
                data_type: 1,
                float_data: values(32 * 24 * 9, 5),
                ..Default::default()
            },
            pb::TensorProto {
                name: "b".into(),
                dims: vec![32],
                data_type: 1,
                float_data: values(32, 6),
                ..Default::default()
            },
        ],
    );
    let dense = onnx_model(
        vec![step("MatMul", &["a", "w"], "m"), step("Add", &["m", "bias"], "s"), step("Relu", &["s"], "y")],
        &[("a", &[5, 40])],
        vec![
            pb::TensorProto {
                name: "w".into(),
                dims: vec![40, 70],
                data_type: 1,
                float_data: values(40 * 70, 7),
                ..Default::default()
            },
            pb::TensorProto {
                name: "bias".into(),
                dims: vec![70],
                data_type: 1,
                float_data: values(70, 8),
                ..Default::default()
            },
        ],
    );
    for (what, onnx) in [("convolution, residual add, ReLU", &residual), ("matrix product, bias, ReLU", &dense)] {
        let checked = infercell::nn::gpu::check(onnx, Some(&gpu)).unwrap();
        let fused =
            checked.nodes.iter().filter(|n| n.why.as_deref().is_some_and(|w| w.starts_with("fused into"))).count();
        assert_eq!(fused, 2, "{what}: {:?}", checked.nodes);
    }
    cases.push((
        "convolution, residual add, ReLU",
        residual,
        vec![("x", vec![1, 24, 10, 12]), ("r", vec![1, 32, 10, 12])],
    ));
    cases.push(("matrix product, bias, ReLU", dense, vec![("a", vec![5, 40])]));
    for (what, onnx, inputs) in cases {
        let feed = || -> Vec<(String, HostTensor)> {
            inputs
                .iter()
                .enumerate()
                .map(|(i, (name, dims))| {
                    let n = dims.iter().product::<u32>() as usize;
                    let data = values(n, 10 + i as u64).iter().flat_map(|v| v.to_le_bytes()).collect();
                    (name.to_string(), HostTensor::new(dims.clone(), ElemType::F32, data).unwrap())
                })
                .collect()
        };
        let on_gpu = gpu.load(&onnx).unwrap().run_placed(feed()).unwrap();
        assert!(on_gpu.1.gpu_nodes > 0 && on_gpu.1.cpu_nodes == 0, "{what}: {:?}", on_gpu.1);
        let on_cpu = infercell::nn::tract::Tract.load(&onnx).unwrap().run(feed()).unwrap();
        let (got, want) = (floats(&on_gpu.0[0].1), floats(&on_cpu[0].1));
        assert_eq!(on_gpu.0[0].1.dims, on_cpu[0].1.dims, "{what}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 + 1e-4 * w.abs(), "{what}: [{i}] {g} on the GPU, {w} on tract");
        }
    }
}
