"""The real Python clients of the Open Inference Protocol, unmodified, against Infercell.

Run by tests/tests/clients.rs with a server that has, for the tenant whose key is given:
the model `digits` (samples/digits/digits.onnx) and the tensor function `digits-predictor`.

    python tests/clients/test_clients.py --url http://127.0.0.1:PORT --key ick_... --expected samples/digits/expected.json

Each check prints `ok <name>`; the first failure raises and the script exits non-zero.
"""

import argparse
import asyncio
import json

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--expected", required=True)
args = parser.parse_args()

expected = json.load(open(args.expected))["cases"]
pixels = np.array([c["pixels"] for c in expected[:4]], dtype=np.float32)
want = np.array([c["probabilities"] for c in expected[:4]], dtype=np.float32)


def auth():
    # A fresh dict per call: both clients write into the headers they are given.
    return {"Authorization": f"Bearer {args.key}"}


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}")


def tritonclient_checks():
    client = triton.InferenceServerClient(url=args.url.removeprefix("http://"))
    check("triton: server live", client.is_server_live(headers=auth()))
    check("triton: server ready", client.is_server_ready(headers=auth()))
    check("triton: digits ready", client.is_model_ready("digits", headers=auth()))
    check("triton: unknown model not ready", not client.is_model_ready("no-such-model", headers=auth()))
    meta = client.get_server_metadata(headers=auth())
    check("triton: server metadata", "binary_tensor_data" in meta["extensions"], meta)
    meta = client.get_model_metadata("digits", headers=auth())
    check("triton: model metadata", meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}, meta)
    config = client.get_model_config("digits", headers=auth())
    check("triton: model config", config["input"][0]["data_type"] == "TYPE_FP32", config)
    index = client.get_model_repository_index(headers=auth())
    check("triton: repository index", {"digits", "digits-predictor"} <= {m["name"] for m in index}, index)

    for binary in (True, False):
        x = triton.InferInput("input", list((pixels / 16).shape), "FP32")
        x.set_data_from_numpy(pixels / 16, binary_data=binary)
        out = triton.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("digits", [x], outputs=[out], request_id="r-1", headers=auth())
        got = result.as_numpy("probabilities")
        check(f"triton: infer ({'binary' if binary else 'JSON'})", np.allclose(got, want, atol=1e-4), got - want)
        check(f"triton: request id echoed ({'binary' if binary else 'JSON'})", result.get_response()["id"] == "r-1")
    # No outputs named: every output, in binary (tritonclient asks binary_data_output).
    x = triton.InferInput("input", [1, 64], "FP32")
    x.set_data_from_numpy(pixels[:1] / 16)
    got = client.infer("digits", [x], headers=auth()).as_numpy("probabilities")
    check("triton: all outputs by default", np.allclose(got, want[:1], atol=1e-4))
    # A specific version.
    got = client.infer("digits", [x], model_version="1", headers=auth()).as_numpy("probabilities")
    check("triton: version 1", np.allclose(got, want[:1], atol=1e-4))

    # The tensor function, with its INT64 output.
    p = triton.InferInput("pixels", list(pixels.shape), "FP32")
    p.set_data_from_numpy(pixels)
    result = client.infer("digits-predictor", [p], headers=auth())
    digits = result.as_numpy("digit")
    check("triton: predictor digits", digits.tolist() == [c["digit"] for c in expected[:4]], digits)
    check("triton: predictor probabilities", np.allclose(result.as_numpy("probabilities"), want, atol=1e-4))

    # Errors arrive as InferenceServerException with the server's message and status.
    for name, inputs, status, needle in [
        ("wrong shape", [("input", [1, 63], np.zeros((1, 63), np.float32))], "400", "shape"),
        ("wrong datatype", [("input", [1, 64], np.zeros((1, 64), np.float64))], "400", "must be FP32"),
        ("unknown input", [("pixels", [1, 64], np.zeros((1, 64), np.float32))], "400", "unknown input"),
    ]:
        tensors = []
        for n, shape, data in inputs:
            t = triton.InferInput(n, shape, "FP64" if data.dtype == np.float64 else "FP32")
            t.set_data_from_numpy(data)
            tensors.append(t)
        try:
            client.infer("digits", tensors, headers=auth())
            raise AssertionError(f"triton: {name} was accepted")
        except InferenceServerException as e:
            check(f"triton: {name} -> {status}", e.status() == status and needle in e.message(), (e.status(), e.message()))
    try:
        client.infer("no-such-model", [x], headers=auth())
        raise AssertionError("triton: unknown model was accepted")
    except InferenceServerException as e:
        check("triton: unknown model -> 404", e.status() == "404", e)
    try:
        client.get_model_metadata("digits", headers={"Authorization": "Bearer ick_not_a_key"})
        raise AssertionError("triton: a bad key was accepted")
    except InferenceServerException as e:
        check("triton: bad key -> 401", e.status() == "401", e)

    stats = client.get_inference_statistics("digits", headers=auth())
    count = stats["model_stats"][0]["inference_count"]
    check("triton: statistics", count >= 4, stats)
    client.close()


async def kserve_checks():
    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        check("kserve: server live", await client.is_server_live(args.url, headers=auth()))
        check("kserve: server ready", await client.is_server_ready(args.url, headers=auth()))
        check("kserve: digits ready", await client.is_model_ready(args.url, "digits", headers=auth()))
        for binary in (True, False):
            x = InferInput("input", [4, 64], "FP32")
            if binary:
                x.set_data_from_numpy(pixels / 16)
            else:
                x.set_data_from_numpy(pixels / 16, binary_data=False)
            request = InferRequest(model_name="digits", infer_inputs=[x], request_id="k-1")
            result = await client.infer(args.url, request, model_name="digits", headers=auth())
            got = result.get_output_by_name("probabilities").as_numpy()
            check(f"kserve: infer ({'binary' if binary else 'JSON'})", np.allclose(got, want, atol=1e-4), got - want)
        try:
            x = InferInput("input", [1, 63], "FP32")
            x.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=False)
            await client.infer(args.url, InferRequest(model_name="digits", infer_inputs=[x]), model_name="digits", headers=auth())
            raise AssertionError("kserve: a wrong shape was accepted")
        except httpx.HTTPStatusError as e:
            check("kserve: wrong shape -> 400", e.response.status_code == 400 and "shape" in str(e), e)


tritonclient_checks()
asyncio.run(kserve_checks())
print("all client checks passed")
