"""Ray Serve application: an HTTP ingress over one ONNX deployment per served model of a run directory.

    serve run serve/config.yaml                              # settings sized for 2 CPUs, 127.0.0.1:8000
    serve run serve.app:build_app run_dir=runs/<run>        # the same with AppArgs' defaults

HTTP contract (pydantic models in serve.schema; /openapi.json and /docs publish it with every error):
    POST /predict          image bytes (image/jpeg, image/png, ...) or multipart field "file"
                           -> Prediction {"label", "probabilities": {class: p}, "models": {name: {class: p}}}
                           "probabilities" is the manifest's ensemble (raymotion.export.mixture.
                           ensemble_probabilities) of the served models' calibrated probabilities
       ?faces=1            a whole photo: every face found, cropped as the training faces were, classified
                           -> FacesAnswer {"image": {width, height}, "faces": [{box, score, label, ...}]}
    POST /predict/batch    multipart, one or more "files" parts -> {"results": [one item per part, each
                           answered or errored on its own]}
    GET  /healthz          200 when every deployment answers, else 503
    GET  /models           the run that answers (id, version), classes, served models and figures
    GET  /                 the browser page
Errors: 400 unreadable image or body, 404 no such route, 405 method not allowed, 413 too large, 422 bad
query, 500 a bug, each answered {"error": "..."}; 503 overloaded (with Retry-After).

Pre-processing happens once per request, in the ingress: the image is decoded once and resized once per
distinct model input size, and each model gets compact uint8 pixels at its own size (its replica
normalizes and runs them). Each model deployment runs the file named in the manifest's
``models.<name>.serve`` (int8 when the bundle accepted it, else fp32); only the ensemble's "served"
members (positive weight) are deployed. Nothing here imports torch.
"""

# No `from __future__ import annotations` here: Serve reads build_app's annotation (AppArgs) at run time to
# validate the app's args into it, and a postponed annotation is only a string.
import asyncio
import hashlib
import os
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from raymotion.data.transforms import InvalidImage
from raymotion.export.sessions import Member
from raymotion.predict import faces as face_finder
from raymotion.predict.predictor import answers, face_crops, faces_answer, pixels_by_size
from raymotion.rundir import MANIFEST, Manifest, ModelEntry, manifest_json, read_manifest
from serve import schema
from raymotion.predict.photo import Photo, read_photo
from serve.page import page_html

MAX_BODY_BYTES = 10 * 1024 * 1024  # FastAPI sets no limit of its own
MAX_BATCH_BODY_BYTES = 4 * MAX_BODY_BYTES
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around a single image upload
# A body over its limit is read to its end and thrown away before the 413 is sent, chunk by chunk (nothing
# kept): a client that writes its whole body before it reads the answer (urllib, curl without
# Expect: 100-continue) would otherwise have the connection closed under it and see a reset, not the 413.
# Bounded, so that refusing a huge or endless body cannot hold the replica: past either bound the answer
# goes out at once, as before.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 5.0
REPLICA_ATTEMPTS = 2
RETRY_AFTER_S = 1


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@serve.deployment(health_check_period_s=5)
class OnnxModel:
    """One served member (raymotion.export.sessions.Member: its file, normalization and calibration); takes
    uint8 NHWC stacks at its input size."""

    def __init__(self, run_dir: str, name: str, entry: dict[str, Any], device: str, intra_op_threads: int,
                 max_batch_size: int, batch_wait_timeout_s: float):
        self.name = name
        self.member = Member(run_dir, name, ModelEntry.model_validate(entry), check_sha256=True, device=device,
                             intra_op_threads=intra_op_threads)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def predict(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        """Each call's (k, S, S, 3) uint8 -> its (k, C) probabilities; concurrent calls share one run."""
        counts = np.cumsum([len(s) for s in stacks])[:-1]
        return np.split(self.member.probabilities(np.concatenate(stacks)), counts)

    async def ready(self) -> str:
        return self.name


@serve.deployment(health_check_period_s=5)
class FaceDetector:
    """yuface on the small copy of a photo the ingress sends (long side <= face_max_side): raw detections."""

    async def detect(self, small_rgb: np.ndarray) -> np.ndarray:
        return face_finder.raw_detections(small_rgb)

    async def ready(self) -> str:
        return "faces"


api = FastAPI(title="raymotion", description="Facial-emotion classification: an ensemble of ONNX models on Ray Serve",
              version="1")


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
    return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _bad_query(_: Request, err: RequestValidationError) -> JSONResponse:
    # One error shape for every status (FastAPI's own is {"detail": [...]}).
    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in err.errors())
    return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    # Starlette's router answers an unknown path 404 and a wrong method 405 ({"detail": ...} by default);
    # its headers (Allow on a 405) are kept.
    message = err.detail if isinstance(err.detail, str) else str(err.detail)
    if err.status_code == 404:
        message = f"no route {request.url.path!r} ({message}); see /docs"
    elif err.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path!r} ({message})"
    return JSONResponse({"error": message}, status_code=err.status_code, headers=getattr(err, "headers", None))


