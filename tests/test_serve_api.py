"""The HTTP API beyond /predict, against the session's real Serve app (conftest.served_url): batches, the
public /models, the OpenAPI contract, overload answered 503 with Retry-After, and a model update that
drops no request. Every load below is bounded in count and time."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from raymotion import rundir
from serve.schema import MAX_BATCH_IMAGES

TIMEOUT_S = 30


def _val_images(faces_root: str, n: int) -> list[bytes]:
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(faces_root, "val")) for f in fs)
    out = []
    for path in paths[:: max(1, len(paths) // n)][:n]:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def _predict(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)


def test_a_batch_answers_each_image_on_its_own(served_url, faces_root):
    good = _val_images(faces_root, 3)
    parts = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(good)]
    parts.insert(2, ("files", ("bad.jpg", b"not an image", "image/jpeg")))
    response = requests.post(f"{served_url}/predict/batch", files=parts, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == [200, 200, 400, 200]
    assert results[2]["filename"] == "bad.jpg" and "error" in results[2] and results[2].get("prediction") is None
    # Each good image gets what /predict alone answers for it.
    singles = [_predict(served_url, data).json() for data in good]
    batched = [r["prediction"] for r in results if r["status"] == 200]
    for alone, together in zip(singles, batched):
        assert alone["label"] == together["label"]
        np.testing.assert_allclose(list(alone["probabilities"].values()), list(together["probabilities"].values()),
                                   atol=1e-5)


def test_a_batch_refuses_too_many_images_and_bodies_that_are_not_batches(served_url, faces_root):
    (one,) = _val_images(faces_root, 1)
    too_many = [("files", (f"{i}.jpg", one, "image/jpeg")) for i in range(MAX_BATCH_IMAGES + 1)]
    response = requests.post(f"{served_url}/predict/batch", files=too_many, timeout=TIMEOUT_S)
    assert response.status_code == 400 and "Too many files" in response.json()["error"]
    raw = requests.post(f"{served_url}/predict/batch", data=one, headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)
    assert raw.status_code == 400 and "multipart" in raw.json()["error"]
    wrong_field = requests.post(f"{served_url}/predict/batch", files={"file": ("a.jpg", one, "image/jpeg")},
                                timeout=TIMEOUT_S)
    assert wrong_field.status_code == 400 and "'files'" in wrong_field.json()["error"]
    assert requests.post(f"{served_url}/predict/batch", files=too_many[:2], timeout=TIMEOUT_S).status_code == 200


def test_a_huge_image_is_refused_before_it_is_decoded(served_url):
    # 15,000 x 11,000 pixels in a small file (1-bit PNG of zeros): the header alone says it is too large.
    buf = io.BytesIO()
    Image.new("1", (15_000, 11_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 2_000_000
    started = time.perf_counter()
    response = _predict(served_url, buf.getvalue())
    assert response.status_code == 413 and "too large" in response.json()["error"]
    assert time.perf_counter() - started < TIMEOUT_S


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_models_describes_what_answers_without_the_servers_paths(served_url, run):
    run_dir, manifest = run
    body = requests.get(f"{served_url}/models", timeout=TIMEOUT_S).json()
    with open(os.path.join(run_dir, rundir.MANIFEST), "rb") as f:
        version = hashlib.sha256(f.read()).hexdigest()[:16]
    assert body["run"] == {"id": os.path.basename(run_dir), "version": version, "created_at": manifest["created_at"]}
    assert sorted(body["models"]) == sorted(manifest["ensemble"]["served"])
    for name, model in body["models"].items():
        assert model["sha256"] == manifest["models"][name]["serve"]["sha256"]
        assert model["val"]["accuracy"] == manifest["models"][name]["val"]["accuracy"]
    leaked = [s for s in _strings(body) if s.startswith("/") or run_dir in s or manifest["data"]["root"] in s]
    assert not leaked, leaked


def _resolved(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _answer_fields(spec: dict, response: dict) -> list[tuple[set, set]]:
    """(properties, required) of each JSON schema a response may have (a union lists several)."""
    schema = _resolved(spec, response["content"]["application/json"]["schema"])
    options = [_resolved(spec, option) for option in schema.get("anyOf", [schema])]
    return [(set(o.get("properties", {})), set(o.get("required", []))) for o in options]


def check_openapi(spec: dict) -> None:
    """What a client generated from the schema relies on: each route's bodies, the fields of each answer, and
    one error shape, {"error": string}, for every documented error."""
    predict = spec["paths"]["/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert "image/jpeg" in content and "multipart/form-data" in content
    assert content["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    assert "file" in _resolved(spec, content["multipart/form-data"]["schema"])["properties"]
    faces = next(p for p in predict["parameters"] if p["name"] == "faces")
    assert faces["in"] == "query" and not faces.get("required", False)
    assert sorted(_answer_fields(spec, predict["responses"]["200"])) == sorted([
        ({"label", "probabilities", "models"}, {"label", "probabilities", "models"}),  # a face crop
        ({"image", "faces"}, {"image", "faces"})])  # ?faces=1: a whole photo
    batch = spec["paths"]["/predict/batch"]["post"]
    assert "multipart/form-data" in batch["requestBody"]["content"]
    assert _answer_fields(spec, batch["responses"]["200"]) == [({"results"}, {"results"})]
    item = _resolved(spec, _resolved(spec, batch["responses"]["200"]["content"]["application/json"]["schema"])
                     ["properties"]["results"]["items"])
    assert set(item["properties"]) == {"index", "filename", "status", "prediction", "error"}
    error = ({"error"}, {"error"})
    for route, codes in ((predict, ("400", "413", "422", "503")), (batch, ("400", "413", "503"))):
        for code in codes:
            assert _answer_fields(spec, route["responses"][code]) == [error], code
            body = _resolved(spec, route["responses"][code]["content"]["application/json"]["schema"])
            assert body["properties"]["error"]["type"] == "string", code
    health = spec["paths"]["/healthz"]["get"]["responses"]
    assert _answer_fields(spec, health["200"]) == _answer_fields(spec, health["503"]) == [({"status", "models", "error"}, {"status"})]
    models = spec["paths"]["/models"]["get"]["responses"]["200"]
    assert _answer_fields(spec, models) == [({"run", "classes", "colors", "models", "ensemble"},
                                             {"run", "classes", "colors", "models", "ensemble"})]


def test_openapi_documents_bodies_answers_and_errors(served_url):
    check_openapi(requests.get(f"{served_url}/openapi.json", timeout=TIMEOUT_S).json())


def _hammer(url: str, data: bytes, n: int, workers: int) -> list[requests.Response]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: _predict(url, data), range(n)))


def test_overload_is_answered_503_with_retry_after_and_nothing_else_fails(ray_session, run, faces_root, served_url):
    """A second app of the same run with room for 1 request in flight and 1 queued: a burst of 24 at once
    gets 200s and 503s with Retry-After, never another status."""
    from ray import serve

    from serve.app import AppArgs, build_app

    args = AppArgs(run_dir=run[0], max_ongoing_requests=1, max_queued_requests=1, retry_after_s=2,
                   model_cpus=0.05, ingress_cpus=0.05, face_cpus=0.05)
    serve.run(build_app(args), name="tight", route_prefix="/tight", blocking=False)
    try:
        (one,) = _val_images(faces_root, 1)
        responses = _hammer(f"{served_url}/tight", one, n=24, workers=24)
        codes = sorted({r.status_code for r in responses})
        assert codes == [200, 503], codes
        refused = [r for r in responses if r.status_code == 503]
        assert all(r.headers.get("Retry-After") == "2" for r in refused)
        assert _predict(f"{served_url}/tight", one).status_code == 200  # and it recovers
    finally:
        serve.delete("tight")


def linear_pool_copy(run_dir: str, new_run: str) -> dict:
    """``run_dir`` copied to ``new_run`` with its ensemble refitted as the linear pool (the rule of runs
    written before the log-linear one, and ``--ensemble-rule linear``); its manifest as JSON."""
    from raymotion import rundir
    from raymotion.export import ensemble

    shutil.copytree(run_dir, new_run)
    manifest = rundir.read_manifest(new_run)
    saved = rundir.read_val_predictions(new_run)
    members = {n: saved.probs[n] for n in manifest.ensemble.members}
    fitted = ensemble.fit(members, saved.labels, rule="linear")
    manifest.ensemble = rundir.Ensemble.model_validate({
        **manifest.ensemble.model_dump(), "rule": "linear", "bias": None, "weights": fitted.weights,
        "temperature": fitted.temperature, "served": ensemble.served_members(fitted.weights),
        "method": ensemble.METHODS["linear"], "combine": ensemble.COMBINES["linear"]})
    rundir.write_manifest(new_run, manifest)
    return rundir.manifest_json(manifest)


def test_deploying_a_new_run_drops_no_request(ray_session, run, faces_root, served_url, tmp_path):
    """The run directory copied under a new name, with the other pooling rule, and deployed over the running
    app while a client keeps asking: every request is answered 200, /models switches to the new run, and
    its answers are the new run's ensemble."""
    from ray import serve

    from raymotion.export.mixture import combine
    from serve.app import AppArgs, build_app

    new_run = str(tmp_path / "next-run")
    new_manifest = linear_pool_copy(run[0], new_run)
    (one,) = _val_images(faces_root, 1)
    codes, stop = [], threading.Event()

    def client():
        deadline = time.monotonic() + 180  # bounded even if the switch never happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                codes.append(_predict(served_url, one).status_code)
            except requests.RequestException as err:
                codes.append(type(err).__name__)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        serve.run(build_app(AppArgs(run_dir=new_run, model_cpus=0.1, ingress_cpus=0.1, face_cpus=0.05)), name="raymotion",
                  route_prefix="/", blocking=False)
        deadline = time.monotonic() + 120
        while requests.get(f"{served_url}/models", timeout=TIMEOUT_S).json()["run"]["id"] != "next-run":
            assert time.monotonic() < deadline, "the new run never answered"
            time.sleep(0.5)
        answer = _predict(served_url, one)
        assert answer.status_code == 200 and requests.get(f"{served_url}/models", timeout=TIMEOUT_S).json()[
            "ensemble"]["rule"] == "linear"
        body, ens = answer.json(), new_manifest["ensemble"]
        assert set(body["models"]) == set(ens["served"])
        members = {n: np.array([list(p.values())]) for n, p in body["models"].items()}
        np.testing.assert_allclose(list(body["probabilities"].values()),
                                   combine(members, ens["weights"], ens["temperature"], rule="linear")[0], atol=1e-5)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=60)
        # Back to the session's run for the tests after this one.
        serve.run(build_app(AppArgs(run_dir=run[0], model_cpus=0.1, ingress_cpus=0.1, face_cpus=0.05)), name="raymotion",
                  route_prefix="/", blocking=False)
    assert len(codes) > 5 and set(codes) == {200}, json.dumps(sorted(set(map(str, codes))))


