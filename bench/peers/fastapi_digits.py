"""The peer a Python team would write instead of Infercell for the digits model: FastAPI +
uvicorn + ONNX Runtime, same request and response as samples/digits, same model file.

Run: uvicorn fastapi_digits:app --port PORT --workers N   (bench/peers/setup.sh makes the venv)
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

MODEL = Path(os.environ.get("DIGITS_MODEL", Path(__file__).resolve().parents[2] / "samples/digits/digits.onnx"))
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
app = FastAPI()


class Digits(BaseModel):
    pixels: list[float]


@app.post("/digits")
def digits(body: Digits):
    if len(body.pixels) != 64:
        raise HTTPException(400, f"`pixels` must have 64 numbers (8x8), got {len(body.pixels)}")
    for i, p in enumerate(body.pixels):
        if not 0 <= p <= 16:
            raise HTTPException(400, f"pixels[{i}] = {p} is outside 0..16")
    x = (np.asarray(body.pixels, dtype=np.float32) / 16.0).reshape(1, 64)
    probabilities = session.run(None, {"input": x})[0][0]
    return {"digit": int(np.argmax(probabilities)), "probabilities": probabilities.tolist()}


# The same model on the Open Inference Protocol (KServe v2), JSON and Triton's binary tensors,
# as a Python team would add it to this server: the peer of `infercell-bench p3 --protocol v2`.
@app.post("/v2/models/digits/infer")
async def infer(request: Request):
    body = await request.body()
    length = request.headers.get("inference-header-content-length")
    header = json.loads(body[: int(length)] if length else body)
    binary = body[int(length) :] if length else b""
    outputs = []
    for tensor in header["inputs"]:
        if tensor["name"] != "input" or tensor["datatype"] != "FP32":
            raise HTTPException(400, f"unknown input `{tensor['name']}` or datatype")
        shape = tensor["shape"]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is not None:
            x = np.frombuffer(binary[:size], dtype=np.float32)
            binary = binary[size:]
        else:
            x = np.asarray(tensor["data"], dtype=np.float32)
        if x.size != int(np.prod(shape)) or len(shape) != 2 or shape[1] != 64:
            raise HTTPException(400, f"input `input` must have shape [-1, 64], got {shape}")
        probabilities = session.run(None, {"input": x.reshape(shape)})[0]
        outputs.append(probabilities)
    wants_binary = header.get("parameters", {}).get("binary_data_output") or any(
        o.get("parameters", {}).get("binary_data") for o in header.get("outputs", [])
    )
    (probabilities,) = outputs
    out = {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape)}
    if wants_binary:
        raw = probabilities.astype(np.float32).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"model_name": "digits", "model_version": "1", "outputs": [out]}).encode()
        return Response(head + raw, media_type="application/octet-stream",
                        headers={"inference-header-content-length": str(len(head))})
    out["data"] = probabilities.reshape(-1).tolist()
    return {"model_name": "digits", "model_version": "1", "outputs": [out]}
