"""The peer a Python team would write instead of Infercell for the digits model: FastAPI +
uvicorn + ONNX Runtime, same request and response as samples/digits, same model file.

Run: uvicorn fastapi_digits:app --port PORT --workers N   (bench/peers/setup.sh makes the venv)
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
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