def test_the_client_command_prints_a_row_per_image_and_says_what_failed(served_url, faces_root, tmp_path):
    import subprocess
    import sys

    from raymotion.client import Client, ServiceError

    paths = []
    for i, data in enumerate(_val_images(faces_root, 2)):
        paths.append(str(tmp_path / f"face{i}.jpg"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "raymotion.client", *paths, str(bad), "--url", served_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.strip().splitlines()
    client = Client(served_url)
    for path, line in zip(paths, lines):
        assert line.startswith(path) and client.predict(path)["label"] in line.split()
    assert lines[2].startswith(str(bad)) and "error: 400" in lines[2]
    with pytest.raises(ServiceError) as err:
        client.predict(b"\x00" * 10)
    assert err.value.status == 400
    assert client.health()["status"] == "ok" and client.models()["classes"]
    assert [r["status"] for r in client.predict_batch(paths)["results"]] == [200, 200]


FACE_CROPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "faces")


def _photo_of_faces(n: int, side: int = 160, gap: int = 80, columns: int = 4, size: tuple[int, int] | None = None):
    """Real face crops (tests/data/faces) pasted on a grey canvas with gaps; returns (JPEG bytes, boxes)."""
    crops = sorted(os.listdir(FACE_CROPS))
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", size or (columns * (side + gap) + gap, rows * (side + gap) + gap), (128, 128, 128))
    boxes = []
    for i in range(n):
        x, y = gap + (i % columns) * (side + gap), gap + (i // columns) * (side + gap)
        canvas.paste(Image.open(os.path.join(FACE_CROPS, crops[i % len(crops)])).convert("RGB").resize((side, side)),
                     (x, y))
        boxes.append((x, y, side, side))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), boxes


def _inside(box: dict, square: tuple[int, int, int, int]) -> bool:
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    x, y, w, h = square
    return x <= cx <= x + w and y <= cy <= y + h


def _faces(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", params={"faces": 1}, data=data, headers={"Content-Type": "image/jpeg"},
                         timeout=TIMEOUT_S)


def test_faces_in_a_photo_are_each_found_boxed_and_classified(served_url, run):
    data, squares = _photo_of_faces(8)
    response = _faces(served_url, data)
    assert response.status_code == 200, response.text
    body = response.json()
    width, height = Image.open(io.BytesIO(data)).size
    assert body["image"] == {"width": width, "height": height}
    faces = body["faces"]
    # One answer per pasted face, each box on its face, each a full ensemble answer.
    assert len(faces) == len(squares), [f["box"] for f in faces]
    assert all(sum(_inside(f["box"], sq) for f in faces) == 1 for sq in squares)
    for face in faces:
        assert face["label"] in run[1]["classes"] and 0 < face["score"] <= 1
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-5 and set(face["models"]) == set(run[1]["ensemble"]["served"])


def test_a_photo_without_a_face_says_so_and_a_huge_one_is_refused(served_url):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG")
    response = _faces(served_url, buf.getvalue())
    assert response.status_code == 200 and response.json()["faces"] == []
    huge = io.BytesIO()
    Image.new("1", (15_000, 11_000)).save(huge, format="PNG")
    assert _faces(served_url, huge.getvalue()).status_code == 413
    # A large photo that is allowed (6000 x 4000): boxes come back in its own pixels.
    data, squares = _photo_of_faces(3, side=900, gap=600, columns=3, size=(6000, 4000))
    faces = _faces(served_url, data).json()["faces"]
    assert len(faces) == 3 and all(sum(_inside(f["box"], sq) for f in faces) == 1 for sq in squares)
