"""Trains the digits MLP and writes it as plain ONNX, plus reference outputs from ONNX Runtime.

Deterministic: fixed seeds, single-threaded training; the same packages give the same bytes.
Input `input` f32 [N,64] (pixel values 0..16 divided by 16), output `probabilities` f32 [N,10].
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=0)
mlp.fit(x_train, y_train)
accuracy = float(mlp.score(x_test, y_test))

w1, w2 = (w.astype(np.float32) for w in mlp.coefs_)
b1, b2 = (b.astype(np.float32) for b in mlp.intercepts_)
graph = helper.make_graph(
    nodes=[
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], name="dense2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ],
    name="digits_mlp",
    inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
    outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
    initializer=[
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ],
)
model = helper.make_model(
    graph,
    producer_name="infercell scripts/make_digits.py",
    opset_imports=[helper.make_opsetid("", 13)],
)
model.ir_version = 8
onnx.checker.check_model(model)
(out / "digits.onnx").write_bytes(model.SerializeToString())

# Reference outputs from ONNX Runtime for a few test images (raw 0..16 pixels as a user sends them).
session = ort.InferenceSession(str(out / "digits.onnx"), providers=["CPUExecutionProvider"])
cases = []
for i in range(8):
    pixels = digits.data[i * 97].astype(int).tolist()
    probs = session.run(None, {"input": (np.array([pixels], dtype=np.float32) / 16.0)})[0][0]
    cases.append({"pixels": pixels, "label": int(digits.target[i * 97]),
                  "digit": int(np.argmax(probs)), "probabilities": [float(p) for p in probs]})
(out / "expected.json").write_text(json.dumps({
    "model": "digits.onnx",
    "reference": f"onnxruntime {ort.__version__}",
    "test_accuracy": accuracy,
    "cases": cases,
}, indent=1) + "\n")
print(f"wrote {out / 'digits.onnx'} ({(out / 'digits.onnx').stat().st_size} bytes), test accuracy {accuracy:.3f}")
