"""raymotion.Predictor, the served ensemble in this process, against the session's real Serve app
(conftest.served_url) on the same images: crops one by one and in a batch, and the faces of a whole photo.
Also: it imports neither torch nor Ray."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from bench import face_fit
from raymotion import Predictor
from raymotion.data.transforms import InvalidImage

TIMEOUT_S = 30
FACE_CROPS = os.path.join(os.path.dirname(__file__), "data", "faces")
TOLERANCE = 1e-5


def _val_paths(faces_root: str, n: int) -> list[str]:
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(faces_root, "val")) for f in fs)
    return paths[:: max(1, len(paths) // n)][:n]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _assert_same_answer(local: dict, served: dict) -> None:
    assert local["label"] == served["label"]
    assert list(local["probabilities"]) == list(served["probabilities"])  # class order too
    np.testing.assert_allclose(list(local["probabilities"].values()), list(served["probabilities"].values()),
                               atol=TOLERANCE, rtol=0)
    assert local["models"].keys() == served["models"].keys()
    for name, probs in served["models"].items():
        np.testing.assert_allclose(list(local["models"][name].values()), list(probs.values()), atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor(run[0])


def test_the_predictor_answers_crops_as_the_service_does(predictor, served_url, faces_root):
    paths = _val_paths(faces_root, 12)
    served = [requests.post(f"{served_url}/predict", data=_read(p), headers={"Content-Type": "image/jpeg"},
                            timeout=TIMEOUT_S).json() for p in paths]
    # One at a time, from paths and from bytes, and all together: the same answers.
    for path, answer in zip(paths, served):
        _assert_same_answer(predictor.predict(path), answer)
        _assert_same_answer(predictor.predict(_read(path)), answer)
    for local, answer in zip(predictor.predict_batch(paths), served):
        _assert_same_answer(local, answer)
    # The pooled probabilities alone, in the manifest's class order.
    pooled = predictor.probabilities(paths)
    np.testing.assert_allclose(pooled, [[a["probabilities"][c] for c in predictor.classes] for a in served],
                               atol=TOLERANCE, rtol=0)


def test_the_predictor_finds_the_faces_the_service_finds(predictor, served_url):
    photo = np.full((900, 1300, 3), 120, np.uint8)
    squares = [(100, 200, 400, 500), (700, 150, 960, 410), (500, 560, 720, 780)]
    for i, square in zip((0, 3, 6), squares):
        crop = Image.open(os.path.join(FACE_CROPS, sorted(os.listdir(FACE_CROPS))[i])).convert("RGB")
        face_fit.paste(photo, np.asarray(crop), square)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=92)
    served = requests.post(f"{served_url}/predict", params={"faces": 1}, data=buf.getvalue(),
                           headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S).json()
    local = predictor.faces(buf.getvalue())
    assert local["image"] == served["image"] == {"width": 1300, "height": 900}
    assert len(served["faces"]) == len(squares)
    assert [f["box"] for f in local["faces"]] == [f["box"] for f in served["faces"]]
    for mine, theirs in zip(local["faces"], served["faces"]):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-3)
        _assert_same_answer(mine, theirs)


def test_the_predictor_refuses_what_the_service_refuses(predictor):
    with pytest.raises(InvalidImage):
        predictor.predict(b"not an image")
    with pytest.raises(InvalidImage):
        predictor.predict(b"")


def test_the_predictor_needs_neither_torch_nor_ray(run, faces_root):
    path = _val_paths(faces_root, 1)[0]
    code = ("import json, sys; from raymotion import Predictor; a = Predictor(sys.argv[1]).predict(sys.argv[2]); "
            "print(json.dumps({'label': a['label'], 'loaded': sorted(m for m in ('torch', 'ray') if m in sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code, run[0], path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == [] and answer["label"] in run[1]["classes"]
