//! Small ONNX models built in tests with tract's generated protobuf types: what the GPU kernel
//! tests and the pipeline tests feed the engines, without a Python step.

use tract_onnx::pb;

/// A node `op` reading `inputs`, writing `output`.
pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| (*i).into()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// An INT64 initializer (shapes, axes).
pub fn int64s(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// An ONNX model of one `node` over float inputs `inputs` (name, shape) and float initializers
/// (name, shape, values), with output `y`.
pub fn one_node_model(
    node: pb::NodeProto,
    inputs: &[(&str, &[i64])],
    initializers: &[(&str, &[i64], Vec<f32>)],
) -> Vec<u8> {
    let initializers = initializers
        .iter()
        .map(|(name, dims, values)| pb::TensorProto {
            name: (*name).into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: values.clone(),
            ..Default::default()
        })
        .collect();
    onnx_model(vec![node], inputs, initializers)
}

/// An ONNX model of `nodes` over float inputs `inputs` (name, shape; a negative dimension is
/// the symbol `N`), with output `y`.
pub fn onnx_model(nodes: Vec<pb::NodeProto>, inputs: &[(&str, &[i64])], initializers: Vec<pb::TensorProto>) -> Vec<u8> {
    let typed: Vec<(&str, i32, &[i64])> = inputs.iter().map(|(name, dims)| (*name, FLOAT, *dims)).collect();
    onnx_model_typed(nodes, &typed, initializers)
}

/// ONNX element types.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

/// [`onnx_model`] with inputs of any element type (name, type, shape).
pub fn onnx_model_typed(
    nodes: Vec<pb::NodeProto>,
    inputs: &[(&str, i32, &[i64])],
    initializers: Vec<pb::TensorProto>,
) -> Vec<u8> {
    onnx_model_with_output(nodes, inputs, initializers, "y")
}

/// A model shaped like the digits model (`input` [1, 64] -> `probabilities` [1, 10]) that
/// always answers `digit`: a second "version" of digits whose answers are told apart.
pub fn digits_lookalike(digit: usize) -> Vec<u8> {
    let one_hot: Vec<f32> = (0..10).map(|i| if i == digit { 1.0 } else { 0.0 }).collect();
    let weights = pb::TensorProto {
        name: "w".into(),
        dims: vec![64, 10],
        data_type: FLOAT,
        float_data: vec![0.0; 640],
        ..Default::default()
    };
    let bias = pb::TensorProto {
        name: "b".into(),
        dims: vec![1, 10],
        data_type: FLOAT,
        float_data: one_hot,
        ..Default::default()
    };
    onnx_model_with_output(
        vec![node("MatMul", &["input", "w"], "m", Vec::new()), node("Add", &["m", "b"], "probabilities", Vec::new())],
        &[("input", FLOAT, &[1, 64])],
        vec![weights, bias],
        "probabilities",
    )
}

/// [`onnx_model_typed`] with the graph output named `output`.
pub fn onnx_model_with_output(
    nodes: Vec<pb::NodeProto>,
    inputs: &[(&str, i32, &[i64])],
    initializers: Vec<pb::TensorProto>,
    output: &str,
) -> Vec<u8> {
    use prost::Message as _;
    let value_info = |name: &str, elem_type: i32, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            value: Some(match *d {
                                d if d < 0 => pb::tensor_shape_proto::dimension::Value::DimParam("N".into()),
                                d => pb::tensor_shape_proto::dimension::Value::DimValue(d),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "g".into(),
        node: nodes,
        input: inputs.iter().map(|(n, t, d)| value_info(n, *t, d)).collect(),
        output: vec![pb::ValueInfoProto { name: output.into(), ..Default::default() }],
        initializer: initializers,
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

pub fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 7, ints: ints.to_vec(), ..Default::default() }
}

pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
}

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `y = x` broadcast to `[N, 1048576]` from the `[N, 1]` input `x`: 4 MiB of output per row,
/// its size known only from the input's.
pub fn wide() -> Vec<u8> {
    let nodes = vec![node("Expand", &["x", "shape"], "y", Vec::new())];
    onnx_model(nodes, &[("x", &[-1, 1])], vec![int64s("shape", &[1, 1 << 20])])
}

/// `y = ConstantOfShape(shape)`: a float tensor of zeros whose shape is the `INT64 [2]` input's
/// values, a size known only from them.
pub fn constant_of_input_shape() -> Vec<u8> {
    let nodes = vec![node("ConstantOfShape", &["shape"], "y", Vec::new())];
    onnx_model_typed(nodes, &[("shape", INT64, &[2])], Vec::new())
}

/// `y = max(x' x' ... x')` over `products` products of 1024 x 1024 matrices, `x'` being the
/// `[1, 1]` input `x` broadcast: 2 GFLOP per product (seconds of CPU work for a few dozen) in a
/// few hundred bytes. What the deadline tests and the isolation benchmark cut.
pub fn matmul_chain(products: usize) -> Vec<u8> {
    matmul_chain_of(products, 1024)
}

/// [`matmul_chain`] of `size` x `size` matrices.
pub fn matmul_chain_of(products: usize, size: i64) -> Vec<u8> {
    let mut nodes = vec![node("Expand", &["x", "shape"], "a0", Vec::new())];
    for i in 1..=products {
        nodes.push(node("MatMul", &[&format!("a{}", i - 1), "a0"], &format!("a{i}"), Vec::new()));
    }
    nodes.push(node("ReduceMax", &[&format!("a{products}")], "y", vec![attr_int("keepdims", 0)]));
    onnx_model(nodes, &[("x", &[1, 1])], vec![int64s("shape", &[size, size])])
}