@api.exception_handler(Exception)
async def _bug(_: Request, err: Exception) -> JSONResponse:
    # A bug still answers in the documented shape (a 500 never carries a traceback to the client).
    return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)


async def call_replica(method, argument: Any, what: str) -> Any:
    """``method.remote(argument)`` of a deployment handle. A replica that dies under the request is retried
    once (Serve's router picks a live one); when none answers, a 503 with Retry-After, not a 500."""
    for attempt in range(REPLICA_ATTEMPTS):
        try:
            return await method.remote(argument)
        except RayActorError as err:  # ActorDiedError, ActorUnavailableError
            if attempt + 1 == REPLICA_ATTEMPTS:
                raise ApiError(503, f"{what} is restarting ({type(err).__name__}); retry shortly") from None
    raise AssertionError("unreachable")


class BodyTooLarge(Exception):
    """Raised inside a body read as soon as more than its limit has arrived."""


async def drain(request: Request, already: int = 0) -> None:
    """Read and discard the rest of the request body, up to DRAIN_MAX_BYTES and DRAIN_TIMEOUT_S in all."""
    seen = already

    async def rest() -> None:
        nonlocal seen
        while seen <= DRAIN_MAX_BYTES:
            message = await request.receive()
            if message["type"] != "http.request":  # the client went away
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(rest(), DRAIN_TIMEOUT_S)
    except (asyncio.TimeoutError, OSError, RuntimeError):  # a stalled or broken client: answer anyway
        pass


async def refuse_too_large(request: Request, message: str, already: int = 0) -> ApiError:
    """The 413 for a body over its limit, once the rest of the body is drained (see DRAIN_MAX_BYTES)."""
    length = request.headers.get("content-length", "")
    if not (length.isdigit() and int(length) > DRAIN_MAX_BYTES):
        await drain(request, already)
    return ApiError(413, message)


def declared_too_large(request: Request, limit: int) -> bool:
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


