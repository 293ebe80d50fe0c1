"""The task stage: units in, faces out. Each image of a unit is decoded, its faces found and cut, and
each crop resized to every member's input size, so that only small crops travel to the model actors.

    for table in find_faces(units, sizes=[64, 96], crops=False, fps=2.0): ...   # in a map_batches task

The steps are Predictor.faces' own, from the same functions (raymotion.predict.predictor): read_input
(EXIF, reduced JPEG decode, pixel limits), detection_input and raw_detections (yuface on a small copy),
face_crops (the training-style squares), faces_answer (boxes in original pixels), pixels_by_size (the
members' inputs). ``crops=True`` takes each image as one face, as POST /predict does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage

from raymotion.infer.inputs import Image, Unit, read_unit
from raymotion.infer.table import found_schema, pixels_column
from raymotion.predict import faces as face_finder
from raymotion.predict.photo import Photo
from raymotion.predict.predictor import face_crops, faces_answer, pixels_by_size, read_input

# Images per output table: small enough that the model actors get work while a unit is still being read.
CHUNK_IMAGES = 16


def _photo(image: Image) -> Photo:
    if image.pixels is not None:  # a video frame: no EXIF, no pixel limit beyond the video's own size
        rgb = PILImage.fromarray(image.pixels)
        return Photo(rgb, rgb.width, rgb.height)
    return read_input(image.data)


def image_rows(image: Image, sizes: Sequence[int], crops: bool, max_side: int) -> list[dict]:
    """One row per face of the image (with its pixels per size), one row for an image without a face,
    one row with ``error`` when it cannot be read."""
    where = {"source": image.source, "kind": image.kind, "row": image.row, "frame": image.frame,
             "time_s": image.time_s}
    if image.error is not None:
        return [{**where, "error": image.error}]
    try:
        photo = _photo(image)
        size = {"width": photo.width, "height": photo.height}
        if crops:
            pixels = pixels_by_size([photo.image], sizes)
            return [{**where, **size, "faces": 1, "face": 0, "x": 0, "y": 0, "w": photo.width, "h": photo.height,
                     **{pixels_column(s): pixels[s][0].tobytes() for s in sizes}}]
        small, scale_x, scale_y = face_finder.detection_input(np.asarray(photo.image), max_side)
        boxes, faces = face_crops(photo, face_finder.raw_detections(small), scale_x, scale_y)
        if not boxes:
            return [{**where, **size, "faces": 0}]
        found = faces_answer(photo, boxes, [{} for _ in boxes])["faces"]
        pixels = pixels_by_size(faces, sizes)
        return [{**where, **size, "faces": len(boxes), "face": i, "x": f["box"]["x"], "y": f["box"]["y"],
                 "w": f["box"]["width"], "h": f["box"]["height"], "score": f["score"],
                 **{pixels_column(s): pixels[s][i].tobytes() for s in sizes}}
                for i, f in enumerate(found)]
    except Exception as err:  # InvalidImage above all, but any failure of one image must not stop the job
        return [{**where, "error": f"{type(err).__name__}: {err}"}]


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def find_faces(units: Iterable[Unit], *, sizes: Sequence[int], crops: bool, fps: float | None,
               max_side: int = face_finder.MAX_SIDE) -> Iterator[pa.Table]:
    """Units to tables of found faces (table.found_schema), one every CHUNK_IMAGES images."""
    schema = found_schema(sizes)
    rows, images = [], 0
    for unit in units:
        for image in read_unit(unit, fps):
            rows.extend(image_rows(image, sizes, crops, max_side))
            images += 1
            if images >= CHUNK_IMAGES:
                yield _table(rows, schema)
                rows, images = [], 0
    if rows:
        yield _table(rows, schema)
