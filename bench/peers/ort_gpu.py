"""open_nsfw on onnxruntime-gpu (CUDAExecutionProvider): one table row per batch size, in the
format of `infercell-bench gpu` (the input is random, so no difference column)."""
import sys
import time

import numpy as np
import onnxruntime as ort

path, batches, iters = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3])
# CUDA and cuDNN come from the nvidia-* wheels that the [cuda,cudnn] extras install.
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"no CUDAExecutionProvider (providers: {ort.get_available_providers()})")
session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
name = session.get_inputs()[0].name
rng = np.random.default_rng(7)
for batch in batches:
    x = (rng.integers(0, 256, size=(batch, 224, 224, 3)) - 120).astype(np.float32)
    session.run(None, {name: x})
    runs, started = 0, time.perf_counter()
    while runs < iters or time.perf_counter() - started < 1.0:
        session.run(None, {name: x})
        runs += 1
    took = (time.perf_counter() - started) / runs
    print(f"| onnxruntime-gpu (CUDA) | {batch} | {took * 1e3:.2f} | {batch / took:.1f} | - | - |")