async def read_body(request: Request, limit: int) -> bytes:
    if declared_too_large(request, limit):
        length = request.headers["content-length"]
        raise await refuse_too_large(request, f"body of {length} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            chunks.clear()
            raise await refuse_too_large(request, f"body exceeds the {limit}-byte limit", size)
        chunks.append(chunk)
    return b"".join(chunks)


def limited(request: Request, limit: int) -> Request:
    """The same request whose body raises BodyTooLarge past ``limit`` bytes (a multipart body without a
    Content-Length, or with a false one, is cut off there instead of spooled whole)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(seen)
        return message

    return Request(request.scope, receive)


async def read_uploads(request: Request, field: str, limit: int, max_files: int,
                       body_limit: int) -> list[tuple[str | None, bytes]]:
    """The multipart parts named ``field`` as (filename, bytes, at most limit + 1 of them); 400 when there
    is none, 413 when the whole body exceeds ``body_limit``."""
    too_large = f"multipart body exceeds the {body_limit}-byte limit"
    if declared_too_large(request, body_limit):
        raise await refuse_too_large(request, too_large)
    try:
        form = await limited(request, body_limit).form(max_files=max_files, max_fields=max_files + 8,
                                                       max_part_size=limit)
    except BodyTooLarge as err:
        raise await refuse_too_large(request, too_large, err.args[0]) from None
    except Exception as err:  # starlette's parser: malformed body, too many parts
        raise ApiError(400, f"malformed multipart body: {err}") from None
    uploads = [u for u in form.getlist(field) if not isinstance(u, str)]
    if not uploads:
        raise ApiError(400, f"multipart body has no file field named {field!r}")
    return [(u.filename, await u.read(limit + 1)) for u in uploads]


async def read_image_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        (_, data), = await read_uploads(request, "file", MAX_BODY_BYTES, max_files=1,
                                        body_limit=MAX_BODY_BYTES + MULTIPART_OVERHEAD_BYTES)
    else:
        data = await read_body(request, MAX_BODY_BYTES)
    if len(data) > MAX_BODY_BYTES:
        raise ApiError(413, f"body exceeds the {MAX_BODY_BYTES}-byte limit")
    return data


def decode(data: bytes) -> Photo:
    """The photo (raymotion.predict.photo: large JPEGs decoded reduced); 413 past a pixel limit, 400 if unreadable."""
    try:
        return read_photo(data)
    except InvalidImage as err:
        raise ApiError(413 if err.kind == "too-large" else 400, str(err)) from None


def public_models(manifest: Manifest, run_dir: str, version: str) -> dict[str, Any]:
    """GET /models: what answers, without the server's file-system layout (paths, data root)."""
    ens = manifest.ensemble
    models = {name: schema.ServedModel(variant=manifest.models[name].serve.variant, sha256=manifest.models[name].serve.sha256,
                                       input_size=manifest.models[name].input_size, weight=ens.weights[name],
                                       val=manifest.models[name].val)
              for name in ens.served}
    return schema.ModelsInfo(
        run=schema.RunInfo(id=os.path.basename(run_dir.rstrip("/")), version=version, created_at=manifest.created_at),
        classes=manifest.classes, colors=schema.class_colors(manifest.classes), models=models,
        ensemble={"served": ens.served, "weights": ens.served_weights, "temperature": ens.temperature,
                  "rule": ens.rule, "bias": ens.bias, "val": ens.val,
                  "val_out_of_fold": ens.val_out_of_fold}).model_dump()


@serve.deployment
@serve.ingress(api)
class EnsembleIngress:
    def __init__(self, manifest: dict[str, Any], public: dict[str, Any], face_max_side: int,
                 detector: DeploymentHandle, *members: DeploymentHandle, answer_delay_s: float = 0.0):
        typed = Manifest.model_validate(manifest)  # the JSON travels; the typed view is rebuilt here
        self.classes = typed.classes
        self.members = dict(zip(typed.ensemble.served, members))
        self.sizes = {name: typed.models[name].input_size for name in typed.ensemble.served}
        self.ensemble = typed.ensemble
        self.public, self.face_max_side, self.detector = public, face_max_side, detector
        self.answer_delay_s = answer_delay_s

    async def classify(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        """Each image resized once per distinct input size, every model called once for all of them."""
        by_size = pixels_by_size(images, self.sizes.values())
        names = list(self.members)
        results = await asyncio.gather(*(call_replica(self.members[n].predict, by_size[self.sizes[n]], f"model {n}")
                                         for n in names))
        # The Predictor's pool (raymotion.predict.predictor.answers), which the bundle scored val with.
        return answers(self.classes, dict(zip(names, results)), self.ensemble)

    async def find_faces(self, photo: Photo) -> dict[str, Any]:
        """Every face: found on a small copy, cut from the decoded photo as the training faces were cut;
        boxes in the original photo's pixels (the decoded image may be a reduced one, raymotion.predict.photo)."""
        small, scale_x, scale_y = face_finder.detection_input(np.asarray(photo.image), self.face_max_side)
        rows = await call_replica(self.detector.detect, small, "the face detector")
        boxes, crops = face_crops(photo, rows, scale_x, scale_y)
        return faces_answer(photo, boxes, await self.classify(crops) if crops else [])

    @api.post("/predict", response_model=schema.Prediction | schema.FacesAnswer,
              responses=schema.error_responses(400, 413, 422, 503), openapi_extra=schema.image_body("file"))
    async def predict(self, request: Request, faces: bool = Query(False, description="find and classify every face")):
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        photo = await asyncio.to_thread(decode, await read_image_bytes(request))
        if faces:
            return await self.find_faces(photo)
        return (await self.classify([photo.image]))[0]

    @api.post("/predict/batch", response_model=schema.BatchAnswer, responses=schema.error_responses(400, 413, 503),
              openapi_extra=schema.image_body("files", many=True))
    async def predict_batch(self, request: Request):
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send multipart/form-data with one 'files' part per image")
        uploads = await read_uploads(request, "files", MAX_BODY_BYTES, max_files=schema.MAX_BATCH_IMAGES,
                                     body_limit=MAX_BATCH_BODY_BYTES)
        items, images = [], []
        for index, (filename, data) in enumerate(uploads):
            try:
                if len(data) > MAX_BODY_BYTES:
                    raise ApiError(413, f"part exceeds the {MAX_BODY_BYTES}-byte limit")
                images.append((await asyncio.to_thread(decode, data)).image)
                items.append({"index": index, "filename": filename, "status": 200})
            except ApiError as err:  # one bad image answers for itself only
                items.append({"index": index, "filename": filename, "status": err.status, "error": err.message})
        answers = iter(await self.classify(images) if images else [])
        for item in items:
            if item["status"] == 200:
                item["prediction"] = next(answers)
        return {"results": items}

    @api.get("/healthz", response_model=schema.Health, responses={503: {"model": schema.Health}})
    async def healthz(self):
        try:
            ready = await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.members.values())),
                                           HEALTH_TIMEOUT_S)
        except Exception as err:  # a member is down or too slow: not healthy
            return JSONResponse({"status": "unavailable", "error": repr(err)}, status_code=503)
        return {"status": "ok", "models": ready}

    @api.get("/models", response_model=schema.ModelsInfo)
    async def models(self):
        return self.public

    @api.get("/", response_class=HTMLResponse)
    async def page(self):
        return page_html()


