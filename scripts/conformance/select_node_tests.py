"""Selects the ONNX backend node tests of the common ops and writes them where the Rust
conformance runner (tests/tests/conformance.rs) reads them.

The node tests ship inside the `onnx==1.22.0` wheel (later wheels dropped them). A test is
kept when its model is one node of a listed op (the `_expanded` variants, which rewrite the op
as a subgraph, are left out), every float input and every output is float32, and the other
inputs are int64 or int32 (shapes, axes, slice bounds: parameters, not data).

Writes, under the directory given:
  <test>/model.onnx   the test's model, unchanged
  <test>/case.json    {"op", "inputs": [{name, datatype, shape, data}], "outputs": [...]}
  index.json          [{"name", "op"}] in a stable order
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

OPS = [
    # dense and convolution
    "Conv", "ConvTranspose", "Gemm", "MatMul",
    # pooling
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    # normalization
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "LRN",
    # activations
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Clip", "Softmax", "LogSoftmax", "HardSwish", "Mish",
    # elementwise math
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Floor", "Ceil",
    "Max", "Min", "Sum", "Mean",
    # reductions
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
    # shape ops
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "Split",
    "Expand", "Tile", "Pad", "Identity", "Dropout",
]
DATATYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
}


def tensor_json(proto: onnx.TensorProto, name: str) -> dict:
    array = numpy_helper.to_array(proto)
    return {
        "name": name,
        "datatype": DATATYPES[proto.data_type],
        "shape": list(array.shape),
        # JSON has no NaN or infinities: those travel as the strings "NaN", "inf", "-inf".
        "data": [v if not isinstance(v, float) or np.isfinite(v) else str(v) for v in array.reshape(-1).tolist()],
    }


def select(node_dir: Path, out: Path) -> list[dict]:
    index = []
    for test in sorted(node_dir.iterdir()):
        if "_expanded" in test.name or not (test / "model.onnx").is_file():
            continue
        model = onnx.load(test / "model.onnx")
        graph = model.graph
        if len(graph.node) != 1 or graph.node[0].op_type not in OPS or graph.node[0].domain not in ("", "ai.onnx"):
            continue
        data_set = test / "test_data_set_0"
        inputs, outputs = [], []
        ok = True
        for kind, values, into in (("input", graph.input, inputs), ("output", graph.output, outputs)):
            for i, value in enumerate(values):
                elem = value.type.tensor_type.elem_type
                if not value.type.HasField("tensor_type") or elem not in DATATYPES:
                    ok = False
                    break
                if kind == "output" and elem != onnx.TensorProto.FLOAT:
                    ok = False
                    break
                path = data_set / f"{kind}_{i}.pb"
                if not path.is_file():
                    ok = False
                    break
                proto = onnx.TensorProto()
                proto.ParseFromString(path.read_bytes())
                into.append(tensor_json(proto, value.name))
        if not ok or not any(i["datatype"] == "FP32" for i in inputs):
            continue
        (out / test.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(test / "model.onnx", out / test.name / "model.onnx")
        case = {"op": graph.node[0].op_type, "inputs": inputs, "outputs": outputs}
        (out / test.name / "case.json").write_text(json.dumps(case, allow_nan=False))
        index.append({"name": test.name, "op": graph.node[0].op_type})
    return index


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    node_dir = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    index = select(node_dir, out)
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    ops = sorted({c["op"] for c in index})
    print(f"{len(index)} node tests of {len(ops)} ops (onnx {onnx.__version__}) in {out}")
