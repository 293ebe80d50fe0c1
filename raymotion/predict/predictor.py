"""A run's served ensemble in this process: onnxruntime only (no Ray, no torch).

    from raymotion import Predictor
    predictor = Predictor("runs/<run>")
    predictor.predict("face.jpg")               # {"label", "probabilities", "models"}, as POST /predict
    predictor.predict_batch(["a.jpg", "b.jpg"]) # one such answer per image
    predictor.faces("group.jpg")                # {"image": {width, height}, "faces": [...]}, as ?faces=1

The steps are the HTTP service's, from the same functions: decode (raymotion.predict.photo) -> faces
(raymotion.predict.faces) -> crops cut as the training faces were -> each served member at its own input
size through its own calibration (raymotion.export.sessions.Member) -> the manifest's pool
(raymotion.export.mixture.ensemble_probabilities). serve.app runs the members in replicas of their own and
the detector in another, and calls the module functions below between them; this class calls them in a row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image

from raymotion import rundir
from raymotion.data.transforms import resize_rgb, to_rgb
from raymotion.export.mixture import ensemble_probabilities
from raymotion.export.sessions import Device, Member
from raymotion.predict import faces as face_finder
from raymotion.predict.photo import Photo, read_photo

# A path, the file's bytes, or an image already decoded.
ImageInput = Union[str, os.PathLike, bytes, Image.Image]


def read_input(image: ImageInput) -> Photo:
    """Any ImageInput as the service reads an upload (raymotion.predict.photo); raises InvalidImage."""
    if isinstance(image, Image.Image):
        rgb = to_rgb(image)
        return Photo(rgb, rgb.width, rgb.height)
    if isinstance(image, (bytes, bytearray)):
        return read_photo(bytes(image))
    with open(image, "rb") as f:
        return read_photo(f.read())


def pixels_by_size(images: Sequence[Image.Image], sizes: Iterable[int]) -> dict[int, np.ndarray]:
    """Each image resized once per distinct input size: (N, S, S, 3) uint8 per size."""
    return {size: np.stack([resize_rgb(img, size) for img in images]) for size in sorted(set(sizes))}


def answers(classes: Sequence[str], member_probs: dict[str, np.ndarray], ensemble: rundir.Ensemble) -> list[dict[str, Any]]:
    """One Prediction (serve.schema) per row: the pooled label and probabilities, and each member's."""
    pooled = ensemble_probabilities(member_probs, ensemble)

    def by_class(p: np.ndarray) -> dict[str, float]:
        return {c: float(v) for c, v in zip(classes, p)}

    return [{"label": classes[int(np.argmax(pooled[i]))], "probabilities": by_class(pooled[i]),
             "models": {name: by_class(p[i]) for name, p in member_probs.items()}} for i in range(len(pooled))]


def face_crops(photo: Photo, rows: np.ndarray, scale_x: float, scale_y: float) -> tuple[list[face_finder.FaceBox], list[Image.Image]]:
    """The detector's rows (on the small copy, face_finder.detection_input) as boxes in the decoded image,
    and each face cut from it as the training faces were cut."""
    rgb = np.asarray(photo.image)
    boxes = face_finder.face_boxes(rows, scale_x, scale_y, rgb.shape[0], rgb.shape[1])
    width, height = photo.image.width, photo.image.height
    crops = [Image.fromarray(face_finder.crop_square(rgb, face_finder.training_crop_box(b, width, height)))
             for b in boxes]
    return boxes, crops


def faces_answer(photo: Photo, boxes: Sequence[face_finder.FaceBox], found: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A FacesAnswer (serve.schema): each face's box in the original photo's pixels (the decoded image may
    be a reduced one), its detector score and its Prediction."""
    out = []
    for box, answer in zip(boxes, found):
        extent = face_finder.face_extent(box, photo.image.width, photo.image.height)
        x, y, w, h = (round(photo.to_original(v)) for v in extent)
        out.append({"box": {"x": x, "y": y, "width": w, "height": h}, "score": box.score, **answer})
    return {"image": {"width": photo.width, "height": photo.height}, "faces": out}


class Predictor:
    """The served members of ``run_dir`` (its manifest's ``ensemble.served``, each its served file: int8
    where the bundle chose it) and the manifest's pool.

    ``intra_op_threads``: onnxruntime threads per member (0: one per core). The members run one after
    another, so by default each stops its threads spinning after its run, leaving the cores to the next.
    """

    def __init__(self, run_dir: str, *, device: Device = "cpu", intra_op_threads: int = 0,
                 stop_spinning_after_run: bool = True, face_max_side: int = face_finder.MAX_SIDE,
                 check_sha256: bool = True):
        self.run_dir = run_dir
        self.manifest = rundir.read_manifest(run_dir)
        self.classes = list(self.manifest.classes)
        self.ensemble = self.manifest.ensemble
        self.face_max_side = face_max_side
        self.members = {name: Member(run_dir, name, self.manifest.models[name], check_sha256=check_sha256,
                                     device=device, intra_op_threads=intra_op_threads,
                                     stop_spinning_after_run=stop_spinning_after_run)
                        for name in self.ensemble.served}

    @property
    def input_sizes(self) -> list[int]:
        return sorted({m.input_size for m in self.members.values()})

    def pixel_probabilities(self, by_size: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Each served member's calibrated probabilities (N, C) of faces already resized to every input size
        (``pixels_by_size``, or the data cache's arrays)."""
        return {name: m.probabilities(by_size[m.input_size]) for name, m in self.members.items()}

    def member_probabilities(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Each served member's calibrated probabilities (N, C) of RGB images (each a whole face)."""
        return self.pixel_probabilities(pixels_by_size(images, self.input_sizes))

    def pool(self, member_probs: dict[str, np.ndarray]) -> np.ndarray:
        """The manifest's ensemble of the members' calibrated probabilities."""
        return ensemble_probabilities(member_probs, self.ensemble)

    def probabilities(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The pooled ensemble's probabilities (N, C), columns in ``classes`` order."""
        return self.pool(self.member_probabilities([read_input(i).image for i in images]))

    def classify(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """One Prediction per decoded face image."""
        return answers(self.classes, self.member_probabilities(images), self.ensemble) if images else []

    def predict(self, image: ImageInput) -> dict[str, Any]:
        """One pre-cropped face, as POST /predict answers it."""
        return self.classify([read_input(image).image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Several pre-cropped faces, classified together; any unreadable one raises InvalidImage."""
        return self.classify([read_input(i).image for i in images])

    def faces(self, image: ImageInput) -> dict[str, Any]:
        """Every face in a whole photo, as POST /predict?faces=1 answers it."""
        photo = read_input(image)
        small, scale_x, scale_y = face_finder.detection_input(np.asarray(photo.image), self.face_max_side)
        boxes, crops = face_crops(photo, face_finder.raw_detections(small), scale_x, scale_y)
        return faces_answer(photo, boxes, self.classify(crops))