class AppArgs(BaseModel):
    """The application's settings: ``serve run serve.app:build_app run_dir=... replicas=2``, or the ``args``
    of serve/config.yaml. Serve validates them into this before ``build_app`` runs, so a misspelt or
    out-of-range setting fails naming itself. Defaults are sized for 2 CPUs."""
    model_config = ConfigDict(extra="forbid")

    run_dir: str  # a run directory with manifest.json
    # onnxruntime's providers, best first, CPU always the fallback (export.sessions.session_providers):
    # "cuda": CUDA; "tensorrt": TensorRT, then CUDA. A GPU device also reserves model_gpus per model replica.
    device: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    model_gpus: float = Field(0.25, ge=0, le=1)  # Ray GPUs per model replica when device is not cpu (a share of one)
    replicas: int = Field(1, ge=1)  # per model
    model_cpus: float = Field(0.5, gt=0)  # Ray CPUs per model replica (a scheduling share, not a thread cap)
    intra_op_threads: int = Field(1, ge=1)  # onnxruntime threads per replica
    max_batch_size: int = Field(16, ge=1)  # calls one model run takes at most
    batch_wait_timeout_s: float = Field(0.0, ge=0)  # 0: run what is queued at once; waiting only adds latency
    model_max_ongoing_requests: int = Field(32, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    ingress_cpus: float = Field(0.25, gt=0)
    max_ongoing_requests: int = Field(32, ge=1)  # per ingress replica
    max_queued_requests: int = Field(64, ge=-1)  # beyond this the proxy answers 503 with Retry-After
    retry_after_s: float = Field(1.0, ge=0)
    face_replicas: int = Field(1, ge=1)
    face_cpus: float = Field(0.25, gt=0)
    face_max_side: int = Field(640, ge=64)  # photos are scaled to this long side before face detection
    # Every POST /predict and /predict/batch waits this long before it is read (asyncio.sleep: no CPU): a slow
    # server on demand, to watch a client degrade (the browser test's camera drops frames). 0 in service.
    answer_delay_s: float = Field(0.0, ge=0, le=30)
    # On a cluster: at most this many replicas of any one deployment per node (1: a lost node takes one
    # replica of each, and the others keep answering). None: Serve's default (spread where it can).
    max_replicas_per_node: int | None = Field(None, ge=1)


def run_version(run_dir: str) -> str:
    return hashlib.sha256(open(os.path.join(run_dir, MANIFEST), "rb").read()).hexdigest()[:16]


def model_actor_options(args: AppArgs) -> dict[str, float]:
    """Ray resources of one model replica: its CPU share and, on a GPU device, its GPU fraction (Serve then
    places replicas on GPU nodes only, ``1 / model_gpus`` of them per GPU)."""
    return {"num_cpus": args.model_cpus, "num_gpus": args.model_gpus if args.device != "cpu" else 0}


def per_node(args: AppArgs) -> dict[str, int]:
    """Deployment options for ``max_replicas_per_node`` (only when set: Serve refuses None)."""
    return {} if args.max_replicas_per_node is None else {"max_replicas_per_node": args.max_replicas_per_node}


def bind_member(name: str, entry: ModelEntry, run_dir: str, args: AppArgs):
    # The file the bundle chose and scored (int8 when accepted, else fp32).
    return OnnxModel.options(
        name=f"model_{name}", num_replicas=args.replicas, max_ongoing_requests=args.model_max_ongoing_requests,
        ray_actor_options=model_actor_options(args), **per_node(args),
    ).bind(run_dir, name, entry.model_dump(mode="json"), args.device, args.intra_op_threads, args.max_batch_size,
           args.batch_wait_timeout_s)


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_run_dir(run_dir: str) -> str:
    """A relative run_dir is taken from the checkout, not from the working directory of whichever Ray
    process builds the app (``serve deploy`` builds it inside the cluster)."""
    return os.path.realpath(run_dir if os.path.isabs(run_dir) else os.path.join(CHECKOUT, run_dir))


def build_app(args: AppArgs):
    """The Serve application builder (typed: Serve converts the args dict to ``AppArgs``)."""
    run_dir = resolve_run_dir(args.run_dir)
    manifest = read_manifest(run_dir)
    members = [bind_member(name, manifest.models[name], run_dir, args) for name in manifest.ensemble.served]
    detector = FaceDetector.options(name="faces", num_replicas=args.face_replicas,
                                    ray_actor_options={"num_cpus": args.face_cpus}, **per_node(args)).bind()
    public = public_models(manifest, run_dir, run_version(run_dir))
    return EnsembleIngress.options(
        name="ingress", num_replicas=args.ingress_replicas, max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests, ray_actor_options={"num_cpus": args.ingress_cpus}, **per_node(args),
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=args.retry_after_s),
    ).bind(manifest_json(manifest), public, args.face_max_side, detector, *members, answer_delay_s=args.answer_delay_s)
