"""The HTTP contract of the service as pydantic models: FastAPI validates the answers against them and
publishes them at /openapi.json (and /docs), with every error status each route can answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Probabilities = dict[str, float]  # class name -> probability, in the run's class order

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff",
               "application/octet-stream")
MAX_BATCH_IMAGES = 32


class Prediction(BaseModel):
    label: str = Field(description="the class with the highest ensemble probability")
    probabilities: Probabilities = Field(description="the fitted ensemble of the served models")
    models: dict[str, Probabilities] = Field(description="each served model's own calibrated probabilities")


class Box(BaseModel):
    """Pixel coordinates in the uploaded image after its EXIF orientation is applied. A face cut by the
    photo's border gets the box of the whole face, which reaches past that border (x or y negative, or
    x + width beyond the image's width)."""
    x: int
    y: int
    width: int
    height: int


class FacePrediction(Prediction):
    box: Box
    score: float = Field(description="the face detector's confidence")


class ImageSize(BaseModel):
    width: int
    height: int


class FacesAnswer(BaseModel):
    image: ImageSize
    faces: list[FacePrediction] = Field(description="one entry per face found; empty when there is none")


class BatchItem(BaseModel):
    index: int = Field(description="position of the part in the request")
    filename: str | None = None
    status: int = Field(description="200, or the status this image alone would have got from /predict")
    prediction: Prediction | None = None
    error: str | None = None


class BatchAnswer(BaseModel):
    results: list[BatchItem]


class ErrorBody(BaseModel):
    """The one shape of every error answer of the service (400, 404, 405, 413, 422, 500, ...)."""
    error: str


class Health(BaseModel):
    status: str
    models: list[str] = []
    error: str | None = None


class ServedModel(BaseModel):
    variant: str = Field(description="fp32, or the int8 variant the export accepted")
    sha256: str
    input_size: int
    weight: float
    val: dict[str, Any]


class RunInfo(BaseModel):
    id: str = Field(description="the run directory's name")
    version: str = Field(description="sha256 of its manifest: changes with every new bundle")
    created_at: str


# Colours of the classes by their position in the run's class order (the browser page draws with them):
# the first three are the page's angry / happy / sad of the three-class runs; distinct hues after them.
CLASS_PALETTE = ("#d64541", "#e0a400", "#3a78c9", "#2e9e5b", "#8e44ad", "#e67e22", "#16a5a5", "#c2185b",
                 "#6d4c41", "#607d8b")


def class_colors(classes: list[str]) -> dict[str, str]:
    """One colour per class, in class order (the palette repeats past its length)."""
    return {c: CLASS_PALETTE[i % len(CLASS_PALETTE)] for i, c in enumerate(classes)}


class ModelsInfo(BaseModel):
    """What answers: the run, its classes and served models, the ensemble's figures. No file-system paths."""
    run: RunInfo
    classes: list[str] = Field(description="the run's classes, in the order every probabilities object has")
    colors: dict[str, str] = Field(description="a CSS colour per class, for clients that draw them")
    models: dict[str, ServedModel]
    ensemble: dict[str, Any]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    reasons = {400: "unreadable image or malformed body", 413: "body or image too large",
               422: "invalid query parameter", 503: "overloaded (Retry-After) or a model is down"}
    return {status: {"model": ErrorBody, "description": reasons[status]} for status in statuses}


def image_body(multipart_field: str, many: bool = False) -> dict[str, Any]:
    """OpenAPI requestBody of a route that reads the body itself: raw image bytes or a multipart upload."""
    binary = {"type": "string", "format": "binary"}
    part = {"type": "array", "items": binary, "maxItems": MAX_BATCH_IMAGES} if many else binary
    content = {} if many else {kind: {"schema": binary} for kind in IMAGE_TYPES}
    content["multipart/form-data"] = {"schema": {"type": "object", "properties": {multipart_field: part},
                                                 "required": [multipart_field]}}
    return {"requestBody": {"required": True, "content": content}}
