"""Ray Serve application: an HTTP ingress over one ONNX deployment per served model of a run directory.

    serve run serve.app:build_app run_dir=runs/<run>        # 127.0.0.1:8000

HTTP contract:
    POST /predict   body = image bytes (image/jpeg, image/png, ...) or multipart field "file"
                    -> {"label", "probabilities": {class: p}, "models": {name: {class: p}}}
                    "probabilities" is the manifest's ensemble (raymotion.export.mixture.combine with its
                    weights and temperature); "models" holds each served model's own probabilities, calibrated
                    by its own temperature and class bias (manifest models.<name>), which is what the ensemble mixes
                    unreadable image -> 400 {"error": ...}; body too large -> 413
    GET  /healthz   200 when every model deployment answers, else 503
    GET  /models    the run's manifest; its ensemble "served" lists the deployed models
    GET  /          the browser page (serve/static/index.html, see serve/page.py)

Each model deployment runs the file named in the manifest's ``models.<name>.serve``: the int8 file when
the bundle accepted one (within the accuracy tolerance and faster than fp32), else the fp32 file.
Only the manifest's ensemble "served" members (positive weight) are deployed: a weight-0 member cannot
change an answer, and on a small machine each replica costs a CPU share and its memory.

Nothing here imports torch: the manifest is read through ``raymotion.rundir`` and the files run through
``raymotion.export.sessions``, so a replica pays only onnxruntime's start-up.
"""


import asyncio
import os
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from raymotion.data.transforms import InvalidImage, decode_image, normalize, resize_rgb
from raymotion.export.mixture import combine, temper
from raymotion.export.sessions import create_session, onnx_probabilities
from raymotion.rundir import Manifest, manifest_json, read_manifest, sha256_file
from serve.page import page_html

MAX_BODY_BYTES = 10 * 1024 * 1024  # FastAPI sets no limit of its own
HEALTH_TIMEOUT_S = 5.0


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=10)
class OnnxModel:
    """One model: its own preprocessing (size, normalization) and an onnxruntime session."""

    def __init__(self, name: str, path: str, sha256: str, input_size: int, mean: list[float], std: list[float],
                 calibration: dict[str, Any], device: str = "cpu", intra_op_threads: int = 1):
        if sha256_file(path) != sha256:
            raise ValueError(f"{path}: sha256 does not match the manifest; the run directory was modified")
        self.name, self.input_size, self.mean, self.std = name, input_size, mean, std
        # The member's own calibration (manifest models.<name>: temperature, bias).
        self.calibration = calibration
        self.session = create_session(path, device=device, intra_op_threads=intra_op_threads)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 HWC RGB images (any size) -> class probabilities; concurrent requests share one run."""
        batch = np.stack([resize_rgb(Image.fromarray(img), self.input_size) for img in images])
        return list(temper(onnx_probabilities(self.session, normalize(batch, self.mean, self.std)), **self.calibration))

    async def ready(self) -> str:
        return self.name


api = FastAPI(title="raymotion", description="Facial-emotion classification ensemble")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_image_bytes(request: Request):
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return _error(413, f"body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=MAX_BODY_BYTES)
        except Exception as err:
            return _error(400, f"malformed multipart body: {err}")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return _error(400, "multipart body has no file field named 'file'")
        data = await upload.read(MAX_BODY_BYTES + 1)
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return _error(413, f"body exceeds the {MAX_BODY_BYTES}-byte limit")
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > MAX_BODY_BYTES:
        return _error(413, f"body exceeds the {MAX_BODY_BYTES}-byte limit")
    return data


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
@serve.ingress(api)
class EnsembleIngress:
    def __init__(self, manifest: dict[str, Any], *members: DeploymentHandle):
        # The JSON travels (GET /models returns it as written); the typed view is rebuilt here.
        self.manifest = manifest
        typed = Manifest.model_validate(manifest)
        self.classes = typed.classes
        self.members = dict(zip(typed.ensemble.served, members))
        self.weights = typed.ensemble.served_weights
        self.temperature = typed.ensemble.temperature

    @api.post("/predict")
    async def predict(self, request: Request):
        data = await _read_image_bytes(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            image = await asyncio.to_thread(lambda: np.asarray(decode_image(data)))
        except InvalidImage as err:
            return _error(400, str(err))
        names = list(self.members)
        # Fan out to every model at once; each deployment batches across concurrent requests.
        results = await asyncio.gather(*(self.members[n].predict.remote(image) for n in names))
        per_model = dict(zip(names, results))
        # The function the bundle scored val with: served probabilities are the reported ones.
        combined = combine({n: p[None] for n, p in per_model.items()}, self.weights, self.temperature)[0]
        as_dict = lambda p: {c: float(v) for c, v in zip(self.classes, p)}  # noqa: E731
        return {
            "label": self.classes[int(np.argmax(combined))],
            "probabilities": as_dict(combined),
            "models": {n: as_dict(p) for n, p in per_model.items()},
        }

    @api.get("/healthz")
    async def healthz(self):
        try:
            ready = await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.members.values())),
                                           HEALTH_TIMEOUT_S)
        except Exception as err:  # a member is down or too slow: not healthy
            return JSONResponse({"status": "unavailable", "error": repr(err)}, status_code=503)
        return {"status": "ok", "models": ready}

    @api.get("/models")
    async def models(self):
        return self.manifest

    @api.get("/", response_class=HTMLResponse)
    async def page(self):
        return page_html()


def build_ensemble(run_dir: str, *, device: str = "cpu", intra_op_threads: int = 1, replicas: int = 1):
    """The Serve application for a run directory (see the module docstring)."""
    run_dir = os.path.abspath(run_dir)
    manifest = read_manifest(run_dir)
    members = []
    for name in manifest.ensemble.served:
        m = manifest.models[name]
        # The file the bundle chose and scored (int8 when accepted, else fp32).
        members.append(OnnxModel.options(name=f"model_{name}", num_replicas=replicas).bind(
            name, os.path.join(run_dir, m.serve.file), m.serve.sha256, m.input_size, m.mean, m.std,
            m.calibration, device, intra_op_threads))
    return EnsembleIngress.options(name="ingress").bind(manifest_json(manifest), *members)


class AppArgs(BaseModel):
    """``serve run serve.app:build_app run_dir=... [device=cuda] [replicas=2] [intra_op_threads=2]``, or a
    Serve config file's ``args``: Serve validates them into this before ``build_app`` runs, so a misspelt
    or out-of-range argument fails naming itself."""
    model_config = ConfigDict(extra="forbid")

    run_dir: str  # a run directory with manifest.json
    device: Literal["cpu", "cuda"] = "cpu"
    intra_op_threads: int = Field(1, ge=1)  # per replica: on 2 CPUs, one thread each keeps replicas apart
    replicas: int = Field(1, ge=1)  # per member


def build_app(args: AppArgs):
    """The Serve application builder (typed: Serve converts the args dict to ``AppArgs``)."""
    return build_ensemble(args.run_dir, device=args.device, intra_op_threads=args.intra_op_threads,
                          replicas=args.replicas)
